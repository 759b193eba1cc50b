//! The etcd Lease service: grants and revokes go through the log; keep-alives and time-to-live
//! are answered by the leader (a follower asks it).

use crate::Shared;
use c20_api::etcdserverpb::lease_server::Lease;
use c20_api::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

pub struct LeaseService {
    pub(crate) shared: Arc<Shared>,
    /// Turns true when the server stops; keep-alive streams then end.
    pub(crate) stop: watch::Receiver<bool>,
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

/// Keep-alive answers queued for one client before its requests stop being read.
const KEEPALIVE_QUEUE: usize = 16;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let req = request.into_inner();
        let mut resp = self.shared.node.lease_grant(req.ttl, req.id).await?;
        self.shared.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let mut resp = self
            .shared
            .node
            .lease_revoke(request.into_inner().id)
            .await?;
        self.shared.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, mut rx) = mpsc::channel(KEEPALIVE_QUEUE);
        let shared = self.shared.clone();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                let req = tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    msg = inbound.message() => match msg {
                        Ok(Some(req)) => req,
                        Ok(None) | Err(_) => return,
                    },
                };
                let answer = match shared.node.lease_renew(req.id).await {
                    Ok(ttl) => {
                        let mut header = None;
                        shared.fill_header(&mut header);
                        Ok(LeaseKeepAliveResponse {
                            header,
                            id: req.id,
                            ttl,
                        })
                    }
                    Err(e) => Err(Status::from(e)),
                };
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        let out = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(Response::new(Box::pin(out)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = request.into_inner();
        let (granted, remaining, keys) = self.shared.node.lease_time_to_live(req.id).await?;
        let mut header = None;
        self.shared.fill_header(&mut header);
        Ok(Response::new(LeaseTimeToLiveResponse {
            header,
            id: req.id,
            ttl: remaining,
            granted_ttl: granted,
            keys: if req.keys { keys } else { Vec::new() },
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let leases = self
            .shared
            .node
            .leases()
            .into_iter()
            .map(|(id, _)| LeaseStatus { id })
            .collect();
        let mut header = None;
        self.shared.fill_header(&mut header);
        Ok(Response::new(LeaseLeasesResponse { header, leases }))
    }
}
