//! Consistency levels on top of [`RaftNode`]: what a write waits for and what a read checks
//! before it is served. The promises are in `docs/CONSISTENCY.md`.

use crate::node::RaftNode;
use crate::transport::Transport;
use crate::types::{Command, NodeId, Reply};
use c20_api::c20peer::AppliedRequest;
use c20_api::{ConsistencyLevel, EtcdError};
use c20_storage::planted::{self, Bug};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How often the applied index of other voters is polled while a write waits for them.
const VOTER_POLL_INTERVAL_MS: u64 = 2;

/// An `Eventual` write: durable in the leader's log, replication still going on.
#[derive(Debug)]
pub struct PendingWrite {
    /// The log index the write took.
    pub index: u64,
    done: oneshot::Receiver<Result<Reply, EtcdError>>,
}

impl PendingWrite {
    /// Resolves once the write is committed and applied (its reply), or discarded
    /// ([`EtcdError::Discarded`]) because the leader lost it.
    pub async fn outcome(self) -> Result<Reply, EtcdError> {
        self.done.await.unwrap_or_else(|_| {
            Err(EtcdError::Internal(
                "write task ended without an outcome".into(),
            ))
        })
    }
}

/// Which voters a write must reach before it is acknowledged.
#[derive(Debug, Clone, Copy)]
enum Need {
    /// At least this many voters (this node included) applied it.
    AtLeast(usize),
    /// Every voter applied it.
    Every,
}

impl RaftNode {
    /// The current voters.
    pub fn voters(&self) -> Vec<NodeId> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        membership.voter_ids().collect()
    }

    fn majority(&self) -> usize {
        self.voters().len() / 2 + 1
    }

    /// How far member `id` has applied the log.
    pub async fn applied_of(&self, id: NodeId, timeout: Duration) -> Result<u64, String> {
        if id == self.id() {
            return Ok(self.status().applied_index);
        }
        match self.transport() {
            Transport::Grpc => {
                let mut client = self.grpc_peer(id).map_err(|e| e.to_string())?;
                match tokio::time::timeout(timeout, client.applied(AppliedRequest {})).await {
                    Err(_) => Err("timed out".into()),
                    Ok(Err(status)) => Err(status.message().to_string()),
                    Ok(Ok(r)) => Ok(r.into_inner().index),
                }
            }
            Transport::Local(router) => {
                let peer = router.route(self.id(), id)?;
                let index = peer.status().applied_index;
                if router.can_reach(id, self.id()) {
                    Ok(index)
                } else {
                    Err("reply lost: link is cut".into())
                }
            }
        }
    }

    /// Waits until the voters `need` names have applied `index`; on timeout, names the ones
    /// that have not.
    async fn wait_voters(&self, index: u64, need: Need) -> Result<(), EtcdError> {
        let deadline = Instant::now() + self.request_timeout();
        loop {
            let voters = self.voters();
            let mut reached = Vec::new();
            let mut missing = Vec::new();
            for v in &voters {
                let left = deadline.saturating_duration_since(Instant::now());
                match self
                    .applied_of(*v, left.min(Duration::from_millis(500)))
                    .await
                {
                    Ok(i) if i >= index => reached.push(*v),
                    Ok(i) => missing.push(format!("{v:x} (applied {i})")),
                    Err(e) => missing.push(format!("{v:x} ({e})")),
                }
            }
            let done = match need {
                Need::AtLeast(n) => reached.len() >= n,
                Need::Every => missing.is_empty(),
            };
            if done {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(EtcdError::NotAppliedEverywhere(missing));
            }
            tokio::time::sleep(Duration::from_millis(VOTER_POLL_INTERVAL_MS)).await;
        }
    }

    /// Replicates `cmd` at `level`. `w` is how many replicas must hold the write for `Quorum`
    /// (values below a majority mean a majority). `Eventual` is [`RaftNode::write_async`].
    pub async fn write(
        &self,
        cmd: Command,
        level: ConsistencyLevel,
        w: usize,
    ) -> Result<(Reply, u64), EtcdError> {
        match level {
            ConsistencyLevel::Eventual => {
                let pending = self.write_async(cmd).await?;
                let index = pending.index;
                pending.outcome().await.map(|r| (r, index))
            }
            ConsistencyLevel::Sequential | ConsistencyLevel::Quorum | ConsistencyLevel::Strong => {
                let (reply, index) = self.propose_indexed(cmd).await?;
                if w > self.majority() {
                    self.wait_voters(index, Need::AtLeast(w)).await?;
                }
                Ok((reply, index))
            }
            ConsistencyLevel::All => {
                let (reply, index) = self.propose_indexed(cmd).await?;
                self.wait_voters(index, Need::Every).await?;
                Ok((reply, index))
            }
        }
    }

    /// Proposes `cmd` on this node, which must lead, and returns as soon as the entry is durable
    /// in this node's log. The handle resolves when it commits or is discarded.
    pub async fn write_async(&self, mut cmd: Command) -> Result<PendingWrite, EtcdError> {
        cmd.id = self.next_request_id();
        let id = cmd.id;
        let appended = self.log().watch_append(id);
        let (done_tx, mut done_rx) = oneshot::channel();
        let raft = self.raft().clone();
        // Commit waits are not bounded by the request timeout: the handle reports the outcome
        // whenever it is known; a much later bound only keeps a lost leader from holding it.
        let outcome_timeout = self.request_timeout() * 8;
        tokio::spawn(async move {
            let res = match tokio::time::timeout(outcome_timeout, raft.client_write(cmd)).await {
                Err(_) => Err(EtcdError::Timeout),
                Ok(Ok(resp)) => Ok(resp.data),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                    Err(EtcdError::NotLeader)
                }
                Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)))) => {
                    Err(EtcdError::Discarded)
                }
                Ok(Err(RaftError::APIError(e))) => Err(EtcdError::Internal(e.to_string())),
                Ok(Err(RaftError::Fatal(e))) => Err(EtcdError::StorageFailed(e.to_string())),
            };
            let _ = done_tx.send(res);
        });
        tokio::select! {
            biased;
            a = appended => match a {
                Ok(Ok(index)) => Ok(PendingWrite { index, done: done_rx }),
                Ok(Err(e)) => Err(EtcdError::StorageFailed(e)),
                Err(_) => Err(EtcdError::Internal("append waiter dropped".into())),
            },
            d = &mut done_rx => {
                self.log().unwatch_append(id);
                match d {
                    // Finished before the append was observed: it was appended, but its index
                    // is not known here.
                    Ok(Ok(reply)) => {
                        let (tx, rx) = oneshot::channel();
                        let _ = tx.send(Ok(reply));
                        Ok(PendingWrite { index: 0, done: rx })
                    }
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(EtcdError::Internal("write task ended without an outcome".into())),
                }
            }
        }
    }

    /// Returns once a read at `level` may be served from this node's local state.
    /// `r` is how many replicas must confirm a `Quorum` read (below a majority means a majority);
    /// `session_revision` is the newest revision a `Sequential` session has seen.
    pub async fn read_gate(
        &self,
        level: ConsistencyLevel,
        r: usize,
        session_revision: i64,
    ) -> Result<(), EtcdError> {
        match level {
            ConsistencyLevel::Eventual => Ok(()),
            ConsistencyLevel::Sequential => {
                if planted::active(Bug::SequentialReadIgnoresSession) {
                    return Ok(());
                }
                self.wait_revision(session_revision).await
            }
            ConsistencyLevel::Quorum => {
                let index = self.read_index().await?;
                if r > self.majority() {
                    self.wait_voters(index, Need::AtLeast(r)).await?;
                }
                Ok(())
            }
            ConsistencyLevel::Strong | ConsistencyLevel::All => {
                if planted::active(Bug::StrongReadWithoutReadIndex) && self.is_leader() {
                    return Ok(());
                }
                self.read_barrier().await
            }
        }
    }

    /// Waits until this node's store has reached `revision`.
    async fn wait_revision(&self, revision: i64) -> Result<(), EtcdError> {
        let deadline = Instant::now() + self.request_timeout();
        let mut metrics = self.raft().metrics();
        loop {
            let now = self.state().read(|s| s.current_revision());
            if now >= revision {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(EtcdError::SessionAhead {
                    wanted: revision,
                    best: now,
                });
            }
            // Every applied batch changes the metrics; wake on it, or re-check shortly. Once Raft
            // has stopped (the metrics sender is gone) nothing more will apply: no spinning
            // until the deadline.
            let waited =
                tokio::time::timeout(left.min(Duration::from_millis(20)), metrics.changed()).await;
            if let Ok(Err(_)) = waited {
                return Err(EtcdError::Stopped);
            }
        }
    }
}
