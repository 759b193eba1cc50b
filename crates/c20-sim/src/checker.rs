//! Linearizability of key-value histories.
//!
//! Linearizability is compositional: a history is linearizable exactly when the sub-history of
//! every key is. Each key is a register (absent or a value), checked with a depth-first search
//! over the orders the real-time constraints allow (Wing & Gong, with Lowe's memoization of
//! visited states). A write whose outcome is unknown may take effect at any point after its call
//! or never; it is never dropped from the history.

use std::collections::{BTreeMap, HashSet};

/// What a register holds: `None` when the key is absent.
pub type Value = Option<Vec<u8>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Put(Vec<u8>),
    Delete,
    /// A read and what it observed.
    Get(Value),
}

/// One call and its return, on a single logical clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub client: usize,
    pub key: Vec<u8>,
    pub kind: Kind,
    pub call: u64,
    /// `None`: the outcome is unknown (a write that may or may not have happened).
    pub ret: Option<u64>,
}

/// A key whose history admits no linearization, with that history.
#[derive(Debug, Clone)]
pub struct Violation {
    pub key: Vec<u8>,
    pub ops: Vec<Op>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "no linearization for key {:?} ({} operations):",
            String::from_utf8_lossy(&self.key),
            self.ops.len()
        )?;
        for op in &self.ops {
            let ret = op.ret.map_or("?".to_string(), |r| r.to_string());
            let what = match &op.kind {
                Kind::Put(v) => format!("put {:?}", String::from_utf8_lossy(v)),
                Kind::Delete => "delete".to_string(),
                Kind::Get(None) => "get -> absent".to_string(),
                Kind::Get(Some(v)) => format!("get -> {:?}", String::from_utf8_lossy(v)),
            };
            writeln!(
                f,
                "  [{:>6}, {:>6}] client {:>2}: {what}",
                op.call, ret, op.client
            )?;
        }
        Ok(())
    }
}

/// Checks every key; returns the first key (in key order) that has no linearization.
pub fn check(history: &[Op]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&[u8], Vec<&Op>> = BTreeMap::new();
    for op in history {
        // A read whose outcome is unknown observed nothing.
        if matches!(op.kind, Kind::Get(_)) && op.ret.is_none() {
            continue;
        }
        by_key.entry(&op.key).or_default().push(op);
    }
    for (key, mut ops) in by_key {
        ops.sort_by_key(|o| o.call);
        if !linearizable(&ops) {
            return Err(Violation {
                key: key.to_vec(),
                ops: ops.into_iter().cloned().collect(),
            });
        }
    }
    Ok(())
}

/// Whether one register's history (sorted by call) has a linearization from the absent state.
fn linearizable(ops: &[&Op]) -> bool {
    let mut done = vec![false; ops.len()];
    let mut seen: HashSet<(Vec<bool>, Value)> = HashSet::new();
    search(ops, &mut done, None, &mut seen)
}

fn search(
    ops: &[&Op],
    done: &mut Vec<bool>,
    value: Value,
    seen: &mut HashSet<(Vec<bool>, Value)>,
) -> bool {
    // Finished when every operation with a known outcome is placed; unknown writes may never
    // have happened.
    if ops
        .iter()
        .zip(done.iter())
        .all(|(op, d)| *d || op.ret.is_none())
    {
        return true;
    }
    if !seen.insert((done.clone(), value.clone())) {
        return false;
    }
    // The earliest return among pending operations bounds which may go next: one called after
    // that return cannot precede it.
    let horizon = ops
        .iter()
        .zip(done.iter())
        .filter(|(_, d)| !**d)
        .filter_map(|(op, _)| op.ret)
        .min()
        .unwrap_or(u64::MAX);
    for i in 0..ops.len() {
        if done[i] || ops[i].call > horizon {
            continue;
        }
        let next = match &ops[i].kind {
            Kind::Put(v) => Some(Some(v.clone())),
            Kind::Delete => Some(None),
            Kind::Get(observed) => (observed == &value).then(|| value.clone()),
        };
        if let Some(next) = next {
            done[i] = true;
            if search(ops, done, next, seen) {
                return true;
            }
            done[i] = false;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, kind: Kind, call: u64, ret: Option<u64>) -> Op {
        Op {
            client,
            key: b"k".to_vec(),
            kind,
            call,
            ret,
        }
    }

    fn put(v: &str) -> Kind {
        Kind::Put(v.as_bytes().to_vec())
    }

    fn get(v: Option<&str>) -> Kind {
        Kind::Get(v.map(|v| v.as_bytes().to_vec()))
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            op(0, get(None), 0, Some(1)),
            op(0, put("a"), 2, Some(3)),
            op(1, get(Some("a")), 4, Some(5)),
            op(1, Kind::Delete, 6, Some(7)),
            op(0, get(None), 8, Some(9)),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let h = vec![
            op(0, put("a"), 0, Some(1)),
            op(0, put("b"), 2, Some(3)),
            op(1, get(Some("a")), 4, Some(5)),
        ];
        let v = check(&h).unwrap_err();
        assert_eq!(v.ops.len(), 3);
        assert!(v.to_string().contains("get -> \"a\""), "{v}");
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        // The read overlaps the write: both "absent" and "a" are fine.
        for seen in [None, Some("a")] {
            let h = vec![op(0, put("a"), 0, Some(10)), op(1, get(seen), 5, Some(6))];
            assert!(check(&h).is_ok(), "{seen:?}");
        }
    }

    #[test]
    fn unknown_writes_may_or_may_not_have_happened_but_not_before_their_call() {
        let maybe = op(0, put("x"), 10, None);
        assert!(check(&[maybe.clone(), op(1, get(Some("x")), 20, Some(21))]).is_ok());
        assert!(check(&[maybe.clone(), op(1, get(None), 20, Some(21))]).is_ok());
        // ...but it cannot be seen by a read that finished before it was even called.
        assert!(check(&[maybe, op(1, get(Some("x")), 1, Some(2))]).is_err());
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut other = op(2, get(Some("z")), 0, Some(1));
        other.key = b"other".to_vec();
        let v = check(&[op(0, put("a"), 0, Some(1)), other]).unwrap_err();
        assert_eq!(v.key, b"other");
    }
}
