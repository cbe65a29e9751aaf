//! Auto-compaction in a running member (issue 16, acceptance 5; the decisions
//! themselves are unit-tested with a made-up clock in `compactor.rs`, the flag parsing in
//! `config/compaction.rs`). A periodic window of 2 s: no compaction before the window has
//! passed, then one at a revision of about a window before, then more as writes go on.

mod common;

use std::time::{Duration, Instant};

use common::Retcd;
use etcd_client::GetOptions;

/// The compaction revision the member reports (via a read at revision 1: refused as
/// compacted once anything was compacted), polled until it exceeds `above` or `limit`.
async fn compacted_above(c: &mut etcd_client::Client, above: i64, limit: Duration) -> Option<i64> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let hash = c.hash_kv(0).await.unwrap();
        if hash.compact_version() > above {
            return Some(hash.compact_version());
        }
        // Writes go on meanwhile, as an application's would.
        c.put("k", "v", None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

// Goal: periodic auto-compaction compacts by itself, first after a whole window, and
// again as the store moves on; compacted revisions are refused to reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_compacts() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let retcd = Retcd::start(
        dir.path(),
        &[
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "2s",
        ],
    );
    let mut c = retcd.client().await;
    let first = compacted_above(&mut c, 0, Duration::from_secs(20))
        .await
        .expect("no auto compaction within 20 s");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "compacted before the window passed"
    );
    // The first compaction is at the revision sampled when the member started (1).
    let now = c.get("k", None).await.unwrap().header().unwrap().revision();
    assert!(first < now, "compacted at {first}, the store is at {now}");
    let second = compacted_above(&mut c, first, Duration::from_secs(20))
        .await
        .expect("no second auto compaction within 20 s");
    assert!(second > first);
    let err = c
        .get("k", Some(GetOptions::new().with_revision(second - 1)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("compacted"), "{err}");
}
