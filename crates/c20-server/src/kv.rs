//! The etcd KV service.

use crate::Shared;
use c20_api::etcdserverpb::kv_server::Kv;
use c20_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use c20_api::{EtcdError, MAX_REQUEST_BYTES};
use c20_raft::Command;
use c20_storage::mvcc::{validate_delete, validate_put, validate_range, validate_txn};
use c20_storage::{WriteOp, WriteResult};
use prost::Message;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct KvService {
    pub(crate) shared: Arc<Shared>,
}

impl KvService {
    async fn write(&self, op: WriteOp) -> Result<WriteResult, Status> {
        let cmd = Command::from_op(&op);
        if cmd.body_len() > MAX_REQUEST_BYTES {
            return Err(EtcdError::RequestTooLarge.into());
        }
        let reply = self.shared.node.propose(cmd).await?;
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
        let req = request.into_inner();
        validate_range(&req)?;
        if !req.serializable {
            self.shared.node.read_barrier().await?;
        }
        let mut resp = self.shared.node.state().read(|s| s.range(&req))?;
        self.shared.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = request.into_inner();
        validate_put(&req)?;
        match self.write(WriteOp::Put(req)).await? {
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
        let req = request.into_inner();
        validate_delete(&req)?;
        match self.write(WriteOp::DeleteRange(req)).await? {
            WriteResult::DeleteRange(mut resp) => {
                self.shared.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("delete")),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = request.into_inner();
        validate_txn(&req)?;
        if req.encoded_len() > MAX_REQUEST_BYTES {
            return Err(EtcdError::RequestTooLarge.into());
        }
        match self.write(WriteOp::Txn(req)).await? {
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
        match self.write(WriteOp::Compact(req)).await? {
            WriteResult::Compact(mut resp) => {
                self.shared.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("compact")),
        }
    }
}
