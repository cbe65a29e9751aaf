# Shared helpers of the benchmark scripts (sourced, not run).

# free_ports <n>: n distinct TCP ports on 127.0.0.1 that were free a moment ago, on one
# line. Picked at random in 20000-31999 and bind-tested, like the tests'
# `retcd_testkit::cluster::free_ports`: below Linux's ephemeral range (32768-60999),
# because a port the OS hands out for port 0 is also what it hands the next outgoing
# connection, which can take it between the pick and the server's bind. All n are held
# while picking, so they differ; ask for every port a script needs in one call
# (`ports=$(free_ports 4); read -r a b c d <<<"$ports"`).
free_ports() {
  python3 - "${1:?free_ports: how many ports?}" <<'PY'
import random, socket, sys
n = int(sys.argv[1])
ports, held = [], []
for _ in range(10_000):
    if len(ports) == n:
        break
    port = random.randint(20000, 31999)
    if port in ports:
        continue
    s = socket.socket()
    # As a server binds (Go and Rust set SO_REUSEADDR): TIME_WAIT leftovers do not count.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        continue
    ports.append(port)
    held.append(s)
if len(ports) < n:
    sys.exit(f"free_ports: no {n} free ports found in 20000-31999")
print(" ".join(map(str, ports)))
PY
}

# free_port: one such port.
free_port() { free_ports 1; }

# Waits (up to 20 s) until the server on client port $1 answers /health.
wait_ready() { for _ in $(seq 1 400); do curl -fs "http://127.0.0.1:$1/health" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "server on $1 not ready"; exit 1; }

# start_single <etcd|retcd binary> <name> <dir> <client port> <peer port> [extra flags...]
# Starts a single-member server in the background; appends its pid to the `pids` array.
start_single() {
  local bin=$1 name=$2 dir=$3 cp=$4 pp=$5; shift 5
  "$bin" --name "$name" --data-dir "$dir" --listen-client-urls "http://127.0.0.1:$cp" \
    --advertise-client-urls "http://127.0.0.1:$cp" --listen-peer-urls "http://127.0.0.1:$pp" \
    --initial-advertise-peer-urls "http://127.0.0.1:$pp" --initial-cluster "$name=http://127.0.0.1:$pp" \
    --log-level error "$@" >"$dir.log" 2>&1 &
  pids+=($!)
}
