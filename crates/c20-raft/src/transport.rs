//! How members reach each other: gRPC between processes, or an in-process router for embedded
//! clusters and tests. The router can drop traffic in either direction between any two members
//! (isolation, asymmetric partitions) and forgets members that crashed.

use crate::node::RaftNode;
use crate::types::NodeId;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, Weak};

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

/// Delivers calls between nodes of one process.
#[derive(Default)]
pub struct LocalRouter {
    nodes: RwLock<HashMap<NodeId, Weak<RaftNode>>>,
    /// (from, to) pairs whose traffic is dropped.
    blocked: RwLock<HashSet<(NodeId, NodeId)>>,
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
