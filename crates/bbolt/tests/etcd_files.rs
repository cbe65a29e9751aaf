//! Against etcd 3.4.23's own files and tools (skips with a printed reason without
//! `etcd` and `etcdctl`, fails under `CI=true`):
//! - a snapshot `etcdctl snapshot save` took from a real etcd opens, passes the check,
//!   and holds the buckets and keys etcd wrote (a value larger than a page included);
//! - a file this crate wrote passes `etcdctl snapshot status` (which runs bbolt's own
//!   consistency check first) with the revision and key count of the data.

use std::collections::BTreeMap;
use std::io;
use std::ops::ControlFlow;
use std::path::Path;
use std::process::{Command, Output};

use retcd_bbolt::{Db, PairSink, Pairs, Plan, Visit};
use retcd_testkit::cluster::{Cluster, ClusterSpec};

fn etcdctl(ctl: &Path, endpoint: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut child = Command::new(ctl)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run etcdctl");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(data) = stdin {
        input.write_all(data).expect("etcdctl stdin");
    }
    drop(input);
    let out = child.wait_with_output().expect("etcdctl");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

// Goal: a real etcd 3.4.23 snapshot reads back with every bucket and key etcd wrote.
#[test]
fn reads_an_etcd_snapshot() {
    let (Some(etcd), Some(ctl)) = (
        retcd_testkit::etcd_bin::etcd(),
        retcd_testkit::etcd_bin::etcdctl(),
    ) else {
        return;
    };
    let cluster = Cluster::start(ClusterSpec::new(etcd).size(1)).expect("start etcd");
    let url = cluster.client_url(0);
    for i in 0..40 {
        etcdctl(
            &ctl,
            &url,
            &["put", &format!("key-{i:02}"), &format!("value-{i}")],
            None,
        );
    }
    let big = vec![b'x'; 20_000];
    etcdctl(&ctl, &url, &["put", "big"], Some(&big));
    etcdctl(&ctl, &url, &["user", "add", "alice:pw"], None);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("etcd.db");
    etcdctl(
        &ctl,
        &url,
        &["snapshot", "save", file.to_str().unwrap()],
        None,
    );

    let db = Db::open(std::fs::File::open(&file).expect("open the snapshot")).expect("bbolt");
    assert_eq!(db.check(10), Vec::<String>::new());
    // etcdctl appends the SHA-256 of the database.
    assert_eq!(db.source_len(), db.size() + 32);
    type PairList = Vec<(Vec<u8>, Vec<u8>)>;
    let mut buckets: BTreeMap<String, PairList> = BTreeMap::new();
    let mut current = String::new();
    db.walk(&mut |v| {
        match v {
            Visit::Enter(name) => {
                current = String::from_utf8_lossy(name).into_owned();
                buckets.entry(current.clone()).or_default();
            }
            Visit::Leave => {}
            Visit::Pair(k, v) => buckets
                .get_mut(&current)
                .unwrap()
                .push((k.to_vec(), v.to_vec())),
        }
        ControlFlow::Continue(())
    })
    .expect("walk");
    let names: Vec<&str> = buckets.keys().map(String::as_str).collect();
    for want in [
        "alarm",
        "auth",
        "authRoles",
        "authUsers",
        "cluster",
        "key",
        "lease",
        "members",
        "members_removed",
        "meta",
    ] {
        assert!(names.contains(&want), "no bucket {want} in {names:?}");
    }
    let kvs = &buckets["key"];
    assert_eq!(kvs.len(), 41, "one revision per put");
    // Revision keys (8-byte main, '_', 8-byte sub) in order; values hold the user keys.
    assert!(kvs.iter().all(|(k, _)| k.len() == 17 && k[8] == b'_'));
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(contains(&kvs[0].1, b"key-00") && contains(&kvs[0].1, b"value-0"));
    assert!(contains(&kvs[40].1, &big), "the value larger than a page");
    assert!(buckets["authUsers"].iter().any(|(k, _)| k == b"alice"));
    let mut found = 0;
    assert!(
        db.for_each(b"key", &mut |_, _| {
            found += 1;
            ControlFlow::Continue(())
        })
        .unwrap()
    );
    assert_eq!(found, 41);
    assert!(
        !db.for_each(b"nope", &mut |_, _| ControlFlow::Continue(()))
            .unwrap()
    );
}

struct Generated {
    revisions: u64,
}

impl Pairs for Generated {
    fn scan(&mut self, f: &mut PairSink<'_>) -> io::Result<()> {
        for main in 2..2 + self.revisions {
            let mut key = main.to_be_bytes().to_vec();
            key.push(b'_');
            key.extend_from_slice(&0u64.to_be_bytes());
            f(b"key", &key, format!("value at {main}").as_bytes())?;
        }
        f(b"meta", b"consistent_index", &7u64.to_be_bytes())
    }
}

// Goal: etcd's own tool accepts a file this crate wrote: `etcdctl snapshot status` runs
// bbolt's check, then reports the last revision and the number of pairs.
#[test]
fn etcdctl_reads_a_written_file() {
    let Some(ctl) = retcd_testkit::etcd_bin::etcdctl() else {
        return;
    };
    let names: Vec<Vec<u8>> = ["key", "lease", "meta"]
        .iter()
        .map(|n| n.as_bytes().to_vec())
        .collect();
    let mut data = Generated { revisions: 5000 };
    let plan = Plan::new(4096, names, &mut data).expect("plan");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("written.db");
    let mut out = io::BufWriter::new(std::fs::File::create(&file).expect("create"));
    plan.write(&mut data, &mut out).expect("write");
    drop(out);
    let status = Command::new(&ctl)
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json", file.to_str().unwrap()])
        .output()
        .expect("etcdctl");
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "etcdctl snapshot status: {stdout}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(stdout.contains("\"revision\":5001"), "{stdout}");
    assert!(stdout.contains("\"totalKey\":5001"), "{stdout}");
    assert!(
        stdout.contains(&format!("\"totalSize\":{}", plan.size())),
        "{stdout}"
    );
}
