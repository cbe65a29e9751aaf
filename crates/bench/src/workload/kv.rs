//! KV workloads: `put`, `range` and `txn-put`.

use std::sync::Arc;

use crate::conn::Conn;
use bytes::Bytes;
use retcd_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use retcd_api::etcdserverpb::kv_client::KvClient;
use retcd_api::etcdserverpb::request_op::Request;
use retcd_api::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use tonic::Status;

use super::Ctx;
use crate::cli::{Consistency, RangeArgs, TxnPutArgs};
use crate::conn::MAX_DECODING_MESSAGE_BYTES;
use crate::keys::{KeyGen, prefix_range_end};
use crate::runner::{Op, run_with_warmup};
use crate::stats::{Report, Series};

pub(crate) fn kv_client(channel: Conn) -> KvClient<Conn> {
    KvClient::new(channel).max_decoding_message_size(MAX_DECODING_MESSAGE_BYTES)
}

/// Put request i writes key i of the key generator.
pub struct PutOp {
    kv: KvClient<Conn>,
    keys: Arc<KeyGen>,
    value: Bytes,
}

impl Op for PutOp {
    async fn call(&mut self, index: u64) -> Result<u64, Status> {
        let request = PutRequest {
            key: self.keys.key(index),
            value: self.value.clone(),
            ..Default::default()
        };
        self.kv.put(request).await?;
        Ok(1)
    }
}

/// `put`: one Put per request. Measures write latency and throughput.
pub async fn put(ctx: &Ctx) -> Report {
    let ops = (0..ctx.global.clients)
        .map(|c| PutOp {
            kv: kv_client(ctx.channel(c)),
            keys: Arc::clone(&ctx.keys),
            value: ctx.value.clone(),
        })
        .collect();
    let g = &ctx.global;
    let out = run_with_warmup(ops, g.warmup, g.total, g.request_timeout).await;
    ctx.report(vec![Series::new("put", &out.recorder, out.elapsed)], vec![])
}

/// The same Range on every request.
pub struct RangeOp {
    kv: KvClient<Conn>,
    request: RangeRequest,
}

impl Op for RangeOp {
    async fn call(&mut self, _index: u64) -> Result<u64, Status> {
        let response = self.kv.range(self.request.clone()).await?.into_inner();
        Ok(response.kvs.len() as u64)
    }
}

/// The RangeRequest `range` sends.
pub fn range_request(args: &RangeArgs) -> RangeRequest {
    let (key, range_end) = if args.prefix {
        // clientv3 reads "every key" as key "\0" with range end "\0".
        let key = if args.key.is_empty() {
            Bytes::from_static(&[0])
        } else {
            Bytes::from(args.key.clone())
        };
        (key, prefix_range_end(args.key.as_bytes()))
    } else {
        (
            Bytes::from(args.key.clone()),
            args.end.clone().map(Bytes::from).unwrap_or_default(),
        )
    };
    RangeRequest {
        key,
        range_end,
        serializable: args.consistency == Consistency::Serializable,
        ..Default::default()
    }
}

/// `range`: one Range per request over a key, an interval or a prefix.
/// Measures read latency and throughput; counts the keys returned.
pub async fn range(ctx: &Ctx, args: &RangeArgs) -> Report {
    let request = range_request(args);
    let ops = (0..ctx.global.clients)
        .map(|c| RangeOp {
            kv: kv_client(ctx.channel(c)),
            request: request.clone(),
        })
        .collect();
    let g = &ctx.global;
    let out = run_with_warmup(ops, g.warmup, g.total, g.request_timeout).await;
    ctx.report(
        vec![Series::new("range", &out.recorder, out.elapsed)],
        vec![("kvs_returned", out.items)],
    )
}

/// A Txn: if the first key's mod revision is below i64::MAX (always true,
/// but the server must read the key to know), put `txn_ops` consecutive
/// keys.
pub struct TxnPutOp {
    kv: KvClient<Conn>,
    keys: Arc<KeyGen>,
    value: Bytes,
    txn_ops: usize,
}

/// The Txn request `index` of `txn-put` sends.
pub fn txn_put_request(keys: &KeyGen, value: &Bytes, txn_ops: usize, index: u64) -> TxnRequest {
    let base = keys.key_index(index);
    let success = (0..txn_ops as u64)
        .map(|j| RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: keys.key_at(base + j),
                value: value.clone(),
                ..Default::default()
            })),
        })
        .collect();
    TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Less as i32,
            target: CompareTarget::Mod as i32,
            key: keys.key_at(base),
            range_end: Bytes::new(),
            target_union: Some(TargetUnion::ModRevision(i64::MAX)),
        }],
        success,
        failure: vec![],
    }
}

impl Op for TxnPutOp {
    async fn call(&mut self, index: u64) -> Result<u64, Status> {
        let request = txn_put_request(&self.keys, &self.value, self.txn_ops, index);
        let response = self.kv.txn(request).await?.into_inner();
        Ok(u64::from(response.succeeded))
    }
}

/// `txn-put`: one compare-and-put Txn per request. Measures Txn latency and
/// throughput; counts the Txns whose compare succeeded.
pub async fn txn_put(ctx: &Ctx, args: &TxnPutArgs) -> Report {
    let ops = (0..ctx.global.clients)
        .map(|c| TxnPutOp {
            kv: kv_client(ctx.channel(c)),
            keys: Arc::clone(&ctx.keys),
            value: ctx.value.clone(),
            txn_ops: args.txn_ops,
        })
        .collect();
    let g = &ctx.global;
    let out = run_with_warmup(ops, g.warmup, g.total, g.request_timeout).await;
    ctx.report(
        vec![Series::new("txn-put", &out.recorder, out.elapsed)],
        vec![("txn_succeeded", out.items)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_requests_follow_clientv3() {
        let args = |key: &str, end: Option<&str>, prefix, consistency| RangeArgs {
            key: key.into(),
            end: end.map(Into::into),
            prefix,
            consistency,
        };
        let r = range_request(&args("foo", None, true, Consistency::Serializable));
        assert_eq!((&r.key[..], &r.range_end[..]), (&b"foo"[..], &b"fop"[..]));
        assert!(r.serializable);
        let r = range_request(&args("a", Some("c"), false, Consistency::Linearizable));
        assert_eq!((&r.key[..], &r.range_end[..]), (&b"a"[..], &b"c"[..]));
        assert!(!r.serializable);
        let r = range_request(&args("k", None, false, Consistency::Linearizable));
        assert!(r.range_end.is_empty());
        let r = range_request(&args("", None, true, Consistency::Linearizable));
        assert_eq!((&r.key[..], &r.range_end[..]), (&b"\0"[..], &b"\0"[..]));
    }

    #[test]
    fn txn_put_writes_distinct_consecutive_keys() {
        let keys = KeyGen::new(b"t/", 4, 10, true, 0).unwrap();
        let t = txn_put_request(&keys, &Bytes::from_static(b"v"), 3, 8);
        let put_keys: Vec<_> = t
            .success
            .iter()
            .map(|op| match &op.request {
                Some(Request::RequestPut(p)) => p.key.clone(),
                other => panic!("expected a put, got {other:?}"),
            })
            .collect();
        assert_eq!(put_keys, vec!["t/08", "t/09", "t/00"]);
        assert_eq!(&t.compare[0].key[..], b"t/08");
        assert_eq!(
            t.compare[0].target_union,
            Some(TargetUnion::ModRevision(i64::MAX))
        );
        assert!(t.failure.is_empty());
    }
}
