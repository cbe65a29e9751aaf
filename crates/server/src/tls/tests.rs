//! The TLS layer against certificates made for the test: which client certificates a
//! listener takes, what a peer dial verifies, reload, the handshake deadline, auto-TLS.
//! Real TCP on 127.0.0.1; the server side is `ServerTls::accept` as every listener runs it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use retcd_testkit::pki::{Ca, Leaf, Pair, Validity};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    ca: Ca,
    other: Ca,
    server: Pair,
    good: Pair,
    expired: Pair,
    not_yet: Pair,
    revoked: Pair,
    wrong_ip: Pair,
    no_sans: Pair,
    crl: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = Ca::new(dir.path(), "ca");
    let mut other = Ca::new(dir.path(), "other");
    let (server, _) = ca.issue("server", &Leaf::default());
    let client = |cn| Leaf {
        cn,
        server: false,
        ..Leaf::default()
    };
    let (good, _) = ca.issue("good", &client("client1"));
    let (expired, _) = ca.issue(
        "expired",
        &Leaf {
            validity: Validity::Expired,
            ..client("client1")
        },
    );
    let (not_yet, _) = ca.issue(
        "not-yet",
        &Leaf {
            validity: Validity::NotYet,
            ..client("client1")
        },
    );
    let (revoked, serial) = ca.issue("revoked", &client("client1"));
    let (wrong_ip, _) = ca.issue(
        "wrong-ip",
        &Leaf {
            sans: &["10.9.9.9"],
            ..client("peer2")
        },
    );
    let (no_sans, _) = ca.issue(
        "no-sans",
        &Leaf {
            sans: &[],
            ..client("peer3")
        },
    );
    let crl = ca.crl("crl", &[serial]);
    let _ = other.issue("good", &client("client1"));
    Fixture {
        _dir: dir,
        ca,
        other,
        server,
        good,
        expired,
        not_yet,
        revoked,
        wrong_ip,
        no_sans,
        crl,
    }
}

fn server_spec(f: &Fixture) -> ServerSpec {
    ServerSpec {
        listener: "test",
        cert_file: f.server.cert.clone(),
        key_file: f.server.key.clone(),
        trusted_ca_file: Some(f.ca.cert.clone()),
        client_cert_auth: true,
        crl_file: Some(f.crl.clone()),
        allowed_cn: Vec::new(),
        allowed_hostname: Vec::new(),
        client_san_must_match_ip: false,
        params: TlsParams::default(),
    }
}

/// A listener that runs `accept` on every connection and answers "pong" to "ping" on
/// the connections that pass.
async fn listener(tls: Arc<ServerTls>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let tls = tls.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = tls.accept(stream, Some(peer.ip())).await {
                    let mut buf = [0u8; 4];
                    if s.read_exact(&mut buf).await.is_ok() {
                        let _ = s.write_all(b"pong").await;
                        let _ = s.flush().await;
                    }
                }
            });
        }
    });
    addr
}

/// A client with `ca` as its roots and `cert` (if any) as its certificate, at `version`.
fn client(ca: &Path, cert: Option<&Pair>, version: TlsVersion) -> rustls::ClientConfig {
    let params = TlsParams {
        min_version: version,
        max_version: version,
        cipher_suites: Vec::new(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(params.provider())
        .with_protocol_versions(&params.versions())
        .unwrap()
        .with_root_certificates(load_roots(ca).unwrap());
    match cert {
        Some(p) => builder
            .with_client_auth_cert(load_certs(&p.cert).unwrap(), load_key(&p.key).unwrap())
            .unwrap(),
        None => builder.with_no_client_auth(),
    }
}

/// Whether a client gets through: the handshake, and the server's answer (a client
/// certificate is refused after the client finished its side, in TLS 1.3).
async fn gets_through(addr: SocketAddr, config: rustls::ClientConfig) -> bool {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let Ok(mut s) = connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
    else {
        return false;
    };
    if s.write_all(b"ping").await.is_err() || s.flush().await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.is_ok() && &buf == b"pong"
}

// Goal: etcd's names and rules for versions and cipher suites.
#[test]
fn params_follow_etcds_flags() {
    let p = TlsParams::new(&[], None, None).unwrap();
    assert_eq!(
        (p.min_version, p.max_version),
        (TlsVersion::Tls12, TlsVersion::Tls13)
    );
    let p = TlsParams::new(&[], Some("TLS1.3"), Some("")).unwrap();
    assert_eq!(p.versions(), [&rustls::version::TLS13]);
    assert!(matches!(
        TlsParams::new(&[], Some("TLS1.3"), Some("TLS1.2")),
        Err(TlsError::MinAboveMax)
    ));
    assert!(matches!(
        TlsParams::new(&[], Some("TLS1.1"), None),
        Err(TlsError::UnknownVersion(_))
    ));
    let names = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let p = TlsParams::new(
        &names(&[
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        ]),
        None,
        None,
    )
    .unwrap();
    assert_eq!(p.cipher_suites.len(), 2);
    // The TLS 1.3 suites stay: Go's --cipher-suites restricts TLS 1.2 only.
    assert_eq!(p.provider().cipher_suites.len(), 5);
    assert!(matches!(
        TlsParams::new(&names(&["ECDHE-RSA-AES128-GCM-SHA256"]), None, None),
        Err(TlsError::UnknownCipherSuite(_))
    ));
    assert!(matches!(
        TlsParams::new(&names(&["TLS_RSA_WITH_AES_128_CBC_SHA"]), None, None),
        Err(TlsError::UnsupportedCipherSuite(_))
    ));
    assert!(matches!(
        TlsParams::new(
            &names(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]),
            Some("TLS1.3"),
            None
        ),
        Err(TlsError::CipherSuitesWithTls13)
    ));
}

// Goal: with client-cert-auth, only a valid certificate of the trusted CA that the CRL
// does not list gets through, over TLS 1.2 and TLS 1.3 alike (RELIABILITY.md T7).
#[tokio::test]
async fn client_certificates_are_verified() {
    let f = fixture();
    let addr = listener(ServerTls::new(server_spec(&f)).unwrap()).await;
    for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
        let ca = f.ca.cert.as_path();
        assert!(gets_through(addr, client(ca, Some(&f.good), version)).await);
        let other_good = Pair {
            cert: f.other.cert.with_file_name("other-good.pem"),
            key: f.other.cert.with_file_name("other-good-key.pem"),
        };
        for (what, cert) in [
            ("no certificate", None),
            ("another CA's", Some(&other_good)),
            ("expired", Some(&f.expired)),
            ("not yet valid", Some(&f.not_yet)),
            ("revoked", Some(&f.revoked)),
        ] {
            assert!(
                !gets_through(addr, client(ca, cert, version)).await,
                "{what} certificate got through at {version:?}"
            );
        }
    }
}

// Goal: a trusted CA alone already requires client certificates (etcd's rule), and a
// listener without either asks for none.
#[tokio::test]
async fn a_trusted_ca_alone_requires_client_certificates() {
    let f = fixture();
    let mut spec = server_spec(&f);
    spec.client_cert_auth = false;
    let addr = listener(ServerTls::new(spec.clone()).unwrap()).await;
    let ca = f.ca.cert.as_path();
    assert!(!gets_through(addr, client(ca, None, TlsVersion::Tls13)).await);
    spec.trusted_ca_file = None;
    spec.crl_file = None;
    let addr = listener(ServerTls::new(spec).unwrap()).await;
    assert!(gets_through(addr, client(ca, None, TlsVersion::Tls13)).await);
}

// Goal: the allow-lists and the peer rule that a client certificate names its address:
// a certificate for 10.9.9.9 is refused from 127.0.0.1, one without SANs passes.
#[tokio::test]
async fn peer_listener_checks_names() {
    let f = fixture();
    let ca = f.ca.cert.as_path();
    let mut spec = server_spec(&f);
    spec.client_san_must_match_ip = true;
    let addr = listener(ServerTls::new(spec.clone()).unwrap()).await;
    assert!(gets_through(addr, client(ca, Some(&f.good), TlsVersion::Tls13)).await);
    assert!(gets_through(addr, client(ca, Some(&f.no_sans), TlsVersion::Tls13)).await);
    assert!(!gets_through(addr, client(ca, Some(&f.wrong_ip), TlsVersion::Tls13)).await);
    spec.client_san_must_match_ip = false;
    spec.allowed_cn = vec!["peer2".to_string()];
    let addr = listener(ServerTls::new(spec.clone()).unwrap()).await;
    assert!(gets_through(addr, client(ca, Some(&f.wrong_ip), TlsVersion::Tls12)).await);
    assert!(!gets_through(addr, client(ca, Some(&f.good), TlsVersion::Tls12)).await);
    spec.allowed_cn.clear();
    spec.allowed_hostname = vec!["127.0.0.1".to_string()];
    let addr = listener(ServerTls::new(spec).unwrap()).await;
    assert!(gets_through(addr, client(ca, Some(&f.good), TlsVersion::Tls12)).await);
    assert!(!gets_through(addr, client(ca, Some(&f.no_sans), TlsVersion::Tls12)).await);
}

/// The serial number of the certificate a server presents.
async fn served_serial(addr: SocketAddr, ca: &Path, cert: &Pair) -> Vec<u8> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client(ca, Some(cert), TlsVersion::Tls13)));
    let s = connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let der = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, parsed) = <x509_parser::prelude::X509Certificate as x509_parser::prelude::FromDer<
        '_,
        _,
    >>::from_der(der.as_ref())
    .unwrap();
    parsed.raw_serial().to_vec()
}

// Goal: replacing the certificate files is seen by the next connection; a half-written
// replacement keeps the previous certificate (RELIABILITY.md T7: hot reload).
#[tokio::test]
async fn replaced_certificates_are_used_by_the_next_connection() {
    let mut f = fixture();
    let spec = server_spec(&f);
    let addr = listener(ServerTls::new(spec.clone()).unwrap()).await;
    let ca = f.ca.cert.clone();
    let first = served_serial(addr, &ca, &f.good).await;
    let (next, _) = f.ca.issue("server2", &Leaf::default());
    // A different mtime and size than the first write, whatever the clock's resolution.
    std::fs::write(
        &spec.cert_file,
        format!("{}\n", std::fs::read_to_string(&next.cert).unwrap()),
    )
    .unwrap();
    std::fs::copy(&next.key, &spec.key_file).unwrap();
    let second = served_serial(addr, &ca, &f.good).await;
    assert_ne!(first, second, "the new certificate is served");
    std::fs::write(&spec.cert_file, "-----BEGIN CERTIFICATE-----\ntrunc").unwrap();
    assert_eq!(served_serial(addr, &ca, &f.good).await, second);
}

// Goal: a connection that never sends a ClientHello is closed at the handshake deadline.
#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_at_the_deadline() {
    let f = fixture();
    let tls = ServerTls::new(server_spec(&f)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = TcpStream::connect(addr).await.unwrap();
    let (stream, peer) = listener.accept().await.unwrap();
    let started = tokio::time::Instant::now();
    let outcome = tls.accept(stream, Some(peer.ip())).await;
    assert_eq!(outcome.err().as_deref(), Some("TLS handshake timed out"));
    assert_eq!(started.elapsed(), HANDSHAKE_TIMEOUT);
}

// Goal: a peer dial verifies the peer against the peer CA and its URL's host, presents
// the member's certificate, and with auto-TLS encrypts without verifying.
#[tokio::test]
async fn peer_dials_verify_the_peer() {
    let f = fixture();
    let mut spec = server_spec(&f);
    spec.client_san_must_match_ip = true;
    let addr = listener(ServerTls::new(spec).unwrap()).await;
    let dial = |spec: ClientSpec| async move {
        let tls = ClientTls::new(spec).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        match tls.connect("127.0.0.1", tcp).await {
            Ok(mut s) => {
                s.write_all(b"ping").await.is_ok() && {
                    let mut buf = [0u8; 4];
                    s.read_exact(&mut buf).await.is_ok() && &buf == b"pong"
                }
            }
            Err(_) => false,
        }
    };
    let peer = ClientSpec {
        cert_file: Some(f.good.cert.clone()),
        key_file: Some(f.good.key.clone()),
        trusted_ca_file: Some(f.ca.cert.clone()),
        crl_file: None,
        skip_verification: false,
        allowed_cn: Vec::new(),
        allowed_hostname: Vec::new(),
        params: TlsParams::default(),
    };
    assert!(dial(peer.clone()).await);
    // Verifying against another CA fails; so does an allow-list the server's CN misses.
    assert!(
        !dial(ClientSpec {
            trusted_ca_file: Some(f.other.cert.clone()),
            ..peer.clone()
        })
        .await
    );
    assert!(
        !dial(ClientSpec {
            allowed_cn: vec!["someone-else".to_string()],
            ..peer.clone()
        })
        .await
    );
    // No CA but skip_verification (auto-TLS): encrypted, unverified.
    assert!(
        dial(ClientSpec {
            trusted_ca_file: None,
            skip_verification: true,
            ..peer
        })
        .await
    );
}

// Goal: auto-TLS makes a usable certificate for the listen hosts in a 0700 directory
// with 0600 files, and reuses it at the next start.
#[test]
fn auto_tls_files_are_private_and_reused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let fixtures = dir.path().join("fixtures/peer");
    let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let (cert, key) = self_signed(&fixtures, &hosts, 1).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&fixtures), 0o700);
    assert_eq!((mode(&cert), mode(&key)), (0o600, 0o600));
    let names = verify::names(&load_certs(&cert).unwrap()[0]);
    assert_eq!(names.dns, ["localhost"]);
    assert_eq!(
        names.ips,
        ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    let first = std::fs::read(&cert).unwrap();
    self_signed(&fixtures, &hosts, 1).unwrap();
    assert_eq!(std::fs::read(&cert).unwrap(), first, "reused");
    ServerTls::new(ServerSpec {
        listener: "auto",
        cert_file: cert,
        key_file: key,
        trusted_ca_file: None,
        client_cert_auth: false,
        crl_file: None,
        allowed_cn: Vec::new(),
        allowed_hostname: Vec::new(),
        client_san_must_match_ip: false,
        params: TlsParams::default(),
    })
    .unwrap();
}
