//! Deployment as etcd is deployed: kubeadm's etcd command line, exactly, for a 1-member
//! and a 3-member cluster (client and peer mTLS, a plain-HTTP metrics listener that
//! kubeadm's probes hit), and `--log-outputs` writing where etcd would.
//!
//! kubeadm puts the node's IP beside 127.0.0.1 in `--listen-client-urls`; the tests give
//! each member its own loopback address (127.0.0.2, .3, .4) for that and for its peer
//! URL, so the command lines have kubeadm's shape on one machine.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::tls::{Pki, grpc_client};
use common::{DEADLINE, http_get};
use retcd_testkit::pki::{Leaf, Pair};

/// A `retcd` started with exactly the given arguments; killed on drop.
struct Member {
    child: Child,
    log: PathBuf,
    metrics: u16,
    client: u16,
}

impl Member {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls kubeadm's liveness probe until it answers 200, with a deadline.
    fn wait_healthy(&mut self) {
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = http_get(self.metrics, KUBEADM_LIVENESS) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("retcd exited with {status}; log:\n{}", self.log());
            }
            assert!(
                start.elapsed() < DEADLINE,
                "retcd did not answer kubeadm's probe in time; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// kubeadm's probes of its etcd static pod (liveness and startup, then readiness).
const KUBEADM_LIVENESS: &str = "/health?exclude=NOSPACE&serializable=true";
const KUBEADM_READINESS: &str = "/readyz";

/// Where one member listens: its own loopback IP, a client, peer and metrics port.
struct Node {
    name: String,
    ip: String,
    client: u16,
    peer: u16,
    metrics: u16,
}

/// kubeadm's etcd command line (kubeadm 1.3x, `kubeadm init`'s static pod), for `node`
/// of a cluster of `all`, certificates from `certs`.
fn kubeadm_args(node: &Node, all: &[Node], data: &Path, server: &Pair, ca: &Path) -> Vec<String> {
    let initial_cluster = all
        .iter()
        .map(|n| format!("{}=https://{}:{}", n.name, n.ip, n.peer))
        .collect::<Vec<_>>()
        .join(",");
    let (ip, client, peer) = (&node.ip, node.client, node.peer);
    vec![
        format!("--advertise-client-urls=https://{ip}:{client}"),
        format!("--cert-file={}", server.cert()),
        "--client-cert-auth=true".into(),
        format!("--data-dir={}", data.display()),
        "--experimental-initial-corrupt-check=true".into(),
        "--experimental-watch-progress-notify-interval=5s".into(),
        format!("--initial-advertise-peer-urls=https://{ip}:{peer}"),
        format!("--initial-cluster={initial_cluster}"),
        format!("--key-file={}", server.key()),
        format!("--listen-client-urls=https://127.0.0.1:{client},https://{ip}:{client}"),
        format!("--listen-metrics-urls=http://127.0.0.1:{}", node.metrics),
        format!("--listen-peer-urls=https://{ip}:{peer}"),
        format!("--name={}", node.name),
        format!("--peer-cert-file={}", server.cert()),
        "--peer-client-cert-auth=true".into(),
        format!("--peer-key-file={}", server.key()),
        format!("--peer-trusted-ca-file={}", ca.display()),
        "--snapshot-count=10000".into(),
        format!("--trusted-ca-file={}", ca.display()),
    ]
}

fn spawn(args: &[String], log: PathBuf, node: &Node) -> Member {
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_retcd"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("spawn retcd");
    Member {
        child,
        log,
        metrics: node.metrics,
        client: node.client,
    }
}

/// Nodes on 127.0.0.2.. with distinct free ports.
fn nodes(n: usize) -> Vec<Node> {
    let ports = retcd_testkit::cluster::free_ports(3 * n).unwrap();
    (0..n)
        .map(|i| Node {
            name: format!("node-{i}"),
            ip: format!("127.0.0.{}", i + 2),
            client: ports[3 * i],
            peer: ports[3 * i + 1],
            metrics: ports[3 * i + 2],
        })
        .collect()
}

/// kubeadm issues the etcd server and peer certificates for the node's IP, its name,
/// localhost and 127.0.0.1; one certificate here covers every test node.
fn node_certificate(pki: &mut Pki) -> Pair {
    let leaf = Leaf {
        cn: "etcd",
        sans: &[
            "localhost",
            "127.0.0.1",
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.4",
        ],
        ..Leaf::default()
    };
    pki.ca.issue("node", &leaf).0
}

/// Starts a kubeadm-style cluster of `n` members and checks each one's probes, its
/// metrics, and that a write on the first is read on every member over client mTLS.
async fn kubeadm_cluster(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = Pki::new(&dir.path().join("pki"));
    let cert = node_certificate(&mut pki);
    let all = nodes(n);
    let mut members: Vec<Member> = all
        .iter()
        .map(|node| {
            let data = dir.path().join(&node.name);
            let args = kubeadm_args(node, &all, &data, &cert, &pki.ca.cert);
            spawn(&args, dir.path().join(format!("{}.log", node.name)), node)
        })
        .collect();
    for m in &mut members {
        common::blocking(|| m.wait_healthy());
    }
    for m in &members {
        let (status, body) = http_get(m.metrics, KUBEADM_LIVENESS).unwrap();
        assert_eq!(
            (status, body.as_str()),
            (200, r#"{"health":"true","reason":""}"#)
        );
        let (status, body) = http_get(m.metrics, KUBEADM_READINESS).unwrap();
        assert_eq!((status, body.trim()), (200, "ok"), "{}", m.log());
        let (status, metrics) = http_get(m.metrics, "/metrics").unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            common::metric_sample(&metrics, "etcd_server_has_leader"),
            Some(1.0)
        );
        // The client port is https with client-cert-auth; a plaintext probe gets no 200.
        assert!(!matches!(http_get(m.client, "/health"), Ok((200, _))));
    }

    let mut first = grpc_client(members[0].client, &pki.ca.cert, Some(&pki.good))
        .await
        .unwrap();
    let put = first
        .put("/registry/pods/default/p", "spec", None)
        .await
        .unwrap();
    let revision = put.header().unwrap().revision();
    let list = first.member_list().await.unwrap();
    assert_eq!(list.members().len(), n);
    for m in &members {
        let mut c = grpc_client(m.client, &pki.ca.cert, Some(&pki.good))
            .await
            .unwrap();
        let got = c.get("/registry/pods/default/p", None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), b"spec");
        assert!(got.header().unwrap().revision() >= revision);
    }
    for m in &members {
        assert!(
            !m.log().contains("ERROR"),
            "an error in a member's log:\n{}",
            m.log()
        );
    }
}

// Goal: kubeadm's single-node etcd command line, exactly, starts a member that
// kubeadm's probes find healthy and ready and that serves mTLS clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeadm_command_line_one_member() {
    kubeadm_cluster(1).await;
}

// Goal: the same for a 3-member cluster with peer mTLS (kubeadm's external or stacked
// etcd with all members listed in --initial-cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeadm_command_line_three_members() {
    kubeadm_cluster(3).await;
}

// Goal: --log-outputs sends the log to each output it names: a file (appended to, 0600)
// and stderr together; stdout alone leaves stderr empty of log lines.
#[test]
fn log_outputs_go_where_they_are_named() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("retcd.log");
    std::fs::write(&file, "an earlier line\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let logged = |outputs: &str, data: &str| {
        // A client port already taken: the start fails, quickly and after logging began.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", taken.local_addr().unwrap());
        let out = Command::new(env!("CARGO_BIN_EXE_retcd"))
            .args(["--data-dir", dir.path().join(data).to_str().unwrap()])
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .arg(format!(
                "--listen-peer-urls=http://127.0.0.1:{}",
                common::free_port()
            ))
            .arg(format!("--log-outputs={outputs}"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "retcd was to exit: its client port is taken"
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (stdout, stderr) = logged(&format!("{},stderr", file.display()), "a");
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(
        written.starts_with("an earlier line\n"),
        "appended to: {written}"
    );
    assert!(written.contains("retcd stopped on an error"), "{written}");
    assert!(stderr.contains("retcd stopped on an error"), "{stderr}");
    assert!(!stdout.contains("retcd stopped"), "{stdout}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let (stdout, stderr) = logged("stdout", "b");
    assert!(stdout.contains("retcd stopped on an error"), "{stdout}");
    assert!(!stderr.contains("retcd stopped"), "{stderr}");

    let created = dir.path().join("new.log");
    logged(created.to_str().unwrap(), "c");
    let mode = std::fs::metadata(&created).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a log file retcd creates is private");
}

// Goal: --grpc-keepalive-min-time is enforced as gRPC-Go enforces it for etcd: a client
// that pings an idle connection every 100 ms is cut off under etcd's default (5 s), and
// is not under a 50 ms minimum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_pinging_too_often_are_cut_off() {
    const CUT: &str = "too many pings";
    for (flags, cut) in [
        (&[][..], true),
        (&["--grpc-keepalive-min-time=50ms"][..], false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let server = common::Retcd::start(&dir.path().join("data"), flags);
        let options = etcd_client::ConnectOptions::new()
            .with_keep_alive(Duration::from_millis(100), Duration::from_secs(5));
        let mut c = etcd_client::Client::connect([server.endpoint()], Some(options))
            .await
            .unwrap();
        c.put("k", "v", None).await.unwrap();
        // The third strike comes with the fourth ping, about 400 ms in; 2 s is 20 pings.
        let start = Instant::now();
        let mut seen = false;
        while !seen && start.elapsed() < Duration::from_secs(2) {
            seen = server.log().contains(CUT);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(seen, cut, "{flags:?}; log:\n{}", server.log());
    }
}
