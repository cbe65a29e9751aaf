//! retcd's Raft write-ahead log and snapshot files: what a member writes to disk so that it
//! can crash at any moment, restart, and still hold everything it ever acknowledged.
//!
//! # Place in the data flow
//!
//! The Raft core is pure; the server's raft loop does its I/O. For every `Ready` it
//! calls [`Wal::save`] with the new entries and hard state, which returns only after an
//! fsync, and only then sends the messages that depend on them (votes, append responses)
//! and lets the leader count itself in a quorum. Snapshots go to a [`Snapshotter`] first,
//! then their position to [`Wal::save_snapshot_marker`], then old segments go with
//! [`Wal::purge_to`]. On restart the server picks the newest snapshot the WAL has a marker
//! for ([`valid_snapshot_markers`], [`Snapshotter::load_matching`]) and replays the log
//! after it with [`Wal::open`].
//!
//! # Key types
//!
//! - [`Wal`]: the writer; [`Recovered`]: what `open` read back; [`WalOptions`]: segment
//!   size, record size limit and the file system.
//! - [`SnapshotMarker`]: the WAL's note of a snapshot's index, term and membership.
//! - [`Snapshotter`]: `<term>-<index>.snap` files.
//! - [`Vfs`]: the file system as a trait; [`sim::SimVfs`] simulates crashes and I/O errors.
//! - [`dump`]: records for people, used by the `retcd-dump-logs` binary.
//! - [`WalError`]: everything that can go wrong, naming the file and offset.
//!
//! The byte layout is specified in `docs/wal-format.md` at the repository root.
//!
//! # Why a crash cannot lose or invent acknowledged data
//!
//! The log is a directory of segments, each a sequence of framed records with a CRC per
//! record. `save` returns after `fdatasync`, so every acknowledged record is durable.
//! Every frame also records how many bytes of its segment were durable when it was
//! written. After a crash, reading stops at the first frame that is not a valid record;
//! if some later valid frame says the bytes there had already been fsynced, they were
//! acknowledged and are now damaged, and opening fails with [`WalError::Corrupt`] naming
//! the file and offset. Otherwise everything from there on was written after the last
//! fsync any surviving record proves, so it was never acknowledged: it is zeroed (so no
//! stale bytes can be read back later) and the log continues. A segment gets its name only
//! after its prologue is durable, and is fsynced before the next one is created, so only
//! the last segment can have a torn tail; segments never shrink below their preallocated
//! size, so a truncated file is corruption too. A write or fsync error poisons the `Wal`:
//! after a failed fsync the kernel may have dropped the data, so nothing is retried and
//! nothing more is acknowledged.

pub mod dump;
mod error;
mod record;
mod segment;
pub mod sim;
mod snap;
mod vfs;
mod wal;

pub use error::{Result, WalError};
pub use record::{Record, RecordType, SnapshotMarker};
pub use snap::{BrokenSnapshot, SnapshotLoad, Snapshotter, snapshot_file_name};
pub use vfs::{FileLock, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, StdVfs, Vfs, VfsFile};
pub use wal::{
    DEFAULT_MAX_RECORD_BYTES, DEFAULT_SEGMENT_SIZE_BYTES, LOCK_FILE, Recovered, TailPosition,
    TornTail, Wal, WalOptions, valid_snapshot_markers,
};
