//! One set of workload checks, run against the in-process fake server
//! (always) and against a real etcd (when installed).

#![allow(dead_code)] // each test binary uses a different part

use clap::Parser as _;
use retcd_bench::{Cli, Report};

/// Runs the benchmark in-process with the whitespace-separated `args` (no
/// program name, no `--endpoints`).
pub async fn bench(endpoint: &str, args: &str) -> Report {
    let argv = ["retcd-bench", "--endpoints", endpoint]
        .into_iter()
        .chain(args.split_whitespace());
    let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{args}: {e}"));
    retcd_bench::run(&cli)
        .await
        .unwrap_or_else(|e| panic!("{args} failed: {e}"))
}

/// Asserts that every series of `report` succeeded `ok` times without error.
pub fn assert_clean(report: &Report, ok: u64) {
    for s in &report.series {
        assert!(
            s.summary.errors.is_empty(),
            "{} / {}: errors {:?}",
            report.command,
            s.name,
            s.summary.errors
        );
    }
    assert_eq!(
        report.main().ok,
        ok,
        "{}: {}",
        report.command,
        report.to_text()
    );
    let m = report.main();
    assert!(
        m.min_ms <= m.p50_ms && m.p50_ms <= m.p99_ms && m.p99_ms <= m.max_ms,
        "percentiles out of order: {m:?}"
    );
}

/// Every workload, small, with exact expected counts. Keys go under
/// `prefix` so runs against a shared server do not see each other.
pub async fn check_all_workloads(endpoint: &str, prefix: &str) {
    let keys = format!("{prefix}k/");
    let put = bench(
        endpoint,
        &format!(
            "put --total 200 --clients 8 --conns 2 --key-prefix {keys} --key-size 16 \
             --key-space-size 200 --sequential-keys --warmup 10"
        ),
    )
    .await;
    assert_clean(&put, 200);
    assert!(put.main().requests_per_sec > 0.0);

    // Sequential keys: all 200 exist, so each prefix range returns 200.
    let range = bench(
        endpoint,
        &format!("range {keys} --prefix --total 50 --clients 4 --consistency s"),
    )
    .await;
    assert_clean(&range, 50);
    assert_eq!(range.counter("kvs_returned"), Some(50 * 200));

    let one_key = format!("{keys}{:0width$}", 7, width = 16 - keys.len());
    let range = bench(
        endpoint,
        &format!("range {one_key} --total 20 --consistency l"),
    )
    .await;
    assert_clean(&range, 20);
    assert_eq!(range.counter("kvs_returned"), Some(20));

    let txn = bench(
        endpoint,
        &format!(
            "txn-put --total 200 --clients 4 --txn-ops 3 --key-prefix {prefix}t/ \
             --key-size 12 --key-space-size 50"
        ),
    )
    .await;
    assert_clean(&txn, 200);
    assert_eq!(txn.counter("txn_succeeded"), Some(200));

    let lease = bench(
        endpoint,
        &format!(
            "lease --total 50 --clients 4 --ttl 30 --key-prefix {prefix}l/ --key-size 12 \
             --key-space-size 50"
        ),
    )
    .await;
    assert_clean(&lease, 50);
    assert_eq!(lease.counter("cycles"), Some(50));
    let steps: Vec<_> = lease
        .series
        .iter()
        .map(|s| (s.name.as_str(), s.summary.ok))
        .collect();
    assert_eq!(
        steps,
        [
            ("lease-cycle", 50),
            ("grant", 50),
            ("put", 50),
            ("revoke", 50)
        ]
    );

    let keepalive = bench(
        endpoint,
        "lease-keepalive --total 200 --clients 4 --leases 8 --warmup 8",
    )
    .await;
    assert_clean(&keepalive, 200);
    assert_eq!(keepalive.counter("leases"), Some(8));
    assert_eq!(keepalive.counter("keepalives_ok"), Some(200));
    assert_eq!(keepalive.counter("leases_revoked"), Some(8));

    let watch = bench(
        endpoint,
        &format!(
            "watch --total 200 --clients 4 --conns 2 --watchers 6 --streams 3 \
             --prefix {prefix}w/"
        ),
    )
    .await;
    assert_clean(&watch, 6 * 200);
    assert_eq!(watch.series[1].name, "put");
    assert_eq!(watch.series[1].summary.ok, 200);
    assert_eq!(watch.counter("events_expected"), Some(1200));
    assert_eq!(watch.counter("events_received"), Some(1200));
}

/// Runs the built binary with `--json` and returns the parsed object.
pub async fn bench_binary_json(endpoint: &str, args: &[&str]) -> serde_json::Value {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_retcd-bench"))
        .args(["--endpoints", endpoint, "--json", "--threads", "1"])
        .args(args)
        .output()
        .await
        .expect("run retcd-bench");
    assert!(
        output.status.success(),
        "retcd-bench {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("utf-8 output");
    assert_eq!(
        stdout.lines().count(),
        1,
        "one JSON object on one line: {stdout}"
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}
