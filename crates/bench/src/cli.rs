//! The command line, modelled on etcd's `tools/benchmark`: the same global
//! flags (`--endpoints`, `--conns`, `--clients`, `--total`, `--key-size`,
//! `--val-size`, `--key-space-size`, `--sequential-keys`) and one subcommand
//! per workload. Global flags may stand before or after the subcommand.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::BenchError;

/// `retcd-bench [GLOBAL FLAGS] <put|range|txn-put|watch|lease|lease-keepalive> [FLAGS]`
#[derive(Debug, Clone, Parser)]
#[command(
    name = "retcd-bench",
    version,
    about = "Load generator for any etcd v3 endpoint (retcd or etcd)"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags shared by every workload.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// gRPC endpoints, comma-separated, as host:port, http://host:port or
    /// https://host:port. A bare host:port is plaintext, or TLS when
    /// --cacert, --cert or --key is given (as with etcd's benchmark).
    /// Connections are spread over them round-robin.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,

    /// Number of gRPC connections (one HTTP/2 connection each).
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,

    /// Number of concurrent clients; each issues requests back to back and
    /// client i uses connection i % conns.
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,

    /// Number of measured requests (for `watch`: number of puts; for
    /// `lease`: number of grant/put/revoke cycles).
    #[arg(long, global = true, default_value_t = 10_000)]
    pub total: u64,

    /// Key size in bytes, `--key-prefix` included.
    #[arg(long, global = true, default_value_t = 8)]
    pub key_size: usize,

    /// Value size in bytes.
    #[arg(long, global = true, default_value_t = 8)]
    pub val_size: usize,

    /// Number of distinct keys written.
    #[arg(long, global = true, default_value_t = 1)]
    pub key_space_size: u64,

    /// Write keys in order (request i writes key i % key-space-size) instead
    /// of at seeded pseudo-random positions.
    #[arg(long, global = true)]
    pub sequential_keys: bool,

    /// Prefix of every written key, so a run can be ranged over or deleted.
    #[arg(long, global = true, default_value = "")]
    pub key_prefix: String,

    /// Seed of the key and value generator; the same seed writes the same
    /// keys in the same request order.
    #[arg(long, global = true, default_value_t = 1)]
    pub seed: u64,

    /// Requests issued before the measured ones and not counted (ignored by
    /// `watch`).
    #[arg(long, global = true, default_value_t = 0)]
    pub warmup: u64,

    /// Print the result as one JSON object instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// Tokio worker threads.
    #[arg(long, global = true, default_value_t = 2)]
    pub threads: usize,

    /// PEM file of the CA that verifies the server's certificate. Required
    /// for every TLS endpoint: retcd-bench does not use the system's roots.
    /// The server name checked is the endpoint's host (an IP address or a
    /// DNS name).
    #[arg(long, global = true, value_name = "FILE")]
    pub cacert: Option<PathBuf>,

    /// PEM file of the client certificate presented to the server (with
    /// --key), for servers started with --client-cert-auth.
    #[arg(
        long = "cert",
        global = true,
        value_name = "FILE",
        requires = "key_file"
    )]
    pub cert_file: Option<PathBuf>,

    /// PEM file of the private key of --cert.
    // Not `key`: that is range's positional KEY, and global flags share ids with it.
    #[arg(
        long = "key",
        global = true,
        value_name = "FILE",
        requires = "cert_file"
    )]
    pub key_file: Option<PathBuf>,

    /// Log in as NAME:PASSWORD first; every request then carries the token (a
    /// server with auth on).
    #[arg(long, global = true, value_name = "NAME:PASSWORD")]
    pub user: Option<String>,

    /// Time allowed to establish each connection (e.g. 500ms, 5s, 1m).
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub dial_timeout: Duration,

    /// A request without an answer in this time counts as a
    /// DeadlineExceeded error; a watch stream idle this long stops waiting.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
}

impl GlobalArgs {
    /// Whether any of --cacert, --cert and --key was given: bare host:port
    /// endpoints then use TLS.
    pub fn tls_flags(&self) -> bool {
        self.cacert.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
}

/// The workloads.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Put one key per request.
    Put,
    /// Range over a key, a [key, end) interval or a prefix.
    Range(RangeArgs),
    /// A Txn per request: compare on the first key, then put --txn-ops keys.
    TxnPut(TxnPutArgs),
    /// N watchers on a prefix while --total puts run at full speed: event
    /// throughput and latency from put sent to event received.
    Watch(WatchArgs),
    /// Cycles of LeaseGrant, Put with the lease, LeaseRevoke.
    Lease(LeaseArgs),
    /// N leases kept alive over LeaseKeepAlive streams, one per client.
    LeaseKeepalive(LeaseKeepaliveArgs),
    /// Authenticate with --user's credentials, one login per request (a server with
    /// auth on; bcrypt makes each login cost the server milliseconds of CPU).
    Authenticate,
    /// Read one whole Maintenance.Snapshot stream per request and throw it away
    /// (set --request-timeout above the time a whole snapshot takes).
    Snapshot,
}

impl Command {
    /// The subcommand's name as typed on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Put => "put",
            Command::Range(_) => "range",
            Command::TxnPut(_) => "txn-put",
            Command::Watch(_) => "watch",
            Command::Lease(_) => "lease",
            Command::LeaseKeepalive(_) => "lease-keepalive",
            Command::Authenticate => "authenticate",
            Command::Snapshot => "snapshot",
        }
    }
}

/// `range <KEY> [END] [--prefix] [--consistency l|s]`
#[derive(Debug, Clone, Args)]
pub struct RangeArgs {
    /// The key, or the start of the interval.
    pub key: String,
    /// End of the interval, exclusive.
    pub end: Option<String>,
    /// Range over every key that starts with KEY.
    #[arg(long, conflicts_with = "end")]
    pub prefix: bool,
    /// l: linearizable (a quorum read), s: serializable (local read).
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
}

/// The two read guarantees of etcd's Range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    #[value(name = "l", alias = "linearizable")]
    Linearizable,
    #[value(name = "s", alias = "serializable")]
    Serializable,
}

/// `txn-put [--txn-ops N]`
#[derive(Debug, Clone, Args)]
pub struct TxnPutArgs {
    /// Puts in each Txn's success branch, on consecutive keys.
    #[arg(long, default_value_t = 1)]
    pub txn_ops: usize,
}

/// `watch [--watchers N] [--streams S] [--prefix P]`
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Watchers, all on the same prefix, spread evenly over the streams.
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// Watch streams (bidirectional gRPC streams), spread over connections.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// The watched prefix; put i writes <prefix><i>.
    #[arg(long, default_value = "bench-watch/")]
    pub prefix: String,
}

/// `lease [--ttl SECONDS]`
#[derive(Debug, Clone, Args)]
pub struct LeaseArgs {
    /// TTL of each granted lease, in seconds.
    #[arg(long = "ttl", default_value_t = 60)]
    pub ttl_secs: i64,
}

/// `lease-keepalive [--leases N] [--ttl SECONDS]`
#[derive(Debug, Clone, Args)]
pub struct LeaseKeepaliveArgs {
    /// Leases kept alive (default: one per client); must be >= --clients.
    #[arg(long)]
    pub leases: Option<usize>,
    /// TTL of each granted lease, in seconds.
    #[arg(long = "ttl", default_value_t = 60)]
    pub ttl_secs: i64,
}

impl Cli {
    /// Rejects flag values no workload can run with, before any connection
    /// is opened.
    pub fn validate(&self) -> Result<(), BenchError> {
        let g = &self.global;
        let invalid = |msg: String| Err(BenchError::InvalidArgument(msg));
        if g.endpoints.is_empty() || g.endpoints.iter().any(|e| e.trim().is_empty()) {
            return invalid("--endpoints must name at least one endpoint".into());
        }
        let tls_flags = g.tls_flags();
        let mut any_tls = false;
        for endpoint in &g.endpoints {
            let uri = crate::conn::endpoint_uri(endpoint, tls_flags)?;
            if crate::conn::is_tls(&uri) {
                any_tls = true;
                if g.cacert.is_none() {
                    return invalid(format!(
                        "TLS endpoint {uri} needs --cacert (the CA that signed the \
                         server's certificate); retcd-bench does not use the system's roots"
                    ));
                }
            }
        }
        if tls_flags && !any_tls {
            return invalid(
                "--cacert, --cert and --key need a TLS endpoint, but every endpoint \
                 is http://"
                    .into(),
            );
        }
        if g.conns == 0 || g.clients == 0 || g.total == 0 || g.threads == 0 {
            return invalid("--conns, --clients, --total and --threads must be > 0".into());
        }
        if g.key_space_size == 0 {
            return invalid("--key-space-size must be > 0".into());
        }
        match &self.command {
            Command::Put
            | Command::Range(_)
            | Command::Lease(_)
            | Command::Authenticate
            | Command::Snapshot => {}
            Command::TxnPut(a) => {
                if a.txn_ops == 0 {
                    return invalid("--txn-ops must be > 0".into());
                }
                // Keys of one Txn must be distinct or etcd rejects it.
                if a.txn_ops as u64 > g.key_space_size {
                    return invalid(format!(
                        "--txn-ops {} needs --key-space-size >= {}",
                        a.txn_ops, a.txn_ops
                    ));
                }
            }
            Command::Watch(a) => {
                if a.watchers == 0 || a.streams == 0 || a.streams > a.watchers {
                    return invalid("watch needs 0 < --streams <= --watchers".into());
                }
                if a.prefix.is_empty() {
                    return invalid("watch needs a non-empty --prefix".into());
                }
            }
            Command::LeaseKeepalive(a) => {
                if a.leases.unwrap_or(g.clients) < g.clients {
                    return invalid("lease-keepalive needs --leases >= --clients".into());
                }
            }
        }
        if let Command::Lease(LeaseArgs { ttl_secs })
        | Command::LeaseKeepalive(LeaseKeepaliveArgs { ttl_secs, .. }) = &self.command
            && *ttl_secs <= 0
        {
            return invalid("--ttl must be > 0 seconds".into());
        }
        // Key generation checks --key-size against the key space.
        if !matches!(self.command, Command::Watch(_) | Command::Range(_)) {
            crate::keys::KeyGen::new(
                g.key_prefix.as_bytes(),
                g.key_size,
                g.key_space_size,
                g.sequential_keys,
                g.seed,
            )?;
        }
        Ok(())
    }
}

/// Parses `250ms`, `5s`, `2m` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else {
        (text, 1_000)
    };
    let value: u64 = number
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 500ms, 5s, 1m"))?;
    Ok(Duration::from_millis(value.saturating_mul(unit_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("retcd-bench").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_follow_etcd_benchmark() {
        let cli = parse(&["put"]).unwrap();
        let g = &cli.global;
        assert_eq!(g.endpoints, vec!["127.0.0.1:2379".to_string()]);
        assert_eq!((g.conns, g.clients, g.total), (1, 1, 10_000));
        assert_eq!((g.key_size, g.val_size, g.key_space_size), (8, 8, 1));
        assert!(!g.sequential_keys && !g.json);
        assert_eq!(g.threads, 2);
        assert_eq!(g.request_timeout, Duration::from_secs(10));
        assert!(matches!(cli.command, Command::Put));
        cli.validate().unwrap();
    }

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        let cli = parse(&[
            "--endpoints",
            "a:1,http://b:2",
            "--conns=4",
            "range",
            "foo",
            "--clients",
            "64",
            "--consistency",
            "s",
            "--prefix",
            "--json",
        ])
        .unwrap();
        assert_eq!(cli.global.endpoints, vec!["a:1", "http://b:2"]);
        assert_eq!((cli.global.conns, cli.global.clients), (4, 64));
        assert!(cli.global.json);
        let Command::Range(r) = &cli.command else {
            panic!("expected range, got {:?}", cli.command)
        };
        assert_eq!(r.key, "foo");
        assert!(r.prefix && r.end.is_none());
        assert_eq!(r.consistency, Consistency::Serializable);
        assert_eq!(cli.command.name(), "range");
    }

    #[test]
    fn consistency_accepts_long_names_and_defaults_to_linearizable() {
        let Command::Range(r) = parse(&["range", "k", "z"]).unwrap().command else {
            panic!("expected range")
        };
        assert_eq!(r.consistency, Consistency::Linearizable);
        assert_eq!(r.end.as_deref(), Some("z"));
        let Command::Range(r) = parse(&["range", "k", "--consistency", "serializable"])
            .unwrap()
            .command
        else {
            panic!("expected range")
        };
        assert_eq!(r.consistency, Consistency::Serializable);
        assert!(parse(&["range", "k", "--consistency", "x"]).is_err());
        assert!(parse(&["range", "k", "z", "--prefix"]).is_err());
        assert!(parse(&["range"]).is_err());
    }

    #[test]
    fn subcommands_parse_their_flags() {
        let cli = parse(&["txn-put", "--txn-ops", "3", "--key-space-size", "3"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::TxnPut(TxnPutArgs { txn_ops: 3 })
        ));
        cli.validate().unwrap();

        let cli = parse(&["watch", "--watchers", "8", "--streams", "2", "--total", "5"]).unwrap();
        let Command::Watch(w) = &cli.command else {
            panic!("expected watch")
        };
        assert_eq!(
            (w.watchers, w.streams, w.prefix.as_str()),
            (8, 2, "bench-watch/")
        );
        cli.validate().unwrap();

        let cli = parse(&["lease", "--ttl", "5"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Lease(LeaseArgs { ttl_secs: 5 })
        ));
        let cli = parse(&["lease-keepalive", "--leases", "10", "--clients", "4"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::LeaseKeepalive(LeaseKeepaliveArgs {
                leases: Some(10),
                ttl_secs: 60
            })
        ));
        cli.validate().unwrap();
        assert!(parse(&["nope"]).is_err());
    }

    #[test]
    fn validate_rejects_impossible_combinations() {
        for args in [
            &["put", "--clients", "0"][..],
            &["put", "--total", "0"],
            &["put", "--key-space-size", "0"],
            &["put", "--endpoints", ""],
            // 1000 keys need 3 digits; a 2-byte key cannot hold them.
            &["put", "--key-size", "2", "--key-space-size", "1000"],
            &["txn-put", "--txn-ops", "2"],
            &["watch", "--watchers", "2", "--streams", "3"],
            &["lease", "--ttl", "0"],
            &["lease-keepalive", "--clients", "4", "--leases", "2"],
        ] {
            let cli = parse(args).unwrap();
            assert!(
                matches!(cli.validate(), Err(BenchError::InvalidArgument(_))),
                "{args:?} should be rejected"
            );
        }
    }

    #[test]
    fn tls_flags_parse_and_make_bare_endpoints_tls() {
        let cli = parse(&[
            "--endpoints",
            "127.0.0.1:2379",
            "--cacert",
            "ca.pem",
            "put",
            "--cert",
            "client.pem",
            "--key",
            "client-key.pem",
        ])
        .unwrap();
        let g = &cli.global;
        assert_eq!(g.cacert.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert_eq!(
            g.cert_file.as_deref(),
            Some(std::path::Path::new("client.pem"))
        );
        assert_eq!(
            g.key_file.as_deref(),
            Some(std::path::Path::new("client-key.pem"))
        );
        assert!(g.tls_flags());
        cli.validate().unwrap();
        assert!(!parse(&["put"]).unwrap().global.tls_flags());
        // --cacert alone (no client certificate) and an explicit https:// are fine.
        parse(&["--endpoints", "https://a:1", "--cacert", "ca.pem", "put"])
            .unwrap()
            .validate()
            .unwrap();
        // --key is not range's KEY.
        let cli = parse(&["range", "k", "--cacert", "c", "--cert", "x", "--key", "y"]).unwrap();
        let Command::Range(r) = &cli.command else {
            panic!("expected range")
        };
        assert_eq!(r.key, "k");
        assert_eq!(
            cli.global.key_file.as_deref(),
            Some(std::path::Path::new("y"))
        );
        // --cert and --key only together.
        assert!(parse(&["--cacert", "c", "--cert", "x", "put"]).is_err());
        assert!(parse(&["--cacert", "c", "--key", "x", "put"]).is_err());
    }

    // Goal: an https endpoint without --cacert is a clear error before any connection
    // (retcd-bench has no system roots), and TLS flags with only http:// endpoints are
    // not silently ignored.
    #[test]
    fn tls_needs_cacert_and_a_tls_endpoint() {
        for args in [
            &["--endpoints", "https://127.0.0.1:2379", "put"][..],
            &["--endpoints", "127.0.0.1:1,https://127.0.0.1:2", "put"],
            &["--cert", "c.pem", "--key", "k.pem", "put"],
        ] {
            let err = parse(args).unwrap().validate().unwrap_err();
            assert!(
                matches!(&err, BenchError::InvalidArgument(m) if m.contains("needs --cacert")),
                "{args:?}: {err}"
            );
        }
        let err = parse(&["--endpoints", "http://a:1", "--cacert", "ca.pem", "put"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            matches!(&err, BenchError::InvalidArgument(m) if m.contains("every endpoint is http://")),
            "{err}"
        );
        let err = parse(&["--endpoints", "ftp://a:1", "put"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(matches!(err, BenchError::InvalidEndpoint { .. }), "{err}");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("").is_err());
    }
}
