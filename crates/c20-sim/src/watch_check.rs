//! Watch guarantees on a recorded history.
//!
//! Watchers follow every key of the workload from revision 1 while the faults run, moving to
//! another replica when theirs crashes (and now and then anyway), resuming from the revision
//! they reached, as an etcd client resumes a broken watch stream. Their deliveries are checked
//! against each other and against the clients' calls:
//!
//! - **ordered, no duplicates, atomic**: revisions strictly increase from one delivery to the
//!   next, and a revision's events never span two deliveries;
//! - **agreement**: every watcher that delivered a revision delivered the same events for it;
//! - **reliable**: every revision writes a key of the workload, so a watcher's revisions are
//!   consecutive from the first one, and it reached the revision the final reads saw;
//! - **valid**: each put event is a write some client called (values are unique), at the
//!   revision it was acknowledged with, delivered after its call, and applied once; a delete
//!   event follows a delete call of its key; a txn's two writes share one revision, or neither
//!   happened;
//! - **real time**: a put that completed (acknowledged, or delivered to a watcher) before
//!   another put was called has the lower revision; a linearizable read called after a
//!   watcher delivered revision r saw a store at revision r or later.
//!
//! The watchers read through `c20_distributed::Watcher`, the embedded cluster's watch, not the
//! gRPC watch service of `c20 serve`; both read the store's events with
//! `MvccStore::watch_events`, and the service has its own tests (`c20-server/tests/watch.rs`).

use crate::checker::{Kind, Op, Violation};
use std::collections::{BTreeMap, HashMap};
use std::ops::AddAssign;

/// One event as a watcher received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub revision: i64,
    pub key: Vec<u8>,
    /// The value put; `None` for a delete.
    pub value: Option<Vec<u8>>,
}

/// What one call of `Watcher::next` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The replica (0-based) that served it.
    pub replica: usize,
    /// When it arrived, on the history's clock.
    pub at: u64,
    pub events: Vec<Seen>,
}

/// Everything one watcher received, across its resumptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchLog {
    pub watcher: usize,
    pub deliveries: Vec<Delivery>,
    /// The revision it would deliver next when it stopped.
    pub reached: i64,
    /// How many times it (re)started on a replica.
    pub starts: usize,
}

/// What the watch checks covered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchChecked {
    /// Events delivered, over every watcher.
    pub events: usize,
    /// Revisions in the agreed sequence.
    pub revisions: usize,
    /// Watcher starts after the first (resumptions on another or the same replica).
    pub resumes: usize,
    /// Writes whose outcome the client never learned that the watchers show applied.
    pub unknown_writes_applied: usize,
}

impl AddAssign for WatchChecked {
    fn add_assign(&mut self, other: WatchChecked) {
        self.events += other.events;
        self.revisions += other.revisions;
        self.resumes += other.resumes;
        self.unknown_writes_applied += other.unknown_writes_applied;
    }
}

fn show(v: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(v))
}

/// The revision of an empty store.
const FIRST_REVISION: i64 = 1;

/// A write as the watchers placed it: its revision and the first time a watcher showed it.
struct Placed {
    revision: i64,
    delivered: u64,
}

/// Checks the watchers' logs against each other and against `history`; `final_revision` is
/// the store revision the last reads (after the faults) saw, which every watcher must reach.
pub fn check_watches(
    history: &[Op],
    logs: &[WatchLog],
    final_revision: i64,
) -> Result<WatchChecked, Violation> {
    let mut checked = WatchChecked::default();
    // The agreed sequence: revision -> its events, and which watcher delivered it first.
    let mut agreed: BTreeMap<i64, (&[Seen], usize)> = BTreeMap::new();
    // The earliest delivery of each revision.
    let mut first_delivery: BTreeMap<i64, u64> = BTreeMap::new();
    for log in logs {
        checked.resumes += log.starts.saturating_sub(1);
        let mut last: Option<i64> = None;
        for d in &log.deliveries {
            checked.events += d.events.len();
            let mut i = 0;
            while i < d.events.len() {
                let rev = d.events[i].revision;
                let end = i + d.events[i..]
                    .iter()
                    .take_while(|e| e.revision == rev)
                    .count();
                let events = &d.events[i..end];
                match last {
                    Some(l) if rev <= l => {
                        return Err(Violation::of_run(format!(
                            "watcher {} delivered revision {rev} after revision {l} \
                             (replica {}, at {}): out of order, repeated, or split",
                            log.watcher, d.replica, d.at
                        )))
                    }
                    Some(l) if rev != l + 1 => {
                        return Err(Violation::of_run(format!(
                            "watcher {} skipped from revision {l} to {rev} (replica {}, at {}): \
                             every revision writes a watched key",
                            log.watcher, d.replica, d.at
                        )))
                    }
                    _ => {}
                }
                last = Some(rev);
                match agreed.get(&rev) {
                    Some((other, w)) if *other != events => {
                        return Err(Violation::of_run(format!(
                            "watchers {w} and {} disagree on revision {rev}: {other:?} against \
                             {events:?}",
                            log.watcher
                        )))
                    }
                    Some(_) => {}
                    None => {
                        agreed.insert(rev, (events, log.watcher));
                    }
                }
                let at = first_delivery.entry(rev).or_insert(d.at);
                *at = (*at).min(d.at);
                i = end;
            }
        }
        if log.reached <= final_revision {
            return Err(Violation::of_run(format!(
                "watcher {} stopped before revision {} (the final reads saw revision \
                 {final_revision}): it never caught up",
                log.watcher, log.reached
            )));
        }
        // It went past every revision below `reached`, and each of those wrote a watched
        // key: the last one it delivered must be just below.
        let expected_last = log.reached - 1;
        if expected_last > FIRST_REVISION && last != Some(expected_last) {
            return Err(Violation::of_run(format!(
                "watcher {} moved on to revision {} but delivered only up to {last:?}",
                log.watcher, log.reached
            )));
        }
    }
    checked.revisions = agreed.len();
    let first_revision = agreed.keys().next().copied();
    // A store begins at revision 1 and its first write makes revision 2.
    if let Some(first) = first_revision.filter(|&r| r != FIRST_REVISION + 1) {
        return Err(Violation::of_run(format!(
            "the watchers' first revision is {first}, but every watcher began at revision 1 \
             and the first write makes revision {}",
            FIRST_REVISION + 1
        )));
    }
    for log in logs {
        let first = log
            .deliveries
            .iter()
            .flat_map(|d| d.events.first())
            .map(|e| e.revision)
            .next();
        if first != first_revision {
            return Err(Violation::of_run(format!(
                "watcher {} began at revision {first:?}, another at {first_revision:?}: both \
                 watched from revision 1",
                log.watcher
            )));
        }
    }

    // Valid: put events are writes some client called, each applied once.
    let mut writes: HashMap<(&[u8], &[u8]), &Op> = HashMap::new();
    for op in history {
        if let Kind::Put(v) = &op.kind {
            writes.insert((&op.key, v), op);
        }
    }
    let mut placed: HashMap<(&[u8], &[u8]), Placed> = HashMap::new();
    for (&rev, (events, _)) in &agreed {
        let delivered = first_delivery[&rev];
        for e in events.iter() {
            match &e.value {
                Some(v) => {
                    let Some(op) = writes.get(&(e.key.as_slice(), v.as_slice())) else {
                        return Err(Violation::of_run(format!(
                            "revision {rev} put {} = {} which no client wrote",
                            show(&e.key),
                            show(v)
                        )));
                    };
                    if op.revision.is_some_and(|r| r != rev) {
                        return Err(Violation::of_key(
                            history,
                            format!("the watchers saw this write at revision {rev}"),
                            &e.key,
                            vec![(*op).clone()],
                        ));
                    }
                    if delivered <= op.call {
                        return Err(Violation::of_key(
                            history,
                            format!(
                                "a watcher delivered this write at {delivered}, before its call"
                            ),
                            &e.key,
                            vec![(*op).clone()],
                        ));
                    }
                    let key = (e.key.as_slice(), v.as_slice());
                    if let Some(p) = placed.insert(
                        key,
                        Placed {
                            revision: rev,
                            delivered,
                        },
                    ) {
                        return Err(Violation::of_key(
                            history,
                            format!("applied twice: at revisions {} and {rev}", p.revision),
                            &e.key,
                            vec![(*op).clone()],
                        ));
                    }
                    if op.ret.is_none() {
                        checked.unknown_writes_applied += 1;
                    }
                }
                None => {
                    let called = history
                        .iter()
                        .any(|o| o.kind == Kind::Delete && o.key == e.key && o.call < delivered);
                    if !called {
                        return Err(Violation::of_run(format!(
                            "revision {rev} deleted {} but no delete of it was called before \
                             the watchers delivered it",
                            show(&e.key)
                        )));
                    }
                }
            }
        }
    }
    let last_revision = agreed.keys().next_back().copied().unwrap_or(0);
    for op in history {
        let Kind::Put(v) = &op.kind else { continue };
        let at = placed.get(&(op.key.as_slice(), v.as_slice()));
        if let (Some(r), None) = (op.revision, at) {
            if op.ret.is_some() && r <= last_revision {
                return Err(Violation::of_key(
                    history,
                    format!(
                        "acknowledged at revision {r}, but no watcher delivered it (they \
                         delivered up to revision {last_revision})"
                    ),
                    &op.key,
                    vec![op.clone()],
                ));
            }
        }
    }
    check_txns_atomic(history, &placed)?;
    check_real_time(history, &placed, &first_delivery)?;
    Ok(checked)
}

/// The writes of one txn (same client, same call, same value) share a revision, or none of
/// them happened.
fn check_txns_atomic(
    history: &[Op],
    placed: &HashMap<(&[u8], &[u8]), Placed>,
) -> Result<(), Violation> {
    let mut txns: BTreeMap<(usize, u64), Vec<&Op>> = BTreeMap::new();
    for op in history {
        if matches!(op.kind, Kind::Put(_)) {
            txns.entry((op.client, op.call)).or_default().push(op);
        }
    }
    for ops in txns.values().filter(|ops| ops.len() > 1) {
        let revisions: Vec<Option<i64>> = ops
            .iter()
            .map(|op| {
                let Kind::Put(v) = &op.kind else {
                    unreachable!("only puts were grouped")
                };
                placed
                    .get(&(op.key.as_slice(), v.as_slice()))
                    .map(|p| p.revision)
            })
            .collect();
        if revisions.windows(2).any(|w| w[0] != w[1]) {
            return Err(Violation::of_key(
                history,
                format!("one txn's writes were delivered at revisions {revisions:?}"),
                &ops[0].key,
                ops.iter().map(|o| (*o).clone()).collect(),
            ));
        }
    }
    Ok(())
}

/// Real-time order of the placed writes, and of linearizable reads after deliveries.
fn check_real_time(
    history: &[Op],
    placed: &HashMap<(&[u8], &[u8]), Placed>,
    first_delivery: &BTreeMap<i64, u64>,
) -> Result<(), Violation> {
    // (completed, call, revision, op) of every placed write.
    let mut done: Vec<(u64, u64, i64, &Op)> = history
        .iter()
        .filter_map(|op| {
            let Kind::Put(v) = &op.kind else { return None };
            let p = placed.get(&(op.key.as_slice(), v.as_slice()))?;
            let completed = op.ret.map_or(p.delivered, |r| r.min(p.delivered));
            Some((completed, op.call, p.revision, op))
        })
        .collect();
    done.sort_by_key(|d| d.0);
    // Walking writes by completion, keep the highest revision completed so far; a write called
    // after all of them must be above it.
    let mut by_call: Vec<&(u64, u64, i64, &Op)> = done.iter().collect();
    by_call.sort_by_key(|d| d.1);
    let mut k = 0;
    let mut highest: Option<&(u64, u64, i64, &Op)> = None;
    for b in by_call {
        while k < done.len() && done[k].0 < b.1 {
            if highest.is_none_or(|h| done[k].2 > h.2) {
                highest = Some(&done[k]);
            }
            k += 1;
        }
        if let Some(a) = highest {
            if a.2 >= b.2 {
                return Err(Violation::of_key(
                    history,
                    format!(
                        "a write that completed at {} (revision {}) before another was called \
                         has the higher revision ({} against {})",
                        a.0, a.2, a.2, b.2
                    ),
                    &b.3.key,
                    vec![a.3.clone(), b.3.clone()],
                ));
            }
        }
    }
    // Linearizable reads see at least every revision delivered before they were called.
    let deliveries: Vec<(u64, i64)> = {
        let mut d: Vec<(u64, i64)> = first_delivery.iter().map(|(&r, &at)| (at, r)).collect();
        d.sort_unstable();
        let mut highest = 0;
        d.into_iter()
            .map(|(at, r)| {
                highest = highest.max(r);
                (at, highest)
            })
            .collect()
    };
    for op in history {
        let (Kind::Get(_), Some((replica, store_rev))) = (&op.kind, op.served) else {
            continue;
        };
        let before = deliveries.partition_point(|&(at, _)| at < op.call);
        if before == 0 {
            continue;
        }
        let seen = deliveries[before - 1].1;
        if store_rev < seen {
            return Err(Violation::of_key(
                history,
                format!(
                    "a linearizable read on replica {replica} saw the store at revision \
                     {store_rev}, but a watcher had delivered revision {seen} before the read \
                     was called"
                ),
                &op.key,
                vec![op.clone()],
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "watch_check_test.rs"]
mod tests;
