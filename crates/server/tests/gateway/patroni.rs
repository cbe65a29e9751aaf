//! Patroni (PostgreSQL high availability) on retcd (issue 17, acceptance 2). Patroni's
//! `etcd3:` store speaks only the JSON gateway: member list, range, txn, lease grant
//! and keep-alive, and a streamed watch. Two Patroni nodes, each with its own PostgreSQL,
//! share one retcd member: the first bootstraps a primary and takes the leader key, the
//! second becomes a streaming replica, and when the primary's Patroni is stopped the
//! replica takes the key and is promoted.
//!
//! Needs Patroni with its etcd3 extra and PostgreSQL's server binaries: `.ci/run`
//! installs Debian's `postgresql` and `patroni[etcd3]` from PyPI into a virtual
//! environment, and names its `patroni` in `RETCD_TEST_PATRONI`. Without them the test
//! prints `skipping: <why>` and passes, under `CI=true` too when `.ci/run` could not
//! install them (it prints why); with `RETCD_TEST_PATRONI` set, a missing piece fails.
//! PostgreSQL refuses to run as root: as root, Patroni runs as the `postgres` user
//! (`setpriv`), with its directories given to that user.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Retcd, free_port, http_get};

const SCOPE: &str = "retcd-test";
/// Failover takes the lease's TTL at worst (Patroni's ttl 10 s: a lease of 20 s).
const LIMIT: Duration = Duration::from_secs(90);

/// What the test needs, or why it cannot run.
struct Setup {
    patroni: PathBuf,
    pg_bin: PathBuf,
    /// (uid, gid) to run as, when the test runs as root.
    run_as: Option<(u32, u32)>,
}

fn find() -> Result<Setup, String> {
    let patroni = std::env::var_os("RETCD_TEST_PATRONI")
        .map(PathBuf::from)
        .ok_or("RETCD_TEST_PATRONI is not set (.ci/run installs Patroni and sets it)")?;
    if !patroni.exists() {
        return Err(format!("{} does not exist", patroni.display()));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            format!("no PostgreSQL under /usr/lib/postgresql ({e}): apt-get install postgresql")
        })?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists() && bin.join("postgres").exists())
        .collect();
    versions.sort();
    let pg_bin = versions
        .pop()
        .ok_or("no PostgreSQL server binaries (initdb, postgres): apt-get install postgresql")?;
    let run_as = if is_root() {
        Some(postgres_user().ok_or("running as root and there is no postgres user")?)
    } else {
        None
    };
    Ok(Setup {
        patroni,
        pg_bin,
        run_as,
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The postgres user's uid and gid, from /etc/passwd.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"postgres") && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten()
    })
}

/// `program` run as `run_as` (uid, gid) when given. setpriv execs the program itself, so
/// a signal to the child reaches it (runuser would stand between them).
fn as_user(run_as: Option<(u32, u32)>, program: &Path) -> Command {
    match run_as {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.args([
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--init-groups".into(),
                "--".into(),
            ])
            .arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// One Patroni node (and the PostgreSQL it runs); stopped on drop.
struct Node {
    name: String,
    rest_port: u16,
    data_dir: PathBuf,
    pg_bin: PathBuf,
    run_as: Option<(u32, u32)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(setup: &Setup, dir: &Path, name: &str, etcd_port: u16) -> Node {
        let (rest_port, pg_port) = (free_port(), free_port());
        let data_dir = dir.join(name);
        let config = dir.join(format!("{name}.yml"));
        std::fs::write(
            &config,
            format!(
                "scope: {SCOPE}\nname: {name}\n\
                 restapi:\n  listen: 127.0.0.1:{rest_port}\n  connect_address: 127.0.0.1:{rest_port}\n\
                 etcd3:\n  hosts: 127.0.0.1:{etcd_port}\n  protocol: http\n\
                 bootstrap:\n  dcs:\n    ttl: 10\n    loop_wait: 1\n    retry_timeout: 5\n    maximum_lag_on_failover: 1048576\n\
                 \x20 initdb:\n  - encoding: UTF8\n  - auth: trust\n\
                 postgresql:\n  listen: 127.0.0.1:{pg_port}\n  connect_address: 127.0.0.1:{pg_port}\n\
                 \x20 data_dir: {data}\n  bin_dir: {bin}\n  pgpass: {dir}/{name}.pgpass\n\
                 \x20 authentication:\n    replication: {{username: replicator, password: rep-pass}}\n    superuser: {{username: postgres, password: pg-pass}}\n\
                 \x20 parameters:\n    unix_socket_directories: {dir}\n\
                 \x20 pg_hba:\n  - local all all trust\n  - host replication replicator 127.0.0.1/32 trust\n  - host all all 127.0.0.1/32 trust\n",
                data = data_dir.display(),
                bin = setup.pg_bin.display(),
                dir = dir.display(),
            ),
        )
        .expect("write the Patroni config");
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        if let Some((uid, gid)) = setup.run_as {
            for path in [&config, &log] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
            }
        }
        let child = as_user(setup.run_as, &setup.patroni)
            .arg(&config)
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start patroni");
        Node {
            name: name.to_string(),
            rest_port,
            data_dir,
            pg_bin: setup.pg_bin.clone(),
            run_as: setup.run_as,
            log,
            child: Some(child),
        }
    }

    /// Patroni's REST API: 200 on `/primary` for the primary, on `/replica` for a
    /// streaming replica.
    fn answers(&self, path: &str) -> bool {
        matches!(http_get(self.rest_port, path), Ok((200, _)))
    }

    /// Stops Patroni as an operator would (SIGTERM: it stops PostgreSQL, gives up the
    /// leader key, and exits).
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        // Patroni did not stop its PostgreSQL: stop it here.
        let _ = as_user(self.run_as, &self.pg_bin.join("pg_ctl"))
            .args(["stop", "-m", "immediate", "-D"])
            .arg(&self.data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {} (last lines) ---\n{}",
            self.name,
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `condition` every 200 ms until it holds or `LIMIT` passes.
fn wait_until(what: &str, nodes: &[&Node], mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !condition() {
        if Instant::now() > deadline {
            let logs: Vec<String> = nodes.iter().map(|n| n.log_tail()).collect();
            panic!("timed out waiting for {what}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The leader key's value (the node holding it), read through the gateway.
fn leader(port: u16) -> Option<String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.encode(format!("/service/{SCOPE}/leader"));
    let answer =
        crate::common::gateway::post(port, "/v3/kv/range", &format!(r#"{{"key":"{key}"}}"#));
    let value = answer.json()["kvs"][0]["value"].as_str()?.to_string();
    String::from_utf8(b64.decode(value).ok()?).ok()
}

// Goal: Patroni bootstraps a primary on retcd, adds a replica, and fails over to it when
// the primary's Patroni stops.
#[test]
fn patroni_bootstraps_and_fails_over() {
    let setup = match find() {
        Ok(setup) => setup,
        Err(why) if std::env::var_os("RETCD_TEST_PATRONI").is_some() => {
            panic!("RETCD_TEST_PATRONI is set but the test cannot run: {why}")
        }
        Err(why) => {
            eprintln!("skipping: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("patroni");
    std::fs::create_dir(&work).expect("mkdir");
    if let Some((uid, gid)) = setup.run_as {
        // The postgres user needs to reach its directory.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&work, Some(uid), Some(gid)).expect("chown");
    }
    let server = Retcd::start(&dir.path().join("retcd"), &[]);
    let port = server.port;

    let mut node1 = Node::start(&setup, &work, "node1", port);
    wait_until(
        "node1 to bootstrap a primary and take the leader key",
        &[&node1],
        || leader(port).as_deref() == Some("node1") && node1.answers("/primary"),
    );
    let node2 = Node::start(&setup, &work, "node2", port);
    wait_until(
        "node2 to become a streaming replica",
        &[&node1, &node2],
        || node2.answers("/replica"),
    );

    node1.stop();
    wait_until(
        "node2 to take the leader key and be promoted",
        &[&node1, &node2],
        || leader(port).as_deref() == Some("node2") && node2.answers("/primary"),
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
}
