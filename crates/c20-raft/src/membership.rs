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
use c20_api::c20peer::peer_client::PeerClient;
use c20_api::c20peer::AskRequest;
use c20_api::net::GrpcChannel;
use c20_api::EtcdError;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Membership};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;

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

/// Why a peer call ([`ask_peer`]) brought no answer.
pub(crate) enum AskFailed {
    /// Nothing came back in time.
    NoAnswer,
    /// The call failed (connection, or the peer refused the request).
    Call(tonic::Status),
}

/// One `c20peer.Peer/Ask` call: `ask` to the peer behind `client`, and its answer.
pub(crate) async fn ask_peer(
    mut client: PeerClient<GrpcChannel>,
    ask: &PeerAsk,
    timeout: Duration,
) -> Result<Result<PeerAnswer, EtcdError>, AskFailed> {
    let body = match postcard::to_allocvec(ask) {
        Ok(b) => b,
        Err(e) => return Ok(Err(EtcdError::Internal(e.to_string()))),
    };
    match tokio::time::timeout(timeout, client.ask(AskRequest { ask: body })).await {
        Err(_) => Err(AskFailed::NoAnswer),
        Ok(Err(status)) => Err(AskFailed::Call(status)),
        Ok(Ok(r)) => Ok(postcard::from_bytes::<Result<PeerAnswer, EtcdError>>(
            &r.into_inner().result,
        )
        .unwrap_or_else(|e| Err(EtcdError::Internal(e.to_string())))),
    }
}

/// Whether a member other than `except` already uses one of `urls`.
fn urls_taken(membership: &Membership<NodeId, PeerNode>, except: NodeId, urls: &[String]) -> bool {
    membership
        .nodes()
        .any(|(id, n)| *id != except && n.peer_urls.iter().any(|u| urls.contains(u)))
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
        self.removed_in(&self.metrics().membership_config)
    }

    /// Waits until this member has been removed from the cluster.
    pub async fn wait_removed(&self) {
        // Membership is among the server metrics, which change with the role, term, leader
        // and membership only (the full metrics change with every commit: waking on those
        // cost every write a wake-up of the thread that waits here).
        // Decided from what woke it: openraft publishes the server metrics before the full
        // ones, so the full metrics may not show the change yet.
        let mut rx = self.raft().server_metrics();
        loop {
            let told = self.removed_notify.notified();
            let membership = rx.borrow_watched().membership_config.clone();
            if self.removed_in(&membership) {
                return;
            }
            tokio::select! {
                // In argument order: a seeded, single-threaded run must choose the same way.
                biased;
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
                if urls_taken(&membership, id, &node.peer_urls) {
                    return Err(EtcdError::PeerUrlExist);
                }
                if learner && learners.len() >= MAX_LEARNERS {
                    return Err(EtcdError::TooManyLearners);
                }
                raft.add_learner(id, node, false)
                    .await
                    .map_err(write_error)?;
                if !learner {
                    self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
                        .await?;
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
                self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
                    .await?;
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
                self.change(change).await?;
                if let Some(node) = removed {
                    self.tell_removed(id, node);
                }
            }
            AdminAsk::MemberUpdate { id, peer_urls } => {
                let Some(old) = membership.get_node(&id).cloned() else {
                    return Err(EtcdError::MemberNotFound);
                };
                if urls_taken(&membership, id, &peer_urls) {
                    return Err(EtcdError::PeerUrlExist);
                }
                let node = PeerNode {
                    name: old.name,
                    peer_urls,
                };
                self.change(ChangeMembers::SetNodes(BTreeMap::from([(id, node)])))
                    .await?;
                self.forget_peer(id);
            }
        }
        Ok(AdminAnswer::Done)
    }

    /// Commits a membership change (openraft's joint consensus), as etcd's errors.
    async fn change(&self, change: ChangeMembers<NodeId, PeerNode>) -> Result<(), EtcdError> {
        self.raft()
            .change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(write_error)
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
                        let Some(client) = node.peer_urls.first().and_then(|u| peer_client(u).ok())
                        else {
                            return;
                        };
                        let tell = PeerAsk::Admin(AdminAsk::YouAreRemoved(id));
                        ask_peer(client, &tell, Duration::from_secs(2))
                            .await
                            .is_ok()
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
    let ask = PeerAsk::Admin(AdminAsk::ClusterId);
    let mut last = String::from("no peer URLs given");
    while Instant::now() < deadline {
        for url in peer_urls {
            let client = peer_client(url)?;
            match ask_peer(client, &ask, Duration::from_secs(2)).await {
                Ok(Ok(PeerAnswer::Admin(AdminAnswer::ClusterId(id)))) => return Ok(id),
                Ok(other) => last = format!("{url}: unexpected answer {other:?}"),
                Err(AskFailed::Call(e)) => last = format!("{url}: {}", e.message()),
                Err(AskFailed::NoAnswer) => last = format!("{url}: no answer"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last)
}
