//! Authentication and authorization: etcd's auth store (users, roles, key-range
//! permissions, the auth revision), simple tokens, bcrypt passwords, and who a request
//! comes from (a token, or a verified client certificate's CN).
//!
//! | file | what it holds |
//! |---|---|
//! | `state.rs` | [`state::AuthState`]: the store as applied, and etcd's permission checks |
//! | `keyset.rs` | merged key ranges: what a user may read and write |
//! | `tokens.rs` | simple tokens, member-local, assigned by Authenticate entries |
//! | `password.rs` | bcrypt hashing and checking, on low-priority threads of its own |
//! | `throttle.rs` | failed logins slow down logins by user and by client address |
//! | `jwt.rs` | JWT tokens (`--auth-token jwt,...`): signed claims, no state |
//!
//! Apply changes the state (`apply::auth`, which also holds the auth gate of the apply
//! chain); the services check requests with [`Auth`] before they propose or read.

pub mod jwt;
pub mod keyset;
pub mod password;
pub mod state;
pub mod throttle;
pub mod tokens;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::RequestHeader;

use crate::clock;
use crate::errors::RequestError;
use crate::listen::ClientIdentity;
use crate::published::{AppliedIndex, Published};
use state::{AuthInfo, AuthState};
use throttle::LoginThrottle;
use tokens::SimpleTokens;

/// The gRPC metadata key clients send their token in (etcd's `token`).
pub const TOKEN_METADATA: &str = "token";
/// The HTTP header the JSON gateway's clients send it in.
pub const TOKEN_HEADER: &str = "authorization";

/// What a request says about who sends it: the token in its metadata, and its
/// connection (address, verified client certificate).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    token: Option<String>,
    identity: ClientIdentity,
}

impl Credentials {
    pub fn of<T>(req: &tonic::Request<T>) -> Credentials {
        let metadata = req.metadata();
        Credentials {
            token: metadata
                .get(TOKEN_METADATA)
                .or_else(|| metadata.get(TOKEN_HEADER))
                .map(|v| v.to_str().unwrap_or_default().to_string()),
            identity: req
                .extensions()
                .get::<ClientIdentity>()
                .cloned()
                .unwrap_or_default(),
        }
    }

    pub fn identity(&self) -> &ClientIdentity {
        &self.identity
    }
}

/// What the services need of auth: the applied state, this member's tokens, and how
/// passwords are hashed.
pub struct Auth {
    state: Published<Arc<AuthState>>,
    tokens: Arc<SimpleTokens>,
    applied: Arc<AppliedIndex>,
    bcrypt_cost: u32,
    /// How long a token's Authenticate entry is waited for (the request timeout).
    wait: Duration,
    /// `--client-cert-auth`: a verified client certificate's CN is the user of a
    /// request without a token.
    client_cert_auth: bool,
    throttle: LoginThrottle,
    /// `--auth-token jwt,...`: tokens are JWTs instead of simple tokens.
    jwt: Option<Arc<jwt::Jwt>>,
}

/// How [`Auth`] is configured.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub bcrypt_cost: u32,
    pub wait: Duration,
    pub client_cert_auth: bool,
    pub jwt: Option<Arc<jwt::Jwt>>,
}

impl Auth {
    pub fn new(
        state: Published<Arc<AuthState>>,
        tokens: Arc<SimpleTokens>,
        applied: Arc<AppliedIndex>,
        config: AuthConfig,
    ) -> Auth {
        Auth {
            state,
            tokens,
            applied,
            bcrypt_cost: config.bcrypt_cost,
            wait: config.wait,
            client_cert_auth: config.client_cert_auth,
            throttle: LoginThrottle::default(),
            jwt: config.jwt,
        }
    }

    /// The auth store as of the applied index.
    pub fn state(&self) -> Arc<AuthState> {
        self.state.get()
    }

    pub fn bcrypt_cost(&self) -> u32 {
        self.bcrypt_cost
    }

    pub fn throttle(&self) -> &LoginThrottle {
        &self.throttle
    }

    /// The JWT provider, when tokens are JWTs.
    pub fn jwt(&self) -> Option<&jwt::Jwt> {
        self.jwt.as_deref()
    }

    /// Who sends a request (etcd's `AuthInfoFromCtx`): the token's user; without a
    /// token, with `--client-cert-auth`, the verified client certificate's CN; else
    /// `None`. A token that is not live is refused with "invalid auth token"; one minted
    /// by an entry this member has not applied yet is waited for.
    pub async fn info(&self, creds: &Credentials) -> Result<Option<AuthInfo>, RequestError> {
        match &creds.token {
            Some(token) => self.info_from_token(token).await.map(Some),
            None => Ok(self.info_from_certificate(&creds.identity)),
        }
    }

    fn info_from_certificate(&self, identity: &ClientIdentity) -> Option<AuthInfo> {
        if !self.client_cert_auth {
            return None;
        }
        let cn = identity.cn.as_ref().filter(|cn| !cn.is_empty())?;
        Some(AuthInfo {
            user: cn.clone(),
            revision: self.state.read(|s| s.revision),
        })
    }

    async fn info_from_token(&self, token: &str) -> Result<AuthInfo, RequestError> {
        if let Some(jwt) = &self.jwt {
            return jwt.verify(token, clock::unix_seconds()).ok_or_else(|| {
                tracing::warn!("invalid JWT");
                EtcdError::InvalidAuthToken.into()
            });
        }
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
        creds: &Credentials,
    ) -> Result<Option<AuthInfo>, RequestError> {
        let info = self.info(creds).await?;
        if info.is_none() && self.state.read(|s| s.enabled) {
            return Err(EtcdError::UserEmpty.into());
        }
        Ok(info)
    }

    /// etcd's admin check in the API layer: the root role (anyone, while auth is off).
    pub async fn require_admin(
        &self,
        creds: &Credentials,
    ) -> Result<Option<AuthInfo>, RequestError> {
        let info = self.info(creds).await?;
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

/// A watch stream's credentials (as the stream was opened), checked at each create and
/// again whenever the auth store changes: a stream whose user may no longer read what it
/// watches is ended (etcd lets such streams run on).
pub struct StreamCredentials {
    auth: Arc<Auth>,
    creds: Credentials,
    /// The ranges of the creates that were let through.
    granted: std::sync::Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
    /// The auth revision (and whether auth was on) at the last check: `(revision << 1) |
    /// enabled`.
    checked: AtomicU64,
}

impl StreamCredentials {
    pub fn new(auth: Arc<Auth>, creds: Credentials) -> StreamCredentials {
        let checked = AtomicU64::new(auth.state.read(stamp));
        StreamCredentials {
            auth,
            creds,
            granted: std::sync::Mutex::new(Vec::new()),
            checked,
        }
    }

    /// Whether the stream's user may read every key of `(key, range_end)`; remembered
    /// for [`StreamCredentials::recheck`] when it may.
    pub async fn check_read(&self, key: &[u8], range_end: &[u8]) -> Result<(), RequestError> {
        let info = self.auth.info(&self.creds).await?;
        self.auth
            .state()
            .check_range(info.as_ref(), key, range_end, state::Access::Read)?;
        self.granted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((key.to_vec(), range_end.to_vec()));
        Ok(())
    }

    /// After the auth store changed: whether the stream may still read every range it
    /// was let watch (its token may have ended too). Cheap when nothing changed.
    pub async fn recheck(&self) -> Result<(), RequestError> {
        let now = self.auth.state.read(stamp);
        if self.checked.swap(now, Ordering::AcqRel) == now {
            return Ok(());
        }
        let granted = self
            .granted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if granted.is_empty() {
            return Ok(());
        }
        let info = self.auth.info(&self.creds).await?;
        let state = self.auth.state();
        for (key, range_end) in &granted {
            state.check_range(info.as_ref(), key, range_end, state::Access::Read)?;
        }
        Ok(())
    }
}

fn stamp(s: &Arc<AuthState>) -> u64 {
    (s.revision << 1) | u64::from(s.enabled)
}
