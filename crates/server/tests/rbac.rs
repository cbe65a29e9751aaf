//! The RBAC matrix: every RPC of KV, Watch, Lease, Cluster, Maintenance and Auth, called by
//! each principal, against the table checked in at `tests/rbac/matrix.md`. retcd must
//! match the table exactly; etcd 3.4.23 (when installed) must match it too, except in the
//! cells the table's last column gives etcd's own answer for (an advisory etcd 3.4.23 does
//! not have the fix of, or a feature one of the two lacks).
//!
//! Principals: `none` (no token), `garbage` (a token no member issued), `expired` (a
//! simple token past `--auth-token-ttl`), `noroles` (a user without roles), `read`,
//! `write`, `rw` (users whose one role grants that on `/p/` and below), `root`. A row
//! names one call; before each principal's call, `prepare` (as root) puts back what an
//! earlier allowed call changed, so every principal meets the same state. Outcomes are
//! `ok` or an abbreviation of the refusal (see `outcome`).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Retcd;
use retcd_api::authpb::{Permission, UserAddOptions, permission::Type as PermType};
use retcd_api::etcdserverpb::{
    AlarmRequest, AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthRoleGetRequest, AuthRoleGrantPermissionRequest, AuthRoleListRequest,
    AuthRoleRevokePermissionRequest, AuthStatusRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest, AuthUserDeleteRequest, AuthUserGetRequest,
    AuthUserGrantRoleRequest, AuthUserListRequest, AuthUserRevokeRoleRequest, AuthenticateRequest,
    CompactionRequest, Compare, DefragmentRequest, DeleteRangeRequest, DowngradeRequest,
    HashKvRequest, HashRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, MemberAddRequest, MemberListRequest,
    MemberPromoteRequest, MemberRemoveRequest, MemberUpdateRequest, MoveLeaderRequest, PutRequest,
    RangeRequest, RequestOp, SnapshotRequest, StatusRequest, TxnRequest, WatchCreateRequest,
    WatchRequest, alarm_request, auth_client::AuthClient, cluster_client::ClusterClient, compare,
    kv_client::KvClient, lease_client::LeaseClient, maintenance_client::MaintenanceClient,
    request_op, watch_client::WatchClient, watch_request::RequestUnion,
};
use tonic::transport::Channel;

const TABLE: &str = include_str!("rbac/matrix.md");
/// Simple tokens live this long after their last use on both servers.
const TOKEN_TTL_SECS: u64 = 2;
const PRINCIPALS: [&str; 8] = [
    "none", "garbage", "expired", "noroles", "read", "write", "rw", "root",
];
/// Users of the matrix: name, password, role.
const USERS: [(&str, &str, Option<&str>); 5] = [
    ("root", "rootpw", Some("root")),
    ("noroles", "norolespw", None),
    ("ro", "ropw", Some("r")),
    ("wo", "wopw", Some("w")),
    ("rw", "rwpw", Some("rw")),
];
/// The lease with `/p/lk` attached that the lease rows use.
const LEASE: i64 = 1000;
/// The lease `LeaseRevoke` revokes (granted again before each principal's call).
const REVOCABLE: i64 = 2000;
/// A lease with `/secret/lk` attached, which no user but root may write.
const SECRET_LEASE: i64 = 3000;

fn user_of(principal: &str) -> Option<(&'static str, &'static str)> {
    let name = match principal {
        "noroles" => "noroles",
        "read" => "ro",
        "write" => "wo",
        "rw" => "rw",
        "root" => "root",
        _ => return None,
    };
    USERS.iter().find(|u| u.0 == name).map(|u| (u.0, u.1))
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A request carrying `token` (if any).
fn req<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("token", t.parse().expect("token as metadata"));
    }
    r
}

/// etcd's errors, shortened for the table. Anything else is spelled out.
fn outcome(status: &tonic::Status) -> String {
    let short = match (status.code(), status.message()) {
        (tonic::Code::InvalidArgument, "etcdserver: user name is empty") => "empty",
        (tonic::Code::Unauthenticated, "etcdserver: invalid auth token") => "invalid",
        (tonic::Code::PermissionDenied, "etcdserver: permission denied") => "denied",
        (tonic::Code::FailedPrecondition, "etcdserver: user name not found") => "no-user",
        (tonic::Code::Unknown, "auth: user name is empty") => "raw-empty",
        (tonic::Code::Unknown, "auth: invalid auth token") => "raw-invalid",
        (tonic::Code::Unknown, "auth: permission denied") => "raw-denied",
        (tonic::Code::Unimplemented, _) => "unimplemented",
        (code, message) => return format!("{code:?}: {message}"),
    };
    short.to_string()
}

fn of<T>(r: Result<tonic::Response<T>, tonic::Status>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(s) => outcome(&s),
    }
}

/// A watch create's outcome: a canceled create carries gRPC-Go's text of the error.
fn watch_outcome(created: &retcd_api::etcdserverpb::WatchResponse) -> String {
    if !created.canceled {
        return "ok".into();
    }
    let reason = &created.cancel_reason;
    let Some(rest) = reason.strip_prefix("rpc error: code = ") else {
        return format!("canceled: {reason}");
    };
    let (code, desc) = rest.split_once(" desc = ").unwrap_or((rest, ""));
    let code = match code {
        "InvalidArgument" => tonic::Code::InvalidArgument,
        "Unauthenticated" => tonic::Code::Unauthenticated,
        "PermissionDenied" => tonic::Code::PermissionDenied,
        _ => tonic::Code::Unknown,
    };
    outcome(&tonic::Status::new(code, desc))
}

struct Target {
    channel: Channel,
    member_id: u64,
    /// The revision `Compact` compacts to: the one `prepare` just wrote.
    compact_to: std::sync::atomic::AtomicI64,
}

impl Target {
    async fn connect(endpoint: String) -> Target {
        let channel = Channel::from_shared(endpoint)
            .unwrap()
            .connect()
            .await
            .expect("connect");
        Target {
            channel,
            member_id: 0,
            compact_to: std::sync::atomic::AtomicI64::new(1),
        }
    }
    fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone())
    }
    fn lease(&self) -> LeaseClient<Channel> {
        LeaseClient::new(self.channel.clone())
    }
    fn cluster(&self) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel.clone())
    }
    fn maint(&self) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channel.clone())
    }
    fn auth(&self) -> AuthClient<Channel> {
        AuthClient::new(self.channel.clone())
    }

    async fn login(&self, user: &str, password: &str) -> String {
        self.auth()
            .authenticate(AuthenticateRequest {
                name: user.into(),
                password: password.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("log in {user}: {e}"))
            .into_inner()
            .token
    }

    /// Users, roles, keys and the lease, then auth on.
    async fn set_up(&mut self) {
        let mut a = self.auth();
        for (name, password, _) in USERS {
            a.user_add(AuthUserAddRequest {
                name: name.into(),
                password: password.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        for (role, kind) in [
            ("r", PermType::Read),
            ("w", PermType::Write),
            ("rw", PermType::Readwrite),
        ] {
            a.role_add(AuthRoleAddRequest { name: role.into() })
                .await
                .unwrap();
            a.role_grant_permission(AuthRoleGrantPermissionRequest {
                name: role.into(),
                perm: Some(Permission {
                    perm_type: kind as i32,
                    key: b("/p/"),
                    range_end: b("/p0"),
                }),
            })
            .await
            .unwrap();
        }
        for (name, _, role) in USERS {
            if let Some(role) = role {
                a.user_grant_role(AuthUserGrantRoleRequest {
                    user: name.into(),
                    role: role.into(),
                })
                .await
                .unwrap();
            }
        }
        let mut kv = self.kv();
        for (k, v) in [("/p/k", "v"), ("/secret", "s")] {
            kv.put(PutRequest {
                key: b(k),
                value: b(v),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        self.lease()
            .lease_grant(LeaseGrantRequest {
                ttl: 600,
                id: LEASE,
            })
            .await
            .unwrap();
        kv.put(PutRequest {
            key: b("/p/lk"),
            value: b("v"),
            lease: LEASE,
            ..Default::default()
        })
        .await
        .unwrap();
        self.lease()
            .lease_grant(LeaseGrantRequest {
                ttl: 600,
                id: SECRET_LEASE,
            })
            .await
            .unwrap();
        kv.put(PutRequest {
            key: b("/secret/lk"),
            value: b("v"),
            lease: SECRET_LEASE,
            ..Default::default()
        })
        .await
        .unwrap();
        self.member_id = self
            .maint()
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .member_id;
        a.auth_enable(AuthEnableRequest {}).await.unwrap();
    }

    /// Puts back, as root, what row `row` needs before a principal's call.
    async fn prepare(&self, row: &str, root: &str) {
        let t = Some(root);
        let mut a = self.auth();
        let ensure_victim = async |a: &mut AuthClient<Channel>| {
            let _ = a
                .user_add(req(
                    AuthUserAddRequest {
                        name: "victim".into(),
                        password: "victimpw".into(),
                        ..Default::default()
                    },
                    t,
                ))
                .await;
        };
        let ensure_vrole = async |a: &mut AuthClient<Channel>| {
            let _ = a
                .role_add(req(
                    AuthRoleAddRequest {
                        name: "vrole".into(),
                    },
                    t,
                ))
                .await;
        };
        match row {
            "LeaseRevoke" => {
                let _ = self
                    .lease()
                    .lease_grant(req(
                        LeaseGrantRequest {
                            ttl: 600,
                            id: REVOCABLE,
                        },
                        t,
                    ))
                    .await;
                self.kv()
                    .put(req(
                        PutRequest {
                            key: b("/p/rk"),
                            value: b("v"),
                            lease: REVOCABLE,
                            ..Default::default()
                        },
                        t,
                    ))
                    .await
                    .unwrap();
            }
            "Compact" => {
                let revision = self
                    .kv()
                    .put(req(
                        PutRequest {
                            key: b("/p/c"),
                            value: b("v"),
                            ..Default::default()
                        },
                        t,
                    ))
                    .await
                    .unwrap()
                    .into_inner()
                    .header
                    .unwrap()
                    .revision;
                self.compact_to
                    .store(revision, std::sync::atomic::Ordering::Relaxed);
            }
            "DeleteRange /p/k" | "Txn write /p/k" => {
                self.kv()
                    .put(req(
                        PutRequest {
                            key: b("/p/k"),
                            value: b("v"),
                            ..Default::default()
                        },
                        t,
                    ))
                    .await
                    .unwrap();
            }
            "UserDelete" | "UserChangePassword" => ensure_victim(&mut a).await,
            "UserGrantRole" => {
                ensure_victim(&mut a).await;
                let _ = a
                    .user_revoke_role(req(
                        AuthUserRevokeRoleRequest {
                            name: "victim".into(),
                            role: "r".into(),
                        },
                        t,
                    ))
                    .await;
            }
            "UserRevokeRole" => {
                ensure_victim(&mut a).await;
                let _ = a
                    .user_grant_role(req(
                        AuthUserGrantRoleRequest {
                            user: "victim".into(),
                            role: "r".into(),
                        },
                        t,
                    ))
                    .await;
            }
            "RoleDelete" | "RoleGrantPermission" => ensure_vrole(&mut a).await,
            "RoleRevokePermission" => {
                ensure_vrole(&mut a).await;
                let _ = a
                    .role_grant_permission(req(
                        AuthRoleGrantPermissionRequest {
                            name: "vrole".into(),
                            perm: Some(Permission {
                                perm_type: PermType::Read as i32,
                                key: b("/v/"),
                                range_end: b("/v0"),
                            }),
                        },
                        t,
                    ))
                    .await;
            }
            _ => {}
        }
    }

    /// Row `row` called by `principal` with `token`.
    async fn call(&self, row: &str, principal: &str, token: Option<&str>) -> String {
        let t = token;
        let range = |key: &str, end: &str| RangeRequest {
            key: b(key),
            range_end: b(end),
            ..Default::default()
        };
        let put = |key: &str, prev_kv: bool| PutRequest {
            key: b(key),
            value: b("w"),
            prev_kv,
            ..Default::default()
        };
        let op = |r| RequestOp { request: Some(r) };
        match row {
            "Range /p/k" => of(self.kv().range(req(range("/p/k", ""), t)).await),
            "Range /p/ prefix" => of(self.kv().range(req(range("/p/", "/p0"), t)).await),
            "Range /p/ from-key" => of(self.kv().range(req(range("/p/", "\0"), t)).await),
            "Range /secret" => of(self.kv().range(req(range("/secret", ""), t)).await),
            "Put /p/k" => of(self.kv().put(req(put("/p/k", false), t)).await),
            "Put /p/k prev_kv" => of(self.kv().put(req(put("/p/k", true), t)).await),
            "Put /secret" => of(self.kv().put(req(put("/secret", false), t)).await),
            "DeleteRange /p/k" => of(self
                .kv()
                .delete_range(req(
                    DeleteRangeRequest {
                        key: b("/p/k"),
                        ..Default::default()
                    },
                    t,
                ))
                .await),
            "Txn read /p/k" => of(self
                .kv()
                .txn(req(
                    TxnRequest {
                        success: vec![op(request_op::Request::RequestRange(range("/p/k", "")))],
                        ..Default::default()
                    },
                    t,
                ))
                .await),
            "Txn write /p/k" => of(self
                .kv()
                .txn(req(
                    TxnRequest {
                        compare: vec![Compare {
                            key: b("/p/k"),
                            target: compare::CompareTarget::Version as i32,
                            result: compare::CompareResult::Greater as i32,
                            target_union: Some(compare::TargetUnion::Version(0)),
                            ..Default::default()
                        }],
                        success: vec![op(request_op::Request::RequestDeleteRange(
                            DeleteRangeRequest {
                                key: b("/p/k"),
                                ..Default::default()
                            },
                        ))],
                        ..Default::default()
                    },
                    t,
                ))
                .await),
            "Txn nested read /secret" => of(self
                .kv()
                .txn(req(
                    TxnRequest {
                        success: vec![op(request_op::Request::RequestTxn(TxnRequest {
                            success: vec![op(request_op::Request::RequestRange(range(
                                "/secret", "",
                            )))],
                            ..Default::default()
                        }))],
                        ..Default::default()
                    },
                    t,
                ))
                .await),
            "Txn put /p/k prev_kv" => of(self
                .kv()
                .txn(req(
                    TxnRequest {
                        success: vec![op(request_op::Request::RequestPut(put("/p/k", true)))],
                        ..Default::default()
                    },
                    t,
                ))
                .await),
            "Put /p/k2 on /secret's lease" => of(self
                .kv()
                .put(req(
                    PutRequest {
                        key: b("/p/k2"),
                        value: b("w"),
                        lease: SECRET_LEASE,
                        ..Default::default()
                    },
                    t,
                ))
                .await),
            "Txn put /p/k2 on /secret's lease" => of(self
                .kv()
                .txn(req(
                    TxnRequest {
                        success: vec![op(request_op::Request::RequestPut(PutRequest {
                            key: b("/p/k2"),
                            value: b("w"),
                            lease: SECRET_LEASE,
                            ..Default::default()
                        }))],
                        ..Default::default()
                    },
                    t,
                ))
                .await),
            "Compact" => of(self
                .kv()
                .compact(req(
                    CompactionRequest {
                        revision: self.compact_to.load(std::sync::atomic::Ordering::Relaxed),
                        physical: false,
                    },
                    t,
                ))
                .await),
            "Watch /p/ prefix" | "Watch /p/ from-key" => {
                let end = if row.ends_with("prefix") { "/p0" } else { "\0" };
                let create = WatchRequest {
                    request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                        key: b("/p/"),
                        range_end: b(end),
                        ..Default::default()
                    })),
                };
                let stream =
                    futures_util::stream::iter(vec![create]).chain(futures_util::stream::pending());
                match WatchClient::new(self.channel.clone())
                    .watch(req(stream, t))
                    .await
                {
                    Err(s) => outcome(&s),
                    Ok(resp) => match resp.into_inner().message().await {
                        Ok(Some(first)) => watch_outcome(&first),
                        Ok(None) => "stream ended".into(),
                        Err(s) => outcome(&s),
                    },
                }
            }
            "LeaseGrant" => of(self
                .lease()
                .lease_grant(req(LeaseGrantRequest { ttl: 60, id: 0 }, t))
                .await),
            "LeaseRevoke" => of(self
                .lease()
                .lease_revoke(req(LeaseRevokeRequest { id: REVOCABLE }, t))
                .await),
            "LeaseKeepAlive" => {
                let stream = futures_util::stream::iter(vec![LeaseKeepAliveRequest { id: LEASE }])
                    .chain(futures_util::stream::pending());
                match self.lease().lease_keep_alive(req(stream, t)).await {
                    Err(s) => outcome(&s),
                    Ok(resp) => match resp.into_inner().message().await {
                        Ok(Some(r)) if r.ttl > 0 => "ok".into(),
                        Ok(Some(r)) => format!("ttl {}", r.ttl),
                        Ok(None) => "stream ended".into(),
                        Err(s) => outcome(&s),
                    },
                }
            }
            "LeaseTimeToLive" | "LeaseTimeToLive keys" => of(self
                .lease()
                .lease_time_to_live(req(
                    LeaseTimeToLiveRequest {
                        id: LEASE,
                        keys: row.ends_with("keys"),
                    },
                    t,
                ))
                .await),
            "LeaseLeases" => of(self
                .lease()
                .lease_leases(req(LeaseLeasesRequest {}, t))
                .await),
            "MemberAdd" => of(self
                .cluster()
                .member_add(req(
                    MemberAddRequest {
                        peer_ur_ls: vec!["http://127.0.0.1:9".into()],
                        is_learner: true,
                    },
                    t,
                ))
                .await),
            "MemberRemove" => of(self
                .cluster()
                .member_remove(req(MemberRemoveRequest { id: 0xdead }, t))
                .await),
            "MemberUpdate" => of(self
                .cluster()
                .member_update(req(
                    MemberUpdateRequest {
                        id: 0xdead,
                        peer_ur_ls: vec!["http://127.0.0.1:10".into()],
                    },
                    t,
                ))
                .await),
            "MemberList" => of(self
                .cluster()
                .member_list(req(
                    MemberListRequest {
                        linearizable: false,
                    },
                    t,
                ))
                .await),
            "MemberPromote" => of(self
                .cluster()
                .member_promote(req(MemberPromoteRequest { id: 0xdead }, t))
                .await),
            "Alarm GET" | "Alarm DEACTIVATE" => {
                let action = if row.ends_with("GET") {
                    alarm_request::AlarmAction::Get
                } else {
                    alarm_request::AlarmAction::Deactivate
                };
                of(self
                    .maint()
                    .alarm(req(
                        AlarmRequest {
                            action: action as i32,
                            member_id: self.member_id,
                            alarm: 1,
                        },
                        t,
                    ))
                    .await)
            }
            "Status" => of(self.maint().status(req(StatusRequest {}, t)).await),
            "Defragment" => of(self.maint().defragment(req(DefragmentRequest {}, t)).await),
            "Hash" => of(self.maint().hash(req(HashRequest {}, t)).await),
            "HashKV" => of(self
                .maint()
                .hash_kv(req(HashKvRequest { revision: 0 }, t))
                .await),
            "Snapshot" => match self.maint().snapshot(req(SnapshotRequest {}, t)).await {
                Err(s) => outcome(&s),
                Ok(resp) => match resp.into_inner().message().await {
                    Ok(Some(_)) => "ok".into(),
                    Ok(None) => "stream ended".into(),
                    Err(s) => outcome(&s),
                },
            },
            "MoveLeader" => of(self
                .maint()
                .move_leader(req(
                    MoveLeaderRequest {
                        target_id: self.member_id,
                    },
                    t,
                ))
                .await),
            "Downgrade" => of(self
                .maint()
                .downgrade(req(
                    DowngradeRequest {
                        action: 0,
                        version: "3.4.0".into(),
                    },
                    t,
                ))
                .await),
            "AuthEnable" => of(self.auth().auth_enable(req(AuthEnableRequest {}, t)).await),
            "AuthStatus" => of(self.auth().auth_status(req(AuthStatusRequest {}, t)).await),
            "Authenticate" => of(self
                .auth()
                .authenticate(req(
                    AuthenticateRequest {
                        name: "rw".into(),
                        password: "rwpw".into(),
                    },
                    t,
                ))
                .await),
            "UserAdd" => of(self
                .auth()
                .user_add(req(
                    AuthUserAddRequest {
                        name: format!("new-{principal}"),
                        password: "pw".into(),
                        options: Some(UserAddOptions { no_password: false }),
                        ..Default::default()
                    },
                    t,
                ))
                .await),
            "UserGet rw" => of(self
                .auth()
                .user_get(req(AuthUserGetRequest { name: "rw".into() }, t))
                .await),
            "UserList" => of(self.auth().user_list(req(AuthUserListRequest {}, t)).await),
            "UserDelete" => of(self
                .auth()
                .user_delete(req(
                    AuthUserDeleteRequest {
                        name: "victim".into(),
                    },
                    t,
                ))
                .await),
            "UserChangePassword" => of(self
                .auth()
                .user_change_password(req(
                    AuthUserChangePasswordRequest {
                        name: "victim".into(),
                        password: "victimpw2".into(),
                        ..Default::default()
                    },
                    t,
                ))
                .await),
            "UserGrantRole" => of(self
                .auth()
                .user_grant_role(req(
                    AuthUserGrantRoleRequest {
                        user: "victim".into(),
                        role: "r".into(),
                    },
                    t,
                ))
                .await),
            "UserRevokeRole" => of(self
                .auth()
                .user_revoke_role(req(
                    AuthUserRevokeRoleRequest {
                        name: "victim".into(),
                        role: "r".into(),
                    },
                    t,
                ))
                .await),
            "RoleAdd" => of(self
                .auth()
                .role_add(req(
                    AuthRoleAddRequest {
                        name: format!("newrole-{principal}"),
                    },
                    t,
                ))
                .await),
            "RoleGet rw" => of(self
                .auth()
                .role_get(req(AuthRoleGetRequest { role: "rw".into() }, t))
                .await),
            "RoleList" => of(self.auth().role_list(req(AuthRoleListRequest {}, t)).await),
            "RoleDelete" => of(self
                .auth()
                .role_delete(req(
                    AuthRoleDeleteRequest {
                        role: "vrole".into(),
                    },
                    t,
                ))
                .await),
            "RoleGrantPermission" => of(self
                .auth()
                .role_grant_permission(req(
                    AuthRoleGrantPermissionRequest {
                        name: "vrole".into(),
                        perm: Some(Permission {
                            perm_type: PermType::Read as i32,
                            key: b("/v/"),
                            range_end: b("/v0"),
                        }),
                    },
                    t,
                ))
                .await),
            "RoleRevokePermission" => of(self
                .auth()
                .role_revoke_permission(req(
                    AuthRoleRevokePermissionRequest {
                        role: "vrole".into(),
                        key: b("/v/"),
                        range_end: b("/v0"),
                    },
                    t,
                ))
                .await),
            "AuthDisable" => of(self
                .auth()
                .auth_disable(req(AuthDisableRequest {}, t))
                .await),
            other => panic!("the table names a call the runner does not know: {other}"),
        }
    }
}

use futures_util::StreamExt as _;

/// Outcomes by principal.
type Cells = BTreeMap<String, String>;

/// The checked-in table: each row's call, its outcomes by principal, and etcd 3.4.23's
/// where they differ.
struct Table {
    rows: Vec<(String, Cells, Cells)>,
}

fn parse_table(text: &str) -> Table {
    let mut rows = Vec::new();
    let mut header: Option<Vec<String>> = None;
    for line in text.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<String> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().trim_matches('`').to_string())
            .collect();
        if cells
            .iter()
            .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
        {
            continue;
        }
        let Some(h) = &header else {
            assert_eq!(cells[0], "call", "the table's first column is the call");
            header = Some(cells);
            continue;
        };
        assert_eq!(cells.len(), h.len(), "row {line}");
        let mut expected = BTreeMap::new();
        for (p, cell) in h[1..=PRINCIPALS.len()].iter().zip(&cells[1..]) {
            expected.insert(p.clone(), cell.clone());
        }
        // Last column: `principal=outcome; ...` (after an optional `why:` prefix).
        let mut etcd = BTreeMap::new();
        let last = cells.last().unwrap();
        let overrides = last.split_once(':').map_or("", |(_, o)| o);
        for pair in overrides
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (p, o) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("bad override {pair}"));
            let ps: Vec<&str> = if p.trim() == "all" {
                PRINCIPALS.to_vec()
            } else {
                p.split(',').map(str::trim).collect()
            };
            for p in ps {
                etcd.insert(p.to_string(), o.trim().trim_matches('`').to_string());
            }
        }
        rows.push((cells[0].clone(), expected, etcd));
    }
    let h = header.expect("a header");
    assert_eq!(
        &h[1..=PRINCIPALS.len()],
        PRINCIPALS.map(String::from),
        "principal columns"
    );
    Table { rows }
}

/// Runs the whole matrix against `target`: every outcome by row and principal.
async fn run_matrix(target: &Target, table: &Table) -> BTreeMap<(String, String), String> {
    let mut got = BTreeMap::new();
    // The expired token: rw's, never used again; it expires during the first pass.
    let expired = target.login("rw", "rwpw").await;
    let expired_at = Instant::now();
    let (last, rows) = table.rows.split_last().expect("rows");
    assert_eq!(
        last.0, "AuthDisable",
        "AuthDisable comes last: it turns auth off"
    );
    let principals_but_expired: Vec<&str> = PRINCIPALS
        .iter()
        .copied()
        .filter(|p| *p != "expired")
        .collect();
    for (row, _, _) in rows {
        for p in &principals_but_expired {
            let o = call_as(target, row, p, None).await;
            got.insert((row.clone(), p.to_string()), o);
        }
    }
    // Past the TTL plus etcd's one-second sweep since its last use.
    let ttl = Duration::from_secs(TOKEN_TTL_SECS + 2);
    if let Some(left) = ttl.checked_sub(expired_at.elapsed()) {
        tokio::time::sleep(left).await;
    }
    for (row, _, _) in table.rows.iter() {
        let o = call_as(target, row, "expired", Some(&expired)).await;
        got.insert((row.clone(), "expired".into()), o);
        if row == "AuthDisable" {
            break;
        }
    }
    for p in &principals_but_expired {
        let o = call_as(target, &last.0, p, None).await;
        got.insert((last.0.clone(), p.to_string()), o);
    }
    got
}

async fn call_as(target: &Target, row: &str, principal: &str, token: Option<&str>) -> String {
    let root = target.login("root", "rootpw").await;
    if row != "AuthDisable" {
        target.prepare(row, &root).await;
    }
    let token = match (principal, token) {
        (_, Some(t)) => Some(t.to_string()),
        ("garbage", _) => Some("abcdefghijklmnop.1".to_string()),
        _ => match user_of(principal) {
            Some((u, pw)) => Some(target.login(u, pw).await),
            None => None,
        },
    };
    tokio::time::timeout(
        Duration::from_secs(20),
        target.call(row, principal, token.as_deref()),
    )
    .await
    .unwrap_or_else(|_| "timeout".into())
}

fn compare(
    who: &str,
    table: &Table,
    got: &BTreeMap<(String, String), String>,
    expected_of: impl Fn(&str, &str, &str) -> String,
) {
    let mut mismatches = Vec::new();
    for (row, expected, _) in &table.rows {
        for p in PRINCIPALS {
            let want = expected_of(row, p, &expected[p]);
            let have = &got[&(row.clone(), p.to_string())];
            if *have != want {
                mismatches.push(format!(
                    "{row} / {p}: table says {want:?}, {who} answered {have:?}"
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches against {who}:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

fn flags() -> Vec<String> {
    vec![
        "--bcrypt-cost=4".into(),
        format!("--auth-token-ttl={TOKEN_TTL_SECS}"),
    ]
}

// Goal: every RPC, by every principal, answers as the checked-in table says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retcd_matches_the_table() {
    let table = parse_table(TABLE);
    let dir = tempfile::tempdir().unwrap();
    let flags = flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = Retcd::start(dir.path(), &flags);
    let mut target = Target::connect(server.endpoint()).await;
    target.set_up().await;
    let got = run_matrix(&target, &table).await;
    compare("retcd", &table, &got, |_, _, want| want.to_string());
}

// Goal: etcd 3.4.23 answers as the table says too, but in the cells whose etcd answer
// the table records (advisories it lacks the fix of, features one of the two lacks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_matches_the_table_but_its_advisories() {
    let Some(etcd_bin) = retcd_testkit::etcd_bin::etcd() else {
        return;
    };
    let table = parse_table(TABLE);
    let dir = tempfile::tempdir().unwrap();
    let peer = format!("http://127.0.0.1:{}", common::free_port());
    let etcd = common::etcd::Etcd::start_with(&etcd_bin, dir.path(), "m", &peer, "http", &flags());
    let mut target = Target::connect(format!("http://127.0.0.1:{}", etcd.port)).await;
    target.set_up().await;
    let got = run_matrix(&target, &table).await;
    compare("etcd 3.4.23", &table, &got, |row, p, want| {
        let (_, _, etcd) = table.rows.iter().find(|r| r.0 == row).unwrap();
        etcd.get(p).cloned().unwrap_or_else(|| want.to_string())
    });
}

// Goal: the table parser reads overrides and refuses a malformed table.
#[test]
fn table_parses() {
    let t = parse_table(TABLE);
    assert!(t.rows.len() >= 45, "about 45 calls: {}", t.rows.len());
    assert!(
        t.rows.iter().any(|(_, _, e)| !e.is_empty()),
        "etcd differs somewhere"
    );
}
