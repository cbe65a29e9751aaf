//! Go's flag-package rules, `--help` and `--version`, URL flags, etcd's validation, and
//! refusals.

use std::path::PathBuf;
use std::time::Duration;

use super::{err, ok, run};
use crate::config::flags::FLAGS;
use crate::config::{Command, Config, ConfigError, parse};

// Goal: with no flags, every value is etcd's default (3.5's where 3.4's differ).
#[test]
fn defaults_are_etcds() {
    let c = ok(&[]);
    assert_eq!(c, Config::default());
    assert_eq!(c.name, "default");
    assert_eq!(c.data_dir(), PathBuf::from("default.etcd"));
    assert_eq!(c.listen_client_urls, vec!["http://localhost:2379"]);
    assert_eq!(
        c.initial_cluster_members().unwrap(),
        vec![(
            "default".to_string(),
            vec!["http://localhost:2380".to_string()]
        )]
    );
    assert_eq!(c.election_ticks(), 10);
    assert_eq!(c.backend_quota(), 2 << 30);
    assert!(c.pre_vote && c.strict_reconfig_check && c.enable_grpc_gateway);
    assert_eq!(c.watch_progress_notify_interval, Duration::from_secs(600));
    assert_eq!(c.listen_client_urls, ["http://localhost:2379"]);
    assert_eq!(ok(&["--quota-backend-bytes=-1"]).backend_quota(), u64::MAX);
    assert_eq!(ok(&["--snapshot-count=0"]).snapshot_count, 100_000);
    assert_eq!(
        ok(&["--backend-batch-interval=0"]).backend_batch_interval,
        Duration::from_millis(100)
    );
    assert_eq!(
        ok(&["--experimental-watch-progress-notify-interval=0"]).watch_progress_notify_interval,
        Duration::from_secs(600)
    );
}

// Goal: Go's flag syntax: one or two dashes, `=` or a separate value, last wins, `--`
// and the first non-flag end parsing, and each error exits as etcd's.
#[test]
fn go_flag_syntax() {
    for args in [
        &["-name", "n1"][..],
        &["--name", "n1"],
        &["-name=n1"],
        &["--name=n1"],
        &["--name=x", "--name=n1"],
    ] {
        assert_eq!(ok(args).name, "n1", "{args:?}");
    }
    assert!(
        err(&["--name="], &[])
            .to_string()
            .contains("couldn't find local name \"\"")
    );
    assert_eq!(
        ok(&["--name", "-x", "--initial-cluster=-x=http://localhost:2380"]).name,
        "-x"
    );
    let syntax = |args: &[&str], want: &str| {
        let e = err(args, &[]);
        assert_eq!(
            (e.to_string().as_str(), e.exit_code()),
            (want, 2),
            "{args:?}"
        );
    };
    syntax(&["--foo"], "flag provided but not defined: -foo");
    syntax(&["-foo=1"], "flag provided but not defined: -foo");
    syntax(&["---name", "x"], "bad flag syntax: ---name");
    syntax(&["-=x"], "bad flag syntax: -=x");
    syntax(&["--name"], "flag needs an argument: -name");
    syntax(
        &["--heartbeat-interval=100ms"],
        "invalid value \"100ms\" for flag -heartbeat-interval: parse error",
    );
    syntax(
        &["--snapshot-count", "-1"],
        "invalid value \"-1\" for flag -snapshot-count: parse error",
    );
    syntax(
        &["--max-request-bytes=99999999999999999999"],
        "invalid value \"99999999999999999999\" for flag -max-request-bytes: value out of range",
    );
    syntax(
        &["--max-concurrent-streams=4294967296"],
        "invalid value \"4294967296\" for flag -max-concurrent-streams: strconv.ParseUint: parsing \"4294967296\": value out of range",
    );
    syntax(
        &["--grpc-keepalive-timeout=5"],
        "invalid value \"5\" for flag -grpc-keepalive-timeout: parse error",
    );
    syntax(
        &["--initial-cluster-state=bogus"],
        "invalid value \"bogus\" for flag -initial-cluster-state: invalid value",
    );
    syntax(
        &["--proxy=bogus"],
        "invalid value \"bogus\" for flag -proxy: invalid value",
    );
    syntax(
        &["--pre-vote=yes"],
        "invalid boolean value \"yes\" for -pre-vote: parse error",
    );
    syntax(
        &["--pre-vote="],
        "invalid boolean value \"\" for -pre-vote: parse error",
    );
    syntax(
        &["--listen-client-urls=http://127.0.0.1"],
        "invalid value \"http://127.0.0.1\" for flag -listen-client-urls: URL address does not have the form \"host:port\": http://127.0.0.1",
    );
    syntax(
        &["--foo", "--discovery=x"],
        "flag provided but not defined: -foo",
    );
    // `--bool false` leaves `false` as an argument, which etcd refuses (exit 1).
    let e = err(&["--pre-vote", "false"], &[]);
    assert_eq!(
        e.to_string(),
        "error verifying flags, 'false' is not a valid flag. See 'retcd --help'."
    );
    assert_eq!(e.exit_code(), 1);
    assert!(
        err(&["--", "--name", "x"], &[])
            .to_string()
            .contains("'--name' is not a valid flag")
    );
    assert!(
        err(&["-", "--name", "x"], &[])
            .to_string()
            .contains("'-' is not a valid flag")
    );
    assert!(
        err(&["--snapshot", "foo"], &[])
            .to_string()
            .contains("'foo' is not a valid flag")
    );
    for (arg, want) in [
        ("--pre-vote", true),
        ("--pre-vote=1", true),
        ("--pre-vote=F", false),
        ("--pre-vote=False", false),
    ] {
        assert_eq!(ok(&[arg]).pre_vote, want, "{arg}");
    }
    assert_eq!(
        ok(&["--max-request-bytes=0x100000"]).max_request_bytes,
        1_048_576
    );
    assert_eq!(ok(&["--max-request-bytes=010"]).max_request_bytes, 8);
    assert_eq!(ok(&["--snapshot-count=1_000"]).snapshot_count, 1_000);
    assert_eq!(
        ok(&["--grpc-keepalive-timeout=1h2m3.5s"]).grpc_keepalive_timeout,
        Duration::from_millis(3_723_500)
    );
    assert_eq!(
        ok(&["--cipher-suites=TLS_AES_128_GCM_SHA256,TLS_AES_128_GCM_SHA256"])
            .cipher_suites
            .len(),
        2
    );
    let e = err(&["--grpc-keepalive-timeout=-5s"], &[]);
    assert_eq!(
        (e.to_string().as_str(), e.exit_code()),
        ("--grpc-keepalive-timeout must not be negative", 1)
    );
}

// Goal: -h, --help and --version answer without reading anything else, --help lists
// every flag but the legacy ones by name with what retcd does with it.
#[test]
fn help_and_version() {
    let command = |args: &[&str]| {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &[]).unwrap()
    };
    for args in [
        &["-h"][..],
        &["--help"],
        &["-help"],
        &["--name=x", "--help", "--bogus"],
    ] {
        let Command::Help(text) = command(args) else {
            panic!("{args:?}")
        };
        for f in FLAGS.iter().filter(|f| f.help.is_empty()) {
            assert!(
                text.contains(&format!("--{} ", f.name))
                    || text.contains(&format!("--{}\n", f.name)),
                "{}",
                f.name
            );
        }
        for f in FLAGS.iter().filter(|f| !f.help.is_empty()) {
            assert!(
                text.contains(&format!("\n  --{} '", f.name)),
                "--help lists --{}",
                f.name
            );
        }
        assert!(text.contains("retcd: not supported yet (etcd's v2 discovery service)"));
    }
    for args in [
        &["--version"][..],
        &["--version", "--config-file=/nonexistent.yml"],
        &["--discovery=x", "--version"],
    ] {
        let Command::Version(text) = command(args) else {
            panic!("{args:?}")
        };
        assert!(text.starts_with("retcd Version: "), "{text}");
        assert!(text.contains(crate::config::SERVER_VERSION));
    }
    assert!(matches!(
        err(&["--version", "--bogus"], &[]),
        ConfigError::Syntax(_)
    ));
    assert!(matches!(command(&["--version=false"]), Command::Run(_)));
}

// Goal: URL lists as etcd takes them: `''` keeps the default, lists are sorted, listen
// URLs bind to IPs or localhost, advertise URLs are required with listen URLs.
#[test]
fn url_flags() {
    let c = ok(&[
        "--listen-client-urls=http://127.0.0.2:1, http://127.0.0.1:2",
        "--advertise-client-urls=http://h.example:1",
    ]);
    assert_eq!(
        c.listen_client_urls,
        vec!["http://127.0.0.1:2", "http://127.0.0.2:1"]
    );
    let c = ok(&["--listen-client-urls=", "--advertise-client-urls="]);
    assert_eq!(c.listen_client_urls, vec!["http://localhost:2379"]);
    assert_eq!(c.advertise_client_urls, vec!["http://localhost:2379"]);
    let e = err(&["--listen-client-urls=http://127.0.0.1:1"], &[]);
    assert_eq!(
        e.to_string(),
        "--advertise-client-urls is required when --listen-client-urls is set explicitly"
    );
    assert_eq!(e.exit_code(), 1);
    let e = err(&["--listen-peer-urls=http://myhost.example:2380"], &[]);
    assert_eq!(
        e.to_string(),
        "expected IP in URL for binding (http://myhost.example:2380)"
    );
    assert!(
        err(&["--listen-peer-urls=http://1.2.3.4:2380/"], &[])
            .to_string()
            .contains("URL must not contain a path")
    );
    assert_eq!(ok(&["--cors=*"]).cors, vec!["*"]);
    assert!(matches!(err(&["--cors="], &[]), ConfigError::Syntax(_)));
    assert!(matches!(
        err(&["--cors=http://a.com"], &[]),
        ConfigError::Syntax(_)
    ));
    // A https listener needs a certificate (or auto-tls); the files are not opened here.
    let e = err(
        &[
            "--listen-client-urls=https://127.0.0.1:1",
            "--advertise-client-urls=https://127.0.0.1:1",
        ],
        &[],
    );
    assert!(
        e.to_string()
            .starts_with("TLS key/cert (--cert-file, --key-file) must be provided"),
        "{e}"
    );
    ok(&[
        "--listen-client-urls=https://127.0.0.1:1",
        "--advertise-client-urls=https://127.0.0.1:1",
        "--auto-tls",
    ]);
    let e = err(
        &[
            "--listen-peer-urls=https://127.0.0.1:2",
            "--initial-advertise-peer-urls=https://127.0.0.1:2",
            "--initial-cluster=default=https://127.0.0.1:2",
        ],
        &[],
    );
    assert!(
        e.to_string()
            .contains("KeyFile and CertFile are not presented"),
        "{e}"
    );
}

// Goal: etcd's validation rules and messages, each exiting 1.
#[test]
fn validation_is_etcds() {
    let invalid = |args: &[&str], want: &str| {
        let e = err(args, &[]);
        assert!(e.to_string().contains(want), "{args:?}: {e}");
        assert_eq!(e.exit_code(), 1, "{args:?}");
    };
    invalid(
        &["--election-timeout=300"],
        "--election-timeout[300ms] should be at least as 5 times as --heartbeat-interval[100ms]",
    );
    invalid(
        &["--election-timeout=50001", "--heartbeat-interval=10000"],
        "is too long, and should be set less than 50000ms",
    );
    invalid(
        &["--heartbeat-interval=0"],
        "--heartbeat-interval must be >0 (set to 0ms)",
    );
    invalid(&["--log-level=loud"], "unknown log level \"loud\"");
    invalid(
        &["--auto-compaction-mode=Periodic"],
        "unknown auto-compaction-mode \"Periodic\"",
    );
    invalid(
        &["--auto-compaction-retention=-1"],
        "error parsing CompactionRetention: time: missing unit in duration \"-1\"",
    );
    invalid(
        &["--auto-compaction-retention=-2h"],
        "--auto-compaction-retention \"-2h\" is negative",
    );
    invalid(
        &[
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=1h",
        ],
        "revision mode takes a number of revisions",
    );
    invalid(
        &["--initial-cluster=a=http://x:1,b=http://y:2"],
        "couldn't find local name \"default\" in the initial cluster configuration",
    );
    invalid(
        &["--initial-cluster=default=http://127.0.0.1:1"],
        "--initial-cluster has default=http://127.0.0.1:1 but missing from --initial-advertise-peer-urls=http://localhost:2380",
    );
    invalid(
        &["--initial-cluster=default=http://localhost:2380,b=http://localhost:2380"],
        "has duplicate url",
    );
    invalid(
        &["--initial-cluster=default"],
        "URL scheme must be http, https, unix, or unixs: ",
    );
    invalid(
        &["--initial-cluster= default=http://localhost:2380"],
        "couldn't find local name \"default\"",
    );
    invalid(
        &["--tls-min-version=TLS1.3", "--tls-max-version=TLS1.2"],
        "min version (TLS1.3) is greater than max version (TLS1.2)",
    );
    invalid(
        &[
            "--tls-min-version=TLS1.3",
            "--cipher-suites=TLS_AES_128_GCM_SHA256",
        ],
        "cipher suites cannot be configured",
    );
    invalid(
        &["--cipher-suites=bogus"],
        "unexpected TLS cipher suite \"bogus\"",
    );
    invalid(
        &["--log-outputs=default,stderr"],
        "multi logoutput for \"default\" is not supported yet",
    );
    invalid(
        &["--experimental-enable-lease-checkpoint-persist"],
        "requires experimental-enable-lease-checkpoint",
    );
    // What etcd accepts.
    assert_eq!(ok(&["--max-txn-ops=0"]).max_txn_ops, 0);
    assert_eq!(
        ok(&["--initial-cluster=default=http://localhost:2380,,"])
            .initial_cluster_members()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        ok(&["--name=n1"]).initial_cluster,
        "n1=http://localhost:2380"
    );
    let joining = ok(&[
        "--initial-cluster-state=existing",
        "--initial-cluster=default=http://10.0.0.1:2380",
    ]);
    assert_eq!(joining.initial_cluster_state, "existing");
    let two = ok(&[
        "--initial-cluster=default=http://localhost:2380,default=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls=http://127.0.0.1:2380,http://localhost:2380",
    ]);
    assert_eq!(two.initial_cluster_members().unwrap()[0].1.len(), 2);
    let p = run(
        &["--cert-file=/c", "--key-file=/k", "--client-cert-auth"],
        &[],
    )
    .unwrap();
    assert!(p.notices.iter().any(|n| {
        n.message
            .starts_with("scheme is HTTP while key and cert files are present")
    }));
}

// Goal: refusals name the flag and how it was given, and pass etcd's default through.
#[test]
fn refusals_name_the_flag() {
    let e = err(&["--discovery=https://discovery.etcd.io/x"], &[]);
    assert_eq!(
        e.to_string(),
        "retcd does not support --discovery (etcd's v2 discovery service) yet: given on the command line; only an empty value is accepted"
    );
    let e = err(&[], &[("ETCD_ENABLE_V2", "true")]);
    assert_eq!(
        e.to_string(),
        "retcd does not support --enable-v2 (etcd's v2 API) yet: given as ETCD_ENABLE_V2; only etcd's default (false) is accepted"
    );
    for fine in [
        "--enable-v2=false",
        "--proxy=off",
        "--enable-grpc-gateway=true",
        "--logger=zap",
        "--auto-compaction-retention=0",
        "--auto-compaction-retention=0s",
        "--raft-read-timeout=1s",
        "--experimental-compaction-batch-limit=1000",
    ] {
        ok(&[fine]);
    }
    assert!(
        err(&["gateway", "start"], &[])
            .to_string()
            .contains("`etcd gateway`")
    );
}

// Goal: the JSON gateway's access flags take effect: `--cors` origins (URLs, `*` for
// any) and `--host-whitelist` hosts.
#[test]
fn gateway_access_flags() {
    let c = ok(&[
        "--cors=http://a.example:8080,http://b.example:9000",
        "--host-whitelist=a.example,localhost",
    ]);
    assert_eq!(
        c.cors,
        ["http://a.example:8080", "http://b.example:9000"].map(String::from)
    );
    assert_eq!(
        c.host_whitelist,
        ["a.example", "localhost"].map(String::from)
    );
    let c = ok(&["--cors=*", "--host-whitelist=*"]);
    assert_eq!(
        (c.cors.as_slice(), c.host_whitelist.as_slice()),
        (&["*".to_string()][..], &["*".to_string()][..])
    );
    assert!(!ok(&["--enable-grpc-gateway=false"]).enable_grpc_gateway);
}

// Goal: the auth flags that have landed take effect, and a bcrypt cost outside 4..=31
// falls back to etcd's default with a warning, as etcd's auth store does.
#[test]
fn auth_flags() {
    let c = ok(&["--auth-token-ttl=60", "--bcrypt-cost=12"]);
    assert_eq!((c.auth_token_ttl, c.bcrypt_cost), (60, 12));
    let spec = "jwt,pub-key=/p,priv-key=/k,sign-method=RS256,ttl=10m";
    assert_eq!(ok(&[&format!("--auth-token={spec}")]).auth_token, spec);
    for bad in ["--bcrypt-cost=3", "--bcrypt-cost=32"] {
        assert_eq!(ok(&[bad]).bcrypt_cost, 10, "{bad}");
    }
}
