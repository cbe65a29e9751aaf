//! The `ETCD_*` variables and the config file: precedence, etcd's environment rules and
//! its YAML decoding rules.

use std::path::PathBuf;
use std::time::Duration;

use super::{err, run};
use crate::config::{Config, ConfigError, Level, Parsed};

fn warned(p: &Parsed, text: &str) -> bool {
    p.notices
        .iter()
        .any(|n| n.level == Level::Warn && n.message.contains(text))
}

// Goal: variables set flags with the flags' syntax; a bad value exits 1 with etcd's
// message; an empty variable is not used.
#[test]
fn variables_set_flags() {
    let p = run(
        &[],
        &[
            ("ETCD_NAME", "envnode"),
            ("ETCD_PRE_VOTE", "0"),
            ("ETCD_MAX_TXN_OPS", "0x10"),
            ("ETCD_SNAPSHOT_COUNT", ""),
        ],
    )
    .unwrap();
    assert_eq!(p.config.name, "envnode");
    assert!(!p.config.pre_vote);
    assert_eq!(p.config.max_txn_ops, 16);
    assert_eq!(p.config.snapshot_count, 100_000);
    assert!(warned(
        &p,
        "unrecognized environment variable ETCD_SNAPSHOT_COUNT"
    ));
    assert!(
        p.notices
            .iter()
            .any(|n| n.message == "recognized and used environment variable ETCD_NAME")
    );
    for (v, want) in [
        ("1", true),
        ("t", true),
        ("TRUE", true),
        ("true", true),
        ("0", false),
        ("false", false),
    ] {
        assert_eq!(
            run(&[], &[("ETCD_PRE_VOTE", v)]).unwrap().config.pre_vote,
            want,
            "{v}"
        );
    }
    for bad in ["yes", "on", " true"] {
        let e = err(&[], &[("ETCD_PRE_VOTE", bad)]);
        assert_eq!(
            e.to_string(),
            format!("invalid value {bad:?} for ETCD_PRE_VOTE: parse error")
        );
        assert_eq!(e.exit_code(), 1);
    }
    let e = err(&[], &[("ETCD_LISTEN_CLIENT_URLS", "http://127.0.0.1:1")]);
    assert!(
        e.to_string()
            .starts_with("--advertise-client-urls is required"),
        "{e}"
    );
    // The issue-14 bug: TLS variables used to be dropped without a word.
    let p = run(
        &[],
        &[("ETCD_CERT_FILE", "/c.pem"), ("ETCD_KEY_FILE", "/k.pem")],
    )
    .unwrap();
    assert_eq!(p.config.client_tls.cert_file, Some(PathBuf::from("/c.pem")));
    let e = err(&[], &[("ETCD_DISCOVERY_SRV", "example.com")]);
    assert!(
        e.to_string()
            .contains("--discovery-srv (DNS SRV bootstrap) yet: given as ETCD_DISCOVERY_SRV"),
        "{e}"
    );
    let p = run(&[], &[("ETCD_AUTO_COMPACTION_RETENTION", "1h")]).unwrap();
    assert_eq!(
        p.config.auto_compaction(),
        Some(crate::config::Policy::Periodic(
            std::time::Duration::from_secs(3600)
        ))
    );
    assert_eq!(
        run(&[], &[("ETCD_AUTO_COMPACTION_RETENTION", "0")])
            .unwrap()
            .config,
        Config::default()
    );
}

// Goal: a flag given both ways is fatal (an empty variable too), unknown ETCD_*
// variables are warnings, the prefix is case-sensitive, ETCD_VERSION and
// ETCD_UNSUPPORTED_ARCH are not errors, legacy variables are ignored with a warning.
#[test]
fn etcds_environment_rules() {
    for value in ["envname", ""] {
        let e = err(&["--name=flagname"], &[("ETCD_NAME", value)]);
        assert_eq!(
            e.to_string(),
            "conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding command-line flag (either unset environment variable or disable flag)"
        );
        assert_eq!(e.exit_code(), 1);
    }
    let p = run(
        &[],
        &[
            ("ETCD_FOO", "bar"),
            ("etcd_name", "x"),
            ("ETCDCOV_ARGS", "y"),
        ],
    )
    .unwrap();
    assert!(warned(&p, "unrecognized environment variable ETCD_FOO"));
    assert!(
        !p.notices.iter().any(|n| n.message.contains("bar")),
        "values are not logged"
    );
    assert_eq!(p.config.name, "default");
    assert_eq!(
        p.notices.iter().filter(|n| n.level == Level::Warn).count(),
        1
    );
    let p = run(
        &[],
        &[("ETCD_VERSION", "3.4.23"), ("ETCD_UNSUPPORTED_ARCH", "arm")],
    )
    .unwrap();
    assert!(warned(
        &p,
        "cannot set special environment variable ETCD_VERSION"
    ));
    assert_eq!(p.config, Config::default());
    let p = run(&[], &[("ETCD_V", "1")]).unwrap();
    assert!(warned(&p, "flag \"-v\" is no longer supported - ignoring."));
    // A refused variable is refused even when a valid flag is also given.
    let e = err(&["--name=n1"], &[("ETCD_PROXY", "on")]);
    assert!(matches!(e, ConfigError::Unsupported { .. }), "{e}");
}

fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn from_file(path: &str) -> Result<Parsed, ConfigError> {
    run(&[format!("--config-file={path}").as_str()], &[])
}

// Goal: with a config file, the file alone counts: other flags and every variable are
// ignored (with a warning), no conflict is checked; --config-file beats
// ETCD_CONFIG_FILE; flag syntax is still checked; a missing file exits 1.
#[test]
fn a_config_file_is_the_only_source() {
    let dir = tempfile::tempdir().unwrap();
    let a = file(&dir, "a.yml", "name: from-a\n");
    let b = file(&dir, "b.yml", "name: from-b\n");
    let flag = format!("--config-file={a}");
    let p = run(
        &[flag.as_str(), "--name=flagname", "--pre-vote=false"],
        &[
            ("ETCD_NAME", "envname"),
            ("ETCD_HEARTBEAT_INTERVAL", "abc"),
            ("ETCD_FOO", "x"),
        ],
    )
    .unwrap();
    assert_eq!(p.config.name, "from-a");
    assert!(p.config.pre_vote);
    assert!(warned(
        &p,
        "these flags are ignored, as etcd ignores them: --name, --pre-vote"
    ));
    assert!(warned(
        &p,
        "these variables are ignored, as etcd ignores them: ETCD_FOO, ETCD_HEARTBEAT_INTERVAL, ETCD_NAME"
    ));
    assert!(!warned(&p, "unrecognized environment variable"));
    assert_eq!(
        run(&[], &[("ETCD_CONFIG_FILE", b.as_str())])
            .unwrap()
            .config
            .name,
        "from-b"
    );
    assert_eq!(
        run(&[flag.as_str()], &[("ETCD_CONFIG_FILE", b.as_str())])
            .unwrap()
            .config
            .name,
        "from-a"
    );
    assert_eq!(
        run(
            &["--config-file=", "--name=n"],
            &[("ETCD_CONFIG_FILE", b.as_str())]
        )
        .unwrap()
        .config
        .name,
        "from-b"
    );
    // The command line is still parsed first.
    assert!(matches!(
        err(&[flag.as_str(), "--heartbeat-interval=abc"], &[]),
        ConfigError::Syntax(_)
    ));
    assert!(matches!(
        err(&[flag.as_str(), "--bogus"], &[]),
        ConfigError::Syntax(_)
    ));
    let e = err(&["--config-file=/nonexistent/c.yml"], &[]);
    assert!(
        e.to_string().starts_with("open /nonexistent/c.yml: "),
        "{e}"
    );
    assert_eq!(e.exit_code(), 1);
    // An empty file is etcd's defaults, with no auto-compaction mode.
    let empty = file(&dir, "empty.yml", "");
    let c = from_file(&empty).unwrap().config;
    assert_eq!(
        c,
        Config {
            auto_compaction_mode: String::new(),
            ..Config::default()
        }
    );
}

// Goal: the YAML decoding rules etcd's decoder imposes.
#[test]
fn yaml_types_are_etcds() {
    let dir = tempfile::tempdir().unwrap();
    let parse = |text: &str| from_file(&file(&dir, "t.yml", text));
    let c = |text: &str| parse(text).unwrap_or_else(|e| panic!("{text}: {e}")).config;
    let refused = |text: &str, want: &str| {
        let e = parse(text).unwrap_err();
        assert!(e.to_string().contains(want), "{text}: {e}");
        assert_eq!(e.exit_code(), 1);
    };
    // Durations are integer nanoseconds, milliseconds plain integers.
    assert_eq!(
        c("grpc-keepalive-timeout: 5000000000\n").grpc_keepalive_timeout,
        Duration::from_secs(5)
    );
    refused(
        "grpc-keepalive-timeout: 5s\n",
        "cannot unmarshal string into Go struct field configYAML.grpc-keepalive-timeout of type time.Duration",
    );
    refused(
        "grpc-keepalive-timeout: '5000000000'\n",
        "of type time.Duration",
    );
    assert_eq!(c("heartbeat-interval: 50\n").heartbeat_interval_ms, 50);
    refused("heartbeat-interval: 100ms\n", "of type uint");
    // Bools: YAML 1.1 words unquoted, never a quoted string.
    assert!(!c("pre-vote: no\n").pre_vote);
    assert!(!c("pre-vote: off\n").pre_vote);
    assert!(c("enable-grpc-gateway: yes\n").enable_grpc_gateway);
    refused(
        "pre-vote: 'true'\n",
        "cannot unmarshal string into Go struct field configYAML.pre-vote of type bool",
    );
    // Numbers: quoted ones are strings; a whole float is an integer.
    refused("snapshot-count: '2000000'\n", "of type uint");
    assert_eq!(c("snapshot-count: 1.5e6\n").snapshot_count, 1_500_000);
    refused("snapshot-count: 1.5\n", "of type uint");
    refused("snapshot-count: -1\n", "of type uint");
    assert_eq!(c("quota-backend-bytes: -1\n").backend_quota(), u64::MAX);
    // Strings refuse numbers and bools.
    refused(
        "name: 123\n",
        "cannot unmarshal number into Go struct field configYAML.name of type string",
    );
    refused("auto-compaction-retention: 1\n", "of type string");
    refused(
        "proxy: off\n",
        "cannot unmarshal bool into Go struct field configYAML.proxy of type string",
    );
    assert_eq!(
        c("auto-compaction-retention: '0'\n").auto_compaction_mode,
        ""
    );
    // URL lists are comma strings; log-outputs and cipher-suites YAML lists.
    let urls = c("listen-client-urls: http://127.0.0.1:1, http://127.0.0.1:2\n");
    assert_eq!(
        urls.listen_client_urls,
        vec!["http://127.0.0.1:1", "http://127.0.0.1:2"]
    );
    assert_eq!(
        urls.advertise_client_urls,
        vec!["http://localhost:2379"],
        "not required in a file"
    );
    refused(
        "listen-client-urls: [http://127.0.0.1:1]\n",
        "cannot unmarshal array",
    );
    refused(
        "listen-client-urls: http://127.0.0.1\n",
        "unexpected error setting up listen-client-urls",
    );
    assert_eq!(
        c("log-outputs: [stderr, stdout, stderr]\n").log_outputs,
        vec!["stderr", "stdout"]
    );
    refused(
        "log-outputs: stderr\n",
        "cannot unmarshal string into Go struct field configYAML.log-outputs of type []string",
    );
    assert_eq!(
        c("cipher-suites: [TLS_AES_128_GCM_SHA256]\n").cipher_suites,
        vec!["TLS_AES_128_GCM_SHA256"]
    );
    // Keys match case-insensitively; the last of two equal keys wins.
    assert_eq!(c("SNAPSHOT-COUNT: 42\n").snapshot_count, 42);
    assert_eq!(
        c("snapshot-count: 1\nsnapshot-count: 2\n").snapshot_count,
        2
    );
    // The cluster state: empty means new.
    assert_eq!(
        c("initial-cluster-state: ''\n").initial_cluster_state,
        "new"
    );
    refused(
        "initial-cluster-state: bogus\n",
        "unexpected clusterState \"bogus\"",
    );
    refused("- a\n- b\n", "into Go value of type embed.configYAML");
    refused("name: [\n", "error converting YAML to JSON");
}

// Goal: unknown keys (snake_case spellings included) are ignored as etcd ignores them,
// each with a warning; refused keys are refused by name; renamed and nested keys land.
#[test]
fn yaml_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(
        &dir,
        "k.yml",
        "bogus-key: 1\nsnapshot_count: 5\nclient-transport-security:\n  cert-file: /c\n  bogus: 2\n\
         peer-transport-security:\n  client-cert-auth: true\n  allowed-cn: [peer]\n  allowed-hostname: a,b\n\
         socket-options:\n  reuse-address: true\nexperimental-snapshot-catch-up-entries: 77\n",
    );
    let p = from_file(&path).unwrap();
    assert!(warned(&p, "unknown key \"bogus-key\""));
    assert!(warned(&p, "unknown key \"snapshot_count\""));
    assert!(warned(
        &p,
        "unknown key \"client-transport-security.bogus\""
    ));
    assert_eq!(p.config.snapshot_count, 100_000);
    assert_eq!(p.config.client_tls.cert_file, Some(PathBuf::from("/c")));
    assert!(p.config.peer_tls.client_cert_auth);
    assert_eq!(p.config.peer_tls.allowed_cn, vec!["peer"]);
    assert_eq!(p.config.peer_tls.allowed_hostname, vec!["a", "b"]);
    assert_eq!(p.config.snapshot_catchup_entries, 77);
    assert!(p.notices.iter().any(|n| {
        n.message
            .contains("--socket-reuse-address given as key \"socket-options.reuse-address\"")
    }));
    let cn = from_file(&file(
        &dir,
        "cn.yml",
        "client-transport-security:\n  allowed-cn: [c1]\n",
    ))
    .unwrap();
    assert_eq!(cn.config.client_tls.allowed_cn, vec!["c1"]);
    let e = from_file(&file(&dir, "r.yml", "enable-v2: true\n")).unwrap_err();
    assert!(
        e.to_string()
            .contains("--enable-v2 (etcd's v2 API) yet: given as key \"enable-v2\" in "),
        "{e}"
    );
    let e = from_file(&file(
        &dir,
        "s.yml",
        "socket-options:\n  reuse-port: true\n",
    ))
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("given as key \"socket-options.reuse-port\""),
        "{e}"
    );
}

// Goal: etcd's documented example file (research notes §6.5, run against etcd 3.4.23)
// parses into what it asks for, its hourly auto-compaction included.
#[test]
fn etcds_example_file() {
    let text = "name: node1\ndata-dir: /var/lib/etcd\nwal-dir: ''\nsnapshot-count: 10000\nheartbeat-interval: 100\n\
        election-timeout: 1000\nquota-backend-bytes: 0\nmax-txn-ops: 128\nmax-request-bytes: 1572864\n\
        grpc-keepalive-min-time: 5000000000\nbackend-batch-interval: 0\nlisten-peer-urls: https://127.0.0.1:2380\n\
        listen-client-urls: https://127.0.0.1:2379,http://127.0.0.1:2378\nlisten-metrics-urls: http://127.0.0.1:2381\n\
        initial-advertise-peer-urls: https://127.0.0.1:2380\nadvertise-client-urls: https://127.0.0.1:2379\n\
        initial-cluster: node1=https://127.0.0.1:2380\ninitial-cluster-token: example-token\ninitial-cluster-state: new\n\
        strict-reconfig-check: true\nenable-v2: false\nenable-pprof: false\npre-vote: true\n\
        auto-compaction-mode: periodic\nauto-compaction-retention: \"RETENTION\"\ncors: '*'\nhost-whitelist: '*'\n\
        client-transport-security:\n  cert-file: /etc/etcd/pki/server.crt\n  key-file: /etc/etcd/pki/server.key\n\
        \x20 client-cert-auth: true\n  trusted-ca-file: /etc/etcd/pki/ca.crt\n  auto-tls: false\n\
        peer-transport-security:\n  cert-file: /etc/etcd/pki/peer.crt\n  key-file: /etc/etcd/pki/peer.key\n\
        \x20 client-cert-auth: true\n  trusted-ca-file: /etc/etcd/pki/ca.crt\n  auto-tls: false\n\
        cipher-suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]\n\
        logger: zap\nlog-level: info\nlog-outputs: [stderr]\nproxy: 'off'\ndiscovery-fallback: 'proxy'\n\
        experimental-initial-corrupt-check: true\nexperimental-watch-progress-notify-interval: 5000000000\n\
        force-new-cluster: false\n";
    let dir = tempfile::tempdir().unwrap();
    let hourly = from_file(&file(&dir, "a.yml", &text.replace("RETENTION", "1h"))).unwrap();
    assert_eq!(
        hourly.config.auto_compaction(),
        Some(crate::config::Policy::Periodic(Duration::from_secs(3600)))
    );
    let p = from_file(&file(&dir, "b.yml", &text.replace("RETENTION", "0"))).unwrap();
    let c = p.config;
    assert_eq!(c.name, "node1");
    assert_eq!(c.data_dir(), PathBuf::from("/var/lib/etcd"));
    assert_eq!(c.wal_dir, None);
    assert_eq!(c.snapshot_count, 10_000);
    assert_eq!(c.backend_batch_interval, Duration::from_millis(100));
    assert_eq!(
        c.listen_client_urls,
        vec!["http://127.0.0.1:2378", "https://127.0.0.1:2379"]
    );
    assert_eq!(c.initial_cluster_token, "example-token");
    assert_eq!(
        c.client_tls.trusted_ca_file,
        Some(PathBuf::from("/etc/etcd/pki/ca.crt"))
    );
    assert!(c.client_tls.client_cert_auth && c.peer_tls.client_cert_auth);
    assert_eq!(
        c.peer_tls.key_file,
        Some(PathBuf::from("/etc/etcd/pki/peer.key"))
    );
    assert_eq!(c.cipher_suites.len(), 2);
    assert_eq!(c.log_outputs, vec!["stderr"]);
    assert!(c.initial_corrupt_check);
    assert_eq!(c.watch_progress_notify_interval, Duration::from_secs(5));
    assert_eq!(c.auto_compaction_mode, "periodic");
    assert!(warned(
        &Parsed {
            config: c,
            notices: p.notices
        },
        "scheme is HTTP while key and cert files are present"
    ));
}
