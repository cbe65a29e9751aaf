//! Maintenance.Snapshot (issue 16): retcd streams its store as the bbolt file etcd's
//! backend is, in etcd's messages (32 KiB each with the bytes still to come, then the
//! SHA-256). Without etcd: the stream is checked with retcd's own bbolt reader. With
//! etcd 3.4.23 (skips with a printed reason without it, fails under `CI=true`):
//! `etcdctl snapshot save` takes it, `snapshot status` reads it, `snapshot restore` makes
//! an etcd data dir of it, and the restored etcd serves every key, value, version,
//! lease and the member of the original, with the same HashKV.

mod common;

use std::ops::ControlFlow;
use std::time::Duration;

use common::Retcd;
use common::etcd::Etcd;
use common::etcdctl::Etcdctl;
use common::store::{all_keys, lease_ids};
use etcd_client::{GetOptions, PutOptions};

/// Writes a history with every kind of record: versions, deletions, a re-created key,
/// leases with keys, a compaction. Returns the revision it ends at.
async fn fill(c: &mut etcd_client::Client) -> i64 {
    // Revisions 2..=61: one key 60 times, so the compaction at 100 leaves one of them.
    for i in 0..60 {
        c.put("counter", i.to_string(), None).await.unwrap();
    }
    for i in 0..300 {
        c.put(format!("k/{i:03}"), format!("v{i}").repeat(i % 7 + 1), None)
            .await
            .unwrap();
    }
    for i in 0..50 {
        c.put(format!("k/{i:03}"), format!("again {i}"), None)
            .await
            .unwrap();
    }
    c.delete("k/010", None).await.unwrap();
    c.put("k/010", "back", None).await.unwrap();
    c.delete(
        "k/02",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .unwrap();
    c.put("big", vec![b'x'; 10_000], None).await.unwrap();
    let lease = c.lease_grant(600, None).await.unwrap().id();
    c.put("leased/a", "1", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    c.put("leased/b", "2", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    c.lease_grant(300, None).await.unwrap();
    c.compact(100, None).await.unwrap();
    c.put("last", "one", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

/// The snapshot stream of `c`: every message's (blob, remaining_bytes).
async fn snapshot(c: &mut etcd_client::Client) -> Vec<(Vec<u8>, u64)> {
    let mut stream = c.snapshot().await.unwrap();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        out.push((m.blob().to_vec(), m.remaining_bytes()));
    }
    out
}

// Goal: the stream is etcd's: 32 KiB messages whose remaining_bytes count what is left,
// then the SHA-256 of the file; the file is a sound bbolt file holding etcd's buckets
// with one record per revision of the history and the etcd encodings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_stream_is_an_etcd_backend_file() {
    let dir = tempfile::tempdir().unwrap();
    let retcd = Retcd::start(dir.path(), &[]);
    let mut c = retcd.client().await;
    let rev = fill(&mut c).await;
    let messages = snapshot(&mut c).await;
    let (last, data) = messages.split_last().unwrap();
    assert_eq!(last.1, 0);
    let file: Vec<u8> = data.iter().flat_map(|(b, _)| b.clone()).collect();
    assert_eq!(
        last.0,
        ring::digest::digest(&ring::digest::SHA256, &file).as_ref()
    );
    let mut left = file.len() as u64;
    for (blob, remaining) in data {
        assert!(
            blob.len() == 32 * 1024 || *remaining == 0,
            "a short message mid-stream"
        );
        left -= blob.len() as u64;
        assert_eq!(*remaining, left);
    }
    let db = retcd_bbolt::Db::open(file).unwrap();
    assert_eq!(db.check(10), Vec::<String>::new());
    let mut names = Vec::new();
    let mut depth = 0;
    db.walk(&mut |v| {
        match v {
            retcd_bbolt::Visit::Enter(n) => {
                depth += 1;
                names.push(String::from_utf8_lossy(n).into_owned());
            }
            retcd_bbolt::Visit::Leave => depth -= 1,
            retcd_bbolt::Visit::Pair(..) => assert_eq!(depth, 1),
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(
        names,
        [
            "alarm",
            "auth",
            "authRoles",
            "authUsers",
            "cluster",
            "key",
            "lease",
            "members",
            "members_removed",
            "meta"
        ]
    );
    let mut revisions = Vec::new();
    db.for_each(b"key", &mut |k, v| {
        revisions.push(i64::from_be_bytes(k[..8].try_into().unwrap()));
        // mvccpb.KeyValue: field 1 (the key) first.
        assert_eq!(v[0], 0x0a);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(revisions.last(), Some(&rev));
    assert!(
        revisions.windows(2).all(|w| w[0] <= w[1]),
        "revisions in order"
    );
    // Compacted at 100: of revisions 2..=100, the counter's last (61) and the first 39
    // k/ keys (62..=100) remain.
    let below = revisions.iter().filter(|&&r| r <= 100).count();
    assert_eq!(below, 40, "records at or below the compaction");
    let mut leases = 0;
    db.for_each(b"lease", &mut |_, _| {
        leases += 1;
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(leases, 2);
    let mut members = Vec::new();
    db.for_each(b"members", &mut |_, v| {
        members.push(String::from_utf8_lossy(v).into_owned());
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(members.len(), 1);
    assert!(members[0].starts_with("{\"id\":"), "{}", members[0]);
}

// Goal: issue 16, acceptance 1. etcdctl 3.4 saves retcd's snapshot and reads its status;
// restored into a real etcd 3.4.23, it serves the same keys, values, versions, leases
// and member, and etcd's HashKV at the snapshot's revision equals retcd's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restores_a_retcd_snapshot() {
    let (Some(etcd_bin), Some(ctl)) = (retcd_testkit::etcd_bin::etcd(), Etcdctl::find()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let peer_url = format!("http://127.0.0.1:{}", common::free_port());
    let retcd = Retcd::start(
        &dir.path().join("retcd"),
        &[
            "--name",
            "diff",
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("diff={peer_url}"),
        ],
    );
    let mut c = retcd.client().await;
    let rev = fill(&mut c).await;
    let want_keys = all_keys(&mut c).await;
    let want_hash = c.hash_kv(rev).await.unwrap();
    let want_leases = lease_ids(&mut c).await;
    let want_members = c.member_list().await.unwrap();

    let file = dir.path().join("snap.db");
    let endpoint = format!("127.0.0.1:{}", retcd.port);
    let ctl_run = |args: Vec<String>| {
        let ctl = ctl.clone();
        let endpoint = endpoint.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ctl.run(&endpoint, &args, "")
        })
    };
    let save = ctl_run(vec![
        "snapshot".into(),
        "save".into(),
        file.display().to_string(),
    ])
    .await
    .unwrap();
    assert!(save.success(), "{}", save.output());
    assert!(
        save.stdout.contains("Snapshot saved at"),
        "{}",
        save.output()
    );
    let status = ctl_run(vec![
        "snapshot".into(),
        "status".into(),
        "-w".into(),
        "json".into(),
        file.display().to_string(),
    ])
    .await
    .unwrap();
    assert!(status.success(), "{}", status.output());
    assert!(
        status.stdout.contains(&format!("\"revision\":{rev}")),
        "{}",
        status.stdout
    );
    let restored = dir.path().join("etcd-data");
    let restore = ctl_run(vec![
        "snapshot".into(),
        "restore".into(),
        file.display().to_string(),
        "--data-dir".into(),
        restored.display().to_string(),
        "--name".into(),
        "diff".into(),
        "--initial-cluster".into(),
        format!("diff={peer_url}"),
        "--initial-advertise-peer-urls".into(),
        peer_url.clone(),
    ])
    .await
    .unwrap();
    assert!(restore.success(), "{}", restore.output());
    drop(retcd);

    let etcd = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || Etcd::start(&etcd_bin, &dir, "diff", &peer_url)
    })
    .await
    .unwrap();
    let mut e = etcd_client::Client::connect(
        [format!("127.0.0.1:{}", etcd.port)],
        Some(etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(10))),
    )
    .await
    .unwrap();
    assert_eq!(all_keys(&mut e).await, want_keys);
    let got_hash = e.hash_kv(rev).await.unwrap();
    assert_eq!(
        (got_hash.hash(), got_hash.compact_version()),
        (want_hash.hash(), want_hash.compact_version()),
        "HashKV at {rev}"
    );
    assert_eq!(lease_ids(&mut e).await, want_leases);
    let got_members = e.member_list().await.unwrap();
    let names = |m: &etcd_client::MemberListResponse| -> Vec<(u64, String, Vec<String>)> {
        m.members()
            .iter()
            .map(|m| (m.id(), m.name().to_string(), m.peer_urls().to_vec()))
            .collect()
    };
    assert_eq!(names(&got_members), names(&want_members));
    // Compacted history stays compacted.
    let old = e
        .get("k/001", Some(GetOptions::new().with_revision(50)))
        .await
        .unwrap_err();
    assert!(old.to_string().contains("compacted"), "{old}");
}
