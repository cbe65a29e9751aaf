//! Lease workloads: `lease` (grant, put with the lease, revoke) and
//! `lease-keepalive` (N leases renewed over LeaseKeepAlive streams).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use crate::conn::Conn;
use bytes::Bytes;
use retcd_api::etcdserverpb::kv_client::KvClient;
use retcd_api::etcdserverpb::lease_client::LeaseClient;
use retcd_api::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
    PutRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::codec::Streaming;

use super::Ctx;
use super::kv::kv_client;
use crate::cli::{LeaseArgs, LeaseKeepaliveArgs};
use crate::error::BenchError;
use crate::keys::KeyGen;
use crate::runner::{Op, run_with_warmup};
use crate::stats::{Recorder, Report, Series};

/// Awaits `request`, recording its latency or its error in `recorder`.
async fn timed<T>(
    recorder: &mut Recorder,
    request: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    let sent = Instant::now();
    match request.await {
        Ok(response) => {
            recorder.record_ok(sent.elapsed());
            Ok(response.into_inner())
        }
        Err(status) => {
            recorder.record_error(status.code());
            Err(status)
        }
    }
}

/// One grant → put → revoke cycle per request, each step timed on its own.
pub struct LeaseCycleOp {
    lease: LeaseClient<Conn>,
    kv: KvClient<Conn>,
    keys: Arc<KeyGen>,
    value: Bytes,
    ttl_secs: i64,
    grant: Recorder,
    put: Recorder,
    revoke: Recorder,
}

impl Op for LeaseCycleOp {
    async fn call(&mut self, index: u64) -> Result<u64, Status> {
        let grant = LeaseGrantRequest {
            ttl: self.ttl_secs,
            id: 0,
        };
        let granted = timed(&mut self.grant, self.lease.lease_grant(grant)).await?;
        if !granted.error.is_empty() {
            return Err(Status::unknown(granted.error));
        }
        let put = PutRequest {
            key: self.keys.key(index),
            value: self.value.clone(),
            lease: granted.id,
            ..Default::default()
        };
        timed(&mut self.put, self.kv.put(put)).await?;
        let revoke = LeaseRevokeRequest { id: granted.id };
        timed(&mut self.revoke, self.lease.lease_revoke(revoke)).await?;
        Ok(1)
    }

    fn reset(&mut self) {
        self.grant = Recorder::new();
        self.put = Recorder::new();
        self.revoke = Recorder::new();
    }
}

/// `lease`: grant/put/revoke cycles. Measures the whole cycle (headline)
/// and each step.
pub async fn lease(ctx: &Ctx, args: &LeaseArgs) -> Report {
    let ops = (0..ctx.global.clients)
        .map(|c| LeaseCycleOp {
            lease: LeaseClient::new(ctx.channel(c)),
            kv: kv_client(ctx.channel(c)),
            keys: Arc::clone(&ctx.keys),
            value: ctx.value.clone(),
            ttl_secs: args.ttl_secs,
            grant: Recorder::new(),
            put: Recorder::new(),
            revoke: Recorder::new(),
        })
        .collect();
    let g = &ctx.global;
    let out = run_with_warmup(ops, g.warmup, g.total, g.request_timeout).await;
    let (mut grant, mut put, mut revoke) = (Recorder::new(), Recorder::new(), Recorder::new());
    for op in &out.ops {
        grant.merge(&op.grant);
        put.merge(&op.put);
        revoke.merge(&op.revoke);
    }
    ctx.report(
        vec![
            Series::new("lease-cycle", &out.recorder, out.elapsed),
            Series::new("grant", &grant, out.elapsed),
            Series::new("put", &put, out.elapsed),
            Series::new("revoke", &revoke, out.elapsed),
        ],
        vec![("cycles", out.items)],
    )
}

/// An open LeaseKeepAlive stream: requests go in through the sender.
struct KeepAliveStream {
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
}

/// One keepalive round trip per request, over this client's own stream,
/// round-robin over this client's leases.
pub struct KeepAliveOp {
    lease: LeaseClient<Conn>,
    ids: Vec<i64>,
    stream: Option<KeepAliveStream>,
}

impl KeepAliveOp {
    async fn round_trip(&mut self, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
        let request = LeaseKeepAliveRequest { id };
        let stream = match &mut self.stream {
            Some(stream) => {
                if stream.requests.send(request).await.is_err() {
                    return Err(Status::unavailable("keepalive stream closed"));
                }
                stream
            }
            None => {
                // Queue the first request before opening the stream: the
                // server may send response headers only with a response.
                let (tx, rx) = mpsc::channel(4);
                tx.send(request).await.expect("receiver is alive");
                let responses = self
                    .lease
                    .lease_keep_alive(ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                self.stream.insert(KeepAliveStream {
                    requests: tx,
                    responses,
                })
            }
        };
        // A response to a request abandoned by a timeout may still be on
        // its way; skip it.
        loop {
            match stream.responses.message().await? {
                Some(response) if response.id == id => return Ok(response),
                Some(_stale) => {}
                None => return Err(Status::unavailable("keepalive stream ended")),
            }
        }
    }
}

impl Op for KeepAliveOp {
    async fn call(&mut self, index: u64) -> Result<u64, Status> {
        let id = self.ids[index as usize % self.ids.len()];
        match self.round_trip(id).await {
            // etcd answers a keepalive for an unknown or expired lease with
            // TTL 0 (clientv3 turns it into ErrLeaseNotFound).
            Ok(response) if response.ttl <= 0 => {
                Err(Status::not_found("etcdserver: requested lease not found"))
            }
            Ok(_) => Ok(1),
            Err(status) => {
                self.stream = None;
                Err(status)
            }
        }
    }
}

/// `lease-keepalive`: grants N leases (unmeasured), then each client keeps
/// its share alive over one LeaseKeepAlive stream, one round trip per
/// request. Measures keepalive round-trip latency and throughput. The
/// leases are revoked at the end.
pub async fn keepalive(ctx: &Ctx, args: &LeaseKeepaliveArgs) -> Result<Report, BenchError> {
    let g = &ctx.global;
    let leases = args.leases.unwrap_or(g.clients);
    let mut ids = Vec::with_capacity(leases);
    for i in 0..leases {
        let mut client = LeaseClient::new(ctx.channel(i));
        let grant = LeaseGrantRequest {
            ttl: args.ttl_secs,
            id: 0,
        };
        let granted = tokio::time::timeout(g.request_timeout, client.lease_grant(grant))
            .await
            .map_err(|_| BenchError::setup_timeout("LeaseGrant"))?
            .map_err(|s| BenchError::setup("LeaseGrant", &s))?
            .into_inner();
        ids.push(granted.id);
    }
    let ops = (0..g.clients)
        .map(|c| KeepAliveOp {
            lease: LeaseClient::new(ctx.channel(c)),
            ids: ids.iter().copied().skip(c).step_by(g.clients).collect(),
            stream: None,
        })
        .collect();
    let out = run_with_warmup(ops, g.warmup, g.total, g.request_timeout).await;
    drop(out.ops);
    // Leave nothing behind; a lease that fails to go expires with its TTL.
    let mut revoked = 0;
    for (i, id) in ids.iter().enumerate() {
        let mut client = LeaseClient::new(ctx.channel(i));
        let revoke = client.lease_revoke(LeaseRevokeRequest { id: *id });
        if let Ok(Ok(_)) = tokio::time::timeout(g.request_timeout, revoke).await {
            revoked += 1;
        }
    }
    Ok(ctx.report(
        vec![Series::new("keepalive", &out.recorder, out.elapsed)],
        vec![
            ("leases", leases as u64),
            ("keepalives_ok", out.items),
            ("leases_revoked", revoked),
        ],
    ))
}
