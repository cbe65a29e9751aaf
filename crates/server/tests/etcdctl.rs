//! etcd's own CLI against retcd, when it is installed (`apt-get install etcd-client`):
//! outputs must be what etcdctl prints against etcd (checked against etcd 3.4.23).

mod common;

use std::process::Command;

use common::Retcd;

fn etcdctl_available() -> bool {
    Command::new("etcdctl")
        .arg("version")
        .env("ETCDCTL_API", "3")
        .output()
        .is_ok_and(|o| o.status.success())
}

struct Ctl {
    endpoint: String,
}

impl Ctl {
    /// Runs etcdctl with `args` (and `stdin`), returns (success, stdout, stderr).
    fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        use std::io::Write;
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .args(["--dial-timeout=5s", "--command-timeout=10s"])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn etcdctl");
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args, None);
        assert!(ok, "etcdctl {args:?} failed: {err}");
        out
    }
}

// Goal: put/get/del/txn/compaction and endpoint commands print what they print against
// etcd.
#[test]
fn etcdctl_commands() {
    if !etcdctl_available() {
        println!("skipping: etcdctl is not installed (apt-get install etcd-client)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Retcd::start(&dir.path().join("data"), &[]);
    let ctl = Ctl {
        endpoint: s.endpoint(),
    };
    assert_eq!(ctl.ok(&["put", "foo", "bar"]), "OK\n");
    assert_eq!(ctl.ok(&["put", "foo2", "baz"]), "OK\n");
    assert_eq!(ctl.ok(&["get", "foo"]), "foo\nbar\n");
    assert_eq!(ctl.ok(&["get", "foo", "--print-value-only"]), "bar\n");
    assert_eq!(
        ctl.ok(&["get", "foo", "--prefix", "--keys-only"]),
        "foo\n\nfoo2\n\n"
    );
    assert_eq!(
        ctl.ok(&["get", "foo", "--prefix", "--order=DESCEND", "--sort-by=KEY"]),
        "foo2\nbaz\nfoo\nbar\n"
    );
    assert_eq!(
        ctl.ok(&["get", "foo", "--prefix", "--limit=1", "--consistency=s"]),
        "foo\nbar\n"
    );
    let fields = ctl.ok(&["get", "foo", "-w", "fields"]);
    assert!(
        fields.contains("\"MemberID\" : 10276657743932975437"),
        "{fields}"
    );
    assert!(
        fields.contains("\"ClusterID\" : 14841639068965178418"),
        "{fields}"
    );
    assert!(fields.contains("\"CreateRevision\" : 2"), "{fields}");
    assert!(fields.contains("\"Count\" : 1"), "{fields}");

    let (ok, out, err) = ctl.run(
        &["txn"],
        Some("value(\"foo\") = \"bar\"\n\nput k1 v1\nget foo\n\nput k2 v2\n\n"),
    );
    assert!(ok, "{err}");
    assert_eq!(out, "SUCCESS\n\nOK\n\nfoo\nbar\n");
    let (ok, out, err) = ctl.run(
        &["txn"],
        Some("value(\"foo\") = \"nope\"\n\nput k1 v1\n\nput k2 v2\n\n"),
    );
    assert!(ok, "{err}");
    assert_eq!(out, "FAILURE\n\nOK\n");
    assert_eq!(ctl.ok(&["get", "k2", "--print-value-only"]), "v2\n");

    assert_eq!(ctl.ok(&["del", "foo", "--prefix"]), "2\n");
    assert_eq!(ctl.ok(&["compaction", "3"]), "compacted revision 3\n");
    let (ok, _, err) = ctl.run(&["get", "foo", "--rev=2"], None);
    assert!(!ok);
    assert!(
        err.contains("etcdserver: mvcc: required revision has been compacted"),
        "{err}"
    );
    assert_eq!(
        ctl.ok(&["compaction", "--physical", "4"]),
        "compacted revision 4\n"
    );

    // etcdctl 3.4's endpoint commands dial each endpoint as given and send the whole
    // `http://host:port` as the HTTP/2 :authority, which the h2 crate refuses as
    // malformed (grpc-go tolerates it). Known gap; these commands work on `host:port`.
    let ctl = Ctl {
        endpoint: format!("127.0.0.1:{}", s.port),
    };
    // etcdctl 3.4 prints health to stderr.
    let (ok, out, err) = ctl.run(&["endpoint", "health"], None);
    assert!(ok && (out + &err).contains("is healthy"), "{err}");
    let status = ctl.ok(&["endpoint", "status", "-w", "json"]);
    assert!(status.contains("\"version\":\"3.5.17\""), "{status}");
    assert!(
        status.contains("\"leader\":10276657743932975437"),
        "{status}"
    );
    let hash = ctl.ok(&["endpoint", "hashkv"]);
    assert!(
        hash.starts_with(&format!("127.0.0.1:{}, ", s.port)),
        "{hash}"
    );
    assert_eq!(
        ctl.ok(&["defrag"]),
        format!("Finished defragmenting etcd member[127.0.0.1:{}]\n", s.port)
    );
    assert_eq!(ctl.ok(&["get", "k2", "--print-value-only"]), "v2\n");
}

// Goal: `etcdctl alarm list` and `alarm disarm` print what they print against etcd once
// the backend quota raised NOSPACE (checked against etcd 3.4.23).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_alarm_list_and_disarm() {
    if !etcdctl_available() {
        println!("skipping: etcdctl is not installed (apt-get install etcd-client)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Retcd::start(
        &dir.path().join("data"),
        &["--quota-backend-bytes", "4194304"],
    );
    let mut c = s.client().await;
    common::put_until_refused(&mut c, 200).await;
    let ctl = Ctl {
        endpoint: format!("127.0.0.1:{}", s.port),
    };
    let line = "memberID:10276657743932975437 alarm:NOSPACE \n";
    assert_eq!(ctl.ok(&["alarm", "list"]), line);
    let (ok, _, err) = ctl.run(&["put", "a", "b"], None);
    assert!(
        !ok && err.contains("etcdserver: mvcc: database space exceeded"),
        "{err}"
    );
    assert_eq!(ctl.ok(&["alarm", "disarm"]), line);
    assert_eq!(ctl.ok(&["alarm", "list"]), "");
}
