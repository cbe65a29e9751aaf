//! `--auto-tls` and `--peer-auto-tls`: a self-signed certificate made in Rust (no
//! `openssl` binary), kept in `<data-dir>/fixtures/client` or `<data-dir>/fixtures/peer`
//! as etcd keeps it, and reused at every start while it is valid.
//!
//! Like etcd's, it encrypts without authenticating: nobody can verify a self-signed
//! certificate, so peers dial each other without verification and a listener with an
//! auto certificate asks for no client certificate. The key is ECDSA P-256 (etcd uses
//! P-521, which the ring provider does not sign with); the certificate names the hosts of
//! the listen URLs and is good for server and client authentication (a peer presents it
//! when it dials). Unlike etcd's, an expired certificate is replaced rather than served.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::TlsError;

/// The certificate and key in `dir` (`cert.pem`, `key.pem`), made now unless a valid pair
/// is there already: self-signed for `hosts` (IPs and DNS names), valid for
/// `validity_years`. The directory is made 0700 and the files 0600.
pub fn self_signed(
    dir: &Path,
    hosts: &[String],
    validity_years: u32,
) -> Result<(PathBuf, PathBuf), TlsError> {
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    if key_path.exists() && still_valid(&cert_path) {
        return Ok((cert_path, key_path));
    }
    let write_error = |path: &Path, e: &dyn std::fmt::Display| TlsError::Write {
        path: path.to_path_buf(),
        error: e.to_string(),
    };
    create_private_dir(dir).map_err(|e| write_error(dir, &e))?;
    let gen_error = |e: rcgen::Error| TlsError::Rustls(format!("generating a certificate: {e}"));
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_error)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "etcd");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + time::Duration::days(365 * i64::from(validity_years.max(1)));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    for host in hosts {
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.clone().try_into().map_err(gen_error)?),
        };
        if !params.subject_alt_names.contains(&san) {
            params.subject_alt_names.push(san);
        }
    }
    let cert = params.self_signed(&key).map_err(gen_error)?;
    write_private(&key_path, key.serialize_pem().as_bytes())
        .map_err(|e| write_error(&key_path, &e))?;
    write_private(&cert_path, cert.pem().as_bytes()).map_err(|e| write_error(&cert_path, &e))?;
    tracing::warn!(
        dir = %dir.display(),
        hosts = ?hosts,
        validity_years,
        "generated a self-signed TLS certificate: encryption without authentication"
    );
    Ok((cert_path, key_path))
}

/// Whether `cert` holds a certificate that is valid now and for at least a day.
fn still_valid(cert: &Path) -> bool {
    let Ok(der) = CertificateDer::from_pem_file(cert) else {
        return false;
    };
    let Ok((_, parsed)) =
        <x509_parser::prelude::X509Certificate as x509_parser::prelude::FromDer<'_, _>>::from_der(
            der.as_ref(),
        )
    else {
        return false;
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let validity = parsed.validity();
    validity.not_before.timestamp() <= now && now + 86_400 < validity.not_after.timestamp()
}

/// Creates `dir` (and its parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `bytes` to `path` (replacing it) with mode 0600.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode through `open`: set it.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}
