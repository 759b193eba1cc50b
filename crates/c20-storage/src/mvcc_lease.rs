//! Leases in the store: which exist, their granted TTL, and the keys attached to each.
//!
//! A lease's life (grant, revoke) is applied from the log like any write, so every replica holds
//! the same leases and deletes a revoked lease's keys at the same revision. When a lease expires
//! is not stored here: the leader's lessor decides that and proposes the revoke.

use super::{header, DeleteRangeRequest, MvccStore, TxnWriter};
use c20_api::etcdserverpb::{LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeResponse};
use c20_api::EtcdError;
use std::collections::BTreeSet;

/// One live lease.
#[derive(Debug, Clone)]
pub(super) struct Lease {
    pub(super) ttl: i64,
    pub(super) keys: BTreeSet<Vec<u8>>,
}

impl Lease {
    pub(super) fn new(ttl: i64) -> Lease {
        Lease {
            ttl,
            keys: BTreeSet::new(),
        }
    }
}

impl MvccStore {
    /// The granted TTL of lease `id` and the keys attached to it, if it exists.
    pub fn lease(&self, id: i64) -> Option<(i64, Vec<Vec<u8>>)> {
        self.leases
            .get(&id)
            .map(|l| (l.ttl, l.keys.iter().cloned().collect()))
    }

    /// The granted TTL of lease `id`, if it exists.
    pub fn lease_ttl(&self, id: i64) -> Option<i64> {
        self.leases.get(&id).map(|l| l.ttl)
    }

    /// Every live lease as `(id, granted TTL)`, in id order.
    pub fn leases(&self) -> Vec<(i64, i64)> {
        self.leases.iter().map(|(id, l)| (*id, l.ttl)).collect()
    }

    pub(super) fn lease_grant(
        &mut self,
        g: LeaseGrantRequest,
    ) -> Result<LeaseGrantResponse, EtcdError> {
        if g.id <= 0 {
            return Err(EtcdError::Internal(format!(
                "lease id {} is not positive",
                g.id
            )));
        }
        if self.leases.contains_key(&g.id) {
            return Err(EtcdError::LeaseExist);
        }
        self.leases.insert(g.id, Lease::new(g.ttl));
        if self.db.is_some() {
            self.pending.leases.insert(g.id, Some(g.ttl));
        }
        Ok(LeaseGrantResponse {
            header: Some(header(self.current_rev)),
            id: g.id,
            ttl: g.ttl,
            error: String::new(),
        })
    }

    /// Removes lease `id` and deletes its keys, all at one revision.
    pub(super) fn lease_revoke(&mut self, id: i64) -> Result<LeaseRevokeResponse, EtcdError> {
        let lease = self.leases.remove(&id).ok_or(EtcdError::LeaseNotFound)?;
        if self.db.is_some() {
            self.pending.leases.insert(id, None);
        }
        let mut w = TxnWriter::new(self.current_rev);
        for key in lease.keys {
            self.delete_range(
                &mut w,
                &DeleteRangeRequest {
                    key,
                    ..Default::default()
                },
            );
        }
        self.finish(w);
        Ok(LeaseRevokeResponse {
            header: Some(header(self.current_rev)),
        })
    }

    pub(super) fn attach(&mut self, lease: i64, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&lease) {
            l.keys.insert(key.to_vec());
        }
    }

    pub(super) fn detach(&mut self, lease: i64, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&lease) {
            l.keys.remove(key);
        }
    }

    /// Attaches every live key to its lease, from the key index.
    pub(super) fn rebuild_lease_keys(&mut self) {
        for l in self.leases.values_mut() {
            l.keys.clear();
        }
        for (key, history) in &self.index {
            let Some(kv) = history.last().and_then(|e| e.put()) else {
                continue;
            };
            if let Some(l) = self.leases.get_mut(&kv.lease()) {
                l.keys.insert(key.to_vec());
            }
        }
    }
}
