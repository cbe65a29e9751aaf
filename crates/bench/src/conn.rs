//! gRPC connections: plain HTTP/2 over TCP with Nagle off, one
//! [`Channel`] per `--conns`, spread over the endpoints round-robin.
//!
//! A tonic `Channel` is one HTTP/2 connection that multiplexes any number of
//! concurrent requests, so `--clients` above `--conns` share connections the
//! way etcd's benchmark shares its grpc-go `ClientConn`s.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::error::BenchError;

/// etcd's clients accept responses up to 2 GiB; tonic's default of 4 MiB
/// would fail a large range.
pub const MAX_DECODING_MESSAGE_BYTES: usize = i32::MAX as usize;

/// `host:port` → `http://host:port`; `http://` URLs are kept. TLS is not
/// supported yet, so `https://` is refused rather than silently downgraded.
pub fn endpoint_uri(endpoint: &str) -> Result<String, BenchError> {
    let endpoint = endpoint.trim();
    let invalid = |reason: &str| BenchError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    if endpoint.starts_with("https://") {
        return Err(invalid("TLS endpoints are not supported"));
    }
    let uri = if endpoint.starts_with("http://") {
        endpoint.to_owned()
    } else if endpoint.contains("://") {
        return Err(invalid("only http:// endpoints are supported"));
    } else {
        format!("http://{endpoint}")
    };
    let parsed: tonic::transport::Uri = uri.parse().map_err(|_| invalid("not a URI"))?;
    if parsed.port_u16().is_none() {
        return Err(invalid("missing port"));
    }
    Ok(uri)
}

/// Opens `conns` connections, connection i to endpoint i % endpoints.
pub async fn connect(
    endpoints: &[String],
    conns: usize,
    dial_timeout: Duration,
) -> Result<Vec<Channel>, BenchError> {
    assert!(!endpoints.is_empty(), "validated: at least one endpoint");
    let mut channels = Vec::with_capacity(conns);
    for i in 0..conns {
        let endpoint = &endpoints[i % endpoints.len()];
        let uri = endpoint_uri(endpoint)?;
        let connect_error = |reason: String| BenchError::Connect {
            endpoint: endpoint.clone(),
            reason,
        };
        let builder = Endpoint::from_shared(uri)
            .map_err(|e| connect_error(e.to_string()))?
            .tcp_nodelay(true)
            .connect_timeout(dial_timeout);
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
            endpoint_uri("127.0.0.1:2379").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(endpoint_uri(" localhost:1 ").unwrap(), "http://localhost:1");
        assert_eq!(
            endpoint_uri("http://[::1]:2379").unwrap(),
            "http://[::1]:2379"
        );
        for bad in ["https://a:1", "unix://x", "127.0.0.1", "a b:1"] {
            assert!(
                matches!(endpoint_uri(bad), Err(BenchError::InvalidEndpoint { .. })),
                "{bad} accepted"
            );
        }
    }

    #[tokio::test]
    async fn a_closed_port_fails_to_connect() {
        // Bind then drop: the port is free and nothing listens on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = connect(&[format!("127.0.0.1:{port}")], 1, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(err, BenchError::Connect { .. }), "{err}");
    }
}
