//! TLS for the server tests: one set of certificates made in Rust (a CA, a second CA, a
//! server certificate, good, expired and revoked client certificates, a CRL), clients
//! that speak HTTP/1.1, HTTP/2 or gRPC over TLS with any of them, and a `retcd` whose
//! client URL is `https://` (readiness polled over TLS, with a deadline).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use retcd_testkit::pki::{Ca, Leaf, Pair, Validity};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{DEADLINE, Retcd};

/// How long one TLS exchange of a test may take before it counts as refused.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// The certificates of a TLS test, as PEM files in one directory.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: Ca,
    /// For 127.0.0.1 and localhost, server and client use (etcd's docs issue one
    /// certificate for both).
    pub server: Pair,
    pub good: Pair,
    /// Signed by another CA.
    pub other_ca: Pair,
    pub expired: Pair,
    pub revoked: Pair,
    /// Lists `revoked`.
    pub crl: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let mut ca = Ca::new(dir, "ca");
        let mut other = Ca::new(dir, "other");
        let (server, _) = ca.issue("server", &Leaf::default());
        let client = |cn| Leaf {
            cn,
            server: false,
            ..Leaf::default()
        };
        let (good, _) = ca.issue("good", &client("good"));
        let (other_ca, _) = other.issue("stranger", &client("stranger"));
        let (expired, _) = ca.issue(
            "expired",
            &Leaf {
                validity: Validity::Expired,
                ..client("expired")
            },
        );
        let (revoked, serial) = ca.issue("revoked", &client("revoked"));
        let crl = ca.crl("crl", &[serial]);
        Pki {
            dir: dir.to_path_buf(),
            ca,
            server,
            good,
            other_ca,
            expired,
            revoked,
            crl,
        }
    }

    /// The client credentials a listener with client-cert-auth must refuse, by name.
    pub fn bad_clients(&self) -> Vec<(&'static str, Option<&Pair>)> {
        vec![
            ("no certificate", None),
            ("another CA", Some(&self.other_ca)),
            ("expired", Some(&self.expired)),
            ("revoked", Some(&self.revoked)),
        ]
    }

    /// `--cert-file --key-file --trusted-ca-file --client-cert-auth --client-crl-file`.
    pub fn client_flags(&self) -> Vec<String> {
        vec![
            format!("--cert-file={}", self.server.cert()),
            format!("--key-file={}", self.server.key()),
            format!("--trusted-ca-file={}", self.ca.cert()),
            "--client-cert-auth".into(),
            format!("--client-crl-file={}", self.crl.display()),
        ]
    }

    /// The `--peer-*` twins of [`Pki::client_flags`].
    pub fn peer_flags(&self) -> Vec<String> {
        vec![
            format!("--peer-cert-file={}", self.server.cert()),
            format!("--peer-key-file={}", self.server.key()),
            format!("--peer-trusted-ca-file={}", self.ca.cert()),
            "--peer-client-cert-auth".into(),
            format!("--peer-crl-file={}", self.crl.display()),
        ]
    }
}

/// A TLS version a test client is limited to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Version {
    Tls12,
    Tls13,
    Any,
}

/// A rustls client trusting `ca`, presenting `cert` if any, offering `alpn`.
pub fn client_config(
    ca: &Path,
    cert: Option<&Pair>,
    version: Version,
    alpn: &[&[u8]],
) -> rustls::ClientConfig {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match version {
        Version::Tls12 => &[&rustls::version::TLS12],
        Version::Tls13 => &[&rustls::version::TLS13],
        Version::Any => rustls::ALL_VERSIONS,
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("read the CA") {
        roots.add(c.expect("a CA certificate")).expect("add the CA");
    }
    // ring, as the server uses (see tls::TlsParams::provider for why).
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut config = match cert {
        Some(p) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&p.cert)
                    .expect("read the cert")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("certificates"),
                PrivateKeyDer::from_pem_file(&p.key).expect("read the key"),
            )
            .expect("client auth cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// What a TLS exchange came to.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The server answered: the HTTP status, or 0 for an HTTP/2 SETTINGS frame.
    Answered(u16),
    /// The handshake failed, or the server closed without answering.
    Refused(String),
}

/// A TLS session to `addr` (server name 127.0.0.1), within [`EXCHANGE_TIMEOUT`].
pub async fn connect(
    addr: SocketAddr,
    config: rustls::ClientConfig,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let work = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// `GET path` over HTTP/1.1 and TLS; in TLS 1.3 a refused client certificate shows as a
/// failed read after the client finished its handshake, so both count as refused.
pub async fn https_get(addr: SocketAddr, config: rustls::ClientConfig, path: &str) -> Outcome {
    exchange(async {
        let s = connect(addr, config).await?;
        get_on(s, addr, path).await
    })
    .await
}

/// `GET path` in the clear, to see what a TLS port makes of it.
pub async fn plaintext_get(addr: SocketAddr, path: &str) -> Outcome {
    exchange(async {
        let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        get_on(s, addr, path).await
    })
    .await
}

/// One HTTP/1.1 GET on an open connection: the status, or why there was none.
async fn get_on<S>(mut s: S, addr: SocketAddr, path: &str) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
    http_status(&raw).ok_or_else(|| format!("no HTTP answer ({} bytes)", raw.len()))
}

/// Runs an exchange within [`EXCHANGE_TIMEOUT`]: its answer, or why it was refused.
async fn exchange(work: impl std::future::Future<Output = Result<u16, String>>) -> Outcome {
    match tokio::time::timeout(EXCHANGE_TIMEOUT, work).await {
        Ok(Ok(status)) => Outcome::Answered(status),
        Ok(Err(e)) => Outcome::Refused(e),
        Err(_) => Outcome::Refused("timed out".into()),
    }
}

fn http_status(raw: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(raw).ok()?;
    let line = text.lines().next()?;
    if !line.starts_with("HTTP/1.") {
        return None;
    }
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The HTTP/2 connection preface and an empty SETTINGS frame over TLS (ALPN h2): a
/// server that accepts the client answers with its own SETTINGS frame.
pub async fn h2_settings(addr: SocketAddr, config: rustls::ClientConfig) -> Outcome {
    let work = async {
        let mut s = connect(addr, config).await?;
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        s.write_all(&hello).await.map_err(|e| e.to_string())?;
        let mut frame = [0u8; 9];
        s.read_exact(&mut frame).await.map_err(|e| e.to_string())?;
        if frame[3] == 4 {
            Ok(0)
        } else {
            Err(format!("first frame of type {}", frame[3]))
        }
    };
    exchange(work).await
}

/// An etcd-client over TLS to `https://127.0.0.1:port`, trusting `ca`, with `cert`.
pub async fn grpc_client(
    port: u16,
    ca: &Path,
    cert: Option<&Pair>,
) -> Result<etcd_client::Client, String> {
    let pem = |p: &Path| std::fs::read(p).expect("read a PEM file");
    let mut tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(pem(ca)))
        .domain_name("127.0.0.1");
    if let Some(p) = cert {
        tls = tls.identity(etcd_client::Identity::from_pem(pem(&p.cert), pem(&p.key)));
    }
    let options = etcd_client::ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(EXCHANGE_TIMEOUT)
        .with_timeout(EXCHANGE_TIMEOUT);
    etcd_client::Client::connect([format!("https://127.0.0.1:{port}")], Some(options))
        .await
        .map_err(|e| e.to_string())
}

/// Whether a put over gRPC and TLS with `cert` succeeds.
pub async fn grpc_put(port: u16, ca: &Path, cert: Option<&Pair>) -> Result<(), String> {
    let mut c = grpc_client(port, ca, cert).await?;
    c.put("tls-probe", "1", None)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Starts `retcd` with its client URL `https://127.0.0.1:port` (the client TLS flags
/// come in `extra`) and waits until `/health` answers 200 over TLS with `cert`.
pub async fn start_https(
    data_dir: &Path,
    port: u16,
    extra: &[String],
    ca: &Path,
    cert: &Pair,
) -> Retcd {
    start_https_health_on(data_dir, port, extra, ca, cert, port).await
}

/// [`start_https`], polling `/health` on `health_port` (a client-http or metrics URL
/// when the client URL serves gRPC only).
pub async fn start_https_health_on(
    data_dir: &Path,
    port: u16,
    extra: &[String],
    ca: &Path,
    cert: &Pair,
    health_port: u16,
) -> Retcd {
    let url = format!("https://127.0.0.1:{port}");
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let server = Retcd::spawn_with(
        data_dir,
        port,
        &extra,
        &[
            ("ETCD_LISTEN_CLIENT_URLS", url.clone()),
            ("ETCD_ADVERTISE_CLIENT_URLS", url),
        ],
    );
    let start = Instant::now();
    loop {
        let config = client_config(ca, Some(cert), Version::Any, &[b"http/1.1"]);
        let got = https_get(addr(health_port), config, "/health").await;
        if got == Outcome::Answered(200) {
            return server;
        }
        if start.elapsed() > DEADLINE {
            panic!(
                "retcd did not become healthy over TLS in time (last: {got:?}); log:\n{}",
                server.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
