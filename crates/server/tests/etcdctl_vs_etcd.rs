//! Differential test: the same etcdctl session against a real etcd and against retcd must
//! print the same thing, byte for byte (after normalizing the Raft term, which depends on
//! how each server bootstraps). Needs `etcd` and `etcdctl` on PATH (Debian's
//! `etcd-server` and `etcd-client`); skips with a printed reason otherwise.
//!
//! Both servers get the same name, peer URL and cluster token, so etcd's and retcd's
//! member and cluster IDs (derived from them) agree and `-w json` output can be compared
//! whole. retcd does not listen on the peer URL; it only derives its ID from it.

mod common;

use std::process::{Command, Stdio};

use common::etcd::{Etcd, runs};
use common::{Retcd, free_port};

/// Runs etcdctl against `port`; returns exit status, stdout and stderr, normalized.
fn etcdctl(port: u16, args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=127.0.0.1:{port}"))
        .args(["--dial-timeout=5s", "--command-timeout=10s"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcdctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("etcdctl output");
    // etcdctl's own client-side log lines carry timestamps and random client ids; they
    // say nothing about the server, whose error follows on its own line.
    let stderr: String = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("{\"level\":"))
        .map(|l| format!("{l}\n"))
        .collect();
    let text = format!(
        "exit {}\n--- stdout\n{}--- stderr\n{stderr}",
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout),
    );
    normalize_raft_term(&text)
}

/// Replaces the digits after every `raft_term` (JSON) and `"RaftTerm" : ` (fields).
fn normalize_raft_term(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = ["\"raft_term\":", "\"RaftTerm\" : "]
        .iter()
        .filter_map(|p| rest.find(p).map(|i| i + p.len()))
        .min()
    {
        out.push_str(&rest[..i]);
        rest = rest[i..].trim_start_matches(|c: char| c.is_ascii_digit());
        out.push('T');
    }
    out.push_str(rest);
    out
}

#[test]
fn raft_term_normalization() {
    assert_eq!(
        normalize_raft_term(r#"{"raft_term":12,"x":1} "RaftTerm" : 3"#),
        r#"{"raft_term":T,"x":1} "RaftTerm" : T"#
    );
}

/// Goal: every etcdctl KV command we support prints what etcd prints, errors included.
#[test]
fn etcdctl_session_matches_etcd() {
    if !runs("etcd", &["--version"]) || !runs("etcdctl", &["version"]) {
        println!(
            "skipping: etcd and etcdctl are not both installed (apt-get install etcd-server etcd-client)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let peer_url = format!("http://127.0.0.1:{}", free_port());
    let etcd = Etcd::start(dir.path(), "diff", &peer_url);
    let ids = [
        "--name",
        "diff",
        "--initial-advertise-peer-urls",
        &peer_url,
        "--initial-cluster",
        &format!("diff={peer_url}"),
    ];
    let retcd = Retcd::start(&dir.path().join("retcd-data"), &ids);

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
