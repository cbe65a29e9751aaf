//! A real etcd (Debian's `etcd-server`, 3.4) for differential tests.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{DEADLINE, free_port, http_get};

/// Whether `bin` runs: `etcd --version`, `etcdctl version` (etcdctl has no `--version`).
pub fn runs(bin: &str, args: &[&str]) -> bool {
    Command::new(bin)
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A real etcd, killed on drop.
pub struct Etcd {
    child: Child,
    pub port: u16,
}

impl Etcd {
    pub fn start(dir: &std::path::Path, name: &str, peer_url: &str) -> Etcd {
        let port = free_port();
        let client = format!("http://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("etcd.log")).expect("etcd log");
        let child = Command::new("etcd")
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        let etcd = Etcd { child, port };
        let start = Instant::now();
        while !matches!(http_get(port, "/health"), Ok((200, _))) {
            assert!(
                start.elapsed() < DEADLINE,
                "etcd did not become healthy in time"
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
