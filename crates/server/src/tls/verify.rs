//! Checks etcd makes on certificates beyond the chain: the peer allow-lists
//! (`--peer-cert-allowed-cn`, `--peer-cert-allowed-hostname`, `--client-cert-allowed-hostname`),
//! applied inside the handshake in both directions, and the rule that a peer's client
//! certificate names the address it connects from (etcd's `checkSAN`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// How long the DNS lookups of the SAN check may take.
const SAN_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The names a certificate carries: its subject CN, and its SANs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub common_names: Vec<String>,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

/// The names of a DER certificate (none if it does not parse: the chain verification
/// that runs first has accepted it, so that does not happen in practice).
pub fn names(cert: &CertificateDer<'_>) -> Names {
    let Ok((_, cert)) = X509Certificate::from_der(cert.as_ref()) else {
        return Names::default();
    };
    let mut names = Names {
        common_names: cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_string)
            .collect(),
        ..Names::default()
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => names.dns.push(d.to_string()),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => names.ips.push(IpAddr::from(
                        <[u8; 4]>::try_from(*bytes).unwrap_or_default(),
                    )),
                    16 => names.ips.push(IpAddr::from(
                        <[u8; 16]>::try_from(*bytes).unwrap_or_default(),
                    )),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    names
}

/// Whether `names` passes the allow-lists: its CN is one of `cn` (when given), and a SAN
/// names one of `hostnames` (when given; a DNS name, with etcd's `*.` wildcards, or an
/// IP). etcd refuses both lists at once; with one empty only the other applies.
pub fn allowed(names: &Names, cn: &[String], hostnames: &[String]) -> bool {
    let cn_ok = cn.is_empty() || names.common_names.iter().any(|c| cn.contains(c));
    let host_ok = hostnames.is_empty()
        || hostnames.iter().any(|h| match h.parse::<IpAddr>() {
            Ok(ip) => names.ips.contains(&ip),
            Err(_) => names.dns.iter().any(|d| dns_matches(d, h)),
        });
    cn_ok && host_ok
}

/// A certificate's DNS name against a host name: equal ignoring case, or a `*.` wildcard
/// for one label.
fn dns_matches(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

fn refused() -> Error {
    // etcd's words for it.
    Error::General("client certificate authentication failed".to_string())
}

/// A client-certificate verifier with the allow-lists on top.
#[derive(Debug)]
pub struct AllowList {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub allowed_cn: Vec<String>,
    pub allowed_hostname: Vec<String>,
}

impl ClientCertVerifier for AllowList {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !allowed(&names(end_entity), &self.allowed_cn, &self.allowed_hostname) {
            return Err(refused());
        }
        Ok(verified)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A server-certificate verifier for dialing peers: the chain and the name (`inner`;
/// `None` for `--peer-auto-tls`'s self-signed certificates, which etcd does not verify
/// either), and the allow-lists, which etcd applies to the peers it dials too.
#[derive(Debug)]
pub struct PeerServerVerifier {
    pub inner: Option<Arc<dyn ServerCertVerifier>>,
    pub provider: Arc<CryptoProvider>,
    pub allowed_cn: Vec<String>,
    pub allowed_hostname: Vec<String>,
}

impl ServerCertVerifier for PeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if let Some(inner) = &self.inner {
            inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        if !allowed(&names(end_entity), &self.allowed_cn, &self.allowed_hostname) {
            return Err(refused());
        }
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// etcd's `checkSAN` for a client certificate presented from `remote`: a certificate
/// without SANs passes; one with an IP SAN equal to `remote` passes; otherwise one of its
/// DNS SANs must resolve to `remote` (a forward lookup; etcd also tries a reverse one,
/// which the standard library cannot do).
pub async fn client_san_matches(cert: &CertificateDer<'_>, remote: IpAddr) -> bool {
    let names = names(cert);
    if names.ips.is_empty() && names.dns.is_empty() {
        return true;
    }
    if names.ips.contains(&remote) {
        return true;
    }
    for dns in names.dns.iter().filter(|d| !d.starts_with("*.")) {
        let lookup = tokio::net::lookup_host((dns.as_str(), 0));
        if let Ok(Ok(addrs)) = tokio::time::timeout(SAN_LOOKUP_TIMEOUT, lookup).await
            && addrs.map(|a| a.ip()).any(|ip| ip == remote)
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(cn: &[&str], dns: &[&str], ips: &[&str]) -> Names {
        Names {
            common_names: cn.iter().map(|s| s.to_string()).collect(),
            dns: dns.iter().map(|s| s.to_string()).collect(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    // Goal: the allow-lists as etcd applies them: the CN exactly, a hostname against
    // the SANs (DNS with wildcards, or an IP), nothing asked, everything allowed.
    #[test]
    fn allow_lists() {
        let peer = n(&["peer1"], &["m1.example.com"], &["10.0.0.1"]);
        assert!(allowed(&peer, &[], &[]));
        assert!(allowed(&peer, &v(&["peer1", "peer2"]), &[]));
        assert!(!allowed(&peer, &v(&["peer2"]), &[]));
        assert!(allowed(&peer, &[], &v(&["m1.example.com"])));
        assert!(allowed(&peer, &[], &v(&["M1.EXAMPLE.com"])));
        assert!(allowed(&peer, &[], &v(&["10.0.0.1"])));
        assert!(!allowed(&peer, &[], &v(&["m2.example.com", "10.0.0.2"])));
        let wild = n(&[], &["*.example.com"], &[]);
        assert!(allowed(&wild, &[], &v(&["m1.example.com"])));
        assert!(!allowed(&wild, &[], &v(&["a.b.example.com"])));
        assert!(!allowed(&wild, &[], &v(&["example.com"])));
    }
}
