//! Linearizability of key-value histories, and the revisions they report.
//!
//! Linearizability is compositional: a history is linearizable exactly when the sub-history of
//! every key is. Each key is a register (absent or a value), checked with a depth-first search
//! over the orders the real-time constraints allow (Wing & Gong, with Lowe's memoization of
//! visited states). A write whose outcome is unknown may take effect at any point after its call
//! or never; it is dropped only when no read returned its value, which provably changes nothing.
//!
//! Revisions are checked apart: a read that observes a value must report the revision at which
//! the write of that value was acknowledged (every write of one txn shares one revision).
//!
//! `Sequential` reads may be stale, so they stay out of the linearizability search; they are
//! checked against their session's promises instead (see [`check_sessions`]).

use std::collections::{BTreeMap, HashMap, HashSet};

/// What a register holds: `None` when the key is absent.
pub type Value = Option<Vec<u8>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Put(Vec<u8>),
    Delete,
    /// A linearizable read and what it observed.
    Get(Value),
    /// A `Sequential` read through the client's session and what it observed.
    SequentialGet(Value),
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
    /// For an acknowledged write, the revision it reported; for a read that observed a value,
    /// that value's `mod_revision`.
    pub revision: Option<i64>,
    /// Whether the call went through the client's session, so that the session's later
    /// `Sequential` reads must reflect it.
    pub session: bool,
    /// For a read that returned: the replica (0-based) that served it and the store revision
    /// it saw, to tell a stale replica from a lost write when a violation shows.
    pub served: Option<(usize, i64)>,
}

impl Op {
    fn describe(&self) -> String {
        let ret = self.ret.map_or("?".to_string(), |r| r.to_string());
        let what = match &self.kind {
            Kind::Put(v) => format!("put {:?}", String::from_utf8_lossy(v)),
            Kind::Delete => "delete".to_string(),
            Kind::Get(None) => "get -> absent".to_string(),
            Kind::Get(Some(v)) => format!("get -> {:?}", String::from_utf8_lossy(v)),
            Kind::SequentialGet(None) => "sequential get -> absent".to_string(),
            Kind::SequentialGet(Some(v)) => {
                format!("sequential get -> {:?}", String::from_utf8_lossy(v))
            }
        };
        let rev = self.revision.map_or(String::new(), |r| format!(" @{r}"));
        let served = self.served.map_or(String::new(), |(replica, at)| {
            format!(" (replica {replica}, store at revision {at})")
        });
        format!(
            "[{:>6}, {:>6}] client {:>2}: {what}{rev}{served}",
            self.call, ret, self.client
        )
    }
}

/// A key whose history breaks a promise, with the shortest slice of it found that still does.
#[derive(Debug, Clone)]
pub struct Violation {
    pub key: Vec<u8>,
    /// What is broken.
    pub reason: String,
    /// The operations that show it, in call order.
    pub ops: Vec<Op>,
    /// How many operations that key had in the whole history.
    pub of: usize,
}

impl Violation {
    /// A violation of the run as a whole (a panic, a stall, a watcher that fell behind): no
    /// key's operations show it.
    pub fn of_run(reason: String) -> Violation {
        Violation {
            key: Vec::new(),
            reason,
            ops: Vec::new(),
            of: 0,
        }
    }

    /// A violation shown by `ops` of `key`, out of that key's operations in `history`.
    pub fn of_key(history: &[Op], reason: String, key: &[u8], ops: Vec<Op>) -> Violation {
        Violation {
            key: key.to_vec(),
            reason,
            ops,
            of: history.iter().filter(|o| o.key == key).count(),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ops.is_empty() {
            return writeln!(f, "{}", self.reason);
        }
        writeln!(
            f,
            "{} for key {:?} ({} of its {} operations):",
            self.reason,
            String::from_utf8_lossy(&self.key),
            self.ops.len(),
            self.of
        )?;
        for op in &self.ops {
            writeln!(f, "  {}", op.describe())?;
        }
        Ok(())
    }
}

/// What a check that found no violation covered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checked {
    /// Keys whose history was searched.
    pub keys: usize,
    /// Keys whose search gave up (too many states) without a verdict.
    pub undecided: usize,
    /// `Sequential` reads whose session had seen a write of their key, so that the session
    /// promises constrained what they could return.
    pub session_reads: usize,
    /// What the watch checks covered (see [`crate::watch_check`]).
    pub watch: crate::watch_check::WatchChecked,
    /// What the lease checks covered (see [`crate::lease_check`]).
    pub lease: crate::lease_check::LeaseChecked,
}

/// Checks revisions, then sessions, then every key; returns the first problem found (keys in
/// order).
pub fn check(history: &[Op]) -> Result<Checked, Violation> {
    check_revisions(history)?;
    let session_reads = check_sessions(history)?;
    let mut by_key: BTreeMap<&[u8], Vec<&Op>> = BTreeMap::new();
    for op in history {
        // A read whose outcome is unknown observed nothing; a Sequential read may be stale.
        let unknown_read = matches!(op.kind, Kind::Get(_)) && op.ret.is_none();
        if unknown_read || matches!(op.kind, Kind::SequentialGet(_)) {
            continue;
        }
        by_key.entry(&op.key).or_default().push(op);
    }
    let mut checked = Checked {
        session_reads,
        ..Checked::default()
    };
    for (key, ops) in by_key {
        let of = ops.len();
        let mut ops = without_unseen_maybes(ops);
        ops.sort_by_key(|o| o.call);
        checked.keys += 1;
        match linearizable(&ops) {
            Verdict::Linearizable => {}
            Verdict::Undecided => checked.undecided += 1,
            Verdict::NotLinearizable => {
                let ops = shrink(ops);
                return Err(Violation {
                    key: key.to_vec(),
                    reason: "no linearization".into(),
                    ops: ops.into_iter().cloned().collect(),
                    of,
                });
            }
        }
    }
    Ok(checked)
}

/// Drops puts of unknown outcome whose value no read observed. Such a put can only ever be
/// followed by another write before any read, so a linearization with it exists exactly when
/// one without it does; dropping it keeps the search small when many writes fail.
fn without_unseen_maybes(ops: Vec<&Op>) -> Vec<&Op> {
    let observed: HashSet<&[u8]> = ops
        .iter()
        .filter_map(|o| match &o.kind {
            Kind::Get(Some(v)) => Some(v.as_slice()),
            _ => None,
        })
        .collect();
    ops.into_iter()
        .filter(|o| match (&o.kind, o.ret) {
            (Kind::Put(v), None) => observed.contains(v.as_slice()),
            _ => true,
        })
        .collect()
}

/// A read that observed a value at another revision than its write was acknowledged with.
fn check_revisions(history: &[Op]) -> Result<(), Violation> {
    let mut written: HashMap<(&[u8], &[u8]), &Op> = HashMap::new();
    for op in history {
        if let (Kind::Put(v), Some(_), Some(_)) = (&op.kind, op.ret, op.revision) {
            written.insert((&op.key, v), op);
        }
    }
    for op in history {
        let (Kind::Get(Some(v)) | Kind::SequentialGet(Some(v)), Some(_), Some(seen)) =
            (&op.kind, op.ret, op.revision)
        else {
            continue;
        };
        if let Some(w) = written.get(&(op.key.as_slice(), v.as_slice())) {
            if w.revision != Some(seen) {
                return Err(Violation::of_key(
                    history,
                    format!(
                        "a value acknowledged at revision {} was read at revision {seen}",
                        w.revision.unwrap_or_default()
                    ),
                    &op.key,
                    vec![(*w).clone(), op.clone()],
                ));
            }
        }
    }
    Ok(())
}

/// The promises of a session's `Sequential` reads. What the session has seen is at least the
/// highest revision among its own acknowledged writes and the values its reads returned; a read
/// of a key must then reflect that key as of that revision or later:
/// - a value it returns was written no earlier than the newest acknowledged write of the key at
///   or below what the session had seen (read-your-writes, monotonic reads);
/// - it finds the key absent only if some delete of the key was called before it returned.
///
/// Returns how many reads had such a write to respect.
fn check_sessions(history: &[Op]) -> Result<usize, Violation> {
    let mut constrained = 0;
    // Each key's acknowledged writes in revision order, and its first delete's call.
    let mut writes: HashMap<&[u8], Vec<(i64, &Op)>> = HashMap::new();
    let mut first_delete: HashMap<&[u8], u64> = HashMap::new();
    let mut by_client: BTreeMap<usize, Vec<&Op>> = BTreeMap::new();
    for op in history {
        match (&op.kind, op.ret, op.revision) {
            (Kind::Put(_), Some(_), Some(r)) => writes.entry(&op.key).or_default().push((r, op)),
            (Kind::Delete, _, _) => {
                let call = first_delete.entry(&op.key).or_insert(op.call);
                *call = (*call).min(op.call);
            }
            _ => {}
        }
        by_client.entry(op.client).or_default().push(op);
    }
    for w in writes.values_mut() {
        w.sort_by_key(|(r, _)| *r);
    }
    for ops in by_client.values_mut() {
        ops.sort_by_key(|o| o.call);
        // The lower bound of what the session has seen, and the call that showed it.
        let mut seen: Option<(i64, &Op)> = None;
        for &op in ops.iter() {
            let Some(ret) = op.ret else { continue };
            if let (Kind::SequentialGet(value), Some((at, shown))) = (&op.kind, seen) {
                // The newest acknowledged write of the key at or below what the session saw.
                let floor = writes.get(op.key.as_slice()).and_then(|w| {
                    let upto = w.partition_point(|(r, _)| *r <= at);
                    upto.checked_sub(1).map(|i| w[i])
                });
                if let Some((written, write)) = floor {
                    constrained += 1;
                    let deleted_before = first_delete
                        .get(op.key.as_slice())
                        .is_some_and(|&call| call < ret);
                    let broken = session_breach(value, op.revision, at, written, deleted_before);
                    if let Some(reason) = broken {
                        let mut shown_ops = vec![write.clone(), shown.clone(), op.clone()];
                        shown_ops.sort_by_key(|o| o.call);
                        shown_ops.dedup();
                        return Err(Violation::of_key(history, reason, &op.key, shown_ops));
                    }
                }
            }
            let shows = match &op.kind {
                Kind::Put(_) => op.session,
                Kind::SequentialGet(Some(_)) => true,
                _ => false,
            };
            if let (true, Some(r)) = (shows, op.revision) {
                if seen.is_none_or(|(at, _)| r > at) {
                    seen = Some((r, op));
                }
            }
        }
    }
    Ok(constrained)
}

/// Why a `Sequential` read that returned `value` (written at `got`) breaks its session, which
/// had seen revision `at`, where the key's newest write was at `written`; `deleted_before`:
/// some delete of the key was called before the read returned.
fn session_breach(
    value: &Value,
    got: Option<i64>,
    at: i64,
    written: i64,
    deleted_before: bool,
) -> Option<String> {
    match (value, got) {
        (Some(_), Some(got)) if got < written => Some(format!(
            "a Sequential read returned the value of revision {got}, though its session had \
             seen revision {at} and the key was written at {written}"
        )),
        (None, _) if !deleted_before => Some(format!(
            "a Sequential read found the key absent, though its session had seen revision \
             {at}, the key was written at {written}, and no delete of it ran"
        )),
        _ => None,
    }
}

/// Drops operations one at a time while the rest still has no linearization. Only reads and
/// writes whose value no remaining read observed may go (deletes stay): such a slice is
/// linearizable whenever the whole history is, so a slice without a linearization proves the
/// whole history has none.
fn shrink(mut ops: Vec<&Op>) -> Vec<&Op> {
    let mut i = ops.len();
    while i > 0 {
        i -= 1;
        let removable = match &ops[i].kind {
            Kind::Get(_) | Kind::SequentialGet(_) => true,
            Kind::Delete => false,
            Kind::Put(v) => !ops
                .iter()
                .any(|o| matches!(&o.kind, Kind::Get(Some(seen)) if seen == v)),
        };
        if !removable {
            continue;
        }
        let mut fewer = ops.clone();
        fewer.remove(i);
        if linearizable(&fewer) == Verdict::NotLinearizable {
            ops = fewer;
            i = i.min(ops.len());
        }
    }
    ops
}

/// States one key's search may visit before it gives up and calls the history undecided.
const STATE_BUDGET: usize = 1_000_000;

/// What a search concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The budget ran out first.
    Undecided,
}

/// Whether one register's history (sorted by call) has a linearization from the absent state.
fn linearizable(ops: &[&Op]) -> Verdict {
    let mut search = Search {
        ops,
        done: vec![0; ops.len().div_ceil(64)],
        seen: HashSet::new(),
    };
    match search.from(None) {
        Some(true) => Verdict::Linearizable,
        Some(false) => Verdict::NotLinearizable,
        None => Verdict::Undecided,
    }
}

struct Search<'a> {
    ops: &'a [&'a Op],
    /// Which operations are placed, one bit each.
    done: Vec<u64>,
    seen: HashSet<(Vec<u64>, Value)>,
}

impl Search<'_> {
    fn is_done(&self, i: usize) -> bool {
        self.done[i / 64] & (1 << (i % 64)) != 0
    }

    fn flip(&mut self, i: usize) {
        self.done[i / 64] ^= 1 << (i % 64);
    }

    /// `None` when the budget ran out.
    fn from(&mut self, value: Value) -> Option<bool> {
        // Finished when every operation with a known outcome is placed; unknown writes may
        // never have happened.
        if (0..self.ops.len()).all(|i| self.is_done(i) || self.ops[i].ret.is_none()) {
            return Some(true);
        }
        if self.seen.len() >= STATE_BUDGET {
            return None;
        }
        if !self.seen.insert((self.done.clone(), value.clone())) {
            return Some(false);
        }
        // The earliest return among pending operations bounds which may go next: one called
        // after that return cannot precede it.
        let horizon = (0..self.ops.len())
            .filter(|&i| !self.is_done(i))
            .filter_map(|i| self.ops[i].ret)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..self.ops.len() {
            if self.is_done(i) || self.ops[i].call > horizon {
                continue;
            }
            let next = match &self.ops[i].kind {
                Kind::Put(v) => Some(Some(v.clone())),
                Kind::Delete => Some(None),
                Kind::Get(observed) => (observed == &value).then(|| value.clone()),
                // Never searched: check() leaves Sequential reads out.
                Kind::SequentialGet(_) => None,
            };
            if let Some(next) = next {
                self.flip(i);
                let found = self.from(next)?;
                self.flip(i);
                if found {
                    return Some(true);
                }
            }
        }
        Some(false)
    }
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
            revision: None,
            session: false,
            served: None,
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
    fn a_violation_is_shrunk_to_the_operations_that_show_it() {
        // Many harmless reads around one stale read: the slice keeps the two writes and it.
        let mut h = vec![op(0, put("a"), 0, Some(1)), op(0, put("b"), 2, Some(3))];
        for t in 0..20 {
            h.push(op(1, get(Some("b")), 4 + 2 * t, Some(5 + 2 * t)));
        }
        h.push(op(2, get(Some("a")), 50, Some(51)));
        let v = check(&h).unwrap_err();
        assert_eq!(v.of, 23);
        let shown: Vec<_> = v.ops.iter().map(|o| o.call).collect();
        assert_eq!(shown, vec![0, 2, 50], "{v}");
    }

    #[test]
    fn a_value_read_at_another_revision_than_its_write_is_caught() {
        let mut w = op(0, put("a"), 0, Some(1));
        w.revision = Some(7);
        let mut r = op(1, get(Some("a")), 2, Some(3));
        r.revision = Some(7);
        assert!(check(&[w.clone(), r.clone()]).is_ok());
        r.revision = Some(8);
        let v = check(&[w, r]).unwrap_err();
        assert!(
            v.reason.contains("revision 7") && v.reason.contains("revision 8"),
            "{v}"
        );
        assert_eq!(v.ops.len(), 2);
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
    fn failed_writes_nobody_read_do_not_blow_up_the_search() {
        // 40 writes of unknown outcome, all concurrent with a stale read: without dropping the
        // unread ones the search would wander through their orders and give up undecided.
        let mut h = vec![op(0, put("a"), 0, Some(1)), op(0, put("b"), 2, Some(3))];
        for c in 0..40 {
            h.push(op(1 + c, put(&format!("lost{c}")), 4 + c as u64, None));
        }
        h.push(op(99, get(Some("a")), 100, Some(101)));
        let v = check(&h).unwrap_err();
        assert_eq!(v.of, 43);
        assert_eq!(v.ops.len(), 3, "{v}");
        let ok = check(&h[..h.len() - 1]).unwrap();
        assert_eq!(
            ok,
            Checked {
                keys: 1,
                undecided: 0,
                session_reads: 0,
                ..Checked::default()
            }
        );
    }

    fn at(mut o: Op, revision: i64) -> Op {
        o.revision = Some(revision);
        o
    }

    fn seq_get(v: Option<&str>) -> Kind {
        Kind::SequentialGet(v.map(|v| v.as_bytes().to_vec()))
    }

    #[test]
    fn a_sequential_read_may_be_stale_but_never_older_than_its_session() {
        // Client 1 writes b at 6; client 0 (the session) wrote a at 5 and reads: "a" is a stale
        // but allowed answer, and stale reads are not searched for linearizability.
        let mut mine = at(op(0, put("a"), 0, Some(1)), 5);
        mine.session = true;
        let other = at(op(1, put("b"), 2, Some(3)), 6);
        let stale = at(op(0, seq_get(Some("a")), 4, Some(5)), 5);
        assert!(check(&[mine.clone(), other.clone(), stale]).is_ok());
        // The session reads b at 6, then a again: monotonic reads broken.
        let newer = at(op(0, seq_get(Some("b")), 4, Some(5)), 6);
        let older = at(op(0, seq_get(Some("a")), 6, Some(7)), 5);
        let v = check(&[mine.clone(), other.clone(), newer, older]).unwrap_err();
        assert!(v.reason.contains("returned the value of revision 5"), "{v}");
        assert!(v.reason.contains("written at 6"), "{v}");
        // Read-your-writes: after its own write at 6, a read of the write at 5 is wrong.
        let mut mine_b = at(op(0, put("b"), 2, Some(3)), 6);
        mine_b.session = true;
        let older = at(op(0, seq_get(Some("a")), 4, Some(5)), 5);
        assert!(check(&[mine.clone(), mine_b.clone(), older.clone()]).is_err());
        // The same write made outside the session promises nothing to the session.
        mine_b.session = false;
        assert!(check(&[mine, mine_b, older]).is_ok());
    }

    #[test]
    fn a_sequential_read_finds_a_key_absent_only_if_a_delete_may_have_run() {
        let mut mine = at(op(0, put("a"), 0, Some(1)), 5);
        mine.session = true;
        let absent = op(0, seq_get(None), 2, Some(3));
        let v = check(&[mine.clone(), absent.clone()]).unwrap_err();
        assert!(v.reason.contains("absent"), "{v}");
        // A delete of unknown outcome called before the read returned explains it.
        let delete = op(1, Kind::Delete, 1, None);
        assert!(check(&[mine.clone(), delete, absent.clone()]).is_ok());
        // One called only after the read returned does not.
        let late = op(1, Kind::Delete, 4, Some(5));
        assert!(check(&[mine, late, absent]).is_err());
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut other = op(2, get(Some("z")), 0, Some(1));
        other.key = b"other".to_vec();
        let v = check(&[op(0, put("a"), 0, Some(1)), other]).unwrap_err();
        assert_eq!(v.key, b"other");
    }
}
