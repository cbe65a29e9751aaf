//! The KV API through a client nobody here wrote (the `etcd-client` crate), against the
//! real binary: ranges with every option, put/delete options, txns, compaction, and
//! etcd's rules for revisions, versions and create revisions.

mod common;

use common::{Retcd, status_of};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse,
};

fn keys(resp: &etcd_client::GetResponse) -> Vec<String> {
    resp.kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect()
}

async fn put(c: &mut Client, k: &str, v: &str) -> i64 {
    c.put(k, v, None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

fn server() -> (tempfile::TempDir, Retcd) {
    let dir = tempfile::tempdir().unwrap();
    let s = Retcd::start(&dir.path().join("data"), &[]);
    (dir, s)
}

// Goal: revisions, versions and create revisions follow etcd's rules, and every header
// carries the same non-zero cluster and member ids and the term.
#[tokio::test]
async fn revisions_versions_and_headers() {
    let (_dir, s) = server();
    let mut c = s.client().await;
    assert_eq!(
        put(&mut c, "a", "1").await,
        2,
        "the first write is revision 2"
    );
    assert_eq!(put(&mut c, "a", "2").await, 3);
    assert_eq!(put(&mut c, "b", "x").await, 4);
    let got = c.get("a", None).await.unwrap();
    let kv = &got.kvs()[0];
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (2, 3, 2)
    );
    assert_eq!(kv.value_str().unwrap(), "2");
    let h = got.header().unwrap();
    assert_eq!(h.revision(), 4, "a read's header has the current revision");
    assert_ne!(h.cluster_id(), 0);
    assert_ne!(h.member_id(), 0);
    assert!(h.raft_term() >= 1);
    let del = c.delete("a", None).await.unwrap();
    assert_eq!(del.deleted(), 1);
    assert_eq!(del.header().unwrap().revision(), 5);
    assert_eq!(del.header().unwrap().cluster_id(), h.cluster_id());
    assert_eq!(del.header().unwrap().member_id(), h.member_id());
    // A new generation: version restarts at 1 with a new create revision.
    assert_eq!(put(&mut c, "a", "3").await, 6);
    let kv = c.get("a", None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (6, 6, 1)
    );
    // Deleting nothing changes nothing, and the header says the current revision.
    let del = c.delete("missing", None).await.unwrap();
    assert_eq!((del.deleted(), del.header().unwrap().revision()), (0, 6));
    // Status agrees with the headers.
    let st = c.status().await.unwrap();
    assert_eq!(st.header().unwrap().member_id(), h.member_id());
    assert_eq!(st.leader(), h.member_id());
    assert_eq!(st.version(), "3.5.17");
    assert!(st.raft_index() >= 6 && st.raft_term() >= 1 && st.db_size() > 0);
}

// Goal: range end conventions, limit/more/count, reads at a revision, serializable,
// keys-only and count-only.
#[tokio::test]
async fn get_ranges_and_options() {
    let (_dir, s) = server();
    let mut c = s.client().await;
    for k in ["foo1", "foo2", "foo3", "foo4", "foo5", "bar", "zoo"] {
        put(&mut c, k, &format!("v-{k}")).await;
    }
    let before_update = put(&mut c, "foo1", "new").await - 1;

    let prefix = c
        .get("foo", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(keys(&prefix), ["foo1", "foo2", "foo3", "foo4", "foo5"]);
    let from = c
        .get("foo3", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(keys(&from), ["foo3", "foo4", "foo5", "zoo"]);
    let range = c
        .get("foo2", Some(GetOptions::new().with_range("foo4")))
        .await
        .unwrap();
    assert_eq!(keys(&range), ["foo2", "foo3"]);
    let all = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(all.count(), 7);

    let limited = c
        .get("foo", Some(GetOptions::new().with_prefix().with_limit(2)))
        .await
        .unwrap();
    assert_eq!(keys(&limited), ["foo1", "foo2"]);
    assert!(limited.more());
    assert_eq!(limited.count(), 5, "count ignores the limit");
    let exact = c
        .get("foo", Some(GetOptions::new().with_prefix().with_limit(5)))
        .await
        .unwrap();
    assert!(!exact.more());

    let old = c
        .get("foo1", Some(GetOptions::new().with_revision(before_update)))
        .await
        .unwrap();
    assert_eq!(old.kvs()[0].value_str().unwrap(), "v-foo1");
    assert_eq!(old.header().unwrap().revision(), before_update + 1);

    let ser = c
        .get("foo1", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(ser.kvs()[0].value_str().unwrap(), "new");

    let ko = c
        .get(
            "foo",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    assert_eq!(ko.kvs().len(), 5);
    assert!(ko.kvs().iter().all(|kv| kv.value().is_empty()));

    let co = c
        .get(
            "foo",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!((co.kvs().len(), co.count()), (0, 5));
}

// Goal: every sort target in both orders, etcd's default order for a non-key target, and
// the min/max mod/create revision filters (count unaffected).
#[tokio::test]
async fn get_sorting_and_filters() {
    let (_dir, s) = server();
    let mut c = s.client().await;
    // k1 created at 2, k2 at 3, k3 at 4; then k1 updated twice (5, 6), k2 once (7).
    for (k, v) in [("k1", "c"), ("k2", "a"), ("k3", "b")] {
        put(&mut c, k, v).await;
    }
    put(&mut c, "k1", "c").await;
    put(&mut c, "k1", "c").await;
    put(&mut c, "k2", "a").await;
    let sorted = |target, order| GetOptions::new().with_prefix().with_sort(target, order);
    let run = |c: &mut Client, o: GetOptions| {
        let mut c = c.clone();
        async move { keys(&c.get("k", Some(o)).await.unwrap()) }
    };
    assert_eq!(
        run(&mut c, sorted(SortTarget::Key, SortOrder::Descend)).await,
        ["k3", "k2", "k1"]
    );
    assert_eq!(
        run(&mut c, sorted(SortTarget::Version, SortOrder::Descend)).await,
        ["k1", "k2", "k3"]
    );
    assert_eq!(
        run(&mut c, sorted(SortTarget::Version, SortOrder::Ascend)).await,
        ["k3", "k2", "k1"]
    );
    assert_eq!(
        run(&mut c, sorted(SortTarget::Create, SortOrder::Descend)).await,
        ["k3", "k2", "k1"]
    );
    assert_eq!(
        run(&mut c, sorted(SortTarget::Mod, SortOrder::Ascend)).await,
        ["k3", "k1", "k2"]
    );
    assert_eq!(
        run(&mut c, sorted(SortTarget::Value, SortOrder::Ascend)).await,
        ["k2", "k3", "k1"]
    );
    // No order with a non-key target: etcd sorts ascending.
    assert_eq!(
        run(&mut c, sorted(SortTarget::Value, SortOrder::None)).await,
        ["k2", "k3", "k1"]
    );
    // Sort, then limit.
    let top = c
        .get(
            "k",
            Some(sorted(SortTarget::Mod, SortOrder::Descend).with_limit(1)),
        )
        .await
        .unwrap();
    assert_eq!(
        (keys(&top), top.more(), top.count()),
        (vec!["k2".into()], true, 3)
    );

    let filtered = c
        .get(
            "k",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_min_mod_revision(6)
                    .with_max_mod_revision(7),
            ),
        )
        .await
        .unwrap();
    assert_eq!(keys(&filtered), ["k1", "k2"]);
    assert_eq!(filtered.count(), 3, "filters do not change count");
    let created = c
        .get(
            "k",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_min_create_revision(3)
                    .with_max_create_revision(3),
            ),
        )
        .await
        .unwrap();
    assert_eq!(keys(&created), ["k2"]);
}

// Goal: prev_kv, ignore_value, ignore_lease, and a put with a lease (none exist yet).
#[tokio::test]
async fn put_options() {
    let (_dir, s) = server();
    let mut c = s.client().await;
    put(&mut c, "k", "v1").await;
    let r = c
        .put("k", "v2", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(r.prev_key().unwrap().value_str().unwrap(), "v1");
    let r = c
        .put("fresh", "x", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert!(r.prev_key().is_none());

    c.put("k", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .unwrap();
    let kv = c.get("k", None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.value_str().unwrap(), kv.version()), ("v2", 3));
    c.put("k", "v3", Some(PutOptions::new().with_ignore_lease()))
        .await
        .unwrap();
    let kv = c.get("k", None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.value_str().unwrap(), kv.lease()), ("v3", 0));

    let err = c
        .put("k", "v", Some(PutOptions::new().with_lease(12345)))
        .await
        .unwrap_err();
    let st = status_of(err);
    assert_eq!(st.code(), tonic::Code::NotFound);
    assert_eq!(st.message(), "etcdserver: requested lease not found");
}

// Goal: deletes of single keys, ranges and prefixes, with prev_kv.
#[tokio::test]
async fn delete_options() {
    let (_dir, s) = server();
    let mut c = s.client().await;
    for k in ["d1", "d2", "d3", "e1"] {
        put(&mut c, k, &format!("v{k}")).await;
    }
    let r = c
        .delete(
            "d1",
            Some(DeleteOptions::new().with_range("d3").with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(r.deleted(), 2);
    let prev: Vec<_> = r
        .prev_kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap(), kv.value_str().unwrap()))
        .collect();
    assert_eq!(prev, [("d1", "vd1"), ("d2", "vd2")]);
    // A multi-key delete is one revision.
    assert_eq!(r.header().unwrap().revision(), 6);
    let r = c
        .delete("", Some(DeleteOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!((r.deleted(), r.prev_kvs().len()), (2, 0));
    let left = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(left.count(), 0);
}

// Goal: compares on value, version, create, mod and lease select the branch; every op kind
// runs inside a txn at one revision; range compares and nested txns work.
#[tokio::test]
async fn txn_compares_and_ops() {
    let (_dir, s) = server();
    let mut c = s.client().await;
    put(&mut c, "t", "1").await; // rev 2
    put(&mut c, "t", "2").await; // rev 3
    put(&mut c, "gone", "x").await; // rev 4

    let compares = [
        Compare::value("t", CompareOp::Equal, "2"),
        Compare::version("t", CompareOp::Equal, 2),
        Compare::create_revision("t", CompareOp::Equal, 2),
        Compare::mod_revision("t", CompareOp::Greater, 2),
        Compare::lease("t", CompareOp::Equal, 0),
        Compare::value("t", CompareOp::NotEqual, "9"),
        Compare::version("t", CompareOp::Less, 3),
    ];
    for cmp in compares {
        let txn = Txn::new()
            .when([cmp.clone()])
            .and_then([TxnOp::get("t", None)])
            .or_else([TxnOp::put("fail", "1", None)]);
        let r = c.txn(txn).await.unwrap();
        assert!(r.succeeded(), "{cmp:?} should hold");
    }
    let r = c
        .txn(
            Txn::new()
                .when([Compare::value("t", CompareOp::Equal, "nope")])
                .and_then([TxnOp::put("never", "1", None)])
                .or_else([
                    TxnOp::put("u", "1", Some(PutOptions::new().with_prev_key())),
                    TxnOp::delete("gone", Some(DeleteOptions::new().with_prev_key())),
                    TxnOp::get("u", None),
                    TxnOp::txn(
                        Txn::new()
                            .when([Compare::version("t", CompareOp::Equal, 2)])
                            .and_then([TxnOp::put("nested", "1", None)]),
                    ),
                ]),
        )
        .await
        .unwrap();
    assert!(!r.succeeded());
    let rev = r.header().unwrap().revision();
    assert_eq!(rev, 5, "all of a txn's changes share one revision");
    let ops = r.op_responses();
    assert_eq!(ops.len(), 4);
    match &ops[1] {
        TxnOpResponse::Delete(d) => {
            assert_eq!(d.deleted(), 1);
            assert_eq!(d.prev_kvs()[0].value_str().unwrap(), "x");
        }
        other => panic!("{other:?}"),
    }
    match &ops[2] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].mod_revision(), rev),
        other => panic!("{other:?}"),
    }
    match &ops[3] {
        TxnOpResponse::Txn(t) => assert!(t.succeeded()),
        other => panic!("{other:?}"),
    }
    let nested = c.get("nested", None).await.unwrap();
    assert_eq!(nested.kvs()[0].mod_revision(), rev);
    assert_eq!(c.get("never", None).await.unwrap().count(), 0);

    // Range compare: holds only if every key in the range satisfies it.
    put(&mut c, "r1", "a").await;
    put(&mut c, "r2", "a").await;
    let all_a = Compare::value("r", CompareOp::Equal, "a").with_prefix();
    assert!(
        c.txn(Txn::new().when([all_a.clone()]))
            .await
            .unwrap()
            .succeeded()
    );
    put(&mut c, "r3", "b").await;
    assert!(!c.txn(Txn::new().when([all_a])).await.unwrap().succeeded());

    // A read-only txn is served without a revision bump.
    let before = c.get("t", None).await.unwrap().header().unwrap().revision();
    let r = c
        .txn(Txn::new().and_then([TxnOp::get("t", None)]))
        .await
        .unwrap();
    assert_eq!(r.header().unwrap().revision(), before);
}

// Goal: compaction makes older revisions unreadable with etcd's error; the compaction
// revision itself stays readable; physical compaction answers after it is durable.
#[tokio::test]
async fn compaction() {
    let (_dir, s) = server();
    let mut c = s.client().await;
    for i in 0..5 {
        put(&mut c, "c", &i.to_string()).await; // revs 2..=6
    }
    c.compact(4, None).await.unwrap();
    let err = c
        .get("c", Some(GetOptions::new().with_revision(3)))
        .await
        .unwrap_err();
    let st = status_of(err);
    assert_eq!(st.code(), tonic::Code::OutOfRange);
    assert_eq!(
        st.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let at = c
        .get("c", Some(GetOptions::new().with_revision(4)))
        .await
        .unwrap();
    assert_eq!(at.kvs()[0].value_str().unwrap(), "2");
    c.compact(
        6,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .unwrap();
    let latest = c.get("c", None).await.unwrap();
    assert_eq!(latest.kvs()[0].value_str().unwrap(), "4");
    let hash = c.hash_kv(0).await.unwrap();
    assert_eq!(hash.compact_version(), 6);
}
