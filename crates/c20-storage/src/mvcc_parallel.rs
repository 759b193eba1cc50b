//! Applying a batch of requests with the reads of independent ones done in parallel.
//!
//! A batch is applied in log order, and every revision and response must be exactly what
//! applying it one request at a time gives. The reads are what costs (a txn's compares and
//! range reads, a delete's scan of its range); the writes are a few map inserts. So:
//!
//! 1. Schedule: each request's footprint (the key ranges it may read and write, on either
//!    branch of a txn) is checked against the writes of every request before it in the batch.
//!    A request none of whose reads overlaps an earlier write of the batch is independent: the
//!    state it reads is the same before the batch as at its turn.
//!    Compaction and lease revocation count as writing everything; lease grants and revokes
//!    as writing the lease table, which puts with a lease read.
//! 2. Read in parallel: the independent txns and deletes are spread over up to
//!    `apply_threads` threads, each working out from the state before the batch what the
//!    request would read at its turn: a txn's branch choices, its checks, the answers of its
//!    range reads up to its first write; a delete's victims.
//! 3. Apply in log order: every request, with what was read for it (the rest read at their
//!    turn, as serial apply does). Revisions are assigned here, so they are those of serial
//!    apply; only the response headers of the reads carried over are set at this point.
//!
//! A txn that reads a revision newer than the state before the batch is never prepared (its
//! result depends on how many writes come before it). `set_apply_threads(1)` turns all of this
//! off.

use super::{MvccStore, RangeResponse, WriteOp, WriteResult};
use crate::stored_kv::StoredKv;
use c20_api::etcdserverpb::{request_op, RequestOp, TxnRequest};
use c20_api::EtcdError;
use std::collections::{BTreeSet, VecDeque};

/// Fewer requests to prepare than this are not worth the threads: the batch is applied serially.
pub const PARALLEL_MIN_REQUESTS: usize = 8;

/// What the parallel phase read for one request.
pub(super) enum Prepared {
    Nothing,
    /// The keys a delete removes.
    Delete(Vec<StoredKv>),
    /// A txn's branch choices (depth first), the outcome of its checks, and the answers of its
    /// range reads that come before its first write, in execution order.
    Txn {
        path: Vec<bool>,
        check: Result<(), EtcdError>,
        ranges: VecDeque<RangeResponse>,
    },
}

/// A key range `[start, end)`; `end == None` is unbounded.
type Interval = (Vec<u8>, Option<Vec<u8>>);

/// The interval of etcd's `(key, range_end)` convention.
fn interval(key: &[u8], range_end: &[u8]) -> Interval {
    if range_end.is_empty() {
        let mut next = key.to_vec();
        next.push(0);
        (key.to_vec(), Some(next))
    } else if range_end == [0] {
        (key.to_vec(), None)
    } else {
        (key.to_vec(), Some(range_end.to_vec()))
    }
}

/// What a request may touch.
#[derive(Default)]
struct Footprint {
    reads: Vec<Interval>,
    writes: Vec<Interval>,
    /// Single keys written (kept apart: most writes are single keys).
    point_writes: Vec<Vec<u8>>,
    everything: bool,
    lease_read: bool,
    lease_write: bool,
    /// Reads at an explicit revision (the newest such revision).
    max_read_revision: i64,
}

impl Footprint {
    fn of(op: &WriteOp) -> Footprint {
        let mut f = Footprint::default();
        match op {
            WriteOp::Put(p) => {
                f.reads.push(interval(&p.key, &[]));
                f.point_writes.push(p.key.clone());
                f.lease_read = p.lease != 0;
            }
            WriteOp::DeleteRange(d) => {
                f.reads.push(interval(&d.key, &d.range_end));
                f.writes.push(interval(&d.key, &d.range_end));
            }
            WriteOp::Txn(t) => f.add_txn(t),
            WriteOp::Compact(_) => f.everything = true,
            WriteOp::LeaseGrant(_) => f.lease_write = true,
            WriteOp::LeaseRevoke(_) => {
                f.everything = true;
                f.lease_write = true;
            }
        }
        f
    }

    fn add_txn(&mut self, t: &TxnRequest) {
        for c in &t.compare {
            self.reads.push(interval(&c.key, &c.range_end));
        }
        for op in t.success.iter().chain(&t.failure) {
            self.add_op(op);
        }
    }

    fn add_op(&mut self, op: &RequestOp) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                self.reads.push(interval(&r.key, &r.range_end));
                self.max_read_revision = self.max_read_revision.max(r.revision);
            }
            Some(request_op::Request::RequestPut(p)) => {
                self.reads.push(interval(&p.key, &[]));
                self.point_writes.push(p.key.clone());
                self.lease_read |= p.lease != 0;
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                self.reads.push(interval(&d.key, &d.range_end));
                self.writes.push(interval(&d.key, &d.range_end));
            }
            Some(request_op::Request::RequestTxn(inner)) => self.add_txn(inner),
            None => {}
        }
    }
}

/// The writes of the requests scheduled so far.
#[derive(Default)]
struct Written {
    points: BTreeSet<Vec<u8>>,
    ranges: Vec<Interval>,
    everything: bool,
    leases: bool,
}

impl Written {
    fn overlaps(&self, (start, end): &Interval) -> bool {
        if end.as_ref().is_some_and(|end| end <= start) {
            return false; // an empty range reads nothing
        }
        let point_inside = match end {
            Some(end) => self
                .points
                .range::<[u8], _>((
                    std::ops::Bound::Included(start.as_slice()),
                    std::ops::Bound::Excluded(end.as_slice()),
                ))
                .next()
                .is_some(),
            None => self
                .points
                .range::<[u8], _>((
                    std::ops::Bound::Included(start.as_slice()),
                    std::ops::Bound::Unbounded,
                ))
                .next()
                .is_some(),
        };
        point_inside
            || self.ranges.iter().any(|(s, e)| {
                // [s, e) and [start, end) overlap when each starts before the other ends.
                let a = e.as_ref().is_none_or(|e| start < e);
                let b = end.as_ref().is_none_or(|end| s < end);
                a && b
            })
    }

    fn add(&mut self, f: Footprint) {
        self.points.extend(f.point_writes);
        self.ranges.extend(f.writes);
        self.everything |= f.everything;
        self.leases |= f.lease_write;
    }
}

/// Which requests of `ops` can be prepared from the state before the batch (at `base`).
pub fn schedule(ops: &[WriteOp], base: i64) -> Vec<bool> {
    let mut written = Written::default();
    ops.iter()
        .map(|op| {
            let f = Footprint::of(op);
            let worth = matches!(op, WriteOp::Txn(_) | WriteOp::DeleteRange(_));
            let dependent = written.everything
                || (f.lease_read && written.leases)
                || f.max_read_revision > base
                || f.reads.iter().any(|r| written.overlaps(r));
            written.add(f);
            worth && !dependent
        })
        .collect()
}

impl MvccStore {
    /// [`MvccStore::apply_batch`] with the parallel phase (see the module documentation).
    pub(super) fn apply_scheduled(
        &mut self,
        ops: Vec<WriteOp>,
    ) -> Vec<Result<WriteResult, EtcdError>> {
        // Most batches are puts: skip working out footprints (key copies) when too few
        // requests could be prepared anyway.
        let candidates = ops
            .iter()
            .filter(|op| matches!(op, WriteOp::Txn(_) | WriteOp::DeleteRange(_)))
            .count();
        if candidates < PARALLEL_MIN_REQUESTS {
            return ops.into_iter().map(|op| self.apply_one(op)).collect();
        }
        let chosen: Vec<usize> = schedule(&ops, self.current_rev)
            .into_iter()
            .enumerate()
            .filter_map(|(i, ok)| ok.then_some(i))
            .collect();
        if chosen.len() < PARALLEL_MIN_REQUESTS {
            return ops.into_iter().map(|op| self.apply_one(op)).collect();
        }
        let mut prepared: Vec<Prepared> = (0..ops.len()).map(|_| Prepared::Nothing).collect();
        let threads = self.apply_threads.min(chosen.len());
        let per_thread = chosen.len().div_ceil(threads);
        let store: &MvccStore = self;
        let prepare = |chunk: &[usize]| -> Vec<(usize, Prepared)> {
            chunk.iter().map(|&i| (i, store.prepare(&ops[i]))).collect()
        };
        // The calling thread takes the first share; the others go to scoped threads.
        let done: Vec<Vec<(usize, Prepared)>> = std::thread::scope(|s| {
            let mut chunks = chosen.chunks(per_thread);
            let first = chunks.next().unwrap_or(&[]);
            let handles: Vec<_> = chunks
                .map(|chunk| s.spawn(move || prepare(chunk)))
                .collect();
            let mut done = vec![prepare(first)];
            done.extend(
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a prepare thread panicked")),
            );
            done
        });
        for (i, p) in done.into_iter().flatten() {
            prepared[i] = p;
        }
        ops.into_iter()
            .zip(prepared)
            .map(|(op, pre)| self.apply_prepared(op, pre))
            .collect()
    }

    /// Reads, from the current state, what `op` reads at its turn (the caller checked that
    /// nothing before it in the batch changes that).
    fn prepare(&self, op: &WriteOp) -> Prepared {
        match op {
            WriteOp::DeleteRange(d) => Prepared::Delete(
                self.visible(&d.key, &d.range_end, self.current_rev)
                    .map(|(_, kv)| kv.clone())
                    .collect(),
            ),
            WriteOp::Txn(t) => {
                let path = self.txn_path(t);
                let check = self.check_txn_path(t, &path, 0).map(|_| ());
                let mut ranges = VecDeque::new();
                if check.is_ok() {
                    let mut at = 0;
                    self.first_reads(t, &path, &mut at, &mut ranges);
                }
                Prepared::Txn {
                    path,
                    check,
                    ranges,
                }
            }
            _ => Prepared::Nothing,
        }
    }

    /// The answers of the range reads on `path` before the first write, in execution order.
    /// Returns false once a write was reached (nothing after it is read here).
    fn first_reads(
        &self,
        t: &TxnRequest,
        path: &[bool],
        at: &mut usize,
        out: &mut VecDeque<RangeResponse>,
    ) -> bool {
        let branch = if path[*at] { &t.success } else { &t.failure };
        *at += 1;
        for op in branch {
            match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    out.push_back(self.txn_range(r, self.current_rev));
                }
                Some(request_op::Request::RequestPut(_))
                | Some(request_op::Request::RequestDeleteRange(_)) => return false,
                Some(request_op::Request::RequestTxn(inner))
                    if !self.first_reads(inner, path, at, out) =>
                {
                    return false;
                }
                Some(request_op::Request::RequestTxn(_)) | None => {}
            }
        }
        true
    }
}
