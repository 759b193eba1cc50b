//! Membership changes: etcd's MemberAdd / Promote / Remove / Update on openraft's joint
//! consensus, and what a member does once it has been removed.
//!
//! Only the leader changes membership; any member takes the request and asks the leader
//! (`c20peer.Peer/Admin`), as etcd forwards member requests. A member joining an existing cluster
//! learns the cluster id from a peer with the same call before it starts.

use crate::network::peer_client;
use crate::node::RaftNode;
use crate::transport::Transport;
use crate::types::{NodeId, PeerNode};
use c20_api::c20peer::AskRequest;
use c20_api::EtcdError;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// etcd admits one learner at a time.
pub const MAX_LEARNERS: usize = 1;
/// A learner may be promoted once it holds this share of the leader's log (etcd's rule).
const LEARNER_READY_PERCENT: u64 = 90;

/// A cluster administration request (see the module documentation).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminAsk {
    ClusterId,
    MemberAdd {
        id: NodeId,
        node: PeerNode,
        learner: bool,
    },
    MemberPromote(NodeId),
    MemberRemove(NodeId),
    MemberUpdate {
        id: NodeId,
        peer_urls: Vec<String>,
    },
    /// The leader tells a member it removed (the member may never see the membership entry
    /// without itself: the leader stops replicating to it).
    YouAreRemoved(NodeId),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AdminAnswer {
    ClusterId(u64),
    Done,
}

/// Everything one member asks another through `c20peer.Peer/Ask`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerAsk {
    Lease(crate::lease::LeaseAsk),
    Admin(AdminAsk),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerAnswer {
    Lease(crate::lease::LeaseAnswer),
    Admin(AdminAnswer),
}

/// An openraft error of a membership change, as etcd's error.
fn write_error(
    e: RaftError<crate::types::TypeConfig, ClientWriteError<crate::types::TypeConfig>>,
) -> EtcdError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => EtcdError::NotLeader,
        RaftError::APIError(e) => EtcdError::Internal(format!("membership change: {e}")),
        RaftError::Fatal(f) => EtcdError::StorageFailed(f.to_string()),
    }
}

impl RaftNode {
    /// Adds a member (a learner, or a voter at once) reachable at `node.peer_urls`.
    pub async fn member_add(
        &self,
        id: NodeId,
        node: PeerNode,
        learner: bool,
    ) -> Result<(), EtcdError> {
        self.admin(AdminAsk::MemberAdd { id, node, learner })
            .await
            .map(|_| ())
    }

    /// Makes learner `id` a voter (once it has caught up with the leader).
    pub async fn member_promote(&self, id: NodeId) -> Result<(), EtcdError> {
        self.admin(AdminAsk::MemberPromote(id)).await.map(|_| ())
    }

    /// Removes member `id` (voter or learner) from the cluster.
    pub async fn member_remove(&self, id: NodeId) -> Result<(), EtcdError> {
        self.admin(AdminAsk::MemberRemove(id)).await.map(|_| ())
    }

    /// Changes the peer URLs of member `id`.
    pub async fn member_update(&self, id: NodeId, peer_urls: Vec<String>) -> Result<(), EtcdError> {
        self.admin(AdminAsk::MemberUpdate { id, peer_urls })
            .await
            .map(|_| ())
    }

    /// Whether this member has been removed from the cluster (it then serves nothing).
    pub fn removed(&self) -> bool {
        self.removed_in(&self.metrics())
    }

    /// Waits until this member has been removed from the cluster.
    pub async fn wait_removed(&self) {
        let mut rx = self.raft().metrics();
        loop {
            let told = self.removed_notify.notified();
            if self.removed() {
                return;
            }
            tokio::select! {
                _ = told => {}
                changed = rx.changed() => if changed.is_err() {
                    // Raft stopped: never removed while this node ran; wait forever.
                    std::future::pending::<()>().await;
                },
            }
        }
    }

    /// Waits (bounded) until this member's view of the membership satisfies `f`.
    pub async fn wait_membership(&self, f: impl Fn(&[crate::node::MemberInfo]) -> bool) -> bool {
        let deadline = Instant::now() + self.request_timeout();
        while Instant::now() < deadline {
            if f(&self.members()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    async fn admin(&self, ask: AdminAsk) -> Result<AdminAnswer, EtcdError> {
        match self.ask_leader(PeerAsk::Admin(ask)).await? {
            PeerAnswer::Admin(a) => Ok(a),
            PeerAnswer::Lease(_) => Err(EtcdError::Internal("unexpected peer answer".into())),
        }
    }

    /// Carries out `ask` if this node leads ([`EtcdError::NotLeader`] otherwise; the cluster id
    /// is answered by any member).
    pub(crate) async fn admin_as_leader(&self, ask: AdminAsk) -> Result<AdminAnswer, EtcdError> {
        match ask {
            AdminAsk::ClusterId => return Ok(AdminAnswer::ClusterId(self.cluster_id())),
            AdminAsk::YouAreRemoved(id) if id == self.id() => {
                self.mark_removed();
                return Ok(AdminAnswer::Done);
            }
            AdminAsk::YouAreRemoved(_) => return Err(EtcdError::MemberNotFound),
            _ => {}
        }
        if !self.is_leader() {
            return Err(EtcdError::NotLeader);
        }
        let m = self.metrics();
        let membership = m.membership_config.membership().clone();
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        let raft = self.raft();
        match ask {
            AdminAsk::ClusterId | AdminAsk::YouAreRemoved(_) => unreachable!("answered above"),
            AdminAsk::MemberAdd { id, node, learner } => {
                if membership.get_node(&id).is_some() {
                    return Err(EtcdError::MemberExist);
                }
                let taken = membership
                    .nodes()
                    .any(|(_, n)| n.peer_urls.iter().any(|u| node.peer_urls.contains(u)));
                if taken {
                    return Err(EtcdError::PeerUrlExist);
                }
                if learner && learners.len() >= MAX_LEARNERS {
                    return Err(EtcdError::TooManyLearners);
                }
                raft.add_learner(id, node, false)
                    .await
                    .map_err(write_error)?;
                if !learner {
                    raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                        .await
                        .map_err(write_error)?;
                }
            }
            AdminAsk::MemberPromote(id) => {
                if membership.get_node(&id).is_none() {
                    return Err(EtcdError::MemberNotFound);
                }
                if !learners.contains(&id) {
                    return Err(EtcdError::MemberNotLearner);
                }
                let last = m.last_log_index.unwrap_or(0);
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map_or(0, |l| l.index());
                if matched * 100 < last * LEARNER_READY_PERCENT {
                    return Err(EtcdError::LearnerNotReady);
                }
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(write_error)?;
            }
            AdminAsk::MemberRemove(id) => {
                if membership.get_node(&id).is_none() {
                    return Err(EtcdError::MemberNotFound);
                }
                let change = if learners.contains(&id) {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                };
                let removed = membership.get_node(&id).cloned();
                raft.change_membership(change, false)
                    .await
                    .map_err(write_error)?;
                if let Some(node) = removed {
                    self.tell_removed(id, node);
                }
            }
            AdminAsk::MemberUpdate { id, peer_urls } => {
                let Some(old) = membership.get_node(&id).cloned() else {
                    return Err(EtcdError::MemberNotFound);
                };
                let taken = membership.nodes().any(|(other, n)| {
                    *other != id && n.peer_urls.iter().any(|u| peer_urls.contains(u))
                });
                if taken {
                    return Err(EtcdError::PeerUrlExist);
                }
                let node = PeerNode {
                    name: old.name,
                    peer_urls,
                };
                raft.change_membership(
                    ChangeMembers::SetNodes(BTreeMap::from([(id, node)])),
                    false,
                )
                .await
                .map_err(write_error)?;
                self.forget_peer(id);
            }
        }
        Ok(AdminAnswer::Done)
    }
}

impl RaftNode {
    /// Tells member `id` (at `node`) that it was removed, retrying for a while in the background.
    fn tell_removed(&self, id: NodeId, node: PeerNode) {
        let transport = self.transport().clone();
        let me = self.id();
        tokio::spawn(async move {
            for _ in 0..50 {
                let told = match &transport {
                    Transport::Grpc => {
                        let Some(url) = node.peer_urls.first() else {
                            return;
                        };
                        let Ok(mut client) = peer_client(url) else {
                            return;
                        };
                        let tell = PeerAsk::Admin(AdminAsk::YouAreRemoved(id));
                        let Ok(ask) = postcard::to_allocvec(&tell) else {
                            return;
                        };
                        matches!(
                            tokio::time::timeout(
                                Duration::from_secs(2),
                                client.ask(AskRequest { ask })
                            )
                            .await,
                            Ok(Ok(_))
                        )
                    }
                    Transport::Local(router) => match router.route(me, id) {
                        Ok(n) => {
                            n.mark_removed();
                            true
                        }
                        Err(_) => false,
                    },
                };
                if told {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
}

/// Asks the members at `peer_urls` for the cluster id, for a member joining an existing
/// cluster; the first answer wins.
pub async fn ask_cluster_id(peer_urls: &[String], timeout: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + timeout;
    let body =
        postcard::to_allocvec(&PeerAsk::Admin(AdminAsk::ClusterId)).map_err(|e| e.to_string())?;
    let mut last = String::from("no peer URLs given");
    while Instant::now() < deadline {
        for url in peer_urls {
            let mut client = peer_client(url)?;
            let res = tokio::time::timeout(
                Duration::from_secs(2),
                client.ask(AskRequest { ask: body.clone() }),
            )
            .await;
            match res {
                Ok(Ok(r)) => {
                    match postcard::from_bytes::<Result<PeerAnswer, EtcdError>>(
                        &r.into_inner().result,
                    ) {
                        Ok(Ok(PeerAnswer::Admin(AdminAnswer::ClusterId(id)))) => return Ok(id),
                        other => last = format!("{url}: unexpected answer {other:?}"),
                    }
                }
                Ok(Err(e)) => last = format!("{url}: {}", e.message()),
                Err(_) => last = format!("{url}: no answer"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last)
}
