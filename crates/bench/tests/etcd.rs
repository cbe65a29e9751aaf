//! The workloads against a real etcd (`apt-get install etcd-server`). Without one the
//! test says so and returns, except under `CI=true`, where it fails
//! (`retcd_testkit::etcd_bin`).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use retcd_api::etcdserverpb::RangeRequest;
use retcd_api::etcdserverpb::kv_client::KvClient;

/// A port nothing listens on right now, below the OS's ephemeral range so that no
/// outgoing connection takes it before etcd binds it.
fn free_port() -> u16 {
    retcd_testkit::cluster::free_ports(1).expect("a free port")[0]
}

/// etcd refuses to start on architectures it does not support unless
/// ETCD_UNSUPPORTED_ARCH names the (Go) architecture.
fn unsupported_go_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" | "aarch64" | "powerpc64" | "s390x" => None,
        "x86" => Some("386"),
        "loongarch64" => Some("loong64"),
        other => Some(other),
    }
}

/// A single-member etcd in a temporary data dir, killed on drop (also
/// when the test panics).
struct Etcd {
    child: Child,
    endpoint: String,
    dir: tempfile::TempDir,
}

impl Etcd {
    fn start(binary: &Path) -> Etcd {
        let dir = tempfile::tempdir().expect("temp dir");
        let client_url = format!("http://127.0.0.1:{}", free_port());
        let peer_url = format!("http://127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log file");
        let mut command = Command::new(binary);
        command
            .arg("--name=bench")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=bench={peer_url}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        if let Some(arch) = unsupported_go_arch() {
            command.env("ETCD_UNSUPPORTED_ARCH", arch);
        }
        let child = command.spawn().expect("spawn etcd");
        Etcd {
            child,
            endpoint: client_url.trim_start_matches("http://").to_owned(),
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Polls until a linearizable Range succeeds (a leader is elected and
    /// serving), or fails the test after `timeout` with etcd's log.
    async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let uri = format!("http://{}", self.endpoint);
        let mut last_error = String::new();
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("etcd exited early with {status}:\n{}", self.log());
            }
            match KvClient::connect(uri.clone()).await {
                Ok(mut kv) => match kv
                    .range(RangeRequest {
                        key: "ready".into(),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(_) => return,
                    Err(status) => last_error = status.to_string(),
                },
                Err(e) => last_error = e.to_string(),
            }
            // A poll interval, not a wait for progress: the loop is bounded
            // by the deadline and ends as soon as etcd answers.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "etcd at {} not ready after {timeout:?} ({last_error}):\n{}",
            self.endpoint,
            self.log()
        );
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_against_etcd() {
    let Some(binary) = retcd_testkit::etcd_bin::etcd() else {
        return;
    };
    let mut etcd = Etcd::start(&binary);
    etcd.wait_ready(Duration::from_secs(30)).await;
    assert!(Path::new(&etcd.dir.path().join("data")).exists());

    common::check_all_workloads(&etcd.endpoint, "etcd/").await;

    let v = common::bench_binary_json(
        &etcd.endpoint,
        &["range", "etcd/k/", "--prefix", "--total", "20"],
    )
    .await;
    assert_eq!(v["command"], "range");
    assert_eq!(v["ok"], 20);
    assert_eq!(v["errors_total"], 0);
    assert_eq!(v["counters"]["kvs_returned"], 20 * 200);

    // Two whole snapshot streams: each is etcd's backend file (whole 4 KiB pages) and
    // the SHA-256 after it.
    let v = common::bench_binary_json(
        &etcd.endpoint,
        &["snapshot", "--total", "2", "--clients", "2"],
    )
    .await;
    assert_eq!(v["command"], "snapshot");
    assert_eq!(v["ok"], 2);
    assert_eq!(v["errors_total"], 0);
    let bytes = v["counters"]["bytes"].as_u64().expect("bytes counter");
    assert!(bytes > 2 * 4096 && bytes % 2 == 0, "{bytes}");
    assert_eq!((bytes / 2 - 32) % 4096, 0, "{bytes}");
}
