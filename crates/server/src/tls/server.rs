//! A listener's TLS: the server certificate, and the verification of client certificates
//! when the listener asks for them; reloaded from the files when they change.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use super::verify::{AllowList, client_san_matches};
use super::{
    FileStamp, HANDSHAKE_TIMEOUT, TlsError, TlsParams, load_certs, load_crls, load_key, load_roots,
    rustls_error, stamp,
};

/// What a TLS listener serves and checks.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    /// For logs: "client", "peer", "metrics".
    pub listener: &'static str,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA bundle client certificates must chain to.
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate, verified against `trusted_ca_file`. A trusted CA
    /// file alone requires one too, as in etcd.
    pub client_cert_auth: bool,
    /// Revoked client certificates.
    pub crl_file: Option<PathBuf>,
    /// A client certificate's CN must be one of these (empty: any).
    pub allowed_cn: Vec<String>,
    /// A client certificate's SANs must name one of these hosts (empty: any).
    pub allowed_hostname: Vec<String>,
    /// A client certificate must name the address it connects from (an IP SAN equal to
    /// it, or a DNS SAN resolving to it): etcd's rule for peers with client-cert-auth.
    pub client_san_must_match_ip: bool,
    pub params: TlsParams,
}

impl ServerSpec {
    fn files(&self) -> Vec<&PathBuf> {
        [Some(&self.cert_file), Some(&self.key_file)]
            .into_iter()
            .chain([self.trusted_ca_file.as_ref(), self.crl_file.as_ref()])
            .flatten()
            .collect()
    }

    fn stamps(&self) -> Vec<FileStamp> {
        self.files().into_iter().map(|p| stamp(p)).collect()
    }

    fn build(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = self.params.provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&self.params.versions())
            .map_err(rustls_error)?;
        let builder = if self.client_cert_auth || self.trusted_ca_file.is_some() {
            let ca = self.trusted_ca_file.as_ref().ok_or_else(|| {
                TlsError::Rustls(format!(
                    "the {} listener requires client certificates but has no trusted CA file",
                    self.listener
                ))
            })?;
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(load_roots(ca)?, provider);
            if let Some(crl) = &self.crl_file {
                // Certificates of a CA the CRL is not from are not revoked by it.
                verifier = verifier
                    .with_crls(load_crls(crl)?)
                    .allow_unknown_revocation_status();
            }
            let verifier = verifier.build().map_err(rustls_error)?;
            let verifier = if self.allowed_cn.is_empty() && self.allowed_hostname.is_empty() {
                verifier
            } else {
                Arc::new(AllowList {
                    inner: verifier,
                    allowed_cn: self.allowed_cn.clone(),
                    allowed_hostname: self.allowed_hostname.clone(),
                })
            };
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder
            .with_single_cert(load_certs(&self.cert_file)?, load_key(&self.key_file)?)
            .map_err(rustls_error)?;
        // gRPC and HTTP/1.1 share the port, as in plaintext.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

struct Loaded {
    stamps: Vec<FileStamp>,
    config: Arc<ServerConfig>,
}

/// A TLS listener's configuration, rebuilt from its files when they change.
pub struct ServerTls {
    spec: ServerSpec,
    loaded: Mutex<Loaded>,
}

impl ServerTls {
    /// Loads the files now: a configuration that cannot be served fails the start.
    pub fn new(spec: ServerSpec) -> Result<Arc<ServerTls>, TlsError> {
        let stamps = spec.stamps();
        let config = spec.build()?;
        Ok(Arc::new(ServerTls {
            spec,
            loaded: Mutex::new(Loaded { stamps, config }),
        }))
    }

    /// The configuration for the next handshake: rebuilt first if a file changed since it
    /// was built. A rebuild that fails keeps the previous configuration.
    pub fn current(&self) -> Arc<ServerConfig> {
        let stamps = self.spec.stamps();
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if stamps != loaded.stamps {
            match self.spec.build() {
                Ok(config) => {
                    tracing::info!(listener = self.spec.listener, "reloaded TLS certificates");
                    loaded.config = config;
                }
                Err(e) => tracing::warn!(
                    listener = self.spec.listener,
                    error = %e,
                    "changed TLS files do not load; keeping the previous ones"
                ),
            }
            // Retried at the next change, not at every connection.
            loaded.stamps = stamps;
        }
        loaded.config.clone()
    }

    /// The server side of a handshake on `stream` (from `remote`, for a TCP listener),
    /// within [`HANDSHAKE_TIMEOUT`], then the checks made on the finished handshake.
    pub async fn accept<S>(&self, stream: S, remote: Option<IpAddr>) -> Result<TlsStream<S>, String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current());
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return Err(format!("TLS handshake failed: {e}")),
            Err(_) => return Err("TLS handshake timed out".to_string()),
        };
        if self.spec.client_san_must_match_ip
            && let Some(ip) = remote
        {
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first().cloned());
            match cert {
                Some(cert) if client_san_matches(&cert, ip).await => {}
                Some(_) => {
                    return Err(format!(
                        "the client certificate names neither {ip} nor a host resolving to it"
                    ));
                }
                // Whether a certificate is required is the verifier's business; the
                // SAN rule applies to the certificates presented.
                None => {}
            }
        }
        Ok(tls)
    }
}
