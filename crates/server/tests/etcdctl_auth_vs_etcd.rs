//! Differential test: etcdctl's `user`, `role` and `auth` commands, and KV commands with
//! `--user`, print against retcd exactly what they print against etcd 3.4.23 (after the
//! Raft term, which depends on bootstrap). Needs `etcd` and `etcdctl`; skips with a
//! printed reason without them, fails under `CI=true`.

mod common;

use common::etcd::twins_with;
use common::etcdctl::{Etcdctl, normalize_raft_term};

// Goal: an operator's whole auth session (users, roles, grants, enable, logins, refusals,
// protected root, disable) prints the same on both servers.
#[test]
fn etcdctl_auth_session_matches_etcd() {
    let (Some(etcd_bin), Some(ctl)) = (retcd_testkit::etcd_bin::etcd(), Etcdctl::find()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (etcd, retcd) = twins_with(&etcd_bin, dir.path(), "http", &["--bcrypt-cost=4".into()]);
    let etcdctl = |port: u16, args: &[&str]| {
        normalize_raft_term(&ctl.run(&format!("127.0.0.1:{port}"), args, "").transcript())
    };
    let session: &[&[&str]] = &[
        &["user", "add", "root", "--new-user-password=rootpw"],
        &["user", "add", "alice", "--new-user-password=alicepw"],
        &["user", "add", "alice", "--new-user-password=again"],
        &["user", "add", "bob", "--new-user-password=bobpw"],
        &["role", "add", "app"],
        &["role", "add", "app"],
        &[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "/a/",
            "--prefix",
        ],
        &["role", "grant-permission", "app", "read", "/r"],
        &["role", "grant-permission", "app", "write", "/w", "/x"],
        &[
            "role",
            "grant-permission",
            "app",
            "read",
            "/f",
            "--from-key",
        ],
        &["role", "grant-permission", "nope", "read", "/r"],
        &["role", "get", "app"],
        &["role", "get", "nope"],
        &["role", "list"],
        &["user", "grant-role", "alice", "app"],
        &["user", "grant-role", "alice", "nope"],
        &["user", "grant-role", "root", "root"],
        &["user", "get", "alice"],
        &["user", "get", "alice", "--detail"],
        &["user", "get", "nobody"],
        &["user", "list"],
        &["auth", "enable"],
        &["get", "/a/x"],
        &["put", "/a/x", "1"],
        &["--user", "alice:alicepw", "put", "/a/x", "1"],
        &["--user", "alice:alicepw", "get", "/a/x"],
        &["--user", "alice:alicepw", "get", "/a/", "--prefix"],
        &["--user", "alice:alicepw", "get", "/r"],
        &["--user", "alice:alicepw", "put", "/r", "1"],
        &["--user", "alice:alicepw", "put", "/b", "1"],
        &["--user", "alice:alicepw", "del", "/a/x"],
        &["--user", "alice:alicepw", "user", "list"],
        &["--user", "alice:alicepw", "user", "get", "alice"],
        &["--user", "alice:alicepw", "role", "get", "app"],
        &["--user", "alice:alicepw", "auth", "disable"],
        &["--user", "alice:wrong", "get", "/a/x"],
        &["--user", "nobody:pw", "get", "/a/x"],
        &["--user", "bob:bobpw", "get", "/a/x"],
        &["--user", "root:rootpw", "get", "/a/x"],
        &[
            "--user",
            "root:rootpw",
            "role",
            "revoke-permission",
            "app",
            "/r",
        ],
        &[
            "--user",
            "root:rootpw",
            "role",
            "revoke-permission",
            "app",
            "/zz",
        ],
        &["--user", "root:rootpw", "role", "get", "app"],
        &[
            "--user",
            "root:rootpw",
            "user",
            "revoke-role",
            "alice",
            "app",
        ],
        &[
            "--user",
            "root:rootpw",
            "user",
            "revoke-role",
            "alice",
            "app",
        ],
        &[
            "--user",
            "root:rootpw",
            "user",
            "passwd",
            "bob",
            "--interactive=false",
        ],
        &["--user", "root:rootpw", "user", "delete", "root"],
        &["--user", "root:rootpw", "role", "delete", "root"],
        &[
            "--user",
            "root:rootpw",
            "user",
            "revoke-role",
            "root",
            "root",
        ],
        &["--user", "root:rootpw", "role", "delete", "app"],
        &["--user", "root:rootpw", "user", "get", "alice"],
        &["--user", "root:rootpw", "auth", "enable"],
        &["--user", "root:rootpw", "auth", "disable"],
        &["auth", "disable"],
        &["user", "delete", "alice"],
        &["user", "delete", "alice"],
        &["user", "list"],
        &["role", "list"],
        &["get", "/a/x"],
    ];
    let mut diffs = Vec::new();
    for args in session {
        let want = etcdctl(etcd.port, args);
        let got = etcdctl(retcd.port, args);
        if want != got {
            diffs.push(format!(
                "etcdctl {args:?}\n== etcd:\n{want}\n== retcd:\n{got}"
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} of {} commands differ:\n\n{}",
        diffs.len(),
        session.len(),
        diffs.join("\n\n")
    );
}
