//! The watchable store through its public API: what each kind of watcher receives, in
//! what order, and what a stalled client costs.

use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use retcd_backend::MemBackend;
use retcd_mvcc::watch::{
    ERR_COMPACTED, ERR_DUPLICATE_ID, ERR_EMPTY_RANGE, INVALID_WATCH_ID, Out, WatchId,
};
use retcd_mvcc::{EventKind, KvStore, WatchConfig, WatchOptions, WatchStream, WatchableStore};

/// Bound on any single wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

struct Env {
    kv: Arc<KvStore<MemBackend>>,
    ws: Arc<WatchableStore<MemBackend>>,
}

impl Env {
    fn new(config: WatchConfig) -> Env {
        let kv = Arc::new(KvStore::open(MemBackend::new()).unwrap());
        let ws = WatchableStore::new(kv.clone(), config);
        Env { kv, ws }
    }

    /// Applies one transaction of puts (key, value) and deletes (key, "" or range end),
    /// then notifies, as the apply loop does.
    fn txn(&self, puts: &[(&str, &str)], deletes: &[(&str, &str)]) -> i64 {
        let mut batch = self.kv.begin_batch().unwrap();
        {
            let mut txn = batch.txn();
            for (k, v) in puts {
                txn.put(k.as_bytes(), v.as_bytes(), 0).unwrap();
            }
            for (k, end) in deletes {
                txn.delete_range(k.as_bytes(), end.as_bytes()).unwrap();
            }
        }
        let committed = batch.commit().unwrap();
        self.ws.notify(committed.revision, committed.events);
        committed.revision
    }

    fn put(&self, key: &str, value: &str) -> i64 {
        self.txn(&[(key, value)], &[])
    }

    fn compact(&self, rev: i64) {
        let mut batch = self.kv.begin_batch().unwrap();
        batch.compact(rev).unwrap();
        let c = batch.commit().unwrap();
        self.ws.notify(c.revision, c.events);
    }

    fn client(&self) -> Client {
        let (tx, rx) = mpsc::channel();
        let stream = self.ws.open_stream(
            Box::new(move || {
                let _ = tx.send(());
            }),
            Box::new(|| {}),
        );
        Client { stream, rx }
    }
}

struct Client {
    stream: WatchStream<MemBackend>,
    rx: mpsc::Receiver<()>,
}

impl Client {
    fn watch(&self, key: &str, range_end: &str, start: i64) -> WatchId {
        self.create(WatchOptions {
            key: key.into(),
            range_end: range_end.into(),
            start_revision: start,
            ..WatchOptions::default()
        })
    }

    fn create(&self, opts: WatchOptions) -> WatchId {
        self.stream.create(opts);
        match self.next() {
            Out::Created {
                watch_id,
                cancel_reason: None,
                ..
            } => watch_id,
            other => panic!("expected a created response, got {other:?}"),
        }
    }

    /// The next response, waiting (bounded) for the sync thread if needed.
    fn next(&self) -> Out {
        loop {
            if let Some(out) = self.stream.outbox().pop() {
                return out;
            }
            self.rx
                .recv_timeout(WAIT)
                .expect("a response within the wait bound");
        }
    }

    fn try_next(&self) -> Option<Out> {
        self.stream.outbox().pop()
    }

    /// (watch id, revision, key, kind) of events until `count` events arrived; asserts
    /// each response holds whole revisions in order.
    fn events(&self, count: usize) -> Vec<(WatchId, i64, String, EventKind)> {
        let mut got = Vec::new();
        while got.len() < count {
            match self.next() {
                Out::Events {
                    watch_id,
                    revision,
                    events,
                    ..
                } => {
                    for e in events.iter() {
                        assert!(e.kv.mod_revision <= revision, "header behind its events");
                        got.push((
                            watch_id,
                            e.kv.mod_revision,
                            String::from_utf8(e.kv.key.clone()).unwrap(),
                            e.kind,
                        ));
                    }
                }
                other => panic!("expected events, got {other:?}"),
            }
        }
        assert_eq!(got.len(), count, "more events than expected");
        got
    }
}

/// A snapshot image of another store in which `k` was put with each of `values`.
fn leader_image(values: &[&str]) -> Vec<u8> {
    use retcd_backend::{Backend, ReadTx};
    let leader = KvStore::open(MemBackend::new()).unwrap();
    for v in values {
        let mut batch = leader.begin_batch().unwrap();
        batch.txn().put(b"k", v.as_bytes(), 0).unwrap();
        batch.commit().unwrap();
    }
    let mut image = Vec::new();
    leader
        .backend()
        .begin_read()
        .unwrap()
        .write_snapshot(&mut image)
        .unwrap();
    image
}

fn keys_of(events: &[(WatchId, i64, String, EventKind)], id: WatchId) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.0 == id)
        .map(|e| e.2.clone())
        .collect()
}

#[test]
fn each_range_kind_gets_its_events_once_and_in_order() {
    let env = Env::new(WatchConfig::default());
    let c = env.client();
    let single = c.watch("a", "", 0);
    let prefix = c.watch("a", "b", 0);
    let from_key = c.watch("b", "\0", 0);
    let all = c.watch("", "\0", 0);
    assert_eq!((single, prefix, from_key, all), (0, 1, 2, 3));
    env.put("a", "1");
    env.put("ab", "2");
    env.put("b", "3");
    env.txn(&[], &[("a", "c")]);
    let got = c.events(14);
    assert_eq!(keys_of(&got, single), ["a", "a"]);
    assert_eq!(keys_of(&got, prefix), ["a", "ab", "a", "ab"]);
    assert_eq!(keys_of(&got, from_key), ["b", "b"]);
    assert_eq!(keys_of(&got, all), ["a", "ab", "b", "a", "ab", "b"]);
    assert!(c.try_next().is_none());
}

#[test]
fn filters_drop_their_kind_and_empty_responses() {
    let env = Env::new(WatchConfig::default());
    let c = env.client();
    let no_put = c.create(WatchOptions {
        key: "k".into(),
        filter_put: true,
        ..WatchOptions::default()
    });
    let no_delete = c.create(WatchOptions {
        key: "k".into(),
        filter_delete: true,
        prev_kv: true,
        ..WatchOptions::default()
    });
    env.put("k", "1");
    env.txn(&[], &[("k", "")]);
    let got = c.events(2);
    assert!(got.contains(&(no_delete, 2, "k".into(), EventKind::Put)));
    assert!(got.contains(&(no_put, 3, "k".into(), EventKind::Delete)));
    assert!(c.try_next().is_none(), "a filtered-out event sends nothing");
}

#[test]
fn a_transaction_arrives_in_one_response() {
    let env = Env::new(WatchConfig::default());
    let c = env.client();
    let id = c.watch("t/", "t0", 0);
    env.txn(&[("t/1", "a"), ("t/2", "b"), ("t/3", "c")], &[]);
    match c.next() {
        Out::Events {
            watch_id,
            revision,
            events,
            ..
        } => {
            assert_eq!((watch_id, revision, events.len()), (id, 2, 3));
        }
        other => panic!("expected events, got {other:?}"),
    }
}

#[test]
fn past_start_catches_up_from_the_backend_while_writes_continue() {
    let env = Env::new(WatchConfig {
        revisions_per_sync: 7,
        ..WatchConfig::default()
    });
    for i in 0..100 {
        env.put(&format!("k{i}"), "v");
    }
    let c = env.client();
    let id = c.watch("k", "l", 2);
    // Writes race the catch-up: nothing may be lost or repeated at the hand-over.
    for i in 100..200 {
        env.put(&format!("k{i}"), "v");
    }
    let got = c.events(200);
    let revs: Vec<i64> = got.iter().map(|e| e.1).collect();
    assert_eq!(revs, (2..202).collect::<Vec<_>>());
    assert!(got.iter().all(|e| e.0 == id));
    assert!(c.try_next().is_none());
}

#[test]
fn a_future_start_revision_waits_for_it() {
    let env = Env::new(WatchConfig::default());
    let c = env.client();
    c.watch("k", "", 4);
    for v in ["1", "2", "3", "4"] {
        env.put("k", v);
    }
    let got = c.events(2);
    assert_eq!(got.iter().map(|e| e.1).collect::<Vec<_>>(), [4, 5]);
}

#[test]
fn failed_creates_answer_with_id_minus_one_and_etcds_reason() {
    let env = Env::new(WatchConfig::default());
    let c = env.client();
    let cases = [
        (
            WatchOptions {
                key: "k".into(),
                start_revision: -1,
                ..WatchOptions::default()
            },
            ERR_COMPACTED,
        ),
        (
            WatchOptions {
                key: "b".into(),
                range_end: "a".into(),
                ..WatchOptions::default()
            },
            ERR_EMPTY_RANGE,
        ),
    ];
    for (opts, reason) in cases {
        c.stream.create(opts);
        assert_eq!(
            c.next(),
            Out::Created {
                watch_id: INVALID_WATCH_ID,
                revision: 1,
                cancel_reason: Some(reason.into())
            }
        );
    }
    // Client-chosen ids; automatic ones skip them.
    let chosen = c.create(WatchOptions {
        watch_id: 1,
        key: "k".into(),
        ..WatchOptions::default()
    });
    assert_eq!(chosen, 1);
    c.stream.create(WatchOptions {
        watch_id: 1,
        key: "k".into(),
        ..WatchOptions::default()
    });
    assert!(matches!(
        c.next(),
        Out::Created { watch_id: INVALID_WATCH_ID, cancel_reason: Some(r), .. } if r == ERR_DUPLICATE_ID
    ));
    assert_eq!(c.watch("k", "", 0), 0);
    assert_eq!(c.watch("k", "", 0), 2);
}

#[test]
fn compacted_start_is_created_then_canceled_with_the_compact_revision() {
    let env = Env::new(WatchConfig::default());
    for v in ["1", "2", "3"] {
        env.put("k", v);
    }
    env.compact(3);
    let c = env.client();
    let id = c.watch("k", "", 2);
    match c.next() {
        Out::Canceled {
            watch_id,
            compact_revision,
            ..
        } => assert_eq!((watch_id, compact_revision), (id, 3)),
        other => panic!("expected a compaction cancel, got {other:?}"),
    }
    // Exactly at the compaction revision is still served.
    let id = c.watch("k", "", 3);
    let got: Vec<(WatchId, i64)> = c.events(2).iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(got, [(id, 3), (id, 4)]);
    env.put("k", "4");
    assert_eq!(c.events(1)[0].1, 5);
}

#[test]
fn cancel_answers_once_and_unknown_ids_are_ignored() {
    let env = Env::new(WatchConfig::default());
    let c = env.client();
    let id = c.watch("k", "", 0);
    c.stream.cancel(id);
    assert!(
        matches!(c.next(), Out::Canceled { watch_id, compact_revision: 0, .. } if watch_id == id)
    );
    c.stream.cancel(id);
    c.stream.cancel(42);
    env.put("k", "1");
    assert!(c.try_next().is_none());
    assert_eq!(env.ws.stats().watchers.load(Ordering::Relaxed), 0);
}

#[test]
fn stalled_stream_costs_bounded_memory_and_catches_up_in_order() {
    let limit = 16 * 1024;
    let env = Env::new(WatchConfig {
        outbox_limit_bytes: limit,
        response_bytes: 4 * 1024,
        ..WatchConfig::default()
    });
    let stalled = env.client();
    let fast = env.client();
    let slow_id = stalled.watch("p/", "p0", 0);
    let fast_id = fast.watch("p/", "p0", 0);
    let value = "x".repeat(200);
    let mut fast_got = Vec::new();
    for i in 0..2000 {
        env.put(&format!("p/{i}"), &value);
        // The fast client keeps up; the stalled one never reads.
        while let Some(out) = fast.try_next() {
            if let Out::Events { events, .. } = out {
                fast_got.extend(events.iter().map(|e| e.kv.mod_revision));
            }
        }
        let queued = stalled.stream.outbox().queued_bytes();
        assert!(
            queued <= limit + 4 * 1024,
            "stalled outbox holds {queued} bytes after put {i}"
        );
    }
    assert_eq!(
        fast_got,
        (2..2002).collect::<Vec<_>>(),
        "fast watcher {fast_id}"
    );
    assert_eq!(env.ws.stats().slow_watchers.load(Ordering::Relaxed), 1);
    // Reading again: every event, once, in order, fetched from the backend.
    let got = stalled.events(2000);
    assert!(got.iter().all(|e| e.0 == slow_id));
    assert_eq!(
        got.iter().map(|e| e.1).collect::<Vec<_>>(),
        (2..2002).collect::<Vec<_>>()
    );
    // And it is live again.
    env.put("p/last", "v");
    assert_eq!(stalled.events(1)[0].1, 2002);
    assert_eq!(env.ws.stats().slow_watchers.load(Ordering::Relaxed), 0);
}

#[test]
fn stalled_watcher_behind_a_compaction_is_canceled_when_it_reads_again() {
    let env = Env::new(WatchConfig {
        outbox_limit_bytes: 1024,
        ..WatchConfig::default()
    });
    let c = env.client();
    let id = c.watch("k", "", 0);
    for i in 0..200 {
        env.put("k", &format!("{i:0100}"));
    }
    env.compact(150);
    let mut last = 0;
    loop {
        match c.next() {
            Out::Events { events, .. } => {
                for e in events.iter() {
                    assert_eq!(
                        e.kv.mod_revision,
                        last.max(1) + 1,
                        "no gap before the cancel"
                    );
                    last = e.kv.mod_revision;
                }
            }
            Out::Canceled {
                watch_id,
                compact_revision,
                cancel_reason,
                ..
            } => {
                assert_eq!((watch_id, compact_revision), (id, 150));
                assert_eq!(cancel_reason, None, "etcd sets only compact_revision");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(last < 150, "delivered up to {last}");
}

#[test]
fn progress_is_withheld_while_a_watcher_catches_up_and_never_overtakes_events() {
    let env = Env::new(WatchConfig {
        outbox_limit_bytes: 1024,
        ..WatchConfig::default()
    });
    let c = env.client();
    c.watch("k", "", 0);
    for i in 0..100 {
        env.put("k", &format!("{i:050}"));
    }
    // The watcher is behind (its outbox filled); the request waits.
    c.stream.request_progress();
    let mut last_event = 0;
    loop {
        match c.next() {
            Out::Events { events, .. } => {
                last_event = events.last().unwrap().kv.mod_revision;
            }
            Out::Progress { watch_id, revision } => {
                assert_eq!(watch_id, INVALID_WATCH_ID);
                assert_eq!(last_event, 101, "progress came before every event");
                assert_eq!(revision, 101);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Synced: answered at once.
    c.stream.request_progress();
    assert_eq!(
        c.next(),
        Out::Progress {
            watch_id: INVALID_WATCH_ID,
            revision: 101
        }
    );
    // A stream with no watchers gets no progress response (as etcd).
    let empty = env.client();
    empty.stream.request_progress();
    assert!(empty.try_next().is_none());
}

#[test]
fn progress_ticks_go_to_idle_synced_watchers_that_asked() {
    let env = Env::new(WatchConfig::default());
    let c = env.client();
    let asked = c.create(WatchOptions {
        key: "a".into(),
        progress_notify: true,
        ..WatchOptions::default()
    });
    let busy = c.create(WatchOptions {
        key: "b".into(),
        progress_notify: true,
        ..WatchOptions::default()
    });
    c.watch("c", "", 0);
    env.put("b", "1");
    assert_eq!(c.events(1)[0].0, busy);
    c.stream.progress_tick();
    assert_eq!(
        c.next(),
        Out::Progress {
            watch_id: asked,
            revision: 2
        }
    );
    assert!(c.try_next().is_none(), "the busy watcher had events");
    c.stream.progress_tick();
    let mut ids = vec![c.next(), c.next()];
    ids.sort_by_key(|o| match o {
        Out::Progress { watch_id, .. } => *watch_id,
        _ => -2,
    });
    assert_eq!(
        ids,
        [
            Out::Progress {
                watch_id: asked,
                revision: 2
            },
            Out::Progress {
                watch_id: busy,
                revision: 2
            }
        ]
    );
}

#[test]
fn dropping_a_stream_removes_its_watchers() {
    let env = Env::new(WatchConfig::default());
    let c = env.client();
    c.watch("k", "", 0);
    c.watch("k", "", 1);
    assert_eq!(env.ws.stats().watchers.load(Ordering::Relaxed), 2);
    drop(c);
    env.put("k", "v");
    assert_eq!(env.ws.stats().watchers.load(Ordering::Relaxed), 0);
    assert_eq!(env.ws.stats().streams.load(Ordering::Relaxed), 0);
    assert_eq!(env.ws.pending_bytes(), 0);
}

#[test]
fn after_a_snapshot_restore_watchers_catch_up_from_the_new_store() {
    let env = Env::new(WatchConfig::default());
    let c = env.client();
    let id = c.watch("k", "", 0);
    // Another store with more history plays the leader's snapshot.
    let image = leader_image(&["1", "2", "3"]);
    env.kv.restore_snapshot(&mut image.as_slice()).unwrap();
    env.ws.restored();
    let got = c.events(3);
    assert_eq!(
        got,
        [2, 3, 4]
            .map(|r| (id, r, "k".to_string(), EventKind::Put))
            .to_vec()
    );
}

#[test]
fn a_future_start_survives_a_snapshot_restore_synced() {
    let env = Env::new(WatchConfig::default());
    let c = env.client();
    c.watch("k", "", 1_000);
    let image = leader_image(&["1", "2"]);
    env.kv.restore_snapshot(&mut image.as_slice()).unwrap();
    env.ws.restored();
    // Still synced: a progress request is answered at once, and nothing is slow.
    c.stream.request_progress();
    assert_eq!(
        c.next(),
        Out::Progress {
            watch_id: INVALID_WATCH_ID,
            revision: 3
        }
    );
    assert_eq!(env.ws.stats().slow_watchers.load(Ordering::Relaxed), 0);
}

#[test]
fn progress_ticks_do_not_grow_a_stalled_outbox() {
    let limit = 4 * 1024;
    let env = Env::new(WatchConfig {
        outbox_limit_bytes: limit,
        ..WatchConfig::default()
    });
    let c = env.client();
    for i in 0..200 {
        c.stream.create(WatchOptions {
            key: format!("idle/{i}").into(),
            progress_notify: true,
            ..WatchOptions::default()
        });
    }
    // The created responses alone fill the outbox (the gRPC side stops reading requests
    // then); ticks must add nothing more.
    let before = c.stream.outbox().queued_bytes();
    assert!(before >= limit);
    for _ in 0..50 {
        c.stream.progress_tick();
    }
    assert_eq!(
        c.stream.outbox().queued_bytes(),
        before,
        "progress ticks grew the queue"
    );
}

#[test]
fn a_catch_up_stops_at_the_outbox_limit() {
    let limit = 16 * 1024;
    let env = Env::new(WatchConfig {
        outbox_limit_bytes: limit,
        response_bytes: 2 * 1024,
        ..WatchConfig::default()
    });
    let value = "x".repeat(500);
    for i in 0..500 {
        env.put(&format!("h/{i}"), &value);
    }
    let c = env.client();
    let id = c.watch("h/", "h0", 1);
    // Let the sync thread fill the outbox, then look: bounded by the limit plus one
    // response, though 250 KB of history is waiting.
    let mut last = 1;
    let mut got = 0;
    while got < 500 {
        let queued = c.stream.outbox().queued_bytes();
        assert!(
            queued <= limit + 4 * 1024,
            "{queued} bytes queued during catch-up"
        );
        match c.next() {
            Out::Events {
                watch_id, events, ..
            } => {
                assert_eq!(watch_id, id);
                for e in events.iter() {
                    assert_eq!(e.kv.mod_revision, last + 1);
                    last = e.kv.mod_revision;
                    got += 1;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
