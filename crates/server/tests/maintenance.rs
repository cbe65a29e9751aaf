//! The Maintenance service's Defragment, Hash and Alarm (with the backend quota) through a
//! client nobody here wrote (the `etcd-client` crate), against the real binary. (Status,
//! HashKV and MoveLeader are covered with the KV and cluster tests; `etcdctl defrag` and
//! `etcdctl alarm` in `etcdctl.rs`.)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Retcd, status_of};
use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, CompactionOptions, DeleteOptions, GetOptions, Txn, TxnOp,
};
use retcd_api::etcdserverpb as pb;
use retcd_api::etcdserverpb::maintenance_client::MaintenanceClient;

const BIG_VALUES: usize = 40;
const BIG_VALUE_BYTES: usize = 256 * 1024;

// Goal: Defragment gives the space of deleted, compacted data back to the file system;
// reads running meanwhile all succeed; what is left, and what is written after, survives
// a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defragment_shrinks_the_file_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Retcd::start(&data, &[]);
    let mut c = s.client().await;
    c.put("keep", "me", None).await.unwrap();
    let big = vec![b'x'; BIG_VALUE_BYTES];
    for i in 0..BIG_VALUES {
        c.put(format!("big/{i:02}"), big.clone(), None)
            .await
            .unwrap();
    }
    let del = c
        .delete("big/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(del.deleted(), BIG_VALUES as i64);
    let rev = del.header().unwrap().revision();
    c.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    let before = c.status().await.unwrap().db_size();
    assert!(
        before >= (BIG_VALUES * BIG_VALUE_BYTES) as i64,
        "the values never reached the file: {before} bytes"
    );

    // Reads go on while the member defragments; none may fail.
    let done = Arc::new(AtomicBool::new(false));
    let mut reader = s.client().await;
    let reads = tokio::spawn({
        let done = done.clone();
        async move {
            let mut n = 0u32;
            while !done.load(Ordering::Acquire) && n < 100_000 {
                let r = reader
                    .get("keep", None)
                    .await
                    .expect("a read during defrag");
                assert_eq!(r.kvs()[0].value(), b"me");
                n += 1;
            }
            n
        }
    });
    let resp = c.defragment().await.unwrap();
    done.store(true, Ordering::Release);
    // etcd 3.4's Defragment response carries no header at all.
    assert!(resp.header().is_none(), "{resp:?}");
    assert!(reads.await.unwrap() > 0);

    let after = c.status().await.unwrap().db_size();
    eprintln!("db size {before} -> {after} bytes");
    assert!(
        after < before / 2,
        "defragment left {after} of {before} bytes"
    );
    c.put("after", "defrag", None).await.unwrap();

    s.terminate();
    let s = Retcd::start(&data, &[]);
    let mut c = s.client().await;
    let all = c
        .get("", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    let kvs: Vec<(&str, &str)> = all
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap(), kv.value_str().unwrap()))
        .collect();
    assert_eq!(kvs, [("after", "defrag"), ("keep", "me")]);
    assert!(c.status().await.unwrap().db_size() < before / 2);
}

// Goal: Hash covers the whole store: it holds still without writes and across a
// restart on the same URLs (the member's client URLs are stored too), and changes with a
// put and with a lease grant (which HashKV does not see).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_sees_every_write_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Retcd::start(&data, &[]);
    let mut c = s.client().await;
    wait_published(&mut c).await;
    let rev = c
        .put("a", "1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let first = c.hash().await.unwrap();
    assert_eq!(first.header().unwrap().revision(), rev);
    assert_eq!(c.hash().await.unwrap().hash(), first.hash());

    c.put("a", "2", None).await.unwrap();
    let after_put = c.hash().await.unwrap().hash();
    assert_ne!(after_put, first.hash());

    let kv_hash = c.hash_kv(0).await.unwrap().hash();
    c.lease_grant(600, None).await.unwrap();
    let after_grant = c.hash().await.unwrap().hash();
    assert_ne!(after_grant, after_put, "a lease grant did not change Hash");
    assert_eq!(c.hash_kv(0).await.unwrap().hash(), kv_hash);

    s.terminate();
    let s = Retcd::start_with(&data, s.port, &[], &[]);
    let mut c = s.client().await;
    wait_published(&mut c).await;
    assert_eq!(c.hash().await.unwrap().hash(), after_grant);
}

/// Waits until the member has published its client URLs (an entry applied soon after
/// start, which Hash sees in the `members` bucket).
async fn wait_published(c: &mut etcd_client::Client) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let members = c.member_list().await.unwrap();
        if members
            .members()
            .iter()
            .all(|m| !m.client_urls().is_empty())
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the member never published itself"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

fn assert_no_space(r: Result<impl std::fmt::Debug, etcd_client::Error>, what: &str) {
    let status = status_of(r.expect_err(what));
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::ResourceExhausted, NO_SPACE),
        "{what}"
    );
}

// Goal: etcd's quota and NOSPACE alarm. A put that would take the backend to
// --quota-backend-bytes is refused with etcd's error and raises NOSPACE for this member.
// While it is raised, puts, writing txns and lease grants are refused; reads, deletes,
// compaction and defragment work; writes stay refused after space was freed and across a
// restart, until the alarm is disarmed; /health says why meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_raises_nospace_until_the_alarm_is_disarmed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let quota = 4 * 1024 * 1024;
    let args = ["--quota-backend-bytes", "4194304"];
    let mut s = Retcd::start(&data, &args);
    let mut c = s.client().await;
    let me = c.status().await.unwrap().header().unwrap().member_id();
    assert!(
        c.alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .unwrap()
            .alarms()
            .is_empty()
    );

    let (accepted, status) = common::put_until_refused(&mut c, 200).await;
    assert!(accepted > 0);
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::ResourceExhausted, NO_SPACE)
    );
    let size = c.status().await.unwrap().db_size();
    assert!(size + 64 * 1024 + 256 >= quota, "refused at {size} bytes");
    let alarms = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    let raised: Vec<(u64, AlarmType)> = alarms
        .alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm()))
        .collect();
    assert_eq!(raised, [(me, AlarmType::Nospace)]);
    // etcd lists raised alarms in Status's errors, in gogoproto's text form.
    assert_eq!(
        c.status().await.unwrap().errors(),
        [format!("memberID:{me} alarm:NOSPACE ")]
    );
    let (code, body) = common::http_get(s.port, "/health").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("\"reason\":\"ALARM NOSPACE\""), "{body}");
    assert_eq!(
        common::http_get(s.port, "/health?exclude=NOSPACE")
            .unwrap()
            .0,
        200
    );

    // Capped: nothing that grows the store, whatever its size.
    assert_no_space(c.put("small", "x", None).await, "a small put");
    let txn = Txn::new().and_then([TxnOp::put("t", "x", None)]);
    assert_no_space(c.txn(txn).await, "a txn with a put");
    assert_no_space(c.lease_grant(60, None).await, "a lease grant");
    // Reads, deletes, compaction and defragment go on and free the space.
    let got = c.get(
        "big/",
        Some(GetOptions::new().with_prefix().with_count_only()),
    );
    assert_eq!(got.await.unwrap().count(), accepted as i64);
    let del = c
        .delete("big/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    let rev = del.header().unwrap().revision();
    c.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    c.defragment().await.unwrap();
    assert!(c.status().await.unwrap().db_size() < quota / 2);
    assert_no_space(
        c.put("small", "x", None).await,
        "a put after space was freed",
    );

    // The alarm is replicated state: it survives a restart.
    // (/health stays false while the alarm is raised, so readiness is asked without it.)
    s.terminate();
    let s = Retcd::spawn_with(&data, s.port, &args, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(
        common::http_get(s.port, "/health?exclude=NOSPACE"),
        Ok((200, _))
    ) {
        assert!(Instant::now() < deadline, "no restart:\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(common::http_get(s.port, "/health").unwrap().0, 503);
    let mut c = s.client().await;
    assert_no_space(c.put("small", "x", None).await, "a put after a restart");

    // CORRUPT can be raised by hand, as in etcd: writes then fail with "corrupt
    // cluster" (over NOSPACE's answer) until it is disarmed.
    let corrupt = c
        .alarm(AlarmAction::Activate, AlarmType::Corrupt, None)
        .await
        .unwrap();
    assert_eq!(corrupt.alarms().len(), 1);
    let refused = status_of(c.put("small", "x", None).await.unwrap_err());
    assert_eq!(
        (refused.code(), refused.message()),
        (tonic::Code::DataLoss, "etcdserver: corrupt cluster")
    );
    c.alarm(AlarmAction::Deactivate, AlarmType::Corrupt, None)
        .await
        .unwrap();
    // A type etcd does not define is kept and listed, as etcd does; it changes nothing.
    let mut raw = MaintenanceClient::connect(s.endpoint()).await.unwrap();
    let unknown = pb::AlarmRequest {
        action: pb::alarm_request::AlarmAction::Activate as i32,
        member_id: me,
        alarm: 7,
    };
    let raised = raw.alarm(unknown).await.unwrap().into_inner();
    assert_eq!(
        raised.alarms,
        [pb::AlarmMember {
            member_id: me,
            alarm: 7
        }]
    );
    let clear = pb::AlarmRequest {
        action: pb::alarm_request::AlarmAction::Deactivate as i32,
        ..unknown
    };
    raw.alarm(clear).await.unwrap();

    let mut disarm = AlarmOptions::new();
    disarm.with_member(me);
    let cleared = c
        .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(disarm))
        .await
        .unwrap();
    assert_eq!(cleared.alarms().len(), 1);
    assert!(
        c.alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .unwrap()
            .alarms()
            .is_empty()
    );
    c.put("small", "x", None).await.unwrap();
    c.lease_grant(60, None).await.unwrap();
    assert_eq!(common::http_get(s.port, "/health").unwrap().0, 200);
}
