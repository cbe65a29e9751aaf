//! The receiving side of the peer protocol.

use std::sync::Arc;

use retcd_api::peerpb::peer_server::Peer;
use retcd_api::peerpb::{
    HashKvRequest, HashKvResponse, MembersRequest, MembersResponse, MessageBatch, ProbeRequest,
    ProbeResponse, SnapshotChunk, SnapshotDone, StreamDone,
};
use retcd_raft::MessageType;
use tokio::io::AsyncWriteExt as _;
use tonic::{Request, Response, Status, Streaming};

use super::codec::decode_message;
use super::transport::{CLUSTER_ID_HEADER, FROM_HEADER};
use crate::ids::MemberId;
use crate::metrics::Metrics;
use crate::node::{NodeHandle, NodeStatus, Store, snapshot_image_path};

pub struct PeerService {
    handle: Arc<NodeHandle>,
    status: Arc<NodeStatus>,
    store: Store,
    metrics: Arc<Metrics>,
}

impl PeerService {
    pub fn new(
        handle: Arc<NodeHandle>,
        status: Arc<NodeStatus>,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Self {
        PeerService {
            handle,
            status,
            store,
            metrics,
        }
    }

    /// Refuses calls from another cluster and from removed members; returns the sender.
    fn check<T>(&self, req: &Request<T>) -> Result<MemberId, Status> {
        let status = &self.status;
        let header = |name: &str| {
            req.metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| u64::from_str_radix(v, 16).ok())
        };
        let cluster = header(CLUSTER_ID_HEADER)
            .ok_or_else(|| Status::invalid_argument("missing retcd-cluster-id"))?;
        if cluster != status.cluster_id().0 {
            return Err(Status::failed_precondition(format!(
                "cluster ID mismatch: this member belongs to cluster {}, the sender to {cluster:x}",
                status.cluster_id()
            )));
        }
        let from = MemberId(
            header(FROM_HEADER).ok_or_else(|| Status::invalid_argument("missing retcd-from"))?,
        );
        self.refuse_removed(from)?;
        Ok(from)
    }

    /// A removed member is told so, at the start of a call and on every batch of a
    /// stream that was open when it was removed: it may never apply its own removal,
    /// and this answer is how it learns to stop.
    fn refuse_removed(&self, from: MemberId) -> Result<(), Status> {
        if self.status.member_removed(from) {
            return Err(Status::permission_denied(
                "the member has been permanently removed from the cluster",
            ));
        }
        Ok(())
    }
}

fn stopped(e: crate::errors::RequestError) -> Status {
    Status::unavailable(format!("member cannot take raft messages: {e:?}"))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn stream(
        &self,
        request: Request<Streaming<MessageBatch>>,
    ) -> Result<Response<StreamDone>, Status> {
        let from = self.check(&request)?;
        let local = self.status.member_id();
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            self.refuse_removed(from)?;
            self.metrics
                .peer
                .received(from.0, prost::Message::encoded_len(&batch) as u64);
            for m in batch.messages {
                let m = decode_message(m).map_err(|e| Status::invalid_argument(e.to_string()))?;
                if m.from != from.0 || m.to != local.0 {
                    return Err(Status::invalid_argument(format!(
                        "message from {:x} to {:x} on a stream from {from} to {local}",
                        m.from, m.to
                    )));
                }
                if m.msg_type == MessageType::Snapshot {
                    return Err(Status::invalid_argument(
                        "snapshots travel on Peer.Snapshot, not on the message stream",
                    ));
                }
                self.handle.step(m).await.map_err(stopped)?;
            }
        }
        Ok(Response::new(StreamDone {}))
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotDone>, Status> {
        let from = self.check(&request)?;
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let message = decode_message(
            first
                .message
                .ok_or_else(|| Status::invalid_argument("the first chunk carries no message"))?,
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if message.msg_type != MessageType::Snapshot || message.from != from.0 {
            return Err(Status::invalid_argument(
                "the first chunk is not a snapshot message from the sender",
            ));
        }
        let index = message
            .snapshot
            .as_ref()
            .map(|s| s.metadata.index)
            .filter(|&i| i > 0)
            .ok_or_else(|| Status::invalid_argument("snapshot message without metadata"))?;
        let snap_dir = self.status.snap_dir().clone();
        let final_path = snapshot_image_path(&snap_dir, index);
        let tmp = final_path.with_extension("db.part");
        let io = |e: std::io::Error| Status::internal(format!("saving snapshot image: {e}"));
        // Private to the owner, as everything in the data directory.
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(retcd_wal::PRIVATE_FILE_MODE)
            .open(&tmp)
            .await
            .map_err(io)?;
        let mut bytes = first.data.len() as u64;
        file.write_all(&first.data).await.map_err(io)?;
        while let Some(chunk) = stream.message().await? {
            bytes += chunk.data.len() as u64;
            file.write_all(&chunk.data).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        drop(file);
        tokio::fs::rename(&tmp, &final_path).await.map_err(io)?;
        tracing::info!(from = %from, index, bytes, "received snapshot image");
        self.handle.step(message).await.map_err(stopped)?;
        Ok(Response::new(SnapshotDone { bytes }))
    }

    async fn members(
        &self,
        request: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let status = &self.status;
        let m = status.membership();
        let _ = request;
        Ok(Response::new(MembersResponse {
            cluster_id: status.cluster_id().0,
            member_id: status.member_id().0,
            members: m.members.values().map(|x| x.to_proto()).collect(),
            removed: m.removed.iter().map(|id| id.0).collect(),
        }))
    }

    async fn probe(
        &self,
        request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        self.check(&request)?;
        Ok(Response::new(ProbeResponse {}))
    }

    /// The same hash Maintenance.HashKV gives a client. A compacted or future revision
    /// is answered with etcd's error for it (OUT_OF_RANGE and etcd's message), which the
    /// asking member's check tells apart from other failures.
    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.check(&request)?;
        let hash = self.store.hash_kv(request.into_inner().revision).await?;
        Ok(Response::new(HashKvResponse {
            member_id: self.status.member_id().0,
            revision: hash.revision,
            hash: hash.hash,
            compact_revision: hash.compact_revision,
            hash_revision: hash.hash_revision,
        }))
    }
}
