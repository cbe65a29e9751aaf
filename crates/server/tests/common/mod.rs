//! The server tests' shared helpers, one copy each. Here: the real `retcd` binary for
//! tests (free ports on 127.0.0.1, a temporary data directory, readiness by polling
//! `/health` with a deadline, and a guard that kills the process when dropped), HTTP GET
//! and `/metrics` samples, and small helpers of async and seeded tests. In submodules:
//! a real etcd ([`etcd`]) and etcd's CLI ([`etcdctl`]) for the differential tests, a
//! server's keys and leases read whole for comparison ([`store`]), and an HTTP/1.1 client
//! for the JSON gateway ([`gateway`]).

#![allow(dead_code)]

pub mod etcd;
pub mod etcdctl;
pub mod gateway;
pub mod store;
pub mod tls;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to become healthy or to exit.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A port nobody listens on right now, below the OS's ephemeral range so that no
/// outgoing connection takes it before the server binds it (`retcd_testkit::free_ports`).
pub fn free_port() -> u16 {
    retcd_testkit::cluster::free_ports(1).expect("a free port")[0]
}

/// Tries of [`Retcd::try_start`] when a port it picked was taken meanwhile.
const START_ATTEMPTS: u32 = 5;

/// A running `retcd` process; killed on drop.
pub struct Retcd {
    child: Option<Child>,
    pub port: u16,
    pub data_dir: PathBuf,
    log: PathBuf,
}

impl Retcd {
    /// Starts a server with its data in `data_dir` on a fresh port, with `extra` flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Retcd {
        Self::try_start(data_dir, extra).unwrap_or_else(|refusal| {
            panic!(
                "retcd exited with {:?} instead of starting; log:\n{}",
                refusal.status, refusal.log
            )
        })
    }

    /// Starts a server on `port`, with extra flags and environment variables.
    pub fn start_with(data_dir: &Path, port: u16, extra: &[&str], env: &[(&str, String)]) -> Retcd {
        let server = Self::spawn_with(data_dir, port, extra, env);
        server.wait_healthy();
        server
    }

    /// Starts a server on a fresh port without waiting for it to become healthy.
    pub fn spawn(data_dir: &Path, extra: &[&str]) -> Retcd {
        Self::spawn_with(data_dir, free_port(), extra, &[])
    }

    /// Starts a server on a fresh port and waits until it is healthy or has exited,
    /// whichever comes first: a refusal to start is an answer, not a test failure.
    ///
    /// A port picked free can be taken before the server binds it (by another test's
    /// outgoing connection, say): a start that fails only for that is tried again on
    /// fresh ports, up to [`START_ATTEMPTS`] times.
    pub fn try_start(data_dir: &Path, extra: &[&str]) -> Result<Retcd, Refusal> {
        let mut attempt = 1;
        loop {
            match Self::try_start_once(data_dir, extra) {
                Err(refusal) if refusal.port_taken() && attempt < START_ATTEMPTS => {
                    eprintln!("a port was taken under us (attempt {attempt}); starting again");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn try_start_once(data_dir: &Path, extra: &[&str]) -> Result<Retcd, Refusal> {
        let mut server = Self::spawn(data_dir, extra);
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = http_get(server.port, "/health") {
                return Ok(server);
            }
            let child = server.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                server.child = None;
                return Err(Refusal {
                    status,
                    log: server.log(),
                });
            }
            if start.elapsed() > DEADLINE {
                panic!(
                    "retcd neither became healthy nor exited in time; log:\n{}",
                    server.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Spawns the process on `port`; does not wait for anything.
    pub fn spawn_with(data_dir: &Path, port: u16, extra: &[&str], env: &[(&str, String)]) -> Retcd {
        let url = format!("http://127.0.0.1:{port}");
        let log = data_dir.with_extension(format!("{port}.log"));
        let log_file = std::fs::File::create(&log).expect("create the log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_retcd"));
        if env.iter().all(|(k, _)| *k != "ETCD_DATA_DIR") {
            cmd.arg("--data-dir").arg(data_dir);
        }
        if env.iter().all(|(k, _)| *k != "ETCD_LISTEN_CLIENT_URLS") {
            cmd.args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ]);
        }
        // Tests run in parallel: each member listens for peers on a free port (the
        // advertised peer URL, and so the member id, stays etcd's default).
        if env.iter().all(|(k, _)| *k != "ETCD_LISTEN_PEER_URLS")
            && !extra.iter().any(|a| a.contains("listen-peer-urls"))
        {
            cmd.args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", free_port()),
            ]);
        }
        cmd.args(extra)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = cmd.spawn().expect("spawn retcd");
        Retcd {
            child: Some(child),
            port,
            data_dir: data_dir.to_path_buf(),
            log,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Polls `/health` until it answers 200, or panics with the server's log.
    pub fn wait_healthy(&self) {
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = http_get(self.port, "/health") {
                return;
            }
            if start.elapsed() > DEADLINE {
                panic!("retcd did not become healthy in time; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
        self.wait_exit()
    }

    /// Kills the process with SIGKILL (no chance to flush anything) and reaps it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if start.elapsed() > DEADLINE {
                panic!("retcd did not exit in time; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint()], None)
            .await
            .expect("connect etcd-client")
    }

    /// Our own generated KV client, for requests the etcd-client crate cannot express.
    pub async fn raw_kv(
        &self,
    ) -> retcd_api::etcdserverpb::kv_client::KvClient<tonic::transport::Channel> {
        retcd_api::etcdserverpb::kv_client::KvClient::connect(self.endpoint())
            .await
            .expect("connect raw KV client")
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }
}

/// A server that exited before it became healthy.
#[derive(Debug)]
pub struct Refusal {
    pub status: ExitStatus,
    /// Everything it wrote to stderr.
    pub log: String,
}

impl Refusal {
    /// Whether it exited because a port it was to listen on was in use.
    pub fn port_taken(&self) -> bool {
        self.log.contains("Address already in use")
    }
}

impl Drop for Retcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A plain HTTP/1.1 GET: (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// The value of the sample `name` (one without labels) in the Prometheus text `text`.
pub fn metric_sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(name)).then(|| words.next()).flatten()
        })
        .and_then(|v| v.parse().ok())
}

/// The sample `name` from `/metrics` of the server (retcd or etcd) on `port`; `None` if it
/// does not answer 200 or has no such sample.
pub fn metric(port: u16, name: &str) -> Option<f64> {
    match http_get(port, "/metrics") {
        Ok((200, body)) => metric_sample(&body, name),
        _ => None,
    }
}

/// Runs a blocking call (the testkit's cluster start, kill, restart: they wait on
/// processes) inside an async test without stalling the runtime's other tasks. Needs the
/// multi-thread runtime (`#[tokio::test(flavor = "multi_thread")]`).
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The environment variable `name` as a number (a seed, a run count), `None` when unset.
/// Panics on anything else: a mistyped seed must not quietly run the default.
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|s| {
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={s:?} is not a number"))
    })
}

/// The gRPC status inside an etcd-client error.
pub fn status_of(e: etcd_client::Error) -> tonic::Status {
    match e {
        etcd_client::Error::GRpcStatus(s) => s,
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// Puts 64 KiB values under `big/` until the server refuses one (the tests that fill a
/// 4 MiB backend quota); returns how many went through and the refusal. Panics when
/// `max` puts all went through.
pub async fn put_until_refused(c: &mut etcd_client::Client, max: usize) -> (usize, tonic::Status) {
    let value = vec![b'v'; 64 * 1024];
    for i in 0..max {
        if let Err(e) = c.put(format!("big/{i:03}"), value.clone(), None).await {
            return (i, status_of(e));
        }
    }
    panic!("{max} puts of 64 KiB were never refused");
}

/// etcd's refusal of a membership change while the member has not been connected to its
/// peers for its 5 s health interval (`--strict-reconfig-check`), retcd's too.
pub const UNHEALTHY: &str = "etcdserver: unhealthy cluster";

/// Runs the membership change `f` again while it is refused with [`UNHEALTHY`], until
/// [`DEADLINE`]; any other answer is returned. Only that refusal is retried: nothing was
/// proposed, while a change that went through may not be repeatable.
pub async fn when_healthy<T, F, Fut>(mut f: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        match f().await {
            Err(etcd_client::Error::GRpcStatus(s))
                if s.message() == UNHEALTHY && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}
