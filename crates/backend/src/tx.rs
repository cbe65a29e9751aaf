//! The storage traits every backend implements.

use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::time::Duration;

use crate::snapshot::{self, SnapshotInfo};
use crate::{BackendError, Bucket};

/// Callback of [`ReadTx::scan`]: gets each key and value, returns whether to go on.
pub type Visitor<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> ControlFlow<()>;

/// A consistent, read-only view of every bucket.
///
/// A read transaction sees exactly the data of the last commit that finished before it began,
/// however many commits happen while it is open.
pub trait ReadTx {
    /// The value stored under `key`, if any.
    fn get(&self, bucket: Bucket, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError>;

    /// Calls `visit` for every entry with `start <= key < end` in ascending key order, until
    /// `visit` returns [`ControlFlow::Break`]. `end == None` means "to the end of the bucket";
    /// an `end <= start` visits nothing.
    ///
    /// `visit` must not use this transaction: engines keep the bucket open while visiting.
    fn scan(
        &self,
        bucket: Bucket,
        start: &[u8],
        end: Option<&[u8]>,
        visit: Visitor<'_>,
    ) -> Result<(), BackendError>;

    /// Streams every bucket of this view into `out` as a snapshot image
    /// (format in `docs/storage-format.md`). The image is consistent because the view is.
    fn write_snapshot(&self, out: &mut dyn Write) -> Result<SnapshotInfo, BackendError> {
        snapshot::write_image(self, out)
    }
}

/// The single open write transaction: reads see its own uncommitted writes.
///
/// Dropping a write transaction without [`WriteTx::commit`] discards all of its writes.
pub trait WriteTx: ReadTx {
    /// Inserts or replaces `key`.
    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> Result<(), BackendError>;

    /// Removes `key`; returns whether it was present.
    fn delete(&mut self, bucket: Bucket, key: &[u8]) -> Result<bool, BackendError>;

    /// Removes every entry of `bucket`.
    fn clear(&mut self, bucket: Bucket) -> Result<(), BackendError>;

    /// Chooses whether [`WriteTx::commit`] waits for the data to be on stable storage
    /// (`true`, the default) or only publishes it to readers (`false`). A non-durable
    /// commit becomes durable with the next durable one; until then a crash discards it
    /// whole. Backends without durability ignore it.
    fn set_durable(&mut self, durable: bool) -> Result<(), BackendError>;

    /// Makes every write of this transaction visible to new read transactions, atomically.
    ///
    /// Durability depends on the implementation: the redb backend returns only after the data
    /// is on stable storage (fsync); the in-memory backend has no durability at all.
    fn commit(self) -> Result<(), BackendError>
    where
        Self: Sized;
}

/// A transactional store of ordered byte keys in a fixed set of [`Bucket`]s.
///
/// At most one write transaction is open at a time ([`Backend::begin_write`] waits for the
/// previous one to end); any number of read transactions may be open alongside it.
pub trait Backend: Send + Sync {
    /// Read transaction type.
    type ReadTx<'a>: ReadTx
    where
        Self: 'a;
    /// Write transaction type.
    type WriteTx<'a>: WriteTx
    where
        Self: 'a;

    /// Opens a read transaction on the latest committed data.
    fn begin_read(&self) -> Result<Self::ReadTx<'_>, BackendError>;

    /// Opens the write transaction, waiting until no other write transaction is open.
    fn begin_write(&self) -> Result<Self::WriteTx<'_>, BackendError>;

    /// Bytes the database occupies (the file size for file-backed engines).
    /// Feeds `etcd_mvcc_db_total_size_in_bytes` and `StatusResponse.dbSize`.
    fn size_bytes(&self) -> Result<u64, BackendError>;

    /// Bytes of [`Backend::size_bytes`] not on free pages (`dbSizeInUse`). For redb this
    /// opens a write transaction, so it must not be called by the thread that holds one.
    fn size_in_use_bytes(&self) -> Result<u64, BackendError>;

    /// Returns free space to the file system. Needs exclusive use: no transaction may
    /// begin until it returns, and it waits up to `patience` for those already open to
    /// end, then fails with [`BackendError::Busy`]. A thread that holds a transaction
    /// must not call it (it would wait on itself for `patience`).
    fn defragment(&self, patience: Duration) -> Result<(), BackendError>;

    /// Replaces the whole content of the database with a snapshot image, atomically: on any
    /// error (a truncated or corrupted image included) the database is left unchanged.
    fn restore_snapshot(&self, image: &mut dyn Read) -> Result<SnapshotInfo, BackendError> {
        let mut tx = self.begin_write()?;
        let info = snapshot::restore_image(&mut tx, image)?;
        tx.commit()?;
        Ok(info)
    }
}
