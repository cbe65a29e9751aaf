//! `snapshot`: Maintenance.Snapshot streams drained and thrown away, one
//! whole snapshot per request.
//!
//! Run alone it measures how fast a server streams its backend; run in the
//! background of `put` it is the load of a backup taken while the cluster
//! serves writes (issue 16: put throughput while a 1 GB snapshot streams).

use retcd_api::etcdserverpb::SnapshotRequest;
use retcd_api::etcdserverpb::maintenance_client::MaintenanceClient;
use tonic::Status;

use super::Ctx;
use crate::conn::{Conn, MAX_DECODING_MESSAGE_BYTES};
use crate::runner::{Op, run_with_warmup};
use crate::stats::{Report, Series};

/// Request i reads one whole snapshot stream.
pub struct SnapshotOp {
    maintenance: MaintenanceClient<Conn>,
}

impl Op for SnapshotOp {
    /// The snapshot's size in bytes (the backend file and the SHA-256 after it).
    async fn call(&mut self, _index: u64) -> Result<u64, Status> {
        let mut stream = self
            .maintenance
            .snapshot(SnapshotRequest {})
            .await?
            .into_inner();
        let mut bytes = 0u64;
        let mut remaining = None;
        while let Some(message) = stream.message().await? {
            bytes += message.blob.len() as u64;
            remaining = Some(message.remaining_bytes);
        }
        // etcd's last message says nothing remains; a stream that ends before it was cut.
        if remaining != Some(0) {
            return Err(Status::data_loss(format!(
                "snapshot stream ended after {bytes} bytes with remaining_bytes {remaining:?}"
            )));
        }
        Ok(bytes)
    }
}

/// `snapshot`: whole snapshots per second, and bytes streamed.
pub async fn snapshot(ctx: &Ctx) -> Report {
    let ops = (0..ctx.global.clients)
        .map(|c| SnapshotOp {
            maintenance: MaintenanceClient::new(ctx.channel(c))
                .max_decoding_message_size(MAX_DECODING_MESSAGE_BYTES),
        })
        .collect();
    let g = &ctx.global;
    let out = run_with_warmup(ops, g.warmup, g.total, g.request_timeout).await;
    ctx.report(
        vec![Series::new("snapshot", &out.recorder, out.elapsed)],
        vec![("bytes", out.items)],
    )
}
