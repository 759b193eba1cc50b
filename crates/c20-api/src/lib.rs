//! The wire of c20.
//!
//! - [`etcdserverpb`], [`mvccpb`], [`authpb`]: the etcd v3 API, field for field, so etcd clients
//!   work unchanged.
//! - [`c20peer`]: the node-to-node protocol.
//! - [`ConsistencyLevel`]: the per-call consistency choice.
//! - [`EtcdError`]: every error c20 returns at its edge, with etcd's exact gRPC code and message.
//! - [`net`]: gRPC connections that send many small calls and replies in few system calls.

#![allow(clippy::large_enum_variant)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod c20peer {
    tonic::include_proto!("c20peer");
}

mod consistency;
mod error;
pub mod net;

pub use consistency::ConsistencyLevel;
pub use error::EtcdError;

/// The largest request the server accepts, in bytes (etcd's `--max-request-bytes` default).
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// Slack on top of [`MAX_REQUEST_BYTES`] for the gRPC receive limit, as etcd adds it.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The most operations one txn may hold (etcd's `--max-txn-ops` default).
pub const MAX_TXN_OPS: usize = 128;
