//! The file system seen through a narrow trait, so that tests can swap the real disk for
//! [`crate::sim::SimVfs`], which forgets unsynced bytes and tears the last write when it
//! "crashes", and fails chosen calls on demand.
//!
//! The trait has exactly the calls the WAL and the snapshotter make, with the durability
//! semantics of POSIX spelled out: file contents are durable after `sync_data`/`sync_all` on
//! that file; names (create, rename, remove) are durable after `sync_dir` on their directory.
//!
//! The real file system ([`StdVfs`]) creates what it creates private to the owner, as
//! etcd does: directories `0700` and files `0600` (before the umask, which can only take
//! bits away), so another user never reads the log or a snapshot.

use std::any::Any;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

/// A file system. Implementations must be usable from several threads (the dump tool may
/// read while the server writes).
pub trait Vfs: Send + Sync + fmt::Debug {
    /// Creates `dir` and its missing parents (the real file system: mode `0700`).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names (not paths) of the entries of `dir`, in no particular order.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// The whole contents of a file.
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates `path`, or truncates it if it exists, and opens it for writing (the real
    /// file system: a new file gets mode `0600`).
    fn create_file(&self, path: &Path) -> io::Result<Box<dyn VfsFile>>;
    /// Opens an existing file for writing without changing it.
    fn open_file(&self, path: &Path) -> io::Result<Box<dyn VfsFile>>;
    /// Atomically replaces `to` with `from` (POSIX `rename`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the names in `dir` durable (fsync of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive advisory lock on `path` (created if missing) for as long as the
    /// returned guard lives. `Ok(None)` means someone else holds it.
    fn try_lock(&self, path: &Path) -> io::Result<Option<FileLock>>;
}

/// An open file, written at explicit offsets.
pub trait VfsFile: Send + fmt::Debug {
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Truncates or extends (with zeros) the file.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// fdatasync: contents and the size needed to read them become durable.
    fn sync_data(&mut self) -> io::Result<()>;
    /// fsync: contents and all metadata become durable.
    fn sync_all(&mut self) -> io::Result<()>;
}

/// Holds a lock taken by [`Vfs::try_lock`]; dropping it releases the lock.
pub struct FileLock(#[allow(dead_code)] Box<dyn Any + Send + Sync>);

impl FileLock {
    /// Wraps whatever keeps the lock held (an open file, a guard that clears a flag...).
    pub fn new(holder: Box<dyn Any + Send + Sync>) -> Self {
        FileLock(holder)
    }
}

impl fmt::Debug for FileLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileLock")
    }
}

/// Mode of the directories [`StdVfs`] creates (etcd's `PrivateDirMode`).
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of the files [`StdVfs`] creates (etcd's `PrivateFileMode`).
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// The real file system through `std::fs`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdVfs;

#[derive(Debug)]
struct StdFile(File);

impl Vfs for StdVfs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR_MODE)
            .create(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn create_file(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(PRIVATE_FILE_MODE)
            .open(path)?;
        Ok(Box::new(StdFile(file)))
    }

    fn open_file(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let file = OpenOptions::new().write(true).open(path)?;
        Ok(Box::new(StdFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<FileLock>> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(PRIVATE_FILE_MODE)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(FileLock::new(Box::new(file)))),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
}

impl VfsFile for StdFile {
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.seek(SeekFrom::Start(offset))?;
        self.0.write_all(data)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }
}
