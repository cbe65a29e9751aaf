//! python-etcd3, logging in with a user and password (issue 15, acceptance 4): the script
//! `tests/python/etcd3_auth.py` sets auth up through the Auth RPCs, logs in, and drives KV,
//! txn, lease, watch, cluster and maintenance calls allowed and refused. It must succeed
//! against retcd, and when etcd 3.4.23 is installed it must print against retcd exactly
//! what it prints against etcd. Both servers serve https: python-etcd3 sends its token as
//! gRPC call credentials, which grpcio sends over TLS only.
//!
//! Needs a Python that imports python-etcd3 (`retcd_testkit::python`); skips with a
//! printed reason without it, and without etcd runs against retcd alone; fails under
//! `CI=true` when either is missing.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::etcd::{twin_retcd, twins_with};
use common::free_port;
use common::tls::Pki;

/// Bound on one run of the script (it takes about a second).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(120);

/// Runs the script against the https server on `port`; its stdout, after checking that
/// it exited 0 and got to the end.
fn run_script(python: &Path, port: u16, ca: &str, out_dir: &Path, server: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/etcd3_auth.py");
    let stdout = out_dir.join(format!("{server}.out"));
    let stderr = out_dir.join(format!("{server}.err"));
    let mut child = Command::new(python)
        .arg(&script)
        .args(["127.0.0.1", &port.to_string(), ca])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("run python");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for python") {
            break status;
        }
        if start.elapsed() > SCRIPT_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the script did not finish against {server} in {SCRIPT_DEADLINE:?}; stdout:\n{}",
                std::fs::read_to_string(&stdout).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = std::fs::read_to_string(&stdout).expect("stdout");
    let err = std::fs::read_to_string(&stderr).expect("stderr");
    assert!(
        status.success() && out.ends_with("done\n"),
        "the script failed against {server} ({status}); stdout:\n{out}\nstderr:\n{err}"
    );
    out
}

// Goal: a Python application that logs in with python-etcd3 gets its reads, writes,
// leases and watches where its role allows and etcd's refusals elsewhere, the same as
// from etcd 3.4.23.
#[test]
fn python_etcd3_logs_in_and_is_held_to_its_role() {
    let Some(python) = retcd_testkit::python::etcd3() else {
        return;
    };
    let etcd_bin = retcd_testkit::etcd_bin::etcd();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path());
    let flags = vec![
        format!("--cert-file={}", pki.server.cert()),
        format!("--key-file={}", pki.server.key()),
        "--bcrypt-cost=4".to_string(),
    ];
    let ca = pki.ca.cert();
    match etcd_bin {
        Some(etcd_bin) => {
            let (etcd, retcd) = twins_with(&etcd_bin, dir.path(), "https", &flags);
            let want = run_script(&python, etcd.port, ca, dir.path(), "etcd");
            let got = run_script(&python, retcd.port, ca, dir.path(), "retcd");
            assert_eq!(
                got, want,
                "python-etcd3 saw retcd (left) differ from etcd 3.4.23 (right)"
            );
        }
        None => {
            let peer_url = format!("http://127.0.0.1:{}", free_port());
            let retcd = twin_retcd(dir.path(), &peer_url, "https", &flags);
            let got = run_script(&python, retcd.port, ca, dir.path(), "retcd");
            assert!(got.contains("put /other: PERMISSION_DENIED: etcdserver: permission denied"));
        }
    }
}
