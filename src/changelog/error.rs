//! Errors of the change log.

use std::path::PathBuf;

/// Everything that can go wrong in a [`ChangeLog`](super::ChangeLog) operation.
#[derive(Debug, thiserror::Error)]
pub enum ChangeLogError {
    /// The storage engine failed (I/O error, corruption, …).
    #[error("change log storage: {0}")]
    Storage(String),
    /// A stored record could not be decoded.
    #[error("change log record {what} is corrupt: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// A path is not relative to the module root (absolute, or contains `..`).
    #[error("path {0:?} is not a plain path relative to the module root")]
    InvalidPath(PathBuf),
    /// A rename that would move a directory below itself, or move the root.
    #[error("cannot rename {from:?} to {to:?}: {why}")]
    InvalidRename {
        from: PathBuf,
        to: PathBuf,
        why: &'static str,
    },
    /// `offset + len` overflows u64.
    #[error("byte range at {offset} of length {len} overflows")]
    InvalidRange { offset: u64, len: u64 },
    /// The chunk size is not a power of two in 1..=2^31.
    #[error("chunk size {0} must be a power of two no larger than 2^31")]
    InvalidChunkSize(u64),
    /// The database was created with another chunk size.
    #[error("change log was created with chunk size {stored}, opened with {requested}")]
    ChunkSizeMismatch { stored: u64, requested: u64 },
    /// Reading random bytes for a generation id failed.
    #[error("reading /dev/urandom: {0}")]
    Random(#[source] std::io::Error),
}

impl From<rocksdb::Error> for ChangeLogError {
    fn from(e: rocksdb::Error) -> Self {
        ChangeLogError::Storage(e.into_string())
    }
}

/// Shorthand used throughout the module.
pub type Result<T> = std::result::Result<T, ChangeLogError>;
