//! The Auth service: users, roles and permissions through Raft, and Authenticate.
//!
//! Every request goes through the log with its proposer's credentials in the header,
//! and apply's auth gate decides who may do it (etcd: admin for everything but
//! Authenticate, a user's own UserGet, and RoleGet of a role one holds). Passwords are
//! hashed here, on the blocking pool, before anything is proposed: the log carries only
//! bcrypt hashes. Authenticate checks the password here too (against the applied
//! state) and proposes only the user and a digest of the new token's random part.

use std::sync::Arc;
use std::time::Instant;

use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse,
    AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse,
    AuthRoleGetRequest, AuthRoleGetResponse, AuthRoleGrantPermissionRequest,
    AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest,
    AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest,
    AuthUserChangePasswordResponse, AuthUserDeleteRequest, AuthUserDeleteResponse,
    AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest, AuthUserGrantRoleResponse,
    AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse,
    InternalAuthenticateRequest, InternalRaftRequest, ResponseHeader, auth_server::Auth as AuthRpc,
};
use tonic::{Request, Response, Status};

use crate::apply::{ApplyResponse, AuthAnswer};
use crate::auth::{self, Auth, Credentials, password, tokens};
use crate::errors::RequestError;
use crate::node::{Node, NodeHandle, NodeStatus};

/// How many times Authenticate checks the password again when the auth store changed
/// between the check and the entry (etcd loops without a bound).
const AUTHENTICATE_ATTEMPTS: usize = 5;

pub struct AuthService {
    handle: Arc<NodeHandle>,
    status: Arc<NodeStatus>,
    auth: Arc<Auth>,
}

impl AuthService {
    pub fn new(node: &Node) -> Self {
        AuthService {
            handle: node.handle.clone(),
            status: node.status.clone(),
            auth: node.auth.clone(),
        }
    }

    fn header(&self) -> Option<ResponseHeader> {
        Some(self.status.header(None))
    }

    /// Proposes `req` with the caller's credentials and returns apply's answer.
    async fn propose(
        &self,
        creds: &Credentials,
        mut req: InternalRaftRequest,
    ) -> Result<AuthAnswer, RequestError> {
        let info = self.auth.info(creds).await?;
        req.header = auth::header(info.as_ref());
        match self.handle.propose(req).await? {
            ApplyResponse::Auth(a) => Ok(a),
            other => {
                tracing::error!(?other, "apply answered an auth request with another kind");
                Err(RequestError::Internal(
                    "apply answered an auth request with another kind".into(),
                ))
            }
        }
    }

    async fn done(
        &self,
        creds: &Credentials,
        req: InternalRaftRequest,
    ) -> Result<Option<ResponseHeader>, RequestError> {
        self.propose(creds, req).await?;
        Ok(self.header())
    }

    async fn names(
        &self,
        creds: &Credentials,
        req: InternalRaftRequest,
    ) -> Result<Vec<String>, RequestError> {
        match self.propose(creds, req).await? {
            AuthAnswer::Names(n) => Ok(n),
            other => Err(unexpected(&other)),
        }
    }

    async fn authenticate_inner(
        &self,
        r: AuthenticateRequest,
        addr: Option<std::net::IpAddr>,
    ) -> Result<AuthenticateResponse, RequestError> {
        let throttle = self.auth.throttle();
        if !throttle.wait(&r.name, addr, Instant::now()).is_zero() {
            tracing::warn!(user = %r.name, remote = ?addr, "authentication throttled after repeated failures");
            return Err(EtcdError::AuthFailed.into());
        }
        // As etcd: the password is checked against state at least as new as the
        // cluster's when the request arrived.
        self.handle.read_index().await?;
        for _ in 0..AUTHENTICATE_ATTEMPTS {
            let state = self.auth.state();
            if !state.enabled {
                return Err(EtcdError::AuthNotEnabled.into());
            }
            let Some(user) = state.users.get(&r.name) else {
                tracing::warn!(user = %r.name, "authentication failed: no such user");
                throttle.failed(&r.name, addr, Instant::now());
                return Err(EtcdError::AuthFailed.into());
            };
            if user.options.as_ref().is_some_and(|o| o.no_password) {
                return Err(EtcdError::NoPasswordUser.into());
            }
            if !password::matches(r.password.clone(), user.password.to_vec()).await {
                tracing::warn!(user = %r.name, "authentication failed: invalid password");
                throttle.failed(&r.name, addr, Instant::now());
                return Err(EtcdError::AuthFailed.into());
            }
            throttle.succeeded(&r.name, addr);
            let jwt = self.auth.jwt();
            let random = match jwt {
                Some(_) => String::new(),
                None => tokens::random_part()
                    .map_err(|_| RequestError::Internal("no randomness for a token".into()))?,
            };
            let req = InternalRaftRequest {
                authenticate: Some(InternalAuthenticateRequest {
                    name: r.name.clone(),
                    password: String::new(),
                    simple_token: match jwt {
                        Some(_) => String::new(),
                        None => tokens::digest(&random),
                    },
                }),
                header: auth::header(Some(&auth::state::AuthInfo {
                    user: r.name.clone(),
                    revision: state.revision,
                })),
                ..Default::default()
            };
            let answer = match self.handle.propose(req).await {
                Err(RequestError::Etcd(EtcdError::AuthOldRevision)) => continue,
                other => other?,
            };
            let ApplyResponse::Auth(AuthAnswer::Authenticated { index }) = answer else {
                return Err(RequestError::Internal(
                    "apply answered Authenticate with another kind".into(),
                ));
            };
            tracing::debug!(user = %r.name, "authenticated a user");
            let token = match jwt {
                None => format!("{random}.{index}"),
                Some(jwt) => {
                    match jwt.assign(&r.name, state.revision, crate::clock::unix_seconds()) {
                        Some(Ok(t)) => t,
                        Some(Err(e)) => return Err(RequestError::Internal(e)),
                        None => return Err(EtcdError::JwtVerifyOnly.into()),
                    }
                }
            };
            return Ok(AuthenticateResponse {
                header: self.header(),
                token,
            });
        }
        Err(EtcdError::AuthOldRevision.into())
    }
}

fn unexpected(a: &AuthAnswer) -> RequestError {
    tracing::error!(?a, "apply answered an auth request with another answer");
    RequestError::Internal("apply answered an auth request with another answer".into())
}

macro_rules! raft_done {
    ($self:ident, $req:ident, $field:ident, $resp:ident) => {{
        let creds = Credentials::of(&$req);
        let r = $req.into_inner();
        let header = $self
            .done(
                &creds,
                InternalRaftRequest {
                    $field: Some(r),
                    ..Default::default()
                },
            )
            .await?;
        Ok(Response::new($resp { header }))
    }};
}

/// An auth request through Raft whose answer is a list of names, in field `$names` of
/// the response.
macro_rules! raft_names {
    ($self:ident, $req:ident, $field:ident, $resp:ident, $names:ident) => {{
        let creds = Credentials::of(&$req);
        let r = $req.into_inner();
        let $names = $self
            .names(
                &creds,
                InternalRaftRequest {
                    $field: Some(r),
                    ..Default::default()
                },
            )
            .await?;
        Ok(Response::new($resp {
            header: $self.header(),
            $names,
        }))
    }};
}

#[tonic::async_trait]
impl AuthRpc for AuthService {
    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        raft_done!(self, req, auth_enable, AuthEnableResponse)
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        raft_done!(self, req, auth_disable, AuthDisableResponse)
    }

    async fn auth_status(
        &self,
        req: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        let creds = Credentials::of(&req);
        let r = req.into_inner();
        let answer = self
            .propose(
                &creds,
                InternalRaftRequest {
                    auth_status: Some(r),
                    ..Default::default()
                },
            )
            .await?;
        let AuthAnswer::Status { enabled, revision } = answer else {
            return Err(unexpected(&answer).into());
        };
        Ok(Response::new(AuthStatusResponse {
            header: self.header(),
            enabled,
            auth_revision: revision,
        }))
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let addr = Credentials::of(&req).identity().addr.map(|a| a.ip());
        Ok(Response::new(
            self.authenticate_inner(req.into_inner(), addr).await?,
        ))
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let creds = Credentials::of(&req);
        let mut r = req.into_inner();
        if r.name.is_empty() {
            return Err(RequestError::from(EtcdError::UserEmpty).into());
        }
        // Only an admin's request is worth the hashing (apply decides all the same).
        self.auth.require_admin(&creds).await?;
        if !r.options.is_some_and(|o| o.no_password) {
            let plain = std::mem::take(&mut r.password);
            r.hashed_password = password::hash_for_request(plain, self.auth.bcrypt_cost()).await?;
        }
        r.password.clear();
        let header = self
            .done(
                &creds,
                InternalRaftRequest {
                    auth_user_add: Some(r),
                    ..Default::default()
                },
            )
            .await?;
        Ok(Response::new(AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        raft_names!(self, req, auth_user_get, AuthUserGetResponse, roles)
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        raft_names!(self, req, auth_user_list, AuthUserListResponse, users)
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        raft_done!(self, req, auth_user_delete, AuthUserDeleteResponse)
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let creds = Credentials::of(&req);
        let mut r = req.into_inner();
        self.auth.require_admin(&creds).await?;
        let plain = std::mem::take(&mut r.password);
        r.hashed_password = password::hash_for_request(plain, self.auth.bcrypt_cost()).await?;
        let header = self
            .done(
                &creds,
                InternalRaftRequest {
                    auth_user_change_password: Some(r),
                    ..Default::default()
                },
            )
            .await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        raft_done!(self, req, auth_user_grant_role, AuthUserGrantRoleResponse)
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        raft_done!(self, req, auth_user_revoke_role, AuthUserRevokeRoleResponse)
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        raft_done!(self, req, auth_role_add, AuthRoleAddResponse)
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let creds = Credentials::of(&req);
        let r = req.into_inner();
        let answer = self
            .propose(
                &creds,
                InternalRaftRequest {
                    auth_role_get: Some(r),
                    ..Default::default()
                },
            )
            .await?;
        let AuthAnswer::Perms(perm) = answer else {
            return Err(unexpected(&answer).into());
        };
        Ok(Response::new(AuthRoleGetResponse {
            header: self.header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        raft_names!(self, req, auth_role_list, AuthRoleListResponse, roles)
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        raft_done!(self, req, auth_role_delete, AuthRoleDeleteResponse)
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        raft_done!(
            self,
            req,
            auth_role_grant_permission,
            AuthRoleGrantPermissionResponse
        )
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        raft_done!(
            self,
            req,
            auth_role_revoke_permission,
            AuthRoleRevokePermissionResponse
        )
    }
}
