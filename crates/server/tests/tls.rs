//! TLS on the real binary, the cases of RELIABILITY.md's T7: plaintext to a TLS port
//! fails; with client-cert-auth, no certificate, another CA's, an expired one and a
//! revoked one are refused on every listener (client gRPC and HTTP, client-http,
//! metrics, peer); TLS 1.0 and 1.1 are refused and `--tls-min-version TLS1.3` holds;
//! the peer allow-lists and the peer SAN rule hold; a replaced certificate serves the
//! next connection; connections that never say ClientHello cannot pile up.
//!
//! The certificates are made in Rust (retcd_testkit::pki) in a temporary directory.

mod common;

use std::time::{Duration, Instant};

use common::free_port;
use common::tls::{
    Outcome, Pki, Version, addr, client_config, grpc_put, h2_settings, https_get, plaintext_get,
    start_https,
};
use retcd_testkit::pki::Leaf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const H1: &[&[u8]] = &[b"http/1.1"];
const H2: &[&[u8]] = &[b"h2"];

/// Flags for an `https://` peer listener on `port`, advertised as the only member.
fn peer_urls(port: u16) -> Vec<String> {
    let url = format!("https://127.0.0.1:{port}");
    vec![
        format!("--listen-peer-urls={url}"),
        format!("--initial-advertise-peer-urls={url}"),
        format!("--initial-cluster=default={url}"),
    ]
}

fn refused(o: &Outcome) -> bool {
    matches!(o, Outcome::Refused(_))
}

// Goal: every listener of a member configured as etcd's secure deployments are (client
// URL, gRPC only, client-http URL and metrics URL over https with client-cert-auth and a
// CRL; peer URL over https with peer-client-cert-auth and a CRL) serves a good client certificate
// and refuses no certificate, another CA's, an expired one and a revoked one, and a
// plaintext request on any of them gets no answer from the server's handlers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_refuses_bad_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let (client, http, metrics, peer) = (free_port(), free_port(), free_port(), free_port());
    let mut flags = pki.client_flags();
    flags.extend(pki.peer_flags());
    flags.extend(peer_urls(peer));
    flags.push(format!(
        "--listen-client-http-urls=https://127.0.0.1:{http}"
    ));
    flags.push(format!("--listen-metrics-urls=https://127.0.0.1:{metrics}"));
    let server = common::tls::start_https_health_on(
        &dir.path().join("data"),
        client,
        &flags,
        &pki.ca.cert,
        &pki.good,
        http,
    )
    .await;
    let ca = &pki.ca.cert;

    // The good certificate gets through everywhere: HTTP/1.1 on the HTTP listeners,
    // HTTP/2 on the gRPC and peer listeners.
    let http_listeners = [("client-http", http), ("metrics", metrics)];
    let h2_listeners = [("client", client), ("peer", peer)];
    for (name, port) in http_listeners {
        let config = client_config(ca, Some(&pki.good), Version::Any, H1);
        let ok = https_get(addr(port), config, "/health").await;
        assert_eq!(ok, Outcome::Answered(200), "the {name} listener");
    }
    for (name, port) in h2_listeners {
        let config = client_config(ca, Some(&pki.good), Version::Any, H2);
        assert_eq!(
            h2_settings(addr(port), config).await,
            Outcome::Answered(0),
            "the {name} listener"
        );
    }
    grpc_put(client, ca, Some(&pki.good))
        .await
        .expect("gRPC put with a good certificate");

    // TLS 1.2 refuses a client certificate inside the handshake, 1.3 after it: both.
    for (what, cert) in pki.bad_clients() {
        for version in [Version::Tls12, Version::Tls13] {
            for (name, port) in http_listeners {
                let got =
                    https_get(addr(port), client_config(ca, cert, version, H1), "/health").await;
                assert!(
                    refused(&got),
                    "{what}, {version:?}, the {name} listener: {got:?}"
                );
            }
            for (name, port) in h2_listeners {
                let got = h2_settings(addr(port), client_config(ca, cert, version, H2)).await;
                assert!(
                    refused(&got),
                    "{what}, {version:?}, the {name} listener: {got:?}"
                );
            }
        }
        let got = grpc_put(client, ca, cert).await;
        assert!(got.is_err(), "{what}: a gRPC put went through");
    }

    for (name, port) in [
        ("client", client),
        ("client-http", http),
        ("metrics", metrics),
        ("peer", peer),
    ] {
        let got = plaintext_get(addr(port), "/health").await;
        assert!(
            !matches!(got, Outcome::Answered(200)),
            "plaintext on the {name} listener: {got:?}"
        );
    }
    let plain = etcd_client::Client::connect(
        [format!("http://127.0.0.1:{client}")],
        Some(etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(5))),
    )
    .await;
    if let Ok(mut c) = plain {
        assert!(
            c.put("k", "v", None).await.is_err(),
            "a plaintext gRPC put went through"
        );
    }
    drop(server);
}

/// A ClientHello of a TLS version before 1.2 (`version` 0x0301 or 0x0302), with that
/// era's cipher suites and no extensions, in one record.
fn legacy_client_hello(version: [u8; 2]) -> Vec<u8> {
    let suites: [u8; 8] = [0x00, 0x2f, 0x00, 0x35, 0xc0, 0x13, 0xc0, 0x09];
    let mut body = version.to_vec();
    body.extend([0x5a; 32]); // random
    body.push(0); // no session id
    body.extend((suites.len() as u16).to_be_bytes());
    body.extend(suites);
    body.extend([1, 0]); // compression: null only
    let mut handshake = vec![1]; // client_hello
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, version[0], version[1]];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// Sends a legacy ClientHello and returns the first byte of the server's answer (None
/// when it closed without one).
async fn answer_to_legacy_hello(port: u16, version: [u8; 2]) -> Option<u8> {
    let mut s = TcpStream::connect(addr(port)).await.unwrap();
    s.write_all(&legacy_client_hello(version)).await.unwrap();
    let mut first = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), s.read(&mut first)).await {
        Ok(Ok(1)) => Some(first[0]),
        Ok(_) => None,
        Err(_) => panic!("no answer and no close within 10 s to a TLS {version:?} ClientHello"),
    }
}

// Goal: a TLS 1.0 or 1.1 ClientHello gets an alert or a close, never a ServerHello; a
// server started with --tls-min-version TLS1.3 refuses a TLS 1.2 client and serves a
// TLS 1.3 one, while by default both are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_versions_are_refused_and_tls_min_version_holds() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let ca = &pki.ca.cert;
    for (min, tls12_served) in [(None, true), (Some("TLS1.3"), false)] {
        let port = free_port();
        let mut flags = pki.client_flags();
        flags.extend(min.map(|v| format!("--tls-min-version={v}")));
        let data = dir
            .path()
            .join(format!("data-{}", min.unwrap_or("default")));
        let _server = start_https(&data, port, &flags, ca, &pki.good).await;
        for version in [[3, 1], [3, 2]] {
            let first = answer_to_legacy_hello(port, version).await;
            assert!(
                matches!(first, None | Some(0x15)),
                "TLS {version:?} ClientHello answered with record type {first:?} (min {min:?})"
            );
        }
        let tls12 = https_get(
            addr(port),
            client_config(ca, Some(&pki.good), Version::Tls12, H1),
            "/health",
        )
        .await;
        let tls13 = https_get(
            addr(port),
            client_config(ca, Some(&pki.good), Version::Tls13, H1),
            "/health",
        )
        .await;
        assert_eq!(tls13, Outcome::Answered(200), "TLS 1.3 (min {min:?})");
        assert_eq!(
            tls12 == Outcome::Answered(200),
            tls12_served,
            "TLS 1.2 (min {min:?}): {tls12:?}"
        );
    }
}

// Goal: on the peer listener, --peer-cert-allowed-cn admits only that CN and
// --peer-cert-allowed-hostname only that SAN host name, and a peer whose certificate
// does not name the address it connects from is refused (etcd's peer SAN rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_allow_lists_and_the_san_rule_hold() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = Pki::new(&dir.path().join("pki"));
    let peer = |cn, sans| Leaf {
        cn,
        sans,
        ..Leaf::default()
    };
    let (member, _) = pki.ca.issue("member", &peer("member", &["127.0.0.1"]));
    let (intruder, _) = pki.ca.issue("intruder", &peer("intruder", &["127.0.0.1"]));
    let (elsewhere, _) = pki.ca.issue("elsewhere", &peer("member", &["10.1.2.3"]));
    let (named, _) = pki
        .ca
        .issue("named", &peer("x", &["member.example", "127.0.0.1"]));
    let (misnamed, _) = pki
        .ca
        .issue("misnamed", &peer("x", &["other.example", "127.0.0.1"]));
    let ca = pki.ca.cert.clone();
    let cases = [
        (
            "--peer-cert-allowed-cn=member",
            vec![
                ("CN member", &member, true),
                ("CN intruder", &intruder, false),
                ("CN member from an address its SAN lacks", &elsewhere, false),
            ],
        ),
        (
            "--peer-cert-allowed-hostname=member.example",
            vec![
                ("SAN member.example", &named, true),
                ("SAN other.example", &misnamed, false),
            ],
        ),
    ];
    for (i, (allow, certs)) in cases.into_iter().enumerate() {
        let (client, peer_port) = (free_port(), free_port());
        let mut flags = pki.client_flags();
        flags.extend(pki.peer_flags());
        flags.extend(peer_urls(peer_port));
        flags.push(allow.to_string());
        let _server = start_https(
            &dir.path().join(format!("data-{i}")),
            client,
            &flags,
            &ca,
            &pki.good,
        )
        .await;
        for (what, cert, admitted) in certs {
            let got = h2_settings(
                addr(peer_port),
                client_config(&ca, Some(cert), Version::Any, H2),
            )
            .await;
            assert_eq!(
                got == Outcome::Answered(0),
                admitted,
                "{allow}, {what}: {got:?}"
            );
        }
    }
}

/// The DER of the certificate the server at `port` presents.
async fn served_certificate(port: u16, pki: &Pki) -> Vec<u8> {
    let config = client_config(&pki.ca.cert, Some(&pki.good), Version::Any, H1);
    let s = common::tls::connect(addr(port), config)
        .await
        .expect("TLS handshake");
    s.get_ref()
        .1
        .peer_certificates()
        .expect("a server certificate")[0]
        .to_vec()
}

fn der_of(pem: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(pem)
        .expect("a PEM certificate")
        .to_vec()
}

// Goal: replacing the certificate and key files (as cert-manager and kubeadm renewals
// do: new files renamed over the old) is seen by the very next connection, without a
// restart; the old certificate is no longer served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_serves_the_next_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = Pki::new(&dir.path().join("pki"));
    let port = free_port();
    let _server = start_https(
        &dir.path().join("data"),
        port,
        &pki.client_flags(),
        &pki.ca.cert.clone(),
        &pki.good,
    )
    .await;
    assert_eq!(
        served_certificate(port, &pki).await,
        der_of(&pki.server.cert)
    );

    let (renewed, _) = pki.ca.issue("renewed", &Leaf::default());
    for (from, to) in [
        (&renewed.key, &pki.server.key),
        (&renewed.cert, &pki.server.cert),
    ] {
        let staged = to.with_extension("staged");
        std::fs::copy(from, &staged).unwrap();
        std::fs::rename(&staged, to).unwrap();
    }
    let now = served_certificate(port, &pki).await;
    assert_eq!(
        now,
        der_of(&renewed.cert),
        "the next connection after the swap"
    );
    let ok = https_get(
        addr(port),
        client_config(&pki.ca.cert, Some(&pki.good), Version::Any, H1),
        "/health",
    )
    .await;
    assert_eq!(ok, Outcome::Answered(200));
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// The soft limit on open files of this process (the server inherits it).
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(u64::MAX)
}

/// Puts completed in `window` by 8 concurrent writers sharing `c`'s connection.
async fn puts_in(c: &etcd_client::Client, window: Duration) -> u64 {
    let deadline = Instant::now() + window;
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    c.put(format!("load/{w}"), "v", None).await.expect("put");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for w in writers {
        total += w.await.unwrap();
    }
    total
}

const SILENT: usize = 2_000;
const ROUNDS: usize = 3;

// Goal (GHSA-6vch): 2,000 TCP connections that never send a ClientHello cost the server
// at most 50 MiB of resident memory, are all closed by it within 10 s, and clients doing
// puts meanwhile keep at least 90% of the puts they do without them (medians of 3
// rounds, each a 1 s window with and one without).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_cannot_pile_up() {
    let limit = open_files_limit();
    if limit < 2 * SILENT as u64 + 500 {
        let why = format!(
            "the open-files limit is {limit}, under {}",
            2 * SILENT + 500
        );
        assert!(!retcd_testkit::etcd_bin::in_ci(), "{why}");
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let port = free_port();
    let server = start_https(
        &dir.path().join("data"),
        port,
        &pki.client_flags(),
        &pki.ca.cert,
        &pki.good,
    )
    .await;
    let client = common::tls::grpc_client(port, &pki.ca.cert, Some(&pki.good))
        .await
        .unwrap();
    puts_in(&client, Duration::from_millis(500)).await; // warm-up
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        without.push(puts_in(&client, Duration::from_secs(1)).await);
        let rss_before = rss_kib(server.pid());
        let opened = Instant::now();
        let mut silent = Vec::with_capacity(SILENT);
        for _ in 0..SILENT {
            let s = TcpStream::connect(addr(port)).await.expect("connect");
            silent.push((Instant::now(), s));
        }
        let connecting = opened.elapsed();
        // Each connection's life, from its connect to the server's close.
        let closes: Vec<_> = silent
            .into_iter()
            .map(|(connected, mut s)| {
                tokio::spawn(async move {
                    let mut b = [0u8; 16];
                    let r = tokio::time::timeout(Duration::from_secs(15), s.read(&mut b)).await;
                    (connected.elapsed(), r.map(|r| r.unwrap_or(0)))
                })
            })
            .collect();
        with.push(puts_in(&client, Duration::from_secs(1)).await);
        let grown_mib = rss_kib(server.pid()).saturating_sub(rss_before) / 1024;
        let mut last_close = Duration::ZERO;
        for c in closes {
            let (lived, read) = c.await.unwrap();
            assert_eq!(
                read,
                Ok(0),
                "round {round}: a silent connection got data or was never closed"
            );
            last_close = last_close.max(lived);
        }
        eprintln!(
            "round {round}: puts {} without, {} with {SILENT} silent connections; RSS +{grown_mib} MiB; connected in {connecting:?}, the longest lived {last_close:?}",
            without[round], with[round]
        );
        assert!(grown_mib <= 50, "round {round}: RSS grew {grown_mib} MiB");
        assert!(
            last_close <= Duration::from_secs(10),
            "round {round}: one lived {last_close:?}"
        );
    }
    let median = |v: &mut Vec<u64>| {
        v.sort_unstable();
        v[v.len() / 2] as f64
    };
    let ratio = median(&mut with) / median(&mut without);
    assert!(
        ratio >= 0.9,
        "throughput with silent connections is {ratio:.2} of without"
    );
}
