//! TLS for every listener (client, peer, metrics) and for dialing peers, with rustls (no
//! OpenSSL).
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | [`TlsParams`] (versions and cipher suites, etcd's names), file loading, errors, [`MaybeTls`] (a connection in the clear or over TLS) |
//! | `server.rs` | [`ServerTls`]: a listener's TLS, reloaded from its files, with a handshake deadline |
//! | `client.rs` | [`ClientTls`]: how a member dials its peers over `https://` |
//! | `verify.rs` | the peer allow-lists (CN, hostname) and the client-certificate SAN check |
//! | `auto.rs` | `--auto-tls`/`--peer-auto-tls`: self-signed certificates made in Rust |
//!
//! # Reload
//! A listener's certificate, key, CA bundle and CRL are files an operator replaces in
//! place (cert-manager, kubeadm's renewal). Each new connection checks their
//! modification time and size; when any changed, the configuration is rebuilt from the
//! files, and the next handshake uses it. A rebuild that fails (a half-written file)
//! keeps the previous configuration and is logged; connections already open are never
//! affected.
//!
//! # Handshakes cannot pile up
//! The handshake runs in the connection's own task, never in the accept loop, and has
//! a deadline ([`HANDSHAKE_TIMEOUT`]): a connection that never sends a ClientHello (or
//! stalls in the middle) is closed then, holding nothing but its socket meanwhile.

mod auto;
mod client;
mod server;
pub mod verify;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::{RootCertStore, SupportedCipherSuite, SupportedProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use auto::self_signed;
pub use client::{ClientSpec, ClientTls};
pub use server::{ServerSpec, ServerTls};

/// Longest a TLS handshake may take before the connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A configuration that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: String },
    #[error("{path} holds no {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("unexpected TLS cipher suite {0:?}")]
    UnknownCipherSuite(String),
    #[error(
        "TLS cipher suite {0:?} is not supported: retcd offers only AEAD suites with forward secrecy (ECDHE with AES-GCM or ChaCha20-Poly1305)"
    )]
    UnsupportedCipherSuite(String),
    #[error("unknown TLS version {0:?} (want TLS1.2 or TLS1.3)")]
    UnknownVersion(String),
    #[error("tls-min-version is greater than tls-max-version")]
    MinAboveMax,
    #[error(
        "cipher suites cannot be chosen with tls-min-version TLS1.3 (TLS 1.3's suites are fixed)"
    )]
    CipherSuitesWithTls13,
    #[error("TLS configuration: {0}")]
    Rustls(String),
    #[error("cannot write {path}: {error}")]
    Write { path: PathBuf, error: String },
}

/// A TLS protocol version, by etcd's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// `TLS1.2` or `TLS1.3` (etcd's `--tls-min-version`/`--tls-max-version` values).
    pub fn parse(s: &str) -> Result<TlsVersion, TlsError> {
        match s {
            "TLS1.2" => Ok(TlsVersion::Tls12),
            "TLS1.3" => Ok(TlsVersion::Tls13),
            other => Err(TlsError::UnknownVersion(other.to_string())),
        }
    }

    fn rustls(self) -> &'static SupportedProtocolVersion {
        match self {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        }
    }
}

/// What every TLS endpoint of a member shares: protocol versions and cipher suites.
/// TLS 1.0 and 1.1 are never offered (rustls has neither).
#[derive(Clone, Debug)]
pub struct TlsParams {
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// TLS 1.2 suites in preference order; empty for rustls's defaults. TLS 1.3's suites
    /// are fixed, as in Go.
    pub cipher_suites: Vec<SupportedCipherSuite>,
}

impl Default for TlsParams {
    fn default() -> Self {
        TlsParams {
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            cipher_suites: Vec::new(),
        }
    }
}

impl TlsParams {
    /// From etcd's flags: `--cipher-suites` (Go's names), `--tls-min-version`,
    /// `--tls-max-version` (`None` or empty: etcd's defaults, TLS1.2 and the newest).
    pub fn new(
        cipher_suites: &[String],
        min_version: Option<&str>,
        max_version: Option<&str>,
    ) -> Result<TlsParams, TlsError> {
        let version = |v: Option<&str>, default| match v.filter(|v| !v.is_empty()) {
            Some(v) => TlsVersion::parse(v),
            None => Ok(default),
        };
        let min_version = version(min_version, TlsVersion::Tls12)?;
        let max_version = version(max_version, TlsVersion::Tls13)?;
        if min_version > max_version {
            return Err(TlsError::MinAboveMax);
        }
        let names: Vec<&String> = cipher_suites.iter().filter(|s| !s.is_empty()).collect();
        if !names.is_empty() && min_version == TlsVersion::Tls13 {
            return Err(TlsError::CipherSuitesWithTls13);
        }
        let cipher_suites = names
            .into_iter()
            .map(|name| cipher_suite(name))
            .collect::<Result<_, _>>()?;
        Ok(TlsParams {
            min_version,
            max_version,
            cipher_suites,
        })
    }

    /// The protocol versions to offer, newest first.
    fn versions(&self) -> Vec<&'static SupportedProtocolVersion> {
        [TlsVersion::Tls13, TlsVersion::Tls12]
            .into_iter()
            .filter(|v| *v >= self.min_version && *v <= self.max_version)
            .map(TlsVersion::rustls)
            .collect()
    }

    /// ring's provider with the chosen TLS 1.2 suites (and TLS 1.3's, always).
    fn provider(&self) -> Arc<CryptoProvider> {
        // ring rather than aws-lc-rs: no cmake and no large C build on a fresh machine.
        // rustls 0.23.48 deprecates it for lacking post-quantum key exchange, which etcd
        // (Go's crypto/tls as etcd 3.4 and 3.5 build it) does not offer either.
        #[allow(deprecated)]
        let mut provider = rustls::crypto::ring::default_provider();
        if !self.cipher_suites.is_empty() {
            let tls13 = provider
                .cipher_suites
                .iter()
                .filter(|s| s.version() == &rustls::version::TLS13)
                .copied();
            provider.cipher_suites = tls13.chain(self.cipher_suites.iter().copied()).collect();
        }
        Arc::new(provider)
    }
}

/// A cipher suite by the name Go (and so etcd's `--cipher-suites`) gives it.
fn cipher_suite(name: &str) -> Result<SupportedCipherSuite, TlsError> {
    use rustls::crypto::ring::cipher_suite as cs;
    Ok(match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"
        | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        // Suites Go knows that rustls does not offer: CBC modes, RSA key exchange, RC4,
        // 3DES. Refused by name rather than silently dropped.
        "TLS_RSA_WITH_RC4_128_SHA"
        | "TLS_RSA_WITH_3DES_EDE_CBC_SHA"
        | "TLS_RSA_WITH_AES_128_CBC_SHA"
        | "TLS_RSA_WITH_AES_256_CBC_SHA"
        | "TLS_RSA_WITH_AES_128_CBC_SHA256"
        | "TLS_RSA_WITH_AES_128_GCM_SHA256"
        | "TLS_RSA_WITH_AES_256_GCM_SHA384"
        | "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA"
        | "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"
        | "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"
        | "TLS_ECDHE_RSA_WITH_RC4_128_SHA"
        | "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA"
        | "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"
        | "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA"
        | "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256"
        | "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256" => {
            return Err(TlsError::UnsupportedCipherSuite(name.to_string()));
        }
        other => return Err(TlsError::UnknownCipherSuite(other.to_string())),
    })
}

/// (modification time, length) of a file: what tells a replaced file.
type FileStamp = Option<(std::time::SystemTime, u64)>;

fn stamp(path: &Path) -> FileStamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn read_error(path: &Path, error: impl std::fmt::Display) -> TlsError {
    TlsError::Read {
        path: path.to_path_buf(),
        error: error.to_string(),
    }
}

/// Every certificate of a PEM file (a chain, or a CA bundle).
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| read_error(path, e))
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| read_error(path, format!("a CA certificate is not usable: {e}")))?;
    }
    Ok(Arc::new(roots))
}

fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| read_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(path, e))?;
    if crls.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "certificate revocation list",
        });
    }
    Ok(crls)
}

fn rustls_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Rustls(e.to_string())
}

#[cfg(test)]
mod tests;

/// A connection in the clear or over TLS: a listener's accepted connections
/// (`T` = `tokio_rustls::server::TlsStream`) and a member's dials to its peers
/// (`tokio_rustls::client::TlsStream`).
pub enum MaybeTls<P, T> {
    Plain(P),
    Tls(Box<T>),
}

impl<P, T> AsyncRead for MaybeTls<P, T>
where
    P: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<P, T> AsyncWrite for MaybeTls<P, T>
where
    P: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }
}
