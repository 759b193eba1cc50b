//! Proposal batching on the leader: requests that arrive while earlier ones are being handed to
//! Raft leave together as one log entry, bounded by operations and bytes (and an optional
//! linger). One entry means one append, one replication message and one apply call for many
//! client requests; each request still gets its own revision and its own reply.

use crate::node::Raft;
use crate::types::{Command, Op, Reply};
use c20_api::EtcdError;
use openraft::errors::{ClientWriteError, RaftError};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// Bounds of one batch; `ops_max: 1` turns batching off.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Most client requests in one log entry.
    pub ops_max: usize,
    /// Most request bytes in one log entry.
    pub bytes_max: usize,
    /// How long the first request of a batch waits for company (0: take what is queued once
    /// the tasks already woken have run).
    pub linger: Duration,
    /// Most batches replicating at once (pipelining); while the window is full, requests queue
    /// and leave together in the next batch. `1` turns pipelining off, `0` leaves it unbounded.
    pub window: usize,
}

/// Default of [`BatchConfig::ops_max`].
pub const DEFAULT_BATCH_OPS_MAX: usize = 256;

/// Default of [`BatchConfig::window`].
pub const DEFAULT_PROPOSAL_WINDOW: usize = 0;

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            ops_max: DEFAULT_BATCH_OPS_MAX,
            bytes_max: 1024 * 1024,
            linger: Duration::ZERO,
            window: DEFAULT_PROPOSAL_WINDOW,
        }
    }
}

/// How many of something are in progress at once, and the most there ever were.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl InFlight {
    /// Counts one more until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> InFlightGuard {
        let now = self.now.fetch_add(1, Ordering::AcqRel) + 1;
        self.most.fetch_max(now, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    pub(crate) fn most(&self) -> usize {
        self.most.load(Ordering::Acquire)
    }
}

pub(crate) struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the batcher has proposed so far.
#[derive(Debug, Default)]
pub(crate) struct BatchStats {
    entries: AtomicU64,
    requests: AtomicU64,
    in_flight: Arc<InFlight>,
}

/// A copy of the batcher's counters (see [`crate::RaftNode::proposal_counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProposalCounts {
    /// Log entries the batcher proposed on this node while it led.
    pub entries: u64,
    /// Client requests in those entries.
    pub requests: u64,
    /// The most entries ever replicating at the same time (at most the window).
    pub in_flight_max: usize,
}

type Done = oneshot::Sender<Result<(Reply, u64), EtcdError>>;

/// Hands commands to Raft in batches. Dropping it stops the batching task.
pub(crate) struct Batcher {
    tx: mpsc::UnboundedSender<(Command, Done)>,
    stats: Arc<BatchStats>,
}

impl Batcher {
    pub(crate) fn spawn(raft: Raft, cfg: BatchConfig) -> Batcher {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Command, Done)>();
        let stats = Arc::new(BatchStats::default());
        let counts = stats.clone();
        let window = (cfg.window > 0).then(|| Arc::new(Semaphore::new(cfg.window)));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Wait for room in the window before forming the batch: what arrives meanwhile
                // joins it.
                let slot = match &window {
                    Some(w) => match w.clone().acquire_owned().await {
                        Ok(permit) => Some(permit),
                        Err(_) => return,
                    },
                    None => None,
                };
                if !cfg.linger.is_zero() {
                    tokio::time::sleep(cfg.linger).await;
                } else {
                    let_woken_senders_queue().await;
                }
                let batch = take_queued(&mut rx, first, cfg.ops_max, cfg.bytes_max, |(c, _)| {
                    c.body_len()
                });
                counts.entries.fetch_add(1, Ordering::Relaxed);
                counts
                    .requests
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                let in_flight = (counts.in_flight.enter(), slot);
                // Each batch is proposed on its own task so that the next one can form while
                // this one replicates.
                tokio::spawn(propose(raft.clone(), batch, in_flight));
            }
        });
        Batcher { tx, stats }
    }

    pub(crate) fn counts(&self) -> ProposalCounts {
        ProposalCounts {
            entries: self.stats.entries.load(Ordering::Relaxed),
            requests: self.stats.requests.load(Ordering::Relaxed),
            in_flight_max: self.stats.in_flight.most(),
        }
    }

    /// Proposes `cmd` as the leader; `NotLeader` means nothing was proposed.
    pub(crate) async fn submit(&self, cmd: Command) -> Result<(Reply, u64), EtcdError> {
        let (done, rx) = oneshot::channel();
        self.tx.send((cmd, done)).map_err(|_| EtcdError::Stopped)?;
        rx.await.unwrap_or(Err(EtcdError::Stopped))
    }
}

/// Lets the tasks already woken run before a batch is cut from a queue.
///
/// Requests arrive from many client connections, each on a task of its own, and the sender of
/// the first woke the task that cuts batches. Tokio runs a task woken that way next, before
/// the other senders already woken (its LIFO slot: on unless the runtime turns it off, as
/// `c20_raft::rt::multi_thread_runtime` does), so without this yield a batch would hold one request whenever the
/// runtime has one thread (40,000 puts from 100 clients made 40,000 log entries;
/// docs/BENCHMARKS.md). With the slot off the yield still gathers more (docs/BENCHMARKS.md,
/// "Runtime: the LIFO slot").
pub(crate) async fn let_woken_senders_queue() {
    tokio::task::yield_now().await;
}

/// `first` and whatever is queued behind it now: at most `ops_max` items (at least one), and
/// no more once their `len` adds up to `bytes_max`.
pub(crate) fn take_queued<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    first: T,
    ops_max: usize,
    bytes_max: usize,
    len: impl Fn(&T) -> usize,
) -> Vec<T> {
    let mut bytes = len(&first);
    let mut batch = vec![first];
    while batch.len() < ops_max.max(1) && bytes < bytes_max {
        match rx.try_recv() {
            Ok(next) => {
                bytes += len(&next);
                batch.push(next);
            }
            Err(_) => break,
        }
    }
    batch
}

fn write_error(
    e: RaftError<crate::types::TypeConfig, ClientWriteError<crate::types::TypeConfig>>,
) -> EtcdError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => EtcdError::NotLeader,
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => {
            EtcdError::TimeoutDueToLeaderFail
        }
        RaftError::APIError(e) => EtcdError::Internal(e.to_string()),
        RaftError::Fatal(e) => EtcdError::StorageFailed(e.to_string()),
    }
}

/// Proposes one batch as one entry and answers each request; `_in_flight` counts it and holds
/// its place in the window until the outcome is known.
async fn propose(
    raft: Raft,
    mut batch: Vec<(Command, Done)>,
    _in_flight: (InFlightGuard, Option<OwnedSemaphorePermit>),
) {
    if batch.len() == 1 {
        let (cmd, done) = batch.pop().expect("one element");
        let res = raft
            .client_write(cmd)
            .await
            .map(|r| (r.data, r.log_id.index))
            .map_err(write_error);
        let _ = done.send(res);
        return;
    }
    let (cmds, dones): (Vec<Command>, Vec<Done>) = batch.into_iter().unzip();
    let entry = Command {
        id: 0,
        op: Op::Batch(cmds),
    };
    match raft.client_write(entry).await {
        Ok(resp) => {
            let index = resp.log_id.index;
            match resp.data {
                Reply::Batch(replies) if replies.len() == dones.len() => {
                    for (reply, done) in replies.into_iter().zip(dones) {
                        let _ = done.send(Ok((reply, index)));
                    }
                }
                other => {
                    let e =
                        EtcdError::Internal(format!("a batch of {} got {other:?}", dones.len()));
                    for done in dones {
                        let _ = done.send(Err(e.clone()));
                    }
                }
            }
        }
        Err(e) => {
            let e = write_error(e);
            for done in dones {
                let _ = done.send(Err(e.clone()));
            }
        }
    }
}
