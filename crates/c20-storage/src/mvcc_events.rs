//! The store's events in revision order, read by watchers.
//!
//! Every put and delete is kept in one queue ordered by `(main, sub)` revision, besides the key
//! index. A watcher reads its events from here, from the revision it has reached onwards, so a
//! watcher that falls behind costs no memory of its own: it catches up from the store, as etcd's
//! unsynced watchers do. Compaction drops the events below the compaction revision.

use super::{latest_at, KeyEvent, MvccStore};
use crate::stored_kv::StoredKv;
use c20_api::mvccpb::{event::EventType, Event};

/// Most events looked at in one call of [`MvccStore::watch_events`] (whole revisions are
/// finished past it), so a watcher far behind reads in steps and holds the store briefly.
const SCAN_EVENTS_MAX: usize = 16 * 1024;

/// Events of whole revisions for one watcher.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchBatch {
    /// The events in `[from, next_rev)` matching the watched range, in revision order.
    pub events: Vec<Event>,
    /// Where the next read starts: every revision below it has been looked at.
    pub next_rev: i64,
}

/// Whether `key` lies in `[start, end)` with etcd's conventions (empty end: the key alone;
/// `"\0"`: every key from `start` on).
pub fn in_range(start: &[u8], end: &[u8], key: &[u8]) -> bool {
    if end.is_empty() {
        key == start
    } else if end == [0] {
        key >= start
    } else {
        key >= start && key < end
    }
}

impl MvccStore {
    /// Events of keys in `[key, range_end)` from revision `from` on: at least every event of
    /// one revision, then whole revisions until about `max_events` matched. Errs with the
    /// compaction revision when events at `from` may have been compacted away.
    pub fn watch_events(
        &self,
        key: &[u8],
        range_end: &[u8],
        from: i64,
        with_prev_kv: bool,
        max_events: usize,
    ) -> Result<WatchBatch, i64> {
        if from < self.compact_rev {
            return Err(self.compact_rev);
        }
        let start = self.by_rev.partition_point(|e| e.main() < from);
        let mut events = Vec::new();
        let mut next_rev = (self.current_rev + 1).max(from);
        for i in start..self.by_rev.len() {
            let e = &self.by_rev[i];
            let new_revision = i > start && self.by_rev[i - 1].main() != e.main();
            if new_revision && (events.len() >= max_events || i - start >= SCAN_EVENTS_MAX) {
                next_rev = e.main();
                break;
            }
            if !in_range(key, range_end, e.kv.key()) {
                continue;
            }
            let prev_kv = if with_prev_kv {
                self.index
                    .get(e.kv.key())
                    .and_then(|h| latest_at(h, e.main() - 1))
                    .and_then(KeyEvent::put)
                    .map(StoredKv::to_kv)
            } else {
                None
            };
            events.push(Event {
                r#type: if e.is_put {
                    EventType::Put
                } else {
                    EventType::Delete
                } as i32,
                kv: Some(e.kv.to_kv()),
                prev_kv,
            });
        }
        Ok(WatchBatch { events, next_rev })
    }

    /// Rebuilds the revision-ordered events from the key index.
    pub(super) fn rebuild_by_rev(&mut self) {
        let mut all: Vec<KeyEvent> = self.index.values().flatten().cloned().collect();
        all.sort_unstable_by_key(|e| (e.main(), e.sub));
        // Events below the compaction revision are never served (the newest put of a key below
        // it stays in the key index for reads, not for watchers).
        let compact = self.compact_rev;
        self.by_rev = all.into_iter().filter(|e| e.main() >= compact).collect();
    }
}
