//! gRPC connections: HTTP/2 over TCP with Nagle off, optionally in TLS
//! (rustls on the ring provider), one [`Channel`] per `--conns`, spread
//! over the endpoints round-robin.
//!
//! A tonic `Channel` is one HTTP/2 connection that multiplexes any number of
//! concurrent requests, so `--clients` above `--conns` share connections the
//! way etcd's benchmark shares its grpc-go `ClientConn`s.

use std::path::Path;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use crate::cli::GlobalArgs;
use crate::error::BenchError;

/// etcd's clients accept responses up to 2 GiB; tonic's default of 4 MiB
/// would fail a large range.
pub const MAX_DECODING_MESSAGE_BYTES: usize = i32::MAX as usize;

/// The endpoint as a URI: `http://` and `https://` URLs are kept; a bare
/// `host:port` becomes `https://host:port` when TLS flags (`--cacert`,
/// `--cert`, `--key`) were given, as in etcd's benchmark, else
/// `http://host:port`. Other schemes and URIs without a port are refused.
pub fn endpoint_uri(endpoint: &str, tls_flags: bool) -> Result<String, BenchError> {
    let endpoint = endpoint.trim();
    let invalid = |reason: &str| BenchError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let uri = if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.to_owned()
    } else if endpoint.contains("://") {
        return Err(invalid("only http:// and https:// endpoints are supported"));
    } else if tls_flags {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    };
    let parsed: Uri = uri.parse().map_err(|_| invalid("not a URI"))?;
    if parsed.port_u16().is_none() {
        return Err(invalid("missing port"));
    }
    Ok(uri)
}

/// Whether a URI from [`endpoint_uri`] is a TLS endpoint.
pub fn is_tls(uri: &str) -> bool {
    uri.starts_with("https://")
}

/// The contents of `--cacert`, `--cert` and `--key`, read once before
/// connecting.
#[derive(Debug, Clone)]
pub struct Tls {
    ca: Option<Certificate>,
    identity: Option<Identity>,
}

impl Tls {
    /// Reads the files named by the TLS flags; `None` when none was given.
    pub fn from_args(g: &GlobalArgs) -> Result<Option<Tls>, BenchError> {
        if !g.tls_flags() {
            return Ok(None);
        }
        let read = |flag: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| BenchError::InvalidArgument(format!("{flag} {}: {e}", path.display())))
        };
        let ca = match &g.cacert {
            Some(path) => Some(Certificate::from_pem(read("--cacert", path)?)),
            None => None,
        };
        let identity = match (&g.cert_file, &g.key_file) {
            (Some(cert), Some(key)) => Some(Identity::from_pem(
                read("--cert", cert)?,
                read("--key", key)?,
            )),
            (None, None) => None,
            _ => {
                return Err(BenchError::InvalidArgument(
                    "--cert and --key go together".into(),
                ));
            }
        };
        Ok(Some(Tls { ca, identity }))
    }

    /// The client configuration for one endpoint: the server's certificate
    /// must be signed by --cacert and name `uri`'s host.
    fn client_config(&self, uri: &Uri) -> Result<ClientTlsConfig, String> {
        let ca = self.ca.clone().ok_or_else(|| {
            "a TLS endpoint needs --cacert; retcd-bench does not use the system's roots".to_owned()
        })?;
        let host = uri.host().ok_or("no host in the URI")?;
        // `[::1]` → `::1`: the name checked against the certificate's IP SANs.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let mut config = ClientTlsConfig::new().ca_certificate(ca).domain_name(host);
        if let Some(identity) = &self.identity {
            config = config.identity(identity.clone());
        }
        Ok(config)
    }
}

/// Opens `conns` connections, connection i to endpoint i % endpoints;
/// `https://` endpoints (and bare ones when `tls` is given) over TLS.
pub async fn connect(
    endpoints: &[String],
    conns: usize,
    dial_timeout: Duration,
    tls: Option<&Tls>,
) -> Result<Vec<Channel>, BenchError> {
    assert!(!endpoints.is_empty(), "validated: at least one endpoint");
    let mut channels = Vec::with_capacity(conns);
    for i in 0..conns {
        let endpoint = &endpoints[i % endpoints.len()];
        let uri = endpoint_uri(endpoint, tls.is_some())?;
        let connect_error = |reason: String| BenchError::Connect {
            endpoint: endpoint.clone(),
            reason,
        };
        let mut builder = Endpoint::from_shared(uri.clone())
            .map_err(|e| connect_error(e.to_string()))?
            .tcp_nodelay(true)
            .connect_timeout(dial_timeout);
        if is_tls(&uri) {
            let config = tls
                .ok_or_else(|| "a TLS endpoint needs --cacert".to_owned())
                .and_then(|tls| tls.client_config(builder.uri()))
                .map_err(|reason| BenchError::InvalidEndpoint {
                    endpoint: endpoint.clone(),
                    reason,
                })?;
            builder = builder
                .tls_config(config)
                .map_err(|e| connect_error(e.to_string()))?;
        }
        let channel = tokio::time::timeout(dial_timeout, builder.connect())
            .await
            .map_err(|_| connect_error(format!("no connection within {dial_timeout:?}")))?
            .map_err(|e| connect_error(format!("{e}: {:?}", std::error::Error::source(&e))))?;
        channels.push(channel);
    }
    Ok(channels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_become_http_uris() {
        assert_eq!(
            endpoint_uri("127.0.0.1:2379", false).unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            endpoint_uri(" localhost:1 ", false).unwrap(),
            "http://localhost:1"
        );
        assert_eq!(
            endpoint_uri("http://[::1]:2379", false).unwrap(),
            "http://[::1]:2379"
        );
        for bad in ["unix://x", "grpc://a:1", "127.0.0.1", "https://a", "a b:1"] {
            for tls_flags in [false, true] {
                assert!(
                    matches!(
                        endpoint_uri(bad, tls_flags),
                        Err(BenchError::InvalidEndpoint { .. })
                    ),
                    "{bad} accepted (tls flags: {tls_flags})"
                );
            }
        }
    }

    #[test]
    fn tls_flags_make_bare_endpoints_https_and_explicit_schemes_win() {
        assert_eq!(
            endpoint_uri("127.0.0.1:2379", true).unwrap(),
            "https://127.0.0.1:2379"
        );
        // An explicit scheme is kept either way.
        for tls_flags in [false, true] {
            assert_eq!(
                endpoint_uri("https://a:1", tls_flags).unwrap(),
                "https://a:1"
            );
            assert_eq!(endpoint_uri("http://a:1", tls_flags).unwrap(), "http://a:1");
        }
        assert!(is_tls("https://a:1"));
        assert!(!is_tls("http://a:1"));
    }

    #[tokio::test]
    async fn an_https_endpoint_without_tls_flags_is_refused_before_dialing() {
        // Refused before any dialing: the error names the missing --cacert.
        let err = connect(
            &["https://127.0.0.1:9".to_owned()],
            1,
            Duration::from_secs(2),
            None,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, BenchError::InvalidEndpoint { reason, .. } if reason.contains("--cacert")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_closed_port_fails_to_connect() {
        // Bind then drop: the port is free and nothing listens on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = connect(
            &[format!("127.0.0.1:{port}")],
            1,
            Duration::from_secs(2),
            None,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, BenchError::Connect { .. }), "{err}");
    }
}

/// A connection as the workloads use it: the channel, with the auth token of `--user`
/// (if given) on every request.
pub type Conn = InterceptedService<Channel, AuthToken>;

/// The token every request carries (etcd's `token` metadata), if any.
#[derive(Clone, Debug, Default)]
pub struct AuthToken(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for AuthToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            req.metadata_mut().insert("token", token.clone());
        }
        Ok(req)
    }
}

/// `--user name:password` split (etcd's benchmark takes the same form).
pub fn credentials(user: &str) -> Result<(String, String), BenchError> {
    match user.split_once(':') {
        Some((name, password)) if !name.is_empty() => Ok((name.to_owned(), password.to_owned())),
        _ => Err(BenchError::InvalidArgument(
            "--user must be NAME:PASSWORD".into(),
        )),
    }
}

/// Logs in as `user` (`name:password`) over `channel`: the token for every request.
pub async fn login(
    channel: &Channel,
    user: &str,
    timeout: Duration,
) -> Result<AuthToken, BenchError> {
    let (name, password) = credentials(user)?;
    let mut auth = retcd_api::etcdserverpb::auth_client::AuthClient::new(channel.clone());
    let request = retcd_api::etcdserverpb::AuthenticateRequest { name, password };
    let token = tokio::time::timeout(timeout, auth.authenticate(request))
        .await
        .map_err(|_| BenchError::setup_timeout("Authenticate"))?
        .map_err(|s| BenchError::setup("Authenticate", &s))?
        .into_inner()
        .token;
    let value = token
        .parse()
        .map_err(|_| BenchError::InvalidArgument("the server's token is not ASCII".into()))?;
    Ok(AuthToken(Some(value)))
}

/// The channels as [`Conn`]s carrying `token`.
pub fn with_token(channels: Vec<Channel>, token: &AuthToken) -> Vec<Conn> {
    channels
        .into_iter()
        .map(|c| InterceptedService::new(c, token.clone()))
        .collect()
}
