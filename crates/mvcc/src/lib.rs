//! Multi-version key-value store with etcd v3's revision semantics.
//!
//! # Purpose
//! Keeps every version of every key, addressed by revision, so clients can read the past
//! (`Range` at a revision), watchers can replay history, and a `Txn` takes effect atomically
//! at one revision. This is etcd's `server/storage/mvcc` in Rust; [`watch`] is its watchable store.
//!
//! # Place in the data flow
//! ```text
//! apply (committed Raft entries, batched)
//!   -> KvStore::begin_batch                      one backend write transaction
//!        -> batch.txn(): put / delete_range / range   one revision per request
//!        -> batch.compact(rev)                        physical, in the same transaction
//!        -> batch.set_consistent_index(index, term)   same transaction: replay is idempotent
//!   -> batch.commit()  (durable)  -> Committed { events }  -> watch layer, responses
//! reads: KvStore::view() -> ReadView::range / events / hash_by_rev (concurrent with apply)
//! open:  KvStore::open(backend) rebuilds the key index from the `key` bucket
//! ```
//!
//! # Key types
//! - [`Revision`] `{main, sub}` and [`RevisionKey`]: the ordering of history and its byte
//!   encoding as keys of the backend's `key` bucket (8-byte big-endian main, `_`, 8-byte
//!   big-endian sub, `t` for a tombstone).
//! - [`KeyValue`]: `mvccpb.KeyValue` (create/mod revision, version, lease).
//! - [`key_index::KeyIndex`]: one key's generations of revisions; the store keeps a
//!   B-tree of them in memory for ranges and counts without touching the backend.
//! - [`KvStore`], [`ReadView`], [`WriteBatch`], [`TxnWrite`]: the store and its read and write
//!   handles; [`Event`]: a change, with its previous value, for watchers.
//! - [`MvccError`]: `Compacted` and `FutureRevision` go to clients; the rest stop the node.
//! - [`WatchableStore`], [`WatchStream`]: watchers over key ranges fed by `notify` after each
//!   committed batch, catching up from the backend when behind (see [`watch`]).
//!
//! # Invariants
//! - The current revision starts at 1 and never decreases, across restarts included: a
//!   compaction always keeps the newest change, and the compaction revision is persisted.
//! - A transaction's changes share one main revision; sub revisions count from 0.
//! - Readers see only committed revisions; a batch's changes are published at commit.
//! - The compaction revision never exceeds the current revision and never decreases.
//! - Compaction at R keeps, per key, the newest version at or below R if the key is live
//!   then, and a tombstone at exactly R; it removes everything else at or below R.
//! - Every index entry at or above the compaction revision points to a record in the backend.
//!
//! The `key` bucket layout and the `meta` keys are described in `docs/storage-format.md`.

pub mod crc32c;
mod error;
mod event;
pub mod key_index;
mod key_value;
mod revision;
mod store;
mod tree_index;
pub mod watch;
mod write;

pub use error::MvccError;
pub use event::{Event, EventKind};
pub use key_value::{KeyValue, record_from_etcd, record_to_etcd};
pub use retcd_backend::ConsistentIndex;
pub use revision::{REVISION_BYTES, Revision, RevisionKey, TOMBSTONE_REVISION_BYTES};
pub use store::{KvHash, KvStore, RangeOptions, RangeResult, ReadView};
pub use tree_index::KeyRange;
pub use watch::{WatchConfig, WatchOptions, WatchStream, WatchableStore};
pub use write::{Committed, PutResult, TxnWrite, WriteBatch};
