//! The types c20 replicates through Raft, and the openraft type configuration.

use c20_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse, PutRequest,
    PutResponse, TxnRequest, TxnResponse,
};
use c20_api::EtcdError;
use c20_storage::{WriteOp, WriteResult};
use prost::Message;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A member as Raft knows it: how peers reach it. Client URLs and the name are published through
/// the log after start (see [`Command::PublishMember`]), as etcd does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    pub name: String,
    pub peer_urls: Vec<String>,
}

openraft::declare_raft_types!(
    /// c20's Raft: standard one-leader-per-term ids (this fixes the on-disk vote and log id format).
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = u64,
        Node = PeerNode,
        LeaderId = openraft::impls::leader_id_std::LeaderId<Self::Term, Self::NodeId>,
        AsyncRuntime = crate::rt::C20Runtime,
);

pub type NodeId = u64;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, Vec<u8>>;

/// Published attributes of a member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttrs {
    pub name: String,
    pub client_urls: Vec<String>,
}

/// One replicated request: an optional request id (0 = none) and what to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Chosen by the proposing member; lets it learn when its entry reached its own log.
    pub id: u64,
    pub op: Op,
}

/// The operation of a [`Command`]. KV requests travel as their etcd protobuf encoding so that
/// the log holds exactly what the client asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    Put(#[serde(with = "serde_bytes")] Vec<u8>),
    DeleteRange(#[serde(with = "serde_bytes")] Vec<u8>),
    Txn(#[serde(with = "serde_bytes")] Vec<u8>),
    Compact(#[serde(with = "serde_bytes")] Vec<u8>),
    PublishMember {
        id: NodeId,
        attrs: MemberAttrs,
    },
    /// Several client requests in one log entry, applied in order (never nested).
    Batch(Vec<Command>),
    // New variants go last: postcard encodes a variant by its position, and the log keeps it.
    LeaseGrant(#[serde(with = "serde_bytes")] Vec<u8>),
    LeaseRevoke(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.op {
            Op::Put(b) => write!(f, "put({} bytes)", b.len()),
            Op::DeleteRange(b) => write!(f, "delete_range({} bytes)", b.len()),
            Op::Txn(b) => write!(f, "txn({} bytes)", b.len()),
            Op::Compact(b) => write!(f, "compact({} bytes)", b.len()),
            Op::LeaseGrant(b) => write!(f, "lease_grant({} bytes)", b.len()),
            Op::LeaseRevoke(b) => write!(f, "lease_revoke({} bytes)", b.len()),
            Op::PublishMember { id, attrs } => {
                write!(f, "publish_member({id:x}, {})", attrs.name)
            }
            Op::Batch(cmds) => write!(f, "batch({})", cmds.len()),
        }
    }
}

impl Command {
    pub fn from_op(op: &WriteOp) -> Command {
        let op = match op {
            WriteOp::Put(r) => Op::Put(r.encode_to_vec()),
            WriteOp::DeleteRange(r) => Op::DeleteRange(r.encode_to_vec()),
            WriteOp::Txn(r) => Op::Txn(r.encode_to_vec()),
            WriteOp::Compact(r) => Op::Compact(r.encode_to_vec()),
            WriteOp::LeaseGrant(r) => Op::LeaseGrant(r.encode_to_vec()),
            WriteOp::LeaseRevoke(r) => Op::LeaseRevoke(r.encode_to_vec()),
        };
        Command { id: 0, op }
    }

    /// The leader's revoke of lease `id`, found expired while it led in `term`: a
    /// `LeaseRevokeRequest` with `term` in an extra field ([`ExpiryRevoke`]). It revokes only
    /// when applied from an entry of that term (docs/FORMATS.md).
    pub fn expiry_revoke(id: i64, term: u64) -> Command {
        let body = ExpiryRevoke {
            id,
            term: Some(term),
        };
        Command {
            id: 0,
            op: Op::LeaseRevoke(body.encode_to_vec()),
        }
    }

    /// The term a [`Command::expiry_revoke`] was decided in; `None` for any other command,
    /// a client's revoke included.
    pub fn expiry_term(&self) -> Option<u64> {
        match &self.op {
            Op::LeaseRevoke(b) => ExpiryRevoke::decode(b.as_slice()).ok()?.term,
            _ => None,
        }
    }

    pub fn publish(id: NodeId, attrs: MemberAttrs) -> Command {
        Command {
            id: 0,
            op: Op::PublishMember { id, attrs },
        }
    }

    /// Size of the request body in bytes (what the request size limit applies to).
    pub fn body_len(&self) -> usize {
        match &self.op {
            Op::Put(b)
            | Op::DeleteRange(b)
            | Op::Txn(b)
            | Op::Compact(b)
            | Op::LeaseGrant(b)
            | Op::LeaseRevoke(b) => b.len(),
            Op::PublishMember { .. } => 0,
            Op::Batch(cmds) => cmds.iter().map(Command::body_len).sum(),
        }
    }

    /// The KV operation this command carries, if it is one. A body that does not decode is a
    /// corrupt log entry; the caller treats it as an invariant violation.
    pub fn to_op(&self) -> Option<Result<WriteOp, prost::DecodeError>> {
        Some(match &self.op {
            Op::Put(b) => PutRequest::decode(b.as_slice()).map(WriteOp::Put),
            Op::DeleteRange(b) => {
                DeleteRangeRequest::decode(b.as_slice()).map(WriteOp::DeleteRange)
            }
            Op::Txn(b) => TxnRequest::decode(b.as_slice()).map(WriteOp::Txn),
            Op::Compact(b) => CompactionRequest::decode(b.as_slice()).map(WriteOp::Compact),
            Op::LeaseGrant(b) => LeaseGrantRequest::decode(b.as_slice()).map(WriteOp::LeaseGrant),
            Op::LeaseRevoke(b) => {
                LeaseRevokeRequest::decode(b.as_slice()).map(WriteOp::LeaseRevoke)
            }
            Op::PublishMember { .. } | Op::Batch(_) => return None,
        })
    }
}

/// The body of [`Command::expiry_revoke`]: field 1 is `LeaseRevokeRequest`'s `ID`, so a member
/// that does not know field 1000 reads a plain revoke (and revokes whatever the term).
#[derive(Clone, PartialEq, prost::Message)]
struct ExpiryRevoke {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(uint64, optional, tag = "1000")]
    term: Option<u64>,
}

/// What applying a command produced, protobuf-encoded so it can cross to a forwarding peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Put(#[serde(with = "serde_bytes")] Vec<u8>),
    DeleteRange(#[serde(with = "serde_bytes")] Vec<u8>),
    Txn(#[serde(with = "serde_bytes")] Vec<u8>),
    Compact(#[serde(with = "serde_bytes")] Vec<u8>),
    Published,
    Error(EtcdError),
    /// One reply per request of an [`Op::Batch`], in order.
    Batch(Vec<Reply>),
    // New variants go last (see [`Op`]).
    LeaseGrant(#[serde(with = "serde_bytes")] Vec<u8>),
    LeaseRevoke(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl Reply {
    pub fn from_result(r: Result<WriteResult, EtcdError>) -> Reply {
        match r {
            Ok(WriteResult::Put(r)) => Reply::Put(r.encode_to_vec()),
            Ok(WriteResult::DeleteRange(r)) => Reply::DeleteRange(r.encode_to_vec()),
            Ok(WriteResult::Txn(r)) => Reply::Txn(r.encode_to_vec()),
            Ok(WriteResult::Compact(r)) => Reply::Compact(r.encode_to_vec()),
            Ok(WriteResult::LeaseGrant(r)) => Reply::LeaseGrant(r.encode_to_vec()),
            Ok(WriteResult::LeaseRevoke(r)) => Reply::LeaseRevoke(r.encode_to_vec()),
            Err(e) => Reply::Error(e),
        }
    }

    pub fn into_result(self) -> Result<WriteResult, EtcdError> {
        let bad = |e: prost::DecodeError| EtcdError::Internal(format!("bad reply: {e}"));
        match self {
            Reply::Put(b) => PutResponse::decode(b.as_slice())
                .map(WriteResult::Put)
                .map_err(bad),
            Reply::DeleteRange(b) => DeleteRangeResponse::decode(b.as_slice())
                .map(WriteResult::DeleteRange)
                .map_err(bad),
            Reply::Txn(b) => TxnResponse::decode(b.as_slice())
                .map(WriteResult::Txn)
                .map_err(bad),
            Reply::Compact(b) => CompactionResponse::decode(b.as_slice())
                .map(WriteResult::Compact)
                .map_err(bad),
            Reply::LeaseGrant(b) => LeaseGrantResponse::decode(b.as_slice())
                .map(WriteResult::LeaseGrant)
                .map_err(bad),
            Reply::LeaseRevoke(b) => LeaseRevokeResponse::decode(b.as_slice())
                .map(WriteResult::LeaseRevoke)
                .map_err(bad),
            Reply::Published | Reply::Batch(_) => Err(EtcdError::Internal("not a KV reply".into())),
            Reply::Error(e) => Err(e),
        }
    }
}
