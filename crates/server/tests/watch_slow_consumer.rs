//! Issue 5, acceptance 3: a client that stops reading its watch stream must not slow
//! writes or other watchers down, and must cost bounded memory.
//!
//! One stream carries 1,000 watchers (one per key, each put matches one of them) and is
//! read all along. The same write load runs twice: alone, then with a second stream whose
//! watchers cover every written key and which is never read until the end. Measured:
//! - write throughput of the second run against the first (loosely bounded: the point
//!   is "not blocked", not a benchmark);
//! - the server's resident memory while the stalled stream falls behind, against what
//!   it would hold if it buffered every undelivered event;
//! - the stalled stream, once read again, gets every event once and in order (caught up
//!   from the backend).

mod common;

use std::time::{Duration, Instant};

use common::Retcd;
use retcd_api::etcdserverpb::watch_client::WatchClient;
use retcd_api::etcdserverpb::watch_request::RequestUnion;
use retcd_api::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// Keys written, one live watcher each on the read stream.
const KEYS: usize = 1000;
/// Puts per run.
const PUTS: usize = 2000;
/// Concurrent writers.
const WRITERS: usize = 16;
/// Value size: the stalled stream would need PUTS * STALLED_WATCHERS * VALUE bytes.
const VALUE: usize = 8192;
/// Watchers on the stalled stream, each on the whole prefix.
const STALLED_WATCHERS: usize = 24;
/// Bound on the test.
const LIMIT: Duration = Duration::from_secs(120);

async fn open_stream(
    endpoint: &str,
    creates: Vec<WatchCreateRequest>,
) -> (mpsc::Sender<WatchRequest>, Streaming<WatchResponse>) {
    // Its own connection: a stalled stream holds its connection's flow-control window.
    let mut client = WatchClient::connect(endpoint.to_string())
        .await
        .expect("connect")
        .max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel(creates.len() + 8);
    for c in creates {
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(c)),
        })
        .await
        .unwrap();
    }
    let stream = client
        .watch(ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    (tx, stream)
}

/// Reads `n` created responses.
async fn created(stream: &mut Streaming<WatchResponse>, n: usize) {
    for _ in 0..n {
        let r = stream.message().await.unwrap().expect("created");
        assert!(r.created && !r.canceled, "{r:?}");
    }
}

fn key(i: usize) -> String {
    format!("slow/{:04}", i % KEYS)
}

/// PUTS puts by WRITERS concurrent clients; returns puts per second.
async fn write_load(endpoint: &str) -> f64 {
    let value = vec![b'v'; VALUE];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let endpoint = endpoint.to_string();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = etcd_client::Client::connect([endpoint], None)
                .await
                .unwrap();
            for i in (w..PUTS).step_by(WRITERS) {
                c.put(key(i), value.clone(), None).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    PUTS as f64 / start.elapsed().as_secs_f64()
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// A sample the server must export, as a whole number.
fn metric(port: u16, name: &str) -> u64 {
    common::metric(port, name).unwrap_or_else(|| panic!("metric {name} missing")) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_stream_neither_blocks_writes_nor_grows_memory() {
    tokio::time::timeout(LIMIT, run()).await.expect("bounded");
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let server = Retcd::start(dir.path(), &[]);
    let endpoint = server.endpoint();

    // The read stream: 1,000 single-key watchers, drained by a task that counts events.
    let creates = (0..KEYS)
        .map(|i| WatchCreateRequest {
            key: key(i).into(),
            ..Default::default()
        })
        .collect();
    let (_live_tx, mut live) = open_stream(&endpoint, creates).await;
    created(&mut live, KEYS).await;
    let (count_tx, mut count_rx) = mpsc::unbounded_channel::<usize>();
    tokio::spawn(async move {
        while let Ok(Some(r)) = live.message().await {
            let _ = count_tx.send(r.events.len());
        }
    });
    let mut live_events = 0;

    let rss_start = rss_bytes(server.pid());
    let alone = write_load(&endpoint).await;
    while live_events < PUTS {
        live_events += count_rx.recv().await.expect("live stream open");
    }

    // The stalled stream: created, then never read until the end.
    let start_rev = {
        let mut c = server.client().await;
        c.get("x", None).await.unwrap().header().unwrap().revision() + 1
    };
    let creates = (0..STALLED_WATCHERS)
        .map(|_| WatchCreateRequest {
            key: "slow/".into(),
            range_end: "slow0".into(),
            ..Default::default()
        })
        .collect();
    let (_stalled_tx, mut stalled) = open_stream(&endpoint, creates).await;
    created(&mut stalled, STALLED_WATCHERS).await;
    let rss_before = rss_bytes(server.pid());
    // What the same writes cost without a stalled stream (caches, buffers).
    let baseline_growth = rss_before.saturating_sub(rss_start);

    let with_stalled = write_load(&endpoint).await;
    while live_events < 2 * PUTS {
        live_events += count_rx.recv().await.expect("live stream open");
    }
    let rss_after = rss_bytes(server.pid());
    let slow = metric(server.port, "etcd_debugging_mvcc_slow_watcher_total");
    let queued = metric(server.port, "retcd_watch_outbox_bytes");
    let undelivered = (PUTS * STALLED_WATCHERS * VALUE) as u64;
    let ratio = with_stalled / alone;
    eprintln!(
        "writes alone {alone:.0}/s, with a stalled stream {with_stalled:.0}/s (ratio {ratio:.2}); \
         rss {} -> {} -> {} MiB; outbox {queued} B; slow watchers {slow}; undelivered if buffered {} MiB",
        rss_start >> 20,
        rss_before >> 20,
        rss_after >> 20,
        undelivered >> 20
    );
    assert!(
        ratio >= 0.5,
        "a stalled stream slowed writes to {ratio:.2} of their throughput"
    );
    assert!(
        slow >= 1,
        "the stalled stream's watchers should be unsynced"
    );
    assert!(
        queued <= 8 << 20,
        "{queued} bytes queued for clients; the bound is 4 MiB per stream plus a response"
    );
    let grown = rss_after.saturating_sub(rss_before);
    assert!(
        grown < baseline_growth + undelivered / 8,
        "memory grew by {} MiB ({} MiB without the stalled stream) while {} MiB were undelivered",
        grown >> 20,
        baseline_growth >> 20,
        undelivered >> 20
    );

    // Reading again: every watcher of the stalled stream gets all PUTS events, in order.
    let mut next = [start_rev; STALLED_WATCHERS];
    let mut done = 0;
    while done < STALLED_WATCHERS {
        let r = stalled
            .message()
            .await
            .unwrap()
            .expect("stalled stream open");
        assert!(!r.canceled, "{r:?}");
        let w = usize::try_from(r.watch_id).unwrap();
        for e in &r.events {
            let kv = e.kv.as_ref().unwrap();
            assert_eq!(kv.mod_revision, next[w], "watcher {w}: gap or repeat");
            next[w] += 1;
        }
        if !r.events.is_empty() && next[w] == start_rev + PUTS as i64 {
            done += 1;
        }
    }
    assert_eq!(
        metric(server.port, "etcd_debugging_mvcc_slow_watcher_total"),
        0
    );
}
