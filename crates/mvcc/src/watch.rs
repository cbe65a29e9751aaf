//! The watchable store: watchers over key ranges, fed from applied revisions and, when they
//! are behind, from the backend.
//!
//! # Model
//! A [`WatchableStore`] wraps a [`KvStore`]. The apply loop calls
//! [`WatchableStore::notify`] after each committed batch; clients open a [`WatchStream`]
//! (one per gRPC Watch call) and create watchers on it. Every watcher is in one of two
//! states, as in etcd's `watchable_store.go`:
//! - **synced**: it has every matching event up to the store's notified revision; new
//!   events go to it directly from `notify`;
//! - **unsynced**: it is behind (it asked for a past start revision, or its stream could
//!   not take more); the sync thread reads its missing revisions from the backend and
//!   moves it back to synced once it reached the notified revision.
//!
//! Every response for a stream goes through its [`Outbox`], a FIFO the gRPC side drains.
//! Because `notify`, `create`, `cancel` and progress all push under the store's lock,
//! the order in the outbox is the order of the store: a progress response cannot
//! overtake events, and a `Created` response precedes the watcher's first events.
//!
//! # Slow consumers
//! An outbox holds at most [`WatchConfig::outbox_limit_bytes`] (plus one response). When a
//! synced watcher's outbox is full, `notify` does not queue more: the watcher becomes
//! unsynced at its first undelivered revision (a "victim"). The sync thread skips
//! watchers whose outbox is full and is woken when the outbox drains. So a client that
//! stops reading costs bounded memory and never blocks `notify`, writes or other
//! watchers; when it reads again it catches up from the backend, or, if its next revision
//! was compacted meanwhile, is canceled with `compact_revision` set.
//!
//! # Invariants
//! - A watcher's events are delivered in revision order without gaps or repeats: `next_rev`
//!   is the first revision it has not been given; every push delivers exactly the
//!   matching events from `next_rev` up to some revision R and sets `next_rev = R + 1`.
//! - All events of one revision go in one response (deliveries are split only at
//!   revision boundaries; the gRPC layer may fragment further only when asked to).
//! - A synced watcher has `next_rev > rev` or will get every event above `rev` from
//!   `notify`; an unsynced watcher is never given events by `notify`.
//! - A stream's progress response (watch id -1) is sent only when all its watchers are
//!   synced, so every event at or below its revision was queued before it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use retcd_backend::Backend;

use crate::tree_index::KeyRange;
use crate::{Event, EventKind, KvStore, MvccError};

/// A watch id, unique within its stream.
pub type WatchId = i64;

/// `watch_id` a client sends to have the server choose one.
pub const AUTO_WATCH_ID: WatchId = 0;

/// `watch_id` of responses that belong to no watcher: failed creates and progress
/// responses for the whole stream (etcd's `clientv3.InvalidWatchID`).
pub const INVALID_WATCH_ID: WatchId = -1;

/// etcd's `ErrEmptyWatcherRange`.
pub const ERR_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
/// etcd's `ErrWatcherDuplicateID`.
pub const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// etcd's `ErrCompacted` as a watch cancel reason.
pub const ERR_COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

/// Limits of the watch layer.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// Bytes (estimated encoded size) a stream's outbox may hold before its watchers stop
    /// getting events directly and catch up from the backend instead.
    pub outbox_limit_bytes: usize,
    /// Deliveries are split at revision boundaries into responses of about this size.
    pub response_bytes: usize,
    /// The sync thread runs at least this often (etcd's `watchResyncPeriod`).
    pub sync_interval: Duration,
    /// Most revisions one sync pass reads from the backend.
    pub revisions_per_sync: i64,
    /// Most unsynced watchers one sync pass serves (etcd's `maxWatchersPerSync`).
    pub watchers_per_sync: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            outbox_limit_bytes: 4 << 20,
            response_bytes: 1 << 20,
            sync_interval: Duration::from_millis(100),
            revisions_per_sync: 1000,
            watchers_per_sync: 512,
        }
    }
}

/// What a client asks for when it creates a watcher (`WatchCreateRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// [`AUTO_WATCH_ID`] or the id the client chose.
    pub watch_id: WatchId,
    pub key: Vec<u8>,
    /// etcd's conventions: empty = the key alone, `"\0"` = every key from `key` on.
    pub range_end: Vec<u8>,
    /// First revision to deliver; 0 = the revision after the current one.
    pub start_revision: i64,
    pub prev_kv: bool,
    pub progress_notify: bool,
    pub fragment: bool,
    /// Drop PUT events (`NOPUT`).
    pub filter_put: bool,
    /// Drop DELETE events (`NODELETE`).
    pub filter_delete: bool,
}

/// An event as watchers share it: one allocation per change, whatever the number of
/// watchers, with room for its wire encoding so that the gRPC layer encodes each change
/// once (with and without `prev_kv`) instead of once per watcher.
#[derive(Debug)]
pub struct WatchEvent {
    pub event: Event,
    encoded: [OnceLock<Box<[u8]>>; 2],
}

impl WatchEvent {
    pub fn new(event: Event) -> WatchEvent {
        WatchEvent {
            event,
            encoded: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// The encoding of this event for watchers with or without `prev_kv`, computed by
    /// `encode` on first use and cached.
    pub fn encoded(&self, prev_kv: bool, encode: impl FnOnce(&Event, bool) -> Vec<u8>) -> &[u8] {
        self.encoded[usize::from(prev_kv)]
            .get_or_init(|| encode(&self.event, prev_kv).into_boxed_slice())
    }
}

impl std::ops::Deref for WatchEvent {
    type Target = Event;
    fn deref(&self) -> &Event {
        &self.event
    }
}

impl PartialEq for WatchEvent {
    fn eq(&self, other: &Self) -> bool {
        self.event == other.event
    }
}

impl Eq for WatchEvent {}

/// Events of whole revisions, in order, shared by every watcher that gets the same list.
pub type EventList = Arc<[Arc<WatchEvent>]>;

/// A response queued for a stream, turned into a `WatchResponse` by the gRPC layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out {
    /// Answer to a create. `cancel_reason` set: the create failed (`watch_id` is then
    /// [`INVALID_WATCH_ID`]).
    Created {
        watch_id: WatchId,
        revision: i64,
        cancel_reason: Option<String>,
    },
    /// The watcher ended: by the client's cancel (`compact_revision` 0) or because its next
    /// revision was compacted.
    Canceled {
        watch_id: WatchId,
        revision: i64,
        compact_revision: i64,
        cancel_reason: Option<String>,
    },
    /// Events of whole revisions. The watcher has everything up to `revision`.
    Events {
        watch_id: WatchId,
        revision: i64,
        events: EventList,
        prev_kv: bool,
        fragment: bool,
    },
    /// Every matching event up to `revision` was delivered (`watch_id` -1: for every
    /// watcher of the stream).
    Progress { watch_id: WatchId, revision: i64 },
}

/// Counters and gauges for `/metrics`.
#[derive(Debug, Default)]
pub struct WatchStats {
    pub streams: AtomicU64,
    pub watchers: AtomicU64,
    pub slow_watchers: AtomicU64,
    pub events_delivered: AtomicU64,
}

/// Wakes the sync thread.
#[derive(Default)]
struct Kicker {
    kicked: Mutex<bool>,
    cond: Condvar,
}

impl Kicker {
    fn kick(&self) {
        *self.kicked.lock().expect("kicker lock") = true;
        self.cond.notify_one();
    }

    /// Waits for a kick or `timeout`.
    fn wait(&self, timeout: Duration) {
        let guard = self.kicked.lock().expect("kicker lock");
        let (mut guard, _) = self
            .cond
            .wait_timeout_while(guard, timeout, |kicked| !*kicked)
            .expect("kicker lock");
        *guard = false;
    }
}

/// A stream's queue of responses, drained by the gRPC layer.
pub struct Outbox {
    state: Mutex<OutboxState>,
    limit: usize,
    kicker: Arc<Kicker>,
    on_data: Box<dyn Fn() + Send + Sync>,
    on_room: Box<dyn Fn() + Send + Sync>,
}

#[derive(Default)]
struct OutboxState {
    items: VecDeque<(Out, usize)>,
    bytes: usize,
    /// The store held back events for lack of room: kick the sync thread on drain.
    blocked: bool,
    /// The gRPC side waits for room to read the next request.
    room_wanted: bool,
    /// The store stopped; the stream should end once drained.
    closed: bool,
}

impl Outbox {
    /// Takes the oldest response.
    pub fn pop(&self) -> Option<Out> {
        let mut batch = self.pop_batch(1);
        batch.pop()
    }

    /// Takes up to `max` of the oldest responses, in order.
    pub fn pop_batch(&self, max: usize) -> Vec<Out> {
        let mut st = self.state.lock().expect("outbox lock");
        let n = max.min(st.items.len());
        if n == 0 {
            return Vec::new();
        }
        let state = &mut *st;
        let mut out = Vec::with_capacity(n);
        for (item, size) in state.items.drain(..n) {
            state.bytes -= size;
            out.push(item);
        }
        let drained = st.bytes < self.limit / 2;
        let kick = drained && std::mem::take(&mut st.blocked);
        let room = st.bytes < self.limit && std::mem::take(&mut st.room_wanted);
        drop(st);
        if kick {
            self.kicker.kick();
        }
        if room {
            (self.on_room)();
        }
        out
    }

    /// Whether more may be queued. If not, `on_room` is called once there is room again.
    pub fn has_room_or_notify(&self) -> bool {
        let mut st = self.state.lock().expect("outbox lock");
        let room = st.bytes < self.limit;
        if !room {
            st.room_wanted = true;
        }
        room
    }

    /// Estimated bytes queued.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().expect("outbox lock").bytes
    }

    fn has_room(&self) -> bool {
        self.state.lock().expect("outbox lock").bytes < self.limit
    }

    /// Holds the outbox locked for several pushes; the consumer is woken once, when the
    /// writer is dropped (`notify` queues a whole batch per stream this way).
    fn writer(&self) -> OutboxWriter<'_> {
        let st = self.state.lock().expect("outbox lock");
        OutboxWriter {
            was_empty: st.items.is_empty(),
            st: Some(st),
            outbox: self,
            pushed: false,
        }
    }

    fn push(&self, out: Out) {
        let size = out_size(&out);
        let was_empty = {
            let mut st = self.state.lock().expect("outbox lock");
            let was_empty = st.items.is_empty();
            st.items.push_back((out, size));
            st.bytes += size;
            was_empty
        };
        // The consumer sleeps only on an empty outbox (and `on_data` must remember a
        // wake-up that comes before the consumer waits, as tokio's `Notify` does).
        if was_empty {
            (self.on_data)();
        }
    }

    /// Whether more may be queued; if not, marks the outbox so that draining it wakes
    /// the sync thread (one lock: a drain cannot slip in between).
    fn has_room_or_mark_blocked(&self) -> bool {
        let mut st = self.state.lock().expect("outbox lock");
        if st.bytes < self.limit {
            return true;
        }
        st.blocked = true;
        false
    }

    /// The store stopped: no more responses will come.
    pub fn is_closed(&self) -> bool {
        self.state.lock().expect("outbox lock").closed
    }

    fn close(&self) {
        self.state.lock().expect("outbox lock").closed = true;
        (self.on_data)();
    }
}

/// An [`Outbox`] locked for a batch of pushes.
struct OutboxWriter<'a> {
    outbox: &'a Outbox,
    st: Option<std::sync::MutexGuard<'a, OutboxState>>,
    was_empty: bool,
    pushed: bool,
}

impl OutboxWriter<'_> {
    fn state(&mut self) -> &mut OutboxState {
        self.st.as_mut().expect("held until drop")
    }

    /// As [`Outbox::has_room_or_mark_blocked`].
    fn has_room_or_mark_blocked(&mut self) -> bool {
        let limit = self.outbox.limit;
        let st = self.state();
        if st.bytes < limit {
            return true;
        }
        st.blocked = true;
        false
    }

    /// Queues `out`, whose estimated size is `size`.
    fn push(&mut self, out: Out, size: usize) {
        let st = self.state();
        st.items.push_back((out, size));
        st.bytes += size;
        self.pushed = true;
    }
}

impl Drop for OutboxWriter<'_> {
    fn drop(&mut self) {
        drop(self.st.take());
        // As in `Outbox::push`: the consumer sleeps only on an empty outbox.
        if self.pushed && self.was_empty {
            (self.outbox.on_data)();
        }
    }
}

/// Hashes integer ids with one multiply, for maps looked up once per watcher per batch
/// (`notify` here, the gRPC sender's merging), where SipHash showed in the profiles.
/// Not collision-resistant: use it for ids the store hands out in sequence, or for
/// maps bounded small enough that a client choosing colliding ids only slows itself.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // hashbrown indexes buckets with the low bits: fold the well-mixed high half in.
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_i64(&mut self, id: i64) {
        self.write_u64(id as u64);
    }

    fn write_u64(&mut self, id: u64) {
        // Fibonacci hashing: spreads sequential ids over the high bits hashbrown uses.
        self.0 = (self.0 ^ id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

pub type IdBuildHasher = std::hash::BuildHasherDefault<IdHasher>;
type IdMap<V> = HashMap<u64, V, IdBuildHasher>;
type IdSet = HashSet<u64, IdBuildHasher>;

/// Estimated encoded size of an event in a response.
fn event_size(event: &Event, prev_kv: bool) -> usize {
    let kv = |kv: &crate::KeyValue| kv.key.len() + kv.value.len() + 40;
    kv(&event.kv)
        + if prev_kv {
            event.prev_kv.as_ref().map_or(0, kv)
        } else {
            0
        }
        + 8
}

fn out_size(out: &Out) -> usize {
    const OVERHEAD: usize = 64; // as in `deliver`
    match out {
        Out::Events {
            events, prev_kv, ..
        } => {
            OVERHEAD
                + events
                    .iter()
                    .map(|e| event_size(e, *prev_kv))
                    .sum::<usize>()
        }
        Out::Created { cancel_reason, .. } | Out::Canceled { cancel_reason, .. } => {
            OVERHEAD + cancel_reason.as_ref().map_or(0, String::len)
        }
        Out::Progress { .. } => OVERHEAD,
    }
}

/// What a sync pass needs of a watcher, copied so it can filter without the lock.
struct Chosen {
    gid: u64,
    next_rev: i64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    filter_put: bool,
    filter_delete: bool,
}

/// One watcher.
struct Watcher {
    stream: u64,
    id: WatchId,
    key: Vec<u8>,
    range_end: Vec<u8>,
    opts: WatchOptions,
    /// First revision not yet delivered.
    next_rev: i64,
    synced: bool,
    /// Got events since the last progress tick.
    active: bool,
}

impl Watcher {
    fn wants(&self, event: &Event) -> bool {
        match event.kind {
            EventKind::Put => !self.opts.filter_put,
            EventKind::Delete => !self.opts.filter_delete,
        }
    }
}

struct StreamState {
    outbox: Arc<Outbox>,
    /// Watch id -> global watcher id.
    ids: HashMap<WatchId, u64>,
    next_auto_id: WatchId,
    /// A progress request waits for every watcher of the stream to be synced.
    deferred_progress: bool,
}

#[derive(Default)]
struct Inner {
    /// The last revision handed to `notify` (or the store's revision at open/restore).
    rev: i64,
    next_gid: u64,
    next_stream: u64,
    watchers: IdMap<Watcher>,
    streams: IdMap<StreamState>,
    /// Synced single-key watchers by key.
    synced_keys: HashMap<Vec<u8>, IdSet>,
    /// Synced range watchers, grouped by identical (key, range_end).
    synced_ranges: HashMap<(Vec<u8>, Vec<u8>), IdSet>,
    unsynced: IdSet,
    stopped: bool,
}

impl Inner {
    fn add_synced(&mut self, gid: u64) {
        let w = self.watchers.get_mut(&gid).expect("watcher exists");
        w.synced = true;
        if w.range_end.is_empty() {
            self.synced_keys
                .entry(w.key.clone())
                .or_default()
                .insert(gid);
        } else {
            self.synced_ranges
                .entry((w.key.clone(), w.range_end.clone()))
                .or_default()
                .insert(gid);
        }
    }

    fn remove_synced(&mut self, gid: u64) {
        let w = self.watchers.get_mut(&gid).expect("watcher exists");
        if !w.synced {
            return;
        }
        w.synced = false;
        if w.range_end.is_empty() {
            if let Some(set) = self.synced_keys.get_mut(&w.key) {
                set.remove(&gid);
                if set.is_empty() {
                    self.synced_keys.remove(&w.key);
                }
            }
        } else {
            let group = (w.key.clone(), w.range_end.clone());
            if let Some(set) = self.synced_ranges.get_mut(&group) {
                set.remove(&gid);
                if set.is_empty() {
                    self.synced_ranges.remove(&group);
                }
            }
        }
    }

    fn make_unsynced(&mut self, gid: u64, next_rev: i64) {
        self.remove_synced(gid);
        let w = self.watchers.get_mut(&gid).expect("watcher exists");
        w.next_rev = w.next_rev.max(next_rev);
        self.unsynced.insert(gid);
    }

    fn remove_watcher(&mut self, gid: u64) -> Option<Watcher> {
        self.remove_synced(gid);
        self.unsynced.remove(&gid);
        let w = self.watchers.remove(&gid)?;
        if let Some(s) = self.streams.get_mut(&w.stream) {
            s.ids.remove(&w.id);
        }
        Some(w)
    }

    /// Sends a deferred stream progress once every watcher of the stream is synced.
    fn flush_deferred_progress(&mut self, stream: u64) {
        let rev = self.rev;
        let Some(s) = self.streams.get(&stream) else {
            return;
        };
        if !s.deferred_progress {
            return;
        }
        let all_synced = s.ids.values().all(|gid| self.watchers[gid].synced);
        if all_synced {
            let s = self.streams.get_mut(&stream).expect("stream exists");
            s.deferred_progress = false;
            if !s.ids.is_empty() {
                s.outbox.push(Out::Progress {
                    watch_id: INVALID_WATCH_ID,
                    revision: rev,
                });
            }
        }
    }
}

/// Pushes `events` (whole revisions, in order) for watcher `w`, split at revision
/// boundaries into responses of about `max_bytes`. The last response carries `upto`.
/// Stops early, at a revision boundary, once the outbox is full; returns the revision up
/// to which the watcher now has everything (`upto` when all went out).
fn deliver(
    outbox: &mut OutboxWriter<'_>,
    w: &Watcher,
    events: EventList,
    upto: i64,
    max_bytes: usize,
) -> i64 {
    const OVERHEAD: usize = 64;
    let prev_kv = w.opts.prev_kv;
    let push = |outbox: &mut OutboxWriter<'_>, events: EventList, revision: i64, bytes: usize| {
        let out = Out::Events {
            watch_id: w.id,
            revision,
            events,
            prev_kv,
            fragment: w.opts.fragment,
        };
        debug_assert_eq!(OVERHEAD + bytes, out_size(&out));
        outbox.push(out, OVERHEAD + bytes);
    };
    let total: usize = events.iter().map(|e| event_size(e, prev_kv)).sum();
    if total < max_bytes {
        // The common case: the list goes out whole, shared with other watchers.
        push(outbox, events, upto, total);
        return upto;
    }
    let mut start = 0;
    let mut bytes = 0;
    for (i, event) in events.iter().enumerate() {
        bytes += event_size(event, prev_kv);
        let rev = event.kv.mod_revision;
        let next = events.get(i + 1);
        let revision_ends = next.is_none_or(|n| n.kv.mod_revision != rev);
        if revision_ends && bytes >= max_bytes && next.is_some() {
            push(
                outbox,
                events[start..=i].iter().cloned().collect(),
                rev,
                bytes,
            );
            start = i + 1;
            bytes = 0;
            if !outbox.has_room_or_mark_blocked() {
                return rev;
            }
        }
    }
    if start < events.len() {
        push(
            outbox,
            events[start..].iter().cloned().collect(),
            upto,
            bytes,
        );
    }
    upto
}

/// The events of `list` (indexes into `events`) that watcher `w` gets: the shared list
/// itself when nothing is filtered out, else its own.
fn events_for(
    w: &Watcher,
    idxs: &[usize],
    events: &[Arc<WatchEvent>],
    shared: &mut Option<EventList>,
) -> Option<EventList> {
    let first_rev = events[idxs[0]].kv.mod_revision;
    if !w.opts.filter_put && !w.opts.filter_delete && w.next_rev <= first_rev {
        let list = shared.get_or_insert_with(|| idxs.iter().map(|&i| events[i].clone()).collect());
        return Some(list.clone());
    }
    let mine: EventList = idxs
        .iter()
        .map(|&i| &events[i])
        .filter(|e| e.kv.mod_revision >= w.next_rev && w.wants(e))
        .cloned()
        .collect();
    (!mine.is_empty()).then_some(mine)
}

/// A [`KvStore`] with watchers. See the module documentation.
pub struct WatchableStore<B: Backend> {
    kv: Arc<KvStore<B>>,
    config: WatchConfig,
    inner: Mutex<Inner>,
    kicker: Arc<Kicker>,
    stats: WatchStats,
}

impl<B: Backend + Send + Sync + 'static> WatchableStore<B> {
    /// Wraps `kv` and starts the sync thread (it stops when the store is dropped or
    /// [`WatchableStore::stop`] is called).
    pub fn new(kv: Arc<KvStore<B>>, config: WatchConfig) -> Arc<Self> {
        let rev = kv.current_revision();
        let store = Arc::new(WatchableStore {
            kv,
            config,
            inner: Mutex::new(Inner {
                rev,
                ..Inner::default()
            }),
            kicker: Arc::new(Kicker::default()),
            stats: WatchStats::default(),
        });
        let weak = Arc::downgrade(&store);
        let kicker = store.kicker.clone();
        let interval = store.config.sync_interval;
        std::thread::Builder::new()
            .name("watch-sync".into())
            .spawn(move || sync_loop(&weak, &kicker, interval))
            .expect("spawn the watch sync thread");
        store
    }
}

fn sync_loop<B: Backend + Send + Sync + 'static>(
    weak: &Weak<WatchableStore<B>>,
    kicker: &Kicker,
    interval: Duration,
) {
    loop {
        kicker.wait(interval);
        let Some(store) = weak.upgrade() else { return };
        if store.lock().stopped {
            return;
        }
        // Keep passing while a pass made progress and watchers remain behind.
        while store.sync_pass() {}
    }
}

impl<B: Backend> WatchableStore<B> {
    /// The wrapped store.
    pub fn kv(&self) -> &Arc<KvStore<B>> {
        &self.kv
    }

    /// Counters for `/metrics`.
    pub fn stats(&self) -> &WatchStats {
        &self.stats
    }

    /// Bytes queued in all outboxes.
    pub fn pending_bytes(&self) -> usize {
        self.lock()
            .streams
            .values()
            .map(|s| s.outbox.queued_bytes())
            .sum()
    }

    /// Stops the sync thread.
    pub fn stop(&self) {
        let mut inner = self.lock();
        inner.stopped = true;
        for s in inner.streams.values() {
            s.outbox.close();
        }
        drop(inner);
        self.kicker.kick();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("watchable store lock")
    }

    /// Opens a stream. `on_data` is called when a response is queued into an empty outbox
    /// (it must remember a call made before the consumer waits), `on_room` when
    /// an outbox that was full (see [`Outbox::has_room_or_notify`]) has room again. Both
    /// are called with internal locks held: they must only wake someone.
    pub fn open_stream(
        self: &Arc<Self>,
        on_data: Box<dyn Fn() + Send + Sync>,
        on_room: Box<dyn Fn() + Send + Sync>,
    ) -> WatchStream<B> {
        let outbox = Arc::new(Outbox {
            state: Mutex::new(OutboxState::default()),
            limit: self.config.outbox_limit_bytes,
            kicker: self.kicker.clone(),
            on_data,
            on_room,
        });
        let mut inner = self.lock();
        let id = inner.next_stream;
        inner.next_stream += 1;
        inner.streams.insert(
            id,
            StreamState {
                outbox: outbox.clone(),
                ids: HashMap::new(),
                next_auto_id: 0,
                deferred_progress: false,
            },
        );
        self.stats.streams.fetch_add(1, Ordering::Relaxed);
        WatchStream {
            store: self.clone(),
            id,
            outbox,
        }
    }

    /// Hands the changes of a committed batch to the synced watchers. `revision` is the
    /// store's revision after the batch; `events` are its changes in revision order.
    /// Never blocks on clients.
    pub fn notify(&self, revision: i64, events: Vec<Event>) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let before = inner.rev;
        if revision <= before {
            return;
        }
        inner.rev = revision;
        if events.is_empty() || inner.watchers.is_empty() {
            return;
        }
        let events: Vec<Arc<WatchEvent>> = events
            .into_iter()
            .map(|e| Arc::new(WatchEvent::new(e)))
            .collect();
        // Matching is per group of watchers with the same range: each group gets the
        // indexes of its events once, and its watchers share one list where they can.
        let Inner {
            synced_keys,
            synced_ranges,
            watchers,
            streams,
            ..
        } = inner;
        let mut by_key: HashMap<&[u8], Vec<usize>> = HashMap::new();
        if !synced_keys.is_empty() {
            for (i, event) in events.iter().enumerate() {
                if synced_keys.contains_key(event.kv.key.as_slice()) {
                    by_key.entry(event.kv.key.as_slice()).or_default().push(i);
                }
            }
        }
        let mut groups: Vec<(&IdSet, Vec<usize>)> = by_key
            .into_iter()
            .map(|(key, idxs)| (&synced_keys[key], idxs))
            .collect();
        for ((key, end), set) in synced_ranges.iter() {
            let range = KeyRange::new(key, end);
            let idxs: Vec<usize> = (0..events.len())
                .filter(|&i| range.contains(&events[i].kv.key))
                .collect();
            if !idxs.is_empty() {
                groups.push((set, idxs));
            }
        }
        let mut victims = Vec::new();
        let mut delivered = 0u64;
        // Each stream's outbox stays locked until every watcher got its share, so its
        // sender wakes once per batch instead of racing the pushes one by one. Only this
        // thread (holding the store lock) ever holds more than one outbox lock.
        let mut writers: IdMap<OutboxWriter<'_>> = IdMap::default();
        for (set, idxs) in groups {
            let mut shared = None;
            for gid in set {
                let w = watchers.get_mut(gid).expect("synced watchers exist");
                let Some(mine) = events_for(w, &idxs, &events, &mut shared) else {
                    continue;
                };
                let outbox = writers
                    .entry(w.stream)
                    .or_insert_with(|| streams[&w.stream].outbox.writer());
                if outbox.has_room_or_mark_blocked() {
                    delivered += mine.len() as u64;
                    let upto = deliver(outbox, w, mine, revision, self.config.response_bytes);
                    w.next_rev = upto + 1;
                    w.active = true;
                    if upto < revision {
                        victims.push(*gid);
                    }
                } else {
                    victims.push(*gid);
                }
            }
        }
        drop(writers);
        self.stats
            .events_delivered
            .fetch_add(delivered, Ordering::Relaxed);
        if !victims.is_empty() {
            for gid in victims {
                inner.make_unsynced(gid, before + 1);
                self.stats.slow_watchers.fetch_add(1, Ordering::Relaxed);
            }
            self.kicker.kick();
        }
    }

    /// After the store was replaced by a snapshot: every watcher catches up from the
    /// backend (or learns that its next revision is compacted).
    pub fn restored(&self) {
        let mut inner = self.lock();
        let before = inner.rev;
        let after = inner.rev.max(self.kv.current_revision());
        // A watcher waiting for a revision beyond the new one stays synced: notify will
        // give it everything from there.
        let synced: Vec<u64> = inner
            .watchers
            .iter()
            .filter(|(_, w)| w.synced && w.next_rev.max(before + 1) <= after)
            .map(|(&gid, _)| gid)
            .collect();
        for gid in synced {
            inner.make_unsynced(gid, before + 1);
            self.stats.slow_watchers.fetch_add(1, Ordering::Relaxed);
        }
        inner.rev = after;
        drop(inner);
        self.kicker.kick();
    }

    /// One pass of the sync thread: cancels compacted watchers, then reads the next
    /// revisions of up to `watchers_per_sync` unsynced watchers whose outbox has room and
    /// delivers them. Returns whether another pass right away would do more.
    fn sync_pass(&self) -> bool {
        let compact = self.kv.compact_revision();
        // 1. Under the lock: cancel the compacted, choose watchers with room, and copy
        //    what filtering needs.
        let (chosen, from, to) = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            if inner.unsynced.is_empty() {
                return false;
            }
            let doomed: Vec<u64> = inner
                .unsynced
                .iter()
                .copied()
                .filter(|gid| inner.watchers[gid].next_rev < compact)
                .collect();
            for gid in doomed {
                self.cancel_compacted(inner, gid, compact);
            }
            let rev = inner.rev;
            // Waiting for a revision not reached yet: notify serves them from there.
            let ahead: Vec<u64> = inner
                .unsynced
                .iter()
                .copied()
                .filter(|gid| inner.watchers[gid].next_rev > rev)
                .collect();
            for gid in ahead {
                self.resync(inner, gid);
            }
            let mut chosen = Vec::new();
            let mut from = i64::MAX;
            for &gid in &inner.unsynced {
                if chosen.len() >= self.config.watchers_per_sync {
                    break;
                }
                let w = &inner.watchers[&gid];
                if !inner.streams[&w.stream].outbox.has_room_or_mark_blocked() {
                    continue;
                }
                chosen.push(Chosen {
                    gid,
                    next_rev: w.next_rev,
                    key: w.key.clone(),
                    range_end: w.range_end.clone(),
                    filter_put: w.opts.filter_put,
                    filter_delete: w.opts.filter_delete,
                });
                from = from.min(w.next_rev);
            }
            if chosen.is_empty() {
                return false;
            }
            let to = rev.min(from.saturating_add(self.config.revisions_per_sync - 1));
            (chosen, from, to)
        };
        // 2. Without the lock: read the history and pick each watcher's events.
        let events = if from <= to {
            match self.kv.view().and_then(|view| view.events(from, to)) {
                Ok(events) => events,
                // Compacted meanwhile: the next pass cancels the watchers concerned.
                Err(MvccError::Compacted { .. }) => return true,
                Err(e) => {
                    log_read_failure(&e);
                    return false;
                }
            }
        } else {
            Vec::new()
        };
        let events: Vec<Arc<WatchEvent>> = events
            .into_iter()
            .map(|e| Arc::new(WatchEvent::new(e)))
            .collect();
        let picked: Vec<(Chosen, EventList)> = chosen
            .into_iter()
            .filter(|c| c.next_rev <= to + 1)
            .map(|c| {
                let range = KeyRange::new(&c.key, &c.range_end);
                let mine: EventList = events
                    .iter()
                    .filter(|e| {
                        e.kv.mod_revision >= c.next_rev
                            && range.contains(&e.kv.key)
                            && match e.kind {
                                EventKind::Put => !c.filter_put,
                                EventKind::Delete => !c.filter_delete,
                            }
                    })
                    .cloned()
                    .collect();
                (c, mine)
            })
            .collect();
        // 3. Under the lock: deliver to the watchers that did not change meanwhile.
        let mut guard = self.lock();
        let inner = &mut *guard;
        let rev = inner.rev;
        let mut progressed = false;
        let mut streams_touched = HashSet::new();
        for (c, mine) in picked {
            let Some(w) = inner.watchers.get(&c.gid) else {
                continue;
            };
            if w.synced || w.next_rev != c.next_rev {
                continue;
            }
            let mut outbox = inner.streams[&w.stream].outbox.writer();
            if !outbox.has_room_or_mark_blocked() {
                continue;
            }
            let delivered = !mine.is_empty();
            let upto = if delivered {
                self.stats
                    .events_delivered
                    .fetch_add(mine.len() as u64, Ordering::Relaxed);
                deliver(&mut outbox, w, mine, to, self.config.response_bytes)
            } else {
                to
            };
            drop(outbox);
            let stream = w.stream;
            let w = inner.watchers.get_mut(&c.gid).expect("present");
            w.next_rev = w.next_rev.max(upto + 1);
            w.active |= delivered;
            progressed = true;
            if w.next_rev > rev {
                self.resync(inner, c.gid);
                streams_touched.insert(stream);
            }
        }
        for stream in streams_touched {
            inner.flush_deferred_progress(stream);
        }
        progressed && !inner.unsynced.is_empty()
    }

    /// Moves an unsynced watcher back to synced.
    fn resync(&self, inner: &mut Inner, gid: u64) {
        if inner.unsynced.remove(&gid) {
            inner.add_synced(gid);
            self.stats.slow_watchers.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn cancel_compacted(&self, inner: &mut Inner, gid: u64, compact: i64) {
        let Some(w) = inner.remove_watcher(gid) else {
            return;
        };
        self.stats.watchers.fetch_sub(1, Ordering::Relaxed);
        self.stats.slow_watchers.fetch_sub(1, Ordering::Relaxed);
        if let Some(s) = inner.streams.get(&w.stream) {
            s.outbox.push(Out::Canceled {
                watch_id: w.id,
                revision: 0,
                compact_revision: compact,
                // etcd says why through compact_revision alone; clients check it first.
                cancel_reason: None,
            });
        }
        inner.flush_deferred_progress(w.stream);
    }
}

/// The sync thread has nowhere to return errors to; a backend read error is retried on
/// the next pass (a broken backend stops the node through the apply path).
fn log_read_failure(e: &MvccError) {
    tracing::warn!(error = %e, "watch sync: reading history failed; retrying");
}

/// One client stream of watchers (a gRPC Watch call). Dropping it cancels its watchers.
pub struct WatchStream<B: Backend> {
    store: Arc<WatchableStore<B>>,
    id: u64,
    outbox: Arc<Outbox>,
}

impl<B: Backend> WatchStream<B> {
    /// The stream's responses.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Refuses a create request without looking at it (the server's permission check
    /// failed): a `Created` response for no watcher, canceled with `reason`.
    pub fn refuse_create(&self, reason: &str) {
        let mut guard = self.store.lock();
        let inner = &mut *guard;
        let revision = inner.rev;
        inner.streams[&self.id].outbox.push(Out::Created {
            watch_id: INVALID_WATCH_ID,
            revision,
            cancel_reason: Some(reason.to_string()),
        });
    }

    /// Creates a watcher and queues the `Created` response (failed creates included).
    pub fn create(&self, opts: WatchOptions) {
        let store = &self.store;
        let mut guard = store.lock();
        let inner = &mut *guard;
        let rev = inner.rev;
        let fail = |inner: &mut Inner, reason: &str| {
            inner.streams[&self.id].outbox.push(Out::Created {
                watch_id: INVALID_WATCH_ID,
                revision: rev,
                cancel_reason: Some(reason.to_string()),
            });
        };
        if opts.start_revision < 0 {
            return fail(inner, ERR_COMPACTED);
        }
        // etcd: an empty key is the smallest key, "\0".
        let key = if opts.key.is_empty() {
            vec![0]
        } else {
            opts.key.clone()
        };
        let range_end = opts.range_end.clone();
        if !matches!(range_end.as_slice(), [] | [0]) && key >= range_end {
            return fail(inner, ERR_EMPTY_RANGE);
        }
        let stream = inner.streams.get_mut(&self.id).expect("stream is open");
        let id = if opts.watch_id == AUTO_WATCH_ID {
            while stream.ids.contains_key(&stream.next_auto_id) {
                stream.next_auto_id += 1;
            }
            let id = stream.next_auto_id;
            stream.next_auto_id += 1;
            id
        } else if stream.ids.contains_key(&opts.watch_id) {
            return fail(inner, ERR_DUPLICATE_ID);
        } else {
            opts.watch_id
        };
        let gid = inner.next_gid;
        inner.next_gid += 1;
        let stream = inner.streams.get_mut(&self.id).expect("stream is open");
        stream.ids.insert(id, gid);
        stream.outbox.push(Out::Created {
            watch_id: id,
            revision: rev,
            cancel_reason: None,
        });
        // etcd's rule: 0 or a future revision is synced from rev + 1 (or the future
        // revision); a past one catches up from the backend.
        let synced = opts.start_revision == 0 || opts.start_revision > rev;
        let next_rev = if opts.start_revision == 0 {
            rev + 1
        } else {
            opts.start_revision
        };
        inner.watchers.insert(
            gid,
            Watcher {
                stream: self.id,
                id,
                key,
                range_end,
                opts,
                next_rev,
                synced: false,
                active: false,
            },
        );
        store.stats.watchers.fetch_add(1, Ordering::Relaxed);
        if synced {
            inner.add_synced(gid);
        } else {
            inner.unsynced.insert(gid);
            store.stats.slow_watchers.fetch_add(1, Ordering::Relaxed);
            drop(guard);
            store.kicker.kick();
        }
    }

    /// Cancels a watcher of this stream; unknown ids are ignored (as etcd does).
    pub fn cancel(&self, watch_id: WatchId) {
        let store = &self.store;
        let mut inner = store.lock();
        let Some(&gid) = inner.streams[&self.id].ids.get(&watch_id) else {
            return;
        };
        let was_unsynced = inner.unsynced.contains(&gid);
        inner.remove_watcher(gid);
        store.stats.watchers.fetch_sub(1, Ordering::Relaxed);
        if was_unsynced {
            store.stats.slow_watchers.fetch_sub(1, Ordering::Relaxed);
        }
        let rev = inner.rev;
        inner.streams[&self.id].outbox.push(Out::Canceled {
            watch_id,
            revision: rev,
            compact_revision: 0,
            cancel_reason: None,
        });
        inner.flush_deferred_progress(self.id);
    }

    /// A client's progress request: one progress response (watch id -1) at the current
    /// revision, as soon as every watcher of the stream is synced. A stream without
    /// watchers gets none (as etcd).
    pub fn request_progress(&self) {
        let mut inner = self.store.lock();
        inner
            .streams
            .get_mut(&self.id)
            .expect("stream is open")
            .deferred_progress = true;
        inner.flush_deferred_progress(self.id);
    }

    /// The periodic progress notification: each synced watcher with `progress_notify`
    /// that got no events since the last tick gets a progress response with its id.
    pub fn progress_tick(&self) {
        let mut guard = self.store.lock();
        let inner = &mut *guard;
        let rev = inner.rev;
        let gids: Vec<u64> = inner.streams[&self.id].ids.values().copied().collect();
        let outbox = inner.streams[&self.id].outbox.clone();
        for gid in gids {
            let w = inner.watchers.get_mut(&gid).expect("stream watchers exist");
            if !w.opts.progress_notify {
                continue;
            }
            // A full outbox skips the tick (as etcd drops it): a stalled client's queue
            // must not grow with notifications.
            if w.synced && outbox.has_room() && !std::mem::take(&mut w.active) {
                outbox.push(Out::Progress {
                    watch_id: w.id,
                    revision: rev,
                });
            }
        }
    }
}

impl<B: Backend> Drop for WatchStream<B> {
    fn drop(&mut self) {
        let store = &self.store;
        let mut inner = store.lock();
        let Some(stream) = inner.streams.remove(&self.id) else {
            return;
        };
        for gid in stream.ids.into_values() {
            let was_unsynced = inner.unsynced.contains(&gid);
            inner.remove_synced(gid);
            inner.unsynced.remove(&gid);
            inner.watchers.remove(&gid);
            store.stats.watchers.fetch_sub(1, Ordering::Relaxed);
            if was_unsynced {
                store.stats.slow_watchers.fetch_sub(1, Ordering::Relaxed);
            }
        }
        store.stats.streams.fetch_sub(1, Ordering::Relaxed);
    }
}
