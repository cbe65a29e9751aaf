//! KV requests are decided here: put, delete, txn and compaction as apply applies them,
//! and range, inside apply (a Range entry, a txn's ranges) and on the read path.
//!
//! The same range and txn code serves reads outside Raft (serializable ranges, read-only
//! txns after a ReadIndex) through the [`KvRead`] trait, implemented by MVCC's read view
//! and by its write transaction, so a read answers exactly as apply would.
//!
//! Every request is checked again here with etcd's request checks ([`super::validate`]):
//! an entry's bytes are not trusted. A txn checks everything that could fail
//! deterministically (the chosen branch's puts and ranges, nested txns included) before
//! its first write, so a failing txn leaves no partial effect, and all its changes share
//! one revision.

use bytes::Bytes;
use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp,
    TxnRequest, TxnResponse, compare, range_request, request_op, response_op,
};
use retcd_api::mvccpb;
use retcd_backend::Backend;
use retcd_lease::{LeaseId, Lessor};
use retcd_mvcc::{KeyValue, MvccError, PutResult, RangeOptions, RangeResult, ReadView, TxnWrite};

use super::validate;
use super::{ApplyResponse, ApplyResult};
use crate::errors::client_error;
use crate::metrics::Metrics;

/// Reads inside apply or outside it.
pub trait KvRead {
    fn range(&self, key: &[u8], end: &[u8], opts: RangeOptions) -> Result<RangeResult, MvccError>;
    /// The revision a read sees as current.
    fn current_revision(&self) -> i64;
    /// Whether a lease exists (only asked where writes are checked).
    fn lease_exists(&self, _id: i64) -> bool {
        false
    }
}

/// Writes, for the one revision of a txn.
pub trait KvWrite: KvRead {
    fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<PutResult, MvccError>;
    fn delete_range(&mut self, key: &[u8], end: &[u8]) -> Result<Vec<KeyValue>, MvccError>;
}

impl<B: Backend> KvRead for ReadView<'_, B> {
    fn range(&self, key: &[u8], end: &[u8], opts: RangeOptions) -> Result<RangeResult, MvccError> {
        ReadView::range(self, key, end, opts)
    }
    fn current_revision(&self) -> i64 {
        self.revision()
    }
}

impl<B: Backend> KvRead for TxnWrite<'_, '_, B> {
    fn range(&self, key: &[u8], end: &[u8], opts: RangeOptions) -> Result<RangeResult, MvccError> {
        TxnWrite::range(self, key, end, opts)
    }
    fn current_revision(&self) -> i64 {
        TxnWrite::current_revision(self)
    }
}

impl<B: Backend> KvWrite for TxnWrite<'_, '_, B> {
    fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<PutResult, MvccError> {
        TxnWrite::put(self, key, value, lease)
    }
    fn delete_range(&mut self, key: &[u8], end: &[u8]) -> Result<Vec<KeyValue>, MvccError> {
        TxnWrite::delete_range(self, key, end)
    }
}

/// A write transaction that keeps the lessor's key attachments in step: a put attaches
/// the key to its lease (and detaches it from the one it had), a delete detaches.
pub struct LeasedTxn<'l, W> {
    pub txn: W,
    pub lessor: &'l mut Lessor,
}

impl<W: KvRead> KvRead for LeasedTxn<'_, W> {
    fn range(&self, key: &[u8], end: &[u8], opts: RangeOptions) -> Result<RangeResult, MvccError> {
        self.txn.range(key, end, opts)
    }
    fn current_revision(&self) -> i64 {
        self.txn.current_revision()
    }
    fn lease_exists(&self, id: i64) -> bool {
        self.lessor.contains(LeaseId(id))
    }
}

impl<W: KvWrite> KvWrite for LeasedTxn<'_, W> {
    fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<PutResult, MvccError> {
        let r = self.txn.put(key, value, lease)?;
        if let Some(prev) = &r.prev_kv
            && prev.lease != 0
            && prev.lease != lease
        {
            self.lessor.detach(LeaseId(prev.lease), key);
        }
        if lease != 0 {
            self.lessor.attach(LeaseId(lease), key);
        }
        Ok(r)
    }
    fn delete_range(&mut self, key: &[u8], end: &[u8]) -> Result<Vec<KeyValue>, MvccError> {
        let deleted = self.txn.delete_range(key, end)?;
        for kv in deleted.iter().filter(|kv| kv.lease != 0) {
            self.lessor.detach(LeaseId(kv.lease), &kv.key);
        }
        Ok(deleted)
    }
}

/// A reader serving a txn that was checked to be read-only ([`txn_is_read_only`]): a
/// write reaching it is a bug of that check, answered with an error, never a panic.
struct ReadOnly<'a, R: KvRead>(&'a R);

impl<R: KvRead> KvRead for ReadOnly<'_, R> {
    fn range(&self, key: &[u8], end: &[u8], opts: RangeOptions) -> Result<RangeResult, MvccError> {
        self.0.range(key, end, opts)
    }
    fn current_revision(&self) -> i64 {
        self.0.current_revision()
    }
    fn lease_exists(&self, id: i64) -> bool {
        self.0.lease_exists(id)
    }
}

impl<R: KvRead> KvWrite for ReadOnly<'_, R> {
    fn put(&mut self, _: &[u8], _: &[u8], _: i64) -> Result<PutResult, MvccError> {
        Err(MvccError::ReadOnly)
    }
    fn delete_range(&mut self, _: &[u8], _: &[u8]) -> Result<Vec<KeyValue>, MvccError> {
        Err(MvccError::ReadOnly)
    }
}

/// Splits an MVCC error into a client answer (`Ok`) or a fatal storage error (`Err`).
fn deterministic(e: MvccError) -> Result<EtcdError, MvccError> {
    client_error(&e).ok_or(e)
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

pub fn to_pb(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: Bytes::from(kv.key),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: Bytes::from(kv.value),
        lease: kv.lease,
    }
}

/// A Put entry: etcd's request checks, then the state checks (`ignore_*` need the key,
/// a lease must exist), then the write, at one new revision.
pub(super) fn put<W: KvWrite>(
    txn: &mut W,
    req: &PutRequest,
    metrics: &Metrics,
) -> Result<ApplyResult, MvccError> {
    if let Err(e) = validate::check_put(req) {
        return Ok(Err(e));
    }
    if let Err(e) = check_put(txn, req)? {
        return Ok(Err(e));
    }
    Ok(Ok(ApplyResponse::Put(put_checked(txn, req, metrics)?)))
}

/// A DeleteRange entry.
pub(super) fn delete<W: KvWrite>(
    txn: &mut W,
    req: &DeleteRangeRequest,
    metrics: &Metrics,
) -> Result<ApplyResult, MvccError> {
    if let Err(e) = validate::check_delete(req) {
        return Ok(Err(e));
    }
    Ok(Ok(ApplyResponse::DeleteRange(apply_delete(
        txn, req, metrics,
    )?)))
}

/// A Txn entry: etcd's request checks (but `--max-txn-ops`, which is configuration),
/// then [`apply_txn`].
pub(super) fn txn<W: KvWrite>(
    txn: &mut W,
    req: &TxnRequest,
    metrics: &Metrics,
) -> Result<ApplyResult, MvccError> {
    if let Err(e) = validate::check_txn_request(req, None) {
        return Ok(Err(e));
    }
    Ok(apply_txn(txn, req, metrics)?.map(ApplyResponse::Txn))
}

/// A Range entry (etcd 3.4 no longer proposes them, but the log may hold one): answered
/// as the read path answers it, inside the batch.
pub(super) fn range<R: KvRead>(
    r: &R,
    req: &RangeRequest,
    metrics: &Metrics,
) -> Result<ApplyResult, MvccError> {
    if let Err(e) = validate::check_range(req) {
        return Ok(Err(e));
    }
    match execute_range(r, req, metrics) {
        Ok(resp) => Ok(Ok(ApplyResponse::Range(resp))),
        Err(e) => deterministic(e).map(Err),
    }
}

/// A put whose checks passed or are done here: `ignore_*` read the current key.
fn put_checked<W: KvWrite>(
    txn: &mut W,
    req: &PutRequest,
    metrics: &Metrics,
) -> Result<PutResponse, MvccError> {
    let (mut value, mut lease) = (req.value.clone(), req.lease);
    if req.ignore_value || req.ignore_lease {
        let prev = txn.range(&req.key, b"", RangeOptions::default())?;
        match prev.kvs.into_iter().next() {
            Some(prev) => {
                if req.ignore_value {
                    value = Bytes::from(prev.value);
                }
                if req.ignore_lease {
                    lease = prev.lease;
                }
            }
            // `check_put` saw the key and the duplicate-key rule keeps a txn from deleting
            // it first, so this is a bug; every member reaches it alike, so write what
            // was asked rather than stop every member at every replay.
            None => tracing::error!(
                "a put with ignore_value/ignore_lease found no key although its checks passed"
            ),
        }
    }
    let r = txn.put(&req.key, &value, lease)?;
    metrics.mvcc_put.inc();
    Ok(PutResponse {
        header: header(txn.current_revision()),
        prev_kv: if req.prev_kv {
            r.prev_kv.map(to_pb)
        } else {
            None
        },
    })
}

/// The deterministic checks of a put (etcd's `checkRequestPut`), against the state
/// before the request: the key must exist for `ignore_*`, then the lease must exist.
fn check_put<R: KvRead>(r: &R, req: &PutRequest) -> Result<Result<(), EtcdError>, MvccError> {
    if req.ignore_value || req.ignore_lease {
        let existing = r.range(
            &req.key,
            b"",
            RangeOptions {
                count_only: true,
                ..Default::default()
            },
        )?;
        if existing.count == 0 {
            return Ok(Err(EtcdError::KeyNotFound));
        }
    }
    if req.lease != 0 && !r.lease_exists(req.lease) {
        return Ok(Err(EtcdError::LeaseNotFound));
    }
    Ok(Ok(()))
}

fn apply_delete<W: KvWrite>(
    txn: &mut W,
    req: &DeleteRangeRequest,
    metrics: &Metrics,
) -> Result<DeleteRangeResponse, MvccError> {
    let deleted = txn.delete_range(&req.key, &req.range_end)?;
    metrics.mvcc_delete.inc();
    Ok(DeleteRangeResponse {
        header: header(txn.current_revision()),
        deleted: deleted.len() as i64,
        prev_kvs: if req.prev_kv {
            deleted.into_iter().map(to_pb).collect()
        } else {
            Vec::new()
        },
    })
}

/// etcd's Range with every option, over any reader.
///
/// Order of work follows etcd: when the result must be sorted or filtered, everything in
/// the range is read; otherwise one more than `limit` is read to learn `more`. Filters
/// drop key-values (never `count`, which is every key in the range), then the sort, then
/// the limit. `SortOrder::None` with a non-key target sorts ascending; ascending by key
/// is the store's own order and is not re-sorted.
pub fn execute_range<R: KvRead>(
    r: &R,
    req: &RangeRequest,
    metrics: &Metrics,
) -> Result<RangeResponse, MvccError> {
    use range_request::{SortOrder, SortTarget};
    metrics.mvcc_range.inc();
    let order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let limit = if order != SortOrder::None || filtered {
        0
    } else if req.limit > 0 {
        req.limit.saturating_add(1)
    } else {
        0
    };
    let rr = r.range(
        &req.key,
        &req.range_end,
        RangeOptions {
            revision: req.revision,
            limit,
            count_only: req.count_only,
        },
    )?;
    let mut kvs = rr.kvs;
    if req.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= req.max_mod_revision);
    }
    if req.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= req.min_mod_revision);
    }
    if req.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= req.max_create_revision);
    }
    if req.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= req.min_create_revision);
    }
    let order = match (order, target) {
        (SortOrder::None, t) if t != SortTarget::Key => SortOrder::Ascend,
        (SortOrder::Ascend, SortTarget::Key) => SortOrder::None,
        (o, _) => o,
    };
    if order != SortOrder::None {
        // A stable sort keeps ties in key order, so results are reproducible.
        match target {
            SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
            SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
            SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
            SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
            SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
        }
        if order == SortOrder::Descend {
            kvs.reverse();
        }
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() as i64 > req.limit {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse {
        header: header(rr.revision),
        kvs: kvs.into_iter().map(to_pb).collect(),
        more,
        count: rr.count as i64,
    })
}

/// Whether a txn writes nothing, nested txns included (etcd serves such txns without
/// Raft).
pub fn txn_is_read_only(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) | None => true,
            Some(request_op::Request::RequestTxn(nested)) => txn_is_read_only(nested),
            Some(_) => false,
        })
}

/// Whether every range of a read-only txn is serializable.
pub fn txn_is_serializable(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(r)) => r.serializable,
            Some(request_op::Request::RequestTxn(nested)) => txn_is_serializable(nested),
            _ => true,
        })
}

/// Runs a read-only txn against a read view (after a ReadIndex, or serializably).
pub fn execute_read_only_txn<R: KvRead>(
    r: &R,
    t: &TxnRequest,
    metrics: &Metrics,
) -> Result<Result<TxnResponse, EtcdError>, MvccError> {
    debug_assert!(txn_is_read_only(t));
    let mut ro = ReadOnly(r);
    let result = apply_txn(&mut ro, t, metrics)?;
    Ok(result.map(|mut resp| {
        resp.header = header(r.current_revision());
        resp
    }))
}

/// etcd's Txn: compares of the txn and of every nested txn on the chosen path are
/// evaluated first, against the state before the txn; then the chosen operations are
/// checked; then executed, all at one revision.
fn apply_txn<W: KvWrite>(
    txn: &mut W,
    t: &TxnRequest,
    metrics: &Metrics,
) -> Result<Result<TxnResponse, EtcdError>, MvccError> {
    metrics.mvcc_txn.inc();
    let mut path = Vec::new();
    txn_path(txn, t, &mut path)?;
    let mut at = 0;
    if let Err(e) = check_txn(txn, t, &path, &mut at)? {
        return Ok(Err(e));
    }
    let mut at = 0;
    let mut resp = execute_txn(txn, t, &path, &mut at, metrics)?;
    resp.header = header(txn.current_revision());
    Ok(Ok(resp))
}

/// The branch taken by `t` and by each nested txn on the way, in pre-order.
fn txn_path<R: KvRead>(r: &R, t: &TxnRequest, path: &mut Vec<bool>) -> Result<(), MvccError> {
    let mut succeeded = true;
    for c in &t.compare {
        if !compare_holds(r, c)? {
            succeeded = false;
            break;
        }
    }
    path.push(succeeded);
    let ops = if succeeded { &t.success } else { &t.failure };
    for op in ops {
        if let Some(request_op::Request::RequestTxn(nested)) = &op.request {
            txn_path(r, nested, path)?;
        }
    }
    Ok(())
}

fn branch<'t>(t: &'t TxnRequest, path: &[bool], at: &mut usize) -> (bool, &'t [RequestOp]) {
    let succeeded = path[*at];
    *at += 1;
    (succeeded, if succeeded { &t.success } else { &t.failure })
}

fn check_txn<R: KvRead>(
    r: &R,
    t: &TxnRequest,
    path: &[bool],
    at: &mut usize,
) -> Result<Result<(), EtcdError>, MvccError> {
    let (_, ops) = branch(t, path, at);
    for op in ops {
        let result = match &op.request {
            Some(request_op::Request::RequestPut(p)) => check_put(r, p)?,
            Some(request_op::Request::RequestRange(rr)) => check_range(r, rr)?,
            Some(request_op::Request::RequestTxn(nested)) => check_txn(r, nested, path, at)?,
            Some(request_op::Request::RequestDeleteRange(_)) | None => Ok(()),
        };
        if result.is_err() {
            return Ok(result);
        }
    }
    Ok(Ok(()))
}

/// A range in a txn fails the whole txn if its revision is compacted or in the future.
fn check_range<R: KvRead>(r: &R, req: &RangeRequest) -> Result<Result<(), EtcdError>, MvccError> {
    if req.revision == 0 {
        return Ok(Ok(()));
    }
    let probe = RangeOptions {
        revision: req.revision,
        count_only: true,
        ..Default::default()
    };
    match r.range(&req.key, &req.range_end, probe) {
        Ok(_) => Ok(Ok(())),
        Err(e) => deterministic(e).map(Err),
    }
}

fn execute_txn<W: KvWrite>(
    txn: &mut W,
    t: &TxnRequest,
    path: &[bool],
    at: &mut usize,
    metrics: &Metrics,
) -> Result<TxnResponse, MvccError> {
    let (succeeded, ops) = branch(t, path, at);
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(r)) => Some(
                response_op::Response::ResponseRange(execute_range(txn, r, metrics)?),
            ),
            Some(request_op::Request::RequestPut(p)) => Some(response_op::Response::ResponsePut(
                put_checked(txn, p, metrics)?,
            )),
            Some(request_op::Request::RequestDeleteRange(d)) => Some(
                response_op::Response::ResponseDeleteRange(apply_delete(txn, d, metrics)?),
            ),
            Some(request_op::Request::RequestTxn(nested)) => {
                let mut resp = execute_txn(txn, nested, path, at, metrics)?;
                // etcd leaves a nested txn's header empty.
                resp.header = Some(ResponseHeader::default());
                Some(response_op::Response::ResponseTxn(resp))
            }
            None => None,
        };
        responses.push(ResponseOp { response });
    }
    Ok(TxnResponse {
        header: None,
        succeeded,
        responses,
    })
}

/// Whether `c` holds: for a range compare, for every key in it. A compare on the value
/// of a missing key fails; other targets compare a missing key as zero (etcd).
fn compare_holds<R: KvRead>(r: &R, c: &Compare) -> Result<bool, MvccError> {
    let rr = r.range(&c.key, &c.range_end, RangeOptions::default())?;
    if rr.kvs.is_empty() {
        if c.target == compare::CompareTarget::Value as i32 {
            return Ok(false);
        }
        return Ok(compare_kv(c, &KeyValue::default()));
    }
    Ok(rr.kvs.iter().all(|kv| compare_kv(c, kv)))
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    let ordering = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&match c.target_union {
            Some(TargetUnion::CreateRevision(v)) => v,
            _ => 0,
        }),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&match c.target_union {
            Some(TargetUnion::ModRevision(v)) => v,
            _ => 0,
        }),
        Ok(CompareTarget::Version) => kv.version.cmp(&match c.target_union {
            Some(TargetUnion::Version(v)) => v,
            _ => 0,
        }),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&match c.target_union {
            Some(TargetUnion::Lease(v)) => v,
            _ => 0,
        }),
        Err(_) => std::cmp::Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ordering.is_eq(),
        Ok(CompareResult::NotEqual) => ordering.is_ne(),
        Ok(CompareResult::Greater) => ordering.is_gt(),
        Ok(CompareResult::Less) => ordering.is_lt(),
        Err(_) => true,
    }
}

/// A Compaction entry, on the batch (compaction is not a txn: it changes no revision).
pub(super) fn compaction<B: Backend>(
    batch: &mut retcd_mvcc::WriteBatch<'_, B>,
    req: &CompactionRequest,
) -> Result<ApplyResult, MvccError> {
    match batch.compact(req.revision) {
        Ok(()) => Ok(Ok(ApplyResponse::Compaction(CompactionResponse {
            header: header(batch.current_revision()),
        }))),
        Err(e) => deterministic(e).map(Err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use compare::{CompareResult, CompareTarget, TargetUnion};
    use retcd_api::etcdserverpb::InternalRaftRequest;
    use retcd_backend::MemBackend;
    use retcd_mvcc::KvStore;

    fn store() -> KvStore<MemBackend> {
        KvStore::open(MemBackend::new()).unwrap()
    }

    fn put_req(k: &str, v: &str) -> InternalRaftRequest {
        InternalRaftRequest {
            put: Some(PutRequest {
                key: Bytes::from(k.to_string()),
                value: Bytes::from(v.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn apply(kv: &KvStore<MemBackend>, req: &InternalRaftRequest) -> ApplyResult {
        let m = Metrics::default();
        let mut batch = kv.begin_batch().unwrap();
        let result = {
            let mut w = batch.txn();
            match (&req.put, &req.txn) {
                (Some(p), _) => put(&mut w, p, &m).unwrap(),
                (_, Some(t)) => super::txn(&mut w, t, &m).unwrap(),
                _ => panic!("the tests apply puts and txns only: {req:?}"),
            }
        };
        batch.commit().unwrap();
        result
    }

    fn cmp(k: &str, target: CompareTarget, result: CompareResult, v: TargetUnion) -> Compare {
        Compare {
            result: result as i32,
            target: target as i32,
            key: Bytes::from(k.to_string()),
            range_end: Bytes::new(),
            target_union: Some(v),
        }
    }

    fn op_put(k: &str, v: &str) -> RequestOp {
        RequestOp {
            request: put_req(k, v).put.map(request_op::Request::RequestPut),
        }
    }

    fn op_get(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: Bytes::from(k.to_string()),
                ..Default::default()
            })),
        }
    }

    fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare,
            success,
            failure,
        }
    }

    fn apply_txn_req(kv: &KvStore<MemBackend>, t: TxnRequest) -> TxnResponse {
        let req = InternalRaftRequest {
            txn: Some(t),
            ..Default::default()
        };
        match apply(kv, &req).unwrap() {
            ApplyResponse::Txn(t) => t,
            other => panic!("{other:?}"),
        }
    }

    // Goal: each compare target and result behaves as etcd's, including a missing key
    // (value compares fail; others compare against zero).
    #[test]
    fn compare_semantics() {
        let kv = store();
        apply(&kv, &put_req("a", "1")).unwrap(); // rev 2
        apply(&kv, &put_req("a", "2")).unwrap(); // rev 3
        let view = kv.view().unwrap();
        let holds = |c: Compare| compare_holds(&view, &c).unwrap();
        use CompareResult::*;
        use CompareTarget as T;
        assert!(holds(cmp(
            "a",
            T::Value,
            Equal,
            TargetUnion::Value("2".into())
        )));
        assert!(holds(cmp(
            "a",
            T::Value,
            Greater,
            TargetUnion::Value("1".into())
        )));
        assert!(holds(cmp(
            "a",
            T::Value,
            Less,
            TargetUnion::Value("3".into())
        )));
        assert!(holds(cmp(
            "a",
            T::Value,
            NotEqual,
            TargetUnion::Value("1".into())
        )));
        assert!(holds(cmp("a", T::Version, Equal, TargetUnion::Version(2))));
        assert!(holds(cmp(
            "a",
            T::Create,
            Equal,
            TargetUnion::CreateRevision(2)
        )));
        assert!(holds(cmp("a", T::Mod, Equal, TargetUnion::ModRevision(3))));
        assert!(holds(cmp(
            "a",
            T::Mod,
            Greater,
            TargetUnion::ModRevision(2)
        )));
        assert!(holds(cmp("a", T::Lease, Equal, TargetUnion::Lease(0))));
        // Missing key: version/create/mod/lease are zero; a value compare always fails.
        assert!(holds(cmp("zz", T::Version, Equal, TargetUnion::Version(0))));
        assert!(holds(cmp(
            "zz",
            T::Create,
            Less,
            TargetUnion::CreateRevision(1)
        )));
        assert!(!holds(cmp(
            "zz",
            T::Value,
            Equal,
            TargetUnion::Value("".into())
        )));
        assert!(!holds(cmp(
            "zz",
            T::Value,
            NotEqual,
            TargetUnion::Value("x".into())
        )));
    }

    // Goal: a range compare must hold for every key in the range.
    #[test]
    fn range_compare_needs_every_key() {
        let kv = store();
        apply(&kv, &put_req("k1", "a")).unwrap();
        apply(&kv, &put_req("k2", "b")).unwrap();
        let view = kv.view().unwrap();
        let mut c = cmp(
            "k",
            CompareTarget::Create,
            CompareResult::Greater,
            TargetUnion::CreateRevision(1),
        );
        c.range_end = Bytes::from_static(b"l");
        assert!(compare_holds(&view, &c).unwrap());
        let mut c = cmp(
            "k",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value("a".into()),
        );
        c.range_end = Bytes::from_static(b"l");
        assert!(!compare_holds(&view, &c).unwrap());
    }

    // Goal: a txn's ops, nested ones included, share one revision; nested compares see the
    // state before the txn; a failing check leaves no partial write.
    #[test]
    fn txn_one_revision_nested_and_atomic() {
        let kv = store();
        apply(&kv, &put_req("x", "0")).unwrap(); // rev 2
        let nested = txn(
            // Evaluated before the outer put of "x": still "0".
            vec![cmp(
                "x",
                CompareTarget::Value,
                CompareResult::Equal,
                TargetUnion::Value("0".into()),
            )],
            vec![op_put("y", "1"), op_get("x")],
            vec![],
        );
        let resp = apply_txn_req(
            &kv,
            txn(
                vec![],
                vec![
                    op_put("x", "1"),
                    RequestOp {
                        request: Some(request_op::Request::RequestTxn(nested)),
                    },
                ],
                vec![],
            ),
        );
        assert!(resp.succeeded);
        assert_eq!(resp.header.unwrap().revision, 3);
        let Some(response_op::Response::ResponseTxn(inner)) = &resp.responses[1].response else {
            panic!("{resp:?}")
        };
        assert!(inner.succeeded);
        let Some(response_op::Response::ResponseRange(r)) = &inner.responses[1].response else {
            panic!("{inner:?}")
        };
        // The range inside the txn sees the txn's own write.
        assert_eq!(r.kvs[0].value, Bytes::from_static(b"1"));
        assert_eq!(r.kvs[0].mod_revision, 3);
        let y = kv.range(b"y", b"", RangeOptions::default()).unwrap();
        assert_eq!(y.kvs[0].mod_revision, 3);

        // A put with ignore_value on a missing key fails the whole txn: "x" is untouched.
        let bad = PutRequest {
            key: Bytes::from_static(b"missing"),
            ignore_value: true,
            ..Default::default()
        };
        let req = InternalRaftRequest {
            txn: Some(txn(
                vec![],
                vec![
                    op_put("x", "2"),
                    RequestOp {
                        request: Some(request_op::Request::RequestPut(bad)),
                    },
                ],
                vec![],
            )),
            ..Default::default()
        };
        assert_eq!(apply(&kv, &req), Err(EtcdError::KeyNotFound));
        assert_eq!(kv.current_revision(), 3);
    }

    // Goal: etcd's range options: count ignores limit and filters; `more` after the
    // limit; NONE order with a non-key target sorts ascending.
    #[test]
    fn range_options() {
        let kv = store();
        for (k, v) in [("a", "3"), ("b", "1"), ("c", "2"), ("d", "5"), ("e", "4")] {
            apply(&kv, &put_req(k, v)).unwrap();
        }
        let view = kv.view().unwrap();
        let m = Metrics::default();
        let run = |req: RangeRequest| execute_range(&view, &req, &m).unwrap();
        let all = |limit, order: i32, target: i32| RangeRequest {
            key: Bytes::from_static(b"a"),
            range_end: Bytes::from_static(b"z"),
            limit,
            sort_order: order,
            sort_target: target,
            ..Default::default()
        };
        let keys = |r: &RangeResponse| {
            r.kvs
                .iter()
                .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
                .collect::<Vec<_>>()
                .join("")
        };
        let r = run(all(2, 0, 0));
        assert_eq!((keys(&r), r.more, r.count), ("ab".into(), true, 5));
        let r = run(all(0, 0, 4));
        assert_eq!(keys(&r), "bcaed");
        let r = run(all(2, 2, 4));
        assert_eq!((keys(&r), r.more), ("de".into(), true));
        let r = run(all(0, 2, 0));
        assert_eq!(keys(&r), "edcba");
        let mut f = all(0, 0, 0);
        f.min_mod_revision = 3;
        f.max_mod_revision = 5;
        let r = run(f);
        assert_eq!((keys(&r), r.count), ("bcd".into(), 5));
        let mut f = all(0, 0, 0);
        f.keys_only = true;
        assert!(run(f).kvs.iter().all(|kv| kv.value.is_empty()));
        let mut f = all(3, 0, 0);
        f.count_only = true;
        let r = run(f);
        assert_eq!((r.kvs.len(), r.count, r.more), (0, 5, false));
    }

    // Goal: deterministic put errors change nothing.
    #[test]
    fn put_errors_are_deterministic() {
        let kv = store();
        let mut p = put_req("k", "");
        p.put.as_mut().unwrap().ignore_value = true;
        assert_eq!(apply(&kv, &p), Err(EtcdError::KeyNotFound));
        let mut p = put_req("k", "v");
        p.put.as_mut().unwrap().lease = 7;
        assert_eq!(apply(&kv, &p), Err(EtcdError::LeaseNotFound));
        assert_eq!(kv.current_revision(), 1);
        apply(&kv, &put_req("k", "v")).unwrap();
        let mut p = put_req("k", "");
        p.put.as_mut().unwrap().ignore_value = true;
        p.put.as_mut().unwrap().prev_kv = true;
        let Ok(ApplyResponse::Put(r)) = apply(&kv, &p) else {
            panic!()
        };
        assert_eq!(r.prev_kv.unwrap().value, Bytes::from_static(b"v"));
        let got = kv.range(b"k", b"", RangeOptions::default()).unwrap();
        assert_eq!(got.kvs[0].value, b"v");
        assert_eq!(got.kvs[0].version, 2);
    }
}
