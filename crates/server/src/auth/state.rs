//! The auth store's state as applied: whether auth is on, its revision, the users and
//! roles, and each user's merged permissions. Apply changes it (`apply::auth`); the
//! services read the published copy to check requests before proposing or reading.
//!
//! Stored in the backend as etcd stores it: bucket `auth` holds `authEnabled` (one byte,
//! 1 or 0) and `authRevision` (8 bytes, big endian); bucket `authUsers` maps a user's
//! name to its `authpb.User`, bucket `authRoles` a role's name to its `authpb.Role`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use prost::Message as _;
use retcd_api::authpb::{Role, User, permission::Type as PermType};
use retcd_api::errors::EtcdError;
use retcd_backend::{BackendError, Bucket, ReadTx};

use super::keyset::{KeySet, range_of};

pub const ROOT_USER: &str = "root";
pub const ROOT_ROLE: &str = "root";
pub const ENABLED_KEY: &[u8] = b"authEnabled";
pub const REVISION_KEY: &[u8] = b"authRevision";

/// Who a request comes from, as its token (or certificate) says: the user and the auth
/// revision the credentials were checked at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthInfo {
    pub user: String,
    pub revision: u64,
}

/// The kind of access a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// What a user may do, merged over its roles.
#[derive(Clone, Debug, Default)]
pub struct UserPerms {
    pub root: bool,
    pub read: KeySet,
    pub write: KeySet,
}

/// The auth store as of some applied index.
#[derive(Clone, Debug, Default)]
pub struct AuthState {
    pub enabled: bool,
    /// Bumped by every change to users, roles and permissions (not by enable or disable).
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
    /// Each user's permissions, rebuilt whenever users or roles change.
    perms: HashMap<String, Arc<UserPerms>>,
}

impl AuthState {
    /// Loads the state from the backend. A store that never held auth data starts at
    /// revision 1, as etcd's does.
    pub fn load<T: ReadTx>(tx: &T) -> Result<AuthState, StateError> {
        let enabled = tx.get(Bucket::Auth, ENABLED_KEY)?.is_some_and(|v| v == [1]);
        let revision = match tx.get(Bucket::Auth, REVISION_KEY)? {
            None => 1,
            Some(v) => u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| StateError::Corrupted("auth revision is not 8 bytes".into()))?,
            ),
        };
        let mut users = BTreeMap::new();
        let mut roles = BTreeMap::new();
        let mut failure = None;
        tx.scan(Bucket::AuthUsers, &[], None, &mut |key, value| {
            match User::decode(value) {
                Ok(u) => {
                    users.insert(String::from_utf8_lossy(key).into_owned(), u);
                }
                Err(e) => failure = Some(format!("user record: {e}")),
            }
            std::ops::ControlFlow::Continue(())
        })?;
        tx.scan(Bucket::AuthRoles, &[], None, &mut |key, value| {
            match Role::decode(value) {
                Ok(r) => {
                    roles.insert(String::from_utf8_lossy(key).into_owned(), r);
                }
                Err(e) => failure = Some(format!("role record: {e}")),
            }
            std::ops::ControlFlow::Continue(())
        })?;
        if let Some(e) = failure {
            return Err(StateError::Corrupted(e));
        }
        let mut state = AuthState {
            enabled,
            revision,
            users,
            roles,
            perms: HashMap::new(),
        };
        state.rebuild_perms();
        Ok(state)
    }

    /// Recomputes every user's merged permissions (after users or roles changed).
    pub fn rebuild_perms(&mut self) {
        let mut perms = HashMap::with_capacity(self.users.len());
        for (name, user) in &self.users {
            let mut p = UserPerms {
                root: has_root_role(user),
                ..UserPerms::default()
            };
            let (mut read, mut write) = (Vec::new(), Vec::new());
            for role in user.roles.iter().filter_map(|r| self.roles.get(r)) {
                for perm in &role.key_permission {
                    let Some(range) = range_of(&perm.key, &perm.range_end) else {
                        continue;
                    };
                    match PermType::try_from(perm.perm_type) {
                        Ok(PermType::Read) => read.push(range),
                        Ok(PermType::Write) => write.push(range),
                        Ok(PermType::Readwrite) => {
                            read.push(range.clone());
                            write.push(range);
                        }
                        Err(_) => {}
                    }
                }
            }
            p.read = KeySet::from_ranges(read);
            p.write = KeySet::from_ranges(write);
            perms.insert(name.clone(), Arc::new(p));
        }
        self.perms = perms;
    }

    /// etcd's `isOpPermitted`: whether `info` may access the keys `(key, range_end)`.
    pub fn check_range(
        &self,
        info: Option<&AuthInfo>,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), EtcdError> {
        let Some(perms) = self.user_perms(info)? else {
            return Ok(());
        };
        if perms.root {
            return Ok(());
        }
        let set = match access {
            Access::Read => &perms.read,
            Access::Write => &perms.write,
        };
        if set.permits(key, range_end) {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }

    /// etcd's `IsAdminPermitted`: whether `info` holds the root role (always, while auth
    /// is off).
    pub fn check_admin(&self, info: Option<&AuthInfo>) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        let user = authenticated_user(info)?;
        match self.users.get(user) {
            None => Err(EtcdError::UserNotFound),
            Some(u) if has_root_role(u) => Ok(()),
            Some(_) => Err(EtcdError::PermissionDenied),
        }
    }

    /// Whether `info` names an existing user with credentials of the current revision
    /// (any user: what an operation needs that touches no key, such as a lease grant).
    pub fn check_user(&self, info: Option<&AuthInfo>) -> Result<(), EtcdError> {
        self.user_perms(info).map(|_| ())
    }

    /// The permissions of `info`'s user, checked as etcd checks before any key access:
    /// `None` while auth is off.
    fn user_perms(&self, info: Option<&AuthInfo>) -> Result<Option<&Arc<UserPerms>>, EtcdError> {
        if !self.enabled {
            return Ok(None);
        }
        let user = authenticated_user(info)?;
        let revision = info.map_or(0, |i| i.revision);
        if revision == 0 {
            return Err(EtcdError::UserEmpty);
        }
        if revision < self.revision {
            return Err(EtcdError::AuthOldRevision);
        }
        self.perms
            .get(user)
            .map(Some)
            .ok_or(EtcdError::PermissionDenied)
    }

    /// Whether `user` holds `role`.
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }
}

/// The user `info` names; a request without one is refused as etcd refuses it.
fn authenticated_user(info: Option<&AuthInfo>) -> Result<&str, EtcdError> {
    match info {
        Some(i) if !i.user.is_empty() => Ok(&i.user),
        _ => Err(EtcdError::UserEmpty),
    }
}

pub fn has_root_role(user: &User) -> bool {
    user.roles.iter().any(|r| r == ROOT_ROLE)
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("stored auth state is corrupted: {0}")]
    Corrupted(String),
}
