//! c20 as a library.
//!
//! - [`server`]: run a member inside your process ([`server::Server::start`]).
//! - [`client`]: talk to any c20 (or etcd) cluster.
//! - [`api`]: the etcd v3 wire types, [`ConsistencyLevel`] and etcd's errors.

pub use c20_api as api;
pub use c20_api::{ConsistencyLevel, EtcdError};
pub use c20_client as client;
pub use c20_server as server;
