//! How members reach each other: gRPC between processes, or an in-process router for embedded
//! clusters and tests. The router can drop traffic in either direction between any two members
//! (isolation, asymmetric partitions), lose and delay Raft messages at random (seeded), and
//! forgets members that crashed.

use crate::node::RaftNode;
use crate::types::NodeId;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

/// The way one node talks to its peers.
#[derive(Clone, Default)]
pub enum Transport {
    /// gRPC to each peer's first peer URL.
    #[default]
    Grpc,
    /// Direct calls to nodes registered with the router in this process.
    Local(Arc<LocalRouter>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Grpc => f.write_str("Grpc"),
            Transport::Local(_) => f.write_str("Local"),
        }
    }
}

/// Random trouble on every link: each Raft message (request or reply) is lost with
/// probability `loss_per_mille` / 1000, and each request waits up to `delay_max` first.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkFaults {
    pub loss_per_mille: u32,
    pub delay_max: Duration,
}

/// Delivers calls between nodes of one process.
#[derive(Default)]
pub struct LocalRouter {
    nodes: RwLock<HashMap<NodeId, Weak<RaftNode>>>,
    /// (from, to) pairs whose traffic is dropped.
    blocked: RwLock<HashSet<(NodeId, NodeId)>>,
    /// Random loss and delay, and the generator that draws them (splitmix64 state).
    faults: Mutex<(LinkFaults, u64)>,
    /// Whether `faults` has any: without, a message takes no lock and draws nothing.
    faulty: AtomicBool,
}

impl LocalRouter {
    pub fn new() -> Arc<LocalRouter> {
        Arc::new(LocalRouter::default())
    }

    /// Makes `node` reachable under its id.
    pub fn register(&self, node: &Arc<RaftNode>) {
        self.nodes
            .write()
            .expect("router lock")
            .insert(node.id(), Arc::downgrade(node));
    }

    /// Makes `id` unreachable, as a crashed process is.
    pub fn unregister(&self, id: NodeId) {
        self.nodes.write().expect("router lock").remove(&id);
    }

    /// Drops everything sent from `from` to `to` (one direction).
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.blocked
            .write()
            .expect("router lock")
            .insert((from, to));
    }

    /// Cuts `id` off from every other member, both directions.
    pub fn isolate(&self, id: NodeId) {
        let others: Vec<NodeId> = self
            .nodes
            .read()
            .expect("router lock")
            .keys()
            .copied()
            .collect();
        let mut blocked = self.blocked.write().expect("router lock");
        for o in others.into_iter().filter(|&o| o != id) {
            blocked.insert((id, o));
            blocked.insert((o, id));
        }
    }

    /// Restores every link of `id`.
    pub fn heal(&self, id: NodeId) {
        self.blocked
            .write()
            .expect("router lock")
            .retain(|&(a, b)| a != id && b != id);
    }

    /// Restores every link.
    pub fn heal_all(&self) {
        self.blocked.write().expect("router lock").clear();
    }

    /// Sets random loss and delay on every link, drawn from `seed` (all zero: none).
    pub fn set_link_faults(&self, faults: LinkFaults, seed: u64) {
        let mut f = self.faults.lock().expect("router lock");
        *f = (faults, seed);
        self.faulty
            .store(faults != LinkFaults::default(), Ordering::Relaxed);
    }

    /// The fate of the next message (random, per [`LocalRouter::set_link_faults`]): how long it
    /// waits before delivery, whether the request is lost, whether its reply is lost.
    pub(crate) fn fate(&self) -> (Duration, bool, bool) {
        if !self.faulty.load(Ordering::Relaxed) {
            return (Duration::ZERO, false, false);
        }
        let mut f = self.faults.lock().expect("router lock");
        let mut draw = || crate::rt::splitmix(&mut f.1);
        let (d, req, rep) = (draw(), draw(), draw());
        let faults = f.0;
        let max = faults.delay_max.as_micros() as u64;
        let lost = |r: u64| (r % 1000) < u64::from(faults.loss_per_mille);
        let delay = if max == 0 {
            Duration::ZERO
        } else {
            Duration::from_micros(d % (max + 1))
        };
        (delay, lost(req), lost(rep))
    }

    /// Whether a message from `from` to `to` would be delivered now.
    pub fn can_reach(&self, from: NodeId, to: NodeId) -> bool {
        !self
            .blocked
            .read()
            .expect("router lock")
            .contains(&(from, to))
            && self.nodes.read().expect("router lock").contains_key(&to)
    }

    /// The node a message from `from` to `to` is delivered to, if it is delivered.
    pub fn route(&self, from: NodeId, to: NodeId) -> Result<Arc<RaftNode>, String> {
        if self
            .blocked
            .read()
            .expect("router lock")
            .contains(&(from, to))
        {
            return Err(format!("link {from:x} -> {to:x} is cut"));
        }
        self.nodes
            .read()
            .expect("router lock")
            .get(&to)
            .and_then(Weak::upgrade)
            .ok_or_else(|| format!("member {to:x} is down"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_faults_lose_and_delay_as_configured() {
        let r = LocalRouter::default();
        assert!((0..100).all(|_| r.fate() == (Duration::ZERO, false, false)));
        let max = Duration::from_millis(20);
        r.set_link_faults(
            LinkFaults {
                loss_per_mille: 100,
                delay_max: max,
            },
            7,
        );
        let fates: Vec<_> = (0..10_000).map(|_| r.fate()).collect();
        let lost = fates.iter().filter(|f| f.1).count();
        let replies_lost = fates.iter().filter(|f| f.2).count();
        assert!((700..1300).contains(&lost), "{lost} of 10,000 lost at 10%");
        assert!(
            (700..1300).contains(&replies_lost),
            "{replies_lost} replies lost"
        );
        assert!(fates.iter().all(|f| f.0 <= max));
        assert!(fates.iter().any(|f| f.0 > max / 2));
        r.set_link_faults(
            LinkFaults {
                loss_per_mille: 1000,
                delay_max: Duration::ZERO,
            },
            7,
        );
        assert!((0..100).all(|_| r.fate() == (Duration::ZERO, true, true)));
        r.set_link_faults(LinkFaults::default(), 7);
        assert!((0..100).all(|_| r.fate() == (Duration::ZERO, false, false)));
    }
}
