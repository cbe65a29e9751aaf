//! Starts a cluster of `retcd` (or `etcd`) processes on 127.0.0.1 and controls them.
//!
//! [`Cluster::start`] picks free ports, makes a temporary directory with one data dir and
//! one log file (stdout and stderr) per member, starts every member with etcd's flags and
//! `--initial-cluster-state new`, and returns once each answers `GET /health` with 200.
//! Members are named `m0`, `m1`, ... and addressed by index everywhere.
//!
//! With [`ClusterSpec::proxied_peers`], a [`Proxy`] stands in front of each member's peer
//! port, and the proxy's address is the member's advertised peer URL, so every connection
//! one member opens to another crosses the callee's proxy. Every member's pid is
//! registered with every proxy under the member's index, which is how
//! [`Cluster::isolate`], [`Cluster::partition`], [`Cluster::delay`] and [`Cluster::loss`]
//! address a link: the fault for the link `from -> to` lives on proxy `to`, for source
//! `from`, and covers every connection `from` opens to `to` (etcd sends messages both ways
//! on those, so a link fault is not strictly one-way).
//!
//! Member control is by signal: SIGKILL ([`Cluster::kill`]), SIGSTOP/SIGCONT
//! ([`Cluster::stop`], [`Cluster::cont`]), SIGTERM ([`Cluster::terminate`]), and
//! [`Cluster::restart`] with the same flags and data dir ([`Cluster::restart_with`]: and
//! more flags, for that start). Methods take `&self` (except
//! [`Cluster::add_member`] and [`Cluster::start_added`]), so one `Arc<Cluster>` can be
//! shared by a fault-injecting task and the clients. Dropping the cluster kills every member; if the thread is panicking,
//! it first prints the tail of each member's log.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::proxy::{Proxy, Scope};

/// How long [`Cluster::start`] waits for every member to become healthy, by default.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a member may take to exit after SIGTERM, or to change state after a signal.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between two polls of a condition that has no event to wait on (`/health`,
/// `/proc/<pid>/stat`).
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Bound on one `/health` request.
const HEALTH_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Lines of each member's log quoted in errors.
const LOG_TAIL_LINES: usize = 40;
/// Tries of [`Cluster::start`] when another process took a port we picked meanwhile.
const START_ATTEMPTS: usize = 3;

/// What to start. Build it with [`ClusterSpec::new`] and the setters.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// The server binary (`retcd` or `etcd`).
    pub binary: PathBuf,
    /// Number of members.
    pub size: usize,
    /// Flags appended to every member's command line.
    pub extra_args: Vec<String>,
    /// Environment variables set for every member.
    pub envs: Vec<(String, String)>,
    /// `--heartbeat-interval`; etcd's default is 100.
    pub heartbeat_ms: u64,
    /// `--election-timeout`; etcd's default is 1000.
    pub election_ms: u64,
    /// `--snapshot-count`, if not the server's default.
    pub snapshot_count: Option<u64>,
    /// A fault proxy in front of every member's peer port.
    pub proxied_peers: bool,
    /// Peer URLs are `https://` (the TLS flags go in `extra_args`; a proxy passes the
    /// TLS bytes through untouched).
    pub peer_https: bool,
    /// `--initial-cluster-token`.
    pub token: String,
    /// How long [`Cluster::start`] and [`Cluster::wait_healthy`] wait for `/health`.
    pub health_timeout: Duration,
}

impl ClusterSpec {
    /// Three members of `binary` with etcd's default timing, peers not proxied.
    pub fn new(binary: impl Into<PathBuf>) -> ClusterSpec {
        ClusterSpec {
            binary: binary.into(),
            size: 3,
            extra_args: Vec::new(),
            envs: Vec::new(),
            heartbeat_ms: 100,
            election_ms: 1000,
            snapshot_count: None,
            proxied_peers: false,
            peer_https: false,
            token: "retcd-testkit".to_string(),
            health_timeout: DEFAULT_HEALTH_TIMEOUT,
        }
    }

    pub fn size(mut self, size: usize) -> Self {
        self.size = size;
        self
    }

    pub fn extra_arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    pub fn heartbeat_ms(mut self, ms: u64) -> Self {
        self.heartbeat_ms = ms;
        self
    }

    pub fn election_ms(mut self, ms: u64) -> Self {
        self.election_ms = ms;
        self
    }

    pub fn snapshot_count(mut self, count: u64) -> Self {
        self.snapshot_count = Some(count);
        self
    }

    pub fn proxied_peers(mut self, proxied: bool) -> Self {
        self.proxied_peers = proxied;
        self
    }

    pub fn peer_https(mut self, https: bool) -> Self {
        self.peer_https = https;
        self
    }

    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }

    pub fn health_timeout(mut self, timeout: Duration) -> Self {
        self.health_timeout = timeout;
        self
    }
}

/// Whether a member bootstraps a new cluster or joins an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InitialState {
    New,
    Existing,
}

impl InitialState {
    fn flag(self) -> &'static str {
        match self {
            InitialState::New => "new",
            InitialState::Existing => "existing",
        }
    }
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// In front of `peer_port` when peers are proxied.
    proxy: Option<Proxy>,
    /// `http` or `https`.
    peer_scheme: &'static str,
    data_dir: PathBuf,
    log_path: PathBuf,
    /// `--initial-cluster` and `--initial-cluster-state`, fixed at its first start.
    initial_cluster: String,
    initial_state: InitialState,
    process: Mutex<Process>,
}

#[derive(Default)]
struct Process {
    /// `Some` from spawn until the exit is reaped.
    child: Option<Child>,
    /// How the last process exited.
    last_exit: Option<ExitStatus>,
    starts: u32,
}

impl Process {
    /// Reaps the child if it has exited; true if it is still running.
    fn running(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.last_exit = Some(status);
                self.child = None;
                false
            }
            // Cannot tell; assume it runs so that Drop still kills it.
            Err(_) => true,
        }
    }
}

impl Member {
    fn lock(&self) -> MutexGuard<'_, Process> {
        self.process.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_listen_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.peer_scheme, self.peer_port)
    }

    fn advertised_peer_url(&self) -> String {
        match &self.proxy {
            Some(proxy) => format!("{}://{}", self.peer_scheme, proxy.addr()),
            None => self.peer_listen_url(),
        }
    }
}

/// A running cluster; every member is killed on drop.
pub struct Cluster {
    spec: ClusterSpec,
    members: Vec<Member>,
    /// The user and password [`Cluster::client`] logs in with, once auth is on.
    credentials: Option<(String, String)>,
    /// Last, so it is removed after the members are gone.
    root: tempfile::TempDir,
}

impl Cluster {
    /// Starts `spec.size` members and waits until each answers `/health` with 200. On
    /// failure the error quotes the tail of every member's log.
    pub fn start(spec: ClusterSpec) -> anyhow::Result<Cluster> {
        ensure!(spec.size >= 1, "a cluster needs at least one member");
        ensure!(
            spec.binary.is_file(),
            "server binary {} does not exist",
            spec.binary.display()
        );
        let mut attempt = 1;
        loop {
            match Cluster::try_start(spec.clone()) {
                Ok(cluster) => return Ok(cluster),
                Err((error, port_taken)) => {
                    if !port_taken || attempt == START_ATTEMPTS {
                        return Err(error);
                    }
                    tracing::warn!(attempt, "a port was taken under us; starting again");
                    attempt += 1;
                }
            }
        }
    }

    /// One try; the flag tells whether it failed because a port was taken.
    fn try_start(spec: ClusterSpec) -> Result<Cluster, (anyhow::Error, bool)> {
        let not_ports = |e: anyhow::Error| (e, false);
        let root = tempfile::Builder::new()
            .prefix("retcd-cluster-")
            .tempdir()
            .context("create the cluster's temporary directory")
            .map_err(not_ports)?;
        let ports = free_ports(2 * spec.size).map_err(not_ports)?;
        let mut members = Vec::with_capacity(spec.size);
        for i in 0..spec.size {
            members.push(
                new_member(
                    root.path(),
                    format!("m{i}"),
                    ports[2 * i],
                    ports[2 * i + 1],
                    spec.proxied_peers,
                    if spec.peer_https { "https" } else { "http" },
                    InitialState::New,
                )
                .map_err(not_ports)?,
            );
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.advertised_peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.initial_cluster = initial_cluster.clone();
        }
        let cluster = Cluster {
            spec,
            members,
            credentials: None,
            root,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i, &[]).map_err(not_ports)?;
        }
        let all: Vec<usize> = (0..cluster.members.len()).collect();
        if let Err(error) = cluster.wait_healthy_all_of(&all, cluster.spec.health_timeout) {
            let port_taken = (0..cluster.members.len()).any(|i| {
                cluster
                    .log(i)
                    .to_lowercase()
                    .contains("address already in use")
            });
            return Err((error, port_taken));
        }
        tracing::info!(size = cluster.members.len(), binary = %cluster.spec.binary.display(), "cluster started");
        Ok(cluster)
    }

    /// Number of members, including added ones.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// The member's `--name`.
    pub fn name(&self, i: usize) -> &str {
        &self.member(i).name
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn client_url(&self, i: usize) -> String {
        self.member(i).client_url()
    }

    /// Every member's client URL, in index order.
    pub fn client_endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// The peer URL other members use (the proxy's when proxied).
    pub fn peer_url(&self, i: usize) -> String {
        self.member(i).advertised_peer_url()
    }

    /// `name=peer_url,...` for the given members, as `--initial-cluster` wants it.
    pub fn initial_cluster_of(&self, members: &[usize]) -> String {
        members
            .iter()
            .map(|&i| format!("{}={}", self.name(i), self.peer_url(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The proxy in front of member `i`'s peer port, if peers are proxied.
    pub fn proxy(&self, i: usize) -> Option<&Proxy> {
        self.member(i).proxy.as_ref()
    }

    pub fn data_dir(&self, i: usize) -> &Path {
        &self.member(i).data_dir
    }

    pub fn log_path(&self, i: usize) -> &Path {
        &self.member(i).log_path
    }

    /// Everything member `i` wrote to stdout and stderr, across restarts.
    pub fn log(&self, i: usize) -> String {
        let bytes = std::fs::read(&self.member(i).log_path).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The temporary directory holding data dirs and logs.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// True while member `i`'s process exists (a stopped process runs).
    pub fn is_running(&self, i: usize) -> bool {
        self.member(i).lock().running()
    }

    /// Member `i`'s pid while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        let mut process = self.member(i).lock();
        if process.running() {
            process.child.as_ref().map(Child::id)
        } else {
            None
        }
    }

    /// How member `i`'s last process exited, if one did.
    pub fn last_exit(&self, i: usize) -> Option<ExitStatus> {
        let mut process = self.member(i).lock();
        process.running();
        process.last_exit
    }

    /// SIGKILL, then reap.
    pub fn kill(&self, i: usize) -> anyhow::Result<ExitStatus> {
        let member = self.member(i);
        let mut process = member.lock();
        ensure!(process.running(), "kill: member {i} is not running");
        let child = process.child.as_mut().expect("running has a child");
        child
            .kill()
            .with_context(|| format!("SIGKILL member {i}"))?;
        let status = child.wait().with_context(|| format!("reap member {i}"))?;
        process.child = None;
        process.last_exit = Some(status);
        tracing::info!(member = i, "killed");
        Ok(status)
    }

    /// SIGSTOP; returns once the process is stopped.
    pub fn stop(&self, i: usize) -> anyhow::Result<()> {
        let pid = self.running_pid(i, "stop")?;
        signal(pid, "STOP")?;
        wait_state(pid, |state| state == 'T', "stopped")?;
        tracing::info!(member = i, "stopped");
        Ok(())
    }

    /// SIGCONT; returns once the process is no longer stopped.
    pub fn cont(&self, i: usize) -> anyhow::Result<()> {
        let pid = self.running_pid(i, "cont")?;
        signal(pid, "CONT")?;
        wait_state(pid, |state| state != 'T', "continued")?;
        tracing::info!(member = i, "continued");
        Ok(())
    }

    /// True if member `i` is stopped by a signal.
    pub fn is_stopped(&self, i: usize) -> bool {
        self.pid(i)
            .and_then(process_state)
            .is_some_and(|state| state == 'T')
    }

    /// SIGTERM (and SIGCONT, so a stopped member can act on it), then waits for the
    /// exit; SIGKILL and an error if it does not exit in time.
    pub fn terminate(&self, i: usize) -> anyhow::Result<ExitStatus> {
        let member = self.member(i);
        let mut process = member.lock();
        ensure!(process.running(), "terminate: member {i} is not running");
        let pid = process.child.as_ref().expect("running has a child").id();
        signal(pid, "TERM")?;
        signal(pid, "CONT")?;
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while process.running() {
            if Instant::now() >= deadline {
                let mut child = process.child.take().expect("running has a child");
                let _ = child.kill();
                process.last_exit = child.wait().ok();
                bail!(
                    "member {i} did not exit within {EXIT_TIMEOUT:?} of SIGTERM; log tail:\n{}",
                    tail(&self.log(i), LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        tracing::info!(member = i, "terminated");
        Ok(process.last_exit.expect("an exited process has a status"))
    }

    /// Starts member `i` again after it exited, with the same flags and data dir, and
    /// registers its new pid with every proxy. Does not wait for it to become healthy
    /// (it cannot while a majority is down): see [`Cluster::wait_healthy`].
    pub fn restart(&self, i: usize) -> anyhow::Result<u32> {
        ensure!(
            !self.is_running(i),
            "restart: member {i} is still running; kill or terminate it first"
        );
        let pid = self.spawn(i, &[])?;
        tracing::info!(member = i, pid, "restarted");
        Ok(pid)
    }

    /// [`Cluster::restart`] with `extra_args` appended to the command line for this
    /// start only (later restarts use the spec's flags again).
    pub fn restart_with(&self, i: usize, extra_args: &[&str]) -> anyhow::Result<u32> {
        ensure!(
            !self.is_running(i),
            "restart: member {i} is still running; kill or terminate it first"
        );
        let pid = self.spawn(i, extra_args)?;
        tracing::info!(member = i, pid, ?extra_args, "restarted with extra flags");
        Ok(pid)
    }

    /// One `GET /health` on member `i`: true on 200 with `"health":"true"`.
    pub fn is_healthy(&self, i: usize) -> bool {
        health(self.member(i).client_port)
    }

    /// Waits until member `i` answers `/health` with 200, within the spec's timeout.
    pub fn wait_healthy(&self, i: usize) -> anyhow::Result<()> {
        self.wait_healthy_all_of(&[i], self.spec.health_timeout)
    }

    /// Waits until every running member answers `/health` with 200.
    pub fn wait_all_healthy(&self) -> anyhow::Result<()> {
        let running: Vec<usize> = (0..self.size()).filter(|&i| self.is_running(i)).collect();
        self.wait_healthy_all_of(&running, self.spec.health_timeout)
    }

    /// Waits until each of `members` is healthy; fails at once if one exits.
    pub fn wait_healthy_all_of(&self, members: &[usize], timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<usize> = members.to_vec();
        loop {
            pending.retain(|&i| !self.is_healthy(i));
            if pending.is_empty() {
                return Ok(());
            }
            if let Some(&i) = pending.iter().find(|&&i| !self.is_running(i)) {
                bail!(
                    "member {i} exited ({:?}) before it became healthy\n{}",
                    self.last_exit(i),
                    self.log_tails()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "members {pending:?} were not healthy within {timeout:?}\n{}",
                    self.log_tails()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Member `i` can neither reach nor be reached by any other member: a blackhole for
    /// everyone on its own proxy, and for it on everyone else's.
    pub fn isolate(&self, i: usize) -> anyhow::Result<()> {
        self.proxied(i)?.blackhole(Scope::All);
        for j in (0..self.size()).filter(|&j| j != i) {
            self.proxied(j)?.blackhole(Scope::Source(i));
        }
        tracing::info!(member = i, "isolated");
        Ok(())
    }

    /// Members in different groups cannot reach each other; a member in no group is
    /// alone. Faults already set stay (use [`Cluster::heal`] first for a fresh layout).
    pub fn partition(&self, groups: &[&[usize]]) -> anyhow::Result<()> {
        let mut group_of: Vec<Option<usize>> = vec![None; self.size()];
        for (g, members) in groups.iter().enumerate() {
            for &i in members.iter() {
                ensure!(i < self.size(), "partition: no member {i}");
                ensure!(
                    group_of[i].is_none(),
                    "partition: member {i} is in two groups"
                );
                group_of[i] = Some(g);
            }
        }
        // Members in no group get groups of their own.
        let mut next = groups.len();
        let group_of: Vec<usize> = group_of
            .into_iter()
            .map(|g| {
                g.unwrap_or_else(|| {
                    next += 1;
                    next
                })
            })
            .collect();
        for to in 0..self.size() {
            let proxy = self.proxied(to)?;
            for from in (0..self.size()).filter(|&from| group_of[from] != group_of[to]) {
                proxy.blackhole(Scope::Source(from));
            }
        }
        tracing::info!(?groups, "partitioned");
        Ok(())
    }

    /// Every chunk on connections `from` opens to `to` waits `delay`.
    pub fn delay(&self, from: usize, to: usize, delay: Duration) -> anyhow::Result<()> {
        self.delay_with_jitter(from, to, delay, Duration::ZERO, 0)
    }

    /// Like [`Cluster::delay`], plus a jitter in `0..=jitter` drawn from `seed`.
    pub fn delay_with_jitter(
        &self,
        from: usize,
        to: usize,
        delay: Duration,
        jitter: Duration,
        seed: u64,
    ) -> anyhow::Result<()> {
        ensure!(from < self.size(), "delay: no member {from}");
        self.proxied(to)?
            .delay(Scope::Source(from), delay, jitter, seed);
        Ok(())
    }

    /// Connections `from` opens to `to` are reset instead of forwarding a chunk, with
    /// probability `probability` per chunk, drawn from `seed`.
    pub fn loss(&self, from: usize, to: usize, probability: f64, seed: u64) -> anyhow::Result<()> {
        ensure!(from < self.size(), "loss: no member {from}");
        self.proxied(to)?
            .loss(Scope::Source(from), probability, seed);
        Ok(())
    }

    /// Clears every network fault on every proxy.
    pub fn heal(&self) -> anyhow::Result<()> {
        for i in 0..self.size() {
            self.proxied(i)?.heal_all();
        }
        tracing::info!("healed");
        Ok(())
    }

    /// Prepares a member to be added with MemberAdd: ports, a proxy when peers are
    /// proxied, a data dir and a log file. Returns its advertised peer URL (for
    /// MemberAdd) and its index (for [`Cluster::start_added`]).
    pub fn add_member(&mut self, name: &str) -> anyhow::Result<(String, usize)> {
        ensure!(
            self.members.iter().all(|m| m.name != name),
            "add_member: a member is named {name} already"
        );
        let ports = free_ports(2)?;
        let member = new_member(
            self.root.path(),
            name.to_string(),
            ports[0],
            ports[1],
            self.spec.proxied_peers,
            if self.spec.peer_https {
                "https"
            } else {
                "http"
            },
            InitialState::Existing,
        )?;
        if let Some(proxy) = &member.proxy {
            for (j, other) in self.members.iter().enumerate() {
                if let Some(child) = other.lock().child.as_ref() {
                    proxy.register_source(j, child.id());
                }
            }
        }
        let url = member.advertised_peer_url();
        self.members.push(member);
        Ok((url, self.members.len() - 1))
    }

    /// Starts a member prepared by [`Cluster::add_member`] with
    /// `--initial-cluster-state existing` and `initial_cluster` (the cluster after the
    /// MemberAdd, this member included). Does not wait for it to become healthy.
    pub fn start_added(&mut self, i: usize, initial_cluster: &str) -> anyhow::Result<u32> {
        let member = &mut self.members[i];
        ensure!(
            member.initial_state == InitialState::Existing && member.lock().starts == 0,
            "start_added: member {i} was not prepared by add_member, or has started"
        );
        member.initial_cluster = initial_cluster.to_string();
        let pid = self.spawn(i, &[])?;
        tracing::info!(member = i, pid, "added member started");
        Ok(pid)
    }

    /// The last lines of every member's log, for error messages.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for i in 0..self.size() {
            out.push_str(&format!(
                "--- {} ({}), last {LOG_TAIL_LINES} lines of {}:\n{}\n",
                self.name(i),
                i,
                self.log_path(i).display(),
                tail(&self.log(i), LOG_TAIL_LINES)
            ));
        }
        out
    }

    /// From now on [`Cluster::client`] (and so [`Cluster::leader`]) logs in as `user`:
    /// for a test that turned auth on.
    pub fn log_in_as(&mut self, user: &str, password: &str) {
        self.credentials = Some((user.to_string(), password.to_string()));
    }

    /// A client for member `i` alone, with bounded connect and request times, logged in
    /// when [`Cluster::log_in_as`] said so.
    pub async fn client(&self, i: usize) -> anyhow::Result<etcd_client::Client> {
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        if let Some((user, password)) = &self.credentials {
            options = options.with_user(user, password);
        }
        etcd_client::Client::connect([self.client_url(i)], Some(options))
            .await
            .with_context(|| format!("connect to member {i}"))
    }

    /// The index of the member a majority of members name as leader, asking each
    /// member's Status; retries until `timeout`.
    pub async fn leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // (index, member id, leader id) of every member that answers.
            let mut answers = Vec::new();
            for i in (0..self.size()).filter(|&i| self.is_running(i) && !self.is_stopped(i)) {
                let Ok(mut client) = self.client(i).await else {
                    continue;
                };
                let status = tokio::time::timeout(Duration::from_secs(2), client.status()).await;
                if let Ok(Ok(status)) = status {
                    let id = status.header().map_or(0, |h| h.member_id());
                    answers.push((i, id, status.leader()));
                }
            }
            for &(_, _, leader) in &answers {
                let votes = answers.iter().filter(|a| a.2 == leader).count();
                if leader != 0
                    && votes > self.size() / 2
                    && let Some(&(i, _, _)) = answers.iter().find(|a| a.1 == leader)
                {
                    return Ok(i);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "no leader named by a majority within {timeout:?}; (member, id, leader): {answers:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn member(&self, i: usize) -> &Member {
        self.members
            .get(i)
            .unwrap_or_else(|| panic!("no member {i} in a cluster of {}", self.members.len()))
    }

    fn proxied(&self, i: usize) -> anyhow::Result<&Proxy> {
        ensure!(
            i < self.size(),
            "no member {i} in a cluster of {}",
            self.size()
        );
        self.member(i)
            .proxy
            .as_ref()
            .context("network faults need ClusterSpec::proxied_peers(true)")
    }

    fn running_pid(&self, i: usize, what: &str) -> anyhow::Result<u32> {
        self.pid(i)
            .with_context(|| format!("{what}: member {i} is not running"))
    }

    fn args(&self, i: usize) -> Vec<String> {
        let m = self.member(i);
        let client_url = m.client_url();
        let mut args = vec![
            "--name".to_string(),
            m.name.clone(),
            "--data-dir".to_string(),
            m.data_dir.display().to_string(),
            "--listen-client-urls".to_string(),
            client_url.clone(),
            "--advertise-client-urls".to_string(),
            client_url,
            "--listen-peer-urls".to_string(),
            m.peer_listen_url(),
            "--initial-advertise-peer-urls".to_string(),
            m.advertised_peer_url(),
            "--initial-cluster".to_string(),
            m.initial_cluster.clone(),
            "--initial-cluster-state".to_string(),
            m.initial_state.flag().to_string(),
            "--initial-cluster-token".to_string(),
            self.spec.token.clone(),
            "--heartbeat-interval".to_string(),
            self.spec.heartbeat_ms.to_string(),
            "--election-timeout".to_string(),
            self.spec.election_ms.to_string(),
        ];
        if let Some(count) = self.spec.snapshot_count {
            args.push("--snapshot-count".to_string());
            args.push(count.to_string());
        }
        args.extend(self.spec.extra_args.iter().cloned());
        args
    }

    /// Starts member `i`'s process, with `extra_args` after the usual flags, and
    /// registers its pid with every proxy.
    fn spawn(&self, i: usize, extra_args: &[&str]) -> anyhow::Result<u32> {
        let mut args = self.args(i);
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let member = self.member(i);
        let mut process = member.lock();
        ensure!(!process.running(), "member {i} is running already");
        process.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log_path)
            .with_context(|| format!("open {}", member.log_path.display()))?;
        writeln!(
            log,
            "=== retcd-testkit: start {} of {}: {} {}",
            process.starts,
            member.name,
            self.spec.binary.display(),
            args.join(" ")
        )?;
        let stderr = log.try_clone()?;
        let child = Command::new(&self.spec.binary)
            .args(&args)
            .envs(self.spec.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawn {} for {}", self.spec.binary.display(), member.name))?;
        let pid = child.id();
        process.child = Some(child);
        drop(process);
        for other in &self.members {
            if let Some(proxy) = &other.proxy {
                proxy.register_source(i, pid);
            }
        }
        Ok(pid)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "retcd-testkit: cluster in {} at the panic:\n{}",
                self.root.path().display(),
                self.log_tails()
            );
        }
        for member in &self.members {
            let mut process = member.lock();
            if let Some(mut child) = process.child.take() {
                // SIGKILL ends a stopped process too.
                let _ = child.kill();
                process.last_exit = child.wait().ok();
            }
        }
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("binary", &self.spec.binary)
            .field("root", &self.root.path())
            .field("client_endpoints", &self.client_endpoints())
            .finish_non_exhaustive()
    }
}

fn new_member(
    root: &Path,
    name: String,
    client_port: u16,
    peer_port: u16,
    proxied: bool,
    peer_scheme: &'static str,
    initial_state: InitialState,
) -> anyhow::Result<Member> {
    let proxy = if proxied {
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, peer_port));
        Some(Proxy::start(target).context("start a peer proxy")?)
    } else {
        None
    };
    Ok(Member {
        data_dir: root.join(format!("{name}.etcd")),
        log_path: root.join(format!("{name}.log")),
        name,
        client_port,
        peer_port,
        proxy,
        peer_scheme,
        initial_cluster: String::new(),
        initial_state,
        process: Mutex::new(Process::default()),
    })
}

/// `n` distinct ports that were free a moment ago. All are held at once while picking, so
/// they differ from each other; another process may still take one before the member
/// binds it, which [`Cluster::start`] survives by starting again.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    // Below Linux's ephemeral range (32768-60999 by default): a port the OS hands out
    // for port 0 is also what it hands to the next outgoing connection, and the many
    // client and proxy connections of a fault test took such a port between our check
    // and the member's bind (seen in a soak run). Ports here are only ours to race for.
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = u64::from(std::process::id()) << 20
        ^ NEXT.fetch_add(1, Ordering::Relaxed)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = retcd_prng::SplitMix64::new(seed);
    let mut ports = Vec::with_capacity(n);
    let mut held = Vec::with_capacity(n);
    for _ in 0..10_000 {
        if ports.len() == n {
            return Ok(ports);
        }
        let port = 20_000 + rng.below(12_000) as u16;
        if ports.contains(&port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            ports.push(port);
            held.push(l);
        }
    }
    bail!("no {n} free ports found in 20000-31999")
}

/// `kill -<signal> <pid>`.
fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .context("run kill")?;
    ensure!(status.success(), "kill -{signal} {pid} failed: {status}");
    Ok(())
}

/// The state letter in `/proc/<pid>/stat` (`R`, `S`, `T`, ...).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": comm may hold anything, so look after its last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.trim_start().chars().next()
}

fn wait_state(pid: u32, ready: impl Fn(char) -> bool, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        match process_state(pid) {
            Some(state) if ready(state) => return Ok(()),
            Some(_) => {}
            None => bail!("process {pid} is gone, expected it {what}"),
        }
        if Instant::now() >= deadline {
            bail!("process {pid} was not {what} within {EXIT_TIMEOUT:?}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// One `GET /health` to 127.0.0.1:`port`: true on 200 with `"health":"true"`.
fn health(port: u16) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut s = TcpStream::connect_timeout(&addr, HEALTH_REQUEST_TIMEOUT)?;
        s.set_read_timeout(Some(HEALTH_REQUEST_TIMEOUT))?;
        s.set_write_timeout(Some(HEALTH_REQUEST_TIMEOUT))?;
        write!(
            s,
            "GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let raw = String::from_utf8_lossy(&raw);
        let status_ok = raw
            .lines()
            .next()
            .and_then(|line| line.split_whitespace().nth(1))
            == Some("200");
        let compact: String = raw.chars().filter(|c| !c.is_whitespace()).collect();
        Ok(status_ok && compact.contains(r#""health":"true""#))
    };
    attempt().unwrap_or(false)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_builder_and_flags() {
        let spec = ClusterSpec::new("/bin/true")
            .size(5)
            .heartbeat_ms(50)
            .election_ms(500)
            .snapshot_count(100)
            .proxied_peers(true)
            .extra_arg("--quota-backend-bytes=1000000")
            .token("t");
        assert_eq!(spec.size, 5);
        assert_eq!(spec.snapshot_count, Some(100));
        assert!(spec.proxied_peers);
        assert_eq!(spec.extra_args, vec!["--quota-backend-bytes=1000000"]);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }

    #[test]
    fn reads_its_own_process_state() {
        let state = process_state(std::process::id()).expect("our own stat");
        assert!(matches!(state, 'R' | 'S' | 'D'), "{state}");
    }

    #[test]
    fn a_missing_binary_is_an_error_not_a_hang() {
        let err = Cluster::start(ClusterSpec::new("/nonexistent/retcd")).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err:#}");
    }

    #[test]
    fn a_member_that_exits_fails_the_start_with_its_log() {
        // `false` exits at once: the start must fail fast, quoting the logs.
        let Some(binary) = ["/bin/false", "/usr/bin/false"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
        else {
            eprintln!("skipping: no `false` binary");
            return;
        };
        let err = Cluster::start(ClusterSpec::new(binary).size(2).proxied_peers(true)).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("exited"), "{msg}");
        assert!(msg.contains("retcd-testkit: start 1 of m0"), "{msg}");
    }
}
