//! The etcd Maintenance service: status, hashes, backups (Snapshot) and leader moves.

use crate::Shared;
use c20_api::etcdserverpb::maintenance_server::Maintenance;
use c20_api::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use futures::stream::BoxStream;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The etcd API version c20 implements; clients use it to decide which features to use.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// Bytes per message of a Snapshot stream (etcd sends 32 KiB).
const SNAPSHOT_BLOB_BYTES: usize = 32 * 1024;

pub struct MaintenanceService {
    pub(crate) shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        _request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        // c20 raises no etcd alarms (NOSPACE, CORRUPT) yet: the list is truly empty.
        let mut resp = AlarmResponse::default();
        self.shared.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let st = self.shared.node.status();
        let db_size = self.shared.node.state().db_size() as i64;
        let mut resp = StatusResponse {
            header: None,
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: st.leader.unwrap_or(0),
            raft_index: st.last_log_index,
            raft_term: st.term,
            raft_applied_index: st.applied_index,
            errors: st.fatal.into_iter().collect(),
            db_size_in_use: db_size,
            is_learner: st.is_learner,
        };
        self.shared.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn defragment(
        &self,
        _request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(Status::unimplemented(
            "c20: defragment is not supported yet",
        ))
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let (hash, _) = self.shared.node.state().read(|s| s.hash_kv(0))?;
        let mut resp = HashResponse { header: None, hash };
        self.shared.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let rev = request.into_inner().revision;
        let (hash, compact_revision) = self.shared.node.state().read(|s| s.hash_kv(rev))?;
        let mut resp = HashKvResponse {
            header: None,
            hash,
            compact_revision,
        };
        self.shared.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    type SnapshotStream = BoxStream<'static, Result<SnapshotResponse, Status>>;

    async fn snapshot(
        &self,
        _request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        // The backup is cut from this member's store as it is now, like etcd's.
        let node = self.shared.node.clone();
        let (container, revision) =
            tokio::task::spawn_blocking(move || node.state().export_snapshot())
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::internal(format!("snapshot: {e}")))?;
        let backup = c20_storage::snapshot::to_backup(container);
        let mut header = Some(c20_api::etcdserverpb::ResponseHeader {
            revision,
            ..Default::default()
        });
        self.shared.fill_header(&mut header);
        let total = backup.len();
        let backup = Arc::new(backup);
        let stream =
            futures::stream::iter((0..total).step_by(SNAPSHOT_BLOB_BYTES).map(move |start| {
                let end = (start + SNAPSHOT_BLOB_BYTES).min(total);
                Ok(SnapshotResponse {
                    header,
                    remaining_bytes: (total - end) as u64,
                    blob: backup[start..end].to_vec(),
                })
            }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        self.shared.node.move_leader(target).await?;
        let mut resp = MoveLeaderResponse::default();
        self.shared.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn downgrade(
        &self,
        _request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(Status::unimplemented("c20: downgrade is not supported"))
    }
}
