//! [`LocalReplicator`]: an n-replica c20 cluster inside this process.
//!
//! Each replica is a real [`RaftNode`] (the code `c20 serve` runs); they talk through an
//! in-process router instead of gRPC and keep their log and store in memory unless a directory is
//! given. The replicator owns a small Tokio runtime, so it can be created outside any runtime
//! and used from any; [`Builder::build_here`] puts the replicas on the caller's runtime instead
//! (they then stop with it), which the simulator uses to run a whole cluster on one thread.

use c20_api::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, TxnRequest,
    TxnResponse,
};
use c20_api::mvccpb::KeyValue;
use c20_api::{ConsistencyLevel, EtcdError};
use c20_raft::clock::WallClock;
use c20_raft::consistency::PendingWrite;
use c20_raft::log_store::LogStore;
use c20_raft::state_machine::StateMachine;
use c20_raft::{Command, LocalRouter, NodeId, PeerNode, RaftNode, RaftNodeConfig, Transport};
use c20_storage::planted::{self, Bug};
use c20_storage::{CrashDamage, SimDisk, StorageError, WalOptions, WriteOp, WriteResult};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Why a replicator could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("LocalReplicator: n must be at least 1 (got n = {n})")]
    NoReplicas { n: usize },
    #[error("LocalReplicator: r must be between 1 and n = {n} (got r = {r})")]
    ReadQuorum { n: usize, r: usize },
    #[error("LocalReplicator: w must be between 1 and n = {n} (got w = {w})")]
    WriteQuorum { n: usize, w: usize },
    #[error(
        "LocalReplicator: r + w must exceed n so that every read quorum meets every write quorum \
         (got r = {r}, w = {w}, n = {n})"
    )]
    QuorumsDoNotOverlap { n: usize, r: usize, w: usize },
    #[error("LocalReplicator: {0}")]
    Start(String),
}

/// Checks `n ≥ 1`, `1 ≤ r, w ≤ n` and `r + w > n`.
pub fn validate(n: usize, r: usize, w: usize) -> Result<(), ConfigError> {
    if n < 1 {
        return Err(ConfigError::NoReplicas { n });
    }
    if !(1..=n).contains(&r) {
        return Err(ConfigError::ReadQuorum { n, r });
    }
    if !(1..=n).contains(&w) {
        return Err(ConfigError::WriteQuorum { n, w });
    }
    if r + w <= n {
        return Err(ConfigError::QuorumsDoNotOverlap { n, r, w });
    }
    Ok(())
}

/// What an acknowledged write tells the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteAck {
    /// The store revision the write produced; `None` for an `Eventual` write, whose revision is
    /// only known once it commits (see [`LocalReplicator::replicate_async`]).
    pub revision: Option<i64>,
    /// The log index the write took.
    pub index: u64,
}

/// A read with where and at what revision it was served (for tests and history checkers that
/// need to tell a stale replica from a lost write).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadResult {
    /// The key as the read found it.
    pub kv: Option<KeyValue>,
    /// The store revision the read saw (etcd's response header revision).
    pub revision: i64,
    /// The replica (0-based) that served it.
    pub replica: usize,
}

/// An `Eventual` write that is durable in the leader's log; replication continues.
#[derive(Debug)]
pub struct EventualWrite {
    /// The log index the write took.
    pub index: u64,
    pending: PendingWrite,
}

impl EventualWrite {
    /// Resolves to the revision once the write commits, or to [`EtcdError::Discarded`] when a
    /// leader change threw it away.
    pub async fn outcome(self) -> Result<i64, EtcdError> {
        match self.pending.outcome().await?.into_result()? {
            WriteResult::Put(r) => Ok(r.header.map_or(0, |h| h.revision)),
            other => Err(EtcdError::Internal(format!("unexpected reply {other:?}"))),
        }
    }
}

struct Replica {
    id: NodeId,
    node: Option<Arc<RaftNode>>,
    /// The in-memory "disk" kept across a crash, when there is no directory.
    disk: Option<(LogStore, StateMachine)>,
    /// The simulated disk under the log, with [`Builder::simulated`].
    sim: Option<SimDisk>,
    /// The replica's wall clock (its machine's: it outlives a crash).
    clock: Arc<WallClock>,
}

struct Inner {
    /// The runtime the replicator owns (`None` when built with [`Builder::build_here`]).
    rt: Option<tokio::runtime::Runtime>,
    /// Where replica tasks are spawned.
    handle: tokio::runtime::Handle,
    router: Arc<LocalRouter>,
    n: usize,
    r: usize,
    w: usize,
    peers: BTreeMap<NodeId, PeerNode>,
    dir: Option<PathBuf>,
    replicas: RwLock<Vec<Replica>>,
    /// The replicator's own session: the newest revision any of its calls has seen.
    session: Arc<AtomicI64>,
    next: AtomicUsize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// An n-replica cluster in this process; clones share it.
#[derive(Clone)]
pub struct LocalReplicator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalReplicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalReplicator")
            .field("n", &self.inner.n)
            .field("r", &self.inner.r)
            .field("w", &self.inner.w)
            .field("leader", &self.leader())
            .finish()
    }
}

/// A read-your-writes, monotonic-reads session over a replicator (for `Sequential`).
#[derive(Clone)]
pub struct Session {
    rep: LocalReplicator,
    seen: Arc<AtomicI64>,
}

/// Builds a [`LocalReplicator`] with options.
pub struct Builder {
    n: usize,
    r: usize,
    w: usize,
    storage: Storage,
    lifo_slot: bool,
}

/// The runtime a replicator of its own runs its replicas on (the threaded simulator too): two
/// worker threads, Tokio's LIFO slot only if `lifo_slot` (see
/// `c20_raft::rt::multi_thread_runtime`).
pub fn replica_runtime(lifo_slot: bool) -> tokio::runtime::Builder {
    c20_raft::rt::multi_thread_runtime(2, lifo_slot)
}

/// Where the replicas keep their state, and what a crash does to it.
#[derive(Clone, Default)]
struct Storage {
    dir: Option<PathBuf>,
    crash_loses_unsynced: bool,
    /// Seed of the simulated machines (disks under the logs, wall clocks).
    simulated: Option<u64>,
}

impl Builder {
    /// Keep each replica's log and store under `dir/r<i>` instead of in memory.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Builder {
        self.storage.dir = Some(dir.into());
        self
    }

    /// In memory, make [`LocalReplicator::crash`] lose what a real crash loses: every store
    /// change since the replica's last checkpoint (the log, fsynced before any acknowledgement,
    /// survives). By default an in-memory crash keeps the store whole.
    pub fn crash_loses_unsynced(mut self) -> Builder {
        self.storage.crash_loses_unsynced = true;
        self
    }

    /// Simulated machines, for the simulator. In memory, each replica's Raft log is the real
    /// WAL on a simulated disk ([`SimDisk`], seeded from `seed`) instead of a log that cannot
    /// fail: the WAL syncs each append a moment after writing it, and
    /// [`LocalReplicator::crash`] leaves the disk as a power failure would (unsynced writes
    /// lost or torn), so a restart goes through the WAL's recovery
    /// ([`LocalReplicator::disk_damage`] tells what the crashes did). Each replica's wall
    /// clock starts at a fixed date and follows the runtime's clock
    /// ([`WallClock::simulated`]), so lease ids too are a function of the run;
    /// [`LocalReplicator::step_wall_clock`] steps it.
    pub fn simulated(mut self, seed: u64) -> Builder {
        self.storage.simulated = Some(seed);
        self
    }

    /// Run the replicas on a runtime with Tokio's LIFO slot (off by default, as in
    /// `c20 serve`: see `c20_raft::rt::multi_thread_runtime`), to measure what it changes.
    /// [`Builder::build_here`] uses the caller's runtime as it is and ignores this.
    pub fn runtime_lifo_slot(mut self, on: bool) -> Builder {
        self.lifo_slot = on;
        self
    }

    pub fn build(self) -> Result<LocalReplicator, ConfigError> {
        validate(self.n, self.r, self.w)?;
        LocalReplicator::start(self)
    }

    /// Builds the replicator on the caller's Tokio runtime instead of a runtime of its own:
    /// every replica task is spawned there. On a single-threaded runtime with a paused clock
    /// and fixed seeds (see `c20_raft::rt::seed_thread_rng`), a run is then a function of its
    /// inputs, which is how the simulator replays a seed exactly.
    pub async fn build_here(self) -> Result<LocalReplicator, ConfigError> {
        validate(self.n, self.r, self.w)?;
        LocalReplicator::start_here(self).await
    }
}

/// The live replica that leads with the highest term, if any.
fn leader_in(reps: &[Replica]) -> Option<(usize, &Arc<RaftNode>)> {
    reps.iter()
        .enumerate()
        .filter_map(|(i, r)| r.node.as_ref().map(|n| (i, n)))
        .filter(|(_, n)| n.is_leader())
        .max_by_key(|(_, n)| n.term())
}

/// A plain put of `key = value`.
fn put_op(key: &[u8], value: &[u8]) -> WriteOp {
    WriteOp::Put(PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        ..Default::default()
    })
}

/// Most bytes of a segment of a log on a simulated disk: small, so that runs rotate segments.
const SIM_SEGMENT_BYTES: u64 = 64 << 10;
/// Most bytes of entries a log on a simulated disk keeps in memory: small, so that followers
/// behind and restarts read entries back from the WAL.
const SIM_CACHE_BYTES: usize = 16 << 10;

/// Opens (recovering) the log on a simulated disk.
fn sim_log(disk: &SimDisk) -> Result<LogStore, StorageError> {
    let opts = WalOptions {
        segment_bytes_max: SIM_SEGMENT_BYTES,
        disk: disk.mount(),
        inline: true,
        ..WalOptions::default()
    };
    let log = LogStore::open_with(std::path::Path::new("/raft"), opts)?;
    log.set_cache_bytes_max(SIM_CACHE_BYTES);
    Ok(log)
}

fn node_config(
    inner_peers: &BTreeMap<NodeId, PeerNode>,
    id: NodeId,
    dir: &Option<PathBuf>,
    router: &Arc<LocalRouter>,
    clock: &Arc<WallClock>,
) -> RaftNodeConfig {
    let data_dir = dir
        .as_ref()
        .map(|d| d.join(format!("r{id}")))
        .unwrap_or_default();
    let mut cfg = RaftNodeConfig::new(id, data_dir, inner_peers.clone());
    cfg.in_memory = dir.is_none();
    cfg.transport = Transport::Local(router.clone());
    cfg.heartbeat_interval_ms = 50;
    cfg.election_timeout_min_ms = 250;
    cfg.election_timeout_max_ms = 500;
    cfg.request_timeout = Duration::from_secs(5);
    cfg.wall_clock = clock.clone();
    cfg
}

/// Replicas `1..=n`, as Raft knows them.
fn peers_of(n: usize) -> BTreeMap<NodeId, PeerNode> {
    (1..=n as NodeId)
        .map(|id| {
            (
                id,
                PeerNode {
                    name: format!("r{id}"),
                    peer_urls: vec![],
                },
            )
        })
        .collect()
}

/// Starts every replica, in id order.
async fn start_replicas(
    peers: BTreeMap<NodeId, PeerNode>,
    router: Arc<LocalRouter>,
    storage: Storage,
) -> Result<Vec<Replica>, ConfigError> {
    let mut replicas = Vec::new();
    for &id in peers.keys() {
        // On disk (with a directory) the log is the real one: no simulated disk under it.
        let sim = storage
            .simulated
            .filter(|_| storage.dir.is_none())
            .map(|seed| SimDisk::new(seed ^ id.wrapping_mul(0x9e37_79b9)));
        let clock = match storage.simulated {
            Some(_) => WallClock::simulated(),
            None => WallClock::system(),
        };
        let cfg = node_config(&peers, id, &storage.dir, &router, &clock);
        let res = if cfg.in_memory {
            let log = match &sim {
                Some(disk) => sim_log(disk),
                None => Ok(LogStore::in_memory()),
            };
            match log.and_then(|log| Ok((log, StateMachine::in_memory()?))) {
                Ok((log, sm)) => {
                    if storage.crash_loses_unsynced {
                        sm.shared().model_disk();
                    }
                    RaftNode::start_with(cfg, log.clone(), sm.clone())
                        .await
                        .map(|node| (node, Some((log, sm))))
                }
                Err(e) => Err(e),
            }
        } else {
            RaftNode::start(cfg).await.map(|node| (node, None))
        };
        match res {
            Ok((node, disk)) => replicas.push(Replica {
                id,
                node: Some(node),
                disk,
                sim,
                clock,
            }),
            Err(e) => return Err(ConfigError::Start(e.to_string())),
        }
    }
    Ok(replicas)
}

impl LocalReplicator {
    /// Starts `n` replicas; reads at `Quorum` wait for `r`, writes for `w`.
    ///
    /// # Panics
    /// When the parameters break a rule (the message names it); see [`LocalReplicator::try_new`].
    pub fn new(n: usize, r: usize, w: usize) -> LocalReplicator {
        match Self::try_new(n, r, w) {
            Ok(rep) => rep,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`LocalReplicator::new`] that returns the broken rule instead of panicking.
    pub fn try_new(n: usize, r: usize, w: usize) -> Result<LocalReplicator, ConfigError> {
        Self::builder(n, r, w).build()
    }

    pub fn builder(n: usize, r: usize, w: usize) -> Builder {
        Builder {
            n,
            r,
            w,
            storage: Storage::default(),
            lifo_slot: false,
        }
    }

    fn start(b: Builder) -> Result<LocalReplicator, ConfigError> {
        let rt = replica_runtime(b.lifo_slot)
            .thread_name("c20-replica")
            .enable_all()
            .build()
            .map_err(|e| ConfigError::Start(e.to_string()))?;
        let router = LocalRouter::new();
        let peers = peers_of(b.n);
        let (tx, rx) = std::sync::mpsc::channel();
        let started = start_replicas(peers.clone(), router.clone(), b.storage.clone());
        rt.spawn(async move {
            let _ = tx.send(started.await);
        });
        let replicas = rx
            .recv()
            .map_err(|_| ConfigError::Start("replica start-up task ended".into()))??;
        let rep = LocalReplicator::assemble(Some(rt), router, peers, replicas, b);
        // Ready means a leader exists, so that the first call does not pay for the election.
        let deadline = Instant::now() + Duration::from_secs(10);
        while rep.leader().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(rep)
    }

    /// [`Builder::build_here`]: the replicas run on the caller's runtime.
    async fn start_here(b: Builder) -> Result<LocalReplicator, ConfigError> {
        let router = LocalRouter::new();
        let peers = peers_of(b.n);
        let replicas = start_replicas(peers.clone(), router.clone(), b.storage.clone()).await?;
        let rep = LocalReplicator::assemble(None, router, peers, replicas, b);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while rep.leader().is_none() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(rep)
    }

    fn assemble(
        rt: Option<tokio::runtime::Runtime>,
        router: Arc<LocalRouter>,
        peers: BTreeMap<NodeId, PeerNode>,
        replicas: Vec<Replica>,
        b: Builder,
    ) -> LocalReplicator {
        // Replica tasks go where the replicas run: the replicator's runtime, or the one that
        // built it with `build_here`.
        let handle = rt
            .as_ref()
            .map_or_else(tokio::runtime::Handle::current, |rt| rt.handle().clone());
        LocalReplicator {
            inner: Arc::new(Inner {
                rt,
                handle,
                router,
                n: b.n,
                r: b.r,
                w: b.w,
                peers,
                dir: b.storage.dir,
                replicas: RwLock::new(replicas),
                session: Arc::new(AtomicI64::new(0)),
                next: AtomicUsize::new(0),
            }),
        }
    }

    /// Number of replicas.
    pub fn replicas(&self) -> usize {
        self.inner.n
    }

    /// Runs a request's future: inline when the caller is inside a Tokio runtime (which must
    /// have time enabled, as `#[tokio::main]` does), else on the replicator's own runtime. The
    /// replicas themselves run on the replicator's runtime (or the builder's, with
    /// [`Builder::build_here`]); running the request side
    /// inline saves a task hand-off per call (measured: about twice the throughput in the
    /// stress example).
    async fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, EtcdError>> + Send + 'static,
    ) -> Result<T, EtcdError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return fut.await;
        }
        self.run_owned(fut).await
    }

    /// Runs `fut` on the replicator's runtime (for work that spawns replica tasks; the caller's,
    /// when built with [`Builder::build_here`]) and waits for it from any runtime.
    async fn run_owned<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, EtcdError>> + Send + 'static,
    ) -> Result<T, EtcdError> {
        self.inner
            .handle
            .spawn(fut)
            .await
            .unwrap_or_else(|e| Err(EtcdError::Internal(format!("replica task failed: {e}"))))
    }

    /// The replicas, read-locked. Routing looks at them in place on every call: no copies.
    fn slots(&self) -> std::sync::RwLockReadGuard<'_, Vec<Replica>> {
        self.inner.replicas.read().expect("replicas lock")
    }

    /// The replica (0-based) that currently leads, if one does. During a partition a deposed
    /// leader may still think it leads; the one with the highest term wins.
    pub fn leader(&self) -> Option<usize> {
        leader_in(&self.slots()).map(|(i, _)| i)
    }

    pub(crate) fn node(&self, i: usize) -> Result<Arc<RaftNode>, EtcdError> {
        self.slots()
            .get(i)
            .and_then(|r| r.node.clone())
            .ok_or_else(|| EtcdError::Internal(format!("replica {i} is down")))
    }

    /// Where writes and `Strong` reads go: the leader, else any live replica (which forwards).
    fn leader_node(&self) -> Result<Arc<RaftNode>, EtcdError> {
        let reps = self.slots();
        leader_in(&reps)
            .map(|(_, n)| n.clone())
            .or_else(|| reps.iter().find_map(|r| r.node.clone()))
            .ok_or(EtcdError::NoLeader)
    }

    /// Round-robin over live replicas, skipping the leader when `prefer_follower` and another
    /// replica is live.
    fn pick(&self, prefer_follower: bool) -> Result<Arc<RaftNode>, EtcdError> {
        let reps = self.slots();
        let live = reps.iter().filter(|r| r.node.is_some()).count();
        let skip = if prefer_follower && live > 1 {
            leader_in(&reps).map(|(i, _)| i)
        } else {
            None
        };
        let candidates = live - usize::from(skip.is_some());
        if candidates == 0 {
            return Err(EtcdError::NoLeader);
        }
        let k = self.inner.next.fetch_add(1, Ordering::Relaxed) % candidates;
        reps.iter()
            .enumerate()
            .filter(|(i, r)| r.node.is_some() && Some(*i) != skip)
            .nth(k)
            .and_then(|(_, r)| r.node.clone())
            .ok_or(EtcdError::NoLeader)
    }

    fn observe(session: &AtomicI64, revision: i64) {
        session.fetch_max(revision, Ordering::AcqRel);
    }

    /// Writes `key = value` at `level`.
    pub async fn replicate(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        level: ConsistencyLevel,
    ) -> Result<WriteAck, EtcdError> {
        let seen = self.inner.session.clone();
        self.put_in(key, value, level, seen).await
    }

    async fn put_in(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        level: ConsistencyLevel,
        seen: Arc<AtomicI64>,
    ) -> Result<WriteAck, EtcdError> {
        let op = put_op(key.as_ref(), value.as_ref());
        if level == ConsistencyLevel::Eventual {
            let w = self.eventual(op).await?;
            return Ok(WriteAck {
                revision: None,
                index: w.index,
            });
        }
        let (result, index) = self.write_op(op, level, seen).await?;
        let revision = match result {
            WriteResult::Put(PutResponse { header, .. }) => header.map(|h| h.revision),
            other => return Err(EtcdError::Internal(format!("unexpected reply {other:?}"))),
        };
        Ok(WriteAck { revision, index })
    }

    async fn write_op(
        &self,
        op: WriteOp,
        level: ConsistencyLevel,
        seen: Arc<AtomicI64>,
    ) -> Result<(WriteResult, u64), EtcdError> {
        if !planted::active(Bug::RetryWithoutDedup) {
            return self.write_op_once(op, level, seen).await;
        }
        // The planted bug: a client library that gives each attempt 100 ms and sends the write
        // again when it got no answer, with nothing to tell the two apart.
        let first = self.write_op_once(op.clone(), level, seen.clone());
        match tokio::time::timeout(Duration::from_millis(100), first).await {
            Ok(Err(
                EtcdError::Stopped
                | EtcdError::Timeout
                | EtcdError::TimeoutDueToLeaderFail
                | EtcdError::StorageFailed(_),
            ))
            | Err(_) => self.write_op_once(op, level, seen).await,
            Ok(answer) => answer,
        }
    }

    async fn write_op_once(
        &self,
        op: WriteOp,
        level: ConsistencyLevel,
        seen: Arc<AtomicI64>,
    ) -> Result<(WriteResult, u64), EtcdError> {
        let node = self.leader_node()?;
        let w = self.inner.w;
        self.run(async move {
            let (reply, index) = node.write(Command::from_op(&op), level, w).await?;
            let result = reply.into_result()?;
            let rev = match &result {
                WriteResult::Put(r) => r.header.as_ref().map(|h| h.revision),
                WriteResult::DeleteRange(r) => r.header.as_ref().map(|h| h.revision),
                WriteResult::Txn(r) => r.header.as_ref().map(|h| h.revision),
                WriteResult::Compact(r) => r.header.as_ref().map(|h| h.revision),
                WriteResult::LeaseGrant(r) => r.header.as_ref().map(|h| h.revision),
                WriteResult::LeaseRevoke(r) => r.header.as_ref().map(|h| h.revision),
            };
            Self::observe(&seen, rev.unwrap_or(0));
            Ok((result, index))
        })
        .await
    }

    async fn eventual(&self, op: WriteOp) -> Result<EventualWrite, EtcdError> {
        self.eventual_via(None, op).await
    }

    async fn eventual_via(
        &self,
        via: Option<usize>,
        op: WriteOp,
    ) -> Result<EventualWrite, EtcdError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let node = match via {
                Some(i) => self.node(i)?,
                None => self.leader_node()?,
            };
            let cmd = Command::from_op(&op);
            match self
                .run_owned(async move { node.write_async(cmd).await })
                .await
            {
                Ok(pending) => {
                    return Ok(EventualWrite {
                        index: pending.index,
                        pending,
                    })
                }
                // Nothing was proposed: try the leader as it is now.
                Err(EtcdError::NotLeader) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// An `Eventual` write: returns once it is durable in the leader's log; the handle resolves
    /// when it commits (with its revision) or is discarded.
    pub async fn replicate_async(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<EventualWrite, EtcdError> {
        let op = put_op(key.as_ref(), value.as_ref());
        self.eventual(op).await
    }

    /// Reads `key` at `level`.
    pub async fn read(
        &self,
        key: impl AsRef<[u8]>,
        level: ConsistencyLevel,
    ) -> Result<Option<Vec<u8>>, EtcdError> {
        Ok(self.get(key, level).await?.map(|kv| kv.value))
    }

    /// Reads `key` at `level` with its revisions and version.
    pub async fn get(
        &self,
        key: impl AsRef<[u8]>,
        level: ConsistencyLevel,
    ) -> Result<Option<KeyValue>, EtcdError> {
        Ok(self.read_result(key, level).await?.kv)
    }

    /// [`LocalReplicator::get`], also saying which replica served the read and at what store
    /// revision.
    pub async fn read_result(
        &self,
        key: impl AsRef<[u8]>,
        level: ConsistencyLevel,
    ) -> Result<ReadResult, EtcdError> {
        let seen = self.inner.session.clone();
        self.read_in(key, level, seen).await
    }

    async fn read_in(
        &self,
        key: impl AsRef<[u8]>,
        level: ConsistencyLevel,
        seen: Arc<AtomicI64>,
    ) -> Result<ReadResult, EtcdError> {
        let node = match level {
            ConsistencyLevel::Eventual => self.pick(false)?,
            ConsistencyLevel::Sequential => {
                // Prefer a replica that already reached the session; any one otherwise (it waits).
                let want = seen.load(Ordering::Acquire);
                let caught_up = self.slots().iter().find_map(|r| {
                    r.node
                        .as_ref()
                        .filter(|n| n.state().read(|s| s.current_revision()) >= want)
                        .cloned()
                });
                caught_up.map_or_else(|| self.pick(false), Ok)?
            }
            ConsistencyLevel::Quorum => self.pick(true)?,
            ConsistencyLevel::Strong | ConsistencyLevel::All => self.leader_node()?,
        };
        self.read_at(node, key.as_ref().to_vec(), level, seen).await
    }

    /// Reads `key` at `level` from replica `i` (0-based), wherever it stands: for tests that
    /// need to ask one particular replica.
    pub async fn read_from(
        &self,
        i: usize,
        key: impl AsRef<[u8]>,
        level: ConsistencyLevel,
    ) -> Result<Option<Vec<u8>>, EtcdError> {
        Ok(self.get_from(i, key, level).await?.map(|kv| kv.value))
    }

    /// [`LocalReplicator::read_from`] with the key's revisions and version.
    pub async fn get_from(
        &self,
        i: usize,
        key: impl AsRef<[u8]>,
        level: ConsistencyLevel,
    ) -> Result<Option<KeyValue>, EtcdError> {
        Ok(self.read_result_from(i, key, level).await?.kv)
    }

    /// [`LocalReplicator::get_from`], also giving the store revision the read saw.
    pub async fn read_result_from(
        &self,
        i: usize,
        key: impl AsRef<[u8]>,
        level: ConsistencyLevel,
    ) -> Result<ReadResult, EtcdError> {
        self.read_on(i, key.as_ref(), level, self.inner.session.clone())
            .await
    }

    /// A read at `level` from replica `i`, on behalf of a session that has seen `seen`.
    async fn read_on(
        &self,
        i: usize,
        key: &[u8],
        level: ConsistencyLevel,
        seen: Arc<AtomicI64>,
    ) -> Result<ReadResult, EtcdError> {
        let node = self.node(i)?;
        self.read_at(node, key.to_vec(), level, seen).await
    }

    async fn read_at(
        &self,
        node: Arc<RaftNode>,
        key: Vec<u8>,
        level: ConsistencyLevel,
        seen: Arc<AtomicI64>,
    ) -> Result<ReadResult, EtcdError> {
        let r = self.inner.r;
        // Replica ids are 1..=n in replica order.
        let replica = node.id() as usize - 1;
        self.run(async move {
            node.read_gate(level, r, seen.load(Ordering::Acquire))
                .await?;
            let resp = node.state().read(|s| {
                s.range(&RangeRequest {
                    key,
                    ..Default::default()
                })
            })?;
            // A crash of this replica may have reset its store to the last checkpoint while
            // the read was under way (see `LocalReplicator::crash`); then the read died with
            // the replica and must not report that state.
            if node.crashed() {
                return Err(EtcdError::Stopped);
            }
            let revision = resp.header.as_ref().map_or(0, |h| h.revision);
            if level != ConsistencyLevel::Eventual {
                Self::observe(&seen, revision);
            }
            Ok(ReadResult {
                kv: resp.kvs.into_iter().next(),
                revision,
                replica,
            })
        })
        .await
    }

    /// Deletes `key` at `level` (`Eventual` deletes are acknowledged like `Quorum` ones);
    /// returns whether it existed.
    pub async fn delete(
        &self,
        key: impl AsRef<[u8]>,
        level: ConsistencyLevel,
    ) -> Result<bool, EtcdError> {
        let op = WriteOp::DeleteRange(DeleteRangeRequest {
            key: key.as_ref().to_vec(),
            ..Default::default()
        });
        let level = if level == ConsistencyLevel::Eventual {
            ConsistencyLevel::Quorum
        } else {
            level
        };
        match self
            .write_op(op, level, self.inner.session.clone())
            .await?
            .0
        {
            WriteResult::DeleteRange(DeleteRangeResponse { deleted, .. }) => Ok(deleted > 0),
            other => Err(EtcdError::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Runs an etcd transaction at `level` (`Eventual` runs as `Quorum`).
    pub async fn txn(
        &self,
        txn: TxnRequest,
        level: ConsistencyLevel,
    ) -> Result<TxnResponse, EtcdError> {
        c20_storage::mvcc::validate_txn(&txn)?;
        let level = if level == ConsistencyLevel::Eventual {
            ConsistencyLevel::Quorum
        } else {
            level
        };
        match self
            .write_op(WriteOp::Txn(txn), level, self.inner.session.clone())
            .await?
            .0
        {
            WriteResult::Txn(r) => Ok(r),
            other => Err(EtcdError::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// A new session (its own read-your-writes horizon) over this replicator.
    pub fn session(&self) -> Session {
        Session {
            rep: self.clone(),
            seen: Arc::new(AtomicI64::new(0)),
        }
    }

    // ------------------------------------------------------------------ test controls

    /// An `Eventual` write proposed on replica `i` (0-based), which must believe it leads.
    pub async fn replicate_async_via(
        &self,
        i: usize,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<EventualWrite, EtcdError> {
        let op = put_op(key.as_ref(), value.as_ref());
        self.eventual_via(Some(i), op).await
    }

    /// Cuts replica `i` off from every other replica (both directions).
    pub fn isolate(&self, i: usize) {
        let id = self.inner.replicas.read().expect("replicas lock")[i].id;
        self.inner.router.isolate(id);
    }

    /// Restores every link of replica `i`.
    pub fn heal(&self, i: usize) {
        let id = self.inner.replicas.read().expect("replicas lock")[i].id;
        self.inner.router.heal(id);
    }

    /// Restores every link.
    pub fn heal_all(&self) {
        self.inner.router.heal_all();
    }

    /// Drops everything replica `from` sends to replica `to` (one direction only); undone by
    /// [`LocalReplicator::heal`] or [`LocalReplicator::heal_all`].
    pub fn cut_one_way(&self, from: usize, to: usize) {
        let reps = self.inner.replicas.read().expect("replicas lock");
        self.inner.router.block(reps[from].id, reps[to].id);
    }

    /// Loses and delays Raft messages between replicas at random (seeded): `loss_per_mille` of
    /// them are dropped (requests or replies), each waits up to `delay_max`. Zero turns it off.
    pub fn set_link_faults(&self, loss_per_mille: u32, delay_max: Duration, seed: u64) {
        self.inner.router.set_link_faults(
            c20_raft::LinkFaults {
                loss_per_mille,
                delay_max,
            },
            seed,
        );
    }

    /// Stops replica `i` abruptly (its storage stays, as a disk would; a simulated disk as a
    /// power failure leaves it).
    pub async fn crash(&self, i: usize) {
        let (node, sim) = {
            let mut reps = self.inner.replicas.write().expect("replicas lock");
            (reps[i].node.take(), reps[i].sim.clone())
        };
        if let Some(node) = node {
            let _ = self
                .run_owned(async move {
                    // The power goes first, in the same step as the node stops taking calls:
                    // what its teardown still writes (a last sync at close) fails.
                    if let Some(sim) = sim {
                        sim.crash();
                    }
                    node.crash().await;
                    Ok(())
                })
                .await;
            let reps = self.inner.replicas.read().expect("replicas lock");
            if let Some((_, sm)) = &reps[i].disk {
                // Restoring the store's own checkpoint image fails only on a bug.
                sm.shared()
                    .lose_unsynced()
                    .expect("a crashed replica returns to its last checkpoint");
            }
        }
    }

    /// With [`Builder::simulated`], cuts the power of replica `i`'s disk `ops` disk operations
    /// from now, in the middle of whatever its log is doing: from then on its log fails every
    /// write (the replica stops taking writes, as after any fsync error) until
    /// [`LocalReplicator::crash`], which then leaves the disk as the cut did.
    pub fn cut_power_after(&self, i: usize, ops: u64) {
        if let Some(sim) = &self.slots()[i].sim {
            sim.cut_power_after(ops);
        }
    }

    /// Steps replica `i`'s wall clock by `by_ms` milliseconds (negative: back), as NTP or an
    /// operator may. Only lease ids read it; lease expiry follows the monotonic clock.
    pub fn step_wall_clock(&self, i: usize, by_ms: i64) {
        self.slots()[i].clock.step(by_ms);
    }

    /// Grants a lease of `ttl` seconds (raised to the cluster's minimum) through replica `i`,
    /// which forwards it to the leader; answers the lease's id and its granted TTL.
    pub async fn lease_grant_via(&self, i: usize, ttl: i64) -> Result<(i64, i64), EtcdError> {
        let node = self.node(i)?;
        self.run(async move { node.lease_grant(ttl, 0).await.map(|r| (r.id, r.ttl)) })
            .await
    }

    /// Keeps lease `id` alive through replica `i` (answered by the leader that replica
    /// knows); answers the lease's TTL, or 0 when it no longer exists.
    pub async fn lease_keep_alive_via(&self, i: usize, id: i64) -> Result<i64, EtcdError> {
        let node = self.node(i)?;
        self.run(async move { node.lease_renew(id).await }).await
    }

    /// Revokes lease `id` through replica `i`: its keys are deleted at one revision.
    pub async fn lease_revoke_via(&self, i: usize, id: i64) -> Result<(), EtcdError> {
        let node = self.node(i)?;
        self.run(async move { node.lease_revoke(id).await.map(|_| ()) })
            .await
    }

    /// What crashes did to the replicas' simulated disks (all zero without
    /// [`Builder::simulated`]).
    pub fn disk_damage(&self) -> CrashDamage {
        let mut sum = CrashDamage::default();
        for r in self.slots().iter() {
            if let Some(sim) = &r.sim {
                sum += sim.damage();
            }
        }
        sum
    }

    /// Starts replica `i` again on its storage.
    pub async fn restart(&self, i: usize) -> Result<(), EtcdError> {
        let (id, disk, clock) = {
            let mut reps = self.inner.replicas.write().expect("replicas lock");
            let r = &mut reps[i];
            if r.node.is_some() {
                return Ok(());
            }
            if let (Some(sim), Some((log, _))) = (&r.sim, &mut r.disk) {
                // The log comes back from what the crash left on the disk.
                *log = sim_log(sim).map_err(|e| EtcdError::StorageFailed(e.to_string()))?;
            }
            (r.id, r.disk.clone(), r.clock.clone())
        };
        let cfg = node_config(
            &self.inner.peers,
            id,
            &self.inner.dir,
            &self.inner.router,
            &clock,
        );
        let node = self
            .run_owned(async move {
                match disk {
                    Some((log, sm)) => RaftNode::start_with(cfg, log, sm).await,
                    None => RaftNode::start(cfg).await,
                }
                .map_err(|e| EtcdError::StorageFailed(e.to_string()))
            })
            .await?;
        self.inner.replicas.write().expect("replicas lock")[i].node = Some(node);
        Ok(())
    }
}

impl Session {
    /// Writes `key = value`; later reads of this session see it.
    pub async fn replicate(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        level: ConsistencyLevel,
    ) -> Result<WriteAck, EtcdError> {
        self.rep.put_in(key, value, level, self.seen.clone()).await
    }

    /// Reads `key`; at `Sequential`, never older than anything this session saw.
    pub async fn read(
        &self,
        key: impl AsRef<[u8]>,
        level: ConsistencyLevel,
    ) -> Result<Option<Vec<u8>>, EtcdError> {
        Ok(self.get(key, level).await?.map(|kv| kv.value))
    }

    /// [`Session::read`] with the key's revisions and version.
    pub async fn get(
        &self,
        key: impl AsRef<[u8]>,
        level: ConsistencyLevel,
    ) -> Result<Option<KeyValue>, EtcdError> {
        Ok(self.rep.read_in(key, level, self.seen.clone()).await?.kv)
    }

    /// Reads `key` at `level` from replica `i` (0-based) in this session: at `Sequential` the
    /// replica first catches up with what the session has seen, however far behind it was.
    pub async fn read_result_from(
        &self,
        i: usize,
        key: impl AsRef<[u8]>,
        level: ConsistencyLevel,
    ) -> Result<ReadResult, EtcdError> {
        self.rep
            .read_on(i, key.as_ref(), level, self.seen.clone())
            .await
    }

    /// The newest revision this session has seen.
    pub fn seen_revision(&self) -> i64 {
        self.seen.load(Ordering::Acquire)
    }
}
