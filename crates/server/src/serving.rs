//! What each listener serves, and with which TLS, from the configuration: etcd's rules
//! for its client, peer and metrics URLs.
//!
//! | listener | serves | TLS (for `https://`, `unixs://`) |
//! |---|---|---|
//! | `--listen-client-urls` | gRPC and HTTP on one port; gRPC only when `--listen-client-http-urls` is set | client: `--cert-file` ..., or `--auto-tls` |
//! | `--listen-client-http-urls` | the HTTP endpoints | client |
//! | `--listen-peer-urls` | the peer protocol | peer: `--peer-cert-file` ..., or `--peer-auto-tls`; a peer's client certificate must name the address it connects from |
//! | `--listen-metrics-urls` | `/metrics`, `/health`, `/livez`, `/readyz` | client, plus the peer rule on client certificates (etcd's) |
//!
//! A member dials its peers with its peer certificate (or `--peer-client-cert-file`),
//! verifying them against `--peer-trusted-ca-file` (or not at all with
//! `--peer-auto-tls`, whose certificates nobody can verify).
//!
//! Like etcd, an `http://` or `unix://` listener ignores the TLS flags (with a warning),
//! and `--auto-tls` certificates encrypt without authenticating, so they come with no
//! client-certificate requirement. Unlike etcd, every setting dropped that way is named
//! in a warning, and every insecure setting in effect is logged at start.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use crate::config::{Config, TlsSettings};
use crate::listen::{self, Bound, ListenAddr, Target};
use crate::tls::{ClientSpec, ClientTls, ServerSpec, ServerTls, TlsParams};

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// gRPC and the HTTP endpoints, on one port.
    Client,
    /// gRPC only (`--listen-client-http-urls` serves the HTTP endpoints).
    ClientGrpc,
    /// The HTTP endpoints only (`--listen-client-http-urls`).
    ClientHttp,
    Peer,
    Metrics,
}

impl Role {
    /// For logs and the connection task: which kind of listener.
    pub fn kind(self) -> &'static str {
        match self {
            Role::Client | Role::ClientGrpc | Role::ClientHttp => "client",
            Role::Peer => "peer",
            Role::Metrics => "metrics",
        }
    }
}

/// A bound listener and how to serve it.
pub struct Listener {
    pub addr: ListenAddr,
    pub bound: Bound,
    pub tls: Option<Arc<ServerTls>>,
    pub role: Role,
}

/// Every listener of a member, bound, and how it dials its peers.
pub struct Plan {
    pub listeners: Vec<Listener>,
    pub dialer_tls: Option<Arc<ClientTls>>,
}

/// The listen URLs by role, parsed; a URL in both client lists is refused, as in etcd.
fn addresses(config: &Config) -> anyhow::Result<Vec<(ListenAddr, Role)>> {
    let parse = |url: &String| ListenAddr::parse(url).map_err(anyhow::Error::msg);
    let split = !config.listen_client_http_urls.is_empty();
    let mut out = Vec::new();
    for url in &config.listen_client_urls {
        if config.listen_client_http_urls.contains(url) {
            anyhow::bail!(
                "cannot bind both --listen-client-urls and --listen-client-http-urls on the same url {url}"
            );
        }
        let role = if split {
            Role::ClientGrpc
        } else {
            Role::Client
        };
        out.push((parse(url)?, role));
    }
    for url in &config.listen_client_http_urls {
        out.push((parse(url)?, Role::ClientHttp));
    }
    for url in &config.listen_peer_urls {
        out.push((parse(url)?, Role::Peer));
    }
    for url in &config.listen_metrics_urls {
        out.push((parse(url)?, Role::Metrics));
    }
    Ok(out)
}

/// Binds every listen URL (a port in use fails the start before the data directory is
/// touched, as in etcd), then loads or makes the TLS each one needs.
pub async fn bind(config: &Config) -> anyhow::Result<Plan> {
    let addresses = addresses(config)?;
    let mut bound = Vec::new();
    for (addr, role) in addresses {
        let b = listen::bind(&addr).await?;
        bound.push((addr, b, role));
    }
    let params = TlsParams::new(
        &config.cipher_suites,
        config.tls_min_version.as_deref(),
        config.tls_max_version.as_deref(),
    )?;
    let secure = |role: fn(Role) -> bool| bound.iter().any(|(a, _, r)| a.tls && role(*r));
    let is_client = |r: Role| matches!(r, Role::Client | Role::ClientGrpc | Role::ClientHttp);
    let data_dir = config.data_dir();
    let validity = config.self_signed_cert_validity_years;

    let client_files = if secure(is_client) || secure(|r| r == Role::Metrics) {
        let hosts = hosts(&bound, is_client);
        Some(files(
            &config.client_tls,
            "client",
            &data_dir,
            &hosts,
            validity,
        )?)
    } else {
        None
    };
    let client_spec = client_files.as_ref().map(|f| ServerSpec {
        listener: "client",
        cert_file: f.cert.clone(),
        key_file: f.key.clone(),
        trusted_ca_file: f
            .verify
            .then(|| config.client_tls.trusted_ca_file.clone())
            .flatten(),
        client_cert_auth: f.verify && config.client_tls.client_cert_auth,
        crl_file: f
            .verify
            .then(|| config.client_tls.crl_file.clone())
            .flatten(),
        allowed_cn: if f.verify {
            config.client_tls.allowed_cn.clone()
        } else {
            Vec::new()
        },
        allowed_hostname: if f.verify {
            config.client_tls.allowed_hostname.clone()
        } else {
            Vec::new()
        },
        client_san_must_match_ip: false,
        params: params.clone(),
    });
    let client_tls = match (&client_spec, secure(is_client)) {
        (Some(spec), true) => Some(ServerTls::new(spec.clone()).context("client TLS")?),
        _ => None,
    };
    // etcd checks a metrics client's certificate against its address, as a peer's.
    let metrics_tls = match (&client_spec, secure(|r| r == Role::Metrics)) {
        (Some(spec), true) => Some(
            ServerTls::new(ServerSpec {
                listener: "metrics",
                client_san_must_match_ip: true,
                ..spec.clone()
            })
            .context("metrics TLS")?,
        ),
        _ => None,
    };

    let peer_secure = secure(|r| r == Role::Peer);
    let peer_urls_secure = config
        .initial_advertise_peer_urls
        .iter()
        .chain(std::iter::once(&config.initial_cluster))
        .any(|u| u.contains("https://"));
    let peer_configured = config.peer_tls.auto_tls
        || config.peer_tls.cert_file.is_some()
        || config.peer_tls.trusted_ca_file.is_some();
    let peer_files = if peer_secure || (peer_urls_secure && peer_configured) {
        let hosts = hosts(&bound, |r| r == Role::Peer);
        Some(files(
            &config.peer_tls,
            "peer",
            &data_dir,
            &hosts,
            validity,
        )?)
    } else {
        None
    };
    let peer_tls = match (&peer_files, peer_secure) {
        (Some(f), true) => Some(
            ServerTls::new(ServerSpec {
                listener: "peer",
                cert_file: f.cert.clone(),
                key_file: f.key.clone(),
                trusted_ca_file: f
                    .verify
                    .then(|| config.peer_tls.trusted_ca_file.clone())
                    .flatten(),
                client_cert_auth: f.verify && config.peer_tls.client_cert_auth,
                crl_file: f.verify.then(|| config.peer_tls.crl_file.clone()).flatten(),
                allowed_cn: config.peer_tls.allowed_cn.clone(),
                allowed_hostname: config.peer_tls.allowed_hostname.clone(),
                client_san_must_match_ip: !config.experimental_peer_skip_client_san_verification,
                params: params.clone(),
            })
            .context("peer TLS")?,
        ),
        _ => None,
    };
    let dialer_tls = match &peer_files {
        Some(f) => {
            let (cert, key) = match (
                &config.peer_tls.client_cert_file,
                &config.peer_tls.client_key_file,
            ) {
                (Some(c), Some(k)) if f.verify => (c.clone(), k.clone()),
                _ => (f.cert.clone(), f.key.clone()),
            };
            Some(
                ClientTls::new(ClientSpec {
                    cert_file: Some(cert),
                    key_file: Some(key),
                    trusted_ca_file: config.peer_tls.trusted_ca_file.clone(),
                    crl_file: config.peer_tls.crl_file.clone(),
                    skip_verification: !f.verify,
                    allowed_cn: config.peer_tls.allowed_cn.clone(),
                    allowed_hostname: config.peer_tls.allowed_hostname.clone(),
                    params: params.clone(),
                })
                .context("TLS for dialing peers")?,
            )
        }
        None => None,
    };

    let listeners = bound
        .into_iter()
        .map(|(addr, bound, role)| {
            let tls = if !addr.tls {
                None
            } else {
                match role {
                    Role::Peer => peer_tls.clone(),
                    Role::Metrics => metrics_tls.clone(),
                    _ => client_tls.clone(),
                }
            };
            Listener {
                addr,
                bound,
                tls,
                role,
            }
        })
        .collect();
    let plan = Plan {
        listeners,
        dialer_tls,
    };
    warn_insecure(config, &plan);
    Ok(plan)
}

/// A side's certificate and key, and whether it verifies the other side (not with an
/// auto-TLS certificate).
struct Files {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    verify: bool,
}

/// The certificate files of one side: given ones, or a self-signed pair made (or reused)
/// in `<data-dir>/fixtures/<side>` for `--auto-tls`/`--peer-auto-tls`.
fn files(
    tls: &TlsSettings,
    side: &'static str,
    data_dir: &Path,
    hosts: &[String],
    validity_years: u32,
) -> anyhow::Result<Files> {
    let flag = if side == "peer" { "--peer-" } else { "--" };
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        if tls.auto_tls {
            tracing::warn!(
                "ignoring {flag}auto-tls since {flag}cert-file and {flag}key-file are given"
            );
        }
        return Ok(Files {
            cert: cert.clone(),
            key: key.clone(),
            verify: true,
        });
    }
    if !tls.auto_tls {
        anyhow::bail!(
            "TLS key/cert ({flag}cert-file, {flag}key-file) must be provided for {side} URLs with an https or unixs scheme"
        );
    }
    let dropped: Vec<&str> = [
        (tls.client_cert_auth, "client-cert-auth"),
        (tls.trusted_ca_file.is_some(), "trusted-ca-file"),
        (tls.crl_file.is_some(), "crl-file"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect();
    if !dropped.is_empty() {
        tracing::warn!(
            side,
            ignored = ?dropped,
            "{flag}auto-tls makes a self-signed certificate that encrypts without authenticating: client certificates are neither required nor checked"
        );
    }
    let dir = data_dir.join("fixtures").join(side);
    let (cert, key) = crate::tls::self_signed(&dir, hosts, validity_years)?;
    Ok(Files {
        cert,
        key,
        verify: false,
    })
}

/// The hosts of the TCP listeners of the roles `role` picks, for an auto-TLS
/// certificate's names (etcd names the listen URLs' hosts).
fn hosts(bound: &[(ListenAddr, Bound, Role)], role: impl Fn(Role) -> bool) -> Vec<String> {
    let mut hosts = Vec::new();
    for (addr, _, r) in bound {
        if let Some(h) = addr.host().filter(|_| role(*r))
            && !hosts.contains(&h)
        {
            hosts.push(h);
        }
    }
    hosts
}

/// Logs every insecure setting in effect, once, at start.
fn warn_insecure(config: &Config, plan: &Plan) {
    for l in &plan.listeners {
        let public = match &l.addr.target {
            Target::Tcp(_) => !l.addr.host().is_some_and(|h| listen::is_loopback(&h)),
            Target::Unix(_) => false,
        };
        match (&l.tls, l.role) {
            (None, Role::Peer) => tracing::warn!(
                url = %l.addr.url,
                "peer traffic is not encrypted: anyone on the network can read and forge it"
            ),
            (None, Role::Metrics) => {}
            (None, _) if public => tracing::warn!(
                url = %l.addr.url,
                "client traffic is served in plaintext on a non-loopback address"
            ),
            (None, _) => {
                tracing::info!(url = %l.addr.url, "client traffic is served in plaintext on a local address")
            }
            (Some(_), Role::Peer) => {
                if !(config.peer_tls.client_cert_auth || config.peer_tls.trusted_ca_file.is_some())
                    || config.peer_tls.auto_tls && config.peer_tls.cert_file.is_none()
                {
                    tracing::warn!(
                        url = %l.addr.url,
                        "peers are not required to present a verified certificate: anyone who reaches this port can join the Raft traffic"
                    );
                }
            }
            (Some(_), _) => {
                if !(config.client_tls.client_cert_auth
                    || config.client_tls.trusted_ca_file.is_some())
                    || config.client_tls.auto_tls && config.client_tls.cert_file.is_none()
                {
                    tracing::warn!(
                        url = %l.addr.url,
                        "clients are not required to present a certificate"
                    );
                }
            }
        }
    }
    if plan.dialer_tls.as_ref().is_some()
        && config.peer_tls.auto_tls
        && config.peer_tls.cert_file.is_none()
    {
        tracing::warn!("peers are dialed without verifying their certificates (--peer-auto-tls)");
    }
    tracing::warn!(
        "authentication is off: every client that reaches a client URL can read and write every key"
    );
}
