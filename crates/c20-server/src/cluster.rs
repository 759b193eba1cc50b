//! The etcd Cluster service: member list, add, promote, remove, update.

use crate::{config, Shared};
use c20_api::etcdserverpb::cluster_server::Cluster;
use c20_api::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use c20_api::EtcdError;
use c20_raft::PeerNode;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct ClusterService {
    pub(crate) shared: Arc<Shared>,
}

impl ClusterService {
    fn members(&self) -> Vec<Member> {
        self.shared
            .node
            .members()
            .into_iter()
            .map(|m| Member {
                id: m.id,
                name: m.name,
                peer_ur_ls: m.peer_urls,
                client_ur_ls: m.client_urls,
                is_learner: m.is_learner,
            })
            .collect()
    }
}

/// Peer URLs as etcd accepts them: `http://host:port`, at least one.
fn check_urls(urls: &[String]) -> Result<(), EtcdError> {
    if urls.is_empty() || urls.iter().any(|u| config::parse_url(u).is_err()) {
        return Err(EtcdError::MemberBadUrls);
    }
    Ok(())
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let req = request.into_inner();
        check_urls(&req.peer_ur_ls)?;
        let id = config::member_id(&req.peer_ur_ls, &self.shared.token);
        let node = PeerNode {
            name: String::new(),
            peer_urls: req.peer_ur_ls.clone(),
        };
        self.shared
            .node
            .member_add(id, node, req.is_learner)
            .await?;
        // Answer with the membership this member sees once it includes the new one.
        self.shared
            .node
            .wait_membership(|ms| ms.iter().any(|m| m.id == id))
            .await;
        Ok(Response::new(MemberAddResponse {
            header: self.shared.header_without_revision(),
            member: Some(Member {
                id,
                name: String::new(),
                peer_ur_ls: req.peer_ur_ls,
                client_ur_ls: Vec::new(),
                is_learner: req.is_learner,
            }),
            members: self.members(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let id = request.into_inner().id;
        self.shared.node.member_remove(id).await?;
        self.shared
            .node
            .wait_membership(|ms| ms.iter().all(|m| m.id != id))
            .await;
        Ok(Response::new(MemberRemoveResponse {
            header: self.shared.header_without_revision(),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let req = request.into_inner();
        check_urls(&req.peer_ur_ls)?;
        self.shared
            .node
            .member_update(req.id, req.peer_ur_ls.clone())
            .await?;
        self.shared
            .node
            .wait_membership(|ms| {
                ms.iter()
                    .any(|m| m.id == req.id && m.peer_urls == req.peer_ur_ls)
            })
            .await;
        Ok(Response::new(MemberUpdateResponse {
            header: self.shared.header_without_revision(),
            members: self.members(),
        }))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.shared.node.read_barrier().await?;
        }
        Ok(Response::new(MemberListResponse {
            header: self.shared.header_without_revision(),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let id = request.into_inner().id;
        self.shared.node.member_promote(id).await?;
        self.shared
            .node
            .wait_membership(|ms| ms.iter().any(|m| m.id == id && !m.is_learner))
            .await;
        Ok(Response::new(MemberPromoteResponse {
            header: self.shared.header_without_revision(),
            members: self.members(),
        }))
    }
}
