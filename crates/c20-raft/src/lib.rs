//! Consensus for c20.
//!
//! openraft (pinned) runs behind [`RaftNode`], c20's own interface: `propose`, `read_barrier`,
//! `status`, `members`. The log is stored in c20's WAL ([`log_store`]), the state machine is the
//! MVCC store ([`state_machine`]), and peers talk over gRPC ([`network`]).

pub mod batcher;
pub mod clock;
pub mod consistency;
mod forward;
pub mod lease;
pub mod log_store;
pub mod membership;
pub mod network;
pub mod node;
pub mod rt;
pub mod snapshot_transfer;
pub mod state_machine;
pub mod transport;
pub mod types;

pub use batcher::{BatchConfig, ProposalCounts};
pub use consistency::PendingWrite;
pub use lease::{LeaseAnswer, LeaseAsk, MAX_LEASE_TTL};
pub use membership::ask_cluster_id;
pub use node::{KvFaults, MemberInfo, NodeStatus, RaftNode, RaftNodeConfig};
pub use state_machine::CheckpointPolicy;
pub use transport::{LinkFaults, LocalRouter, Transport};
pub use types::{Command, MemberAttrs, NodeId, Op, PeerNode, Reply};
