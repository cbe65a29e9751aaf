//! Restoring snapshots into retcd (issue 16): `retcd_server::restore` (what `retcdctl
//! snapshot restore` runs) makes a new data dir from a snapshot file, and retcd starts
//! from it.
//! - retcd's own snapshot, restored with `--bump-revision 1000000 --mark-compacted`:
//!   the restored member serves the data, its revision starts above every revision of
//!   the snapshot, and a watch from an older revision gets the compacted error
//!   (acceptance 7). The refusals of bad restores (missing hash, damaged file, a data dir
//!   that exists, a bump without --mark-compacted) are etcd's.
//! - With etcd 3.4.23 (skips with a printed reason without it, fails under `CI=true`): a
//!   snapshot `etcdctl snapshot save` took from a real etcd, restored into retcd, serves
//!   the same keys, versions, leases and HashKV as the etcd it came from (etcd -> retcd).

mod common;

use std::path::Path;
use std::time::Duration;

use common::Retcd;
use common::etcd::Etcd;
use common::etcdctl::Etcdctl;
use common::store::{all_keys, lease_ids};
use etcd_client::{PutOptions, WatchOptions};
use retcd_server::restore::{RestoreOptions, restore};

/// Writes a history: versions, deletions, leases with keys, a compaction. Returns the
/// revision it ends at.
async fn fill(c: &mut etcd_client::Client) -> i64 {
    for i in 0..200 {
        c.put(format!("k/{i:03}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    for i in 0..40 {
        c.put(format!("k/{i:03}"), format!("again {i}"), None)
            .await
            .unwrap();
    }
    c.delete("k/1", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    let lease = c.lease_grant(600, None).await.unwrap().id();
    c.put("leased", "1", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    c.compact(50, None).await.unwrap();
    c.put("last", "one", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

/// The snapshot of `c` as `etcdctl snapshot save` writes it: the stream's blobs, the
/// SHA-256 last.
async fn save(c: &mut etcd_client::Client, file: &Path) {
    let mut stream = c.snapshot().await.unwrap();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        out.extend_from_slice(m.blob());
    }
    std::fs::write(file, out).unwrap();
}

fn options(file: &Path, data_dir: &Path, peer_url: &str) -> RestoreOptions {
    RestoreOptions {
        snapshot: file.to_path_buf(),
        data_dir: Some(data_dir.to_path_buf()),
        name: "r".into(),
        initial_cluster: format!("r={peer_url}"),
        initial_advertise_peer_urls: vec![peer_url.to_string()],
        ..RestoreOptions::default()
    }
}

fn member_flags(peer_url: &str) -> Vec<String> {
    vec![
        "--name".into(),
        "r".into(),
        "--initial-advertise-peer-urls".into(),
        peer_url.into(),
        "--initial-cluster".into(),
        format!("r={peer_url}"),
    ]
}

// Goal: acceptance 7, and restore's refusals. retcd's snapshot restored with a revision
// bump: the data is served, writes continue above the bump, and history below it is
// compacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_with_a_revision_bump() {
    let dir = tempfile::tempdir().unwrap();
    let source = Retcd::start(&dir.path().join("source"), &[]);
    let mut c = source.client().await;
    let rev = fill(&mut c).await;
    let want = all_keys(&mut c).await;
    let want_leases = lease_ids(&mut c).await;
    let file = dir.path().join("snap.db");
    save(&mut c, &file).await;
    drop(source);

    let peer_url = format!("http://127.0.0.1:{}", common::free_port());
    let data = dir.path().join("restored");
    let mut opts = options(&file, &data, &peer_url);
    opts.bump_revision = 1_000_000;
    assert_eq!(
        restore(&opts).unwrap_err(),
        "--mark-compacted required if --bump-revision > 0"
    );
    assert!(!data.exists(), "a refused restore leaves nothing");
    opts.mark_compacted = true;
    let restored = restore(&opts).unwrap();
    assert_eq!(restored.revision, rev + 1_000_000);
    assert_eq!(
        restore(&opts).unwrap_err(),
        format!("data-dir {:?} exists", data.display().to_string())
    );

    let flags = member_flags(&peer_url);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let retcd = Retcd::start(&data, &flags);
    let mut r = retcd.client().await;
    let members = r.member_list().await.unwrap();
    assert_eq!(members.members().len(), 1);
    assert_eq!(members.members()[0].id(), restored.member_id.0);
    assert_eq!(all_keys(&mut r).await, want);
    assert_eq!(lease_ids(&mut r).await, want_leases);
    let put = r.put("after", "restore", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), rev + 1_000_001);
    // A watch from a revision the old cluster handed out is compacted.
    let mut stream = r
        .watch(
            "k/",
            Some(WatchOptions::new().with_prefix().with_start_revision(rev)),
        )
        .await
        .unwrap();
    // The created response, then the cancel.
    let resp = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a watch answer")
            .unwrap()
            .expect("the stream is open");
        if m.canceled() {
            break m;
        }
    };
    assert_eq!(resp.compact_revision(), rev + 1_000_000);

    // Refusals: no hash, a damaged file, a copied db without --skip-hash-check.
    let bad = dir.path().join("bad.db");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() - 32]).unwrap();
    let err = restore(&options(&bad, &dir.path().join("d1"), &peer_url)).unwrap_err();
    assert_eq!(err, "snapshot missing hash but --skip-hash-check=false");
    // Page 2's header names another page.
    let mut damaged = bytes.clone();
    damaged[2 * 4096] ^= 0xff;
    std::fs::write(&bad, &damaged).unwrap();
    let err = restore(&options(&bad, &dir.path().join("d2"), &peer_url)).unwrap_err();
    assert!(err.starts_with("expected sha256 ["), "{err}");
    let mut skip = options(&bad, &dir.path().join("d3"), &peer_url);
    skip.skip_hash_check = true;
    // Past the hash check, the damage is found by the file's own checks.
    assert!(restore(&skip).is_err());
    assert!(!dir.path().join("d3").exists());
    let mut wrong = options(&file, &dir.path().join("d4"), &peer_url);
    wrong.name = "nobody".into();
    assert_eq!(
        restore(&wrong).unwrap_err(),
        "couldn't find local name \"nobody\" in the initial cluster configuration"
    );
}

// Goal: issue 16, acceptance 2, the way from etcd: a real etcd 3.4.23's snapshot of
// 100,000 keys (and a history, leases, users and roles), restored into a three-member
// retcd, is served by every member with the same keys at the same revisions, the same
// leases and auth store, and HashKV at the snapshot's revision equal to the etcd's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_snapshot_restores_into_three_retcd_members() {
    let (Some(etcd_bin), Some(ctl)) = (retcd_testkit::etcd_bin::etcd(), Etcdctl::find()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let etcd_peer = format!("http://127.0.0.1:{}", common::free_port());
    let etcd = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        let peer = etcd_peer.clone();
        move || Etcd::start(&etcd_bin, &dir, "etcd", &peer)
    })
    .await
    .unwrap();
    let endpoint = format!("127.0.0.1:{}", etcd.port);
    let mut e = etcd_client::Client::connect([endpoint.clone()], None)
        .await
        .unwrap();
    fill(&mut e).await;
    // 100,000 keys, 100 to a transaction (etcd's limit is 128 operations).
    for batch in 0..1000 {
        let ops: Vec<etcd_client::TxnOp> = (0..100)
            .map(|i| {
                etcd_client::TxnOp::put(
                    format!("bulk/{:06}", batch * 100 + i),
                    format!("value {batch} {i}"),
                    None,
                )
            })
            .collect();
        e.txn(etcd_client::Txn::new().and_then(ops)).await.unwrap();
    }
    e.user_add("alice", "pw", None).await.unwrap();
    e.role_add("app").await.unwrap();
    e.role_grant_permission("app", etcd_client::Permission::read("bulk/").with_prefix())
        .await
        .unwrap();
    e.user_grant_role("alice", "app").await.unwrap();
    let rev = e
        .put("final", "x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let want = all_keys(&mut e).await;
    assert!(want.len() > 100_000);
    let want_hash = e.hash_kv(rev).await.unwrap().hash();
    let want_leases = lease_ids(&mut e).await;
    let file = dir.path().join("etcd.db");
    let saved = tokio::task::spawn_blocking({
        let file = file.clone();
        move || ctl.run(&endpoint, &["snapshot", "save", file.to_str().unwrap()], "")
    })
    .await
    .unwrap();
    assert!(saved.success(), "{}", saved.output());
    drop(etcd);

    let peers: Vec<String> = (0..3)
        .map(|_| format!("http://127.0.0.1:{}", common::free_port()))
        .collect();
    let cluster: String = peers
        .iter()
        .enumerate()
        .map(|(i, p)| format!("m{i}={p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        let data = dir.path().join(format!("m{i}"));
        let opts = RestoreOptions {
            snapshot: file.clone(),
            data_dir: Some(data.clone()),
            name: format!("m{i}"),
            initial_cluster: cluster.clone(),
            initial_advertise_peer_urls: vec![peer.clone()],
            ..RestoreOptions::default()
        };
        restore(&opts).unwrap();
        let flags: Vec<String> = vec![
            "--name".into(),
            format!("m{i}"),
            "--initial-advertise-peer-urls".into(),
            peer.clone(),
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-cluster".into(),
            cluster.clone(),
        ];
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        members.push(Retcd::spawn(&data, &flags));
    }
    for m in &members {
        m.wait_healthy();
    }
    for (i, m) in members.iter().enumerate() {
        let mut r = m.client().await;
        assert_eq!(all_keys(&mut r).await, want, "member {i}");
        assert_eq!(lease_ids(&mut r).await, want_leases, "member {i}");
        assert_eq!(
            r.hash_kv(rev).await.unwrap().hash(),
            want_hash,
            "HashKV at {rev}, member {i}"
        );
        assert_eq!(r.member_list().await.unwrap().members().len(), 3);
        // The auth store came along.
        assert_eq!(r.user_list().await.unwrap().users(), ["alice"]);
        let role = r.role_get("app").await.unwrap();
        assert_eq!(role.permissions().len(), 1);
    }
}
