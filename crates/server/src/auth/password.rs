//! Passwords: bcrypt, hashed by the member that takes the request, before anything is
//! proposed, so no plaintext password reaches the log, a snapshot or the backend. The
//! hash travels in the request's `hashedPassword` field base64-encoded (as etcd 3.5
//! sends it) and is stored as bcrypt's text, which etcd reads too.
//!
//! bcrypt is slow on purpose (tens of milliseconds at cost 10): both hashing and
//! checking run on [`crate::background::bcrypt`]'s threads, never on the reactor or the
//! raft loop. Those threads run at a lower CPU priority than the rest of the server, so a
//! storm of logins (every client of a restarted application at once, or someone guessing
//! passwords) slows logins down and leaves reads and writes their share of the CPU.

use base64::Engine as _;
use retcd_api::errors::EtcdError;

use crate::errors::RequestError;

/// bcrypt's input limit; longer passwords are refused rather than silently truncated.
pub const MAX_PASSWORD_BYTES: usize = 72;

/// Hashes `password` at `cost` on the bcrypt threads; the result as the request carries it.
pub async fn hash_for_request(password: String, cost: u32) -> Result<String, RequestError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(RequestError::InvalidArgument(
            "bcrypt: password length exceeds 72 bytes".into(),
        ));
    }
    let hashed = crate::background::bcrypt()
        .run(move || hash(&password, cost))
        .await
        .ok_or_else(|| RequestError::Internal("the bcrypt threads are gone".into()))??;
    Ok(base64::engine::general_purpose::STANDARD.encode(hashed))
}

fn hash(password: &str, cost: u32) -> Result<String, RequestError> {
    use ring::rand::SecureRandom as _;
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| RequestError::Internal("no randomness for a password salt".into()))?;
    let parts = bcrypt::hash_with_salt(password, cost, salt)
        .map_err(|e| RequestError::InvalidArgument(format!("bcrypt: {e}")))?;
    Ok(parts.format_for_version(bcrypt::Version::TwoA))
}

/// The stored form of a request's `hashedPassword`: the bcrypt text it encodes.
/// A value that is not base64 of a bcrypt hash is refused.
pub fn stored_from_request(hashed: &str) -> Result<Vec<u8>, EtcdError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(hashed)
        .map_err(|_| EtcdError::InvalidAuthMgmt)?;
    if !bytes.starts_with(b"$2") {
        return Err(EtcdError::InvalidAuthMgmt);
    }
    Ok(bytes)
}

/// Whether `password` matches the stored hash, on the bcrypt threads. A stored value that is
/// not a bcrypt hash matches nothing.
pub async fn matches(password: String, stored: Vec<u8>) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    crate::background::bcrypt()
        .run(move || {
            std::str::from_utf8(&stored)
                .ok()
                .and_then(|h| bcrypt::verify(&password, h).ok())
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_round_trip() {
        let sent = hash_for_request("s3cret-pw".into(), 4).await.unwrap();
        let stored = stored_from_request(&sent).unwrap();
        assert!(
            stored.starts_with(b"$2a$04$"),
            "{}",
            String::from_utf8_lossy(&stored)
        );
        assert!(!String::from_utf8_lossy(&stored).contains("s3cret"));
        assert!(matches("s3cret-pw".into(), stored.clone()).await);
        assert!(!matches("s3cret-pX".into(), stored.clone()).await);
        assert!(!matches("s3cret-pw".into(), b"not a hash".to_vec()).await);
        let long = "x".repeat(73);
        assert!(hash_for_request(long.clone(), 4).await.is_err());
        assert!(!matches(long, stored).await);
        assert_eq!(stored_from_request("%%%"), Err(EtcdError::InvalidAuthMgmt));
        assert_eq!(
            stored_from_request("aGVsbG8="),
            Err(EtcdError::InvalidAuthMgmt)
        );
    }
}
