//! The workloads against a small in-process etcd stand-in (KV, Watch and
//! Lease over real gRPC on 127.0.0.1:0), so every workload is exercised on
//! any machine, and errors can be injected to check that they are counted
//! by code.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use retcd_api::etcdserverpb::kv_server::{Kv, KvServer};
use retcd_api::etcdserverpb::lease_server::{Lease, LeaseServer};
use retcd_api::etcdserverpb::request_op::Request as TxnOp;
use retcd_api::etcdserverpb::watch_request::RequestUnion;
use retcd_api::etcdserverpb::watch_server::{Watch, WatchServer};
use retcd_api::etcdserverpb::*;
use retcd_api::mvccpb::{Event, KeyValue};
use retcd_testkit::pki::{Ca, Leaf, Pair};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Default)]
struct State {
    kvs: BTreeMap<Bytes, KeyValue>,
    revision: i64,
    puts: u64,
    next_lease: i64,
    leases: HashSet<i64>,
}

/// A single-node, in-memory KV with etcd's wire behaviour where the bench
/// can see it. Every `fail_every`-th put fails with Unavailable.
#[derive(Clone)]
struct Fake {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Event>,
    fail_every: u64,
    /// Only the first this many revisions reach watchers (a server that goes quiet).
    publish_first: i64,
}

impl Fake {
    fn put(&self, put: &PutRequest) -> Result<(), Status> {
        let mut state = self.state.lock().expect("not poisoned");
        state.puts += 1;
        if self.fail_every > 0 && state.puts.is_multiple_of(self.fail_every) {
            return Err(Status::unavailable("injected"));
        }
        if put.lease != 0 && !state.leases.contains(&put.lease) {
            return Err(Status::not_found("etcdserver: requested lease not found"));
        }
        state.revision += 1;
        let kv = KeyValue {
            key: put.key.clone(),
            value: put.value.clone(),
            mod_revision: state.revision,
            lease: put.lease,
            ..Default::default()
        };
        state.kvs.insert(put.key.clone(), kv.clone());
        if state.revision > self.publish_first {
            return Ok(());
        }
        // No subscriber is fine: nobody watches.
        let _ = self.events.send(Event {
            r#type: 0,
            kv: Some(kv),
            prev_kv: None,
        });
        Ok(())
    }
}

fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    match end {
        b"" => key == start,
        b"\0" => key >= start,
        end => key >= start && key < end,
    }
}

#[tonic::async_trait]
impl Kv for Fake {
    async fn range(&self, r: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let r = r.into_inner();
        let state = self.state.lock().expect("not poisoned");
        let kvs: Vec<KeyValue> = state
            .kvs
            .values()
            .filter(|kv| in_range(&kv.key, &r.key, &r.range_end))
            .cloned()
            .collect();
        Ok(Response::new(RangeResponse {
            count: kvs.len() as i64,
            kvs,
            ..Default::default()
        }))
    }

    async fn put(&self, r: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.put(r.get_ref())?;
        Ok(Response::new(PutResponse::default()))
    }

    async fn delete_range(
        &self,
        _: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn txn(&self, r: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let r = r.into_inner();
        let succeeded = {
            let state = self.state.lock().expect("not poisoned");
            r.compare.iter().all(|c| {
                let mod_revision = state.kvs.get(&c.key).map_or(0, |kv| kv.mod_revision);
                matches!(c.target_union, Some(compare::TargetUnion::ModRevision(v))
                    if c.result == compare::CompareResult::Less as i32 && mod_revision < v)
            })
        };
        let mut keys = HashSet::new();
        for op in if succeeded { &r.success } else { &r.failure } {
            let Some(TxnOp::RequestPut(put)) = &op.request else {
                return Err(Status::unimplemented("fake: puts only"));
            };
            if !keys.insert(put.key.clone()) {
                return Err(Status::invalid_argument(
                    "etcdserver: duplicate key given in txn request",
                ));
            }
            self.put(put)?;
        }
        Ok(Response::new(TxnResponse {
            succeeded,
            ..Default::default()
        }))
    }

    async fn compact(
        &self,
        _: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

#[tonic::async_trait]
impl Watch for Fake {
    type WatchStream = ResponseStream<WatchResponse>;

    async fn watch(
        &self,
        r: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut inbound = r.into_inner();
        // Subscribed before any watcher is created, so none misses an event.
        let mut events = self.events.subscribe();
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            let mut watchers: Vec<(i64, Bytes, Bytes)> = Vec::new();
            loop {
                tokio::select! {
                    request = inbound.message() => {
                        let Ok(Some(request)) = request else { return };
                        let Some(RequestUnion::CreateRequest(create)) = request.request_union
                        else {
                            continue;
                        };
                        let id = watchers.len() as i64;
                        watchers.push((id, create.key, create.range_end));
                        let created = WatchResponse { watch_id: id, created: true, ..Default::default() };
                        if tx.send(Ok(created)).await.is_err() {
                            return;
                        }
                    }
                    event = events.recv() => {
                        let Ok(event) = event else { return };
                        let key = event.kv.as_ref().map(|kv| kv.key.clone()).unwrap_or_default();
                        for (id, start, end) in &watchers {
                            if !in_range(&key, start, end) {
                                continue;
                            }
                            let response = WatchResponse {
                                watch_id: *id,
                                events: vec![event.clone()],
                                ..Default::default()
                            };
                            if tx.send(Ok(response)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl Lease for Fake {
    async fn lease_grant(
        &self,
        r: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let mut state = self.state.lock().expect("not poisoned");
        state.next_lease += 1;
        let id = state.next_lease;
        state.leases.insert(id);
        Ok(Response::new(LeaseGrantResponse {
            id,
            ttl: r.get_ref().ttl,
            ..Default::default()
        }))
    }

    async fn lease_revoke(
        &self,
        r: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let mut state = self.state.lock().expect("not poisoned");
        let id = r.get_ref().id;
        if !state.leases.remove(&id) {
            return Err(Status::not_found("etcdserver: requested lease not found"));
        }
        state.kvs.retain(|_, kv| kv.lease != id);
        Ok(Response::new(LeaseRevokeResponse::default()))
    }

    type LeaseKeepAliveStream = ResponseStream<LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        r: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = r.into_inner();
        let state = Arc::clone(&self.state);
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok(Some(request)) = inbound.message().await {
                let alive = state
                    .lock()
                    .expect("not poisoned")
                    .leases
                    .contains(&request.id);
                let response = LeaseKeepAliveResponse {
                    id: request.id,
                    ttl: if alive { 60 } else { 0 },
                    ..Default::default()
                };
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        _: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn lease_leases(
        &self,
        _: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// A running fake; the server stops when this is dropped.
struct FakeServer {
    endpoint: String,
    fake: Fake,
    _stop: oneshot::Sender<()>,
}

async fn start_fake(fail_every: u64) -> FakeServer {
    start_fake_publishing(fail_every, i64::MAX).await
}

async fn start_fake_publishing(fail_every: u64, publish_first: i64) -> FakeServer {
    start_fake_with(fail_every, publish_first, None).await
}

async fn start_fake_with(
    fail_every: u64,
    publish_first: i64,
    tls: Option<ServerTlsConfig>,
) -> FakeServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = listener.local_addr().expect("local addr").to_string();
    let fake = Fake {
        state: Arc::default(),
        events: broadcast::channel(1 << 16).0,
        fail_every,
        publish_first,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).expect("server TLS config");
    }
    let server = builder
        .add_service(KvServer::new(fake.clone()))
        .add_service(WatchServer::new(fake.clone()))
        .add_service(LeaseServer::new(fake.clone()))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
            let _ = stopped.await;
        });
    tokio::spawn(server);
    FakeServer {
        endpoint,
        fake,
        _stop: stop,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_against_the_fake() {
    let server = start_fake(0).await;
    common::check_all_workloads(&server.endpoint, "fake/").await;
    let state = server.fake.state.lock().expect("not poisoned");
    assert!(
        state.leases.is_empty(),
        "lease-keepalive revokes its leases"
    );
    assert!(
        !state.kvs.keys().any(|k| k.starts_with(b"fake/l/")),
        "revoked leases took their keys"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_by_grpc_code() {
    let server = start_fake(10).await;
    let put = common::bench(&server.endpoint, "put --total 100 --clients 3").await;
    let summary = put.main();
    assert_eq!(summary.ok, 90);
    assert_eq!(
        summary.errors,
        BTreeMap::from([("Unavailable".to_owned(), 10)])
    );

    // Failed puts are not waited for: 30 puts, 3 fail, 2 watchers.
    let server = start_fake(10).await;
    let watch = common::bench(
        &server.endpoint,
        "watch --total 30 --watchers 2 --streams 1 --request-timeout 30s",
    )
    .await;
    assert_eq!(watch.counter("puts_ok"), Some(27));
    assert_eq!(watch.counter("events_received"), Some(54));
    assert!(watch.series[0].summary.errors.is_empty());
    assert_eq!(watch.series[1].summary.errors["Unavailable"], 3);
}

// Goal: a watch stream that goes quiet before every event arrived ends after the idle
// timeout with DeadlineExceeded, keeping what it received (the idle timer is armed once
// per stream and pushed back lazily, so this is its only test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_watch_stream_times_out() {
    let server = start_fake_publishing(0, 4).await;
    let run = common::bench(
        &server.endpoint,
        "watch --total 10 --watchers 2 --streams 1 --request-timeout 1s",
    );
    let watch = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the idle timeout ends the run");
    assert_eq!(watch.counter("puts_ok"), Some(10));
    assert_eq!(watch.counter("events_received"), Some(8));
    assert_eq!(
        watch.series[0].summary.errors,
        BTreeMap::from([("DeadlineExceeded".to_owned(), 1)])
    );
    assert_eq!(watch.series[0].summary.ok, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_one_json_object() {
    let server = start_fake(0).await;
    let v = common::bench_binary_json(
        &server.endpoint,
        &["put", "--total", "50", "--clients", "2", "--val-size", "64"],
    )
    .await;
    assert_eq!(v["command"], "put");
    assert_eq!(v["ok"], 50);
    assert_eq!(v["errors_total"], 0);
    assert_eq!(v["total"], 50);
    assert!(v["requests_per_sec"].as_f64().unwrap() > 0.0);
    for field in ["min", "avg", "p50", "p90", "p99", "p99.9", "max"] {
        assert!(
            v["latency_ms"][field].is_number(),
            "latency_ms.{field}: {v}"
        );
    }
    let state = server.fake.state.lock().expect("not poisoned");
    let value_sizes: HashSet<usize> = state.kvs.values().map(|kv| kv.value.len()).collect();
    assert_eq!(value_sizes, HashSet::from([64]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_failures_are_errors_not_panics() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cli = <retcd_bench::Cli as clap::Parser>::try_parse_from([
        "retcd-bench",
        "--endpoints",
        &format!("127.0.0.1:{port}"),
        "--dial-timeout",
        "2s",
        "put",
    ])
    .unwrap();
    let err = retcd_bench::run(&cli).await.unwrap_err();
    assert!(
        matches!(err, retcd_bench::BenchError::Connect { .. }),
        "{err}"
    );
}

/// The fake behind TLS with the server certificate `server`, requiring client
/// certificates signed by `ca` (etcd's --client-cert-auth).
async fn start_fake_tls(ca: &Ca, server: &Pair) -> FakeServer {
    let read = |path: &std::path::Path| std::fs::read(path).expect("read a PEM file");
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read(&server.cert), read(&server.key)))
        .client_ca_root(Certificate::from_pem(read(&ca.cert)));
    start_fake_with(0, i64::MAX, Some(tls)).await
}

// Goal: --cacert/--cert/--key connect over TLS with a client certificate, to a bare
// host:port (made https) and to an https:// URL; a server certificate from another CA
// is a connection error, not a run of failed requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut ca = Ca::new(dir.path(), "ca");
    let (server_pair, _) = ca.issue("server", &Leaf::default());
    let client = Leaf {
        cn: "bench",
        sans: &[],
        server: false,
        ..Leaf::default()
    };
    let (client_pair, _) = ca.issue("client", &client);
    let server = start_fake_tls(&ca, &server_pair).await;
    let tls = format!(
        "--cacert {} --cert {} --key {}",
        ca.cert(),
        client_pair.cert(),
        client_pair.key()
    );

    let put = common::bench(
        &server.endpoint,
        &format!("{tls} put --total 100 --clients 4 --conns 2"),
    )
    .await;
    common::assert_clean(&put, 100);
    let range = common::bench(
        &format!("https://{}", server.endpoint),
        &format!("{tls} range k --consistency l --total 20"),
    )
    .await;
    common::assert_clean(&range, 20);
    assert_eq!(server.fake.state.lock().expect("not poisoned").puts, 100);

    // The binary, too.
    let v = common::bench_binary_json(
        &server.endpoint,
        &[
            "--cacert",
            ca.cert(),
            "--cert",
            client_pair.cert(),
            "--key",
            client_pair.key(),
            "put",
            "--total",
            "10",
        ],
    )
    .await;
    assert_eq!(v["ok"], 10);

    let other = Ca::new(&dir.path().join("other"), "other");
    let cli = <retcd_bench::Cli as clap::Parser>::try_parse_from([
        "retcd-bench",
        "--endpoints",
        &server.endpoint,
        "--cacert",
        other.cert(),
        "--cert",
        client_pair.cert(),
        "--key",
        client_pair.key(),
        "put",
    ])
    .unwrap();
    cli.validate().unwrap();
    let err = retcd_bench::run(&cli).await.unwrap_err();
    assert!(
        matches!(err, retcd_bench::BenchError::Connect { .. }),
        "{err}"
    );
}
