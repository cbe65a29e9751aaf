//! A real etcd (Debian's `etcd-server`, 3.4) for differential tests. Its binary comes from
//! `retcd_testkit::etcd_bin::etcd` (which skips or, under `CI=true`, fails without one).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{DEADLINE, Retcd, free_port, http_get};

/// Tries of [`twins_with`]'s retcd when a port it picked was taken meanwhile.
const START_ATTEMPTS: u32 = 5;

/// A real etcd, killed on drop.
pub struct Etcd {
    child: Child,
    pub port: u16,
    /// Where `/health` and `/metrics` answer in plaintext: the client port, or for an
    /// `https` client URL a `--listen-metrics-urls` port of its own.
    pub health_port: u16,
}

impl Etcd {
    /// Starts `binary` as a single-member cluster named `name` with its data under `dir`,
    /// on a fresh client port; returns once `/health` answers 200.
    pub fn start(binary: &Path, dir: &Path, name: &str, peer_url: &str) -> Etcd {
        Self::start_with(binary, dir, name, peer_url, "http", &[])
    }

    /// [`Etcd::start`] with a client URL of scheme `scheme` (`http` or `https`) and `extra`
    /// flags (the TLS ones for `https`). An `https` member also gets a plaintext
    /// `--listen-metrics-urls`, where its readiness is polled ([`Etcd::health_port`]).
    pub fn start_with(
        binary: &Path,
        dir: &Path,
        name: &str,
        peer_url: &str,
        scheme: &str,
        extra: &[String],
    ) -> Etcd {
        let port = free_port();
        let client = format!("{scheme}://127.0.0.1:{port}");
        let mut flags = extra.to_vec();
        let health_port = if scheme == "http" {
            port
        } else {
            let metrics = free_port();
            flags.push(format!("--listen-metrics-urls=http://127.0.0.1:{metrics}"));
            metrics
        };
        let log = std::fs::File::create(dir.join("etcd.log")).expect("etcd log");
        let child = Command::new(binary)
            .args(["--name", name, "--data-dir"])
            .arg(dir.join("etcd-data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                peer_url,
                "--initial-advertise-peer-urls",
                peer_url,
            ])
            .args(["--initial-cluster", &format!("{name}={peer_url}")])
            .args(&flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        let etcd = Etcd {
            child,
            port,
            health_port,
        };
        let start = Instant::now();
        while !matches!(http_get(health_port, "/health"), Ok((200, _))) {
            assert!(
                start.elapsed() < DEADLINE,
                "etcd did not become healthy in time; log:\n{}",
                std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        etcd
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An etcd and a retcd, each a single member, started with the same name (`diff`), peer
/// URL and (default) cluster token, so their member and cluster ids (derived from those) agree and
/// whole `-w json` outputs compare. retcd does not listen on the peer URL; it only derives
/// its id from it. Both keep their data under `dir`.
pub fn twins(etcd_binary: &Path, dir: &Path) -> (Etcd, Retcd) {
    twins_with(etcd_binary, dir, "http", &[])
}

/// [`twins`] whose client URLs have the scheme `scheme` (`http` or `https`), both started
/// with the same `extra` flags (for `https`, the TLS ones: `common::tls::Pki::client_flags`).
/// With `https` each also gets a plaintext `--listen-metrics-urls` of its own, where its
/// readiness is polled (etcd's is [`Etcd::health_port`]).
pub fn twins_with(etcd_binary: &Path, dir: &Path, scheme: &str, extra: &[String]) -> (Etcd, Retcd) {
    let peer_url = format!("http://127.0.0.1:{}", free_port());
    let etcd = Etcd::start_with(etcd_binary, dir, "diff", &peer_url, scheme, extra);
    (etcd, twin_retcd(dir, &peer_url, scheme, extra))
}

/// The retcd half of [`twins_with`]: a single member named `diff` whose peer URL is
/// `peer_url`, with its data under `dir` (for tests that also run without etcd).
pub fn twin_retcd(dir: &Path, peer_url: &str, scheme: &str, extra: &[String]) -> Retcd {
    let mut flags: Vec<String> = [
        "--name",
        "diff",
        "--initial-advertise-peer-urls",
        peer_url,
        "--initial-cluster",
        &format!("diff={peer_url}"),
    ]
    .map(String::from)
    .to_vec();
    flags.extend_from_slice(extra);
    let data = dir.join("retcd-data");
    if scheme == "http" {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        return Retcd::start(&data, &flags);
    }
    let mut attempt = 1;
    loop {
        if let Some(retcd) = start_retcd(&data, scheme, &flags) {
            return retcd;
        }
        assert!(
            attempt < START_ATTEMPTS,
            "retcd's ports were taken {attempt} times"
        );
        eprintln!("a port was taken under us (attempt {attempt}); starting again");
        attempt += 1;
    }
}

/// Starts retcd with a `scheme` client URL on a fresh port and a plaintext metrics URL,
/// and polls `/health` on the latter until it answers 200: the server, or `None` when a
/// port was taken before it bound it. Panics with its log if it is not healthy in time.
fn start_retcd(data: &Path, scheme: &str, flags: &[String]) -> Option<Retcd> {
    let (port, metrics) = (free_port(), free_port());
    let url = format!("{scheme}://127.0.0.1:{port}");
    let mut flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let metrics_flag = format!("--listen-metrics-urls=http://127.0.0.1:{metrics}");
    flags.push(&metrics_flag);
    let retcd = Retcd::spawn_with(
        data,
        port,
        &flags,
        &[
            ("ETCD_LISTEN_CLIENT_URLS", url.clone()),
            ("ETCD_ADVERTISE_CLIENT_URLS", url),
        ],
    );
    let start = Instant::now();
    while !matches!(http_get(metrics, "/health"), Ok((200, _))) {
        let log = retcd.log();
        if log.contains("Address already in use") {
            return None;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "retcd did not become healthy in time; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(retcd)
}
