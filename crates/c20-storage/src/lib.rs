//! Durable state of a c20 node.
//!
//! - [`wal`]: the Raft log as a segmented write-ahead log with checksummed records, group commit
//!   (one fsync for many appends) and torn-tail recovery.
//! - [`mvcc`]: the multi-version key-value store with etcd's revision semantics, on redb.
//! - [`meta_file`]: small records (vote, purge point) replaced atomically and durably.
//! - [`snapshot`]: the snapshot container (format byte, zstd compression, checksum).
//!
//! Any write or fsync error is final for the object that saw it: it refuses further writes
//! (fail-stop), because after a failed fsync the state of the page cache is unknown.

pub mod meta_file;
pub mod mvcc;
pub mod planted;
pub mod snapshot;
pub mod wal;

pub use mvcc::{MvccStore, WriteOp, WriteResult};
pub use wal::{IoFaults, Wal, WalOptions, WalRecovery};

/// What can go wrong below the API.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("i/o error: {0}")]
    Io(String),
    #[error("redb: {0}")]
    Redb(String),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("storage stopped after an earlier failure: {0}")]
    Failed(String),
}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        StorageError::Io(e.to_string())
    }
}

impl From<redb::Error> for StorageError {
    fn from(e: redb::Error) -> Self {
        StorageError::Redb(e.to_string())
    }
}
