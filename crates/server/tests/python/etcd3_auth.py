"""python-etcd3 (0.12) logging in with a user and password against an etcd v3 server.

Run by tests/python_etcd3.rs against retcd and, when it is installed, etcd 3.4.23; the
test compares the two transcripts. Usage: etcd3_auth.py HOST PORT CA_FILE, for a fresh
server whose client URL is https with a certificate from CA_FILE (python-etcd3 sends its
token as call credentials, which grpcio sends over TLS only). The script sets auth up
through the Auth RPCs (python-etcd3's own stubs): root with password rootpw, alice
(alicepw) with the role app, readwrite on /app/ (prefix) and read on /r; then enables
auth. Then it prints one line per step: what it did and what came back (values, or the
gRPC code and message of a refusal). It exits non-zero when a step that must succeed
fails, so a broken client shows as a failure, not only as a diff.
"""

import queue
import sys

import etcd3
import grpc
from etcd3 import etcdrpc
from etcd3.etcdrpc import auth_pb2

host, port, CA = sys.argv[1], int(sys.argv[2]), sys.argv[3]
TIMEOUT = 10


def outcome(step, f):
    try:
        value = f()
    except grpc.RpcError as e:
        print(f"{step}: {e.code().name}: {e.details()}")
        return None
    except etcd3.exceptions.Etcd3Exception as e:
        print(f"{step}: {type(e).__name__}")
        return None
    print(f"{step}: {value}")
    return value


def must(step, f):
    value = outcome(step, f)
    if value is None:
        sys.exit(f"{step} failed")
    return value


def client(user=None, password=None):
    return etcd3.client(host, port, user=user, password=password, timeout=TIMEOUT, ca_cert=CA)


# Set-up through the Auth RPCs, before auth is on.
setup = client()
auth = etcdrpc.AuthStub(setup.channel)
must("user add root", lambda: auth.UserAdd(etcdrpc.AuthUserAddRequest(name="root", password="rootpw")) is not None)
must("grant root", lambda: auth.UserGrantRole(etcdrpc.AuthUserGrantRoleRequest(user="root", role="root")) is not None)
must("user add alice", lambda: auth.UserAdd(etcdrpc.AuthUserAddRequest(name="alice", password="alicepw")) is not None)
must("role add app", lambda: auth.RoleAdd(etcdrpc.AuthRoleAddRequest(name="app")) is not None)
for perm_type, key, end in [(auth_pb2.Permission.READWRITE, b"/app/", b"/app0"), (auth_pb2.Permission.READ, b"/r", b"")]:
    perm = auth_pb2.Permission(permType=perm_type, key=key, range_end=end)
    must(f"grant app {key!r}", lambda: auth.RoleGrantPermission(etcdrpc.AuthRoleGrantPermissionRequest(name="app", perm=perm)) is not None)
must("grant alice", lambda: auth.UserGrantRole(etcdrpc.AuthUserGrantRoleRequest(user="alice", role="app")) is not None)
must("roles of alice", lambda: list(auth.UserGet(etcdrpc.AuthUserGetRequest(name="alice")).roles))
must("auth enable", lambda: auth.AuthEnable(etcdrpc.AuthEnableRequest()) is not None)
outcome("user list without a token", lambda: list(auth.UserList(etcdrpc.AuthUserListRequest()).users))

# Logins that fail: a wrong password, an unknown user.
outcome("login alice:wrong", lambda: client("alice", "wrong") and "logged in")
outcome("login nobody:pw", lambda: client("nobody", "pw") and "logged in")

alice = client("alice", "alicepw")
print("login alice: logged in")
must("put /app/a", lambda: alice.put("/app/a", "1") is not None)
must("get /app/a", lambda: alice.get("/app/a")[0])
outcome("put /other", lambda: alice.put("/other", "1") is not None)
outcome("get /other", lambda: alice.get("/other")[0])
outcome("get /r", lambda: alice.get("/r")[0])
outcome("put /r", lambda: alice.put("/r", "x") is not None)
must("put /app/b", lambda: alice.put("/app/b", "2") is not None)
must("get prefix /app/", lambda: [v for v, _ in alice.get_prefix("/app/")])
outcome("get prefix /", lambda: [v for v, _ in alice.get_prefix("/")])
must("delete /app/b", lambda: alice.delete("/app/b"))
outcome("delete /other", lambda: alice.delete("/other"))

# Transactions: every branch is checked, the one that runs or not.
t = alice.transactions
must(
    "txn on /app",
    lambda: alice.transaction(
        compare=[t.value("/app/a") == "1"],
        success=[t.put("/app/c", "3")],
        failure=[t.get("/app/a")],
    )[0],
)
outcome(
    "txn failure branch writes /other",
    lambda: alice.transaction(
        compare=[t.value("/app/a") == "1"],
        success=[t.get("/app/a")],
        failure=[t.put("/other", "x")],
    )[0],
)
outcome(
    "txn compare on /other",
    lambda: alice.transaction(
        compare=[t.value("/other") == "1"], success=[], failure=[]
    )[0],
)

# Leases: grant, attach a key, keep alive, time to live, revoke.
lease = alice.lease(60)
print("lease grant: granted", lease.ttl)
must("put with lease", lambda: alice.put("/app/l", "x", lease=lease) is not None)
must("lease keepalive", lambda: [r.TTL for r in alice.refresh_lease(lease.id)])
must("lease ttl", lambda: lease.granted_ttl)
must("lease keys", lambda: lease.keys)
must("lease revoke", lambda: lease.revoke() or "revoked")
must("get /app/l after revoke", lambda: alice.get("/app/l")[0] is None)

# A watch with the user's token sees a put.
events = queue.Queue()
watch_id = must("watch /app/w", lambda: alice.add_watch_callback("/app/w", events.put) is not None)
must("put /app/w", lambda: alice.put("/app/w", "seen") is not None)
got = events.get(timeout=TIMEOUT)
print("watch event:", [(e.key, e.value) for e in got.events])

# Cluster and maintenance calls a user may make.
must("member names", lambda: [m.name for m in alice.members])
must("status has a leader", lambda: alice.status().leader is not None)

# Without a token, and as root.
anonymous = client()
outcome("anonymous get /app/a", lambda: anonymous.get("/app/a")[0])
outcome("anonymous put /app/a", lambda: anonymous.put("/app/a", "2") is not None)
root = client("root", "rootpw")
print("login root: logged in")
must("root put /other", lambda: root.put("/other", "o") is not None)
must("root get /other", lambda: root.get("/other")[0])
outcome("alice get /other again", lambda: alice.get("/other")[0])
print("done")
