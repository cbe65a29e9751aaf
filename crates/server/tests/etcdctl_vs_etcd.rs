//! Differential test: the same etcdctl session against a real etcd and against retcd must
//! print the same thing, byte for byte (after normalizing the Raft term, which depends on
//! how each server bootstraps). Needs `etcd` and `etcdctl` (Debian's `etcd-server` and
//! `etcd-client`); skips with a printed reason without them, fails under `CI=true`.
//!
//! The two servers are `common::etcd::twins`: their member and cluster ids agree, so `-w
//! json` output can be compared whole.

mod common;

use common::etcd::twins;
use common::etcdctl::{Etcdctl, normalize_raft_term};

/// Both output formats' terms become `T`; nothing else changes.
#[test]
fn raft_term_normalization() {
    assert_eq!(
        normalize_raft_term(r#"{"header":{"raft_term":12},"x":1} "RaftTerm" : 3"#),
        r#"{"header":{"raft_term":T},"x":1} "RaftTerm" : T"#
    );
    assert_eq!(normalize_raft_term("raft_term 4"), "raft_term 4");
}

/// Goal: every etcdctl KV command we support prints what etcd prints, errors included.
#[test]
fn etcdctl_session_matches_etcd() {
    let (Some(etcd_bin), Some(ctl)) = (retcd_testkit::etcd_bin::etcd(), Etcdctl::find()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (etcd, retcd) = twins(&etcd_bin, dir.path());
    let etcdctl = |port: u16, args: &[&str], stdin: &str| {
        normalize_raft_term(
            &ctl.run(&format!("127.0.0.1:{port}"), args, stdin)
                .transcript(),
        )
    };

    let txn_ok = "value(\"foo\") = \"bar\"\n\nput k1 v1\nget foo\n\nput k2 v2\n\n";
    let txn_fail = "mod(\"foo\") > \"100\"\n\nput k1 v1\n\nput k2 v2\ndel foo2\n\n";
    let session: &[(&[&str], &str)] = &[
        (&["put", "foo", "bar"], ""),
        (&["put", "foo2", "baz"], ""),
        (&["put", "--prev-kv", "foo", "qux"], ""),
        (&["put", "foo", "bar"], ""),
        (&["get", "foo"], ""),
        (&["get", "foo", "-w", "json"], ""),
        (&["get", "foo", "--prefix"], ""),
        (&["get", "foo", "--prefix", "--keys-only"], ""),
        (&["get", "foo", "--prefix", "--print-value-only"], ""),
        (
            &[
                "get",
                "foo",
                "--prefix",
                "--order=DESCEND",
                "--sort-by=VALUE",
            ],
            "",
        ),
        (
            &[
                "get",
                "foo",
                "--prefix",
                "--order=ASCEND",
                "--sort-by=MODIFY",
            ],
            "",
        ),
        (&["get", "foo", "--prefix", "--limit=1", "-w", "json"], ""),
        (
            &["get", "foo", "--prefix", "--count-only", "-w", "json"],
            "",
        ),
        (&["get", "--from-key", "a"], ""),
        (&["get", "foo", "--rev=2"], ""),
        (&["get", "foo", "--consistency=s", "-w", "fields"], ""),
        (&["get", "nope"], ""),
        (&["txn"], txn_ok),
        (&["txn"], txn_fail),
        (&["txn", "-w", "json"], txn_ok),
        (&["put", "--ignore-value", "k1"], ""),
        (&["put", "--ignore-value", "missing"], ""),
        (&["put", "", "x"], ""),
        (&["del", "--prev-kv", "foo2"], ""),
        (&["del", "foo", "--prefix"], ""),
        (&["del", "nothing"], ""),
        (&["get", "foo", "--rev=3", "-w", "json"], ""),
        (&["compaction", "3"], ""),
        (&["get", "foo", "--rev=2"], ""),
        (&["get", "foo", "--rev=1000"], ""),
        (&["compaction", "2"], ""),
        (&["compaction", "--physical", "5"], ""),
        (&["get", "", "--prefix", "-w", "json"], ""),
    ];
    let mut diffs = Vec::new();
    for (args, stdin) in session {
        let want = etcdctl(etcd.port, args, stdin);
        let got = etcdctl(retcd.port, args, stdin);
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
