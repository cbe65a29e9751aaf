//! retcd's server: a durable, etcd-compatible member. The only crate that opens sockets
//! and spawns tasks; everything below it (Raft core, WAL, backend, MVCC) is synchronous.
//!
//! # Place in the data flow
//! ```text
//! client --gRPC/HTTP--> grpc::<service>      validate (etcd's exact errors)
//!   write: InternalRaftRequest --> raft_node (one OS thread) --> Raft --> WAL fsync
//!          --> apply (one MVCC write batch per Ready, consistent index inside)
//!          --> answer the proposer
//!   read:  serializable --> MVCC read view here
//!          linearizable --> ReadIndex through the raft loop --> wait applied --> read view
//! ```
//!
//! # Modules, one per concern
//! - [`config`]: etcd's flags and `ETCD_*` variables with etcd's defaults.
//! - [`ids`]: member and cluster ids, computed exactly as etcd computes them.
//! - `raft_node`: the raft loop thread and the async side's handle on it.
//! - `apply`: the deterministic state machine (put, delete, txn, compaction, ranges).
//! - `grpc`: one file per service; KV and Maintenance are implemented.
//! - `http`: `/version`, `/health`, `/livez`, `/readyz`, `/metrics`.
//! - [`metrics`]: a small Prometheus registry with etcd's metric names.
//! - `errors`: the one place internal errors become `tonic::Status`.
//! - `server`: listeners, wiring and ordered shutdown.
//!
//! # Decisions, and why
//! - **One raft thread.** The Raft core, the WAL and MVCC's write batch (which is `!Send`)
//!   live on one dedicated OS thread fed by a bounded channel. Blocking fsyncs stay off
//!   the reactor, the core needs no lock, and the host's duties run in their required
//!   order as straight-line code. The thread owns the clock and turns time into ticks;
//!   the core and apply never read it.
//! - **Batching.** Each turn takes every queued input before asking Raft for a `Ready`, so
//!   concurrent writes share one WAL fsync and one backend transaction, and concurrent
//!   linearizable reads share one ReadIndex.
//! - **Durability.** A write is acknowledged only after its entry is fsynced in the WAL
//!   and applied. Backend commits are durable only every 100 ms or 10,000 entries
//!   (etcd's batch interval and limit), on compaction, before a snapshot and at shutdown:
//!   the WAL already holds every entry, and replay after a crash is idempotent because
//!   apply skips entries at or below the backend's consistent index, which commits in
//!   the same transaction as their effects.
//! - **Log compaction.** After `--snapshot-count` entries a Raft snapshot records only
//!   index, term and membership (the backend is the state), after a durable backend
//!   commit covering it; WAL segments are purged below min(snapshot, durable consistent
//!   index).
//! - **One port for gRPC and HTTP.** tonic's services become an axum router beside the
//!   HTTP endpoints, served by hyper-util's auto builder (HTTP/1.1 and h2c), as etcd
//!   serves both on its client URLs.
//! - **Membership.** A single member, so the Raft configuration is "this member is the
//!   only voter", derived from the member id in the WAL's metadata rather than replayed
//!   from configuration-change entries. A fresh member campaigns at once instead of
//!   waiting an election timeout. Multi-member clusters will keep membership in the
//!   backend, as etcd does.
//! - **Fail-stop.** An I/O or corruption error from the WAL, MVCC or the backend stops
//!   the raft loop: nobody is answered "success" for a write that may not be stored, and
//!   the process exits non-zero.

mod alarms;
mod apply;
mod authority;
pub mod config;
mod errors;
mod grpc;
mod http;
pub mod ids;
mod lease;
mod membership;
pub mod metrics;
mod peer;
mod raft_node;
mod server;

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
