//! Listeners: binding etcd's listen URLs (`http`, `https`, `unix`, `unixs`) and serving
//! connections on them, with TLS where the scheme asks for it.
//!
//! Every listener serves an axum router through hyper-util's auto builder: HTTP/1.1 and
//! HTTP/2 on one port, told apart by the HTTP/2 preface (h2c in plaintext, ALPN and the
//! preface over TLS), as etcd serves gRPC and HTTP on its client URLs. The accept loop
//! only accepts; the TLS handshake (with its deadline) and the connection run in the
//! connection's own task, so a client that never finishes a handshake holds up nobody.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use crate::tls::{MaybeTls, ServerTls};

/// A listen URL, parsed: where to bind and whether to speak TLS there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenAddr {
    pub url: String,
    pub tls: bool,
    pub target: Target,
}

/// Where a listener binds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `host:port`, the host not yet resolved.
    Tcp(String),
    /// A unix socket path: etcd's `unix://localhost:2379` is the file `localhost:2379` in
    /// the working directory, and `unix:///run/etcd.sock` (etcd 3.5.13+) an absolute one.
    Unix(PathBuf),
}

impl ListenAddr {
    pub fn parse(url: &str) -> Result<ListenAddr, String> {
        let invalid = |why: &str| format!("listen URL {url:?}: {why}");
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("missing scheme"))?;
        let (tls, unix) = match scheme {
            "http" => (false, false),
            "https" => (true, false),
            "unix" => (false, true),
            "unixs" => (true, true),
            _ => return Err(invalid("the scheme must be http, https, unix or unixs")),
        };
        if unix {
            if rest.is_empty() {
                return Err(invalid("missing socket path"));
            }
            return Ok(ListenAddr {
                url: url.to_string(),
                tls,
                target: Target::Unix(PathBuf::from(rest)),
            });
        }
        let host_port = rest.trim_end_matches('/');
        if host_port.contains('/') {
            return Err(invalid("a listen URL must not have a path"));
        }
        let Some((host, port)) = host_port.rsplit_once(':') else {
            return Err(invalid("missing port"));
        };
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(invalid("want scheme://host:port"));
        }
        Ok(ListenAddr {
            url: url.to_string(),
            tls,
            target: Target::Tcp(host_port.to_string()),
        })
    }

    /// The host of a TCP listen URL (for auto-TLS certificates), if it has one.
    pub fn host(&self) -> Option<String> {
        match &self.target {
            Target::Tcp(hp) => hp
                .rsplit_once(':')
                .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string()),
            Target::Unix(_) => None,
        }
    }
}

/// A bound listen URL.
pub enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Bound {
    /// The bound TCP address (none for a unix socket).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Bound::Tcp(l) => l.local_addr().ok(),
            Bound::Unix(..) => None,
        }
    }
}

/// Binds `addr`. A unix socket file left by a process that died is removed first (etcd
/// 3.4 fails to restart on one).
pub async fn bind(addr: &ListenAddr) -> anyhow::Result<Bound> {
    match &addr.target {
        Target::Tcp(host_port) => {
            let sock = resolve(host_port).await?;
            let listener = TcpListener::bind(sock)
                .await
                .with_context(|| format!("cannot listen on {}", addr.url))?;
            Ok(Bound::Tcp(listener))
        }
        Target::Unix(path) => {
            if let Ok(meta) = std::fs::symlink_metadata(path)
                && std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type())
            {
                let _ = std::fs::remove_file(path);
            }
            let listener = UnixListener::bind(path)
                .with_context(|| format!("cannot listen on {}", addr.url))?;
            Ok(Bound::Unix(listener, path.clone()))
        }
    }
}

/// Resolves `host:port`; like etcd, a name that resolves to several addresses listens on
/// the first IPv4 one (`localhost` -> 127.0.0.1).
async fn resolve(host_port: &str) -> anyhow::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(host_port)
        .await
        .with_context(|| format!("cannot resolve {host_port}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .with_context(|| format!("{host_port} resolves to no address"))
}

/// HTTP/2 settings of client listeners (etcd's gRPC server options).
#[derive(Clone, Copy, Debug)]
pub struct Http2Settings {
    /// `--max-concurrent-streams`.
    pub max_concurrent_streams: u32,
    /// `--grpc-keepalive-interval`: how often the server pings an idle connection (zero:
    /// never).
    pub keepalive_interval: Duration,
    /// `--grpc-keepalive-timeout`: how long a ping may go unanswered before the
    /// connection is closed.
    pub keepalive_timeout: Duration,
    /// `--grpc-keepalive-min-time` on client listeners: clients pinging more often are
    /// cut off (`pings.rs`); `None` polices nothing.
    pub ping_min_time: Option<Duration>,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            max_concurrent_streams: u32::MAX,
            keepalive_interval: Duration::from_secs(2 * 3600),
            keepalive_timeout: Duration::from_secs(20),
            ping_min_time: None,
        }
    }
}

/// What serving one listener needs.
pub struct Serve {
    pub router: axum::Router,
    pub tls: Option<Arc<ServerTls>>,
    pub http2: Http2Settings,
    pub stop: watch::Receiver<bool>,
    pub graceful: Arc<GracefulShutdown>,
    /// For logs: "client", "peer", "metrics".
    pub kind: &'static str,
}

/// Accepts connections on `bound` until `serve.stop` turns true, serving each in its own
/// task. A unix socket file is removed when the loop ends.
pub async fn serve(bound: Bound, serve: Serve) {
    match bound {
        Bound::Tcp(listener) => {
            accept_loop(serve, || async {
                let (stream, peer) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok((stream, Some(peer)))
            })
            .await
        }
        Bound::Unix(listener, path) => {
            accept_loop(serve, || async {
                let (stream, _) = listener.accept().await?;
                Ok((stream, None))
            })
            .await;
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn accept_loop<S, F, Fut>(serve: Serve, mut accept: F)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<(S, Option<SocketAddr>)>>,
{
    let Serve {
        router,
        tls,
        http2,
        mut stop,
        graceful,
        kind,
    } = serve;
    let mut builder = Builder::new(TokioExecutor::new());
    let mut h2 = builder.http2();
    h2.max_concurrent_streams(http2.max_concurrent_streams)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(8 << 20);
    if !http2.keepalive_interval.is_zero() {
        h2.timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(http2.keepalive_interval)
            .keep_alive_timeout(http2.keepalive_timeout);
    }
    let builder = Arc::new(builder);
    let ping_min_time = http2.ping_min_time;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors and the like: back off briefly, keep serving.
                    tracing::warn!(listener = kind, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = async { let _ = stop.wait_for(|s| *s).await; } => return,
        };
        let (router, tls, graceful, builder) = (
            router.clone(),
            tls.clone(),
            graceful.clone(),
            builder.clone(),
        );
        tokio::spawn(async move {
            let io = match tls {
                None => MaybeTls::Plain(stream),
                Some(tls) => match tls.accept(stream, peer.map(|p| p.ip())).await {
                    Ok(s) => MaybeTls::Tls(Box::new(s)),
                    Err(e) => {
                        tracing::warn!(listener = kind, remote = ?peer, error = %e, "rejected connection");
                        return;
                    }
                },
            };
            let identity = ClientIdentity {
                addr: peer,
                tls: matches!(io, MaybeTls::Tls(_)),
                cn: match &io {
                    MaybeTls::Tls(s) => verified_cn(s.get_ref().1.peer_certificates()),
                    MaybeTls::Plain(_) => None,
                },
            };
            let router = tower::ServiceBuilder::new()
                .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(identity.clone());
                    req
                })
                .service(router);
            let svc = TowerToHyperService::new(router);
            let conn = builder
                .serve_connection_with_upgrades(
                    TokioIo::new(crate::authority::AuthorityFix::new(
                        crate::pings::PingPolicy::new(io, ping_min_time),
                    )),
                    svc,
                )
                .into_owned();
            if let Err(e) = graceful.watch(conn).await {
                tracing::debug!(listener = kind, remote = ?peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Who is at the other end of a client connection, as the connection (not the client)
/// says: every request carries it as an extension, for auth (`--client-cert-auth`'s CN
/// user, login throttling by address).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    pub addr: Option<std::net::SocketAddr>,
    /// Whether the connection is TLS (the host whitelist applies to plain HTTP only).
    pub tls: bool,
    /// The CN of the client certificate the TLS handshake verified.
    pub cn: Option<String>,
}

/// The first CN of the leaf certificate rustls verified (it hands over only verified
/// chains), if any.
fn verified_cn(chain: Option<&[rustls_pki_types::CertificateDer<'static>]>) -> Option<String> {
    let leaf = chain?.first()?;
    crate::tls::verify::names(leaf)
        .common_names
        .into_iter()
        .next()
}

/// Whether `ip` is a loopback address (for the startup warnings about plaintext).
pub fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
