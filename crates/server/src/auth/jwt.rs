//! JWT tokens (`--auth-token jwt,pub-key=..,priv-key=..,sign-method=..,ttl=..`), as
//! etcd makes and reads them: claims `username`, `revision` (the auth revision the
//! password was checked at) and `exp`, signed with the configured method. A member
//! given only `pub-key` verifies tokens but cannot issue them (etcd's verify-only mode).
//!
//! Signing and checking use ring: RS256/384/512 (PKCS#1 v1.5), PS256/384/512 (PSS),
//! ES256/ES384 (P-256, P-384), EdDSA (Ed25519), HS256/384/512 (the `priv-key` file's
//! bytes as the secret). ES512 is refused at start: ring has no P-521. Private keys are
//! PEM, PKCS#8 or (RSA) PKCS#1; public keys PEM SubjectPublicKeyInfo. A token is
//! accepted only with the configured algorithm (`alg: none` and any other are refused),
//! a valid signature, and an `exp` in the future.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use ring::signature::{self, KeyPair as _};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};
use x509_parser::prelude::FromDer as _;

use super::state::AuthInfo;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// etcd's default token lifetime.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

enum Signer {
    Rsa(signature::RsaKeyPair, &'static dyn signature::RsaEncoding),
    Ecdsa(signature::EcdsaKeyPair),
    Ed25519(signature::Ed25519KeyPair),
    Hmac(ring::hmac::Key),
}

enum Verifier {
    Public(signature::UnparsedPublicKey<Vec<u8>>),
    Hmac(ring::hmac::Key),
}

/// A configured JWT provider.
pub struct Jwt {
    method: String,
    signer: Option<Signer>,
    verifier: Verifier,
    ttl: Duration,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("method", &self.method)
            .field("can_sign", &self.signer.is_some())
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// The options of `--auth-token jwt,...` (already checked by the config).
#[derive(Clone, Debug, Default)]
pub struct JwtOptions {
    pub method: String,
    pub pub_key: Option<std::path::PathBuf>,
    pub priv_key: Option<std::path::PathBuf>,
    pub ttl: Option<Duration>,
}

impl JwtOptions {
    /// Reads `jwt,key=value,...`; `None` for any other provider.
    pub fn parse(spec: &str, parse_ttl: impl Fn(&str) -> Option<Duration>) -> Option<JwtOptions> {
        let mut parts = spec.split(',');
        if parts.next() != Some("jwt") {
            return None;
        }
        let mut o = JwtOptions::default();
        for part in parts {
            match part.split_once('=') {
                Some(("sign-method", v)) => o.method = v.to_string(),
                Some(("pub-key", v)) => o.pub_key = Some(v.into()),
                Some(("priv-key", v)) => o.priv_key = Some(v.into()),
                Some(("ttl", v)) => o.ttl = parse_ttl(v),
                _ => {}
            }
        }
        Some(o)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("auth: cannot read {}: {e}", path.display()))
}

impl Jwt {
    /// Loads the keys; etcd-like errors for what cannot be used.
    pub fn load(o: &JwtOptions) -> Result<Jwt, String> {
        let ttl = o.ttl.unwrap_or(DEFAULT_TTL);
        let m = o.method.as_str();
        if let Some(bits) = m.strip_prefix("HS") {
            let alg = match bits {
                "256" => ring::hmac::HMAC_SHA256,
                "384" => ring::hmac::HMAC_SHA384,
                "512" => ring::hmac::HMAC_SHA512,
                _ => return Err("auth: invalid auth signature method".into()),
            };
            let path = o.priv_key.as_deref().ok_or("auth: missing key data")?;
            let key = ring::hmac::Key::new(alg, &read(path)?);
            return Ok(Jwt {
                method: o.method.clone(),
                signer: Some(Signer::Hmac(key.clone())),
                verifier: Verifier::Hmac(key),
                ttl,
            });
        }
        let (verify_alg, signer): (&'static dyn signature::VerificationAlgorithm, _) = match m {
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => {
                let (v, enc): (
                    &'static dyn signature::VerificationAlgorithm,
                    &'static dyn signature::RsaEncoding,
                ) = match m {
                    "RS256" => (
                        &signature::RSA_PKCS1_2048_8192_SHA256,
                        &signature::RSA_PKCS1_SHA256,
                    ),
                    "RS384" => (
                        &signature::RSA_PKCS1_2048_8192_SHA384,
                        &signature::RSA_PKCS1_SHA384,
                    ),
                    "RS512" => (
                        &signature::RSA_PKCS1_2048_8192_SHA512,
                        &signature::RSA_PKCS1_SHA512,
                    ),
                    "PS256" => (
                        &signature::RSA_PSS_2048_8192_SHA256,
                        &signature::RSA_PSS_SHA256,
                    ),
                    "PS384" => (
                        &signature::RSA_PSS_2048_8192_SHA384,
                        &signature::RSA_PSS_SHA384,
                    ),
                    _ => (
                        &signature::RSA_PSS_2048_8192_SHA512,
                        &signature::RSA_PSS_SHA512,
                    ),
                };
                let signer = match &o.priv_key {
                    None => None,
                    Some(p) => {
                        let key = match private_key(p)? {
                            PrivateKeyDer::Pkcs8(k) => {
                                signature::RsaKeyPair::from_pkcs8(k.secret_pkcs8_der())
                            }
                            PrivateKeyDer::Pkcs1(k) => {
                                signature::RsaKeyPair::from_der(k.secret_pkcs1_der())
                            }
                            _ => {
                                return Err(format!(
                                    "auth: {} is not an RSA private key",
                                    p.display()
                                ));
                            }
                        }
                        .map_err(|e| format!("auth: RSA key {}: {e}", p.display()))?;
                        Some(Signer::Rsa(key, enc))
                    }
                };
                (v, signer)
            }
            "ES256" | "ES384" => {
                let (v, s) = if m == "ES256" {
                    (
                        &signature::ECDSA_P256_SHA256_FIXED,
                        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    )
                } else {
                    (
                        &signature::ECDSA_P384_SHA384_FIXED,
                        &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                    )
                };
                let signer = match &o.priv_key {
                    None => None,
                    Some(p) => {
                        let PrivateKeyDer::Pkcs8(k) = private_key(p)? else {
                            return Err(format!(
                                "auth: {}: ECDSA keys must be PKCS#8 (openssl pkcs8 -topk8 -nocrypt)",
                                p.display()
                            ));
                        };
                        let key = signature::EcdsaKeyPair::from_pkcs8(
                            s,
                            k.secret_pkcs8_der(),
                            &ring::rand::SystemRandom::new(),
                        )
                        .map_err(|e| format!("auth: ECDSA key {}: {e}", p.display()))?;
                        Some(Signer::Ecdsa(key))
                    }
                };
                (v as &'static dyn signature::VerificationAlgorithm, signer)
            }
            "EdDSA" => {
                let signer = match &o.priv_key {
                    None => None,
                    Some(p) => {
                        let PrivateKeyDer::Pkcs8(k) = private_key(p)? else {
                            return Err(format!(
                                "auth: {}: Ed25519 keys must be PKCS#8",
                                p.display()
                            ));
                        };
                        let key = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(
                            k.secret_pkcs8_der(),
                        )
                        .map_err(|e| format!("auth: Ed25519 key {}: {e}", p.display()))?;
                        Some(Signer::Ed25519(key))
                    }
                };
                (
                    &signature::ED25519 as &'static dyn signature::VerificationAlgorithm,
                    signer,
                )
            }
            "ES512" => {
                return Err(
                    "auth: sign-method ES512 is not supported (P-521); use ES256 or ES384".into(),
                );
            }
            _ => return Err("auth: invalid auth signature method".into()),
        };
        let public = match (&o.pub_key, &signer) {
            (Some(p), _) => public_key(p)?,
            (None, Some(Signer::Rsa(k, _))) => k.public_key().as_ref().to_vec(),
            (None, Some(Signer::Ecdsa(k))) => k.public_key().as_ref().to_vec(),
            (None, Some(Signer::Ed25519(k))) => k.public_key().as_ref().to_vec(),
            _ => return Err("auth: missing key data".into()),
        };
        Ok(Jwt {
            method: o.method.clone(),
            signer,
            verifier: Verifier::Public(signature::UnparsedPublicKey::new(verify_alg, public)),
            ttl,
        })
    }

    /// A token for `user` whose password was checked at auth revision `revision`,
    /// expiring `ttl` after `now_unix` (seconds); `None` on a verify-only member.
    pub fn assign(
        &self,
        user: &str,
        revision: u64,
        now_unix: u64,
    ) -> Option<Result<String, String>> {
        let signer = self.signer.as_ref()?;
        let header = serde_json::json!({"alg": self.method, "typ": "JWT"});
        let claims = serde_json::json!({
            "username": user,
            "revision": revision,
            "exp": now_unix + self.ttl.as_secs(),
        });
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let rng = ring::rand::SystemRandom::new();
        let sig = match signer {
            Signer::Rsa(k, enc) => {
                let mut sig = vec![0; k.public().modulus_len()];
                if k.sign(*enc, &rng, input.as_bytes(), &mut sig).is_err() {
                    return Some(Err("auth: RSA signing failed".into()));
                }
                sig
            }
            Signer::Ecdsa(k) => match k.sign(&rng, input.as_bytes()) {
                Ok(s) => s.as_ref().to_vec(),
                Err(_) => return Some(Err("auth: ECDSA signing failed".into())),
            },
            Signer::Ed25519(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
            Signer::Hmac(k) => ring::hmac::sign(k, input.as_bytes()).as_ref().to_vec(),
        };
        Some(Ok(format!("{input}.{}", B64.encode(sig))))
    }

    /// The user and auth revision a token names, if it is valid at `now_unix`.
    pub fn verify(&self, token: &str, now_unix: u64) -> Option<AuthInfo> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let header: serde_json::Value = serde_json::from_slice(&B64.decode(h).ok()?).ok()?;
        if header.get("alg")?.as_str()? != self.method {
            return None;
        }
        let sig = B64.decode(s).ok()?;
        let input = &token[..h.len() + 1 + c.len()];
        let ok = match &self.verifier {
            Verifier::Public(k) => k.verify(input.as_bytes(), &sig).is_ok(),
            Verifier::Hmac(k) => ring::hmac::verify(k, input.as_bytes(), &sig).is_ok(),
        };
        if !ok {
            return None;
        }
        let claims: serde_json::Value = serde_json::from_slice(&B64.decode(c).ok()?).ok()?;
        // jwt-go's MapClaims: `exp` is checked when present (a non-number is invalid).
        if let Some(exp) = claims.get("exp")
            && exp.as_f64()? <= now_unix as f64
        {
            return None;
        }
        Some(AuthInfo {
            user: claims.get("username")?.as_str()?.to_string(),
            revision: claims.get("revision")?.as_f64()? as u64,
        })
    }
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(&read(path)?)
        .map_err(|e| format!("auth: no private key in {}: {e}", path.display()))
}

/// The raw public key (what ring verifies with) of a PEM SubjectPublicKeyInfo.
fn public_key(path: &Path) -> Result<Vec<u8>, String> {
    let spki = SubjectPublicKeyInfoDer::from_pem_slice(&read(path)?)
        .map_err(|e| format!("auth: no public key in {}: {e}", path.display()))?;
    let (_, parsed) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki.as_ref())
        .map_err(|e| format!("auth: public key {}: {e}", path.display()))?;
    Ok(parsed.subject_public_key.data.to_vec())
}

#[cfg(test)]
mod tests;
