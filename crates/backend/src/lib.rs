//! Transactional, bucketed storage for retcd's state machine.
//!
//! # Purpose
//! The state machine (MVCC key space, leases, auth, membership) keeps its data in a handful
//! of [`Bucket`]s of ordered byte keys. This crate defines the storage contract as traits —
//! [`Backend`], [`ReadTx`], [`WriteTx`] — and ships two implementations:
//! [`RedbBackend`], the production one on a redb file, and [`MemBackend`], an in-memory one
//! for tests (with fault injection). No other crate names redb.
//!
//! # Place in the data flow
//! ```text
//! raft committed entries -> apply (batched) -> mvcc / lease / auth writes
//!     -> one backend WriteTx per batch, consistent_index written in the same tx
//!     -> WriteTx::commit (fsync) -> events to watch, responses to clients
//! reads -> ReadTx (a consistent snapshot; never blocks the writer)
//! snapshot -> ReadTx::write_snapshot (stream) -> peer / client -> Backend::restore_snapshot
//! ```
//!
//! # Key types
//! - [`Backend`]: opens transactions; size, defragment and snapshot restore.
//! - [`ReadTx`]: `get`, ordered `scan`, `write_snapshot`.
//! - [`WriteTx`]: adds `put`, `delete`, `clear`, `commit`.
//! - [`meta::ConsistentIndex`]: index and term of the last applied Raft entry.
//! - [`BackendError`]: every variant is fatal to the apply loop; none means "try again".
//!
//! # Invariants
//! - At most one write transaction is open at a time; its writes become visible to readers
//!   all at once at commit, or never.
//! - A read transaction sees one commit's data for its whole life.
//! - The consistent index never decreases (asserted in [`meta::write_consistent_index`]).
//! - [`RedbBackend`]'s commit is durable when it returns (redb `Durability::Immediate`),
//!   unless the transaction opted out with [`WriteTx::set_durable`]; such a commit is
//!   made durable by the next durable one, and a crash before that loses it whole.
//!
//! The on-disk format is described in `docs/storage-format.md`.

mod bucket;
mod error;
mod mem;
pub mod meta;
mod redb_backend;
pub mod snapshot;
mod tx;

pub use bucket::Bucket;
pub use error::BackendError;
pub use mem::{MemBackend, MemReadTx, MemWriteTx};
pub use meta::ConsistentIndex;
pub use redb_backend::{RedbBackend, RedbConfig, RedbReadTx, RedbWriteTx};
pub use snapshot::SnapshotInfo;
pub use tx::{Backend, ReadTx, Visitor, WriteTx};
