//! An in-memory backend for tests: committed data is an immutable image behind an `Arc`.
//!
//! A write transaction copies the image's bucket pointers and clones a bucket the first time
//! it writes to it; commit swaps the image. Readers keep the image they started with, which
//! gives the same snapshot isolation as redb. Nothing is durable.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use crate::{Backend, BackendError, Bucket, ReadTx, Visitor, WriteTx};

type BucketMap = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Clone, Default)]
struct Image {
    buckets: [Arc<BucketMap>; Bucket::COUNT],
}

impl Image {
    fn bucket(&self, bucket: Bucket) -> &BucketMap {
        &self.buckets[bucket.index()]
    }

    fn scan(&self, bucket: Bucket, start: &[u8], end: Option<&[u8]>, visit: Visitor<'_>) {
        if end.is_some_and(|end| end <= start) {
            return;
        }
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        for (key, value) in self
            .bucket(bucket)
            .range::<[u8], _>((Bound::Included(start), upper))
        {
            if visit(key, value).is_break() {
                return;
            }
        }
    }
}

#[derive(Default)]
struct Shared {
    committed: RwLock<Arc<Image>>,
    writer: Mutex<()>,
    fail_next_commit: AtomicBool,
}

/// In-memory [`Backend`]. Clones share one database, so dropping every user of one clone
/// and opening a new store on another behaves like a process restart with a clean shutdown.
#[derive(Clone, Default)]
pub struct MemBackend {
    shared: Arc<Shared>,
}

impl MemBackend {
    /// An empty database.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next [`WriteTx::commit`] fail with [`BackendError::Injected`] and discard its
    /// writes, as a failed fsync would.
    pub fn fail_next_commit(&self) {
        self.shared.fail_next_commit.store(true, Ordering::SeqCst);
    }

    fn committed(&self) -> Arc<Image> {
        Arc::clone(
            &self
                .shared
                .committed
                .read()
                .expect("mem backend lock poisoned"),
        )
    }
}

/// Read transaction of [`MemBackend`].
pub struct MemReadTx {
    image: Arc<Image>,
}

impl ReadTx for MemReadTx {
    fn get(&self, bucket: Bucket, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.image.bucket(bucket).get(key).cloned())
    }

    fn scan(
        &self,
        bucket: Bucket,
        start: &[u8],
        end: Option<&[u8]>,
        visit: Visitor<'_>,
    ) -> Result<(), BackendError> {
        self.image.scan(bucket, start, end, visit);
        Ok(())
    }
}

/// Write transaction of [`MemBackend`]; holds the writer lock until dropped.
pub struct MemWriteTx<'a> {
    shared: &'a Shared,
    _writer: MutexGuard<'a, ()>,
    image: Image,
}

impl ReadTx for MemWriteTx<'_> {
    fn get(&self, bucket: Bucket, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.image.bucket(bucket).get(key).cloned())
    }

    fn scan(
        &self,
        bucket: Bucket,
        start: &[u8],
        end: Option<&[u8]>,
        visit: Visitor<'_>,
    ) -> Result<(), BackendError> {
        self.image.scan(bucket, start, end, visit);
        Ok(())
    }
}

impl WriteTx for MemWriteTx<'_> {
    fn set_durable(&mut self, _durable: bool) -> Result<(), BackendError> {
        Ok(())
    }

    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> Result<(), BackendError> {
        Arc::make_mut(&mut self.image.buckets[bucket.index()]).insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&mut self, bucket: Bucket, key: &[u8]) -> Result<bool, BackendError> {
        if !self.image.bucket(bucket).contains_key(key) {
            return Ok(false);
        }
        Ok(Arc::make_mut(&mut self.image.buckets[bucket.index()])
            .remove(key)
            .is_some())
    }

    fn clear(&mut self, bucket: Bucket) -> Result<(), BackendError> {
        self.image.buckets[bucket.index()] = Arc::default();
        Ok(())
    }

    fn commit(self) -> Result<(), BackendError> {
        if self.shared.fail_next_commit.swap(false, Ordering::SeqCst) {
            return Err(BackendError::Injected("commit"));
        }
        *self
            .shared
            .committed
            .write()
            .expect("mem backend lock poisoned") = Arc::new(self.image);
        Ok(())
    }
}

impl Backend for MemBackend {
    type ReadTx<'a> = MemReadTx;
    type WriteTx<'a> = MemWriteTx<'a>;

    fn begin_read(&self) -> Result<MemReadTx, BackendError> {
        Ok(MemReadTx {
            image: self.committed(),
        })
    }

    fn begin_write(&self) -> Result<MemWriteTx<'_>, BackendError> {
        let writer = self
            .shared
            .writer
            .lock()
            .expect("mem backend lock poisoned");
        // Read the image only once the writer lock is held, so no commit can slip in between.
        let image = Image::clone(&self.committed());
        Ok(MemWriteTx {
            shared: &self.shared,
            _writer: writer,
            image,
        })
    }

    fn size_bytes(&self) -> Result<u64, BackendError> {
        let image = self.committed();
        Ok(image
            .buckets
            .iter()
            .flat_map(|bucket| bucket.iter())
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum())
    }

    fn size_in_use_bytes(&self) -> Result<u64, BackendError> {
        self.size_bytes()
    }

    fn defragment(&self, _patience: Duration) -> Result<(), BackendError> {
        // Nothing to reclaim: removed entries are freed by the allocator.
        Ok(())
    }
}
