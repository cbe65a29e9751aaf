//! A fault-injecting TCP proxy that knows which process is on the other end.
//!
//! A [`Proxy`] listens on `127.0.0.1:0` and forwards every connection to one target, in
//! both directions. The cluster launcher puts one in front of each member's peer port and
//! advertises the proxy's address instead, so every Raft message between two members
//! crosses exactly one proxy: the one in front of the member that was dialed.
//!
//! Faults are chosen per *source*, the process that opened the connection. The proxy sees
//! the client's address (`127.0.0.1:port`); on Linux the kernel lists that socket in
//! `/proc/net/tcp` (or `tcp6`) with its inode, and the owning process holds a descriptor
//! whose link reads `socket:[inode]` under `/proc/<pid>/fd`. Only the pids registered with
//! [`Proxy::register_source`] are searched, under a label the caller picks (the member
//! index); anything else is source `None`. A restarted process must be registered again
//! under its new pid. Registering also re-examines the connections still without a
//! source, so a process that dials before the caller registers it is attributed anyway.
//!
//! Fault kinds, each set for one source or for all ([`Scope`]) and cleared by
//! [`Proxy::heal`]:
//! - blackhole: open connections of the source are closed at once; new ones are accepted
//!   and held open but nothing is forwarded in either direction (what the source sends is
//!   read and discarded), until the blackhole is healed, when they are closed so the
//!   client reconnects through a clean connection.
//! - delay: every chunk is forwarded after a fixed delay plus a seeded jitter, never
//!   overtaking an earlier chunk of the same direction.
//! - loss: every chunk about to be forwarded resets the connection (both sides get an
//!   RST) with a seeded probability. TCP does not lose bytes silently, so a lost packet
//!   becomes a broken connection, which is what a peer sees after a lossy link times out.
//!
//! Faults set for one source take precedence over those set for all sources, kind by kind;
//! a blackhole applies if either scope has one. Seeded draws come from one
//! [`SplitMix64`] per fault, taken in the order chunks arrive, so a run with the same
//! interleaving replays exactly.
//!
//! The proxy runs on its own single-threaded tokio runtime on its own thread, so it serves
//! sync and async tests alike and never depends on the caller's runtime making progress.
//! Dropping the [`Proxy`] stops that runtime, which closes the listener and every
//! connection.
//!
//! Note on direction: a connection carries bytes both ways, and the proxy cannot tell a
//! request from a reply. Etcd's peer transport sends messages both on connections it dials
//! (pipeline) and on connections the other side dialed (streams), so a fault on "source a
//! at b's proxy" affects traffic between a and b in both directions on a's connections.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use retcd_prng::SplitMix64;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

/// Largest chunk read from one side before it is forwarded.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks read but not yet forwarded, per direction; reading stops when it is full, so a
/// delayed link pushes back on the sender instead of buffering without bound.
const QUEUE_CHUNKS: usize = 256;
/// Probabilities are drawn in parts per million.
const PER_MILLION: u64 = 1_000_000;

/// Which connections a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every connection, including those whose source is unknown.
    All,
    /// Connections opened by the process registered under this label.
    Source(usize),
}

/// One accepted connection, as [`Proxy::connections`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Increasing from 0 in the order connections were accepted.
    pub id: u64,
    /// The client's address (its local address).
    pub peer: SocketAddr,
    /// The label of the registered process that opened it, if any.
    pub source: Option<usize>,
    /// True when it was accepted under a blackhole and is held without forwarding.
    pub held: bool,
}

/// Counters since the proxy started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted (counted once their source is resolved).
    pub accepted: u64,
    /// The same, by source (`None`: not a registered process).
    pub accepted_by_source: BTreeMap<Option<usize>, u64>,
    /// Connections finished, for whatever reason (`accepted - closed` are open).
    pub closed: u64,
    /// Connections accepted under a blackhole and held without forwarding.
    pub held: u64,
    /// Forwarding connections closed because a blackhole began.
    pub closed_by_blackhole: u64,
    /// Held connections closed because their blackhole was healed.
    pub closed_by_heal: u64,
    /// Connections reset by the loss fault.
    pub resets_injected: u64,
    /// Connections closed because the target refused or failed the connection.
    pub target_connect_failures: u64,
    /// Bytes written to the target (client to target direction).
    pub bytes_to_target: u64,
    /// Bytes written back to clients (target to client direction).
    pub bytes_to_client: u64,
    /// Bytes read from held connections and dropped.
    pub bytes_discarded: u64,
}

impl ProxyStats {
    /// Bytes forwarded in both directions.
    pub fn bytes_forwarded(&self) -> u64 {
        self.bytes_to_target + self.bytes_to_client
    }
}

/// A running proxy; dropping it stops it and closes every connection.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards every accepted connection to `target`.
    pub fn start(target: SocketAddr) -> io::Result<Proxy> {
        let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _guard = runtime.enter();
            TcpListener::from_std(std_listener)?
        };
        let (faults_changed, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            target,
            state: Mutex::new(State::default()),
            stats_changed: Condvar::new(),
            stats_notify: Notify::new(),
            faults_changed,
        });
        let (shutdown, shutdown_rx) = oneshot::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("proxy-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(accept_loop(listener, thread_shared, shutdown_rx));
                // Dropping the runtime here cancels every connection task, which drops
                // (closes) their sockets.
                drop(runtime);
            })?;
        tracing::debug!(%addr, %target, "proxy started");
        Ok(Proxy {
            addr,
            target,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, for advertising the proxy as a peer URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where connections are forwarded.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Connections opened by process `pid` are source `label`: those opened from now on,
    /// and those already open whose source is unknown. Registering a label again (after
    /// a restart) replaces its pid.
    pub fn register_source(&self, label: usize, pid: u32) {
        let unresolved: Vec<(u64, SocketAddr)> = {
            let mut state = self.shared.lock();
            state.sources.insert(label, pid);
            state.sources_generation += 1;
            state
                .connections
                .values()
                .filter(|c| c.source.is_none())
                .map(|c| (c.id, c.peer))
                .collect()
        };
        if unresolved.is_empty() {
            return;
        }
        let tables = read_tcp_tables();
        let owned = socket_inodes(pid);
        let found: Vec<u64> = unresolved
            .into_iter()
            .filter(|&(_, peer)| {
                find_inode(&tables, peer, self.addr).is_some_and(|inode| owned.contains(&inode))
            })
            .map(|(id, _)| id)
            .collect();
        if found.is_empty() {
            return;
        }
        tracing::debug!(addr = %self.addr, label, count = found.len(), "proxy: attributed open connections");
        self.shared.update_stats(|state| {
            for id in found {
                let Some(conn) = state.connections.get_mut(&id) else {
                    continue;
                };
                if conn.source.is_some() {
                    continue;
                }
                conn.source = Some(label);
                let by_source = &mut state.stats.accepted_by_source;
                if let Some(unknown) = by_source.get_mut(&None) {
                    *unknown -= 1;
                    if *unknown == 0 {
                        by_source.remove(&None);
                    }
                }
                *by_source.entry(Some(label)).or_default() += 1;
            }
        });
        // The attributed connections may be under a blackhole of their source now.
        self.shared
            .faults_changed
            .send_modify(|generation| *generation += 1);
    }

    /// Forgets the process registered under `label` (open connections keep their source).
    pub fn unregister_source(&self, label: usize) {
        let mut state = self.shared.lock();
        state.sources.remove(&label);
        state.sources_generation += 1;
    }

    /// Closes the open connections in `scope` and holds new ones without forwarding.
    pub fn blackhole(&self, scope: Scope) {
        tracing::debug!(addr = %self.addr, ?scope, "proxy: blackhole");
        self.shared
            .change_faults(|state| state.faults_mut(scope).blackhole = true);
    }

    /// Forwards each chunk in `scope` after `delay` plus a jitter drawn uniformly from
    /// `0..=jitter` with a generator seeded by `seed`.
    pub fn delay(&self, scope: Scope, delay: Duration, jitter: Duration, seed: u64) {
        tracing::debug!(addr = %self.addr, ?scope, ?delay, ?jitter, seed, "proxy: delay");
        self.shared.change_faults(|state| {
            state.faults_mut(scope).delay = Some(DelayFault {
                delay,
                jitter,
                rng: SplitMix64::new(seed),
            })
        });
    }

    /// Resets a connection in `scope` instead of forwarding a chunk, with probability
    /// `probability` (0 to 1) per chunk, drawn from a generator seeded by `seed`.
    pub fn loss(&self, scope: Scope, probability: f64, seed: u64) {
        assert!(
            (0.0..=1.0).contains(&probability),
            "loss probability {probability} is not within 0..=1"
        );
        tracing::debug!(addr = %self.addr, ?scope, probability, seed, "proxy: loss");
        let per_million = (probability * PER_MILLION as f64).round() as u64;
        self.shared.change_faults(|state| {
            state.faults_mut(scope).loss = Some(LossFault {
                per_million,
                rng: SplitMix64::new(seed),
            })
        });
    }

    /// Clears every fault set for `scope` (for [`Scope::All`]: those set for all
    /// sources, not those set for single sources). Held connections that are no longer
    /// blackholed are closed.
    pub fn heal(&self, scope: Scope) {
        tracing::debug!(addr = %self.addr, ?scope, "proxy: heal");
        self.shared.change_faults(|state| match scope {
            Scope::All => state.all = Faults::default(),
            Scope::Source(label) => {
                state.by_source.remove(&label);
            }
        });
    }

    /// Clears every fault of every scope.
    pub fn heal_all(&self) {
        tracing::debug!(addr = %self.addr, "proxy: heal all");
        self.shared.change_faults(|state| {
            state.all = Faults::default();
            state.by_source.clear();
        });
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        self.shared.lock().stats.clone()
    }

    /// The connections open right now, oldest first.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.shared.lock().connections.values().cloned().collect()
    }

    /// Blocks until `ready` holds for the counters or `timeout` passes; returns the
    /// counters that satisfied it, or the last ones seen. Do not call it from an async
    /// test that must make progress meanwhile: use [`Proxy::wait_for_async`] there.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut ready: impl FnMut(&ProxyStats) -> bool,
    ) -> Result<ProxyStats, ProxyStats> {
        let deadline = std::time::Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if ready(&state.stats) {
                return Ok(state.stats.clone());
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(state.stats.clone());
            }
            state = self
                .shared
                .stats_changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// [`Proxy::wait_for`] for async callers (needs a tokio runtime with time enabled).
    pub async fn wait_for_async(
        &self,
        timeout: Duration,
        mut ready: impl FnMut(&ProxyStats) -> bool,
    ) -> Result<ProxyStats, ProxyStats> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.stats_notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a change right after it still wakes us.
            notified.as_mut().enable();
            {
                let state = self.shared.lock();
                if ready(&state.stats) {
                    return Ok(state.stats.clone());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let state = self.shared.lock();
                return if ready(&state.stats) {
                    Ok(state.stats.clone())
                } else {
                    Err(state.stats.clone())
                };
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic on the proxy thread has been printed already; do not panic again
            // while perhaps unwinding.
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

struct Shared {
    target: SocketAddr,
    state: Mutex<State>,
    /// Signalled on every change of `state.stats`, for [`Proxy::wait_for`].
    stats_changed: Condvar,
    /// The same, for [`Proxy::wait_for_async`].
    stats_notify: Notify,
    /// Bumped on every fault change, so connections re-check whether they are blackholed.
    faults_changed: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    sources: BTreeMap<usize, u32>,
    /// Bumped whenever `sources` changes, so a resolution made from an older copy of it
    /// is made again.
    sources_generation: u64,
    all: Faults,
    by_source: BTreeMap<usize, Faults>,
    stats: ProxyStats,
    connections: BTreeMap<u64, ConnectionInfo>,
    next_connection_id: u64,
}

#[derive(Default)]
struct Faults {
    blackhole: bool,
    delay: Option<DelayFault>,
    loss: Option<LossFault>,
}

struct DelayFault {
    delay: Duration,
    jitter: Duration,
    rng: SplitMix64,
}

struct LossFault {
    per_million: u64,
    rng: SplitMix64,
}

impl State {
    fn faults_mut(&mut self, scope: Scope) -> &mut Faults {
        match scope {
            Scope::All => &mut self.all,
            Scope::Source(label) => self.by_source.entry(label).or_default(),
        }
    }

    fn source_of(&self, id: u64) -> Option<usize> {
        self.connections.get(&id).and_then(|c| c.source)
    }

    fn blackholed(&self, source: Option<usize>) -> bool {
        self.all.blackhole
            || source
                .and_then(|s| self.by_source.get(&s))
                .is_some_and(|f| f.blackhole)
    }

    /// The delay for the next chunk from `source`, drawing its jitter.
    fn draw_delay(&mut self, source: Option<usize>) -> Duration {
        let own = source.and_then(|s| self.by_source.get_mut(&s));
        let fault = match own {
            Some(Faults { delay: Some(d), .. }) => d,
            _ => match &mut self.all.delay {
                Some(d) => d,
                None => return Duration::ZERO,
            },
        };
        let jitter_nanos = u64::try_from(fault.jitter.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if jitter_nanos == 0 {
            0
        } else {
            fault.rng.below(jitter_nanos.saturating_add(1))
        };
        fault.delay + Duration::from_nanos(jitter)
    }

    /// Whether the next chunk from `source` resets its connection.
    fn draw_loss(&mut self, source: Option<usize>) -> bool {
        let own = source.and_then(|s| self.by_source.get_mut(&s));
        let fault = match own {
            Some(Faults { loss: Some(l), .. }) => l,
            _ => match &mut self.all.loss {
                Some(l) => l,
                None => return false,
            },
        };
        fault.rng.chance(fault.per_million, PER_MILLION)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere never leaves the state half-updated in a way that matters to
        // a test harness; keep serving rather than cascading the panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn change_faults(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.lock());
        self.faults_changed
            .send_modify(|generation| *generation += 1);
    }

    fn update_stats(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.lock());
        self.notify_stats();
    }

    fn notify_stats(&self) {
        self.stats_changed.notify_all();
        self.stats_notify.notify_waiters();
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(serve_connection(stream, peer, shared.clone()));
                }
                Err(error) => {
                    // Out of descriptors and the like: pause instead of spinning.
                    tracing::warn!(%error, "proxy: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

/// How a forwarding connection ended.
enum End {
    /// One side failed or closed abruptly.
    Broken,
    /// The loss fault decided to reset it.
    Reset,
}

async fn serve_connection(client: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let Ok(proxy_addr) = client.local_addr() else {
        return;
    };
    // Subscribe before looking at the faults, so a change right after the look is seen.
    let mut faults_rx = shared.faults_changed.subscribe();
    let (id, source, held) = loop {
        let (generation, sources) = {
            let state = shared.lock();
            let sources: Vec<(usize, u32)> = state.sources.iter().map(|(&l, &p)| (l, p)).collect();
            (state.sources_generation, sources)
        };
        let resolved =
            tokio::task::spawn_blocking(move || resolve_source(peer, proxy_addr, &sources))
                .await
                .ok()
                .flatten();
        let mut state = shared.lock();
        if state.sources_generation != generation {
            continue;
        }
        let id = state.next_connection_id;
        state.next_connection_id += 1;
        let held = state.blackholed(resolved);
        state.connections.insert(
            id,
            ConnectionInfo {
                id,
                peer,
                source: resolved,
                held,
            },
        );
        state.stats.accepted += 1;
        *state.stats.accepted_by_source.entry(resolved).or_default() += 1;
        if held {
            state.stats.held += 1;
        }
        drop(state);
        shared.notify_stats();
        break (id, resolved, held);
    };
    tracing::debug!(%peer, ?source, held, "proxy: accepted");

    if held {
        hold(client, id, &shared, &mut faults_rx).await;
    } else {
        forward(client, id, &shared, &mut faults_rx).await;
    }
    shared.update_stats(|state| {
        state.connections.remove(&id);
        state.stats.closed += 1;
    });
}

/// Keeps a blackholed connection open, discarding what the client sends, until the
/// blackhole is healed or the client goes away; then drops (closes) it.
async fn hold(
    mut client: TcpStream,
    id: u64,
    shared: &Shared,
    faults_rx: &mut watch::Receiver<u64>,
) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        tokio::select! {
            read = client.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => shared.update_stats(|s| s.stats.bytes_discarded += n as u64),
            },
            changed = faults_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                let still = {
                    let state = shared.lock();
                    state.blackholed(state.source_of(id))
                };
                if !still {
                    shared.update_stats(|s| s.stats.closed_by_heal += 1);
                    return;
                }
            }
        }
    }
}

async fn forward(
    mut client: TcpStream,
    id: u64,
    shared: &Shared,
    faults_rx: &mut watch::Receiver<u64>,
) {
    let mut target = match TcpStream::connect(shared.target).await {
        Ok(t) => t,
        Err(error) => {
            tracing::debug!(%error, target = %shared.target, "proxy: target unreachable");
            shared.update_stats(|s| s.stats.target_connect_failures += 1);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = target.set_nodelay(true);

    let ended = {
        let (client_read, client_write) = client.split();
        let (target_read, target_write) = target.split();
        let (to_target_tx, to_target_rx) = mpsc::channel(QUEUE_CHUNKS);
        let (to_client_tx, to_client_rx) = mpsc::channel(QUEUE_CHUNKS);
        let pumps = async {
            tokio::try_join!(
                read_side(client_read, to_target_tx, id, shared),
                write_side(to_target_rx, target_write, id, shared, Direction::ToTarget),
                read_side(target_read, to_client_tx, id, shared),
                write_side(to_client_rx, client_write, id, shared, Direction::ToClient),
            )
        };
        let blackholed = async {
            loop {
                if faults_rx.changed().await.is_err() {
                    // The proxy is shutting down; the runtime drops this task anyway.
                    std::future::pending::<()>().await;
                }
                let state = shared.lock();
                if state.blackholed(state.source_of(id)) {
                    return;
                }
            }
        };
        tokio::select! {
            result = pumps => result.err(),
            () = blackholed => {
                shared.update_stats(|s| s.stats.closed_by_blackhole += 1);
                None
            }
        }
    };
    if let Some(End::Reset) = ended {
        let _ = client.set_zero_linger();
        let _ = target.set_zero_linger();
    }
    // Both sockets close here: with FIN normally, with RST after a reset.
}

#[derive(Clone, Copy)]
enum Direction {
    ToTarget,
    ToClient,
}

enum Chunk {
    Data { bytes: Vec<u8>, due: Instant },
    Eof,
}

/// Reads chunks from one side and queues them with the time each may be forwarded.
async fn read_side(
    mut from: impl AsyncRead + Unpin,
    queue: mpsc::Sender<Chunk>,
    id: u64,
    shared: &Shared,
) -> Result<(), End> {
    // Invariant: due times in the queue never decrease, so order is kept under jitter.
    let mut last_due = Instant::now();
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = from.read(&mut buf).await.map_err(|_| End::Broken)?;
        if n == 0 {
            queue.send(Chunk::Eof).await.map_err(|_| End::Broken)?;
            return Ok(());
        }
        let bytes = buf[..n].to_vec();
        let delay = {
            let mut state = shared.lock();
            let source = state.source_of(id);
            state.draw_delay(source)
        };
        let due = (Instant::now() + delay).max(last_due);
        last_due = due;
        queue
            .send(Chunk::Data { bytes, due })
            .await
            .map_err(|_| End::Broken)?;
    }
}

/// Forwards queued chunks to the other side when they are due, or resets the connection.
async fn write_side(
    mut queue: mpsc::Receiver<Chunk>,
    mut to: impl AsyncWrite + Unpin,
    id: u64,
    shared: &Shared,
    direction: Direction,
) -> Result<(), End> {
    while let Some(chunk) = queue.recv().await {
        match chunk {
            Chunk::Eof => {
                // Pass the half-close on; the other direction keeps flowing.
                let _ = to.shutdown().await;
                return Ok(());
            }
            Chunk::Data { bytes, due } => {
                tokio::time::sleep_until(due).await;
                let lost = {
                    let mut state = shared.lock();
                    let source = state.source_of(id);
                    state.draw_loss(source)
                };
                if lost {
                    shared.update_stats(|s| s.stats.resets_injected += 1);
                    tracing::debug!(id, "proxy: injected a reset");
                    return Err(End::Reset);
                }
                to.write_all(&bytes).await.map_err(|_| End::Broken)?;
                let n = bytes.len() as u64;
                shared.update_stats(|s| match direction {
                    Direction::ToTarget => s.stats.bytes_to_target += n,
                    Direction::ToClient => s.stats.bytes_to_client += n,
                });
            }
        }
    }
    Ok(())
}

/// The label of the registered process that owns the client end of the connection from
/// `client` to `proxy_addr`, if any.
pub fn resolve_source(
    client: SocketAddr,
    proxy_addr: SocketAddr,
    sources: &[(usize, u32)],
) -> Option<usize> {
    if sources.is_empty() {
        return None;
    }
    let inode = find_inode(&read_tcp_tables(), client, proxy_addr)?;
    sources
        .iter()
        .find(|&&(_, pid)| socket_inodes(pid).contains(&inode))
        .map(|&(label, _)| label)
}

/// Every socket in `/proc/net/tcp` and `/proc/net/tcp6`.
fn read_tcp_tables() -> Vec<ProcTcpEntry> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| parse_proc_net_tcp(&table))
        .collect()
}

/// The inode of the socket whose local end is `local` and remote end is `remote`.
fn find_inode(tables: &[ProcTcpEntry], local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    tables
        .iter()
        .find(|e| e.inode != 0 && same_endpoint(e.local, local) && same_endpoint(e.remote, remote))
        .map(|e| e.inode)
}

/// The inodes of the sockets process `pid` holds (empty if it is gone).
fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeSet::new();
    };
    fds.flatten()
        .filter_map(|fd| {
            let link = std::fs::read_link(fd.path()).ok()?;
            link.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// One socket as `/proc/net/tcp` or `/proc/net/tcp6` lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcTcpEntry {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub inode: u64,
}

/// Parses the text of `/proc/net/tcp` or `/proc/net/tcp6`, skipping lines it cannot read.
pub fn parse_proc_net_tcp(table: &str) -> Vec<ProcTcpEntry> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            if fields.len() < 10 {
                return None;
            }
            Some(ProcTcpEntry {
                local: parse_proc_addr(fields[1])?,
                remote: parse_proc_addr(fields[2])?,
                inode: fields[9].parse().ok()?,
            })
        })
        .collect()
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6). The kernel prints each
/// 32-bit word of the address in network order as a host-order integer, so the word's
/// native-endian bytes are the address bytes.
fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (host, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = host.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match host.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Equal addresses, treating an IPv4-mapped IPv6 address as its IPv4 address.
fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    a.port() == b.port() && canonical(a.ip()) == canonical(b.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp_lines() {
        // The layout of the kernel's table, with made-up values.
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
              0: 0100007F:0929 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 424242 1 0000000000000000 20 4 30 10 -1\n   \
              1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0\n";
        let entries = parse_proc_net_tcp(v4);
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert_eq!(entries[0].local, "127.0.0.1:2345".parse().unwrap());
        assert_eq!(entries[0].remote, "127.0.0.1:50000".parse().unwrap());
        assert_eq!(entries[0].inode, 424242);
        assert_eq!(entries[1].local, "0.0.0.0:22".parse().unwrap());

        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
              0: 0000000000000000FFFF00000100007F:0929 0000000000000000FFFF00000100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 20 4 30 10 -1\n   \
              1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 778 1 0000000000000000 100 0 0 10 0\n";
        let entries = parse_proc_net_tcp(v6);
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert!(same_endpoint(
            entries[0].local,
            "127.0.0.1:2345".parse().unwrap()
        ));
        assert_eq!(entries[0].inode, 777);
        assert_eq!(entries[1].local, "[::1]:8080".parse().unwrap());
    }

    #[test]
    fn seeded_faults_replay() {
        let draws = |seed: u64| {
            let mut state = State::default();
            state.faults_mut(Scope::Source(1)).loss = Some(LossFault {
                per_million: 300_000,
                rng: SplitMix64::new(seed),
            });
            state.faults_mut(Scope::All).delay = Some(DelayFault {
                delay: Duration::from_millis(5),
                jitter: Duration::from_millis(3),
                rng: SplitMix64::new(seed),
            });
            let losses: Vec<bool> = (0..200).map(|_| state.draw_loss(Some(1))).collect();
            let delays: Vec<Duration> = (0..200).map(|_| state.draw_delay(Some(1))).collect();
            (losses, delays)
        };
        let (losses, delays) = draws(42);
        assert_eq!((losses.clone(), delays.clone()), draws(42));
        let lost = losses.iter().filter(|&&l| l).count();
        assert!((20..=100).contains(&lost), "{lost} of 200 lost at p=0.3");
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_millis(5) && *d <= Duration::from_millis(8))
        );
        assert!(delays.iter().any(|d| *d != delays[0]), "jitter varies");

        // Source faults take precedence kind by kind; others fall back to all sources.
        let mut state = State::default();
        assert!(!state.draw_loss(None));
        assert_eq!(state.draw_delay(Some(3)), Duration::ZERO);
        state.faults_mut(Scope::Source(2)).blackhole = true;
        assert!(state.blackholed(Some(2)));
        assert!(!state.blackholed(Some(1)) && !state.blackholed(None));
        state.faults_mut(Scope::All).blackhole = true;
        assert!(state.blackholed(None));
    }
}
