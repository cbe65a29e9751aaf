//! The Maintenance service: Status, Alarm (NOSPACE; see `alarms.rs`), Hash, HashKV,
//! Defragment and MoveLeader; Snapshot and Downgrade answer `Unimplemented` for now.

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

use crate::alarms::Alarms;
use crate::apply::ApplyResponse;
use crate::config::SERVER_VERSION;
use crate::errors::RequestError;
use crate::ids::MemberId;
use crate::raft_node::NodeHandle;
use retcd_api::errors::EtcdError;
use std::time::Duration;

pub struct MaintenanceService {
    node: Arc<NodeHandle>,
}

impl MaintenanceService {
    pub fn new(node: Arc<NodeHandle>) -> Self {
        MaintenanceService { node }
    }

    async fn status_inner(&self) -> Result<StatusResponse, RequestError> {
        let shared = self.node.shared().clone();
        let sizes = shared.clone();
        let (db_size, in_use) = tokio::task::spawn_blocking(move || sizes.db_sizes())
            .await
            .map_err(|e| RequestError::Internal(e.to_string()))?
            .map_err(|e| RequestError::Internal(e.to_string()))?;
        Ok(StatusResponse {
            header: Some(shared.header(None)),
            version: SERVER_VERSION.to_string(),
            db_size: db_size as i64,
            leader: shared.leader(),
            raft_index: shared.committed_index(),
            raft_term: shared.term(),
            raft_applied_index: shared.applied_index(),
            errors: status_errors(shared.leader(), &shared.alarms()),
            db_size_in_use: in_use as i64,
            is_learner: shared.is_learner(),
            db_size_quota: shared.quota_backend_bytes() as i64,
            ..Default::default()
        })
    }

    /// Hands leadership to a voter, as etcd does: only the leader may, the target must
    /// be a voting member, and the call returns once the target leads (or times out).
    async fn move_leader_inner(
        &self,
        req: MoveLeaderRequest,
    ) -> Result<MoveLeaderResponse, RequestError> {
        let shared = self.node.shared().clone();
        if !shared.is_leader() {
            return Err(EtcdError::NotLeader.into());
        }
        let target = shared.membership().get(MemberId(req.target_id)).cloned();
        if target.is_none_or(|m| m.is_learner) {
            return Err(EtcdError::BadLeaderTransferee.into());
        }
        if req.target_id != shared.member_id.0 {
            let deadline = tokio::time::Instant::now() + self.node.request_timeout();
            let mut next_ask = tokio::time::Instant::now();
            while shared.leader() != req.target_id {
                if tokio::time::Instant::now() >= deadline {
                    return Err(EtcdError::TimeoutLeaderTransfer.into());
                }
                // Raft drops a transfer that does not finish within an election
                // timeout; ask again until the deadline.
                if tokio::time::Instant::now() >= next_ask {
                    self.node.transfer_leader(req.target_id).await?;
                    next_ask = tokio::time::Instant::now() + self.node.election_timeout();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(MoveLeaderResponse {
            header: Some(shared.header(None)),
        })
    }

    /// GET lists this member's view of the raised alarms (of one type, or all for NONE);
    /// ACTIVATE and DEACTIVATE go through Raft and answer with the alarm that changed.
    async fn alarm_inner(&self, req: AlarmRequest) -> Result<AlarmResponse, Status> {
        let shared = self.node.shared().clone();
        let action = alarm_request::AlarmAction::try_from(req.action)
            .unwrap_or(alarm_request::AlarmAction::Get);
        if action == alarm_request::AlarmAction::Get {
            let of = AlarmType::try_from(req.alarm).unwrap_or(AlarmType::None);
            return Ok(AlarmResponse {
                header: Some(shared.header(None)),
                alarms: shared.alarms().list(of),
            });
        }
        if action == alarm_request::AlarmAction::Activate {
            match AlarmType::try_from(req.alarm) {
                Ok(AlarmType::Nospace | AlarmType::None) => {}
                // A CORRUPT alarm would have to stop reads too; retcd has no corruption
                // checker to raise one, so it refuses rather than store an alarm it
                // would ignore.
                Ok(AlarmType::Corrupt) => return Err(unimplemented("the CORRUPT alarm")),
                Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "unknown alarm type {}",
                        req.alarm
                    )));
                }
            }
        }
        let out = self
            .node
            .propose(InternalRaftRequest {
                alarm: Some(req),
                ..Default::default()
            })
            .await?;
        let ApplyResponse::Alarm(alarms) = out else {
            return Err(
                RequestError::Internal(format!("an alarm was answered with {out:?}")).into(),
            );
        };
        Ok(AlarmResponse {
            header: Some(shared.header(None)),
            alarms,
        })
    }

    async fn hash_inner(&self) -> Result<HashResponse, RequestError> {
        let shared = self.node.shared().clone();
        let kv = shared.kv.clone();
        let (hash, revision) = tokio::task::spawn_blocking(move || {
            let view = kv.view()?;
            Ok::<_, retcd_mvcc::MvccError>((view.hash_all()?, view.revision()))
        })
        .await
        .map_err(|e| RequestError::Internal(e.to_string()))??;
        Ok(HashResponse {
            header: Some(shared.header(Some(revision))),
            hash,
        })
    }

    async fn hash_kv_inner(&self, req: HashKvRequest) -> Result<HashKvResponse, RequestError> {
        let shared = self.node.shared().clone();
        let kv = shared.kv.clone();
        let hash = tokio::task::spawn_blocking(move || kv.hash_by_rev(req.revision))
            .await
            .map_err(|e| RequestError::Internal(e.to_string()))??;
        Ok(HashKvResponse {
            header: Some(shared.header(Some(hash.revision))),
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
    Status::unimplemented(format!("retcd does not implement {what} yet"))
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
        self.node.defragment().await?;
        Ok(Response::new(DefragmentResponse {
            header: Some(self.node.shared().header(None)),
        }))
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
