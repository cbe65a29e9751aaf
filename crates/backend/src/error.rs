//! Storage errors.

/// Everything that can go wrong in the backend.
///
/// None of these is a client's fault. The apply layer treats every variant as fatal: it stops
/// applying rather than acknowledge a write that may not be stored.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The operating system reported an I/O failure (including a failed fsync).
    #[error("backend I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Stored bytes fail a checksum or cannot be decoded.
    #[error("backend data is corrupted: {0}")]
    Corrupted(String),
    /// Another process (or handle) holds the database file open.
    #[error("backend database file is already open")]
    AlreadyOpen,
    /// A value exceeds what the storage engine can hold in one entry.
    #[error("backend value of {len} bytes is too large")]
    ValueTooLarge {
        /// Size of the rejected value.
        len: usize,
    },
    /// An operation that needs exclusive use of the database found transactions open.
    #[error("backend is busy: {0}")]
    Busy(&'static str),
    /// A snapshot image is truncated, malformed or fails its checksum.
    #[error("invalid snapshot image: {0}")]
    InvalidSnapshot(String),
    /// Any other failure reported by the storage engine.
    #[error("backend storage engine error: {0}")]
    Engine(String),
    /// A failure injected by a test through the in-memory backend.
    #[error("injected backend fault: {0}")]
    Injected(&'static str),
}
