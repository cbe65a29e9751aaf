//! The crate's one error type. Variants are named for what happened, and every variant that
//! concerns a file names it, so an operator can act on the message alone.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the WAL, the snapshot files and the dump tool.
///
/// Only [`WalError::Io`], [`WalError::Poisoned`] and [`WalError::Locked`] can be transient;
/// every other variant describes the contents of the directory and will repeat until an
/// operator acts. None of them may be treated as "nothing was there": the server stops.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An operating system call failed. `op` names the call (`write`, `fsync`, `rename`...).
    #[error("wal: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Bytes on disk that were once durable are not what was written: a CRC mismatch, a
    /// record that cannot be decoded, a missing or damaged segment prologue, or a torn record
    /// followed by records that were fsynced after it. Never repaired automatically.
    #[error("wal: corrupt file {file} at byte offset {offset}: {reason}")]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },

    /// A record was written by a newer (or unknown) format version.
    #[error("wal: file {file} at byte offset {offset}: unsupported record version {version}")]
    UnsupportedVersion {
        file: PathBuf,
        offset: u64,
        version: u8,
    },

    /// The directory holds no WAL segment.
    #[error("wal: no WAL segment in {dir}")]
    NotFound { dir: PathBuf },

    /// `create` was called on a directory that already holds WAL segments.
    #[error("wal: {dir} already holds a WAL")]
    AlreadyExists { dir: PathBuf },

    /// Another writer holds the directory's lock file.
    #[error("wal: {dir} is locked by another writer")]
    Locked { dir: PathBuf },

    /// No segment reaches back to the requested snapshot index (it was purged), or the WAL
    /// holds no snapshot marker for it.
    #[error("wal: no snapshot marker for index {index} term {term} in {dir}")]
    SnapshotNotFound { dir: PathBuf, index: u64, term: u64 },

    /// The WAL has a marker at the requested index but with another term.
    #[error(
        "wal: snapshot marker at index {index} has term {found_term}, expected {expected_term}"
    )]
    SnapshotMismatch {
        index: u64,
        expected_term: u64,
        found_term: u64,
    },

    /// Two segments carry different metadata: files from different members were mixed.
    #[error("wal: metadata in {file} differs from the metadata of earlier segments")]
    MetadataConflict { file: PathBuf },

    /// A record would exceed the configured maximum record size; nothing was written.
    #[error("wal: record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge { len: u64, max: u64 },

    /// An earlier write or fsync failed. The page cache may have dropped the data, so a
    /// retried fsync could report success for bytes that never reached the disk (the
    /// "fsyncgate" lesson): the WAL refuses all further writes and the process must restart
    /// and recover from what is on disk.
    #[error("wal: unusable after an earlier I/O failure: {cause}")]
    Poisoned { cause: String },

    /// A snapshot file name does not follow `<term>-<index>.snap`, or the directory is not
    /// a snapshot directory.
    #[error("snap: bad snapshot file {file}: {reason}")]
    BadSnapshotFile { file: PathBuf, reason: String },
}

/// The crate's result type.
pub type Result<T, E = WalError> = std::result::Result<T, E>;

/// Attaches the failing call and path to an `io::Error`.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> WalError {
    let path = path.into();
    move |source| WalError::Io { op, path, source }
}
