//! How a member dials its peers over `https://`: the peer CA verifies them (and their
//! name, from the URL), the member presents its peer certificate, and the allow-lists
//! apply to the peer's certificate too, as in etcd. Reloaded from the files when they
//! change, like a listener's.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustls::ClientConfig;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::verify::PeerServerVerifier;
use super::{
    FileStamp, TlsError, TlsParams, load_certs, load_crls, load_key, load_roots, rustls_error,
    stamp,
};

/// What a member presents and checks when it dials a peer.
#[derive(Clone, Debug)]
pub struct ClientSpec {
    /// The certificate and key presented to the peer (etcd: the peer certificate, or
    /// `--peer-client-cert-file`).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// CA bundle the peer's certificate must chain to.
    pub trusted_ca_file: Option<PathBuf>,
    pub crl_file: Option<PathBuf>,
    /// Encrypt without verifying the peer (`--peer-auto-tls`'s self-signed certificates).
    pub skip_verification: bool,
    pub allowed_cn: Vec<String>,
    pub allowed_hostname: Vec<String>,
    pub params: TlsParams,
}

impl ClientSpec {
    fn files(&self) -> Vec<&PathBuf> {
        [
            self.cert_file.as_ref(),
            self.key_file.as_ref(),
            self.trusted_ca_file.as_ref(),
            self.crl_file.as_ref(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn stamps(&self) -> Vec<FileStamp> {
        self.files().into_iter().map(|p| stamp(p)).collect()
    }

    fn build(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = self.params.provider();
        let inner = if self.skip_verification {
            None
        } else {
            let ca = self.trusted_ca_file.as_ref().ok_or_else(|| {
                TlsError::Rustls(
                    "dialing peers over https needs --peer-trusted-ca-file (or --peer-auto-tls)"
                        .to_string(),
                )
            })?;
            let mut verifier =
                WebPkiServerVerifier::builder_with_provider(load_roots(ca)?, provider.clone());
            if let Some(crl) = &self.crl_file {
                verifier = verifier
                    .with_crls(load_crls(crl)?)
                    .allow_unknown_revocation_status();
            }
            Some(verifier.build().map_err(rustls_error)? as Arc<_>)
        };
        let verifier = Arc::new(PeerServerVerifier {
            inner,
            provider: provider.clone(),
            allowed_cn: self.allowed_cn.clone(),
            allowed_hostname: self.allowed_hostname.clone(),
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&self.params.versions())
            .map_err(rustls_error)?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(rustls_error)?,
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

struct Loaded {
    stamps: Vec<FileStamp>,
    config: Arc<ClientConfig>,
}

/// The configuration a member dials its peers with, rebuilt when its files change.
pub struct ClientTls {
    spec: ClientSpec,
    loaded: Mutex<Loaded>,
}

impl ClientTls {
    /// Loads the files now: a configuration that cannot be used fails the start.
    pub fn new(spec: ClientSpec) -> Result<Arc<ClientTls>, TlsError> {
        let stamps = spec.stamps();
        let config = spec.build()?;
        Ok(Arc::new(ClientTls {
            spec,
            loaded: Mutex::new(Loaded { stamps, config }),
        }))
    }

    fn current(&self) -> Arc<ClientConfig> {
        let stamps = self.spec.stamps();
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if stamps != loaded.stamps {
            match self.spec.build() {
                Ok(config) => {
                    tracing::info!("reloaded the TLS files for dialing peers");
                    loaded.config = config;
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "changed TLS files for dialing peers do not load; keeping the previous ones"
                ),
            }
            loaded.stamps = stamps;
        }
        loaded.config.clone()
    }

    /// TLS over an open connection to `host` (the URL's host: an IP or a DNS name, which
    /// the peer's certificate must carry).
    pub async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?
            .to_owned();
        tokio_rustls::TlsConnector::from(self.current())
            .connect(name, tcp)
            .await
    }
}
