//! Command-line flags and `ETCD_*` environment variables, with etcd's names and defaults.
//!
//! A flag given on the command line wins over its environment variable, which wins over
//! the default, as in etcd. Go's flag package also accepts a single leading dash
//! (`-name x`), and etcd's users and scripts rely on it, so [`Config::parse_from_args`]
//! accepts both spellings. Flags etcd has and retcd does not implement yet are refused
//! with an error that names them, rather than silently ignored: an operator who asked for
//! TLS or auto-compaction must not get a server without it.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// The API version retcd reports on `/version` and in `StatusResponse.version`: retcd
/// speaks etcd 3.5's API.
pub const SERVER_VERSION: &str = "3.5.17";
/// The cluster version on `/version`.
pub const CLUSTER_VERSION: &str = "3.5.0";
/// etcd's backend quota when `--quota-backend-bytes` is 0: 2 GiB.
const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// etcd flags retcd does not implement yet. Giving one is an error that names it.
const UNSUPPORTED_FLAGS: &[&str] = &[
    "config-file",
    "auto-compaction-mode",
    "auto-compaction-retention",
    "cert-file",
    "key-file",
    "client-cert-auth",
    "client-crl-file",
    "trusted-ca-file",
    "auto-tls",
    "peer-cert-file",
    "peer-key-file",
    "peer-client-cert-auth",
    "peer-trusted-ca-file",
    "peer-auto-tls",
    "discovery",
    "discovery-srv",
    "discovery-fallback",
    "discovery-proxy",
    "proxy",
    "enable-v2",
    "enable-pprof",
    "listen-metrics-urls",
    "listen-client-http-urls",
    "wal-dir",
    "max-snapshots",
    "max-wals",
    "auth-token",
    "cors",
    "force-new-cluster",
    "strict-reconfig-check",
];

/// What a retcd member is told at start: etcd's flags (`--name`, ...) or their `ETCD_*`
/// environment variables.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "retcd",
    version = SERVER_VERSION,
    about = "An etcd-compatible key-value store",
    disable_help_subcommand = true
)]
pub struct Config {
    /// Human-readable name of this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,

    /// Path to the data directory; default `${name}.etcd`.
    #[arg(long = "data-dir", env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// URLs to listen on for client traffic (gRPC and HTTP on the same port).
    #[arg(
        long = "listen-client-urls",
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379",
        value_delimiter = ','
    )]
    pub listen_client_urls: Vec<String>,

    /// This member's client URLs to advertise to the rest of the cluster.
    #[arg(
        long = "advertise-client-urls",
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379",
        value_delimiter = ','
    )]
    pub advertise_client_urls: Vec<String>,

    /// URLs to listen on for peer traffic (the member-to-member protocol).
    #[arg(
        long = "listen-peer-urls",
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380",
        value_delimiter = ','
    )]
    pub listen_peer_urls: Vec<String>,

    /// This member's peer URLs to advertise; they determine the member id.
    #[arg(
        long = "initial-advertise-peer-urls",
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380",
        value_delimiter = ','
    )]
    pub initial_advertise_peer_urls: Vec<String>,

    /// Initial cluster configuration for bootstrapping (`name=url,...`); default
    /// `${name}=${initial-advertise-peer-urls}`.
    #[arg(long = "initial-cluster", env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// `new` to bootstrap a new cluster; `existing` to join a running one that already
    /// added this member (`member add`).
    #[arg(
        long = "initial-cluster-state",
        env = "ETCD_INITIAL_CLUSTER_STATE",
        default_value = "new"
    )]
    pub initial_cluster_state: String,

    /// Token that makes member and cluster ids unique per cluster.
    #[arg(
        long = "initial-cluster-token",
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,

    /// Applied entries between two Raft snapshots (after which the log is compacted).
    #[arg(
        long = "snapshot-count",
        env = "ETCD_SNAPSHOT_COUNT",
        default_value_t = 100_000
    )]
    pub snapshot_count: u64,

    /// Time (in milliseconds) of a heartbeat interval: one Raft tick.
    #[arg(
        long = "heartbeat-interval",
        env = "ETCD_HEARTBEAT_INTERVAL",
        default_value_t = 100
    )]
    pub heartbeat_interval_ms: u64,

    /// Time (in milliseconds) for an election to time out.
    #[arg(
        long = "election-timeout",
        env = "ETCD_ELECTION_TIMEOUT",
        default_value_t = 1000
    )]
    pub election_timeout_ms: u64,

    /// Raise the NOSPACE alarm when the backend size would reach this (0 = etcd's 2 GiB);
    /// writes that grow the store are then refused until the alarm is disarmed.
    #[arg(
        long = "quota-backend-bytes",
        env = "ETCD_QUOTA_BACKEND_BYTES",
        default_value_t = 0
    )]
    pub quota_backend_bytes: u64,

    /// Largest client request the server accepts, in bytes.
    #[arg(
        long = "max-request-bytes",
        env = "ETCD_MAX_REQUEST_BYTES",
        default_value_t = 1_572_864
    )]
    pub max_request_bytes: u64,

    /// Most operations in one transaction (per branch, nested ones included).
    #[arg(long = "max-txn-ops", env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: u64,

    /// Log level: debug, info, warn, error, panic or fatal.
    #[arg(long = "log-level", env = "ETCD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Logger kind; only etcd 3.5's `zap` (structured logs to stderr) is accepted.
    #[arg(long, env = "ETCD_LOGGER", default_value = "zap")]
    pub logger: String,

    /// Pre-vote before an election, so a rejoining member cannot disrupt a healthy
    /// leader (etcd 3.5's default: true).
    #[arg(
        long = "pre-vote",
        env = "ETCD_PRE_VOTE",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub pre_vote: bool,

    /// Period of the progress notifications sent to watchers that asked for them, as a Go
    /// duration (`10m0s`, `500ms`); at least 100ms.
    #[arg(
        long = "experimental-watch-progress-notify-interval",
        env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m0s",
        value_parser = parse_go_duration
    )]
    pub watch_progress_notify_interval: Duration,
}

/// Experimental flags retcd implements (every other `--experimental-*` is refused).
const SUPPORTED_EXPERIMENTAL_FLAGS: &[&str] = &["experimental-watch-progress-notify-interval"];

/// Parses a Go `time.Duration` string: a sequence of decimal numbers with units `h`, `m`,
/// `s`, `ms`, `us`/`µs`, `ns` (`1h30m`, `1.5s`, `100ms`), or `0`. Negative durations are
/// refused.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("time: invalid duration {s:?}");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("time: missing unit in duration {s:?}"))?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per = match &rest[..unit_len] {
            "h" => 3_600e9,
            "m" => 60e9,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            unit => return Err(format!("time: unknown unit {unit:?} in duration {s:?}")),
        };
        rest = &rest[unit_len..];
        total += value * nanos_per;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(Duration::from_nanos(total as u64))
}

/// A configuration that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("retcd does not support the etcd flag --{0} yet")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Clap(#[from] clap::Error),
}

/// A listen URL, resolved into what to bind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenUrl {
    pub url: String,
    /// `host:port`, with the host not yet resolved.
    pub host_port: String,
}

impl Config {
    /// Parses `args` (the first is the program name) and the process environment.
    pub fn parse_from_args<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString>,
    {
        let args: Vec<std::ffi::OsString> = args
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                let a: std::ffi::OsString = a.into();
                if i == 0 { a } else { normalize_dash(a) }
            })
            .collect();
        for a in args.iter().skip(1) {
            let Some(s) = a.to_str() else { continue };
            let Some(flag) = s.strip_prefix("--") else {
                continue;
            };
            let name = flag.split('=').next().unwrap_or(flag);
            if UNSUPPORTED_FLAGS.contains(&name)
                || (name.starts_with("experimental-")
                    && !SUPPORTED_EXPERIMENTAL_FLAGS.contains(&name))
                || name.starts_with("peer-")
            {
                return Err(ConfigError::Unsupported(name.to_string()));
            }
        }
        let config = Config::try_parse_from(args)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values, with etcd's rules where etcd has one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |s: String| Err(ConfigError::Invalid(s));
        if self.heartbeat_interval_ms == 0 {
            return invalid("--heartbeat-interval must be greater than 0".into());
        }
        if self.election_timeout_ms < 5 * self.heartbeat_interval_ms {
            return invalid(format!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout_ms, self.heartbeat_interval_ms
            ));
        }
        if self.election_timeout_ms > 50_000 {
            return invalid(format!(
                "--election-timeout[{}ms] is too long, and should be set less than 50000ms",
                self.election_timeout_ms
            ));
        }
        if self.max_txn_ops == 0 {
            return invalid("--max-txn-ops must be greater than 0".into());
        }
        if self.max_request_bytes == 0 || self.max_request_bytes > i32::MAX as u64 {
            return invalid(format!(
                "--max-request-bytes {} is out of range",
                self.max_request_bytes
            ));
        }
        if self.snapshot_count == 0 {
            return invalid("--snapshot-count must be greater than 0".into());
        }
        if self.logger != "zap" {
            return invalid(format!("unknown logger option {:?}", self.logger));
        }
        if self.log_filter().is_none() {
            return invalid(format!("unknown log level {:?}", self.log_level));
        }
        match self.initial_cluster_state.as_str() {
            "new" | "existing" => {}
            other => {
                return invalid(format!(
                    "invalid value {other:?} for --initial-cluster-state (want \"new\" or \"existing\")"
                ));
            }
        }
        for url in &self.listen_client_urls {
            parse_listen_url(url)?;
        }
        for url in &self.listen_peer_urls {
            parse_listen_url(url)?;
        }
        let members = self.initial_cluster_members()?;
        let Some((name, urls)) = members.iter().find(|(n, _)| n == &self.name) else {
            return invalid(format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                self.name
            ));
        };
        let mut mine = self.initial_advertise_peer_urls.clone();
        let mut theirs = urls.clone();
        mine.sort();
        theirs.sort();
        if mine != theirs {
            return invalid(format!(
                "--initial-cluster has {name}={} but --initial-advertise-peer-urls has {}",
                theirs.join(","),
                mine.join(",")
            ));
        }
        Ok(())
    }

    /// The data directory: `--data-dir`, or `${name}.etcd`.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name)))
    }

    /// Members of `--initial-cluster` as (name, peer URLs), in the order given.
    pub fn initial_cluster_members(&self) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
        let spec = match &self.initial_cluster {
            Some(s) if !s.is_empty() => s.clone(),
            _ => self
                .initial_advertise_peer_urls
                .iter()
                .map(|u| format!("{}={u}", self.name))
                .collect::<Vec<_>>()
                .join(","),
        };
        let mut members: Vec<(String, Vec<String>)> = Vec::new();
        for part in spec.split(',') {
            let Some((name, url)) = part.split_once('=') else {
                return Err(ConfigError::Invalid(format!(
                    "--initial-cluster entry {part:?} is not name=url"
                )));
            };
            match members.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(url.to_string()),
                None => members.push((name.to_string(), vec![url.to_string()])),
            }
        }
        Ok(members)
    }

    /// `--listen-client-urls`, parsed.
    pub fn peer_listen_urls(&self) -> Result<Vec<ListenUrl>, ConfigError> {
        self.listen_peer_urls
            .iter()
            .map(|u| parse_listen_url(u))
            .collect()
    }

    pub fn client_listen_urls(&self) -> Result<Vec<ListenUrl>, ConfigError> {
        self.listen_client_urls
            .iter()
            .map(|u| parse_listen_url(u))
            .collect()
    }

    /// Raft ticks per election timeout (etcd: election-timeout / heartbeat-interval).
    pub fn election_ticks(&self) -> u64 {
        (self.election_timeout_ms / self.heartbeat_interval_ms).max(2)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// `--quota-backend-bytes` with etcd's default (2 GiB) in place of 0.
    pub fn backend_quota(&self) -> u64 {
        if self.quota_backend_bytes == 0 {
            DEFAULT_QUOTA_BACKEND_BYTES
        } else {
            self.quota_backend_bytes
        }
    }

    /// How long a client request may wait for its answer (etcd: 5 s plus two election
    /// timeouts) before it fails with "request timed out".
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(5) + 2 * Duration::from_millis(self.election_timeout_ms)
    }

    /// The `tracing` filter for `--log-level`.
    pub fn log_filter(&self) -> Option<&'static str> {
        match self.log_level.as_str() {
            "debug" => Some("debug"),
            "info" => Some("info"),
            "warn" => Some("warn"),
            "error" | "dpanic" | "panic" | "fatal" => Some("error"),
            _ => None,
        }
    }
}

/// Go's flag package takes `-flag` like `--flag`.
fn normalize_dash(a: std::ffi::OsString) -> std::ffi::OsString {
    match a.to_str() {
        Some(s) if s.len() > 2 && s.starts_with('-') && !s.starts_with("--") => {
            format!("-{s}").into()
        }
        _ => a,
    }
}

fn parse_listen_url(url: &str) -> Result<ListenUrl, ConfigError> {
    let invalid = |why: &str| ConfigError::Invalid(format!("listen URL {url:?}: {why}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("missing scheme"))?;
    match scheme {
        "http" => {}
        "https" | "unixs" => return Err(ConfigError::Unsupported(format!("TLS listener {url}"))),
        "unix" => {
            return Err(ConfigError::Unsupported(format!(
                "unix socket listener {url}"
            )));
        }
        _ => return Err(invalid("scheme must be http")),
    }
    let host_port = rest.trim_end_matches('/');
    if host_port.contains('/') {
        return Err(invalid("a listen URL must not have a path"));
    }
    let Some((host, port)) = host_port.rsplit_once(':') else {
        return Err(invalid("missing port"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(invalid("want http://host:port"));
    }
    Ok(ListenUrl {
        url: url.to_string(),
        host_port: host_port.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        Config::parse_from_args(std::iter::once("retcd").chain(args.iter().copied()))
    }

    // Goal: Go duration syntax as etcd's flags take it, and the experimental flag we
    // implement is accepted while the others stay refused.
    #[test]
    fn go_durations_and_the_progress_notify_flag() {
        let ok = |s: &str| parse_go_duration(s).unwrap();
        assert_eq!(ok("10m0s"), Duration::from_secs(600));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("100ms"), Duration::from_millis(100));
        assert_eq!(ok("250us"), Duration::from_micros(250));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        for bad in ["", "10", "s", "1x", "-1s", "1..2s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} should be refused");
        }
        let c = parse(&[]).unwrap();
        assert_eq!(c.watch_progress_notify_interval, Duration::from_secs(600));
        let c = parse(&["--experimental-watch-progress-notify-interval", "200ms"]).unwrap();
        assert_eq!(c.watch_progress_notify_interval, Duration::from_millis(200));
        assert!(matches!(
            parse(&["--experimental-initial-corrupt-check"]),
            Err(ConfigError::Unsupported(_))
        ));
    }

    // Goal: with no flags, every value is etcd's default (the environment of the test
    // process sets no ETCD_* variable).
    #[test]
    fn defaults_are_etcds() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir(), PathBuf::from("default.etcd"));
        assert_eq!(c.listen_client_urls, vec!["http://localhost:2379"]);
        assert_eq!(c.advertise_client_urls, vec!["http://localhost:2379"]);
        assert_eq!(c.initial_advertise_peer_urls, vec!["http://localhost:2380"]);
        assert_eq!(c.initial_cluster_token, "etcd-cluster");
        assert_eq!(c.max_request_bytes, 1_572_864);
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(c.snapshot_count, 100_000);
        assert_eq!(c.heartbeat_interval_ms, 100);
        assert_eq!(c.election_timeout_ms, 1000);
        assert_eq!(c.election_ticks(), 10);
        assert_eq!(c.log_level, "info");
        assert_eq!(
            c.initial_cluster_members().unwrap(),
            vec![(
                "default".to_string(),
                vec!["http://localhost:2380".to_string()]
            )]
        );
        assert_eq!(
            c.client_listen_urls().unwrap(),
            vec![ListenUrl {
                url: "http://localhost:2379".into(),
                host_port: "localhost:2379".into()
            }]
        );
    }

    // Goal: both Go-style single-dash flags and `--flag=value` work; the data dir follows
    // the name.
    #[test]
    fn flags_in_both_spellings() {
        let c = parse(&[
            "-name",
            "n1",
            "--listen-client-urls=http://127.0.0.1:1,http://127.0.0.1:2",
            "--max-txn-ops",
            "7",
        ])
        .unwrap();
        assert_eq!(c.name, "n1");
        assert_eq!(c.data_dir(), PathBuf::from("n1.etcd"));
        assert_eq!(c.listen_client_urls.len(), 2);
        assert_eq!(c.max_txn_ops, 7);
        assert_eq!(c.initial_cluster_members().unwrap()[0].0, "n1");
    }

    // Goal: etcd flags retcd lacks are refused by name, unknown flags are refused, and
    // etcd's own validation rules apply.
    #[test]
    fn unsupported_and_invalid_flags_are_errors() {
        let e = parse(&["--auto-compaction-retention", "1"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "retcd does not support the etcd flag --auto-compaction-retention yet"
        );
        assert!(matches!(
            parse(&["--cert-file=x"]),
            Err(ConfigError::Unsupported(_))
        ));
        assert!(matches!(
            parse(&["--no-such-flag"]),
            Err(ConfigError::Clap(_))
        ));
        let e = parse(&["--election-timeout", "300"]).unwrap_err();
        assert!(e.to_string().contains("at least as 5 times"), "{e}");
        assert!(parse(&["--log-level", "loud"]).is_err());
        assert!(parse(&["--listen-client-urls", "https://127.0.0.1:1"]).is_err());
        assert!(parse(&["--listen-client-urls", "http://127.0.0.1"]).is_err());
        // The local name must be in the initial cluster.
        assert!(parse(&["--initial-cluster", "a=http://x:1,b=http://y:2"]).is_err());
        assert!(parse(&["--initial-cluster-state", "bogus"]).is_err());
    }

    // Goal: a member of a three-member cluster, new or joining, parses.
    #[test]
    fn cluster_flags() {
        let args = [
            "--name",
            "b",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2",
            "--initial-cluster",
            "a=http://127.0.0.1:1,b=http://127.0.0.1:2,c=http://127.0.0.1:3",
        ];
        let c = parse(&args).unwrap();
        assert_eq!(c.initial_cluster_members().unwrap().len(), 3);
        let mut joining = args.to_vec();
        joining.extend(["--initial-cluster-state", "existing"]);
        assert_eq!(parse(&joining).unwrap().initial_cluster_state, "existing");
        assert!(c.pre_vote);
        let mut no_pre_vote = args.to_vec();
        no_pre_vote.push("--pre-vote=false");
        assert!(!parse(&no_pre_vote).unwrap().pre_vote);
        let mut wrong_url = args.to_vec();
        wrong_url[3] = "http://127.0.0.1:9";
        assert!(parse(&wrong_url).is_err());
    }
}
