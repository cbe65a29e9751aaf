//! The production backend on redb: one redb table per [`Bucket`], durable commits.
//!
//! Durability: by default every write transaction commits with `redb::Durability::Immediate`,
//! so [`WriteTx::commit`] returns only after the data and the new commit header are fsynced.
//! redb's default one-phase commit with checksums is used: after a crash the file opens at the
//! last commit whose checksums verify, which is the last durable commit that returned `Ok`.
//! The apply layer batches many Raft entries into one transaction to amortise that fsync.
//!
//! A transaction may opt out with [`WriteTx::set_durable`]`(false)`: its commit is then
//! visible to readers at once but reaches the disk only with the next durable commit. The
//! server uses this for ordinary apply batches because the Raft WAL already holds every
//! applied entry durably, and replays whatever a crash took from the backend (etcd's
//! backend likewise commits on a timer, not per entry). A crash loses whole non-durable
//! commits after the last durable one, never part of a commit.

use std::ops::Bound;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::{Backend, BackendError, Bucket, ReadTx, Visitor, WriteTx};

/// Mode of a new database file: read and write for the owner only.
const PRIVATE_FILE_MODE: u32 = 0o600;

type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;

const fn table(bucket: Bucket) -> Table {
    TableDefinition::new(bucket.name())
}

fn engine_error(e: impl Into<redb::Error>) -> BackendError {
    match e.into() {
        redb::Error::Io(e) => BackendError::Io(e),
        redb::Error::Corrupted(detail) => BackendError::Corrupted(detail),
        redb::Error::ValueTooLarge(len) => BackendError::ValueTooLarge { len },
        redb::Error::DatabaseAlreadyOpen => BackendError::AlreadyOpen,
        redb::Error::TransactionInProgress => BackendError::Busy("a transaction is open"),
        other => BackendError::Engine(other.to_string()),
    }
}

/// Tuning of the redb backend.
#[derive(Clone, Debug)]
pub struct RedbConfig {
    /// Page cache size in bytes. Default 256 MiB: enough to keep the index pages of a
    /// database near etcd's default 2 GiB quota hot.
    pub cache_size_bytes: usize,
}

impl Default for RedbConfig {
    fn default() -> Self {
        Self {
            cache_size_bytes: 256 * 1024 * 1024,
        }
    }
}

/// [`Backend`] on a redb database file.
pub struct RedbBackend {
    path: PathBuf,
    // The write lock is taken only by defragment, which needs `&mut Database`; transactions
    // take the read lock just long enough to begin.
    db: RwLock<redb::Database>,
}

impl RedbBackend {
    /// Opens the database at `path`, creating it if it does not exist, and makes sure every
    /// bucket exists. After a crash, redb recovers to the last durable commit here.
    ///
    /// Every open verifies the checksum of every page of the committed trees, not only the
    /// opens after a crash: redb trusts a cleanly closed file, and on pages damaged since it
    /// panics (unreachable code, out-of-bounds indexes) instead of returning an error. The
    /// check costs one read of the file; the MVCC store reads all of its keys on open anyway.
    /// A damaged file is then rolled back to an older commit that verifies (the WAL replays
    /// the rest) or reported as [`BackendError::Corrupted`].
    ///
    /// A new file is created private to its owner (mode `0600` before the umask, etcd's
    /// `PrivateFileMode` for its bbolt file); an existing file keeps its mode.
    pub fn open(path: impl AsRef<Path>, config: &RedbConfig) -> Result<Self, BackendError> {
        let path = path.as_ref().to_path_buf();
        // Opened here rather than by redb, which would create the file with the default
        // mode (readable by everyone under the usual umask).
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(PRIVATE_FILE_MODE)
            .open(&path)?;
        let db = redb::Database::builder()
            .set_cache_size(config.cache_size_bytes)
            .set_check_integrity_on_open(true)
            .create_with_backend(redb::backends::FileBackend::new(file).map_err(engine_error)?)
            .map_err(engine_error)?;
        let backend = Self {
            path,
            db: RwLock::new(db),
        };
        let tx = backend.begin_write()?;
        for bucket in Bucket::ALL {
            tx.tx.open_table(table(bucket)).map_err(engine_error)?;
        }
        tx.commit()?;
        Ok(backend)
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db(&self) -> std::sync::RwLockReadGuard<'_, redb::Database> {
        self.db.read().expect("redb backend lock poisoned")
    }
}

type KeyBounds<'k> = (Bound<&'k [u8]>, Bound<&'k [u8]>);

fn bounds<'k>(start: &'k [u8], end: Option<&'k [u8]>) -> Option<KeyBounds<'k>> {
    if end.is_some_and(|end| end <= start) {
        return None;
    }
    Some((
        Bound::Included(start),
        end.map_or(Bound::Unbounded, Bound::Excluded),
    ))
}

fn get_from_table<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    key: &[u8],
) -> Result<Option<Vec<u8>>, BackendError> {
    Ok(table
        .get(key)
        .map_err(engine_error)?
        .map(|v| v.value().to_vec()))
}

fn scan_table<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    start: &[u8],
    end: Option<&[u8]>,
    visit: Visitor<'_>,
) -> Result<(), BackendError> {
    let Some(range) = bounds(start, end) else {
        return Ok(());
    };
    for entry in table.range::<&[u8]>(range).map_err(engine_error)? {
        let (key, value) = entry.map_err(engine_error)?;
        if visit(key.value(), value.value()).is_break() {
            break;
        }
    }
    Ok(())
}

/// Read transaction of [`RedbBackend`].
pub struct RedbReadTx {
    tx: redb::ReadTransaction,
}

impl RedbReadTx {
    fn table(
        &self,
        bucket: Bucket,
    ) -> Result<redb::ReadOnlyTable<&'static [u8], &'static [u8]>, BackendError> {
        // Every bucket is created on open, so a missing table means a damaged file.
        self.tx.open_table(table(bucket)).map_err(engine_error)
    }
}

impl ReadTx for RedbReadTx {
    fn get(&self, bucket: Bucket, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        get_from_table(&self.table(bucket)?, key)
    }

    fn scan(
        &self,
        bucket: Bucket,
        start: &[u8],
        end: Option<&[u8]>,
        visit: Visitor<'_>,
    ) -> Result<(), BackendError> {
        scan_table(&self.table(bucket)?, start, end, visit)
    }
}

/// Write transaction of [`RedbBackend`].
pub struct RedbWriteTx {
    tx: redb::WriteTransaction,
}

impl RedbWriteTx {
    fn table(
        &self,
        bucket: Bucket,
    ) -> Result<redb::Table<'_, &'static [u8], &'static [u8]>, BackendError> {
        self.tx.open_table(table(bucket)).map_err(engine_error)
    }
}

impl ReadTx for RedbWriteTx {
    fn get(&self, bucket: Bucket, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        get_from_table(&self.table(bucket)?, key)
    }

    fn scan(
        &self,
        bucket: Bucket,
        start: &[u8],
        end: Option<&[u8]>,
        visit: Visitor<'_>,
    ) -> Result<(), BackendError> {
        scan_table(&self.table(bucket)?, start, end, visit)
    }
}

impl WriteTx for RedbWriteTx {
    fn set_durable(&mut self, durable: bool) -> Result<(), BackendError> {
        let durability = if durable {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        self.tx
            .set_durability(durability)
            .map_err(|e| BackendError::Engine(e.to_string()))
    }

    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> Result<(), BackendError> {
        self.table(bucket)?
            .insert(key, value)
            .map_err(engine_error)?;
        Ok(())
    }

    fn delete(&mut self, bucket: Bucket, key: &[u8]) -> Result<bool, BackendError> {
        Ok(self
            .table(bucket)?
            .remove(key)
            .map_err(engine_error)?
            .is_some())
    }

    fn clear(&mut self, bucket: Bucket) -> Result<(), BackendError> {
        self.tx.delete_table(table(bucket)).map_err(engine_error)?;
        self.table(bucket)?;
        Ok(())
    }

    fn commit(self) -> Result<(), BackendError> {
        self.tx.commit().map_err(engine_error)
    }
}

impl Backend for RedbBackend {
    type ReadTx<'a> = RedbReadTx;
    type WriteTx<'a> = RedbWriteTx;

    fn begin_read(&self) -> Result<RedbReadTx, BackendError> {
        Ok(RedbReadTx {
            tx: self.db().begin_read().map_err(engine_error)?,
        })
    }

    fn begin_write(&self) -> Result<RedbWriteTx, BackendError> {
        let mut tx = self.db().begin_write().map_err(engine_error)?;
        tx.set_durability(redb::Durability::Immediate)
            .map_err(engine_error)?;
        Ok(RedbWriteTx { tx })
    }

    fn size_bytes(&self) -> Result<u64, BackendError> {
        Ok(std::fs::metadata(&self.path)?.len())
    }

    fn size_in_use_bytes(&self) -> Result<u64, BackendError> {
        let total = self.size_bytes()?;
        let tx = self.db().begin_write().map_err(engine_error)?;
        let stats = tx.stats().map_err(engine_error)?;
        tx.abort().map_err(engine_error)?;
        Ok(total.saturating_sub(stats.fragmented_bytes()))
    }

    fn defragment(&self, patience: Duration) -> Result<(), BackendError> {
        // Holding the lock for writing keeps new transactions from beginning; those
        // already open (short reads, as a rule) end by themselves meanwhile.
        let mut db = self.db.write().expect("redb backend lock poisoned");
        let deadline = Instant::now() + patience;
        // redb moves pages towards the start of the file in rounds; it reports `false` once
        // a round could not shrink the file any further.
        loop {
            match db.compact().map_err(engine_error) {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(BackendError::Busy(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: defragment waits (within its patience) for a reader that is open when it
    // starts, and no transaction begins while it runs.
    #[test]
    fn defragment_waits_for_open_readers() {
        let dir = tempfile::tempdir().unwrap();
        let backend = RedbBackend::open(dir.path().join("db"), &RedbConfig::default()).unwrap();
        let reader = backend.begin_read().unwrap();
        std::thread::scope(|s| {
            let defrag = s.spawn(|| backend.defragment(Duration::from_secs(30)));
            // Once defragment holds the lock, nothing may begin; only then let go.
            let deadline = Instant::now() + Duration::from_secs(10);
            while backend.db.try_read().is_ok() {
                assert!(Instant::now() < deadline, "defragment never took the lock");
                std::thread::yield_now();
            }
            assert!(
                !defrag.is_finished(),
                "defragment ended under an open reader"
            );
            drop(reader);
            defrag.join().unwrap().unwrap();
        });
        backend.begin_read().unwrap();
    }

    // Goal: a new database file is private to its owner (no group or other bit, whatever
    // the umask), also after writes and a defragmentation.
    #[test]
    fn a_new_database_file_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let backend = RedbBackend::open(&path, &RedbConfig::default()).unwrap();
        let mut tx = backend.begin_write().unwrap();
        tx.put(Bucket::Key, b"k", b"v").unwrap();
        tx.commit().unwrap();
        backend.defragment(Duration::from_secs(5)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o600, 0, "mode {mode:o}");
        drop(backend);
        RedbBackend::open(&path, &RedbConfig::default()).unwrap();
    }

    #[test]
    fn a_missing_bucket_table_is_reported_not_treated_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let backend = RedbBackend::open(dir.path().join("db"), &RedbConfig::default()).unwrap();
        {
            let tx = backend.begin_write().unwrap();
            assert!(tx.tx.delete_table(table(Bucket::Lease)).unwrap());
            tx.commit().unwrap();
        }
        let rtx = backend.begin_read().unwrap();
        let err = rtx.get(Bucket::Lease, b"x").unwrap_err();
        assert!(matches!(err, BackendError::Engine(_)), "{err:?}");
    }
}
