//! Auth requests are decided here (etcd's `authStore` operations), and the auth gate
//! in front of every request (etcd's `authApplierV3`).
//!
//! The gate sees who proposed the entry (`RequestHeader.username` and `auth_revision`,
//! filled by the member that took the request from its token) and refuses what that
//! user may not do, as etcd 3.4's latest patch does: admin requests need the root role,
//! key access needs a permission on every key touched (a txn's compares and every op of
//! both branches, nested txns included; a put's `prev_kv` needs read, its lease write on
//! every key already attached), a lease revocation needs write on the lease's keys.
//! Requests the members make themselves (expiries, attributes, alarms) pass.

use std::sync::Arc;

use prost::Message as _;
use retcd_api::authpb::{Permission, Role, User, UserAddOptions};
use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::{
    AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest, AuthUserGrantRoleRequest, AuthUserRevokeRoleRequest,
    DeleteRangeRequest, InternalAuthenticateRequest, PutRequest, TxnRequest, request_op,
};
use retcd_backend::{BackendError, Bucket, WriteTx};
use retcd_lease::{LeaseId, Lessor};

use super::request::AuthRequest;
use super::{ApplyResponse, ApplyResult, Gate, GateState, Request};
use crate::auth::keyset::range_of;
use crate::auth::password;
use crate::auth::state::{
    Access, AuthInfo, AuthState, ENABLED_KEY, REVISION_KEY, ROOT_ROLE, ROOT_USER, has_root_role,
};
use crate::auth::tokens::TokenChange;

/// What an auth request answers.
#[derive(Clone, Debug, PartialEq)]
pub enum AuthAnswer {
    Done,
    Status {
        enabled: bool,
        revision: u64,
    },
    /// A token was assigned by the entry at `index`.
    Authenticated {
        index: u64,
    },
    /// A user's roles, or the users, or the roles (sorted).
    Names(Vec<String>),
    Perms(Vec<Permission>),
}

/// etcd's auth applier, as the first gate of the chain.
pub struct AuthGate;

impl Gate for AuthGate {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn admit(&self, req: &Request<'_>, state: &GateState<'_>) -> Result<(), EtcdError> {
        let (auth, info, lessor) = (state.auth, state.info, state.lessor);
        if !auth.enabled {
            return Ok(());
        }
        match req {
            Request::Auth(a) => match a {
                AuthRequest::Authenticate(_) => Ok(()),
                AuthRequest::UserGet(r) => match auth.check_admin(info) {
                    Err(e) if info.map_or("", |i| i.user.as_str()) != r.name => Err(e),
                    _ => Ok(()),
                },
                AuthRequest::RoleGet(r) => match auth.check_admin(info) {
                    Err(e) if !auth.has_role(info.map_or("", |i| &i.user), &r.role) => Err(e),
                    _ => Ok(()),
                },
                _ => auth.check_admin(info),
            },
            Request::Range(r) => auth.check_range(info, &r.key, &r.range_end, Access::Read),
            Request::Put(p) => check_put(auth, info, lessor, p),
            Request::DeleteRange(d) => check_delete(auth, info, d),
            Request::Txn(t) => check_txn(auth, info, lessor, t),
            Request::LeaseRevoke(r) => check_lease_keys(auth, info, lessor, r.id, Access::Write),
            _ => Ok(()),
        }
    }
}

fn check_put(
    auth: &AuthState,
    info: Option<&AuthInfo>,
    lessor: &Lessor,
    p: &PutRequest,
) -> Result<(), EtcdError> {
    auth.check_range(info, &p.key, &[], Access::Write)?;
    check_lease_keys(auth, info, lessor, p.lease, Access::Write)?;
    if p.prev_kv {
        auth.check_range(info, &p.key, &[], Access::Read)?;
    }
    Ok(())
}

fn check_delete(
    auth: &AuthState,
    info: Option<&AuthInfo>,
    d: &DeleteRangeRequest,
) -> Result<(), EtcdError> {
    auth.check_range(info, &d.key, &d.range_end, Access::Write)?;
    if d.prev_kv {
        auth.check_range(info, &d.key, &d.range_end, Access::Read)?;
    }
    Ok(())
}

/// A txn needs read on every compare and the permissions of every op of both branches,
/// nested txns included (etcd's `checkTxnAuth`).
pub fn check_txn(
    auth: &AuthState,
    info: Option<&AuthInfo>,
    lessor: &Lessor,
    t: &TxnRequest,
) -> Result<(), EtcdError> {
    for c in &t.compare {
        auth.check_range(info, &c.key, &c.range_end, Access::Read)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                auth.check_range(info, &r.key, &r.range_end, Access::Read)?
            }
            Some(request_op::Request::RequestPut(p)) => check_put(auth, info, lessor, p)?,
            Some(request_op::Request::RequestDeleteRange(d)) => check_delete(auth, info, d)?,
            Some(request_op::Request::RequestTxn(t)) => check_txn(auth, info, lessor, t)?,
            None => {}
        }
    }
    Ok(())
}

/// Access to every key attached to lease `id` (none needed for a lease that does not
/// exist); the root role needs none.
fn check_lease_keys(
    auth: &AuthState,
    info: Option<&AuthInfo>,
    lessor: &Lessor,
    id: i64,
    access: Access,
) -> Result<(), EtcdError> {
    let Some(lease) = lessor.get(LeaseId(id)) else {
        return Ok(());
    };
    if auth.check_admin(info).is_ok() {
        return Ok(());
    }
    for key in lease.keys() {
        auth.check_range(info, key, &[], access)?;
    }
    Ok(())
}

/// Where an auth request is applied: the store's auth buckets, the working copy of the
/// state, and the token changes the batch carries out when it commits.
pub(super) struct AuthApply<'x, T: WriteTx> {
    pub tx: &'x mut T,
    pub state: &'x mut Arc<AuthState>,
    pub tokens: &'x mut Vec<TokenChange>,
    /// The state changed (to publish at commit).
    pub changed: &'x mut bool,
    pub index: u64,
    /// The auth revision the proposer checked the credentials at.
    pub checked_revision: u64,
}

type Outcome = Result<ApplyResult, BackendError>;

fn answer(a: AuthAnswer) -> Outcome {
    Ok(Ok(ApplyResponse::Auth(a)))
}

fn refuse(e: EtcdError) -> Outcome {
    Ok(Err(e))
}

impl<T: WriteTx> AuthApply<'_, T> {
    pub fn apply(&mut self, req: &AuthRequest<'_>) -> Outcome {
        match req {
            AuthRequest::Enable => self.enable(),
            AuthRequest::Disable => self.disable(),
            AuthRequest::Status => answer(AuthAnswer::Status {
                enabled: self.state.enabled,
                revision: self.state.revision,
            }),
            AuthRequest::Authenticate(r) => self.authenticate(r),
            AuthRequest::UserAdd(r) => self.user_add(r),
            AuthRequest::UserDelete(r) => self.user_delete(&r.name),
            AuthRequest::UserGet(r) => match self.state.users.get(&r.name) {
                Some(u) => answer(AuthAnswer::Names(u.roles.clone())),
                None => refuse(EtcdError::UserNotFound),
            },
            AuthRequest::UserList => answer(AuthAnswer::Names(
                self.state.users.keys().cloned().collect(),
            )),
            AuthRequest::UserChangePassword(r) => self.user_change_password(r),
            AuthRequest::UserGrantRole(r) => self.user_grant_role(r),
            AuthRequest::UserRevokeRole(r) => self.user_revoke_role(r),
            AuthRequest::RoleAdd(r) => self.role_add(&r.name),
            AuthRequest::RoleGet(r) => match self.state.roles.get(&r.role) {
                Some(role) => answer(AuthAnswer::Perms(role.key_permission.clone())),
                None => refuse(EtcdError::RoleNotFound),
            },
            AuthRequest::RoleList => answer(AuthAnswer::Names(
                self.state.roles.keys().cloned().collect(),
            )),
            AuthRequest::RoleDelete(r) => self.role_delete(&r.role),
            AuthRequest::RoleGrantPermission(r) => self.role_grant_permission(r),
            AuthRequest::RoleRevokePermission(r) => self.role_revoke_permission(r),
        }
    }

    /// The state to change; published when the batch commits.
    fn state_mut(&mut self) -> &mut AuthState {
        *self.changed = true;
        Arc::make_mut(self.state)
    }

    /// Bumps the auth revision (every change to users, roles and permissions).
    fn bump(&mut self) -> Result<(), BackendError> {
        let state = self.state_mut();
        state.revision += 1;
        state.rebuild_perms();
        let revision = state.revision;
        self.tx
            .put(Bucket::Auth, REVISION_KEY, &revision.to_be_bytes())
    }

    fn put_user(&mut self, user: User) -> Result<(), BackendError> {
        self.tx
            .put(Bucket::AuthUsers, &user.name, &user.encode_to_vec())?;
        let name = String::from_utf8_lossy(&user.name).into_owned();
        self.state_mut().users.insert(name, user);
        self.bump()
    }

    fn put_role(&mut self, role: Role) -> Result<(), BackendError> {
        self.tx
            .put(Bucket::AuthRoles, &role.name, &role.encode_to_vec())?;
        let name = String::from_utf8_lossy(&role.name).into_owned();
        self.state_mut().roles.insert(name, role);
        self.bump()
    }

    fn enable(&mut self) -> Outcome {
        if self.state.enabled {
            return answer(AuthAnswer::Done);
        }
        match self.state.users.get(ROOT_USER) {
            None => return refuse(EtcdError::RootUserNotExist),
            Some(u) if !has_root_role(u) => return refuse(EtcdError::RootRoleNotExist),
            Some(_) => {}
        }
        self.tx.put(Bucket::Auth, ENABLED_KEY, &[1])?;
        self.state_mut().enabled = true;
        tracing::info!(target: "audit", "auth enabled");
        answer(AuthAnswer::Done)
    }

    fn disable(&mut self) -> Outcome {
        if !self.state.enabled {
            return answer(AuthAnswer::Done);
        }
        self.tx.put(Bucket::Auth, ENABLED_KEY, &[0])?;
        self.state_mut().enabled = false;
        // etcd bumps the revision here too: credentials checked before do not carry over.
        self.bump()?;
        self.tokens.push(TokenChange::Clear);
        tracing::info!(target: "audit", "auth disabled");
        answer(AuthAnswer::Done)
    }

    fn authenticate(&mut self, r: &InternalAuthenticateRequest) -> Outcome {
        if !self.state.enabled {
            return refuse(EtcdError::AuthNotEnabled);
        }
        match self.state.users.get(&r.name) {
            None => return refuse(EtcdError::AuthFailed),
            Some(u) if u.options.as_ref().is_some_and(|o| o.no_password) => {
                return refuse(EtcdError::AuthFailed);
            }
            Some(_) => {}
        }
        // The password was checked at `checked_revision`; a change since (a new password,
        // a deleted user) makes the proposer check again.
        if self.checked_revision != self.state.revision {
            return refuse(EtcdError::AuthOldRevision);
        }
        // No digest: the proposer issues a JWT, which no member keeps.
        if !r.simple_token.is_empty() {
            if r.simple_token.len() != 64 || !r.simple_token.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return refuse(EtcdError::InvalidAuthMgmt);
            }
            self.tokens.push(TokenChange::Assign {
                digest: r.simple_token.clone(),
                index: self.index,
                user: r.name.clone(),
            });
        }
        answer(AuthAnswer::Authenticated { index: self.index })
    }

    fn user_add(&mut self, r: &AuthUserAddRequest) -> Outcome {
        if r.name.is_empty() {
            return refuse(EtcdError::UserEmpty);
        }
        if self.state.users.contains_key(&r.name) {
            return refuse(EtcdError::UserAlreadyExist);
        }
        let options = r.options.unwrap_or(UserAddOptions { no_password: false });
        let password = if options.no_password {
            Vec::new()
        } else {
            match password::stored_from_request(&r.hashed_password) {
                Ok(p) => p,
                Err(e) => return refuse(e),
            }
        };
        self.put_user(User {
            name: r.name.clone().into_bytes().into(),
            password: password.into(),
            roles: Vec::new(),
            options: Some(options),
        })?;
        tracing::info!(target: "audit", user = %r.name, "added a user");
        answer(AuthAnswer::Done)
    }

    fn user_delete(&mut self, name: &str) -> Outcome {
        if self.state.enabled && name == ROOT_USER {
            return refuse(EtcdError::InvalidAuthMgmt);
        }
        if !self.state.users.contains_key(name) {
            return refuse(EtcdError::UserNotFound);
        }
        self.tx.delete(Bucket::AuthUsers, name.as_bytes())?;
        self.state_mut().users.remove(name);
        self.bump()?;
        self.tokens
            .push(TokenChange::InvalidateUser(name.to_string()));
        tracing::info!(target: "audit", user = %name, "deleted a user");
        answer(AuthAnswer::Done)
    }

    fn user_change_password(&mut self, r: &AuthUserChangePasswordRequest) -> Outcome {
        let Some(user) = self.state.users.get(&r.name) else {
            return refuse(EtcdError::UserNotFound);
        };
        let password = match password::stored_from_request(&r.hashed_password) {
            Ok(p) => p,
            Err(e) => return refuse(e),
        };
        let user = User {
            password: password.into(),
            ..user.clone()
        };
        self.put_user(user)?;
        self.tokens
            .push(TokenChange::InvalidateUser(r.name.clone()));
        tracing::info!(target: "audit", user = %r.name, "changed a user's password");
        answer(AuthAnswer::Done)
    }

    fn user_grant_role(&mut self, r: &AuthUserGrantRoleRequest) -> Outcome {
        let Some(user) = self.state.users.get(&r.user) else {
            return refuse(EtcdError::UserNotFound);
        };
        if r.role != ROOT_ROLE && !self.state.roles.contains_key(&r.role) {
            return refuse(EtcdError::RoleNotFound);
        }
        let Err(at) = user.roles.binary_search(&r.role) else {
            // Already granted: nothing changes (etcd ignores it too).
            return answer(AuthAnswer::Done);
        };
        let mut user = user.clone();
        user.roles.insert(at, r.role.clone());
        self.put_user(user)?;
        tracing::info!(target: "audit", user = %r.user, role = %r.role, "granted a role to a user");
        answer(AuthAnswer::Done)
    }

    fn user_revoke_role(&mut self, r: &AuthUserRevokeRoleRequest) -> Outcome {
        if self.state.enabled && r.name == ROOT_USER && r.role == ROOT_ROLE {
            return refuse(EtcdError::InvalidAuthMgmt);
        }
        let Some(user) = self.state.users.get(&r.name) else {
            return refuse(EtcdError::UserNotFound);
        };
        let Some(at) = user.roles.iter().position(|x| *x == r.role) else {
            return refuse(EtcdError::RoleNotGranted);
        };
        let mut user = user.clone();
        user.roles.remove(at);
        self.put_user(user)?;
        tracing::info!(target: "audit", user = %r.name, role = %r.role, "revoked a role from a user");
        answer(AuthAnswer::Done)
    }

    fn role_add(&mut self, name: &str) -> Outcome {
        if name.is_empty() {
            return refuse(EtcdError::RoleEmpty);
        }
        if self.state.roles.contains_key(name) {
            return refuse(EtcdError::RoleAlreadyExist);
        }
        self.put_role(Role {
            name: name.as_bytes().to_vec().into(),
            key_permission: Vec::new(),
        })?;
        tracing::info!(target: "audit", role = %name, "added a role");
        answer(AuthAnswer::Done)
    }

    fn role_delete(&mut self, name: &str) -> Outcome {
        if self.state.enabled && name == ROOT_ROLE {
            return refuse(EtcdError::InvalidAuthMgmt);
        }
        if !self.state.roles.contains_key(name) {
            return refuse(EtcdError::RoleNotFound);
        }
        self.tx.delete(Bucket::AuthRoles, name.as_bytes())?;
        self.state_mut().roles.remove(name);
        // Users holding the role lose it.
        let holders: Vec<User> = self
            .state
            .users
            .values()
            .filter(|u| u.roles.iter().any(|r| r == name))
            .cloned()
            .collect();
        for mut user in holders {
            user.roles.retain(|r| r != name);
            self.tx
                .put(Bucket::AuthUsers, &user.name, &user.encode_to_vec())?;
            let key = String::from_utf8_lossy(&user.name).into_owned();
            self.state_mut().users.insert(key, user);
        }
        self.bump()?;
        tracing::info!(target: "audit", role = %name, "deleted a role");
        answer(AuthAnswer::Done)
    }

    fn role_grant_permission(&mut self, r: &AuthRoleGrantPermissionRequest) -> Outcome {
        let Some(perm) = &r.perm else {
            return refuse(EtcdError::PermissionNotGiven);
        };
        // etcd #15294: a grant must name at least one key.
        if perm.key.is_empty() || range_of(&perm.key, &perm.range_end).is_none() {
            return refuse(EtcdError::InvalidAuthMgmt);
        }
        let Some(role) = self.state.roles.get(&r.name) else {
            return refuse(EtcdError::RoleNotFound);
        };
        let mut role = role.clone();
        let at = role
            .key_permission
            .partition_point(|p| p.key[..] < perm.key[..]);
        match role
            .key_permission
            .iter_mut()
            .skip(at)
            .find(|p| p.key == perm.key && p.range_end == perm.range_end)
        {
            Some(existing) => existing.perm_type = perm.perm_type,
            None => {
                role.key_permission.push(perm.clone());
                // Stable, by key only, as etcd sorts them.
                role.key_permission.sort_by(|a, b| a.key.cmp(&b.key));
            }
        }
        self.put_role(role)?;
        tracing::info!(target: "audit", role = %r.name, "granted a permission to a role");
        answer(AuthAnswer::Done)
    }

    fn role_revoke_permission(&mut self, r: &AuthRoleRevokePermissionRequest) -> Outcome {
        let Some(role) = self.state.roles.get(&r.role) else {
            return refuse(EtcdError::RoleNotFound);
        };
        let mut role = role.clone();
        let before = role.key_permission.len();
        role.key_permission
            .retain(|p| p.key != r.key || p.range_end != r.range_end);
        if role.key_permission.len() == before {
            return refuse(EtcdError::PermissionNotGranted);
        }
        self.put_role(role)?;
        tracing::info!(target: "audit", role = %r.role, "revoked a permission from a role");
        answer(AuthAnswer::Done)
    }
}
