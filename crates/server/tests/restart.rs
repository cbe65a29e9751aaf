//! Durability across restarts of the real binary: a clean stop (SIGTERM) keeps
//! everything; a crash (SIGKILL) keeps every acknowledged write and never moves the
//! revision backwards; Raft snapshots and WAL purging do not lose data.

mod common;

use common::Retcd;
use etcd_client::{Client, GetOptions};

async fn dump(c: &mut Client) -> (Vec<(String, String, i64, i64, i64)>, i64) {
    let r = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    let kvs = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
            )
        })
        .collect();
    (kvs, r.header().unwrap().revision())
}

// Goal: after SIGTERM the process exits 0, and a restart serves exactly the same keys,
// versions, revision, compaction and hash.
#[tokio::test]
async fn sigterm_then_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Retcd::start(&data, &[]);
    let mut c = s.client().await;
    for i in 0..50 {
        c.put(format!("key{i:02}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    for i in 0..10 {
        c.put(format!("key{i:02}"), "again", None).await.unwrap();
    }
    c.delete(
        "key4",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .unwrap();
    c.compact(30, None).await.unwrap();
    let before = dump(&mut c).await;
    let hash = c.hash_kv(0).await.unwrap().hash();
    drop(c);
    let status = s.terminate();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        s.log()
    );

    let s = Retcd::start(&data, &[]);
    let mut c = s.client().await;
    assert_eq!(dump(&mut c).await, before);
    let h = c.hash_kv(0).await.unwrap();
    assert_eq!((h.hash(), h.compact_version()), (hash, 30));
    let err = c
        .get("key01", Some(GetOptions::new().with_revision(29)))
        .await
        .unwrap_err();
    assert_eq!(common::status_of(err).code(), tonic::Code::OutOfRange);
    let r = c.put("next", "1", None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), before.1 + 1);
}

// Goal: SIGKILL in the middle of a stream of writes loses none that were acknowledged
// (they are in the fsynced WAL even if the backend's last commits were not durable),
// and the revision does not go backwards.
#[tokio::test]
async fn sigkill_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Retcd::start(&data, &[]);
    let mut acked = Vec::new();
    let mut last_rev = 0;
    {
        let mut c = s.client().await;
        for i in 0..300 {
            let r = c
                .put(format!("k{i:03}"), format!("value-{i}"), None)
                .await
                .unwrap();
            last_rev = r.header().unwrap().revision();
            acked.push(i);
        }
    }
    // Concurrent writers in flight at the moment of the kill.
    let endpoint = s.endpoint();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let Ok(mut c) = Client::connect([endpoint], None).await else {
                    return Vec::new();
                };
                let mut ok = Vec::new();
                for i in 0..10_000 {
                    let k = format!("w{w}-{i}");
                    match c.put(k.clone(), "x", None).await {
                        Ok(r) => ok.push((k, r.header().unwrap().revision())),
                        Err(_) => break,
                    }
                }
                ok
            })
        })
        .collect();
    // Let the writers get going, then kill without warning.
    let mut probe = s.client().await;
    loop {
        let n = probe
            .get(
                "w0-",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .unwrap()
            .count();
        if n >= 20 {
            break;
        }
        tokio::task::yield_now().await;
    }
    s.kill();
    let mut concurrent = Vec::new();
    for w in writers {
        concurrent.extend(w.await.unwrap());
    }
    assert!(!concurrent.is_empty());

    let s = Retcd::start(&data, &[]);
    let mut c = s.client().await;
    for i in acked {
        let r = c.get(format!("k{i:03}"), None).await.unwrap();
        assert_eq!(r.kvs()[0].value_str().unwrap(), format!("value-{i}"));
    }
    let mut max_acked = last_rev;
    for (k, rev) in &concurrent {
        let r = c.get(k.as_str(), None).await.unwrap();
        assert_eq!(r.count(), 1, "acknowledged {k} at revision {rev} was lost");
        assert_eq!(r.kvs()[0].mod_revision(), *rev);
        max_acked = max_acked.max(*rev);
    }
    let now = c
        .get("k000", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert!(
        now >= max_acked,
        "revision went back from {max_acked} to {now}"
    );
}

// Goal: with a small --snapshot-count the member takes Raft snapshots, writes snapshot
// files, purges old WAL segments only behind them, and restarts from a snapshot (both
// cleanly and after SIGKILL) with all data.
#[tokio::test]
async fn snapshots_and_restart_from_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--snapshot-count", "100"];
    let mut s = Retcd::start(&data, &args);
    let mut c = s.client().await;
    for i in 0..450 {
        c.put(format!("s{:03}", i % 200), format!("{i}"), None)
            .await
            .unwrap();
    }
    let before = dump(&mut c).await;
    let snaps: Vec<_> = std::fs::read_dir(data.join("member/snap"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.ends_with(".snap").then_some(name)
        })
        .collect();
    assert!(!snaps.is_empty(), "no snapshot file was written");
    s.kill();

    let mut s = Retcd::start(&data, &args);
    let mut c = s.client().await;
    assert_eq!(dump(&mut c).await, before);
    for i in 0..150 {
        c.put(format!("after{i}"), "x", None).await.unwrap();
    }
    let before = dump(&mut c).await;
    assert!(s.terminate().success());
    let s = Retcd::start(&data, &args);
    let mut c = s.client().await;
    assert_eq!(dump(&mut c).await, before);
}

/// The names in `dir` ending in `suffix`.
fn names_ending(dir: &std::path::Path, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(suffix))
        .collect();
    names.sort();
    names
}

// Goal: through the binary, --wal-dir puts the WAL in its own directory (the member
// restarts from it), --max-snapshots bounds the snapshot files kept, and what the member
// creates is private to its owner (0700 directories, 0600 files).
#[tokio::test]
async fn wal_dir_and_max_snapshots_take_effect() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let wal = dir.path().join("fast-disk").join("wal");
    let wal_arg = wal.display().to_string();
    let args = [
        "--wal-dir",
        &wal_arg,
        "--snapshot-count",
        "100",
        "--max-snapshots",
        "1",
    ];
    let mut s = Retcd::start(&data, &args);
    let mut c = s.client().await;
    for i in 0..450 {
        c.put(format!("s{:03}", i % 200), format!("{i}"), None)
            .await
            .unwrap();
    }
    let before = dump(&mut c).await;
    drop(c);
    assert!(s.terminate().success(), "{}", s.log());
    assert!(!data.join("member/wal").exists(), "the WAL went elsewhere");
    assert!(!names_ending(&wal, ".wal").is_empty());
    // Four snapshots or more were taken; one file is kept.
    assert_eq!(names_ending(&data.join("member/snap"), ".snap").len(), 1);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for d in [&data, &data.join("member"), &data.join("member/snap"), &wal] {
        assert_eq!(mode(d) & 0o077, 0, "{} has mode {:o}", d.display(), mode(d));
    }
    assert_eq!(mode(&data.join("member/snap/db")) & 0o077, 0);

    let s = Retcd::start(&data, &args);
    let mut c = s.client().await;
    assert_eq!(dump(&mut c).await, before);
}

// Goal: a backend without its WAL is refused at start (exit non-zero, with the reason),
// rather than served with history that can no longer be replayed.
#[tokio::test]
async fn backend_without_wal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Retcd::start(&data, &[]);
    s.client().await.put("k", "v", None).await.unwrap();
    assert!(s.terminate().success());
    std::fs::remove_dir_all(data.join("member/wal")).unwrap();
    let port = common::free_port().to_string();
    let url = format!("http://127.0.0.1:{port}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_retcd"))
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{}", common::free_port()),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("holds no WAL"), "{log}");
}
