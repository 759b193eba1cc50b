//! Leases: granted and revoked through the log, kept alive and expired by the leader.
//!
//! Which leases exist (and their keys) is replicated state in the MVCC store. When each expires
//! is known only to the leader's [`Lessor`], as in etcd: keep-alives go to the leader, and the
//! leader proposes the revoke of a lease whose time ran out, so every member deletes its keys at
//! the same revision. A new leader starts every lease's clock afresh, extended by one election
//! timeout, so no lease expires early because leadership moved.

use crate::membership::{PeerAnswer, PeerAsk};
use crate::node::RaftNode;
use crate::types::Command;
use c20_api::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse,
};
use c20_api::EtcdError;
use c20_storage::planted::{self, Bug};
use c20_storage::{WriteOp, WriteResult};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The largest TTL a lease may be granted with, in seconds (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// How often the leader looks for expired leases.
const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Most revokes of expired leases proposed per check (etcd revokes at most 1000 per second).
const REVOKES_PER_CHECK_MAX: usize = 250;

/// A lease question only the leader can answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaseAsk {
    /// Restart the lease's clock; answers its granted TTL, or 0 when it no longer exists.
    Renew(i64),
    /// How long the lease has left.
    TimeToLive(i64),
}

/// The leader's answer to a [`LeaseAsk`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LeaseAnswer {
    Renewed {
        ttl: i64,
    },
    /// `granted` 0 and `remaining` -1 when the lease does not exist (etcd's convention).
    TimeToLive {
        granted: i64,
        remaining: i64,
        keys: Vec<Vec<u8>>,
    },
}

/// When each lease expires, as the leader sees it.
#[derive(Default)]
pub(crate) struct Lessor {
    state: Mutex<LessorState>,
    id_seq: AtomicU64,
}

#[derive(Default)]
struct LessorState {
    /// The term in which this node leads; the deadlines are valid only within it.
    term: Option<u64>,
    deadline: HashMap<i64, Instant>,
    /// Expired leases whose revoke was proposed, with when; proposed again after a while.
    revoking: HashMap<i64, Instant>,
    /// Until the first check in a term: leases found then get the election extension (they
    /// were alive under the previous leader); leases found later were granted since.
    extend_next_check: bool,
}

impl LessorState {
    /// Starts leading in `term`: every deadline restarts when next looked at.
    fn lead(&mut self, term: u64) {
        if self.term != Some(term) {
            self.term = Some(term);
            self.deadline.clear();
            self.revoking.clear();
            self.extend_next_check = true;
        }
    }
}

impl Lessor {
    /// Forgets every deadline (this node does not lead).
    fn step_down(&self) {
        let mut s = self.state.lock().expect("lessor lock");
        s.term = None;
        s.deadline.clear();
        s.revoking.clear();
    }

    /// Brings deadlines in line with the `leases` that exist (granted TTLs) while leading in
    /// `term`, and returns the expired ones to revoke. A lease found at the first check of a
    /// term gets its whole TTL plus `extend`; one found later (just granted) its whole TTL.
    fn check(
        &self,
        term: u64,
        leases: &[(i64, i64)],
        now: Instant,
        extend: Duration,
        retry_after: Duration,
    ) -> Vec<i64> {
        let mut s = self.state.lock().expect("lessor lock");
        s.lead(term);
        let extend = if std::mem::take(&mut s.extend_next_check) {
            extend
        } else {
            Duration::ZERO
        };
        let live: std::collections::HashSet<i64> = leases.iter().map(|(id, _)| *id).collect();
        s.deadline.retain(|id, _| live.contains(id));
        s.revoking.retain(|id, _| live.contains(id));
        let mut expired = Vec::new();
        for (id, ttl) in leases {
            let deadline = *s
                .deadline
                .entry(*id)
                .or_insert_with(|| now + extend + ttl_duration(*ttl));
            if deadline > now || expired.len() >= REVOKES_PER_CHECK_MAX {
                continue;
            }
            let due = s
                .revoking
                .get(id)
                .is_none_or(|at| now.duration_since(*at) >= retry_after);
            if due {
                s.revoking.insert(*id, now);
                expired.push(*id);
            }
        }
        expired
    }

    /// Restarts lease `id`'s clock (the caller checked it exists and leads in `term`). A lease
    /// whose time already ran out is not revived (its revoke is on its way): `false`.
    fn renew(&self, term: u64, id: i64, ttl: i64, now: Instant) -> bool {
        let mut s = self.state.lock().expect("lessor lock");
        s.lead(term);
        if s.deadline.get(&id).is_some_and(|d| *d <= now) {
            return false;
        }
        s.deadline.insert(id, now + ttl_duration(ttl));
        true
    }

    /// Starts the clock of lease `id`, just granted, whatever an earlier lease with the same id
    /// left behind (its deadline may linger until the next check, its revoke be remembered).
    fn start(&self, term: u64, id: i64, ttl: i64, now: Instant) {
        let mut s = self.state.lock().expect("lessor lock");
        s.lead(term);
        s.revoking.remove(&id);
        s.deadline.insert(id, now + ttl_duration(ttl));
    }

    /// Seconds left on lease `id` (its whole TTL if its clock has not started in this term).
    fn remaining(&self, term: u64, id: i64, ttl: i64, now: Instant) -> i64 {
        let mut s = self.state.lock().expect("lessor lock");
        s.lead(term);
        match s.deadline.get(&id) {
            Some(d) => d.saturating_duration_since(now).as_secs() as i64,
            None => ttl,
        }
    }

    /// A lease id for a grant that named none: 16 bits of the member id, 40 bits of the
    /// wall clock's milliseconds `ms`, 8 bits of a counter (as etcd builds them), never 0 or
    /// negative. A clock stepped back may repeat an id: the grant then fails with `LeaseExist`
    /// and is retried with the next.
    fn next_id(&self, member: u64, ms: u64) -> i64 {
        let seq = self.id_seq.fetch_add(1, Ordering::Relaxed);
        let suffix = ((ms & 0xff_ffff_ffff) << 8).wrapping_add(seq) & 0xffff_ffff_ffff;
        let id = (((member & 0xffff) << 48) | suffix) & (i64::MAX as u64);
        (id as i64).max(1)
    }
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

impl RaftNode {
    /// The smallest TTL a lease gets: one and a half election timeouts, in whole seconds
    /// (etcd's rule).
    pub fn min_lease_ttl(&self) -> i64 {
        ((self.election_timeout().as_millis() as u64 * 3 / 2).div_ceil(1000)) as i64
    }

    /// Grants a lease of `ttl` seconds (raised to [`RaftNode::min_lease_ttl`]) with `id`, or
    /// with an id of this node's choosing when `id` is 0.
    pub async fn lease_grant(&self, ttl: i64, id: i64) -> Result<LeaseGrantResponse, EtcdError> {
        if ttl > MAX_LEASE_TTL {
            return Err(EtcdError::LeaseTtlTooLarge);
        }
        let ttl = ttl.max(self.min_lease_ttl());
        let mut attempts = 0;
        loop {
            let chosen = if id == 0 {
                self.lessor
                    .next_id(self.id(), self.wall_clock.unix_millis())
            } else {
                id
            };
            let op = WriteOp::LeaseGrant(LeaseGrantRequest { ttl, id: chosen });
            match self.propose(Command::from_op(&op)).await?.into_result() {
                Ok(WriteResult::LeaseGrant(r)) => {
                    // The clock starts now when this node leads (else at the leader's next check).
                    if self.is_leader() {
                        self.lessor.start(self.term(), r.id, r.ttl, Instant::now());
                    }
                    return Ok(r);
                }
                // An id of our own choosing collided: choose again.
                Err(EtcdError::LeaseExist) if id == 0 && attempts < 3 => attempts += 1,
                Err(e) => return Err(e),
                Ok(_) => return Err(EtcdError::Internal("unexpected reply to grant".into())),
            }
        }
    }

    /// Revokes lease `id`: its keys are deleted at one revision.
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, EtcdError> {
        let op = WriteOp::LeaseRevoke(LeaseRevokeRequest { id });
        match self.propose(Command::from_op(&op)).await?.into_result()? {
            WriteResult::LeaseRevoke(r) => Ok(r),
            _ => Err(EtcdError::Internal("unexpected reply to revoke".into())),
        }
    }

    /// Proposes the revoke of lease `id`, found expired while leading in `term`, here and only
    /// if this node still leads in `term`. Never forwarded: a successor restarted every
    /// lease's clock and may have renewed this one since, so the revoke would end a lease
    /// within the TTL its last keep-alive promised (the simulator's lease check found that).
    /// Once appended here in `term`, the entry either commits, and then every later leader
    /// applies it before it answers a keep-alive (see `lease_as_leader`), or is dropped. Should
    /// this node lose the lead and win it back between the check here and the append, the
    /// entry lands in a later term and applies as nothing ([`Command::expiry_revoke`]).
    async fn revoke_expired(&self, id: i64, term: u64) -> Result<(), EtcdError> {
        if self.term() != term || !self.is_leader() {
            return Err(EtcdError::NotLeader);
        }
        let (reply, _) = self
            .propose_as_leader(Command::expiry_revoke(id, term))
            .await?;
        reply.into_result().map(|_| ())
    }

    /// Keeps lease `id` alive: answers its TTL, or 0 when it does not exist.
    pub async fn lease_renew(&self, id: i64) -> Result<i64, EtcdError> {
        match self.ask_leader(PeerAsk::Lease(LeaseAsk::Renew(id))).await? {
            PeerAnswer::Lease(LeaseAnswer::Renewed { ttl }) => Ok(ttl),
            _ => Err(EtcdError::Internal("unexpected lease answer".into())),
        }
    }

    /// Granted TTL, seconds remaining and attached keys of lease `id` (0, -1, none when it does
    /// not exist).
    pub async fn lease_time_to_live(&self, id: i64) -> Result<(i64, i64, Vec<Vec<u8>>), EtcdError> {
        match self
            .ask_leader(PeerAsk::Lease(LeaseAsk::TimeToLive(id)))
            .await?
        {
            PeerAnswer::Lease(LeaseAnswer::TimeToLive {
                granted,
                remaining,
                keys,
            }) => Ok((granted, remaining, keys)),
            _ => Err(EtcdError::Internal("unexpected lease answer".into())),
        }
    }

    /// Every live lease as `(id, granted TTL)`, from this member's state.
    pub fn leases(&self) -> Vec<(i64, i64)> {
        self.state().read(|s| s.leases())
    }

    /// Answers `ask` here if this node leads; [`EtcdError::NotLeader`] otherwise.
    pub(crate) async fn lease_as_leader(&self, ask: LeaseAsk) -> Result<LeaseAnswer, EtcdError> {
        let id = match &ask {
            LeaseAsk::Renew(id) | LeaseAsk::TimeToLive(id) => *id,
        };
        let term = self.term();
        if !self.is_leader() {
            return Err(EtcdError::NotLeader);
        }
        // First confirm the leadership with a quorum and apply everything committed before.
        // Without it, a deposed leader that has not noticed yet would renew a lease the new
        // leader expires on its own clock; and a new leader would renew a lease whose revoke
        // its predecessor proposed (the lease's time had run out) and which is committed but
        // not applied here: both acknowledge a keep-alive and then the lease is gone within its
        // TTL (the simulator's lease check found the second).
        if !planted::active(Bug::KeepAliveWithoutReadBarrier) {
            self.read_barrier_as_leader().await?;
        }
        if self.term() != term || !self.is_leader() {
            return Err(EtcdError::NotLeader);
        }
        // A keep-alive needs the TTL only; the attached keys are copied for time-to-live alone.
        let look = |s: &c20_storage::MvccStore| match ask {
            LeaseAsk::Renew(_) => s.lease_ttl(id).map(|ttl| (ttl, Vec::new())),
            LeaseAsk::TimeToLive(_) => s.lease(id),
        };
        let lease = self.state().read(look);
        let now = Instant::now();
        Ok(match (ask, lease) {
            (LeaseAsk::Renew(_), None) => LeaseAnswer::Renewed { ttl: 0 },
            (LeaseAsk::Renew(_), Some((ttl, _))) => LeaseAnswer::Renewed {
                ttl: if self.lessor.renew(term, id, ttl, now) {
                    ttl
                } else {
                    0
                },
            },
            (LeaseAsk::TimeToLive(_), None) => LeaseAnswer::TimeToLive {
                granted: 0,
                remaining: -1,
                keys: Vec::new(),
            },
            (LeaseAsk::TimeToLive(_), Some((ttl, keys))) => LeaseAnswer::TimeToLive {
                granted: ttl,
                remaining: self.lessor.remaining(term, id, ttl, now),
                keys,
            },
        })
    }

    /// Runs the leader's expiry checks for as long as the node lives.
    pub(crate) fn spawn_lessor(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(EXPIRY_CHECK_INTERVAL).await;
                let Some(node) = weak.upgrade() else { return };
                if !node.is_leader() {
                    node.lessor.step_down();
                    continue;
                }
                let leases = node.leases();
                let term = node.term();
                let expired = node.lessor.check(
                    term,
                    &leases,
                    Instant::now(),
                    node.election_timeout(),
                    node.request_timeout(),
                );
                for id in expired {
                    let node = node.clone();
                    tokio::spawn(async move {
                        match node.revoke_expired(id, term).await {
                            Ok(_) => {
                                tracing::debug!(lease = %format!("{id:016x}"), "lease expired")
                            }
                            Err(EtcdError::LeaseNotFound) => {}
                            Err(e) => tracing::debug!(error = %e, "revoking an expired lease"),
                        }
                    });
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXTEND: Duration = Duration::from_secs(1);
    const RETRY: Duration = Duration::from_secs(7);

    #[test]
    fn a_lease_expires_after_its_ttl_and_a_renew_restarts_the_clock() {
        let l = Lessor::default();
        let t0 = Instant::now();
        let leases = [(1, 5), (2, 10)];
        assert!(l.check(3, &leases, t0, EXTEND, RETRY).is_empty());
        assert!(l.renew(3, 1, 5, t0 + Duration::from_secs(4)));
        assert!(l
            .check(3, &leases, t0 + Duration::from_secs(8), EXTEND, RETRY)
            .is_empty());
        assert_eq!(
            l.check(3, &leases, t0 + Duration::from_secs(9), EXTEND, RETRY),
            vec![1]
        );
        // Expired: a keep-alive no longer revives it.
        assert!(!l.renew(3, 1, 5, t0 + Duration::from_secs(9)));
        // Proposed once, then again only after the retry interval.
        assert!(l
            .check(3, &leases, t0 + Duration::from_secs(10), EXTEND, RETRY)
            .is_empty());
        let mut both = l.check(3, &leases, t0 + Duration::from_secs(16), EXTEND, RETRY);
        both.sort();
        assert_eq!(both, vec![1, 2]);
    }

    #[test]
    fn a_new_term_restarts_every_clock_with_the_extension() {
        let l = Lessor::default();
        let t0 = Instant::now();
        let leases = [(1, 5)];
        l.check(3, &leases, t0, EXTEND, RETRY);
        // Leadership lost and won again later: the old deadline (t0 + 6s) no longer counts.
        l.step_down();
        let t1 = t0 + Duration::from_secs(5);
        assert!(l.check(4, &leases, t1, EXTEND, RETRY).is_empty());
        assert_eq!(l.remaining(4, 1, 5, t1), 6);
        assert!(l
            .check(4, &leases, t1 + Duration::from_secs(5), EXTEND, RETRY)
            .is_empty());
        assert_eq!(
            l.check(4, &leases, t1 + Duration::from_secs(6), EXTEND, RETRY),
            vec![1]
        );
    }

    #[test]
    fn a_grant_that_reuses_an_id_starts_afresh() {
        let l = Lessor::default();
        let t0 = Instant::now();
        l.check(3, &[(1, 5)], t0, EXTEND, RETRY);
        let late = t0 + Duration::from_secs(7);
        assert_eq!(l.check(3, &[(1, 5)], late, EXTEND, RETRY), vec![1]);
        // Revoked, and granted again with the same id before the next check forgot it.
        l.start(3, 1, 5, late);
        assert!(l.renew(3, 1, 5, late + Duration::from_secs(1)));
        assert!(l
            .check(3, &[(1, 5)], late + Duration::from_secs(5), EXTEND, RETRY)
            .is_empty());
    }

    #[test]
    fn leases_granted_during_a_term_get_no_extension() {
        let l = Lessor::default();
        let t0 = Instant::now();
        l.check(3, &[(1, 5)], t0, EXTEND, RETRY);
        l.check(3, &[(1, 5), (2, 5)], t0, EXTEND, RETRY);
        assert_eq!(l.remaining(3, 1, 5, t0), 6);
        assert_eq!(l.remaining(3, 2, 5, t0), 5);
    }

    #[test]
    fn revoked_leases_are_forgotten_and_ids_are_positive_and_distinct() {
        let l = Lessor::default();
        let t0 = Instant::now();
        l.check(1, &[(1, 5)], t0, EXTEND, RETRY);
        l.check(1, &[], t0, EXTEND, RETRY);
        assert_eq!(
            l.remaining(1, 1, 5, t0),
            5,
            "a forgotten lease has no clock"
        );
        let ids: std::collections::HashSet<i64> = (0..1000)
            .map(|_| l.next_id(u64::MAX, 1_767_225_600_000))
            .collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| *id > 0));
    }
}
