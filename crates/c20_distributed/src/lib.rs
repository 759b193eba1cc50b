//! c20 as a library.
//!
//! - [`LocalReplicator`]: an n-replica cluster inside this process, on the same node code as
//!   `c20 serve`, with per-call [`ConsistencyLevel`]s.
//! - [`server`]: run a member inside your process ([`server::Server::start`]).
//! - [`client`]: talk to any c20 (or etcd) cluster.
//! - [`api`]: the etcd v3 wire types and etcd's errors.
//!
//! ```no_run
//! use c20_distributed::{ConsistencyLevel, LocalReplicator};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let replicator = LocalReplicator::new(5, 3, 3);
//! replicator.replicate("key", "value", ConsistencyLevel::Quorum).await?;
//! let v: Option<Vec<u8>> = replicator.read("key", ConsistencyLevel::Strong).await?;
//! assert_eq!(v.as_deref(), Some(&b"value"[..]));
//! # Ok(()) }
//! ```

mod replicator;
mod watch;

pub use c20_api as api;
pub use c20_api::{ConsistencyLevel, EtcdError};
pub use c20_client as client;
pub use c20_raft::rt::seed_thread_rng as seed_raft_rng;
pub use c20_server as server;
pub use c20_server::tuning::{disable_transparent_huge_pages, transparent_huge_pages_disabled};
pub use c20_storage::planted;
pub use c20_storage::{splitmix, CrashDamage};
pub use replicator::{
    replica_runtime, validate, Builder, ConfigError, EventualWrite, LocalReplicator, ReadResult,
    Session, WriteAck,
};
pub use watch::Watcher;
