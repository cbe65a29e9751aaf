//! The HTTP endpoints on the client port, the environment-variable configuration, and
//! the ids etcd would give the same member.

mod common;

use common::{Retcd, free_port, http_get};

// Goal: /version, /health (both kinds), /livez, /readyz and unknown paths answer as
// etcd 3.5 does, on the same port as gRPC.
#[tokio::test]
async fn version_health_probes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Retcd::start(&dir.path().join("data"), &[]);
    let (code, body) = http_get(s.port, "/version").unwrap();
    assert_eq!(code, 200);
    assert_eq!(body, r#"{"etcdserver":"3.5.17","etcdcluster":"3.5.0"}"#);
    for path in ["/health", "/health?serializable=true"] {
        let (code, body) = http_get(s.port, path).unwrap();
        assert_eq!(
            (code, body.as_str()),
            (200, r#"{"health":"true","reason":""}"#)
        );
    }
    assert_eq!(http_get(s.port, "/livez").unwrap(), (200, "ok".to_string()));
    assert_eq!(
        http_get(s.port, "/readyz").unwrap(),
        (200, "ok".to_string())
    );
    let (code, body) = http_get(s.port, "/readyz?verbose").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("[+]linearizable_read ok"), "{body}");
    assert_eq!(http_get(s.port, "/nope").unwrap().0, 404);
    // gRPC still works on the same port.
    let mut c = s.client().await;
    c.put("k", "v", None).await.unwrap();
}

// Goal: /readyz's data_corruption check follows the CORRUPT alarm (raised by hand), and
// clears when it is disarmed; /health names the alarm meanwhile.
#[tokio::test]
async fn readyz_reflects_a_corrupt_alarm() {
    use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
    let dir = tempfile::tempdir().unwrap();
    let s = Retcd::start(&dir.path().join("data"), &[]);
    let mut c = s.client().await;
    let member = c.status().await.unwrap().header().unwrap().member_id();
    let options = || {
        let mut o = AlarmOptions::new();
        o.with_member(member);
        Some(o)
    };
    c.alarm(AlarmAction::Activate, AlarmType::Corrupt, options())
        .await
        .unwrap();
    let (code, body) = http_get(s.port, "/readyz?verbose").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("[-]data_corruption failed"), "{body}");
    assert!(body.contains("[+]non_learner ok"), "{body}");
    let (code, body) = http_get(s.port, "/health").unwrap();
    assert_eq!(
        (code, body.as_str()),
        (503, r#"{"health":"false","reason":"ALARM CORRUPT"}"#)
    );
    c.alarm(AlarmAction::Deactivate, AlarmType::Corrupt, options())
        .await
        .unwrap();
    assert_eq!(
        http_get(s.port, "/readyz").unwrap(),
        (200, "ok".to_string())
    );
}

/// A sample `text` must have.
fn metric_value(text: &str, name: &str) -> f64 {
    common::metric_sample(text, name)
        .unwrap_or_else(|| panic!("no numeric sample for {name} in:\n{text}"))
}

// Goal: /metrics exposes etcd's metric names with numeric samples that move with load.
#[tokio::test]
async fn grpc_metrics_count_calls_codes_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let s = Retcd::start(&dir.path().join("data"), &[]);
    let mut c = s.client().await;
    for i in 0..3 {
        c.put(format!("g{i}"), "v", None).await.unwrap();
    }
    // An empty key is refused with InvalidArgument.
    assert!(c.get("", None).await.is_err());
    let lease = c.lease_grant(60, None).await.unwrap().id();
    let (mut keeper, mut responses) = c.lease_keep_alive(lease).await.unwrap();
    // etcd-client sends one keep-alive when it opens the stream (and reads its answer
    // itself); two more here, each answered before the scrape.
    for _ in 0..2 {
        keeper.keep_alive().await.unwrap();
        responses.message().await.unwrap().unwrap();
    }
    drop((keeper, responses));
    let (_, text) = http_get(s.port, "/metrics").unwrap();
    let sample = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in /metrics"))
    };
    let kv = |m: &str| {
        format!("grpc_method=\"{m}\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"")
    };
    assert_eq!(
        sample(&format!("grpc_server_started_total{{{}}}", kv("Put"))),
        3.0
    );
    assert_eq!(
        sample(&format!(
            "grpc_server_handled_total{{grpc_code=\"OK\",{}}}",
            kv("Put")
        )),
        3.0
    );
    assert_eq!(
        sample(&format!("grpc_server_msg_received_total{{{}}}", kv("Put"))),
        3.0
    );
    assert_eq!(
        sample(&format!("grpc_server_msg_sent_total{{{}}}", kv("Put"))),
        3.0
    );
    assert_eq!(
        sample(&format!(
            "grpc_server_handled_total{{grpc_code=\"InvalidArgument\",{}}}",
            kv("Range")
        )),
        1.0
    );
    let keep = "grpc_method=\"LeaseKeepAlive\",grpc_service=\"etcdserverpb.Lease\",grpc_type=\"bidi_stream\"";
    assert_eq!(sample(&format!("grpc_server_started_total{{{keep}}}")), 1.0);
    assert_eq!(
        sample(&format!("grpc_server_msg_received_total{{{keep}}}")),
        3.0
    );
    assert_eq!(
        sample(&format!("grpc_server_msg_sent_total{{{keep}}}")),
        3.0
    );
    assert!(text.contains("etcd_server_id{server_id=\""), "{text}");
    assert!(text.contains("etcd_cluster_version{cluster_version=\"3.5\"} 1"));
    // Without --metrics extensive there is no latency histogram, as in etcd.
    assert!(!text.contains("grpc_server_handling_seconds"));
}

#[tokio::test]
async fn metrics_have_etcds_names() {
    let dir = tempfile::tempdir().unwrap();
    let s = Retcd::start(&dir.path().join("data"), &[]);
    let mut c = s.client().await;
    for i in 0..5 {
        c.put(format!("m{i}"), "v", None).await.unwrap();
    }
    c.get("m0", None).await.unwrap();
    c.delete("m0", None).await.unwrap();
    c.txn(etcd_client::Txn::new().and_then([etcd_client::TxnOp::put("m9", "v", None)]))
        .await
        .unwrap();
    let (code, text) = http_get(s.port, "/metrics").unwrap();
    assert_eq!(code, 200);
    for name in [
        "etcd_server_has_leader",
        "etcd_server_is_leader",
        "etcd_server_leader_changes_seen_total",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_server_proposals_pending",
        "etcd_server_proposals_failed_total",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "etcd_disk_wal_fsync_duration_seconds_count",
        "etcd_disk_wal_fsync_duration_seconds_sum",
        "etcd_disk_backend_commit_duration_seconds_count",
        "etcd_mvcc_put_total",
        "etcd_mvcc_delete_total",
        "etcd_mvcc_range_total",
        "etcd_mvcc_txn_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        let v = metric_value(&text, name);
        assert!(v.is_finite() && v >= 0.0, "{name} = {v}");
    }
    assert_eq!(metric_value(&text, "etcd_server_has_leader"), 1.0);
    assert_eq!(metric_value(&text, "etcd_server_is_leader"), 1.0);
    assert!(metric_value(&text, "etcd_mvcc_put_total") >= 6.0);
    assert!(metric_value(&text, "etcd_disk_wal_fsync_duration_seconds_count") >= 7.0);
    assert!(metric_value(&text, "etcd_server_proposals_applied_total") >= 7.0);
    assert!(metric_value(&text, "etcd_mvcc_db_total_size_in_bytes") > 0.0);
    assert!(metric_value(&text, "process_resident_memory_bytes") > 0.0);
    assert!(text.contains("etcd_server_version{server_version=\"3.5.17\"} 1"));
    assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"}"));
    assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"8.192\"}"));
}

// Goal: ETCD_* environment variables configure the server like flags, and the ids in
// headers are etcd's for that configuration.
#[tokio::test]
async fn environment_variables_configure_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("from-env");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let s = Retcd::start_with(
        &data,
        port,
        &[],
        &[
            ("ETCD_NAME", "envnode".to_string()),
            ("ETCD_DATA_DIR", data.display().to_string()),
            ("ETCD_LISTEN_CLIENT_URLS", url.clone()),
            ("ETCD_ADVERTISE_CLIENT_URLS", url),
            ("ETCD_INITIAL_CLUSTER_TOKEN", "etcd-cluster".to_string()),
            ("ETCD_MAX_TXN_OPS", "2".to_string()),
        ],
    );
    assert!(data.join("member/wal").is_dir());
    assert!(data.join("member/snap/db").is_file());
    let mut c = s.client().await;
    let r = c.put("k", "v", None).await.unwrap();
    let h = r.header().unwrap();
    // etcd 3.4.23 with default peer URLs and token: member 8e9e05c52164694d, cluster
    // cdf818194e3a8c32 (the name does not enter the id).
    assert_eq!(h.member_id(), 0x8e9e_05c5_2164_694d);
    assert_eq!(h.cluster_id(), 0xcdf8_1819_4e3a_8c32);
    let ops: Vec<_> = (0..3)
        .map(|i| etcd_client::TxnOp::put(format!("t{i}"), "v", None))
        .collect();
    let err = c
        .txn(etcd_client::Txn::new().and_then(ops))
        .await
        .unwrap_err();
    assert_eq!(
        common::status_of(err).message(),
        "etcdserver: too many operations in txn request"
    );
}

// Goal: etcd flags retcd lacks are refused with a message naming them, whether given as
// a flag or as an ETCD_* variable, and exit 1 (etcd's code for a configuration it
// cannot serve) before anything is created; a flag etcd does not know exits 2.
#[test]
fn unsupported_flags_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let retcd = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_retcd"));
        cmd.arg("--data-dir").arg(dir.path().join("d"));
        cmd
    };
    let out = retcd()
        .args(["--discovery-srv", "example.com"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "does not support --discovery-srv (DNS SRV bootstrap) yet: given on the command line"
        ),
        "{err}"
    );
    let out = retcd()
        .env("ETCD_DISCOVERY_SRV", "example.com")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("given as ETCD_DISCOVERY_SRV"), "{err}");
    // A malformed auto-compaction retention is refused with etcd's message.
    let out = retcd()
        .args(["--auto-compaction-retention", "abc"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error parsing CompactionRetention: time: invalid duration \"abc\""),
        "{err}"
    );
    let out = retcd().arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("flag provided but not defined: -no-such-flag"),
        "{err}"
    );
    assert!(!dir.path().join("d").exists());
}
