//! The Maintenance service: Status, Alarm (see `apply/alarm.rs`, and `quota.rs` for NOSPACE),
//! Hash, HashKV, Defragment, MoveLeader and Snapshot (etcd's bbolt file, `etcd_db`); Downgrade answers
//! `Unimplemented` for now.
//!
//! Response headers are etcd 3.4's: Alarm, Defragment and MoveLeader responses carry
//! none at all (etcd's maintenance server builds them without one), the others carry
//! the full header with the store's current revision.

use std::sync::Arc;

use retcd_api::etcdserverpb::maintenance_server::Maintenance;
use retcd_api::etcdserverpb::{
    AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    InternalRaftRequest, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse,
    StatusRequest, StatusResponse, alarm_request,
};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::apply::{Alarms, ApplyResponse};
use crate::auth::{Auth, Credentials};
use crate::config::SERVER_VERSION;
use crate::errors::RequestError;
use crate::ids::MemberId;
use crate::node::{Node, NodeHandle, NodeStatus, Store};
use retcd_api::errors::EtcdError;
use std::time::Duration;

pub struct MaintenanceService {
    handle: Arc<NodeHandle>,
    status: Arc<NodeStatus>,
    store: Store,
    auth: Arc<Auth>,
}

impl MaintenanceService {
    pub fn new(node: &Node) -> Self {
        MaintenanceService {
            handle: node.handle.clone(),
            status: node.status.clone(),
            store: node.store.clone(),
            auth: node.auth.clone(),
        }
    }

    async fn status_inner(&self) -> Result<StatusResponse, RequestError> {
        let status = self.status.clone();
        let (db_size, in_use) = tokio::task::spawn_blocking(move || status.db_sizes())
            .await
            .map_err(|e| RequestError::Internal(e.to_string()))?
            .map_err(|e| RequestError::Internal(e.to_string()))?;
        let s = &self.status;
        Ok(StatusResponse {
            header: Some(s.header(None)),
            version: SERVER_VERSION.to_string(),
            db_size: db_size as i64,
            leader: s.leader(),
            raft_index: s.committed_index(),
            raft_term: s.term(),
            raft_applied_index: s.applied_index(),
            errors: status_errors(s.leader(), &s.alarms()),
            db_size_in_use: in_use as i64,
            is_learner: s.is_learner(),
            db_size_quota: s.quota_backend_bytes() as i64,
            ..Default::default()
        })
    }

    /// Hands leadership to a voter, as etcd does: only the leader may, the target must
    /// be a voting member, and the call returns once the target leads (or times out).
    async fn move_leader_inner(
        &self,
        req: MoveLeaderRequest,
    ) -> Result<MoveLeaderResponse, RequestError> {
        let status = &self.status;
        if !status.is_leader() {
            return Err(EtcdError::NotLeader.into());
        }
        let target = status.membership().get(MemberId(req.target_id)).cloned();
        if target.is_none_or(|m| m.is_learner) {
            return Err(EtcdError::BadLeaderTransferee.into());
        }
        if req.target_id != status.member_id().0 {
            let deadline = tokio::time::Instant::now() + self.handle.request_timeout();
            let mut next_ask = tokio::time::Instant::now();
            while status.leader() != req.target_id {
                if tokio::time::Instant::now() >= deadline {
                    return Err(EtcdError::TimeoutLeaderTransfer.into());
                }
                // Raft drops a transfer that does not finish within an election
                // timeout; ask again until the deadline.
                if tokio::time::Instant::now() >= next_ask {
                    self.handle.transfer_leader(req.target_id).await?;
                    next_ask = tokio::time::Instant::now() + self.handle.election_timeout();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(MoveLeaderResponse { header: None })
    }

    /// GET lists this member's view of the raised alarms (of one type number, or all for
    /// NONE); ACTIVATE and DEACTIVATE go through Raft and answer as etcd does (see
    /// `apply/alarm.rs`). Two requests that stop etcd are refused instead, as malformed:
    /// an unknown action (etcd's apply answers nothing and its handler dereferences the
    /// missing response) and ACTIVATE NONE for member 0 (an alarm etcd cannot store: the
    /// member stops at every start).
    async fn alarm_inner(&self, req: AlarmRequest) -> Result<AlarmResponse, RequestError> {
        let Ok(action) = alarm_request::AlarmAction::try_from(req.action) else {
            return Err(RequestError::InvalidArgument(format!(
                "unknown alarm action {}",
                req.action
            )));
        };
        if action == alarm_request::AlarmAction::Get {
            return Ok(AlarmResponse {
                header: None,
                alarms: self.status.alarms().list(req.alarm),
            });
        }
        if action == alarm_request::AlarmAction::Activate
            && req.alarm == AlarmType::None as i32
            && req.member_id == 0
        {
            return Err(RequestError::InvalidArgument(
                "alarm NONE of member 0 cannot be activated".into(),
            ));
        }
        let out = self
            .handle
            .propose(InternalRaftRequest {
                alarm: Some(req),
                ..Default::default()
            })
            .await?;
        let ApplyResponse::Alarm(alarms) = out else {
            return Err(RequestError::Internal(format!(
                "an alarm was answered with {out:?}"
            )));
        };
        Ok(AlarmResponse {
            header: None,
            alarms,
        })
    }

    async fn hash_inner(&self) -> Result<HashResponse, RequestError> {
        let kv = self.store.kv.clone();
        let (hash, revision) = tokio::task::spawn_blocking(move || {
            let view = kv.view()?;
            Ok::<_, retcd_mvcc::MvccError>((view.hash_all()?, view.revision()))
        })
        .await
        .map_err(|e| RequestError::Internal(e.to_string()))??;
        Ok(HashResponse {
            header: Some(self.status.header(Some(revision))),
            hash,
        })
    }

    async fn hash_kv_inner(&self, req: HashKvRequest) -> Result<HashKvResponse, RequestError> {
        let hash = self.store.hash_kv(req.revision).await?;
        Ok(HashKvResponse {
            header: Some(self.status.header(Some(hash.revision))),
            hash: hash.hash,
            compact_revision: hash.compact_revision,
            hash_revision: hash.hash_revision,
        })
    }
}

/// etcd's `StatusResponse.errors`: "no leader" when there is none, then each raised alarm
/// in gogoproto's text form: `memberID:<id> alarm:<TYPE> `, each field left out when it
/// is 0 and an unknown type as its number, trailing space included.
fn status_errors(leader: u64, alarms: &Alarms) -> Vec<String> {
    let mut errors = Vec::new();
    if leader == 0 {
        errors.push(EtcdError::NoLeader.message().to_string());
    }
    for a in alarms.list(AlarmType::None) {
        let mut text = String::new();
        if a.member_id != 0 {
            text.push_str(&format!("memberID:{} ", a.member_id));
        }
        if a.alarm != 0 {
            match AlarmType::try_from(a.alarm) {
                Ok(t) => text.push_str(&format!("alarm:{} ", t.as_str_name())),
                Err(_) => text.push_str(&format!("alarm:{} ", a.alarm)),
            }
        }
        errors.push(text);
    }
    errors
}

fn unimplemented(what: &str) -> Status {
    RequestError::Unimplemented(format!("retcd does not implement {what} yet")).into()
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    type SnapshotStream = BoxStream<SnapshotResponse>;

    /// Alarm GET needs a user; ACTIVATE and DEACTIVATE the root role (etcd's fixed
    /// releases; etcd 3.4.23 checks neither).
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let get = req.get_ref().action == alarm_request::AlarmAction::Get as i32;
        if get {
            self.auth.require_user(&Credentials::of(&req)).await?;
        } else {
            self.auth.require_admin(&Credentials::of(&req)).await?;
        }
        Ok(Response::new(self.alarm_inner(req.into_inner()).await?))
    }

    /// Any user (etcd 3.5.32 and 3.6.12 on).
    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.auth.require_user(&Credentials::of(&req)).await?;
        Ok(Response::new(self.status_inner().await?))
    }

    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.auth.require_admin(&Credentials::of(&req)).await?;
        self.handle.defragment().await?;
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.auth.require_admin(&Credentials::of(&req)).await?;
        Ok(Response::new(self.hash_inner().await?))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.auth.require_admin(&Credentials::of(&req)).await?;
        Ok(Response::new(self.hash_kv_inner(req.into_inner()).await?))
    }

    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.auth.require_admin(&Credentials::of(&req)).await?;
        // etcd's stream: the backend as a bbolt file in 32 KiB messages, then its SHA-256.
        // One read transaction (writes go on), one message in flight per slot of the
        // channel: memory stays a few messages whatever the store's size. The file is
        // made on a low-priority background thread: a backup slows down on a busy member
        // rather than taking the CPU from its writes.
        let kv = self.store.kv.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<SnapshotResponse, Status>>(4);
        crate::background::snapshots().spawn(move || {
            use retcd_backend::Backend as _;
            if tx.is_closed() {
                return; // the client left while the stream waited for a thread
            }
            let sent = tx.clone();
            let outcome = kv
                .backend()
                .begin_read()
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|rtx| {
                    crate::etcd_db::stream_etcd_db(&rtx, |blob, remaining_bytes| {
                        sent.blocking_send(Ok(SnapshotResponse {
                            header: None,
                            remaining_bytes,
                            blob: blob.into(),
                            ..Default::default()
                        }))
                        .map_err(|_| std::io::Error::other("the client stopped reading"))
                    })
                });
            match outcome {
                Ok(size) => tracing::info!(size, "sent a snapshot of the backend"),
                Err(e) => {
                    tracing::warn!(error = %e, "snapshot not sent");
                    let _ = tx.blocking_send(Err(Status::internal(format!("snapshot: {e}"))));
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.auth.require_admin(&Credentials::of(&req)).await?;
        Ok(Response::new(
            self.move_leader_inner(req.into_inner()).await?,
        ))
    }

    async fn downgrade(
        &self,
        req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        self.auth.require_admin(&Credentials::of(&req)).await?;
        Err(unimplemented("downgrade"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use retcd_api::etcdserverpb::alarm_request::AlarmAction;
    use retcd_backend::{Backend, MemBackend};

    // Goal: Status lists alarms exactly as etcd 3.4.23 printed them (gogoproto's text
    // form leaves zero fields out and prints an unknown type as its number).
    #[test]
    fn status_errors_are_gogos_text() {
        let backend = MemBackend::new();
        let mut tx = backend.begin_write().unwrap();
        let mut alarms = Alarms::default();
        for (member_id, alarm) in [(123, 99), (555, 0), (0, 2), (777, 1)] {
            let req = AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id,
                alarm,
            };
            alarms.apply(&mut tx, &req).unwrap();
        }
        let mut got = status_errors(0, &alarms);
        got.sort();
        assert_eq!(
            got,
            [
                "alarm:CORRUPT ",
                "etcdserver: no leader",
                "memberID:123 alarm:99 ",
                "memberID:555 ",
                "memberID:777 alarm:NOSPACE ",
            ]
        );
    }
}
