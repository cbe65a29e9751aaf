//! Dialing peers: a tonic channel to the first of a member's peer URLs that answers, in
//! the clear for `http://` and over TLS for `https://` (the member's peer TLS: its peer
//! certificate presented, the peer verified against the peer CA and the URL's host).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::tls::{ClientTls, MaybeTls};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_millis(1500);

/// How this member dials its peers.
#[derive(Clone, Default)]
pub struct Dialer {
    /// For `https://` peer URLs; `None` when the member has no peer TLS (an `https://`
    /// URL then fails to dial, with a message saying so).
    tls: Option<Arc<ClientTls>>,
}

impl Dialer {
    pub fn new(tls: Option<Arc<ClientTls>>) -> Dialer {
        Dialer { tls }
    }

    /// A channel to the first of `urls` that answers.
    pub async fn connect(&self, urls: &[String]) -> Result<Channel, String> {
        let mut last = "no peer URLs".to_string();
        for url in urls {
            match self.connect_one(url).await {
                Ok(ch) => return Ok(ch),
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(last)
    }

    async fn connect_one(&self, url: &str) -> Result<Channel, String> {
        let (scheme, rest) = url.split_once("://").ok_or("missing scheme")?;
        let tls = match scheme {
            "http" => None,
            "https" => Some(
                self.tls
                    .clone()
                    .ok_or("an https peer URL, but this member has no peer TLS configured")?,
            ),
            other => return Err(format!("peers are dialed over http or https, not {other}")),
        };
        let host_port = rest.trim_end_matches('/');
        // tonic sees plain HTTP/2; TLS, if any, is the connector's.
        let endpoint = Endpoint::from_shared(format!("http://{host_port}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        endpoint
            .connect_with_connector(Connector { tls })
            .await
            .map_err(|e| {
                let mut msg = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    msg = format!("{msg}: {s}");
                    source = s.source();
                }
                msg
            })
    }
}

/// TCP to the endpoint's host and port, then TLS when the URL was `https://`.
#[derive(Clone)]
struct Connector {
    tls: Option<Arc<ClientTls>>,
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<PeerIo>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<PeerIo>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let invalid = |what| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
            let host = uri.host().ok_or_else(|| invalid("no host"))?.to_string();
            let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
            let addr = format!("{host}:{port}");
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            let _ = tcp.set_nodelay(true);
            let io = match tls {
                None => MaybeTls::Plain(tcp),
                Some(tls) => MaybeTls::Tls(Box::new(tls.connect(&host, tcp).await?)),
            };
            Ok(TokioIo::new(io))
        })
    }
}

/// A connection to a peer, in the clear or over TLS.
pub type PeerIo = MaybeTls<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;
