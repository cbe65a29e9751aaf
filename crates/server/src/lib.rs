//! retcd's server: a durable, etcd-compatible member. The only crate that opens sockets
//! and spawns tasks; everything below it (Raft core, WAL, backend, MVCC, lessor) is
//! synchronous.
//!
//! # Place in the data flow
//! ```text
//! client --gRPC/HTTP (TLS)--> grpc::<service>  validate (etcd's exact errors)
//!   write: InternalRaftRequest --> node (the raft loop, one OS thread) --> Raft
//!          --> WAL fsync --> apply (one MVCC write batch per Ready, consistent index
//!          inside) --> watchers --> answer the proposer
//!   read:  serializable --> MVCC read view here
//!          linearizable --> ReadIndex through the raft loop --> wait applied --> read view
//! peers --peer gRPC--> peer::service --> node --> Raft
//! ```
//!
//! # Modules, one per concern
//! - [`config`]: etcd's flags, `ETCD_*` variables and YAML config file, read by etcd's
//!   rules into a typed `Config` (one table of every etcd flag says what each does).
//! - [`ids`]: member and cluster ids, computed exactly as etcd computes them.
//! - `node`: the raft loop (bootstrap and recovery, the turn, reads, snapshots) and the
//!   handles the services get (`NodeHandle` for inputs, `NodeStatus` for what it
//!   publishes, the store, the lease view).
//! - `apply`: the deterministic state machine; every request kind is decided in one of
//!   its files, behind a chain of gates (auth, CORRUPT, NOSPACE).
//! - `auth`: etcd's auth store as applied, permission checks, simple and JWT tokens, bcrypt.
//! - `published`: what the raft loop publishes for readers (`Published`, the applied
//!   index and its waiters).
//! - `membership`: members and their rules; `quota`: the backend quota before proposing.
//! - `grpc`: one file per service; `peer`: the member-to-member protocol.
//! - `compactor`: auto-compaction (`--auto-compaction-*`), etcd's periodic and revision
//!   compactors, leader only.
//! - `corrupt`: HashKV compared with the peers: before serving
//!   (`--experimental-initial-corrupt-check`), and periodically on the leader
//!   (`--experimental-corrupt-check-time`, raising CORRUPT).
//! - `etcd_db`: the store as etcd's backend file (bbolt), streamed by
//!   `Maintenance.Snapshot`; [`restore`]: a snapshot file (etcd's or ours) into a new
//!   data dir, as `etcdctl snapshot restore` (offline, for `retcdctl`).
//! - `http`: `/version`, `/health`, `/livez`, `/readyz`, `/metrics`, and the access
//!   rules of every HTTP request on a client port (`--cors`, `--host-whitelist`).
//! - `gateway`: the HTTP/JSON gateway (`/v3/...`), every RPC as etcd's grpc-gateway
//!   serves it, through the gRPC router in-process.
//! - `background`: low-priority thread pools (bcrypt, snapshot streams).
//! - [`metrics`]: a small Prometheus registry with etcd's metric names, gRPC server
//!   and peer network families included.
//! - `errors`: the one place request errors become `tonic::Status`.
//! - `clock`: the one place the server reads clocks.
//! - `server`: start order, wiring and ordered shutdown; `serving`: what each listen URL
//!   serves and with which TLS (etcd's rules); `listen`: binding and serving a URL;
//!   `authority` and `pings`: filters on client connections (a gRPC-Go `:authority`
//!   fix, `--grpc-keepalive-min-time`).
//! - `tls`: rustls on every listener and for dialing peers (reload, handshake deadline,
//!   allow-lists, auto-TLS).
//!
//! # Decisions, and why
//! - **One raft thread.** The Raft core, the WAL and MVCC's write batch (which is `!Send`)
//!   live on one dedicated OS thread fed by a bounded channel. Blocking fsyncs stay off
//!   the reactor, the core needs no lock, and the host's duties run in their required
//!   order as straight-line code. The thread turns time into ticks; the core and apply
//!   never read a clock.
//! - **Batching.** Each turn takes every queued input before asking Raft for a `Ready`, so
//!   concurrent writes share one WAL fsync and one backend transaction, and concurrent
//!   linearizable reads share one ReadIndex.
//! - **Durability.** A write is acknowledged only after its entry is fsynced in the WAL
//!   and applied. Backend commits are durable only every 100 ms or 10,000 entries
//!   (etcd's batch interval and limit), on compaction and configuration changes, before
//!   a snapshot and at shutdown: the WAL already holds every entry, and replay after a
//!   crash is idempotent because apply skips entries at or below the backend's
//!   consistent index, which commits in the same transaction as their effects.
//! - **Log compaction.** After `--snapshot-count` entries a Raft snapshot records only
//!   index, term and configuration (the backend is the state), after a durable backend
//!   commit covering it; WAL segments are purged below min(snapshot, durable consistent
//!   index). A member too far behind gets a backend image instead of the log.
//! - **One port for gRPC and HTTP.** tonic's services become an axum router beside the
//!   HTTP endpoints, served by hyper-util's auto builder (HTTP/1.1 and h2c), as etcd
//!   serves both on its client URLs.
//! - **Membership from the log.** A new cluster's log starts with one configuration
//!   change per initial member, so every member, and every member that joins later,
//!   derives the configuration from the log; the membership itself is stored in the
//!   backend by apply, as etcd does.
//! - **Fail-stop.** An I/O or corruption error from the WAL, MVCC or the backend stops
//!   the raft loop: nobody is answered "success" for a write that may not be stored, and
//!   the process exits non-zero.

mod apply;
mod auth;
mod authority;
mod background;
mod clock;
mod compactor;
pub mod config;
mod corrupt;
mod errors;
mod etcd_db;
mod gateway;
mod grpc;
mod http;
pub mod ids;
mod listen;
mod membership;
pub mod metrics;
mod node;
mod peer;
mod pings;
mod published;
mod quota;
pub mod restore;
mod server;
mod serving;
mod tls;

pub use server::{Server, run};

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT"),
    }
}
