//! The Maintenance service: Status, Alarm (NOSPACE; see `apply/alarm.rs` and `quota.rs`),
//! Hash, HashKV, Defragment and MoveLeader; Snapshot and Downgrade answer
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
}

impl MaintenanceService {
    pub fn new(node: &Node) -> Self {
        MaintenanceService {
            handle: node.handle.clone(),
            status: node.status.clone(),
            store: node.store.clone(),
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

    /// GET lists this member's view of the raised alarms (of one type, or all for NONE);
    /// ACTIVATE and DEACTIVATE go through Raft and answer with the alarm that changed.
    async fn alarm_inner(&self, req: AlarmRequest) -> Result<AlarmResponse, RequestError> {
        let action = alarm_request::AlarmAction::try_from(req.action)
            .unwrap_or(alarm_request::AlarmAction::Get);
        if action == alarm_request::AlarmAction::Get {
            let of = AlarmType::try_from(req.alarm).unwrap_or(AlarmType::None);
            return Ok(AlarmResponse {
                header: None,
                alarms: self.status.alarms().list(of),
            });
        }
        if action == alarm_request::AlarmAction::Activate {
            match AlarmType::try_from(req.alarm) {
                Ok(AlarmType::Nospace | AlarmType::None) => {}
                // A CORRUPT alarm would have to stop reads too; retcd has no corruption
                // checker to raise one, so it refuses rather than store an alarm it
                // would ignore.
                Ok(AlarmType::Corrupt) => {
                    return Err(RequestError::Unimplemented(
                        "retcd does not implement the CORRUPT alarm yet".into(),
                    ));
                }
                Err(_) => {
                    return Err(RequestError::InvalidArgument(format!(
                        "unknown alarm type {}",
                        req.alarm
                    )));
                }
            }
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
        let kv = self.store.kv.clone();
        let hash = tokio::task::spawn_blocking(move || kv.hash_by_rev(req.revision))
            .await
            .map_err(|e| RequestError::Internal(e.to_string()))??;
        Ok(HashKvResponse {
            header: Some(self.status.header(Some(hash.revision))),
            hash: hash.hash,
            compact_revision: hash.compact_revision,
            hash_revision: hash.hash_revision,
        })
    }
}

/// etcd's `StatusResponse.errors`: "no leader" when there is none, then each raised alarm
/// in gogoproto's text form (`memberID:<id> alarm:<TYPE> `, trailing space included).
fn status_errors(leader: u64, alarms: &Alarms) -> Vec<String> {
    let mut errors = Vec::new();
    if leader == 0 {
        errors.push(EtcdError::NoLeader.message().to_string());
    }
    for a in alarms.list(AlarmType::None) {
        let name = AlarmType::try_from(a.alarm).map_or("UNKNOWN", |t| t.as_str_name());
        errors.push(format!("memberID:{} alarm:{name} ", a.member_id));
    }
    errors
}

fn unimplemented(what: &str) -> Status {
    RequestError::Unimplemented(format!("retcd does not implement {what} yet")).into()
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    type SnapshotStream = BoxStream<SnapshotResponse>;

    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        Ok(Response::new(self.alarm_inner(req.into_inner()).await?))
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(self.status_inner().await?))
    }

    async fn defragment(
        &self,
        _req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.handle.defragment().await?;
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn hash(&self, _req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Ok(Response::new(self.hash_inner().await?))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        Ok(Response::new(self.hash_kv_inner(req.into_inner()).await?))
    }

    async fn snapshot(
        &self,
        _req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(unimplemented("snapshot"))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        Ok(Response::new(
            self.move_leader_inner(req.into_inner()).await?,
        ))
    }

    async fn downgrade(
        &self,
        _req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(unimplemented("downgrade"))
    }
}
