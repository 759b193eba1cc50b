//! The etcd KV service.

use crate::Shared;
use c20_api::etcdserverpb::kv_server::Kv;
use c20_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use c20_api::{ConsistencyLevel, EtcdError, MAX_REQUEST_BYTES};
use c20_raft::Command;
use c20_storage::mvcc::{validate_delete, validate_put, validate_range, validate_txn};
use c20_storage::{WriteOp, WriteResult};
use std::sync::Arc;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

pub struct KvService {
    pub(crate) shared: Arc<Shared>,
}

/// The gRPC metadata key carrying a `Sequential` session's newest seen revision.
pub const SESSION_REVISION_KEY: &str = "c20-session-revision";

/// The consistency level a request asked for in its metadata, if it did, and its session
/// revision (0 when absent).
fn requested_level(meta: &MetadataMap) -> Result<(Option<ConsistencyLevel>, i64), Status> {
    let level = match meta.get(ConsistencyLevel::METADATA_KEY) {
        None => None,
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| Status::invalid_argument("c20: c20-consistency must be ASCII"))?;
            Some(
                s.parse::<ConsistencyLevel>()
                    .map_err(|e| Status::invalid_argument(format!("c20: {e}")))?,
            )
        }
    };
    let session = match meta.get(SESSION_REVISION_KEY) {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| {
                Status::invalid_argument("c20: c20-session-revision must be an integer")
            })?,
    };
    Ok((level, session))
}

impl KvService {
    /// Replicates `op` at `level` (etcd's behaviour, `Strong`, when the request names none).
    async fn write(
        &self,
        op: WriteOp,
        level: Option<ConsistencyLevel>,
    ) -> Result<WriteResult, Status> {
        let cmd = Command::from_op(&op);
        if cmd.body_len() > MAX_REQUEST_BYTES {
            return Err(EtcdError::RequestTooLarge.into());
        }
        let node = &self.shared.node;
        let level = level.unwrap_or(ConsistencyLevel::Strong);
        // An Eventual put is acknowledged once durable in the leader's log, before its revision
        // is known (the header then carries revision 0). Everything whose answer depends on
        // the result (txn, delete, prev_kv) and any write reaching a follower waits for commit.
        let async_put = matches!(&op, WriteOp::Put(p) if !p.prev_kv);
        if level == ConsistencyLevel::Eventual && async_put && node.status().is_leader {
            match node.write_async(cmd.clone()).await {
                Ok(_) => {
                    return Ok(WriteResult::Put(PutResponse {
                        header: Some(Default::default()),
                        prev_kv: None,
                    }))
                }
                Err(EtcdError::NotLeader) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let level = if level == ConsistencyLevel::Eventual {
            ConsistencyLevel::Quorum
        } else {
            level
        };
        let (reply, _) = node.write(cmd, level, 0).await?;
        Ok(reply.into_result()?)
    }
}

fn unexpected(what: &str) -> Status {
    EtcdError::Internal(format!("unexpected reply to {what}")).into()
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let (level, session) = requested_level(request.metadata())?;
        let req = request.into_inner();
        validate_range(&req)?;
        // etcd's serializable=true is Eventual; its default is Strong; metadata overrides both.
        let level = level.unwrap_or(if req.serializable {
            ConsistencyLevel::Eventual
        } else {
            ConsistencyLevel::Strong
        });
        self.shared.node.read_gate(level, 0, session).await?;
        let mut resp = self.shared.node.state().read(|s| s.range(&req))?;
        self.shared.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let (level, _) = requested_level(request.metadata())?;
        let req = request.into_inner();
        validate_put(&req)?;
        match self.write(WriteOp::Put(req), level).await? {
            WriteResult::Put(mut resp) => {
                self.shared.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("put")),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let (level, _) = requested_level(request.metadata())?;
        let req = request.into_inner();
        validate_delete(&req)?;
        match self.write(WriteOp::DeleteRange(req), level).await? {
            WriteResult::DeleteRange(mut resp) => {
                self.shared.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("delete")),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let (level, _) = requested_level(request.metadata())?;
        let req = request.into_inner();
        validate_txn(&req)?;
        match self.write(WriteOp::Txn(req), level).await? {
            WriteResult::Txn(mut resp) => {
                self.shared.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("txn")),
        }
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let req = request.into_inner();
        match self.write(WriteOp::Compact(req), None).await? {
            WriteResult::Compact(mut resp) => {
                self.shared.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("compact")),
        }
    }
}
