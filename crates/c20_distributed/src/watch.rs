//! Watching one replica's store: the events of a key range in revision order, as etcd's watch
//! delivers them, for callers of [`LocalReplicator`] (and the simulator's watch checks).

use crate::LocalReplicator;
use c20_api::mvccpb::Event;
use c20_api::EtcdError;
use c20_raft::RaftNode;
use c20_storage::planted::{self, Bug};
use std::sync::Arc;
use std::time::Duration;

/// Most events one [`Watcher::next`] returns (whole revisions are finished past it).
const BATCH_EVENTS_MAX: usize = 1000;

/// How often a watcher with nothing to deliver looks whether its replica crashed meanwhile.
const CRASH_CHECK: Duration = Duration::from_millis(50);

/// A watch on replica `replica`'s store from a revision on. It ends with
/// [`EtcdError::Stopped`] when the replica crashes; a new watcher from
/// [`Watcher::next_revision`] on another replica resumes where it stopped, as an etcd client
/// resumes a broken watch stream.
pub struct Watcher {
    node: Arc<RaftNode>,
    replica: usize,
    key: Vec<u8>,
    range_end: Vec<u8>,
    next_rev: i64,
    revision: tokio::sync::watch::Receiver<i64>,
}

impl LocalReplicator {
    /// Watches keys in `[key, range_end)` (etcd's conventions: an empty end is the key alone,
    /// `"\0"` every key from `key` on) on replica `i` (0-based), from revision `from` on.
    /// The events are those the replica has applied: committed, in revision order. Unlike
    /// etcd's watch, `from` 0 does not mean "from now": revisions start at 1 either way.
    pub fn watch_from(
        &self,
        i: usize,
        key: impl AsRef<[u8]>,
        range_end: impl AsRef<[u8]>,
        from: i64,
    ) -> Result<Watcher, EtcdError> {
        let node = self.node(i)?;
        let revision = node.state().subscribe_revision();
        let resumed = from > 1;
        let from = if resumed && planted::active(Bug::WatchResumeSkipsARevision) {
            from + 1
        } else {
            from
        };
        Ok(Watcher {
            node,
            replica: i,
            key: key.as_ref().to_vec(),
            range_end: range_end.as_ref().to_vec(),
            next_rev: from.max(1),
            revision,
        })
    }
}

impl Watcher {
    /// The replica (0-based) this watcher reads.
    pub fn replica(&self) -> usize {
        self.replica
    }

    /// Where the next events start: every revision below it has been delivered (or had no
    /// event in the range).
    pub fn next_revision(&self) -> i64 {
        self.next_rev
    }

    /// Waits for the next events: every event of at least one revision (never part of one),
    /// in revision order. Errs with [`EtcdError::Stopped`] once the replica crashed and with
    /// [`EtcdError::Compacted`] when the revisions it would deliver were compacted away.
    ///
    /// Cancel-safe: dropping the future before it completes loses no event.
    pub async fn next(&mut self) -> Result<Vec<Event>, EtcdError> {
        loop {
            self.revision.borrow_and_update();
            if self.node.crashed() {
                return Err(EtcdError::Stopped);
            }
            let batch = self.node.state().read(|s| {
                s.watch_events(
                    &self.key,
                    &self.range_end,
                    self.next_rev,
                    false,
                    BATCH_EVENTS_MAX,
                )
            });
            // A crash may have reset the store to its last checkpoint during the read; what
            // the read saw then died with the replica.
            if self.node.crashed() {
                return Err(EtcdError::Stopped);
            }
            let batch = batch.map_err(|_| EtcdError::Compacted)?;
            self.next_rev = batch.next_rev;
            if !batch.events.is_empty() {
                return Ok(batch.events);
            }
            // Nothing yet: wait for the next applied revision; look at the crash flag now and
            // then, since a crashed replica announces nothing.
            if let Ok(Err(_)) = tokio::time::timeout(CRASH_CHECK, self.revision.changed()).await {
                // The store's announcer is gone (the node is being torn down): no busy loop.
                tokio::time::sleep(CRASH_CHECK).await;
            }
        }
    }
}
