//! etcd's own CLI against retcd (`apt-get install etcd-client`; skips without it, fails
//! under `CI=true`): outputs must be what etcdctl prints against etcd (checked against
//! etcd 3.4.23).

mod common;

use common::Retcd;
use common::etcdctl::{Etcdctl, Run};

/// etcdctl bound to one endpoint.
struct Ctl {
    etcdctl: Etcdctl,
    endpoint: String,
}

impl Ctl {
    fn run(&self, args: &[&str], stdin: &str) -> Run {
        self.etcdctl.run(&self.endpoint, args, stdin)
    }

    /// stdout of a run that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args, "");
        assert!(run.success(), "etcdctl {args:?} failed: {}", run.stderr);
        run.stdout
    }
}

// Goal: put/get/del/txn/compaction and endpoint commands print what they print against
// etcd.
#[test]
fn etcdctl_commands() {
    let Some(etcdctl) = Etcdctl::find() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = Retcd::start(&dir.path().join("data"), &[]);
    let ctl = Ctl {
        etcdctl: etcdctl.clone(),
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

    let run = ctl.run(
        &["txn"],
        "value(\"foo\") = \"bar\"\n\nput k1 v1\nget foo\n\nput k2 v2\n\n",
    );
    assert!(run.success(), "{}", run.stderr);
    assert_eq!(run.stdout, "SUCCESS\n\nOK\n\nfoo\nbar\n");
    let run = ctl.run(
        &["txn"],
        "value(\"foo\") = \"nope\"\n\nput k1 v1\n\nput k2 v2\n\n",
    );
    assert!(run.success(), "{}", run.stderr);
    assert_eq!(run.stdout, "FAILURE\n\nOK\n");
    assert_eq!(ctl.ok(&["get", "k2", "--print-value-only"]), "v2\n");

    assert_eq!(ctl.ok(&["del", "foo", "--prefix"]), "2\n");
    assert_eq!(ctl.ok(&["compaction", "3"]), "compacted revision 3\n");
    let run = ctl.run(&["get", "foo", "--rev=2"], "");
    assert!(!run.success());
    assert!(
        run.stderr
            .contains("etcdserver: mvcc: required revision has been compacted"),
        "{run:?}"
    );
    assert_eq!(
        ctl.ok(&["compaction", "--physical", "4"]),
        "compacted revision 4\n"
    );

    // etcdctl 3.4's endpoint commands dial each endpoint as given and send the whole
    // `http://host:port` as the HTTP/2 :authority, which the h2 crate refuses as
    // malformed (grpc-go tolerates it). Known gap; these commands work on `host:port`.
    let ctl = Ctl {
        etcdctl,
        endpoint: format!("127.0.0.1:{}", s.port),
    };
    // etcdctl 3.4 prints health to stderr.
    let run = ctl.run(&["endpoint", "health"], "");
    assert!(
        run.success() && run.output().contains("is healthy"),
        "{run:?}"
    );
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
    let Some(etcdctl) = Etcdctl::find() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = Retcd::start(
        &dir.path().join("data"),
        &["--quota-backend-bytes", "4194304"],
    );
    let mut c = s.client().await;
    common::put_until_refused(&mut c, 200).await;
    let ctl = Ctl {
        etcdctl,
        endpoint: format!("127.0.0.1:{}", s.port),
    };
    let line = "memberID:10276657743932975437 alarm:NOSPACE \n";
    assert_eq!(ctl.ok(&["alarm", "list"]), line);
    let run = ctl.run(&["put", "a", "b"], "");
    assert!(
        !run.success()
            && run
                .stderr
                .contains("etcdserver: mvcc: database space exceeded"),
        "{run:?}"
    );
    assert_eq!(ctl.ok(&["alarm", "disarm"]), line);
    assert_eq!(ctl.ok(&["alarm", "list"]), "");
}
