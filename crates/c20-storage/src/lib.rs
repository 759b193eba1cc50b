//! Durable state of a c20 node.
//!
//! - [`wal`]: the Raft log as a segmented write-ahead log with checksummed records, group commit
//!   (one fsync for many appends) and torn-tail recovery.
//! - [`mvcc`]: the multi-version key-value store with etcd's revision semantics, on redb.
//! - [`disk`]: the file system as a seam: the real one, or a simulated disk that a crash
//!   leaves with unsynced writes lost and the last one torn.
//! - [`meta_file`]: small records (vote, purge point) replaced atomically and durably.
//! - [`snapshot`]: the snapshot container (format byte, zstd compression, checksum).
//! - [`stored_kv`]: one key-value revision as the store keeps it, in a single allocation.
//!
//! Any write or fsync error is final for the object that saw it: it refuses further writes
//! (fail-stop), because after a failed fsync the state of the page cache is unknown.

pub mod disk;
pub mod meta_file;
pub mod mvcc;
pub mod planted;
pub mod snapshot;
pub mod stored_kv;
pub mod wal;

#[cfg(test)]
mod test_faults;

pub use disk::{CrashDamage, Disk, DiskFile, OsDisk, SimDisk};
pub use mvcc::{MvccStore, WriteOp, WriteResult};
pub use wal::{IoFaults, Wal, WalOptions, WalRecovery};

/// One step of splitmix64: small, fast, and plenty for seeded timeouts and simulated faults.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

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
