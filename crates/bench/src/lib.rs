//! retcd-bench: a load generator for any etcd v3 endpoint, retcd or etcd
//! itself, in the spirit of etcd's `tools/benchmark`.
//!
//! It speaks only the public etcd v3 gRPC API (through `retcd-api`'s
//! generated clients), so the same command measures retcd and etcd on the
//! same machine, and the numbers can stand side by side.
//!
//! # Shape of a run
//!
//! ```text
//! cli::Cli --validate--> conn::connect (--conns HTTP/2 channels, plaintext or TLS,
//!   round-robin over --endpoints)
//!   --> workload::<name>: unmeasured setup (leases to keep alive, watchers)
//!   --> runner::run_closed_loop: --clients tasks, each sending request i (from a shared
//!       counter) as soon as its previous answer arrived, until --total were sent
//!   --> stats::Recorder per client (HDR histogram + errors by gRPC code), merged
//!   --> stats::Report: text, or one JSON object with --json
//! ```
//!
//! # Workloads
//!
//! - `put`: one Put per request; write latency and throughput.
//! - `range`: one Range per request over a key, interval or prefix,
//!   linearizable (`--consistency l`) or serializable (`s`).
//! - `txn-put`: one Txn per request, a compare on the first key then
//!   `--txn-ops` puts.
//! - `watch`: watchers on a prefix while puts run at full speed; events
//!   delivered per second and latency from put sent to event received.
//! - `lease`: grant → put with the lease → revoke cycles, each step timed.
//! - `lease-keepalive`: N leases renewed over LeaseKeepAlive streams.
//!
//! # Determinism
//!
//! Request i writes the same key in every run with the same `--seed`
//! ([`keys::KeyGen`]); values are seeded too. What differs between runs is
//! only which client sends which request, and timing.
//!
//! # Key types
//!
//! [`cli::Cli`], [`keys::KeyGen`], [`runner::Op`], [`stats::Recorder`],
//! [`stats::Report`], [`error::BenchError`].

pub mod cli;
pub mod conn;
pub mod error;
pub mod keys;
pub mod runner;
pub mod stats;
pub mod workload;

pub use cli::Cli;
pub use error::BenchError;
pub use stats::Report;
pub use workload::run;
