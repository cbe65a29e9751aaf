//! Authentication and authorization: etcd's auth store (users, roles, key-range
//! permissions, the auth revision), simple tokens and bcrypt passwords.
//!
//! | file | what it holds |
//! |---|---|
//! | `state.rs` | [`state::AuthState`]: the store as applied, and etcd's permission checks |
//! | `keyset.rs` | merged key ranges: what a user may read and write |
//! | `tokens.rs` | simple tokens, member-local, assigned by Authenticate entries |
//! | `password.rs` | bcrypt hashing and checking, off the reactor |
//!
//! Apply changes the state (`apply::auth`, which also holds the auth gate of the apply
//! chain); the services check requests with [`Auth`] before they propose or read.

pub mod keyset;
pub mod password;
pub mod state;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::RequestHeader;
use tonic::metadata::MetadataMap;

use crate::clock;
use crate::errors::RequestError;
use crate::published::{AppliedIndex, Published};
use state::{AuthInfo, AuthState};
use tokens::SimpleTokens;

/// The gRPC metadata key clients send their token in (etcd's `token`).
pub const TOKEN_METADATA: &str = "token";
/// The HTTP header the JSON gateway's clients send it in.
pub const TOKEN_HEADER: &str = "authorization";

/// What the services need of auth: the applied state, this member's tokens, and how
/// passwords are hashed.
pub struct Auth {
    state: Published<Arc<AuthState>>,
    tokens: Arc<SimpleTokens>,
    applied: Arc<AppliedIndex>,
    bcrypt_cost: u32,
    /// How long a token's Authenticate entry is waited for (the request timeout).
    wait: Duration,
}

impl Auth {
    pub fn new(
        state: Published<Arc<AuthState>>,
        tokens: Arc<SimpleTokens>,
        applied: Arc<AppliedIndex>,
        bcrypt_cost: u32,
        wait: Duration,
    ) -> Auth {
        Auth {
            state,
            tokens,
            applied,
            bcrypt_cost,
            wait,
        }
    }

    /// The auth store as of the applied index.
    pub fn state(&self) -> Arc<AuthState> {
        self.state.get()
    }

    pub fn bcrypt_cost(&self) -> u32 {
        self.bcrypt_cost
    }

    /// Who sends a request with `metadata` (etcd's `AuthInfoFromCtx`): `None` without a
    /// token; a token that is not live is refused with "invalid auth token". A token
    /// minted by an entry this member has not applied yet is waited for.
    pub async fn info(&self, metadata: &MetadataMap) -> Result<Option<AuthInfo>, RequestError> {
        let Some(token) = metadata
            .get(TOKEN_METADATA)
            .or_else(|| metadata.get(TOKEN_HEADER))
            .map(|v| v.to_str().unwrap_or_default())
        else {
            return Ok(None);
        };
        self.info_from_token(token).await.map(Some)
    }

    async fn info_from_token(&self, token: &str) -> Result<AuthInfo, RequestError> {
        let Some((_, index)) = tokens::parse(token) else {
            return Err(EtcdError::InvalidAuthToken.into());
        };
        if index > self.applied.get() {
            self.applied.wait_for(index, self.wait).await;
        }
        let revision = self.state.read(|s| s.revision);
        match self.tokens.user_of(token, clock::lease_now()) {
            Some(user) => Ok(AuthInfo { user, revision }),
            None => {
                tracing::warn!("invalid auth token");
                Err(EtcdError::InvalidAuthToken.into())
            }
        }
    }

    /// etcd's `requireAuthInfo`: while auth is on, a request must carry credentials.
    pub async fn require_user(
        &self,
        metadata: &MetadataMap,
    ) -> Result<Option<AuthInfo>, RequestError> {
        let info = self.info(metadata).await?;
        if info.is_none() && self.state.read(|s| s.enabled) {
            return Err(EtcdError::UserEmpty.into());
        }
        Ok(info)
    }

    /// etcd's admin check in the API layer: the root role (anyone, while auth is off).
    pub async fn require_admin(
        &self,
        metadata: &MetadataMap,
    ) -> Result<Option<AuthInfo>, RequestError> {
        let info = self.info(metadata).await?;
        self.state().check_admin(info.as_ref())?;
        Ok(info)
    }
}

/// The header a proposal carries for `info` (apply's auth gate reads it).
pub fn header(info: Option<&AuthInfo>) -> Option<RequestHeader> {
    info.map(|i| RequestHeader {
        username: i.user.clone(),
        auth_revision: i.revision,
        ..Default::default()
    })
}

/// A stream's credentials (its metadata at open), checked at each request on it: what a
/// watch create needs.
pub struct StreamCredentials {
    auth: Arc<Auth>,
    metadata: MetadataMap,
}

impl StreamCredentials {
    pub fn new(auth: Arc<Auth>, metadata: MetadataMap) -> StreamCredentials {
        StreamCredentials { auth, metadata }
    }

    /// Whether the stream's user may read every key of `(key, range_end)`.
    pub async fn check_read(&self, key: &[u8], range_end: &[u8]) -> Result<(), RequestError> {
        let info = self.auth.info(&self.metadata).await?;
        self.auth
            .state()
            .check_range(info.as_ref(), key, range_end, state::Access::Read)?;
        Ok(())
    }
}
