//! The gRPC surface: service and method names (they form the HTTP/2 paths
//! clients call), streaming shapes, the generated client and server types,
//! and one real round trip over tonic's transport on loopback.

use std::collections::BTreeMap;

use bytes::Bytes;
use prost::Message;
use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::{
    self as pb, auth_client::AuthClient, auth_server::AuthServer, cluster_client::ClusterClient,
    cluster_server::ClusterServer, kv_client::KvClient, kv_server::KvServer,
    lease_client::LeaseClient, lease_server::LeaseServer, maintenance_client::MaintenanceClient,
    maintenance_server::MaintenanceServer, watch_client::WatchClient, watch_server::WatchServer,
};
use retcd_api::health::{health_client::HealthClient, health_server::HealthServer};
use retcd_api::v3electionpb::{election_client::ElectionClient, election_server::ElectionServer};
use retcd_api::v3lockpb::{lock_client::LockClient, lock_server::LockServer};
use retcd_api::{FILE_DESCRIPTOR_SET, etcdserverpb, health, v3electionpb, v3lockpb};
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// One RPC as the descriptor declares it. Request and response types are
/// named relative to the service's package.
#[derive(Debug, PartialEq, Eq)]
struct Method {
    name: String,
    request: String,
    response: String,
    client_streaming: bool,
    server_streaming: bool,
}

fn method(
    name: &str,
    request: &str,
    response: &str,
    client_streaming: bool,
    server_streaming: bool,
) -> Method {
    Method {
        name: name.to_owned(),
        request: request.to_owned(),
        response: response.to_owned(),
        client_streaming,
        server_streaming,
    }
}

fn unary(name: &str, request: &str, response: &str) -> Method {
    method(name, request, response, false, false)
}

/// etcd 3.5's gRPC surface, per fully qualified service name.
fn expected_services() -> BTreeMap<String, Vec<Method>> {
    let mut services = BTreeMap::new();
    services.insert(
        "etcdserverpb.KV".to_owned(),
        vec![
            unary("Range", "RangeRequest", "RangeResponse"),
            unary("Put", "PutRequest", "PutResponse"),
            unary("DeleteRange", "DeleteRangeRequest", "DeleteRangeResponse"),
            unary("Txn", "TxnRequest", "TxnResponse"),
            unary("Compact", "CompactionRequest", "CompactionResponse"),
        ],
    );
    services.insert(
        "etcdserverpb.Watch".to_owned(),
        vec![method("Watch", "WatchRequest", "WatchResponse", true, true)],
    );
    services.insert(
        "etcdserverpb.Lease".to_owned(),
        vec![
            unary("LeaseGrant", "LeaseGrantRequest", "LeaseGrantResponse"),
            unary("LeaseRevoke", "LeaseRevokeRequest", "LeaseRevokeResponse"),
            method(
                "LeaseKeepAlive",
                "LeaseKeepAliveRequest",
                "LeaseKeepAliveResponse",
                true,
                true,
            ),
            unary(
                "LeaseTimeToLive",
                "LeaseTimeToLiveRequest",
                "LeaseTimeToLiveResponse",
            ),
            unary("LeaseLeases", "LeaseLeasesRequest", "LeaseLeasesResponse"),
        ],
    );
    services.insert(
        "etcdserverpb.Cluster".to_owned(),
        vec![
            unary("MemberAdd", "MemberAddRequest", "MemberAddResponse"),
            unary(
                "MemberRemove",
                "MemberRemoveRequest",
                "MemberRemoveResponse",
            ),
            unary(
                "MemberUpdate",
                "MemberUpdateRequest",
                "MemberUpdateResponse",
            ),
            unary("MemberList", "MemberListRequest", "MemberListResponse"),
            unary(
                "MemberPromote",
                "MemberPromoteRequest",
                "MemberPromoteResponse",
            ),
        ],
    );
    services.insert(
        "etcdserverpb.Maintenance".to_owned(),
        vec![
            unary("Alarm", "AlarmRequest", "AlarmResponse"),
            unary("Status", "StatusRequest", "StatusResponse"),
            unary("Defragment", "DefragmentRequest", "DefragmentResponse"),
            unary("Hash", "HashRequest", "HashResponse"),
            unary("HashKV", "HashKVRequest", "HashKVResponse"),
            method(
                "Snapshot",
                "SnapshotRequest",
                "SnapshotResponse",
                false,
                true,
            ),
            unary("MoveLeader", "MoveLeaderRequest", "MoveLeaderResponse"),
            unary("Downgrade", "DowngradeRequest", "DowngradeResponse"),
        ],
    );
    // The Auth service's message names add an "Auth" prefix to most methods.
    let auth = [
        ("AuthEnable", "AuthEnable"),
        ("AuthDisable", "AuthDisable"),
        ("AuthStatus", "AuthStatus"),
        ("Authenticate", "Authenticate"),
        ("UserAdd", "AuthUserAdd"),
        ("UserGet", "AuthUserGet"),
        ("UserList", "AuthUserList"),
        ("UserDelete", "AuthUserDelete"),
        ("UserChangePassword", "AuthUserChangePassword"),
        ("UserGrantRole", "AuthUserGrantRole"),
        ("UserRevokeRole", "AuthUserRevokeRole"),
        ("RoleAdd", "AuthRoleAdd"),
        ("RoleGet", "AuthRoleGet"),
        ("RoleList", "AuthRoleList"),
        ("RoleDelete", "AuthRoleDelete"),
        ("RoleGrantPermission", "AuthRoleGrantPermission"),
        ("RoleRevokePermission", "AuthRoleRevokePermission"),
    ];
    services.insert(
        "etcdserverpb.Auth".to_owned(),
        auth.iter()
            .map(|(name, message)| {
                unary(
                    name,
                    &format!("{message}Request"),
                    &format!("{message}Response"),
                )
            })
            .collect(),
    );
    services.insert(
        "v3lockpb.Lock".to_owned(),
        vec![
            unary("Lock", "LockRequest", "LockResponse"),
            unary("Unlock", "UnlockRequest", "UnlockResponse"),
        ],
    );
    services.insert(
        "v3electionpb.Election".to_owned(),
        vec![
            unary("Campaign", "CampaignRequest", "CampaignResponse"),
            unary("Proclaim", "ProclaimRequest", "ProclaimResponse"),
            unary("Leader", "LeaderRequest", "LeaderResponse"),
            method("Observe", "LeaderRequest", "LeaderResponse", false, true),
            unary("Resign", "ResignRequest", "ResignResponse"),
        ],
    );
    services.insert(
        "grpc.health.v1.Health".to_owned(),
        vec![
            unary("Check", "HealthCheckRequest", "HealthCheckResponse"),
            method(
                "Watch",
                "HealthCheckRequest",
                "HealthCheckResponse",
                false,
                true,
            ),
        ],
    );
    services
}

#[test]
fn descriptor_set_declares_exactly_etcds_services() {
    let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
        .expect("FILE_DESCRIPTOR_SET decodes");
    let mut actual = BTreeMap::new();
    for file in &fds.file {
        let package = file.package();
        // Types are fully qualified (".etcdserverpb.RangeRequest"); every
        // method's types live in its service's package.
        let prefix = format!(".{package}.");
        let relative = |name: &str| {
            name.strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("{name} outside package {package}"))
                .to_owned()
        };
        for service in &file.service {
            let methods: Vec<Method> = service
                .method
                .iter()
                .map(|m| Method {
                    name: m.name().to_owned(),
                    request: relative(m.input_type()),
                    response: relative(m.output_type()),
                    client_streaming: m.client_streaming(),
                    server_streaming: m.server_streaming(),
                })
                .collect();
            actual.insert(format!("{package}.{}", service.name()), methods);
        }
    }
    assert_eq!(actual, expected_services());
}

#[test]
fn descriptor_set_uses_etcds_package_names() {
    let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("decodes");
    let mut packages: Vec<_> = fds
        .file
        .iter()
        .map(|file| file.package().to_owned())
        .collect();
    packages.sort();
    packages.dedup();
    assert_eq!(
        packages,
        [
            "authpb",
            "etcdserverpb",
            "grpc.health.v1",
            "membershippb",
            "mvccpb",
            "v3electionpb",
            "v3lockpb"
        ]
    );
}

/// Names every generated server and client type, so that renaming a service
/// or dropping client or server generation fails to compile. The service
/// names checked are also the first segment of every gRPC path.
#[tokio::test]
async fn generated_servers_and_clients_carry_etcds_service_names() {
    fn name<S: NamedService>() -> &'static str {
        S::NAME
    }
    struct Unimplemented;
    assert_eq!(name::<KvServer<Unimplemented>>(), "etcdserverpb.KV");
    assert_eq!(name::<WatchServer<Unimplemented>>(), "etcdserverpb.Watch");
    assert_eq!(name::<LeaseServer<Unimplemented>>(), "etcdserverpb.Lease");
    assert_eq!(
        name::<ClusterServer<Unimplemented>>(),
        "etcdserverpb.Cluster"
    );
    assert_eq!(
        name::<MaintenanceServer<Unimplemented>>(),
        "etcdserverpb.Maintenance"
    );
    assert_eq!(name::<AuthServer<Unimplemented>>(), "etcdserverpb.Auth");
    assert_eq!(name::<LockServer<Unimplemented>>(), "v3lockpb.Lock");
    assert_eq!(
        name::<ElectionServer<Unimplemented>>(),
        "v3electionpb.Election"
    );
    assert_eq!(
        name::<HealthServer<Unimplemented>>(),
        "grpc.health.v1.Health"
    );

    // Clients over tonic's HTTP/2 channel, built lazily: no connection is made.
    let channel = Channel::from_static("http://127.0.0.1:1").connect_lazy();
    let _ = KvClient::new(channel.clone());
    let _ = WatchClient::new(channel.clone());
    let _ = LeaseClient::new(channel.clone());
    let _ = ClusterClient::new(channel.clone());
    let _ = MaintenanceClient::new(channel.clone());
    let _ = AuthClient::new(channel.clone());
    let _ = LockClient::new(channel.clone());
    let _ = ElectionClient::new(channel.clone());
    let _ = HealthClient::new(channel);

    // The module paths other crates rely on.
    let _: Option<etcdserverpb::InternalRaftRequest> = None;
    let _: Option<v3lockpb::LockRequest> = None;
    let _: Option<v3electionpb::LeaderKey> = None;
    let _: Option<health::HealthCheckRequest> = None;
}

/// A KV server that answers Put by echoing the key back as `prev_kv`, and
/// Range with the `EtcdError` whose index in `EtcdError::ALL` is the key.
struct EchoKv;

#[tonic::async_trait]
impl pb::kv_server::Kv for EchoKv {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let key = std::str::from_utf8(&request.get_ref().key)
            .map_err(|_| Status::invalid_argument("key is not utf-8"))?;
        let index: usize = key
            .parse()
            .map_err(|_| Status::invalid_argument("key is not an index"))?;
        let error = EtcdError::ALL
            .get(index)
            .ok_or_else(|| Status::invalid_argument("index out of range"))?;
        Err(Status::from(*error))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let put = request.into_inner();
        Ok(Response::new(pb::PutResponse {
            header: Some(pb::ResponseHeader {
                revision: 2,
                ..Default::default()
            }),
            prev_kv: Some(retcd_api::mvccpb::KeyValue {
                key: put.key,
                value: put.value,
                lease: put.lease,
                ..Default::default()
            }),
        }))
    }

    async fn delete_range(
        &self,
        _: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        Err(Status::unimplemented("not used by this test"))
    }

    async fn txn(&self, _: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        Err(Status::unimplemented("not used by this test"))
    }

    async fn compact(
        &self,
        _: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        Err(Status::unimplemented("not used by this test"))
    }
}

/// A real HTTP/2 round trip on 127.0.0.1 port 0: messages arrive intact, and
/// every `EtcdError` reaches the client with etcd's code and exact message
/// (gRPC percent-encodes messages in trailers; etcd's quotes and commas must
/// survive that).
#[tokio::test]
async fn kv_round_trip_and_every_error_over_loopback() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KvServer::new(EchoKv))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stop_rx.await;
                },
            ),
    );

    let mut client = KvClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");

    let response = client
        .put(pb::PutRequest {
            key: Bytes::from_static(b"foo"),
            value: Bytes::from_static(b"bar"),
            lease: 7,
            ..Default::default()
        })
        .await
        .expect("put succeeds")
        .into_inner();
    assert_eq!(response.header.map(|header| header.revision), Some(2));
    let prev = response.prev_kv.expect("prev_kv echoed");
    assert_eq!(
        (&prev.key[..], &prev.value[..], prev.lease),
        (&b"foo"[..], &b"bar"[..], 7)
    );

    for (index, &error) in EtcdError::ALL.iter().enumerate() {
        let status = client
            .range(pb::RangeRequest {
                key: Bytes::from(index.to_string()),
                ..Default::default()
            })
            .await
            .expect_err("range answers with an error");
        assert_eq!(status.code(), error.code(), "{error:?}");
        assert_eq!(status.message(), error.message(), "{error:?}");
        assert_eq!(EtcdError::from_status(&status), Some(error));
    }

    stop_tx.send(()).expect("server still running");
    server
        .await
        .expect("server task")
        .expect("server shut down cleanly");
}
