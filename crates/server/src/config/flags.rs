//! The table of every etcd server flag, and what applying one of its values does.
//!
//! One row per flag of etcd 3.4 and 3.5 (and the two etcd 3.6 flags current kubeadm
//! passes, and etcd's 15 ignored legacy flags): its name (the `ETCD_*` variable and the
//! YAML key follow from it unless the row says otherwise), value type, etcd's default,
//! help text, and its [`Disposition`]. A flag retcd acts on carries a setter and a reader
//! of the [`Config`] field it maps to; the test that walks the table uses the reader to
//! prove each value lands somewhere.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use super::value::{Kind, Value};
use super::{Config, ConfigError, Notice, Source};

/// What retcd does with a flag.
#[derive(Clone, Copy)]
pub enum Disposition {
    /// Parsed into a [`Config`] field: `set` stores a value, `read` shows the field.
    On {
        set: fn(&mut Draft, &Value),
        read: fn(&Config) -> String,
    },
    /// retcd always behaves as the flag asks, whatever the value; `why` says how.
    Accepted { why: &'static str },
    /// etcd's legacy flags: any value, nothing done, a warning (etcd 3.4's).
    Ignored,
    /// etcd has it, retcd does not: refused unless the value is etcd's default (or one
    /// `also_default` says is equivalent). `what` names what the flag asks for.
    Refused {
        what: &'static str,
        also_default: Option<fn(&Value) -> bool>,
    },
    /// etcd 3.6's `--feature-gates`: each gate is applied as the flag it replaces.
    Gates,
    /// `--version` and `--config-file`, which choose what happens rather than set.
    Special,
}

/// `--help`'s sections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    Member,
    Clustering,
    Security,
    Auth,
    Logging,
    Monitoring,
    Proxy,
    Experimental,
    Unsafe,
    Etcd36,
    Legacy,
}

/// How the config file holds a flag's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A scalar (lists are one comma-separated string, as for URLs).
    Scalar,
    /// A YAML list.
    List,
    /// A YAML list, or (etcd 3.5.14's form) a string.
    ListOrScalar,
}

/// One row of the table.
#[derive(Clone, Copy)]
pub struct Flag {
    pub name: &'static str,
    pub kind: Kind,
    /// etcd's default, as flag text.
    pub default: &'static str,
    pub group: Group,
    pub help: &'static str,
    /// The config file's key: `Some("")` means the flag's name; dotted keys are nested
    /// (`client-transport-security.cert-file`); `None`: etcd has no key for it.
    pub yaml: Option<&'static str>,
    pub shape: Shape,
    pub disposition: Disposition,
}

#[rustfmt::skip]
const fn flag(name: &'static str, kind: Kind, default: &'static str, group: Group, help: &'static str) -> Flag {
    Flag { name, kind, default, group, help, yaml: Some(""), shape: Shape::Scalar, disposition: Disposition::Special }
}

/// The table's vocabulary: each row is `flag(...)` and one of these.
#[rustfmt::skip]
impl Flag {
    const fn on(self, set: fn(&mut Draft, &Value), read: fn(&Config) -> String) -> Flag {
        Flag { disposition: Disposition::On { set, read }, ..self }
    }
    const fn accepted(self, why: &'static str) -> Flag {
        Flag { disposition: Disposition::Accepted { why }, ..self }
    }
    const fn refused(self, what: &'static str) -> Flag {
        Flag { disposition: Disposition::Refused { what, also_default: None }, ..self }
    }
    const fn refused_unless(self, what: &'static str, ok: fn(&Value) -> bool) -> Flag {
        Flag { disposition: Disposition::Refused { what, also_default: Some(ok) }, ..self }
    }
    const fn ignored(self) -> Flag { Flag { disposition: Disposition::Ignored, yaml: None, ..self } }
    const fn gates(self) -> Flag { Flag { disposition: Disposition::Gates, ..self } }
    const fn yaml(self, key: &'static str) -> Flag { Flag { yaml: Some(key), ..self } }
    const fn no_yaml(self) -> Flag { Flag { yaml: None, ..self } }
    const fn list(self) -> Flag { Flag { shape: Shape::List, ..self } }
    const fn list_or_scalar(self) -> Flag { Flag { shape: Shape::ListOrScalar, ..self } }
}

impl Flag {
    /// `ETCD_` + the name upper-cased with `-` as `_` (etcd's `flags.FlagToEnv`).
    pub fn env(&self) -> String {
        format!("ETCD_{}", self.name.to_ascii_uppercase().replace('-', "_"))
    }

    /// The config file's key, if etcd has one.
    pub fn yaml_key(&self) -> Option<&'static str> {
        self.yaml.map(|k| if k.is_empty() { self.name } else { k })
    }

    /// Parses `text` as `Value.Set` would; the error is Go's text.
    pub fn parse(&self, text: &str) -> Result<Value, String> {
        let value = self.kind.parse(text)?;
        if let Value::Gates(gates) = &value {
            for (name, _) in gates {
                gate(name).ok_or_else(|| format!("unrecognized feature gate: {name}"))?;
            }
        }
        Ok(value)
    }

    /// Whether `value` asks for what etcd's default asks for.
    pub fn is_default(&self, value: &Value) -> bool {
        let default = self
            .kind
            .parse(self.default)
            .expect("a flag's default parses");
        let equivalent = match self.disposition {
            Disposition::Refused {
                also_default: Some(ok),
                ..
            } => ok(value),
            _ => false,
        };
        *value == default || equivalent
    }
}

/// Looks a flag up by name.
pub fn lookup(name: &str) -> Option<&'static Flag> {
    FLAGS.iter().find(|f| f.name == name)
}

/// A gate of etcd 3.6's `--feature-gates`, and the etcd 3.5 flag it replaces (`None`
/// for a gate with no such flag, which retcd refuses).
pub struct Gate {
    pub name: &'static str,
    pub flag: Option<&'static str>,
    pub what: &'static str,
}

/// etcd 3.6's server feature gates (plus Kubernetes' `AllAlpha`, `AllBeta`).
pub static GATES: &[Gate] = &[
    Gate {
        name: "AllAlpha",
        flag: None,
        what: "every alpha feature of etcd 3.6",
    },
    Gate {
        name: "AllBeta",
        flag: None,
        what: "every beta feature of etcd 3.6",
    },
    Gate {
        name: "CompactHashCheck",
        flag: Some("experimental-compact-hash-check-enabled"),
        what: "",
    },
    Gate {
        name: "DistributedTracing",
        flag: Some("experimental-enable-distributed-tracing"),
        what: "",
    },
    Gate {
        name: "InitialCorruptCheck",
        flag: Some("experimental-initial-corrupt-check"),
        what: "",
    },
    Gate {
        name: "LeaseCheckpoint",
        flag: Some("experimental-enable-lease-checkpoint"),
        what: "",
    },
    Gate {
        name: "LeaseCheckpointPersist",
        flag: Some("experimental-enable-lease-checkpoint-persist"),
        what: "",
    },
    Gate {
        name: "SetMemberLocalAddr",
        flag: None,
        what: "dialing peers from the advertised peer address",
    },
    Gate {
        name: "StopGRPCServiceOnDefrag",
        flag: Some("experimental-stop-grpc-service-on-defrag"),
        what: "",
    },
    Gate {
        name: "TxnModeWriteWithSharedBuffer",
        flag: Some("experimental-txn-mode-write-with-shared-buffer"),
        what: "",
    },
];

pub fn gate(name: &str) -> Option<&'static Gate> {
    GATES.iter().find(|g| g.name == name)
}

/// A configuration being built: the [`Config`], and what etcd's later rules need to
/// know about how it was built.
pub struct Draft {
    pub c: Config,
    /// Flags given by any source, for etcd's "is set" rules.
    pub set: BTreeSet<&'static str>,
    /// Flags given through etcd 3.6's `--feature-gates`.
    pub via_gate: BTreeSet<&'static str>,
    pub notices: Vec<Notice>,
    /// Values that parse but cannot be used (a negative duration): exit 1.
    pub errors: Vec<String>,
    /// etcd 3.4's `--log-output`, resolved against `--log-outputs` at the end.
    pub log_output: Option<Vec<String>>,
    /// etcd 3.4's `--debug`.
    pub debug: bool,
    pub lease_checkpoint: bool,
    pub lease_checkpoint_persist: bool,
}

impl Draft {
    pub fn new(c: Config) -> Draft {
        Draft {
            c,
            set: BTreeSet::new(),
            via_gate: BTreeSet::new(),
            notices: Vec::new(),
            errors: Vec::new(),
            log_output: None,
            debug: false,
            lease_checkpoint: false,
            lease_checkpoint_persist: false,
        }
    }

    /// Applies one value of `flag`, given from `source`, by the flag's disposition.
    pub fn apply(
        &mut self,
        flag: &'static Flag,
        value: &Value,
        source: &Source,
    ) -> Result<(), ConfigError> {
        match flag.disposition {
            Disposition::On { set, .. } => set(self, value),
            Disposition::Accepted { why } => {
                if !flag.is_default(value) {
                    self.notices.push(Notice::info(format!(
                        "--{} given {source}: {why}",
                        flag.name
                    )));
                }
                match flag.name {
                    "experimental-enable-lease-checkpoint" => self.lease_checkpoint = value.bool(),
                    "experimental-enable-lease-checkpoint-persist" => {
                        self.lease_checkpoint_persist = value.bool()
                    }
                    _ => {}
                }
            }
            Disposition::Ignored => {
                self.notices.push(Notice::warn(format!(
                    "flag \"-{}\" is no longer supported - ignoring.",
                    flag.name
                )));
            }
            Disposition::Refused { what, .. } => {
                if !flag.is_default(value) {
                    let accepted = match flag.default {
                        "" => "an empty value".to_string(),
                        d => format!("etcd's default ({d})"),
                    };
                    return Err(ConfigError::Unsupported {
                        flag: format!("--{}", flag.name),
                        what: what.to_string(),
                        given: source.to_string(),
                        accepted: Some(accepted),
                    });
                }
            }
            Disposition::Gates => {
                let Value::Gates(gates) = value else {
                    panic!("--feature-gates holds {value:?}")
                };
                let via = Source::Gate(Box::new(source.clone()));
                for (name, on) in gates {
                    let g = gate(name).expect("gates are checked when parsed");
                    match g.flag.and_then(lookup) {
                        Some(target) => {
                            let given_as_flag = self.set.contains(target.name);
                            self.apply(target, &Value::Bool(*on), &via)
                                .map_err(|e| match e {
                                    ConfigError::Unsupported { what, accepted, .. } => {
                                        ConfigError::Unsupported {
                                            flag: format!(
                                                "feature gate {name} (--{})",
                                                target.name
                                            ),
                                            what,
                                            given: via.to_string(),
                                            accepted,
                                        }
                                    }
                                    e => e,
                                })?;
                            if !given_as_flag {
                                self.set.remove(target.name);
                            }
                            self.via_gate.insert(target.name);
                        }
                        None if !on => {}
                        None => {
                            return Err(ConfigError::Unsupported {
                                flag: format!("feature gate {name}"),
                                what: g.what.to_string(),
                                given: via.to_string(),
                                accepted: Some("false".into()),
                            });
                        }
                    }
                }
            }
            Disposition::Special => {}
        }
        self.set.insert(flag.name);
        Ok(())
    }

    /// A duration that must not be negative.
    fn duration(&mut self, flag: &str, v: &Value) -> Duration {
        u64::try_from(v.nanos())
            .map(Duration::from_nanos)
            .unwrap_or_else(|_| {
                self.errors.push(format!("--{flag} must not be negative"));
                Duration::ZERO
            })
    }
}

/// etcd's auth store takes a cost outside bcrypt's 4..=31 as its default, with a warning.
fn set_bcrypt_cost(d: &mut Draft, v: &Value) {
    let cost = v.uint();
    d.c.bcrypt_cost = match u32::try_from(cost) {
        Ok(c @ 4..=31) => c,
        _ => {
            d.notices.push(Notice::warn(format!(
                "use default bcrypt cost instead of the invalid given cost {cost} (valid: 4 to 31)"
            )));
            10
        }
    };
}

fn show<T: std::fmt::Debug>(v: &T) -> String {
    format!("{v:?}")
}

/// An empty path means "not set", as etcd's empty-string defaults do.
fn path(v: &Value) -> Option<PathBuf> {
    Some(v.string())
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
}

/// A comma list where an empty value means none (etcd 3.4's single-string form).
fn names(v: &Value) -> Vec<String> {
    v.list().into_iter().filter(|s| !s.is_empty()).collect()
}

fn u32_of(d: &mut Draft, flag: &str, n: u64) -> u32 {
    u32::try_from(n).unwrap_or_else(|_| {
        d.errors.push(format!("--{flag} {n} is out of range"));
        0
    })
}

fn nanos_at_most(v: &Value, limit: i64) -> bool {
    v.nanos() <= limit
}

use Group::*;
use Kind::{
    Bool, Duration as Dur, Enum, Gates, Ignored, Int, List, Millis, Set, Str, Uint, Uint32, Urls,
};

const NO_URLS: Kind = Urls { exception: "" };

/// Every etcd server flag. Groups follow etcd's `--help`.
#[rustfmt::skip]
pub static FLAGS: &[Flag] = &[
    // Member
    flag("name", Str, "default", Member, "Human-readable name for this member.")
        .on(|d, v| d.c.name = v.string(), |c| show(&c.name)),
    flag("data-dir", Str, "", Member, "Path to the data directory (default: ${name}.etcd).")
        .on(|d, v| d.c.data_dir = path(v), |c| show(&c.data_dir)),
    flag("wal-dir", Str, "", Member, "Path to a dedicated WAL directory.")
        .on(|d, v| d.c.wal_dir = path(v), |c| show(&c.wal_dir)),
    flag("snapshot-count", Uint, "100000", Member, "Committed entries that trigger a snapshot to disk (0: 100000).")
        .on(|d, v| d.c.snapshot_count = match v.uint() { 0 => 100_000, n => n }, |c| show(&c.snapshot_count)),
    flag("heartbeat-interval", Millis, "100", Member, "Time of a heartbeat interval, in milliseconds.")
        .on(|d, v| d.c.heartbeat_interval_ms = v.uint(), |c| show(&c.heartbeat_interval_ms)),
    flag("election-timeout", Millis, "1000", Member, "Time for an election to time out, in milliseconds.")
        .on(|d, v| d.c.election_timeout_ms = v.uint(), |c| show(&c.election_timeout_ms)),
    flag("initial-election-tick-advance", Bool, "true", Member, "Fast-forward election ticks at boot for faster elections.")
        .accepted("retcd does not fast-forward election ticks at boot, as etcd with =false; =true only shortens a first election"),
    flag("listen-peer-urls", NO_URLS, "http://localhost:2380", Member, "URLs to listen on for peer traffic.")
        .on(|d, v| d.c.listen_peer_urls = v.urls_over(&d.c.listen_peer_urls), |c| show(&c.listen_peer_urls)),
    flag("listen-client-urls", NO_URLS, "http://localhost:2379", Member, "URLs to listen on for client gRPC and HTTP traffic.")
        .on(|d, v| d.c.listen_client_urls = v.urls_over(&d.c.listen_client_urls), |c| show(&c.listen_client_urls)),
    flag("listen-client-http-urls", NO_URLS, "", Member, "URLs to serve client HTTP only on (then listen-client-urls serve gRPC only).")
        .on(|d, v| d.c.listen_client_http_urls = v.urls_over(&d.c.listen_client_http_urls), |c| show(&c.listen_client_http_urls)),
    flag("max-snapshots", Uint, "5", Member, "Maximum number of snapshot files to retain (0 is unlimited).")
        .on(|d, v| d.c.max_snapshots = v.uint(), |c| show(&c.max_snapshots)),
    flag("max-wals", Uint, "5", Member, "Maximum number of WAL files to retain (0 is unlimited).")
        .on(|d, v| d.c.max_wals = v.uint(), |c| show(&c.max_wals)),
    flag("quota-backend-bytes", Int, "0", Member, "Raise the NOSPACE alarm when the backend reaches this size (0: 2 GiB; negative: no quota).")
        .on(|d, v| d.c.quota_backend_bytes = v.int(), |c| show(&c.quota_backend_bytes)),
    flag("backend-bbolt-freelist-type", Str, "map", Member, "The freelist type bbolt uses (array or map).")
        .accepted("retcd's backend is redb, which has no bbolt freelist"),
    flag("backend-batch-interval", Dur, "0s", Member, "Longest time before a backend commit (0: 100ms).")
        .on(set_backend_batch_interval, |c| show(&c.backend_batch_interval)),
    flag("backend-batch-limit", Int, "0", Member, "Most operations before a backend commit (0: 10000).")
        .on(set_backend_batch_limit, |c| show(&c.backend_batch_limit)),
    flag("max-txn-ops", Uint, "128", Member, "Most operations in a transaction.")
        .on(|d, v| d.c.max_txn_ops = v.uint(), |c| show(&c.max_txn_ops)),
    flag("max-request-bytes", Uint, "1572864", Member, "Largest client request the server accepts, in bytes.")
        .on(|d, v| d.c.max_request_bytes = v.uint(), |c| show(&c.max_request_bytes)),
    flag("max-concurrent-streams", Uint32, "4294967295", Member, "Most concurrent gRPC streams per client connection.")
        .on(|d, v| d.c.max_concurrent_streams = u32_of(d, "max-concurrent-streams", v.uint()), |c| show(&c.max_concurrent_streams)),
    flag("grpc-keepalive-min-time", Dur, "5s", Member, "Shortest interval a client should wait before pinging the server.")
        .on(|d, v| d.c.grpc_keepalive_min_time = d.duration("grpc-keepalive-min-time", v), |c| show(&c.grpc_keepalive_min_time)),
    flag("grpc-keepalive-interval", Dur, "2h0m0s", Member, "Frequency of server-to-client pings (0 disables).")
        .on(|d, v| d.c.grpc_keepalive_interval = d.duration("grpc-keepalive-interval", v), |c| show(&c.grpc_keepalive_interval)),
    flag("grpc-keepalive-timeout", Dur, "20s", Member, "How long to wait for a ping's answer before closing (0 disables).")
        .on(|d, v| d.c.grpc_keepalive_timeout = d.duration("grpc-keepalive-timeout", v), |c| show(&c.grpc_keepalive_timeout)),
    flag("socket-reuse-port", Bool, "false", Member, "Set SO_REUSEPORT on listeners.")
        .yaml("socket-options.reuse-port")
        .refused("SO_REUSEPORT on listeners"),
    flag("socket-reuse-address", Bool, "false", Member, "Set SO_REUSEADDR on listeners.")
        .yaml("socket-options.reuse-address")
        .accepted("retcd's listeners always set SO_REUSEADDR"),
    flag("raft-read-timeout", Dur, "5s", Member, "Read timeout of peer connections (at least 5s).").no_yaml()
        .refused_unless("peer connection timeouts other than 5s", |v| nanos_at_most(v, 5_000_000_000)),
    flag("raft-write-timeout", Dur, "5s", Member, "Write timeout of peer connections (at least 5s).")
        .no_yaml()
        .refused_unless("peer connection timeouts other than 5s", |v| nanos_at_most(v, 5_000_000_000)),
    // Clustering
    flag("initial-advertise-peer-urls", NO_URLS, "http://localhost:2380", Clustering, "This member's peer URLs to advertise to the rest of the cluster.")
        .on(|d, v| d.c.initial_advertise_peer_urls = v.urls_over(&d.c.initial_advertise_peer_urls), |c| show(&c.initial_advertise_peer_urls)),
    flag("initial-cluster", Str, "default=http://localhost:2380", Clustering, "Initial cluster configuration for bootstrapping (name=url,...).")
        .on(|d, v| d.c.initial_cluster = v.string(), |c| show(&c.initial_cluster)),
    flag("initial-cluster-state", Enum(&["new", "existing"]), "new", Clustering, "new to bootstrap a cluster, existing to join one.")
        .on(|d, v| d.c.initial_cluster_state = v.string(), |c| show(&c.initial_cluster_state)),
    flag("initial-cluster-token", Str, "etcd-cluster", Clustering, "Initial cluster token, mixed into member and cluster ids.")
        .on(|d, v| d.c.initial_cluster_token = v.string(), |c| show(&c.initial_cluster_token)),
    flag("advertise-client-urls", NO_URLS, "http://localhost:2379", Clustering, "This member's client URLs to advertise to the rest of the cluster.")
        .on(|d, v| d.c.advertise_client_urls = v.urls_over(&d.c.advertise_client_urls), |c| show(&c.advertise_client_urls)),
    flag("discovery", Str, "", Clustering, "Discovery URL used to bootstrap the cluster.")
        .refused("etcd's v2 discovery service"),
    flag("discovery-fallback", Enum(&["exit", "proxy"]), "proxy", Clustering, "What to do when discovery fails: exit or proxy.")
        .refused("etcd's v2 discovery service"),
    flag("discovery-proxy", Str, "", Clustering, "HTTP proxy to use for traffic to the discovery service.")
        .refused("etcd's v2 discovery service"),
    flag("discovery-srv", Str, "", Clustering, "DNS domain used to bootstrap the cluster.")
        .refused("DNS SRV bootstrap"),
    flag("discovery-srv-name", Str, "", Clustering, "Suffix of the DNS SRV name queried when bootstrapping.")
        .refused("DNS SRV bootstrap"),
    flag("strict-reconfig-check", Bool, "true", Clustering, "Reject membership changes that would cause a quorum loss.")
        .on(|d, v| d.c.strict_reconfig_check = v.bool(), |c| show(&c.strict_reconfig_check)),
    flag("pre-vote", Bool, "true", Clustering, "Run Raft's pre-vote before an election.")
        .on(|d, v| d.c.pre_vote = v.bool(), |c| show(&c.pre_vote)),
    flag("auto-compaction-retention", Str, "0", Clustering, "Auto compaction retention (0 disables): hours or a duration (periodic), or revisions.")
        .on(|d, v| d.c.auto_compaction_retention = v.string(), |c| show(&c.auto_compaction_retention)),
    flag("auto-compaction-mode", Str, "periodic", Clustering, "How to read the auto compaction retention: periodic or revision.")
        .on(|d, v| d.c.auto_compaction_mode = v.string(), |c| show(&c.auto_compaction_mode)),
    flag("enable-v2", Bool, "false", Clustering, "Serve the v2 API.")
        .refused("etcd's v2 API"),
    flag("v2-deprecation", Enum(V2_STAGES), "not-yet", Clustering, "Phase of the v2store deprecation.")
        .accepted("retcd has no v2 store: it is at every phase's end state"),
    flag("enable-grpc-gateway", Bool, "true", Clustering, "Serve the JSON gRPC gateway (/v3/...) on client URLs.")
        .on(|d, v| d.c.enable_grpc_gateway = v.bool(), |c| show(&c.enable_grpc_gateway)),
    flag("cors", Urls { exception: "*" }, "*", Clustering, "Comma-separated CORS origins (* for any).")
        .on(|d, v| d.c.cors = v.urls_over(&d.c.cors), |c| show(&c.cors)),
    flag("host-whitelist", Set, "*", Clustering, "Host headers accepted on plain-HTTP requests (* for any).")
        .on(|d, v| d.c.host_whitelist = names(v), |c| show(&c.host_whitelist)),
    // Security
    flag("cert-file", Str, "", Security, "Path to the client server TLS cert file.")
        .yaml("client-transport-security.cert-file")
        .on(|d, v| d.c.client_tls.cert_file = path(v), |c| show(&c.client_tls.cert_file)),
    flag("key-file", Str, "", Security, "Path to the client server TLS key file.")
        .yaml("client-transport-security.key-file")
        .on(|d, v| d.c.client_tls.key_file = path(v), |c| show(&c.client_tls.key_file)),
    flag("client-cert-auth", Bool, "false", Security, "Require and verify client certificates.")
        .yaml("client-transport-security.client-cert-auth")
        .on(|d, v| d.c.client_tls.client_cert_auth = v.bool(), |c| show(&c.client_tls.client_cert_auth)),
    flag("client-crl-file", Str, "", Security, "Path to the client certificate revocation list.").no_yaml()
        .on(|d, v| d.c.client_tls.crl_file = path(v), |c| show(&c.client_tls.crl_file)),
    flag("client-cert-allowed-hostname", List, "", Security, "Comma-separated SAN host names a client certificate must carry.")
        .yaml("client-transport-security.allowed-hostname").list_or_scalar()
        .on(|d, v| d.c.client_tls.allowed_hostname = names(v), |c| show(&c.client_tls.allowed_hostname)),
    flag("trusted-ca-file", Str, "", Security, "Path to the CA that verifies client certificates.")
        .yaml("client-transport-security.trusted-ca-file")
        .on(|d, v| d.c.client_tls.trusted_ca_file = path(v), |c| show(&c.client_tls.trusted_ca_file)),
    flag("auto-tls", Bool, "false", Security, "Client TLS with generated certificates.")
        .yaml("client-transport-security.auto-tls")
        .on(|d, v| d.c.client_tls.auto_tls = v.bool(), |c| show(&c.client_tls.auto_tls)),
    flag("client-cert-file", Str, "", Security, "Client certificate for this member's own client connections (default: cert-file).")
        .yaml("client-transport-security.client-cert-file")
        .on(|d, v| d.c.client_tls.client_cert_file = path(v), |c| show(&c.client_tls.client_cert_file)),
    flag("client-key-file", Str, "", Security, "Key of client-cert-file.")
        .yaml("client-transport-security.client-key-file")
        .on(|d, v| d.c.client_tls.client_key_file = path(v), |c| show(&c.client_tls.client_key_file)),
    flag("peer-cert-file", Str, "", Security, "Path to the peer server TLS cert file.")
        .yaml("peer-transport-security.cert-file")
        .on(|d, v| d.c.peer_tls.cert_file = path(v), |c| show(&c.peer_tls.cert_file)),
    flag("peer-key-file", Str, "", Security, "Path to the peer server TLS key file.")
        .yaml("peer-transport-security.key-file")
        .on(|d, v| d.c.peer_tls.key_file = path(v), |c| show(&c.peer_tls.key_file)),
    flag("peer-client-cert-auth", Bool, "false", Security, "Require and verify peer client certificates.")
        .yaml("peer-transport-security.client-cert-auth")
        .on(|d, v| d.c.peer_tls.client_cert_auth = v.bool(), |c| show(&c.peer_tls.client_cert_auth)),
    flag("peer-trusted-ca-file", Str, "", Security, "Path to the CA that verifies peer certificates.")
        .yaml("peer-transport-security.trusted-ca-file")
        .on(|d, v| d.c.peer_tls.trusted_ca_file = path(v), |c| show(&c.peer_tls.trusted_ca_file)),
    flag("peer-auto-tls", Bool, "false", Security, "Peer TLS with generated certificates.")
        .yaml("peer-transport-security.auto-tls")
        .on(|d, v| d.c.peer_tls.auto_tls = v.bool(), |c| show(&c.peer_tls.auto_tls)),
    flag("peer-client-cert-file", Str, "", Security, "Client certificate for connections to peers (default: peer-cert-file).")
        .yaml("peer-transport-security.client-cert-file")
        .on(|d, v| d.c.peer_tls.client_cert_file = path(v), |c| show(&c.peer_tls.client_cert_file)),
    flag("peer-client-key-file", Str, "", Security, "Key of peer-client-cert-file.")
        .yaml("peer-transport-security.client-key-file")
        .on(|d, v| d.c.peer_tls.client_key_file = path(v), |c| show(&c.peer_tls.client_key_file)),
    flag("peer-cert-allowed-cn", List, "", Security, "Comma-separated common names allowed in peer certificates.")
        .yaml("peer-transport-security.allowed-cn").list_or_scalar()
        .on(|d, v| d.c.peer_tls.allowed_cn = names(v), |c| show(&c.peer_tls.allowed_cn)),
    flag("peer-cert-allowed-hostname", List, "", Security, "Comma-separated SAN host names allowed in peer certificates.")
        .yaml("peer-transport-security.allowed-hostname").list_or_scalar()
        .on(|d, v| d.c.peer_tls.allowed_hostname = names(v), |c| show(&c.peer_tls.allowed_hostname)),
    flag("peer-crl-file", Str, "", Security, "Path to the peer certificate revocation list.").no_yaml()
        .on(|d, v| d.c.peer_tls.crl_file = path(v), |c| show(&c.peer_tls.crl_file)),
    flag("self-signed-cert-validity", Uint, "1", Security, "Validity of auto-tls certificates, in years (0: 1).")
        .on(set_self_signed_cert_validity, |c| show(&c.self_signed_cert_validity_years)),
    flag("cipher-suites", List, "", Security, "Comma-separated TLS cipher suites (Go names; empty: Go's defaults).")
        .list()
        .on(|d, v| d.c.cipher_suites = v.list(), |c| show(&c.cipher_suites)),
    flag("tls-min-version", Enum(&["TLS1.2", "TLS1.3"]), "TLS1.2", Security, "Oldest TLS version accepted.")
        .on(|d, v| d.c.tls_min_version = Some(v.string()), |c| show(&c.tls_min_version)),
    flag("tls-max-version", Enum(&["", "TLS1.2", "TLS1.3"]), "", Security, "Newest TLS version accepted (empty: the newest).")
        .on(|d, v| d.c.tls_max_version = Some(v.string()).filter(|s| !s.is_empty()), |c| show(&c.tls_max_version)),
    flag("experimental-peer-skip-client-san-verification", Bool, "false", Security, "Skip the SAN check of peers' client certificates.")
        .no_yaml()
        .on(|d, v| d.c.experimental_peer_skip_client_san_verification = v.bool(), |c| show(&c.experimental_peer_skip_client_san_verification)),
    // Auth
    flag("auth-token", Str, "simple", Auth, "Token provider: simple, or jwt,pub-key=...,priv-key=...,sign-method=...,ttl=...")
        .on(|d, v| d.c.auth_token = v.string(), |c| show(&c.auth_token)),
    flag("auth-token-ttl", Uint, "300", Auth, "Lifetime of a simple token after its last use, in seconds.")
        .on(|d, v| d.c.auth_token_ttl = v.uint(), |c| show(&c.auth_token_ttl)),
    flag("bcrypt-cost", Uint, "10", Auth, "bcrypt cost of user passwords (4 to 31).")
        .on(set_bcrypt_cost, |c| show(&c.bcrypt_cost)),
    // Logging
    flag("logger", Str, "zap", Logging, "Logger: zap (structured logs).")
        .refused("a logger other than zap (etcd 3.5 removed capnslog)"),
    flag("log-level", Str, "info", Logging, "Log level: debug, info, warn, error, panic or fatal.")
        .on(|d, v| d.c.log_level = v.string(), |c| show(&c.log_level)),
    flag("log-outputs", Set, "default", Logging, "Log sinks: default, stderr, stdout, systemd/journal, or file paths.")
        .list()
        .on(|d, v| d.c.log_outputs = v.list(), |c| show(&c.log_outputs)),
    flag("log-output", Set, "default", Logging, "etcd 3.4's deprecated name of log-outputs.").list()
        .on(|d, v| d.log_output = Some(v.list()), |c| show(&c.log_outputs)),
    flag("debug", Bool, "false", Logging, "etcd 3.4's deprecated --log-level=debug.")
        .on(|d, v| d.debug = v.bool(), |c| show(&c.log_level)),
    flag("log-package-levels", Str, "", Logging, "etcd 3.4's per-package levels for capnslog.")
        .refused("capnslog's per-package log levels"),
    flag("enable-log-rotation", Bool, "false", Logging, "Rotate a single log file output.")
        .refused("log file rotation"),
    flag("log-rotation-config-json", Str, ROTATION_JSON, Logging, "Log rotation settings (JSON).")
        .refused("log file rotation"),
    // Monitoring
    flag("listen-metrics-urls", NO_URLS, "", Monitoring, "Extra URLs to serve /metrics and the health endpoints on.")
        .on(|d, v| d.c.listen_metrics_urls = v.urls_over(&d.c.listen_metrics_urls), |c| show(&c.listen_metrics_urls)),
    flag("metrics", Str, "basic", Monitoring, "basic, or extensive for per-RPC latency histograms.")
        .on(|d, v| d.c.metrics_extensive = v.string() == "extensive", |c| show(&c.metrics_extensive)),
    flag("enable-pprof", Bool, "false", Monitoring, "Serve runtime profiling data at /debug/pprof/.")
        .refused("Go's profiling endpoints"),
    // v2 proxy
    flag("proxy", Enum(&["off", "readonly", "on"]), "off", Proxy, "Run as a v2 proxy: off, readonly or on.")
        .refused("etcd's v2 proxy"),
    flag("proxy-failure-wait", Millis, "5000", Proxy, "Milliseconds an endpoint stays failed.")
        .refused("etcd's v2 proxy"),
    flag("proxy-refresh-interval", Millis, "30000", Proxy, "Milliseconds between endpoint refreshes.")
        .refused("etcd's v2 proxy"),
    flag("proxy-dial-timeout", Millis, "1000", Proxy, "Milliseconds to wait for a dial (0: no timeout).")
        .refused("etcd's v2 proxy"),
    flag("proxy-write-timeout", Millis, "5000", Proxy, "Milliseconds to wait for a write (0: no timeout).")
        .refused("etcd's v2 proxy"),
    flag("proxy-read-timeout", Millis, "0", Proxy, "Milliseconds to wait for a read (0: no timeout).")
        .refused("etcd's v2 proxy"),
    // Experimental
    flag("experimental-initial-corrupt-check", Bool, "false", Experimental, "Check this member's data against its peers' before serving.")
        .on(|d, v| d.c.initial_corrupt_check = v.bool(), |c| show(&c.initial_corrupt_check)),
    flag("experimental-corrupt-check-time", Dur, "0s", Experimental, "Interval of the periodic cross-member corruption check (0 disables).")
        .on(|d, v| d.c.corrupt_check_time = d.duration("experimental-corrupt-check-time", v), |c| show(&c.corrupt_check_time)),
    flag("experimental-compact-hash-check-enabled", Bool, "false", Experimental, "Leader checks followers' hashes at compaction revisions.")
        .refused("compaction hash checks"),
    flag("experimental-compact-hash-check-time", Dur, "1m0s", Experimental, "Interval of the compaction hash check.")
        .refused("compaction hash checks"),
    flag("experimental-enable-v2v3", Str, "", Experimental, "Serve the v2 API on the v3 store, under this prefix.")
        .refused("etcd's v2 API"),
    flag("experimental-enable-lease-checkpoint", Bool, "false", Experimental, "Leader sends lease remaining TTLs to followers.")
        .accepted("retcd replicates keep-alives, so every member knows each lease's remaining TTL"),
    flag("experimental-enable-lease-checkpoint-persist", Bool, "false", Experimental, "Persist lease remaining TTLs.")
        .accepted("retcd's lease records are replicated and persisted, so remaining TTLs survive restarts"),
    flag("experimental-compaction-batch-limit", Int, "0", Experimental, "Revisions deleted in one compaction batch (0: 1000).")
        .refused_unless("compaction in batches", |v| v.int() == 1000),
    flag("experimental-compaction-sleep-interval", Dur, "0s", Experimental, "Pause between compaction batches (0: 10ms).")
        .refused_unless("compaction in batches", |v| v.nanos() == 10_000_000),
    flag("experimental-watch-progress-notify-interval", Dur, "10m0s", Experimental, "Period of watch progress notifications (0: 10m).")
        .on(|d, v| d.c.watch_progress_notify_interval = progress_interval(v), |c| show(&c.watch_progress_notify_interval)),
    flag("experimental-warning-apply-duration", Dur, "100ms", Experimental, "Log a warning when applying a request takes longer.")
        .refused("slow-apply warnings"),
    flag("experimental-backend-bbolt-freelist-type", Str, "", Experimental, "etcd 3.4's freelist type of bbolt (array or map).")
        .accepted("retcd's backend is redb, which has no bbolt freelist"),
    flag("experimental-txn-mode-write-with-shared-buffer", Bool, "true", Experimental, "Read-only checks in write transactions use the shared buffer.")
        .accepted("retcd's backend has no shared read buffer; a write transaction reads its own writes either way"),
    flag("experimental-bootstrap-defrag-threshold-megabytes", Uint, "0", Experimental, "Defragment at start when that frees at least this many MB.")
        .refused("defragmentation at start"),
    flag("experimental-downgrade-check-time", Dur, "5s", Experimental, "Interval of the downgrade status check.")
        .refused("cluster downgrades"),
    flag("experimental-memory-mlock", Bool, "false", Experimental, "Lock the process's memory.")
        .refused("locked memory"),
    flag("experimental-stop-grpc-service-on-defrag", Bool, "false", Experimental, "Report the gRPC health service NOT_SERVING during defragmentation.")
        .refused("NOT_SERVING during defragmentation"),
    flag("experimental-snapshot-catchup-entries", Uint, "5000", Experimental, "Entries kept after a snapshot for slow followers to catch up.")
        .yaml("experimental-snapshot-catch-up-entries")
        .on(|d, v| d.c.snapshot_catchup_entries = v.uint(), |c| show(&c.snapshot_catchup_entries)),
    flag("experimental-enable-distributed-tracing", Bool, "false", Experimental, "Distributed tracing with OpenTelemetry.")
        .refused("distributed tracing"),
    flag("experimental-distributed-tracing-address", Str, "localhost:4317", Experimental, "Address of the OpenTelemetry collector.")
        .refused("distributed tracing"),
    flag("experimental-distributed-tracing-service-name", Str, "etcd", Experimental, "Service name for distributed tracing.")
        .refused("distributed tracing"),
    flag("experimental-distributed-tracing-instance-id", Str, "", Experimental, "Instance id for distributed tracing.")
        .refused("distributed tracing"),
    flag("experimental-distributed-tracing-sampling-rate", Int, "0", Experimental, "Traces sampled per million requests.")
        .refused("distributed tracing"),
    // Unsafe
    flag("force-new-cluster", Bool, "false", Unsafe, "Force to create a new one-member cluster.")
        .on(|d, v| d.c.force_new_cluster = v.bool(), |c| show(&c.force_new_cluster)),
    flag("unsafe-no-fsync", Bool, "false", Unsafe, "Disable fsync (unsafe: loses data on a crash).")
        .refused("running without fsync"),
    // etcd 3.6 flags that current kubeadm passes
    flag("feature-gates", Gates, "", Etcd36, "etcd 3.6's feature gates (Name=true,...); InitialCorruptCheck is acted on.")
        .gates(),
    flag("watch-progress-notify-interval", Dur, "10m0s", Etcd36, "etcd 3.6's name of --experimental-watch-progress-notify-interval.")
        .on(|d, v| d.c.watch_progress_notify_interval = progress_interval(v), |c| show(&c.watch_progress_notify_interval)),
    // What chooses rather than sets
    flag("config-file", Str, "", Member, "Path to a YAML config file; flags and ETCD_* variables are then ignored.")
        .no_yaml(),
    flag("version", Bool, "false", Member, "Print the version and exit.").no_yaml(),
    // etcd's legacy flags: accepted, ignored, warned about
    flag("cluster-active-size", Ignored, "", Legacy, "").ignored(),
    flag("cluster-remove-delay", Ignored, "", Legacy, "").ignored(),
    flag("cluster-sync-interval", Ignored, "", Legacy, "").ignored(),
    flag("config", Ignored, "", Legacy, "").ignored(),
    flag("force", Ignored, "", Legacy, "").ignored(),
    flag("max-result-buffer", Ignored, "", Legacy, "").ignored(),
    flag("max-retry-attempts", Ignored, "", Legacy, "").ignored(),
    flag("peer-heartbeat-interval", Ignored, "", Legacy, "").ignored(),
    flag("peer-election-timeout", Ignored, "", Legacy, "").ignored(),
    flag("retry-interval", Ignored, "", Legacy, "").ignored(),
    flag("snapshot", Ignored, "", Legacy, "").ignored(),
    flag("v", Ignored, "", Legacy, "").ignored(),
    flag("vv", Ignored, "", Legacy, "").ignored(),
    flag("test.coverprofile", Ignored, "", Legacy, "").ignored(),
    flag("test.outputdir", Ignored, "", Legacy, "").ignored(),
];

const V2_STAGES: &[&str] = &[
    "not-yet",
    "write-only",
    "write-only-drop-data",
    "gone",
    "write-only-skip-check",
];
const ROTATION_JSON: &str =
    r#"{"maxsize": 100, "maxage": 0, "maxbackups": 0, "localtime": false, "compress": false}"#;

fn set_backend_batch_interval(d: &mut Draft, v: &Value) {
    d.c.backend_batch_interval = match d.duration("backend-batch-interval", v) {
        Duration::ZERO => Duration::from_millis(100),
        t => t,
    };
}

fn set_backend_batch_limit(d: &mut Draft, v: &Value) {
    d.c.backend_batch_limit = match u64::try_from(v.int()) {
        Ok(0) => 10_000,
        Ok(n) => n,
        Err(_) => {
            d.errors
                .push("--backend-batch-limit must not be negative".into());
            0
        }
    };
}

fn set_self_signed_cert_validity(d: &mut Draft, v: &Value) {
    d.c.self_signed_cert_validity_years = match u32_of(d, "self-signed-cert-validity", v.uint()) {
        0 => 1,
        n => n,
    };
}

/// Only a positive interval overrides etcd's built-in 10 minutes.
fn progress_interval(v: &Value) -> Duration {
    match u64::try_from(v.nanos()) {
        Ok(n) if n > 0 => Duration::from_nanos(n),
        _ => Duration::from_secs(600),
    }
}
