//! Wiring: bind every listener, start the raft loop, serve, and shut down in order.
//!
//! `serving.rs` decides what each listen URL serves and with which TLS. A client
//! listener serves gRPC (HTTP/2: h2c with prior knowledge on `http://`, ALPN `h2` on
//! `https://`) and plain HTTP/1.1 on the same port, as etcd does; hyper-util's auto
//! builder tells the two apart by the HTTP/2 connection preface, and one axum router holds
//! both the tonic services and the HTTP endpoints.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::watch;

use crate::config::{Config, ConfigError};
use crate::errors::RequestError;
use crate::grpc::{self, ServiceLimits};
use crate::http::{self, Endpoints, HttpState};
use crate::ids;
use crate::listen::{self, Http2Settings};
use crate::membership::{Member, Membership};
use crate::metrics::Metrics;
use crate::node::{self, Bootstrap, DataLayout, Node, NodeConfig, NodeHandle};
use crate::peer::activity::PeerActivity;
use crate::peer::dial::Dialer;
use crate::peer::service::PeerService;
use crate::peer::transport::Transport;
use crate::serving::{self, Role};
use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::{CompactionRequest, InternalRaftRequest};
use retcd_api::peerpb::MembersRequest;
use retcd_api::peerpb::peer_client::PeerClient;
use retcd_api::peerpb::peer_server::PeerServer;

/// How long open connections get to finish after shutdown begins.
const CONNECTION_DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// A started server: the raft loop and its listeners.
pub struct Server {
    node: Node,
    addrs: Vec<SocketAddr>,
    stop_accepting: watch::Sender<bool>,
    accept_tasks: Vec<tokio::task::JoinHandle<()>>,
    graceful: Arc<GracefulShutdown>,
    /// The auto-compaction loop and the periodic corruption check, when the flags ask
    /// for them; stopped first at shutdown.
    background: Vec<tokio::task::JoinHandle<()>>,
}

/// The members of `--initial-cluster`, with the ids etcd derives from their peer URLs
/// and the cluster token.
pub(crate) fn initial_members(config: &Config) -> Result<Vec<Member>, ConfigError> {
    Ok(config
        .initial_cluster_members()?
        .iter()
        .map(|(name, urls)| Member {
            id: ids::member_id(urls, &config.initial_cluster_token),
            name: name.clone(),
            peer_urls: urls.clone(),
            // Every member bootstraps the same records; client URLs arrive through
            // Raft when each member publishes them.
            client_urls: Vec::new(),
            is_learner: false,
        })
        .collect())
}

impl Server {
    /// Recovers or creates the data directory, starts the raft loop and binds every client
    /// URL. Returns once the listeners accept connections.
    pub async fn start(config: &Config) -> anyhow::Result<Server> {
        let members = initial_members(config)?;
        let member_ids: Vec<ids::MemberId> = members.iter().map(|m| m.id).collect();
        let mut member_id = ids::member_id(
            &config.initial_advertise_peer_urls,
            &config.initial_cluster_token,
        );
        let mut cluster_id = ids::cluster_id(&member_ids);
        // Bind first, as etcd does: a port in use fails the start before the data
        // directory is touched. Connections wait in the backlog until serving starts.
        let plan = serving::bind(config).await?;
        let dialer = Dialer::new(plan.dialer_tls.clone());
        let layout = DataLayout::new(&config.data_dir(), config.wal_dir.as_deref());
        let has_wal = layout.wal_dir.exists();
        let bootstrap = if config.initial_cluster_state == "existing" && !has_wal {
            let (cid, membership, id) =
                fetch_membership(&dialer, &members, &config.initial_advertise_peer_urls).await?;
            cluster_id = cid;
            member_id = id;
            Bootstrap::Existing { membership }
        } else {
            Bootstrap::New { members }
        };
        let node_cfg = NodeConfig {
            data_dir: config.data_dir(),
            member_id,
            cluster_id,
            election_ticks: config.election_ticks(),
            heartbeat_interval: config.heartbeat_interval(),
            snapshot_count: config.snapshot_count,
            max_request_bytes: config.max_request_bytes as usize,
            request_timeout: config.request_timeout(),
            bootstrap,
            pre_vote: config.pre_vote,
            quota_backend_bytes: config.backend_quota(),
            wal_dir: config.wal_dir.clone(),
            max_snapshots: config.max_snapshots,
            max_wals: config.max_wals,
            wal_segment_size_bytes: retcd_wal::DEFAULT_SEGMENT_SIZE_BYTES,
            backend_batch_interval: config.backend_batch_interval,
            backend_batch_limit: config.backend_batch_limit,
            snapshot_catchup_entries: config.snapshot_catchup_entries,
            auth_token_ttl: std::time::Duration::from_secs(config.auth_token_ttl),
            bcrypt_cost: config.bcrypt_cost,
            client_cert_auth: config.client_tls.client_cert_auth,
            jwt: load_jwt(&config.auth_token)?,
            force_new_cluster: config.force_new_cluster,
        };
        let metrics = Arc::new(Metrics::new(config.metrics_extensive));
        // Opening the backend and replaying the WAL block: off the reactor.
        let runtime = tokio::runtime::Handle::current();
        let peer_dialer = dialer.clone();
        let transport_metrics = metrics.clone();
        let peer_activity = Arc::new(PeerActivity::default());
        let transport_activity = peer_activity.clone();
        let transport = move |member, cluster, events| -> Box<dyn node::Network> {
            Box::new(Transport::new(
                runtime,
                member,
                cluster,
                events,
                peer_dialer,
                transport_metrics,
                transport_activity,
            ))
        };
        let node = tokio::task::spawn_blocking(move || node::start(node_cfg, metrics, transport))
            .await
            .context("raft loop start panicked")?
            .context("cannot start the member")?;
        if config.initial_corrupt_check {
            crate::corrupt::initial_check(&node, &dialer, has_wal).await?;
        }

        let limits = ServiceLimits {
            max_request_bytes: config.max_request_bytes as usize,
            max_txn_ops: config.max_txn_ops as usize,
            watch_progress_notify_interval: config.watch_progress_notify_interval,
            election_timeout: std::time::Duration::from_millis(config.election_timeout_ms),
            min_lease_ttl: retcd_lease::min_ttl(
                config.heartbeat_interval(),
                config.election_ticks(),
            ),
            strict_reconfig_check: config.strict_reconfig_check,
        };
        let http_state = Arc::new(HttpState { node: node.clone() });
        let strict_reconfig_check = limits.strict_reconfig_check;
        let grpc_router = grpc::router(&node, limits, peer_activity.clone(), dialer.clone());
        let grpc_metrics = node.metrics.grpc.clone();
        let track = move |router: axum::Router| {
            let grpc_metrics = grpc_metrics.clone();
            router.layer(axum::middleware::from_fn(move |req, next| {
                crate::metrics::grpc::track(grpc_metrics.clone(), req, next)
            }))
        };
        let peer_router = tonic::service::Routes::new(
            PeerServer::new(PeerService::new(
                node.handle.clone(),
                node.status.clone(),
                node.store.clone(),
                node.metrics.clone(),
            ))
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX),
        )
        .into_axum_router()
        .merge(grpc::promote_route(
            &node,
            strict_reconfig_check,
            peer_activity,
            dialer.clone(),
        ));
        // The JSON gateway calls the gRPC router in-process (`--enable-grpc-gateway`).
        let gateway = if config.enable_grpc_gateway {
            Some(Arc::new(crate::gateway::Gateway::new(
                grpc_router.clone(),
                limits.max_request_bytes + grpc::GRPC_OVERHEAD_BYTES,
            )?))
        } else {
            None
        };
        let access = http::AccessRules {
            cors: config.cors.clone(),
            host_whitelist: config.host_whitelist.clone(),
        };
        // A client port's HTTP side: the gateway's paths, then the plain endpoints, all
        // under etcd's access rules.
        let client_http = |router: axum::Router| {
            let router = match &gateway {
                Some(gateway) => gateway.clone().add_routes(router),
                None => router,
            };
            http::with_access_rules(
                http::add_routes(router, http_state.clone(), Endpoints::Client),
                access.clone(),
            )
        };
        let router_for = |role: Role| match role {
            Role::Client => track(client_http(grpc_router.clone())),
            Role::ClientGrpc => track(http::grpc_only(grpc_router.clone())),
            Role::ClientHttp => client_http(axum::Router::new()),
            Role::Metrics => {
                http::add_routes(axum::Router::new(), http_state.clone(), Endpoints::Metrics)
            }
            Role::Peer => peer_router.clone(),
        };

        let (stop_accepting, stop_rx) = watch::channel(false);
        let graceful = Arc::new(GracefulShutdown::new());
        let client_http2 = Http2Settings {
            max_concurrent_streams: config.max_concurrent_streams,
            keepalive_interval: config.grpc_keepalive_interval,
            keepalive_timeout: config.grpc_keepalive_timeout,
            ping_min_time: Some(config.grpc_keepalive_min_time),
        };
        let mut addrs = Vec::new();
        let mut accept_tasks = Vec::new();
        for l in plan.listeners {
            let what = match l.role {
                Role::Client => "serving client traffic (gRPC and HTTP)",
                Role::ClientGrpc => "serving client gRPC",
                Role::ClientHttp => "serving client HTTP",
                Role::Peer => "serving peer traffic",
                Role::Metrics => "serving metrics and health",
            };
            tracing::info!(url = %l.addr.url, address = ?l.bound.local_addr(), tls = l.tls.is_some(), "{what}");
            if matches!(l.role, Role::Client | Role::ClientGrpc | Role::ClientHttp) {
                addrs.extend(l.bound.local_addr());
            }
            let http2 = match l.role {
                Role::Client | Role::ClientGrpc => client_http2,
                _ => Http2Settings::default(),
            };
            accept_tasks.push(tokio::spawn(listen::serve(
                l.bound,
                listen::Serve {
                    router: router_for(l.role),
                    tls: l.tls,
                    http2,
                    stop: stop_rx.clone(),
                    graceful: graceful.clone(),
                    kind: l.role.kind(),
                },
            )));
        }
        tokio::spawn(publish_attributes(
            node.handle.clone(),
            node.status.clone(),
            config.name.clone(),
            config.advertise_client_urls.clone(),
        ));
        let corrupt_check = (!config.corrupt_check_time.is_zero()).then(|| {
            tokio::spawn(crate::corrupt::periodic(
                node.handle.clone(),
                node.status.clone(),
                node.store.clone(),
                dialer.clone(),
                config.corrupt_check_time,
            ))
        });
        let compactor = config.auto_compaction().map(|policy| {
            let (kv, status, handle) = (
                node.store.kv.clone(),
                node.status.clone(),
                node.handle.clone(),
            );
            tokio::spawn(crate::compactor::run(
                policy,
                move || kv.current_revision(),
                move || status.is_leader(),
                move |revision| auto_compact(handle.clone(), revision),
            ))
        });
        tracing::info!(
            name = %config.name,
            member_id = %node.status.member_id(),
            cluster_id = %node.status.cluster_id(),
            "ready to serve client requests"
        );
        Ok(Server {
            node,
            addrs,
            stop_accepting,
            accept_tasks,
            graceful,
            background: compactor.into_iter().chain(corrupt_check).collect(),
        })
    }

    /// The bound client addresses.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Serves until `shutdown` resolves or the raft loop stops on its own (a fatal
    /// error), then shuts down: stop accepting, stop the raft loop (pending requests fail
    /// with "server stopped"; the loop finishes its turn and makes the backend and WAL
    /// durable), then let open connections drain.
    pub async fn serve_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let node_stopped = tokio::select! {
            () = shutdown => {
                tracing::info!("shutting down");
                false
            }
            () = self.node.status.stopped() => true,
        };
        self.stop_accepting.send_replace(true);
        for task in &self.background {
            task.abort();
        }
        for task in self.accept_tasks {
            let _ = task.await;
        }
        let handle = self.node.handle.clone();
        let outcome = tokio::task::spawn_blocking(move || handle.stop_and_join())
            .await
            .context("raft loop join panicked")?;
        // The accept loops are gone, so this is the last handle.
        if let Ok(graceful) = Arc::try_unwrap(self.graceful)
            && tokio::time::timeout(CONNECTION_DRAIN_TIMEOUT, graceful.shutdown())
                .await
                .is_err()
        {
            tracing::warn!("client connections did not close in time; dropping them");
        }
        outcome.context("raft loop failed")?;
        if node_stopped && !self.node.status.was_removed() {
            anyhow::bail!("raft loop stopped unexpectedly");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// One auto compaction through Raft, as a client's Compact would go (no user: auth
/// checks the service's callers, not the server's own compactions, as etcd's). Done
/// when applied, or when the revision was compacted already.
async fn auto_compact(handle: Arc<NodeHandle>, revision: i64) -> bool {
    let out = handle
        .propose(InternalRaftRequest {
            compaction: Some(CompactionRequest {
                revision,
                physical: false,
            }),
            ..Default::default()
        })
        .await;
    match out {
        Ok(_) => true,
        Err(RequestError::Etcd(EtcdError::Compacted)) => true,
        Err(e) => {
            tracing::warn!(revision, error = %e, "auto compaction not applied");
            false
        }
    }
}

/// How often a member retries publishing its attributes or reaching a peer at start.
const RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// How long a member joining an existing cluster tries to reach a peer.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// For `--initial-cluster-state existing`: asks the other members of `--initial-cluster`
/// for the cluster id and membership, and finds this member in it by its peer URLs
/// (`member add` chose its id), as etcd does.
async fn fetch_membership(
    dialer: &Dialer,
    members: &[Member],
    my_peer_urls: &[String],
) -> anyhow::Result<(ids::ClusterId, Membership, ids::MemberId)> {
    let mut mine = my_peer_urls.to_vec();
    mine.sort();
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    let mut last = String::from("no other member in --initial-cluster");
    while tokio::time::Instant::now() < deadline {
        for m in members.iter().filter(|m| {
            let mut urls = m.peer_urls.clone();
            urls.sort();
            urls != mine
        }) {
            let channel = match dialer.connect(&m.peer_urls).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let mut client = PeerClient::new(channel);
            match client.members(MembersRequest {}).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    let mut membership = Membership::default();
                    for p in resp.members {
                        let p = Member::from_proto(p);
                        membership.members.insert(p.id, p);
                    }
                    membership.removed = resp.removed.into_iter().map(ids::MemberId).collect();
                    let local = membership
                        .members
                        .values()
                        .find(|p| {
                            let mut urls = p.peer_urls.clone();
                            urls.sort();
                            urls == mine
                        })
                        .map(|p| p.id);
                    match local {
                        Some(local) => {
                            return Ok((ids::ClusterId(resp.cluster_id), membership, local));
                        }
                        // `member add` answers once the leader applied the change; the
                        // peer asked may not have applied it yet. Ask again until the
                        // deadline rather than give up at once.
                        None => {
                            last = format!(
                                "no member of the cluster has peer URLs {}: add this member with `member add` first",
                                mine.join(",")
                            )
                        }
                    }
                }
                Err(e) => last = format!("{}: {}", m.peer_urls.join(","), e.message()),
            }
        }
        tokio::time::sleep(RETRY_INTERVAL).await;
    }
    anyhow::bail!("cannot fetch the cluster membership from any peer: {last}")
}

/// Publishes this member's name and client URLs through Raft once it has a leader, as
/// etcd does, so every member lists them; retries until they are applied.
async fn publish_attributes(
    handle: Arc<node::NodeHandle>,
    status: Arc<node::NodeStatus>,
    name: String,
    client_urls: Vec<String>,
) {
    use retcd_api::etcdserverpb::InternalRaftRequest;
    use retcd_api::membershippb::{Attributes, ClusterMemberAttrSetRequest};
    loop {
        if !status.is_running() {
            return;
        }
        let current = status.membership().get(status.member_id()).cloned();
        match current {
            Some(m) if m.name == name && m.client_urls == client_urls => return,
            // Not (yet) a member: joining, or removed.
            None => {}
            Some(_) if status.leader() != 0 => {
                let req = InternalRaftRequest {
                    cluster_member_attr_set: Some(ClusterMemberAttrSetRequest {
                        member_id: status.member_id().0,
                        member_attributes: Some(Attributes {
                            name: name.clone(),
                            client_urls: client_urls.clone(),
                        }),
                    }),
                    ..Default::default()
                };
                if let Err(e) = handle.propose(req).await {
                    tracing::debug!(error = ?e, "publishing member attributes failed; will retry");
                }
                continue;
            }
            Some(_) => {}
        }
        tokio::time::sleep(RETRY_INTERVAL).await;
    }
}

/// Starts a server for `config` and serves until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Server::start(&config).await?.serve_until(shutdown).await
}

/// The JWT provider of `--auth-token jwt,...` (the spec was checked with the config),
/// its keys read now: a key that cannot serve fails the start.
fn load_jwt(spec: &str) -> anyhow::Result<Option<Arc<crate::auth::jwt::Jwt>>> {
    let ttl = |v: &str| {
        crate::config::parse_go_duration_nanos(v)
            .ok()
            .map(|n| std::time::Duration::from_nanos(n.max(0) as u64))
    };
    match crate::auth::jwt::JwtOptions::parse(spec, ttl) {
        None => Ok(None),
        Some(options) => crate::auth::jwt::Jwt::load(&options)
            .map(|j| Some(Arc::new(j)))
            .map_err(|e| anyhow::anyhow!(e)),
    }
}
