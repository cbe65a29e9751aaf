//! Simple tokens (`--auth-token simple`, etcd's default): `<16 random letters>.<index>`,
//! where index is the Raft index of the Authenticate entry that made it.
//!
//! Every member applies that entry, so a token works on every member (a member that has
//! not applied the entry yet waits for it, as etcd's does). Unlike etcd, the entry does
//! not carry the token: it carries the SHA-256 of its random part, so neither the WAL nor
//! a snapshot holds a token anyone could use. Tokens live in memory only (a restart ends
//! them, as etcd's), expire `--auth-token-ttl` after their last use, and end when their
//! user is deleted or changes password, or auth is turned off.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use retcd_lease::Time;

/// Length of a token's random part (etcd's `defaultSimpleTokenLength`).
pub const RANDOM_LEN: usize = 16;

/// The digest an Authenticate entry carries for a token's random part.
pub fn digest(random: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, random.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh random part: letters drawn from the system's CSPRNG.
pub fn random_part() -> Result<String, ring::error::Unspecified> {
    use ring::rand::SecureRandom as _;
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let rng = ring::rand::SystemRandom::new();
    let mut out = String::with_capacity(RANDOM_LEN);
    let mut buf = [0u8; 64];
    while out.len() < RANDOM_LEN {
        rng.fill(&mut buf)?;
        // 52 * 4 = 208: bytes at or above it are dropped, so each letter is uniform.
        for b in buf.iter().filter(|&&b| b < 208) {
            if out.len() == RANDOM_LEN {
                break;
            }
            out.push(char::from(LETTERS[usize::from(*b) % LETTERS.len()]));
        }
    }
    Ok(out)
}

/// A token split into its random part and index; `None` if it is not shaped like one.
pub fn parse(token: &str) -> Option<(&str, u64)> {
    let (random, index) = token.split_once('.')?;
    if random.len() != RANDOM_LEN || !random.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    Some((random, index.parse().ok()?))
}

/// A change to the token table that apply decided; carried out when the batch commits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenChange {
    /// An Authenticate entry at `index` for `user`, whose token's random part has `digest`.
    Assign {
        digest: String,
        index: u64,
        user: String,
    },
    /// The user was deleted or its password changed.
    InvalidateUser(String),
    /// Auth was turned off.
    Clear,
}

struct Live {
    index: u64,
    user: String,
    expires: Time,
}

/// The live simple tokens of this member.
pub struct SimpleTokens {
    ttl: Duration,
    live: Mutex<HashMap<String, Live>>,
}

impl SimpleTokens {
    pub fn new(ttl: Duration) -> SimpleTokens {
        SimpleTokens {
            ttl,
            live: Mutex::new(HashMap::new()),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Carries out apply's changes, at `now`.
    pub fn apply(&self, changes: Vec<TokenChange>, now: Time) {
        let mut live = self.live();
        for change in changes {
            match change {
                TokenChange::Assign {
                    digest,
                    index,
                    user,
                } => {
                    live.retain(|_, l| l.expires > now);
                    live.insert(
                        digest,
                        Live {
                            index,
                            user,
                            expires: now + self.ttl,
                        },
                    );
                }
                TokenChange::InvalidateUser(user) => live.retain(|_, l| l.user != user),
                TokenChange::Clear => live.clear(),
            }
        }
    }

    /// The user of a live `token` at `now` (its lifetime starts over), or `None`.
    pub fn user_of(&self, token: &str, now: Time) -> Option<String> {
        let (random, index) = parse(token)?;
        let key = digest(random);
        let mut live = self.live();
        let entry = live.get_mut(&key)?;
        if entry.index != index {
            return None;
        }
        if entry.expires <= now {
            live.remove(&key);
            return None;
        }
        entry.expires = now + self.ttl;
        Some(entry.user.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> Time {
        Time::from_since_origin(Duration::from_secs(secs))
    }

    // Goal: a token lives a TTL from its last use, names its user, and ends with its
    // user's invalidation or auth being turned off.
    #[test]
    fn token_lifecycle() {
        let tokens = SimpleTokens::new(Duration::from_secs(300));
        let random = random_part().unwrap();
        assert_eq!(random.len(), RANDOM_LEN);
        let token = format!("{random}.7");
        tokens.apply(
            vec![TokenChange::Assign {
                digest: digest(&random),
                index: 7,
                user: "u".into(),
            }],
            t(0),
        );
        assert_eq!(tokens.user_of(&token, t(299)).as_deref(), Some("u"));
        // Used at 299 s: it lives until 599 s.
        assert_eq!(tokens.user_of(&token, t(598)).as_deref(), Some("u"));
        assert_eq!(tokens.user_of(&format!("{random}.8"), t(598)), None);
        assert_eq!(tokens.user_of(&token, t(898)), None, "expired");
        assert_eq!(
            tokens.user_of(&token, t(1)),
            None,
            "an expired token is gone"
        );

        tokens.apply(
            vec![TokenChange::Assign {
                digest: digest(&random),
                index: 7,
                user: "u".into(),
            }],
            t(0),
        );
        tokens.apply(vec![TokenChange::InvalidateUser("v".into())], t(0));
        assert!(tokens.user_of(&token, t(1)).is_some());
        tokens.apply(vec![TokenChange::InvalidateUser("u".into())], t(0));
        assert!(tokens.user_of(&token, t(1)).is_none());
        tokens.apply(
            vec![
                TokenChange::Assign {
                    digest: digest(&random),
                    index: 7,
                    user: "u".into(),
                },
                TokenChange::Clear,
            ],
            t(0),
        );
        assert_eq!(
            tokens.user_of(&token, t(1)),
            None,
            "auth turned off ends every token"
        );
    }

    // Goal: malformed tokens are refused without a lookup.
    #[test]
    fn malformed_tokens() {
        for bad in [
            "",
            ".",
            "abc.1",
            "abcdefghijklmnop",
            "abcdefghijklmnop.x",
            "abcdefghijklmno1.1",
            "abcdefghijklmnop.-1",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(parse("abcdefghijklmnop.12"), Some(("abcdefghijklmnop", 12)));
    }
}
