//! The one error type of the crate.

/// Everything a metadata operation can fail with.
///
/// The variants are chosen by what the caller does next, not by where the failure came from:
/// `AlreadyExists` / `Conflict` are answers (409 or "re-read and retry"), `Unavailable` is "try
/// again later" (503), `Corrupt` / `Sqlite` / `Io` are faults to log, `Config` stops the process
/// at start.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// A create-if-absent found the key already taken.
    #[error("already exists")]
    AlreadyExists,
    /// A compare-and-swap found a different version than expected (another writer won the race).
    #[error("conflict: the stored version differs from the expected one")]
    Conflict,
    /// The store cannot answer now: etcd unreachable, no quorum, or a request timed out.
    ///
    /// For a write this means "outcome unknown": etcd may have logged it before losing its
    /// quorum and commit it once the quorum is back. Callers retry with the same record
    /// (creates then see `AlreadyExists` for their own record only if it landed) or re-read.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    /// A stored value could not be decoded.
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    /// The metadata specification or the store's setup is wrong.
    #[error("metadata configuration: {0}")]
    Config(String),
    /// A file-system operation failed (creating the SQLite directory, for one).
    #[error("metadata I/O: {0}")]
    Io(String),
    /// SQLite reported an error other than a constraint violation.
    #[error("sqlite: {0}")]
    Sqlite(String),
}

impl MetaError {
    /// Whether retrying later may succeed: the broadcaster maps these to 503.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, MetaError::Unavailable(_))
    }
}

impl From<std::io::Error> for MetaError {
    fn from(e: std::io::Error) -> Self {
        MetaError::Io(e.to_string())
    }
}
