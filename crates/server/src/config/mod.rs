//! A member's configuration, read exactly as etcd reads its own.
//!
//! retcd starts wherever etcd is deployed, so it takes etcd's configuration as etcd takes
//! it: the same flags, parsed by the rules of Go's `flag` package (`-x` and `--x`,
//! `--x=v` and `--x v`, bools only as `--x` or `--x=false`, Go's integer and duration
//! syntaxes); then, unless a config file is in use, every `ETCD_*` environment variable
//! (a flag given both ways is fatal, an unknown variable a warning); or, with
//! `--config-file`, etcd's YAML file alone. Syntax errors exit 2 and validation errors
//! exit 1, as etcd's.
//!
//! Every flag of etcd 3.4 and 3.5 (plus the two etcd 3.6 flags current kubeadm passes)
//! is one row of the table in `flags.rs`, and each row says what retcd does with it:
//! - **acted on**: parsed into a typed field of [`Config`];
//! - **accepted**: retcd always behaves as the flag asks, whatever its value (say,
//!   `--experimental-enable-lease-checkpoint`: retcd replicates keep-alives, so leases
//!   keep their remaining TTL across leader changes anyway);
//! - **ignored, as etcd ignores it**: the 15 legacy flags, with etcd 3.4's warning;
//! - **refused**: etcd has it and retcd does not, so any value but etcd's default is an
//!   error that names the flag and how it was given (flag, variable or file key). An
//!   operator who asked for something must never get a server without it.
//!
//! `--help` is generated from the table. Warnings found while parsing (ignored flags,
//! unknown variables, unknown file keys) come back in [`Parsed::notices`], for the
//! caller to log once its logger (whose level is part of the configuration) is set up.
//!
//! Files: `value.rs` (Go's value syntaxes), `flags.rs` (the table, and what applying a
//! value does), `parse.rs` (argv, environment, precedence, `--help`), `yaml.rs` (the
//! config file), `validate.rs` (etcd's checks on the result).

pub mod compaction;
mod flags;
mod parse;
mod validate;
mod value;
mod yaml;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use compaction::Policy;
pub use flags::{Disposition, FLAGS, Flag};
pub use parse::{Command, Parsed, help, load, parse};
pub use value::{parse_go_duration, parse_go_duration_nanos};

/// The API version retcd reports on `/version` and in `StatusResponse.version`: retcd
/// speaks etcd 3.5's API.
pub const SERVER_VERSION: &str = "3.5.17";
/// The cluster version on `/version`.
pub const CLUSTER_VERSION: &str = "3.5.0";
/// etcd's backend quota when `--quota-backend-bytes` is 0: 2 GiB.
const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// etcd's `--initial-cluster` default, rewritten from `--name` when only that is given.
pub const DEFAULT_INITIAL_CLUSTER: &str = "default=http://localhost:2380";

/// One side's TLS settings (client: `--cert-file` ...; peer: `--peer-cert-file` ...).
/// Files are not opened here: a path that does not exist fails at server start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// CA bundle that verifies the other side's certificates.
    pub trusted_ca_file: Option<PathBuf>,
    /// Require and verify the other side's certificate.
    pub client_cert_auth: bool,
    pub crl_file: Option<PathBuf>,
    /// Generate a self-signed certificate in `<data-dir>/fixtures/{client,peer}`.
    pub auto_tls: bool,
    /// Certificate common names allowed (peers only, or the YAML file's client block).
    pub allowed_cn: Vec<String>,
    /// SAN host names a certificate must carry to be allowed.
    pub allowed_hostname: Vec<String>,
    /// The certificate this member presents when it dials (defaults to `cert_file`).
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

/// What a retcd member is told at start, with etcd's defaults (etcd 3.5's where 3.4's
/// differ). Every limit has etcd's default; durations are `Duration`s, counts of
/// milliseconds end in `_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Human-readable name of this member (`--name`).
    pub name: String,
    /// `--data-dir`; `None` means `${name}.etcd`, see [`Config::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// `--wal-dir`: a dedicated WAL directory; `None` means `<data-dir>/member/wal`.
    /// Whether a WAL exists there decides, as in etcd, whether the member restarts.
    pub wal_dir: Option<PathBuf>,
    /// Applied entries between two Raft snapshots (`--snapshot-count`; 0 means 100,000).
    pub snapshot_count: u64,
    /// Raft entries kept in memory behind a snapshot for slow followers
    /// (`--experimental-snapshot-catchup-entries`); one further behind gets a snapshot.
    pub snapshot_catchup_entries: u64,
    /// Snapshot files kept, the newest, after each snapshot (`--max-snapshots`; 0 =
    /// unlimited).
    pub max_snapshots: u64,
    /// WAL segments kept (`--max-wals`; 0 = unlimited): after each snapshot the oldest
    /// are deleted down to this count, but only those the snapshot and the backend's
    /// durable state no longer need.
    pub max_wals: u64,
    /// One Raft tick (`--heartbeat-interval`).
    pub heartbeat_interval_ms: u64,
    /// `--election-timeout`; at least 5 heartbeats, at most 50,000 ms.
    pub election_timeout_ms: u64,
    /// `--quota-backend-bytes`: 0 means etcd's 2 GiB, a negative value no quota at all.
    pub quota_backend_bytes: i64,
    /// Longest a backend commit may stay non-durable (`--backend-batch-interval`; 0 =
    /// 100ms): apply commits every batch, fsyncing at least this often (the WAL holds
    /// the entries meanwhile).
    pub backend_batch_interval: Duration,
    /// Most applied entries between two durable backend commits (`--backend-batch-limit`;
    /// 0 = 10,000). etcd counts the backend's operations, retcd Raft entries.
    pub backend_batch_limit: u64,
    /// Largest client request, in bytes (`--max-request-bytes`).
    pub max_request_bytes: u64,
    /// Most operations in one transaction (`--max-txn-ops`).
    pub max_txn_ops: u64,
    /// gRPC streams per client connection (`--max-concurrent-streams`).
    pub max_concurrent_streams: u32,
    /// Shortest interval a client may ping at (`--grpc-keepalive-min-time`).
    pub grpc_keepalive_min_time: Duration,
    /// Server-to-client ping interval; zero disables (`--grpc-keepalive-interval`).
    pub grpc_keepalive_interval: Duration,
    /// Wait for a ping's answer before closing; zero disables (`--grpc-keepalive-timeout`).
    pub grpc_keepalive_timeout: Duration,
    /// URLs to serve clients on, gRPC and HTTP on one port (`--listen-client-urls`).
    pub listen_client_urls: Vec<String>,
    /// HTTP-only client listeners; with them, `listen_client_urls` serve gRPC only
    /// (`--listen-client-http-urls`).
    pub listen_client_http_urls: Vec<String>,
    /// This member's client URLs as published to the cluster (`--advertise-client-urls`).
    pub advertise_client_urls: Vec<String>,
    /// URLs to serve peers on (`--listen-peer-urls`).
    pub listen_peer_urls: Vec<String>,
    /// This member's peer URLs; they determine the member id
    /// (`--initial-advertise-peer-urls`).
    pub initial_advertise_peer_urls: Vec<String>,
    /// Extra listeners for `/metrics` and the health endpoints (`--listen-metrics-urls`).
    pub listen_metrics_urls: Vec<String>,
    /// The bootstrap membership, `name=url,...` (`--initial-cluster`); see
    /// [`Config::initial_cluster_members`].
    pub initial_cluster: String,
    /// `new` bootstraps a cluster; `existing` joins one that added this member.
    pub initial_cluster_state: String,
    /// Mixed into member and cluster ids (`--initial-cluster-token`).
    pub initial_cluster_token: String,
    /// Refuse membership changes that would cost the quorum (`--strict-reconfig-check`):
    /// too few started voters, or too few connected to this member for 5 s.
    pub strict_reconfig_check: bool,
    /// Pre-vote before an election (`--pre-vote`; etcd 3.5's default, true).
    pub pre_vote: bool,
    /// `--auto-compaction-mode`: `periodic`, `revision`, or `""` (a config file's
    /// default). Inert while `--auto-compaction-retention` is 0, as in etcd.
    pub auto_compaction_mode: String,
    /// `--auto-compaction-retention`, as given: hours or a duration (periodic), or a
    /// number of revisions; 0 is off ([`Config::auto_compaction`] reads it).
    pub auto_compaction_retention: String,
    /// `--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`,
    /// `--client-crl-file`, `--auto-tls`, `--client-cert-allowed-hostname`,
    /// `--client-cert-file`, `--client-key-file`.
    pub client_tls: TlsSettings,
    /// The same for peers: `--peer-cert-file` ... `--peer-cert-allowed-cn`.
    pub peer_tls: TlsSettings,
    /// Validity of `--auto-tls` certificates, in years (`--self-signed-cert-validity`).
    pub self_signed_cert_validity_years: u32,
    /// Go names of the TLS cipher suites allowed; empty means Go's defaults.
    pub cipher_suites: Vec<String>,
    /// `--tls-min-version` as given (`TLS1.2` when absent).
    pub tls_min_version: Option<String>,
    /// `--tls-max-version` as given (the newest when absent).
    pub tls_max_version: Option<String>,
    /// Do not check a peer's client certificate SAN against its address.
    pub experimental_peer_skip_client_san_verification: bool,
    /// Serve the gRPC-gateway's JSON API (`/v3/...`) on client URLs.
    pub enable_grpc_gateway: bool,
    /// Allowed CORS origins for the HTTP endpoints (`*` = any).
    pub cors: Vec<String>,
    /// `Host` headers accepted on plain-HTTP requests (`*` = any).
    pub host_whitelist: Vec<String>,
    /// bcrypt cost of user passwords (`--bcrypt-cost`, 4 to 31).
    pub bcrypt_cost: u32,
    /// Token provider: `simple`, or `jwt,pub-key=...,priv-key=...,sign-method=...`.
    pub auth_token: String,
    /// Lifetime of a simple token, in seconds (`--auth-token-ttl`).
    pub auth_token_ttl: u64,
    /// Logger kind; only etcd 3.5's `zap` (structured logs) is accepted.
    pub logger: String,
    /// Log level: debug, info, warn, error, dpanic, panic or fatal.
    pub log_level: String,
    /// Log sinks: `default` (stderr), `stderr`, `stdout`, `systemd/journal`, or files.
    pub log_outputs: Vec<String>,
    /// `--metrics=extensive`: add per-RPC latency histograms.
    pub metrics_extensive: bool,
    /// Compare this member's data with its peers' before serving
    /// (`--experimental-initial-corrupt-check`, etcd 3.6's
    /// `--feature-gates=InitialCorruptCheck=true`).
    pub initial_corrupt_check: bool,
    /// `--experimental-corrupt-check-time`: how often the leader compares its HashKV
    /// with every member's (`crate::corrupt::periodic`); zero is off.
    pub corrupt_check_time: Duration,
    /// `--force-new-cluster`: a member that has a WAL restarts as a one-member cluster,
    /// keeping what it applied (disaster recovery after losing the quorum).
    pub force_new_cluster: bool,
    /// Period of the progress notifications sent to watchers that asked for them
    /// (`--experimental-watch-progress-notify-interval`, etcd 3.6's
    /// `--watch-progress-notify-interval`); a value that is not positive means 10m.
    pub watch_progress_notify_interval: Duration,
}

impl Default for Config {
    /// etcd's defaults on the command-line path.
    fn default() -> Config {
        let urls = |u: &str| vec![u.to_string()];
        Config {
            name: "default".into(),
            data_dir: None,
            wal_dir: None,
            snapshot_count: 100_000,
            snapshot_catchup_entries: 5_000,
            max_snapshots: 5,
            max_wals: 5,
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1_000,
            quota_backend_bytes: 0,
            backend_batch_interval: Duration::from_millis(100),
            backend_batch_limit: 10_000,
            max_request_bytes: 1_572_864,
            max_txn_ops: 128,
            max_concurrent_streams: u32::MAX,
            grpc_keepalive_min_time: Duration::from_secs(5),
            grpc_keepalive_interval: Duration::from_secs(2 * 3600),
            grpc_keepalive_timeout: Duration::from_secs(20),
            listen_client_urls: urls("http://localhost:2379"),
            listen_client_http_urls: Vec::new(),
            advertise_client_urls: urls("http://localhost:2379"),
            listen_peer_urls: urls("http://localhost:2380"),
            initial_advertise_peer_urls: urls("http://localhost:2380"),
            listen_metrics_urls: Vec::new(),
            initial_cluster: DEFAULT_INITIAL_CLUSTER.into(),
            initial_cluster_state: "new".into(),
            initial_cluster_token: "etcd-cluster".into(),
            strict_reconfig_check: true,
            pre_vote: true,
            auto_compaction_mode: "periodic".into(),
            auto_compaction_retention: "0".into(),
            client_tls: TlsSettings::default(),
            peer_tls: TlsSettings::default(),
            self_signed_cert_validity_years: 1,
            cipher_suites: Vec::new(),
            tls_min_version: None,
            tls_max_version: None,
            experimental_peer_skip_client_san_verification: false,
            enable_grpc_gateway: true,
            cors: urls("*"),
            host_whitelist: urls("*"),
            bcrypt_cost: 10,
            auth_token: "simple".into(),
            auth_token_ttl: 300,
            logger: "zap".into(),
            log_level: "info".into(),
            log_outputs: urls("default"),
            metrics_extensive: false,
            initial_corrupt_check: false,
            corrupt_check_time: Duration::ZERO,
            force_new_cluster: false,
            watch_progress_notify_interval: Duration::from_secs(600),
        }
    }
}

/// How serious a parse-time notice is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// A setting retcd accepted and that needs no action.
    Info,
    /// A setting that does nothing (ignored legacy flags, unknown variables or keys).
    Warn,
}

/// Something to log once the logger is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub level: Level,
    pub message: String,
}

impl Notice {
    pub fn info(message: impl Into<String>) -> Notice {
        Notice {
            level: Level::Info,
            message: message.into(),
        }
    }

    pub fn warn(message: impl Into<String>) -> Notice {
        Notice {
            level: Level::Warn,
            message: message.into(),
        }
    }
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    CommandLine,
    Env(String),
    File {
        path: String,
        key: String,
    },
    /// One gate of etcd 3.6's `--feature-gates`, itself given from `via`.
    Gate(Box<Source>),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::CommandLine => write!(f, "on the command line"),
            Source::Env(name) => write!(f, "as {name}"),
            Source::File { path, key } => write!(f, "as key {key:?} in {path}"),
            Source::Gate(via) => write!(f, "in --feature-gates {via}"),
        }
    }
}

/// A configuration that cannot be served. [`ConfigError::exit_code`] is etcd's.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// What Go's flag package refuses on the command line (an unknown flag, a value of
    /// the wrong type): exit 2.
    #[error("{0}")]
    Syntax(String),
    /// A setting etcd has and retcd does not: exit 1.
    #[error("retcd does not support {flag} ({what}) yet: given {given}{}", accepted.as_ref().map(|a| format!("; only {a} is accepted")).unwrap_or_default())]
    Unsupported {
        /// `--discovery`, or `feature gate X`.
        flag: String,
        /// What the setting asks for, in a few words.
        what: String,
        /// How it was given ([`Source`]'s words).
        given: String,
        /// The values that are accepted (etcd's default), if any.
        accepted: Option<String>,
    },
    /// etcd's validation, a bad environment variable or config file: exit 1.
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    /// etcd's exit code: 2 for flag syntax, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            ConfigError::Syntax(_) => 2,
            ConfigError::Unsupported { .. } | ConfigError::Invalid(_) => 1,
        }
    }
}

impl Config {
    /// The data directory: `--data-dir`, or `${name}.etcd`.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name)))
    }

    /// Members of `--initial-cluster` as (name, sorted peer URLs), in the order of each
    /// name's first appearance. etcd's rules (`types.NewURLsMap`): elements split on
    /// commas, empty ones skipped; each split at its first `=` (an element without one
    /// is a name with an empty URL, which fails); names kept as given (not trimmed), URLs
    /// trimmed and checked as a URL list; a name may repeat to give several URLs.
    pub fn initial_cluster_members(&self) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
        let mut members: Vec<(String, Vec<String>)> = Vec::new();
        for part in self.initial_cluster.split(',').filter(|p| !p.is_empty()) {
            let (name, url) = part.split_once('=').unwrap_or((part, ""));
            match members.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(url.to_string()),
                None => members.push((name.to_string(), vec![url.to_string()])),
            }
        }
        for (_, urls) in &mut members {
            *urls = value::parse_urls(&urls.join(",")).map_err(ConfigError::Invalid)?;
        }
        Ok(members)
    }

    /// The auto-compaction policy the flags ask for, or none (off). Valid after
    /// [`Config::validate`], which refuses what this cannot read.
    pub fn auto_compaction(&self) -> Option<Policy> {
        compaction::policy(&self.auto_compaction_mode, &self.auto_compaction_retention)
            .ok()
            .flatten()
    }

    /// Raft ticks per election timeout (etcd: election-timeout / heartbeat-interval).
    pub fn election_ticks(&self) -> u64 {
        (self.election_timeout_ms / self.heartbeat_interval_ms).max(2)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// `--quota-backend-bytes` as a limit: etcd's 2 GiB in place of 0, and no limit
    /// (`u64::MAX`) for a negative value, as etcd.
    pub fn backend_quota(&self) -> u64 {
        match u64::try_from(self.quota_backend_bytes) {
            Ok(0) => DEFAULT_QUOTA_BACKEND_BYTES,
            Ok(n) => n,
            Err(_) => u64::MAX,
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
