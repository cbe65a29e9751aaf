//! `retcdctl snapshot status` prints what etcdctl 3.4's prints for the same file, in every
//! output format retcdctl has, with the same exit code and error for one it refuses
//! (skips with a printed reason without etcdctl, fails under `CI=true`). Without
//! etcdctl, the numbers are checked against the file's known contents.

use std::io;
use std::path::Path;
use std::process::Command;

use retcd_bbolt::{PairSink, Pairs, Plan};

/// A file holding etcd's buckets, a `key` bucket of `revisions` records and a meta key.
struct Generated {
    revisions: u64,
}

impl Pairs for Generated {
    fn scan(&mut self, f: &mut PairSink<'_>) -> io::Result<()> {
        f(b"cluster", b"clusterVersion", b"3.4.0")?;
        for main in 2..2 + self.revisions {
            let mut key = main.to_be_bytes().to_vec();
            key.push(b'_');
            key.extend_from_slice(&0u64.to_be_bytes());
            f(b"key", &key, format!("value at {main}").as_bytes())?;
        }
        f(b"meta", b"consistent_index", &7u64.to_be_bytes())
    }
}

fn write_file(path: &Path) -> u64 {
    let names: Vec<Vec<u8>> = ["alarm", "auth", "cluster", "key", "lease", "meta"]
        .iter()
        .map(|n| n.as_bytes().to_vec())
        .collect();
    let mut data = Generated { revisions: 3000 };
    let plan = Plan::new(4096, names, &mut data).unwrap();
    let mut out = io::BufWriter::new(std::fs::File::create(path).unwrap());
    plan.write(&mut data, &mut out).unwrap();
    plan.size()
}

fn run(bin: &Path, args: &[&str]) -> (String, String, Option<i32>) {
    let out = Command::new(bin)
        .env("ETCDCTL_API", "3")
        .args(args)
        .output()
        .expect("run");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
    )
}

// Goal: the same numbers and bytes as etcdctl's, format by format.
#[test]
fn status_matches_etcdctl() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap.db");
    let size = write_file(&file);
    let path = file.to_str().unwrap();
    let retcdctl = Path::new(env!("CARGO_BIN_EXE_retcdctl"));
    let (json, _, code) = run(retcdctl, &["snapshot", "status", path, "-w", "json"]);
    assert_eq!(code, Some(0));
    // 3000 records, 1 meta key, 1 cluster key; the last revision is 3001.
    assert!(
        json.contains("\"revision\":3001,\"totalKey\":3002,"),
        "{json}"
    );
    assert!(json.contains(&format!("\"totalSize\":{size}")), "{json}");
    let Some(etcdctl) = retcd_testkit::etcd_bin::etcdctl() else {
        return;
    };
    for format in ["simple", "json", "fields"] {
        let args = ["snapshot", "status", path, "-w", format];
        assert_eq!(run(retcdctl, &args), run(&etcdctl, &args), "-w {format}");
    }
    let args = ["snapshot", "status", path, "-w", "protobuf"];
    let (_, want_err, want_code) = run(&etcdctl, &args);
    let (_, got_err, got_code) = run(retcdctl, &args);
    assert_eq!(got_code, want_code);
    assert_eq!(got_err, want_err);
    // A damaged file fails on both.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[3 * 4096] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let args = ["snapshot", "status", path];
    assert_ne!(run(&etcdctl, &args).2, Some(0));
    assert_eq!(run(retcdctl, &args).2, Some(1));
}
