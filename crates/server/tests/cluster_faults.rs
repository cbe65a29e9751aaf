//! Seeded fault runs against a three-member retcd cluster (issue 4, acceptance 2).
//!
//! Each run starts a fresh cluster with a fault-injecting proxy on every peer link, puts a
//! recorded load on it (six clients, one member each, put/get/delete/compare-and-set on
//! four keys), injects one fault chosen by the seed, heals it, and then checks:
//! - the cluster takes a write within 10 s of the healing;
//! - the recorded history, ending with a linearizable read of every key on every member,
//!   is linearizable (so no acknowledged write is lost and no stale value is read);
//! - every member reports the same HashKV at the same revision;
//! - watchers on every member (the whole key space from revision 1 with prev_kv, and a
//!   narrower one with a filter), reconnecting and resuming through the fault, received
//!   what etcd guarantees (ordered, unique, no gaps, whole revisions, correct prev_kv and
//!   creates, progress never ahead: `retcd_testkit::watch_checker`) against the full
//!   history read at the end, and that history holds every acknowledged write.
//!
//! Faults: leader SIGKILL (restarted at heal), follower SIGKILL and restart, leader
//! SIGSTOP longer than the election timeout, a partition isolating the leader, delay and
//! loss on every peer link, and a member added and removed under load.
//!
//! `RETCD_FAULT_RUNS` (default 24) runs with consecutive seeds from `RETCD_FAULT_SEED`
//! (default: from the clock); the fault is `seed % 6`, so a failing seed replays alone with
//! `RETCD_FAULT_SEED=<seed> RETCD_FAULT_RUNS=1`. Histories of failed runs are written
//! next to the test binary. `fault_runs_with_peer_mtls` repeats the runs
//! (`RETCD_FAULT_TLS_RUNS`, default 3) with `https://` peer URLs and mutual TLS between
//! members (issue 14). `fault_runs_with_auth` (`RETCD_FAULT_AUTH_RUNS`, default 3) repeats
//! them with auth on (issue 15): the workload logs in as a user whose role may read and
//! write the workload's keys alone, the watchers of the whole key space and the harness
//! as root, so every request passes the permission checks, and tokens go stale as
//! members die and restart (the clients log in again).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use common::{blocking, env_u64};
use retcd_prng::SplitMix64;
use retcd_testkit::cluster::{Cluster, ClusterSpec};
use retcd_testkit::history::Recorder;
use retcd_testkit::history::{Input, Outcome, Output};
use retcd_testkit::linearizability::{self, Budget, State};
use retcd_testkit::pki::{Ca, Leaf};
use retcd_testkit::watch_checker::{self, EventKind};
use retcd_testkit::watch_recorder::{self, Finish, WatchSpec};

const MEMBERS: usize = 3;
const CLIENTS: usize = 6;
const KEYS: u64 = 4;
const HEARTBEAT_MS: u64 = 50;
const ELECTION_MS: u64 = 500;
/// The cluster must take a write again within this long after a fault heals.
const RECOVERY_LIMIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    LeaderKill,
    FollowerKillRestart,
    LeaderPause,
    LeaderIsolation,
    DelayAndLoss,
    MemberAddRemove,
}

const FAULTS: [Fault; 6] = [
    Fault::LeaderKill,
    Fault::FollowerKillRestart,
    Fault::LeaderPause,
    Fault::LeaderIsolation,
    Fault::DelayAndLoss,
    Fault::MemberAddRemove,
];

/// What a series of runs adds to the plain cluster.
#[derive(Clone, Debug)]
enum Mode {
    Plain,
    /// Mutual TLS on every peer link, with these flags.
    PeerTls(Vec<String>),
    /// Auth on, simple tokens.
    Auth,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_runs_stay_linearizable() {
    let runs = env_u64("RETCD_FAULT_RUNS").unwrap_or(24);
    fault_runs(runs, Mode::Plain).await;
}

// Goal: issue 14, acceptance 2. The same fault runs with mutual TLS on every peer link
// (peer certificates verified both ways, client certificates' SANs checked against the
// connecting address: the proxies connect from 127.0.0.1, which the certificates name).
// `RETCD_FAULT_TLS_RUNS` (default 3) runs; seeds as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_runs_with_peer_mtls() {
    let runs = env_u64("RETCD_FAULT_TLS_RUNS").unwrap_or(3);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut ca = Ca::new(dir.path(), "peer-ca");
    let (pair, _) = ca.issue("peer", &Leaf::default());
    let tls = vec![
        "--peer-cert-file".to_string(),
        pair.cert().to_string(),
        "--peer-key-file".to_string(),
        pair.key().to_string(),
        "--peer-trusted-ca-file".to_string(),
        ca.cert().to_string(),
        "--peer-client-cert-auth".to_string(),
    ];
    fault_runs(runs, Mode::PeerTls(tls)).await;
}

// Goal: issue 15, acceptance 5. The same fault runs with auth on: every request carries a
// token and passes the permission checks, the workload's user may touch its keys alone,
// and tokens lost with a killed member are replaced by logging in again.
// `RETCD_FAULT_AUTH_RUNS` (default 3) runs; seeds as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_runs_with_auth() {
    let runs = env_u64("RETCD_FAULT_AUTH_RUNS").unwrap_or(3);
    fault_runs(runs, Mode::Auth).await;
}

async fn fault_runs(runs: u64, mode: Mode) {
    let first = env_u64("RETCD_FAULT_SEED").unwrap_or_else(|| {
        let random = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64
            % 1_000_000_000;
        // The peer-mTLS and auth runs start at a leader kill (then a follower kill and
        // restart, a leader pause, ...): TLS reconnection and tokens lost with a member
        // after a kill are what they are for.
        match mode {
            Mode::Plain => random,
            Mode::PeerTls(_) | Mode::Auth => random - random % FAULTS.len() as u64,
        }
    });
    let test = match mode {
        Mode::Plain => "fault_runs_stay_linearizable",
        Mode::PeerTls(_) => "fault_runs_with_peer_mtls",
        Mode::Auth => "fault_runs_with_auth",
    };
    eprintln!("{test}: {runs} runs from seed {first}");
    for seed in first..first + runs {
        let fault = FAULTS[(seed % FAULTS.len() as u64) as usize];
        let started = Instant::now();
        match run(seed, fault, &mode).await {
            Ok(report) => {
                eprintln!(
                    "seed {seed} {fault:?}: ok in {:.1} s ({report})",
                    started.elapsed().as_secs_f64()
                );
            }
            Err(e) => panic!(
                "seed {seed} {fault:?} failed: {e:#}\nreplay: RETCD_FAULT_SEED={seed} RETCD_FAULT_RUNS=1 RETCD_FAULT_TLS_RUNS=1 RETCD_FAULT_AUTH_RUNS=1 cargo test -p retcd-server --release --test cluster_faults {test}"
            ),
        }
    }
}

/// Where a failed run's history goes.
fn history_path(seed: u64) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.with_file_name(format!("cluster-faults-{seed}.history"))
}

/// The workload's user: read and write on the workload's keys (`k0`..) and the probe key.
const APP: (&str, &str) = ("app", "app-pw");
const ROOT: (&str, &str) = ("root", "root-pw");

/// Who a client of a run logs in as: nobody without auth.
#[derive(Clone, Copy, Debug)]
struct Logins {
    auth: bool,
}

impl Logins {
    fn login(self, who: (&str, &str)) -> Option<(String, String)> {
        self.auth.then(|| (who.0.to_string(), who.1.to_string()))
    }

    fn options(
        self,
        who: (&str, &str),
        options: etcd_client::ConnectOptions,
    ) -> etcd_client::ConnectOptions {
        match self.login(who) {
            Some((user, password)) => options.with_user(user, password),
            None => options,
        }
    }
}

/// Turns auth on: root, and `app` with its keys; then the harness's clients log in as root.
async fn enable_auth(cluster: &mut Cluster) -> anyhow::Result<()> {
    use etcd_client::Permission;
    let mut c = cluster.client(0).await?;
    c.user_add(ROOT.0, ROOT.1, None).await?;
    c.user_grant_role(ROOT.0, "root").await?;
    c.user_add(APP.0, APP.1, None).await?;
    c.role_add(APP.0).await?;
    c.role_grant_permission(APP.0, Permission::read_write("k").with_prefix())
        .await?;
    c.role_grant_permission(APP.0, Permission::read_write("probe"))
        .await?;
    c.user_grant_role(APP.0, APP.0).await?;
    c.auth_enable().await?;
    cluster.log_in_as(ROOT.0, ROOT.1);
    Ok(())
}

async fn run(seed: u64, fault: Fault, mode: &Mode) -> anyhow::Result<String> {
    let peer_tls = match mode {
        Mode::PeerTls(flags) => Some(flags.as_slice()),
        Mode::Plain | Mode::Auth => None,
    };
    let logins = Logins {
        auth: matches!(mode, Mode::Auth),
    };
    let mut rng = SplitMix64::new(seed);
    let mut spec = ClusterSpec::new(env!("CARGO_BIN_EXE_retcd"))
        .size(MEMBERS)
        .heartbeat_ms(HEARTBEAT_MS)
        .election_ms(ELECTION_MS)
        .proxied_peers(true)
        .peer_https(peer_tls.is_some())
        // The watch recorder pings every 500 ms to notice a dead connection at once;
        // under etcd's default minimum (5 s) the server cuts such clients off, as etcd.
        .extra_arg("--grpc-keepalive-min-time=250ms")
        .extra_arg("--log-level")
        .extra_arg("info");
    for arg in peer_tls.unwrap_or_default() {
        spec = spec.extra_arg(arg);
    }
    if logins.auth {
        // bcrypt's lowest cost: the runs are about tokens and checks, not hashing.
        spec = spec.extra_arg("--bcrypt-cost=4");
    }
    let mut cluster = blocking(|| Cluster::start(spec)).context("start the cluster")?;
    if logins.auth {
        enable_auth(&mut cluster).await.context("turn auth on")?;
    }
    match drive(seed, fault, &mut rng, &mut cluster, logins).await {
        Ok(report) => Ok(report),
        Err(e) => Err(e.context(format!("member logs:\n{}", cluster.log_tails()))),
    }
}

async fn drive(
    seed: u64,
    fault: Fault,
    rng: &mut SplitMix64,
    cluster: &mut Cluster,
    logins: Logins,
) -> anyhow::Result<String> {
    let recorder = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let finish = Finish::new();
    let watchers = start_watchers(cluster, rng, &finish, logins);
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let url = cluster.client_url(c % MEMBERS);
        let recorder = recorder.clone();
        let stop = stop.clone();
        let client_seed = rng.next_u64();
        clients.push(tokio::spawn(async move {
            client_loop(c, url, recorder, stop, client_seed, logins).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500 + rng.below(500))).await;

    // The fault, held for a seeded while, then healed.
    let hold = Duration::from_millis(1_000 + rng.below(1_500));
    let leader = cluster.leader(Duration::from_secs(10)).await?;
    let follower = (leader + 1 + rng.below(MEMBERS as u64 - 1) as usize) % MEMBERS;
    let mut removed = None;
    match fault {
        Fault::LeaderKill => {
            blocking(|| cluster.kill(leader))?;
            tokio::time::sleep(hold).await;
            blocking(|| cluster.restart(leader))?;
        }
        Fault::FollowerKillRestart => {
            blocking(|| cluster.kill(follower))?;
            tokio::time::sleep(hold).await;
            blocking(|| cluster.restart(follower))?;
        }
        Fault::LeaderPause => {
            blocking(|| cluster.stop(leader))?;
            tokio::time::sleep(hold.max(Duration::from_millis(2 * ELECTION_MS))).await;
            blocking(|| cluster.cont(leader))?;
        }
        Fault::LeaderIsolation => {
            blocking(|| cluster.isolate(leader))?;
            tokio::time::sleep(hold.max(Duration::from_millis(2 * ELECTION_MS))).await;
            blocking(|| cluster.heal())?;
        }
        Fault::DelayAndLoss => {
            for from in 0..MEMBERS {
                for to in (0..MEMBERS).filter(|&t| t != from) {
                    let (d, j, s) = (
                        Duration::from_millis(5 + rng.below(20)),
                        Duration::from_millis(10),
                        rng.next_u64(),
                    );
                    blocking(|| cluster.delay_with_jitter(from, to, d, j, s))?;
                    let p = 0.005 + rng.below(20) as f64 / 1000.0;
                    let s = rng.next_u64();
                    blocking(|| cluster.loss(from, to, p, s))?;
                }
            }
            tokio::time::sleep(hold).await;
            blocking(|| cluster.heal())?;
        }
        Fault::MemberAddRemove => {
            let index = add_member(cluster).await?;
            removed = Some(index);
            let mut client = cluster.client(leader).await?;
            let id = member_id_of(&mut client, &cluster.peer_url(index)).await?;
            common::when_healthy(|| {
                let mut client = client.clone();
                async move { client.member_remove(id).await }
            })
            .await
            .context("remove the added member")?;
            // The removed member stops by itself.
            let deadline = Instant::now() + Duration::from_secs(10);
            while cluster.is_running(index) {
                ensure!(Instant::now() < deadline, "the removed member did not stop");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let healed = Instant::now();

    // Recovery: a write through any member within the limit.
    let recovery = wait_for_write(cluster, &recorder, healed, logins).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    for c in clients {
        tokio::time::timeout(Duration::from_secs(15), c)
            .await
            .context("a client did not stop")???;
    }
    let members: Vec<usize> = (0..cluster.size())
        .filter(|&i| Some(i) != removed)
        .collect();
    blocking(|| cluster.wait_healthy_all_of(&members, Duration::from_secs(20)))?;

    // Final reads: every key on every member, recorded, so a lost write shows up as a
    // linearizability violation.
    for &m in &members {
        let mut kv = cluster.client(m).await?.kv_client();
        for k in 0..KEYS {
            let key = format!("k{k}");
            let mut tries = 0;
            while let Err(e) = recorder.get(&mut kv, 100 + m, &key).await {
                tries += 1;
                ensure!(tries < 20, "final read of {key} on member {m}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let (hashes, final_rev) = hash_kv_all(cluster, &members).await?;

    // Watchers finish once they have seen the final revision.
    finish.at(final_rev);
    let mut recorded = Vec::new();
    for w in watchers {
        recorded.push(w.await.context("a watcher panicked")?);
    }
    let truth = full_history(cluster, members[0], final_rev, logins).await?;

    let history = recorder.history();
    let budget = Budget {
        time_limit: Some(Duration::from_secs(60)),
        ..Budget::default()
    };
    let verdict = linearizability::check(&history, &State::new(), &budget);
    if !verdict.is_linearizable() {
        let path = history_path(seed);
        let _ = history.write_to_file(&path);
        bail!(
            "history of {} operations is not shown linearizable: {verdict}\nhistory: {}",
            history.len(),
            path.display()
        );
    }
    let writes_missing = acknowledged_writes_missing(&history, &truth);
    ensure!(
        writes_missing.is_empty(),
        "acknowledged writes missing from the watched history: {writes_missing:?}"
    );
    let report = watch_checker::check(&truth, &recorded);
    for w in &recorded {
        let seen = w.sessions.iter().flat_map(|s| &s.responses).any(|r| {
            matches!(
                r,
                watch_checker::Response::Events { .. } | watch_checker::Response::Progress { .. }
            )
        });
        ensure!(seen, "watcher {} never received anything", w.name);
    }
    ensure!(report.is_ok(), "watch guarantees violated: {report}");
    Ok(format!(
        "{}, write {} ms after healing, hashkv {hashes:x}, watch: {} sessions, {} events, {} progress, 0 violations",
        history.summary(),
        recovery.as_millis(),
        report.sessions,
        report.events,
        report.progress,
    ))
}

/// One client: a seeded mix of operations against one member until told to stop.
async fn client_loop(
    c: usize,
    url: String,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
    seed: u64,
    logins: Logins,
) -> anyhow::Result<()> {
    let mut rng = SplitMix64::new(seed);
    let options = logins.options(
        APP,
        etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(3)),
    );
    let mut kv = loop {
        match etcd_client::Client::connect([url.as_str()], Some(options.clone())).await {
            Ok(client) => break client.kv_client(),
            Err(_) if !stop.load(Ordering::Acquire) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        let key = format!("k{}", rng.below(KEYS));
        let value = format!("c{c}-{n}");
        let outcome = match rng.below(10) {
            0..=3 => recorder.get(&mut kv, c, &key).await.map(drop),
            4..=6 => recorder.put(&mut kv, c, &key, &value).await.map(drop),
            7 => recorder.delete(&mut kv, c, &key).await.map(drop),
            _ => {
                let expected = format!("c{}-{}", rng.below(CLIENTS as u64), rng.below(n) + 1);
                let expected = if rng.chance(1, 4) {
                    None
                } else {
                    Some(expected.as_bytes().to_vec())
                };
                recorder
                    .cas(&mut kv, c, &key, expected.as_deref(), &value)
                    .await
                    .map(drop)
            }
        };
        if outcome.is_err() {
            // Errors are recorded; back off a little so a dead member is not hammered.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Adds a member under load: MemberAdd through the leader, then start it and wait until
/// it is healthy. Returns its index.
async fn add_member(cluster: &mut Cluster) -> anyhow::Result<usize> {
    let leader = cluster.leader(Duration::from_secs(10)).await?;
    let (peer_url, index) = cluster.add_member("added")?;
    let client = cluster.client(leader).await?;
    // Refused until the leader's peers have been connected 5 s (--strict-reconfig-check).
    let resp = common::when_healthy(|| {
        let mut client = client.clone();
        let url = peer_url.clone();
        async move { client.member_add([url], None).await }
    })
    .await
    .context("member add")?;
    let mut initial: Vec<String> = Vec::new();
    for m in resp.member_list() {
        let name = if m.peer_urls().contains(&peer_url) {
            cluster.name(index).to_string()
        } else {
            m.name().to_string()
        };
        for u in m.peer_urls() {
            initial.push(format!("{name}={u}"));
        }
    }
    let initial = initial.join(",");
    blocking(|| cluster.start_added(index, &initial))?;
    blocking(|| cluster.wait_healthy(index))?;
    Ok(index)
}

async fn member_id_of(client: &mut etcd_client::Client, peer_url: &str) -> anyhow::Result<u64> {
    let list = client.member_list().await?;
    list.members()
        .iter()
        .find(|m| m.peer_urls().iter().any(|u| u == peer_url))
        .map(|m| m.id())
        .context("the added member is not listed")
}

/// Puts a probe key through each member in turn until one succeeds; fails past the limit.
/// The probes are recorded too: every write must be in the history.
async fn wait_for_write(
    cluster: &Cluster,
    recorder: &Recorder,
    healed: Instant,
    logins: Logins,
) -> anyhow::Result<Duration> {
    let options = logins.options(
        APP,
        etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(Duration::from_millis(1_000)),
    );
    let mut last = String::new();
    for attempt in 0.. {
        let elapsed = healed.elapsed();
        if elapsed > RECOVERY_LIMIT {
            bail!("no write succeeded within {RECOVERY_LIMIT:?} of healing: {last}");
        }
        let m = attempt % cluster.size();
        if !cluster.is_running(m) {
            continue;
        }
        let url = cluster.client_url(m);
        match etcd_client::Client::connect([url.as_str()], Some(options.clone())).await {
            Ok(c) => match recorder
                .put(&mut c.kv_client(), 99, "probe", format!("p{attempt}"))
                .await
            {
                Ok(_) => return Ok(healed.elapsed()),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unreachable!()
}

/// The recording watchers of a run: per member, one on every key from revision 1 with
/// prev_kv and progress notifications; and one on k1..k3 without deletes, on a seeded
/// member.
fn start_watchers(
    cluster: &Cluster,
    rng: &mut SplitMix64,
    finish: &Finish,
    logins: Logins,
) -> Vec<tokio::task::JoinHandle<watch_checker::Watcher>> {
    let mut specs = Vec::new();
    for m in 0..MEMBERS {
        specs.push((
            m,
            WatchSpec {
                name: format!("all@{m}"),
                key: vec![0],
                range_end: vec![0],
                start_revision: 1,
                prev_kv: true,
                filter_put: false,
                filter_delete: false,
                progress_notify: true,
                user: logins.login(ROOT),
            },
        ));
    }
    let m = rng.below(MEMBERS as u64) as usize;
    specs.push((
        m,
        WatchSpec {
            name: format!("k1-k3-nodelete@{m}"),
            key: b"k1".to_vec(),
            range_end: b"k3".to_vec(),
            start_revision: 1,
            prev_kv: false,
            filter_put: false,
            filter_delete: true,
            progress_notify: false,
            user: logins.login(APP),
        },
    ));
    specs
        .into_iter()
        .map(|(m, spec)| {
            let url = cluster.client_url(m);
            tokio::spawn(watch_recorder::record(
                spec,
                url,
                finish.clone(),
                WATCH_LIMIT,
            ))
        })
        .collect()
}

/// Bound on one watcher's life in a run.
const WATCH_LIMIT: Duration = Duration::from_secs(90);

/// Every change up to `last`, by a fresh watch from revision 1 on member `m`.
async fn full_history(
    cluster: &Cluster,
    m: usize,
    last: i64,
    logins: Logins,
) -> anyhow::Result<Vec<watch_checker::Event>> {
    let finish = Finish::new();
    finish.at(last);
    let spec = WatchSpec {
        name: "truth".into(),
        key: vec![0],
        range_end: vec![0],
        start_revision: 1,
        prev_kv: true,
        filter_put: false,
        filter_delete: false,
        progress_notify: false,
        user: logins.login(ROOT),
    };
    let w =
        watch_recorder::record(spec, cluster.client_url(m), finish, Duration::from_secs(20)).await;
    let events: Vec<watch_checker::Event> = w
        .sessions
        .iter()
        .flat_map(|s| &s.responses)
        .filter_map(|r| match r {
            watch_checker::Response::Events { events, .. } => Some(events.clone()),
            _ => None,
        })
        .flatten()
        .filter(|e| e.kv.mod_revision <= last)
        .collect();
    ensure!(
        events.last().is_some_and(|e| e.kv.mod_revision == last),
        "the full history from member {m} ends at {:?}, not at {last}",
        events.last().map(|e| e.kv.mod_revision)
    );
    let broken = watch_checker::check_truth(&events);
    ensure!(
        broken.is_empty(),
        "the full history is inconsistent: {broken:?}"
    );
    Ok(events)
}

/// Acknowledged writes that changed the store but are not in `truth` at their revision.
fn acknowledged_writes_missing(
    history: &retcd_testkit::history::History,
    truth: &[watch_checker::Event],
) -> Vec<String> {
    let mut missing = Vec::new();
    for op in &history.operations {
        let Outcome::Ok { output, .. } = &op.outcome else {
            continue;
        };
        if !output.is_effective_write() {
            continue;
        }
        let rev = output.revision();
        let (kind, value) = match (&op.input, output) {
            (Input::Put { value, .. }, Output::Put { .. }) => (EventKind::Put, Some(value)),
            (Input::Cas { new_value, .. }, Output::Cas { .. }) => (EventKind::Put, Some(new_value)),
            (Input::Delete { .. }, Output::Delete { .. }) => (EventKind::Delete, None),
            _ => continue,
        };
        let found = truth.iter().any(|e| {
            e.kv.mod_revision == rev
                && e.kind == kind
                && e.kv.key == op.input.key()
                && value.is_none_or(|v| &e.kv.value == v)
        });
        if !found {
            missing.push(format!("{:?} at revision {rev}", op.input));
        }
    }
    missing
}

/// HashKV of every member at the same revision (the highest any member reports), retried
/// until each has applied it. Returns the hash and that revision.
async fn hash_kv_all(cluster: &Cluster, members: &[usize]) -> anyhow::Result<(u32, i64)> {
    let mut revision = 0;
    for &m in members {
        let mut c = cluster.client(m).await?;
        let r = c
            .get(
                "k0",
                Some(etcd_client::GetOptions::new().with_serializable()),
            )
            .await?;
        revision = revision.max(r.header().map_or(0, |h| h.revision()));
    }
    let mut hashes = Vec::new();
    for &m in members {
        let mut c = cluster.client(m).await?;
        let mut tries = 0;
        let h = loop {
            match c.hash_kv(revision).await {
                Ok(h) => break h.hash(),
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => bail!("hashkv on member {m}: {e}"),
            }
        };
        hashes.push(h);
    }
    ensure!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "HashKV at revision {revision} differs between members: {hashes:x?}"
    );
    Ok((hashes[0], revision))
}
