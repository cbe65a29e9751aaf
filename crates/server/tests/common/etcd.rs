//! A real etcd (Debian's `etcd-server`, 3.4) for differential tests. Its binary comes from
//! `retcd_testkit::etcd_bin::etcd` (which skips or, under `CI=true`, fails without one).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{DEADLINE, Retcd, free_port, http_get};

/// A real etcd, killed on drop.
pub struct Etcd {
    child: Child,
    pub port: u16,
}

impl Etcd {
    /// Starts `binary` as a single-member cluster named `name` with its data under `dir`,
    /// on a fresh client port; returns once `/health` answers 200.
    pub fn start(binary: &Path, dir: &Path, name: &str, peer_url: &str) -> Etcd {
        let port = free_port();
        let client = format!("http://127.0.0.1:{port}");
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
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

/// An etcd and a retcd, each a single member, started with the same name (`diff`), peer
/// URL and (default) cluster token, so their member and cluster ids (derived from those) agree and
/// whole `-w json` outputs compare. retcd does not listen on the peer URL; it only derives
/// its id from it. Both keep their data under `dir`.
pub fn twins(etcd_binary: &Path, dir: &Path) -> (Etcd, Retcd) {
    let peer_url = format!("http://127.0.0.1:{}", free_port());
    let etcd = Etcd::start(etcd_binary, dir, "diff", &peer_url);
    let ids = [
        "--name",
        "diff",
        "--initial-advertise-peer-urls",
        &peer_url,
        "--initial-cluster",
        &format!("diff={peer_url}"),
    ];
    let retcd = Retcd::start(&dir.join("retcd-data"), &ids);
    (etcd, retcd)
}
