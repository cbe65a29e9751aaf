//! Certificates for TLS tests, made in Rust: a CA, certificates it signs (good, expired,
//! not yet valid, revoked, for a wrong address, with given CNs and SANs), a second CA,
//! and a CRL, written as PEM files into a directory. etcd's tests use `cfssl`; the same
//! files work for etcd 3.4.23 and retcd in the differential tests.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// A certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pair {
    pub fn cert(&self) -> &str {
        self.cert.to_str().expect("utf-8 path")
    }
    pub fn key(&self) -> &str {
        self.key.to_str().expect("utf-8 path")
    }
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug)]
pub enum Validity {
    /// From a day ago for ten years.
    Now,
    /// Ended a year ago.
    Expired,
    /// Begins in a year.
    NotYet,
}

/// What a leaf certificate says.
#[derive(Clone, Debug)]
pub struct Leaf<'a> {
    pub cn: &'a str,
    /// IPs and DNS names.
    pub sans: &'a [&'a str],
    pub server: bool,
    pub client: bool,
    pub validity: Validity,
}

impl Default for Leaf<'_> {
    fn default() -> Self {
        Leaf {
            cn: "retcd-test",
            sans: &["127.0.0.1", "localhost"],
            server: true,
            client: true,
            validity: Validity::Now,
        }
    }
}

/// A certificate authority whose certificates go into `dir`.
pub struct Ca {
    dir: PathBuf,
    name: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate, as a PEM file.
    pub cert: PathBuf,
    next_serial: u64,
}

impl Ca {
    /// A new CA named `name` (its files are `<dir>/<name>.pem` and the leaves'
    /// `<dir>/<name>-<leaf>.pem`, `-key.pem`).
    pub fn new(dir: &Path, name: &str) -> Ca {
        std::fs::create_dir_all(dir).expect("create the pki dir");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(2);
        params.not_after = now + Duration::days(3650);
        params.key_identifier_method = KeyIdMethod::Sha256;
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-signed CA");
        let cert = dir.join(format!("{name}.pem"));
        std::fs::write(&cert, issuer.pem()).expect("write the CA");
        Ca {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            issuer,
            cert,
            next_serial: 0x1000,
        }
    }

    pub fn cert(&self) -> &str {
        self.cert.to_str().expect("utf-8 path")
    }

    /// Issues a leaf certificate saved as `<ca>-<file>.pem` with its key; returns the
    /// files and the serial number.
    pub fn issue(&mut self, file: &str, leaf: &Leaf<'_>) -> (Pair, u64) {
        let serial = self.next_serial;
        self.next_serial += 1;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, leaf.cn);
        params.serial_number = Some(SerialNumber::from_slice(&serial.to_be_bytes()));
        let now = OffsetDateTime::now_utc();
        (params.not_before, params.not_after) = match leaf.validity {
            Validity::Now => (now - Duration::days(1), now + Duration::days(3650)),
            Validity::Expired => (now - Duration::days(730), now - Duration::days(365)),
            Validity::NotYet => (now + Duration::days(365), now + Duration::days(730)),
        };
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if leaf.server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if leaf.client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = true;
        for san in leaf.sans {
            params.subject_alt_names.push(match san.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*san).try_into().expect("a DNS name")),
            });
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign a leaf");
        let pair = Pair {
            cert: self.dir.join(format!("{}-{file}.pem", self.name)),
            key: self.dir.join(format!("{}-{file}-key.pem", self.name)),
        };
        std::fs::write(&pair.cert, cert.pem()).expect("write a leaf");
        write_key(&pair.key, &key.serialize_pem());
        (pair, serial)
    }

    /// A CRL of this CA revoking `serials`, saved as `<ca>-<file>.pem`.
    pub fn crl(&self, file: &str, serials: &[u64]) -> PathBuf {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::days(1),
            next_update: now + Duration::days(30),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&s.to_be_bytes()),
                    revocation_time: now - Duration::hours(1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).expect("sign a CRL");
        let path = self.dir.join(format!("{}-{file}.pem", self.name));
        std::fs::write(&path, crl.pem().expect("CRL PEM")).expect("write the CRL");
        path
    }
}

fn write_key(path: &Path, pem: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("open a key file");
    f.write_all(pem.as_bytes()).expect("write a key");
}
