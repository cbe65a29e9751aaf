//! What a committed `InternalRaftRequest` asks for: exactly one kind, chosen the same
//! way on every member.
//!
//! A well-formed request sets one field. An entry that sets several (only a buggy or
//! hostile proposer writes one) is read as the first of them in etcd's order
//! (`applyV3Request`'s switch), so every member decides alike; one that sets none, or
//! only kinds this version does not apply, is [`Request::Unsupported`].

use retcd_api::etcdserverpb::{
    AlarmRequest, AuthRoleAddRequest, AuthRoleDeleteRequest, AuthRoleGetRequest,
    AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest, AuthUserDeleteRequest, AuthUserGetRequest,
    AuthUserGrantRoleRequest, AuthUserRevokeRoleRequest, CompactionRequest, DeleteRangeRequest,
    InternalAuthenticateRequest, InternalRaftRequest, LeaseExpireRequest, LeaseGrantRequest,
    LeaseRenewRequest, LeaseRevokeRequest, PutRequest, RangeRequest, TxnRequest,
};
use retcd_api::membershippb::ClusterMemberAttrSetRequest;

/// One request kind, borrowed from the decoded entry.
#[derive(Clone, Copy, Debug)]
pub enum Request<'a> {
    Range(&'a RangeRequest),
    Put(&'a PutRequest),
    DeleteRange(&'a DeleteRangeRequest),
    Txn(&'a TxnRequest),
    Compaction(&'a CompactionRequest),
    LeaseGrant(&'a LeaseGrantRequest),
    LeaseRevoke(&'a LeaseRevokeRequest),
    /// Keep-alives, batched (retcd's own; see `retcd_lease`).
    LeaseRenew(&'a LeaseRenewRequest),
    /// The leader's revocation of expired leases (retcd's own).
    LeaseExpire(&'a LeaseExpireRequest),
    Alarm(&'a AlarmRequest),
    /// One of the auth store's requests.
    Auth(AuthRequest<'a>),
    /// A member publishes its name and client URLs.
    MemberAttrSet(&'a ClusterMemberAttrSetRequest),
    /// Nothing this version applies; the name says what was asked.
    Unsupported(&'static str),
}

impl<'a> Request<'a> {
    /// The kind `req` asks for.
    pub fn of(req: &'a InternalRaftRequest) -> Request<'a> {
        if let Some(r) = &req.range {
            return Request::Range(r);
        }
        if let Some(r) = &req.put {
            return Request::Put(r);
        }
        if let Some(r) = &req.delete_range {
            return Request::DeleteRange(r);
        }
        if let Some(r) = &req.txn {
            return Request::Txn(r);
        }
        if let Some(r) = &req.compaction {
            return Request::Compaction(r);
        }
        if let Some(r) = &req.lease_grant {
            return Request::LeaseGrant(r);
        }
        if let Some(r) = &req.lease_revoke {
            return Request::LeaseRevoke(r);
        }
        if req.lease_checkpoint.is_some() {
            // Renewals are replicated here, so checkpoints have nothing to carry.
            return Request::Unsupported("lease checkpoint");
        }
        if let Some(r) = &req.alarm {
            return Request::Alarm(r);
        }
        if let Some(a) = AuthRequest::of(req) {
            return Request::Auth(a);
        }
        if let Some(r) = &req.cluster_member_attr_set {
            return Request::MemberAttrSet(r);
        }
        if let Some(r) = &req.lease_renew {
            return Request::LeaseRenew(r);
        }
        if let Some(r) = &req.lease_expire {
            return Request::LeaseExpire(r);
        }
        Request::Unsupported("an empty request")
    }
}

/// An auth request, borrowed from the decoded entry.
#[derive(Clone, Copy, Debug)]
pub enum AuthRequest<'a> {
    Authenticate(&'a InternalAuthenticateRequest),
    Enable,
    Disable,
    Status,
    UserAdd(&'a AuthUserAddRequest),
    UserDelete(&'a AuthUserDeleteRequest),
    UserGet(&'a AuthUserGetRequest),
    UserChangePassword(&'a AuthUserChangePasswordRequest),
    UserGrantRole(&'a AuthUserGrantRoleRequest),
    UserRevokeRole(&'a AuthUserRevokeRoleRequest),
    UserList,
    RoleAdd(&'a AuthRoleAddRequest),
    RoleGet(&'a AuthRoleGetRequest),
    RoleGrantPermission(&'a AuthRoleGrantPermissionRequest),
    RoleRevokePermission(&'a AuthRoleRevokePermissionRequest),
    RoleDelete(&'a AuthRoleDeleteRequest),
    RoleList,
}

impl<'a> AuthRequest<'a> {
    /// The auth request `req` holds, in etcd's order (`applyV3Request`).
    fn of(req: &'a InternalRaftRequest) -> Option<AuthRequest<'a>> {
        Some(if let Some(r) = &req.authenticate {
            AuthRequest::Authenticate(r)
        } else if req.auth_enable.is_some() {
            AuthRequest::Enable
        } else if req.auth_disable.is_some() {
            AuthRequest::Disable
        } else if req.auth_status.is_some() {
            AuthRequest::Status
        } else if let Some(r) = &req.auth_user_add {
            AuthRequest::UserAdd(r)
        } else if let Some(r) = &req.auth_user_delete {
            AuthRequest::UserDelete(r)
        } else if let Some(r) = &req.auth_user_get {
            AuthRequest::UserGet(r)
        } else if let Some(r) = &req.auth_user_change_password {
            AuthRequest::UserChangePassword(r)
        } else if let Some(r) = &req.auth_user_grant_role {
            AuthRequest::UserGrantRole(r)
        } else if let Some(r) = &req.auth_user_revoke_role {
            AuthRequest::UserRevokeRole(r)
        } else if req.auth_user_list.is_some() {
            AuthRequest::UserList
        } else if let Some(r) = &req.auth_role_add {
            AuthRequest::RoleAdd(r)
        } else if let Some(r) = &req.auth_role_get {
            AuthRequest::RoleGet(r)
        } else if let Some(r) = &req.auth_role_grant_permission {
            AuthRequest::RoleGrantPermission(r)
        } else if let Some(r) = &req.auth_role_revoke_permission {
            AuthRequest::RoleRevokePermission(r)
        } else if let Some(r) = &req.auth_role_delete {
            AuthRequest::RoleDelete(r)
        } else if req.auth_role_list.is_some() {
            AuthRequest::RoleList
        } else {
            return None;
        })
    }
}
