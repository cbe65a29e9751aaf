//! etcd's request checks (`v3rpc/key.go`): the gRPC layer runs them before proposing, so
//! a malformed request never reaches the log and its caller gets a precise error; apply
//! runs them again on every committed entry, because an entry's bytes are not to be
//! trusted (a buggy or hostile proposer), and a request that slipped past them could
//! otherwise trip a rule that execution relies on (a put with `ignore_value` of a key
//! the same txn deleted).
//!
//! Apply runs only the checks that do not depend on configuration (`--max-txn-ops` may
//! differ between members; see [`check_txn`]), so every member decides alike.

use std::collections::HashSet;

use bytes::Bytes;
use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, range_request, request_op,
};

/// etcd's `checkRangeRequest` (the sort option check is etcd 3.6's).
pub fn check_range(r: &RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if range_request::SortOrder::try_from(r.sort_order).is_err()
        || range_request::SortTarget::try_from(r.sort_target).is_err()
    {
        return Err(EtcdError::InvalidSortOption);
    }
    Ok(())
}

/// etcd's `checkPutRequest`.
pub fn check_put(r: &PutRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

/// etcd's `checkDeleteRequest`.
pub fn check_delete(r: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// etcd's `checkTxnRequest`: the widest of compares, success and failure counts against
/// `max_txn_ops`, and what is left of the budget bounds each nested txn. Apply passes
/// `None`: the limit is configuration, which may differ between members.
pub fn check_txn(r: &TxnRequest, max_txn_ops: Option<usize>) -> Result<(), EtcdError> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len());
    let left = match max_txn_ops {
        Some(max) if ops > max => return Err(EtcdError::TooManyOps),
        Some(max) => Some(max - ops),
        None => None,
    };
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        check_op(op, left)?;
    }
    Ok(())
}

/// Every check of a txn, in etcd's order: its shape ([`check_txn`]), then the
/// duplicate-key rule of each branch ([`check_intervals`], after the cheap checks so that
/// a huge request cannot make it quadratic).
pub fn check_txn_request(r: &TxnRequest, max_txn_ops: Option<usize>) -> Result<(), EtcdError> {
    check_txn(r, max_txn_ops)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_op(op: &RequestOp, max_txn_ops: Option<usize>) -> Result<(), EtcdError> {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) => check_range(r),
        Some(request_op::Request::RequestPut(r)) => check_put(r),
        Some(request_op::Request::RequestDeleteRange(r)) => check_delete(r),
        Some(request_op::Request::RequestTxn(t)) => check_txn(t, max_txn_ops),
        // An empty op: etcd answers "key not found".
        None => Err(EtcdError::KeyNotFound),
    }
}

/// Keys a delete covers: one key, or `[start, end)` (`end` `None`: every key from start).
#[derive(Clone, Debug)]
enum DeleteSpan {
    Key(Bytes),
    Range(Bytes, Option<Bytes>),
}

impl DeleteSpan {
    fn of(r: &DeleteRangeRequest) -> DeleteSpan {
        match r.range_end.as_ref() {
            [] => DeleteSpan::Key(r.key.clone()),
            [0] => DeleteSpan::Range(r.key.clone(), None),
            _ => DeleteSpan::Range(r.key.clone(), Some(r.range_end.clone())),
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        match self {
            DeleteSpan::Key(k) => k.as_ref() == key,
            DeleteSpan::Range(start, end) => {
                key >= start.as_ref() && end.as_ref().is_none_or(|e| key < e.as_ref())
            }
        }
    }
}

fn deleted(dels: &[DeleteSpan], key: &[u8]) -> bool {
    dels.iter().any(|d| d.contains(key))
}

/// etcd's duplicate-key rule (`checkIntervals`): within one branch no key may be put twice
/// or both put and deleted, nested txns included. Overlapping deletes are fine, and a key
/// put in both branches of one nested txn is fine (only one branch runs).
///
/// One deliberate difference: a delete with `range_end` "\0" covers every key from its
/// start, as it does when applied. etcd's interval check treats that range as empty and
/// lets a put of a covered key through.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Bytes>, Vec<DeleteSpan>), EtcdError> {
    let mut dels: Vec<DeleteSpan> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => Some(DeleteSpan::of(d)),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Bytes> = HashSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || deleted(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || deleted(&dels, &p.key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use retcd_api::etcdserverpb::Compare;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: Bytes::from(k.to_string()),
                ..Default::default()
            })),
        }
    }

    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: Bytes::from(k.to_string()),
                    range_end: Bytes::from(end.to_string()),
                    ..Default::default()
                },
            )),
        }
    }

    fn nested(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }

    fn dup(ops: Vec<RequestOp>) -> bool {
        matches!(check_intervals(&ops), Err(EtcdError::DuplicateKey))
    }

    // Goal: etcd's duplicate-key rule, case by case.
    #[test]
    fn duplicate_key_rule() {
        assert!(dup(vec![put("a"), put("a")]));
        assert!(!dup(vec![put("a"), put("b")]));
        // A put inside a deleted range, single-key deletes, "\0" ranges.
        assert!(dup(vec![put("b"), del("a", "c")]));
        assert!(!dup(vec![put("c"), del("a", "c")]));
        assert!(dup(vec![del("a", ""), put("a")]));
        assert!(dup(vec![put("zz"), del("a", "\0")]));
        // Overlapping deletes are fine.
        assert!(!dup(vec![del("a", "c"), del("b", "d")]));
        // Nested: a put in a child against a put or delete of the parent.
        assert!(dup(vec![put("a"), nested(vec![put("a")], vec![])]));
        assert!(dup(vec![del("a", "b"), nested(vec![put("a")], vec![])]));
        assert!(dup(vec![nested(vec![del("a", "b")], vec![]), put("a")]));
        // The same key in both branches of one nested txn: only one runs.
        assert!(!dup(vec![nested(vec![put("a")], vec![put("a")])]));
        // ...but not in two different nested txns.
        assert!(dup(vec![
            nested(vec![put("a")], vec![]),
            nested(vec![], vec![put("a")])
        ]));
        // Deeper nesting propagates deletes upward.
        assert!(dup(vec![
            nested(vec![nested(vec![del("k", "l")], vec![])], vec![]),
            put("k1")
        ]));
    }

    // Goal: the txn size rule counts the widest of compares/success/failure, and nested
    // txns get what is left of the budget.
    #[test]
    fn txn_ops_limit() {
        let t = |n: usize| TxnRequest {
            compare: vec![],
            success: (0..n).map(|i| put(&format!("k{i}"))).collect(),
            failure: vec![],
        };
        assert_eq!(check_txn(&t(128), Some(128)), Ok(()));
        assert_eq!(check_txn(&t(129), Some(128)), Err(EtcdError::TooManyOps));
        let outer = TxnRequest {
            compare: vec![],
            success: vec![put("x"), nested(vec![put("y"), put("z")], vec![])],
            failure: vec![],
        };
        assert_eq!(check_txn(&outer, Some(3)), Err(EtcdError::TooManyOps));
        assert_eq!(check_txn(&outer, Some(4)), Ok(()));
        assert_eq!(
            check_txn(&t(100_000), None),
            Ok(()),
            "apply has no ops limit"
        );
        let empty_compare = TxnRequest {
            compare: vec![Compare::default()],
            ..Default::default()
        };
        assert_eq!(
            check_txn(&empty_compare, Some(128)),
            Err(EtcdError::EmptyKey)
        );
        let empty_op = TxnRequest {
            success: vec![RequestOp { request: None }],
            ..Default::default()
        };
        assert_eq!(check_txn(&empty_op, Some(128)), Err(EtcdError::KeyNotFound));
    }

    // Goal: single-request validation errors, in etcd's order.
    #[test]
    fn request_validation() {
        let mut r = RangeRequest::default();
        assert_eq!(check_range(&r), Err(EtcdError::EmptyKey));
        r.key = Bytes::from_static(b"k");
        r.sort_order = 99;
        assert_eq!(check_range(&r), Err(EtcdError::InvalidSortOption));
        r.sort_order = 0;
        r.sort_target = 99;
        assert_eq!(check_range(&r), Err(EtcdError::InvalidSortOption));
        let mut p = PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(check_put(&p), Err(EtcdError::ValueProvided));
        p.ignore_value = false;
        p.ignore_lease = true;
        p.lease = 5;
        assert_eq!(check_put(&p), Err(EtcdError::LeaseProvided));
    }
}
