use std::path::PathBuf;

use super::*;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/auth/jwt/testdata")
        .join(name)
}

/// A fresh key pair of `alg` as PEM files (PKCS#8 and SubjectPublicKeyInfo) in `dir`.
fn generated(dir: &Path, alg: &'static rcgen::SignatureAlgorithm) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let (private, public) = (dir.join("k.pem"), dir.join("k.pub.pem"));
    std::fs::write(&private, key.serialize_pem()).unwrap();
    std::fs::write(&public, key.public_key_pem()).unwrap();
    (private, public)
}

fn options(method: &str, private: Option<&Path>, public: Option<&Path>) -> JwtOptions {
    JwtOptions {
        method: method.into(),
        priv_key: private.map(Path::to_path_buf),
        pub_key: public.map(Path::to_path_buf),
        ttl: Some(Duration::from_secs(300)),
    }
}

const NOW: u64 = 1_800_000_000;

fn alice() -> Option<AuthInfo> {
    Some(AuthInfo {
        user: "alice".into(),
        revision: 7,
    })
}

// Goal: every signing method etcd offers (but ES512) issues tokens that verify with the
// same keys, name the user and revision, and expire after the TTL.
#[test]
fn every_method_round_trips_and_expires() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"a shared secret of some length").unwrap();
    let mut cases: Vec<(String, JwtOptions)> = Vec::new();
    for m in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        cases.push((
            m.into(),
            options(
                m,
                Some(&testdata("rsa.pem")),
                Some(&testdata("rsa.pub.pem")),
            ),
        ));
    }
    cases.push((
        "RS256 (PKCS#1, no pub-key)".into(),
        options("RS256", Some(&testdata("rsa-pkcs1.pem")), None),
    ));
    for m in ["HS256", "HS384", "HS512"] {
        cases.push((m.into(), options(m, Some(&secret), None)));
    }
    for (m, alg) in [
        ("ES256", &rcgen::PKCS_ECDSA_P256_SHA256),
        ("ES384", &rcgen::PKCS_ECDSA_P384_SHA384),
        ("EdDSA", &rcgen::PKCS_ED25519),
    ] {
        let sub = dir.path().join(m);
        std::fs::create_dir(&sub).unwrap();
        let (private, public) = generated(&sub, alg);
        cases.push((m.into(), options(m, Some(&private), Some(&public))));
    }
    for (name, o) in cases {
        let jwt = Jwt::load(&o).unwrap_or_else(|e| panic!("{name}: {e}"));
        let token = jwt.assign("alice", 7, NOW).unwrap().unwrap();
        assert_eq!(jwt.verify(&token, NOW), alice(), "{name}");
        assert_eq!(jwt.verify(&token, NOW + 299), alice(), "{name}");
        assert_eq!(jwt.verify(&token, NOW + 300), None, "{name}: expired");
        // A flipped byte anywhere in the claims or the signature is refused.
        let (head, rest) = token.split_once('.').unwrap();
        let (claims, sig) = rest.split_once('.').unwrap();
        let mut bad_claims = B64.decode(claims).unwrap();
        bad_claims[12] ^= 1;
        let tampered = format!("{head}.{}.{sig}", B64.encode(&bad_claims));
        assert_eq!(jwt.verify(&tampered, NOW), None, "{name}: tampered claims");
        let mut bad_sig = B64.decode(sig).unwrap();
        bad_sig[0] ^= 1;
        let tampered = format!("{head}.{claims}.{}", B64.encode(&bad_sig));
        assert_eq!(
            jwt.verify(&tampered, NOW),
            None,
            "{name}: tampered signature"
        );
    }
}

// Goal: tokens with alg none, another algorithm, or another key are refused; a member
// with only the public key verifies but does not issue.
#[test]
fn foreign_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ours = Jwt::load(&options("RS256", Some(&testdata("rsa.pem")), None)).unwrap();
    let token = ours.assign("alice", 7, NOW).unwrap().unwrap();
    let claims = token.split('.').nth(1).unwrap();

    let none = format!("{}.{claims}.", B64.encode(r#"{"alg":"none","typ":"JWT"}"#));
    assert_eq!(ours.verify(&none, NOW), None, "alg none");
    let ps = format!(
        "{}.{claims}.{}",
        B64.encode(r#"{"alg":"PS256","typ":"JWT"}"#),
        token.split('.').nth(2).unwrap()
    );
    assert_eq!(ours.verify(&ps, NOW), None, "another algorithm");

    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"k").unwrap();
    let hs = Jwt::load(&options("HS256", Some(&secret), None)).unwrap();
    let hs_token = hs.assign("alice", 7, NOW).unwrap().unwrap();
    assert_eq!(
        ours.verify(&hs_token, NOW),
        None,
        "HS256 token to an RS256 member"
    );

    let (private, public) = generated(dir.path(), &rcgen::PKCS_ECDSA_P256_SHA256);
    let es = Jwt::load(&options("ES256", Some(&private), Some(&public))).unwrap();
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let (other_private, _) = generated(&other_dir, &rcgen::PKCS_ECDSA_P256_SHA256);
    let impostor = Jwt::load(&options("ES256", Some(&other_private), None)).unwrap();
    let forged = impostor.assign("root", 7, NOW).unwrap().unwrap();
    assert_eq!(es.verify(&forged, NOW), None, "signed with another key");

    let verify_only = Jwt::load(&options("ES256", None, Some(&public))).unwrap();
    assert!(verify_only.assign("alice", 7, NOW).is_none());
    let issued = es.assign("alice", 7, NOW).unwrap().unwrap();
    assert_eq!(verify_only.verify(&issued, NOW), alice());

    for junk in ["", "a.b", "a.b.c.d", "...", "x.y.z"] {
        assert_eq!(ours.verify(junk, NOW), None, "{junk:?}");
    }
}

// Goal: keys that cannot serve are refused at start with a reason.
#[test]
fn unusable_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = generated(dir.path(), &rcgen::PKCS_ECDSA_P256_SHA256);
    assert!(
        Jwt::load(&options("ES512", Some(&private), Some(&public)))
            .unwrap_err()
            .contains("ES512")
    );
    assert!(
        Jwt::load(&options("RS256", Some(&private), None)).is_err(),
        "an EC key for RS256"
    );
    assert_eq!(
        Jwt::load(&options("RS256", None, None)).unwrap_err(),
        "auth: missing key data"
    );
    assert!(Jwt::load(&options("RS256", Some(&dir.path().join("missing")), None)).is_err());
    assert!(Jwt::load(&options("XX1", Some(&private), None)).is_err());
}
