//! [`RaftNode`]: c20's consensus interface. Nothing above this file sees an openraft type.
//!
//! - [`RaftNode::propose`] replicates a command and returns what applying it produced; a
//!   follower forwards it to the leader.
//! - [`RaftNode::read_barrier`] returns once the local state machine reflects every write
//!   acknowledged before the call (ReadIndex: the leader confirms its leadership with a quorum,
//!   coalescing concurrent readers into one round; a follower asks the leader for that index and
//!   waits until it applied it).

use crate::batcher::{BatchConfig, Batcher, ProposalCounts};
use crate::clock::WallClock;
use crate::forward::{ForwardQueue, Forwarded};
use crate::lease::Lessor;
use crate::log_store::LogStore;
use crate::membership::{ask_peer, AskFailed, PeerAnswer, PeerAsk};
use crate::network::{peer_client, Network, PeerCompression, PEER_MESSAGE_BYTES_MAX};
use crate::snapshot_transfer::{Incoming, SnapshotAnswer, SnapshotMsg};
use crate::state_machine::{CheckpointPolicy, SmShared, StateMachine};
use crate::transport::Transport;
use crate::types::{
    Command, MemberAttrs, NodeId, PeerNode, Reply, Snapshot, StoredMembership, TypeConfig,
};
use c20_api::c20peer::peer_client::PeerClient;
use c20_api::c20peer::peer_server::{Peer, PeerServer};
use c20_api::c20peer::{
    AppliedReply, AppliedRequest, AskReply, AskRequest, ForwardReply, ForwardRequest, RaftKind,
    RaftReply, RaftRequest, ReadIndexReply, ReadIndexRequest,
};
use c20_api::net::GrpcChannel;
use c20_api::EtcdError;
use c20_storage::{IoFaults, StorageError, WalOptions};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{InitializeError, LinearizableReadError, RaftError};
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use openraft::{Config, ReadPolicy, ServerState, SnapshotPolicy};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// Fault injection for the store's file (see [`RaftNodeConfig::kv_faults`]).
#[derive(Clone)]
pub struct KvFaults(pub Arc<dyn IoFaults>);

impl std::fmt::Debug for KvFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvFaults")
    }
}

/// How one node is set up.
#[derive(Debug, Clone)]
pub struct RaftNodeConfig {
    pub id: NodeId,
    pub data_dir: PathBuf,
    /// Every initial member, this one included.
    pub initial_members: BTreeMap<NodeId, PeerNode>,
    /// Whether this node may initialize a new cluster (etcd's `--initial-cluster-state new`).
    pub bootstrap: bool,
    /// What this node publishes about itself once a leader exists.
    pub attrs: MemberAttrs,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// How long a request may wait for a leader, a commit or a read index.
    pub request_timeout: Duration,
    /// A snapshot is taken after this many entries since the last one (etcd `--snapshot-count`).
    pub snapshot_count: u64,
    /// Entries kept below a snapshot for slow followers, so a short lag needs no snapshot (etcd
    /// `--experimental-snapshot-catchup-entries`).
    pub snapshot_catchup_entries: u64,
    /// A snapshot is also taken once this many bytes of entries were written to the log since
    /// the last one (large values fill the disk long before `snapshot_count` entries).
    pub snapshot_log_bytes: u64,
    /// Options of the Raft log's WAL (segment size; fault injection in tests).
    pub wal: WalOptions,
    /// Fault injection in tests for the store's file: consulted before each of its writes and
    /// syncs (checkpoints, snapshots installed).
    pub kv_faults: Option<KvFaults>,
    /// Bytes of the newest log entries kept in memory besides the WAL; older ones are read
    /// back from it (see [`crate::log_store::CACHE_BYTES_MAX`], the default).
    pub log_cache_bytes: usize,
    /// Keep the log and the store in memory only (embedded clusters, simulation).
    pub in_memory: bool,
    /// How this node reaches its peers.
    pub transport: Transport,
    /// How client requests are grouped into log entries.
    pub batch: BatchConfig,
    /// lz4 compression of peer requests (gRPC transport only).
    pub peer_compression: PeerCompression,
    /// Most log appends in flight to one follower on its append stream (gRPC transport only);
    /// 0 sends each append as a call of its own, after the answer to the one before.
    pub append_window: usize,
    /// Threads that read for independent requests of an applied batch in parallel; 1 applies
    /// strictly one request after the other.
    pub apply_threads: usize,
    /// When the store checkpoints what was applied (etcd's `--backend-batch-interval` and
    /// `--backend-batch-limit`, and c20's `--backend-batch-bytes`).
    pub checkpoint: CheckpointPolicy,
    /// Whether concurrent linearizable reads on the leader share quorum rounds. Off, each read
    /// waits for a round of its own, one round after the other: a switch for measuring what
    /// coalescing contributes.
    pub read_coalescing: bool,
    /// The cluster's id (etcd's), which this member tells a joining member.
    pub cluster_id: u64,
    /// The wall clock lease ids are made from (see [`crate::clock`]).
    pub wall_clock: Arc<WallClock>,
}

impl RaftNodeConfig {
    pub fn new(id: NodeId, data_dir: PathBuf, initial_members: BTreeMap<NodeId, PeerNode>) -> Self {
        RaftNodeConfig {
            id,
            data_dir,
            initial_members,
            bootstrap: true,
            attrs: MemberAttrs::default(),
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            request_timeout: Duration::from_secs(7),
            snapshot_count: 100_000,
            snapshot_catchup_entries: 5000,
            snapshot_log_bytes: 256 << 20,
            wal: WalOptions::default(),
            kv_faults: None,
            log_cache_bytes: crate::log_store::CACHE_BYTES_MAX,
            in_memory: false,
            transport: Transport::Grpc,
            batch: BatchConfig::default(),
            peer_compression: PeerCompression::OFF,
            append_window: crate::network::DEFAULT_APPEND_WINDOW,
            apply_threads: default_apply_threads(),
            checkpoint: CheckpointPolicy::default(),
            read_coalescing: true,
            cluster_id: 0,
            wall_clock: WallClock::system(),
        }
    }
}

/// The machine's cores, at most 4 (the parallel phase of apply gains little beyond that).
pub fn default_apply_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// A point-in-time view of this node's Raft state.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub id: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub is_leader: bool,
    pub is_learner: bool,
    pub last_log_index: u64,
    pub applied_index: u64,
    /// Last log index covered by this node's latest snapshot (0: none yet).
    pub snapshot_index: u64,
    /// The log is purged up to here (0: nothing purged).
    pub purged_index: u64,
    /// Snapshots received from a leader and installed: (full, incremental).
    pub snapshots_installed: (u64, u64),
    /// Why this node stopped, if it did (storage failure, ...).
    pub fatal: Option<String>,
}

/// One member as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: NodeId,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

pub struct RaftNode {
    id: NodeId,
    raft: Raft,
    batcher: Batcher,
    transport: Transport,
    request_seq: AtomicU64,
    /// Handle counts of (state machine, log store) once openraft let go of them.
    released: (usize, usize),
    sm: Arc<SmShared>,
    log: LogStore,
    request_timeout: Duration,
    election_timeout: Duration,
    cluster_id: u64,
    /// Set once a membership that includes this node took effect here: only a node that was a
    /// member can be removed (a joining learner replays older memberships without itself).
    was_member: std::sync::atomic::AtomicBool,
    /// Set when the leader said this member was removed.
    told_removed: std::sync::atomic::AtomicBool,
    /// Set as [`RaftNode::crash`] begins.
    crashed: std::sync::atomic::AtomicBool,
    pub(crate) removed_notify: tokio::sync::Notify,
    pub(crate) lessor: Lessor,
    pub(crate) wall_clock: Arc<WallClock>,
    peers: Mutex<HashMap<NodeId, PeerClient<GrpcChannel>>>,
    forwarders: Mutex<HashMap<NodeId, ForwardQueue>>,
    pub(crate) forwarded_in: crate::forward::ForwardedIn,
    /// The snapshot transfer being received, if any (a newer one replaces it).
    incoming_snapshot: Mutex<Option<Incoming>>,
    /// Held across a leader's read round when reads are not coalesced, with the number of
    /// rounds run so far (one per read).
    read_round: Option<(tokio::sync::Mutex<()>, AtomicU64)>,
}

impl RaftNode {
    /// Opens the node's storage and starts Raft. Call inside a Tokio runtime.
    pub async fn start(cfg: RaftNodeConfig) -> Result<Arc<RaftNode>, StorageError> {
        let (log, sm) = if cfg.in_memory {
            (LogStore::in_memory(), StateMachine::in_memory()?)
        } else {
            let log = LogStore::open_with(&cfg.data_dir.join("raft"), cfg.wal.clone())?;
            log.set_cache_bytes_max(cfg.log_cache_bytes);
            (
                log,
                StateMachine::open_with_faults(
                    &cfg.data_dir.join("kv"),
                    cfg.kv_faults.as_ref().map(|f| f.0.clone()),
                )?,
            )
        };
        Self::start_with(cfg, log, sm).await
    }

    /// Starts Raft on storage the caller opened (an embedded cluster restarts a member on the
    /// same in-memory "disk" this way).
    pub async fn start_with(
        cfg: RaftNodeConfig,
        log: LogStore,
        sm: StateMachine,
    ) -> Result<Arc<RaftNode>, StorageError> {
        let shared = sm.shared();
        shared.set_apply_threads(cfg.apply_threads);
        shared.set_checkpoint_policy(cfg.checkpoint);
        // What the handle counts return to once openraft has dropped its copies: the caller's
        // handles and ours, without the state machine and log store moved into openraft.
        let released = (Arc::strong_count(&shared) - 1, log.handles());
        let config = Config {
            cluster_name: "c20".into(),
            heartbeat_interval: cfg.heartbeat_interval_ms,
            election_timeout_min: cfg.election_timeout_min_ms,
            election_timeout_max: cfg.election_timeout_max_ms,
            install_snapshot_timeout: 60_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_count),
            max_in_snapshot_log_to_keep: cfg.snapshot_catchup_entries,
            // Appends carry up to this many entries; a bigger batch amortizes the per-RPC work.
            max_payload_entries: 1024,
            // Retries to an unreachable peer: 100, 200, 400 ms, then every 500 ms (openraft's
            // default caps at 1 s), so a restarted member is noticed within half a second.
            backoff: "100ms 200ms ...500ms".to_string(),
            // A restarted leader must win an election again. openraft would otherwise let it
            // resume at once, and since the store is checkpointed lazily and the commit index
            // is not persisted, it could then answer ReadIndex with a stale index: the chaos
            // test (crates/c20-cli/tests/chaos.rs) caught linearizable reads served below an
            // acknowledged write right after a leader was killed and restarted.
            enable_leader_restore: Some(false),
            ..Default::default()
        }
        .validate()
        .map_err(|e| StorageError::Io(format!("raft config: {e}")))?;
        let network = Network {
            from: cfg.id,
            transport: cfg.transport.clone(),
            compression: cfg.peer_compression,
            append_window: cfg.append_window,
        };
        let raft = Raft::new(cfg.id, Arc::new(config), network, log.clone(), sm)
            .await
            .map_err(|e| StorageError::Io(format!("raft start: {e}")))?;
        if cfg.bootstrap {
            // Every initial member may write the same first membership entry, so any of them can
            // bootstrap. The lowest id does it at once; the others wait for its leader and only
            // step in if none shows up, so that a normal start has no split vote at term 1.
            let first = cfg.initial_members.keys().next() == Some(&cfg.id);
            if first {
                initialize(&raft, &cfg.initial_members).await?;
            } else {
                let raft = raft.clone();
                let members = cfg.initial_members.clone();
                let grace = Duration::from_millis(cfg.election_timeout_max_ms * 2);
                tokio::spawn(async move {
                    let _ = raft
                        .wait(Some(grace))
                        .metrics(|m| m.current_leader.is_some(), "leader after bootstrap")
                        .await;
                    if let Err(e) = initialize(&raft, &members).await {
                        tracing::error!(error = %e, "bootstrapping the cluster failed");
                    }
                });
            }
        }
        let node = Arc::new(RaftNode {
            id: cfg.id,
            batcher: Batcher::spawn(raft.clone(), cfg.batch.clone()),
            raft,
            transport: cfg.transport.clone(),
            request_seq: AtomicU64::new(1),
            released,
            sm: shared,
            log,
            request_timeout: cfg.request_timeout,
            election_timeout: Duration::from_millis(cfg.election_timeout_min_ms),
            cluster_id: cfg.cluster_id,
            was_member: std::sync::atomic::AtomicBool::new(false),
            told_removed: std::sync::atomic::AtomicBool::new(false),
            crashed: std::sync::atomic::AtomicBool::new(false),
            incoming_snapshot: Mutex::new(None),
            read_round: (!cfg.read_coalescing)
                .then(|| (tokio::sync::Mutex::new(()), AtomicU64::new(0))),
            removed_notify: tokio::sync::Notify::new(),
            lessor: Lessor::default(),
            wall_clock: cfg.wall_clock.clone(),
            peers: Mutex::new(HashMap::new()),
            forwarders: Mutex::new(HashMap::new()),
            forwarded_in: Default::default(),
        });
        if let Transport::Local(router) = &cfg.transport {
            router.register(&node);
        }
        node.spawn_publisher(cfg.attrs);
        node.spawn_lessor();
        node.spawn_snapshot_trigger(cfg.snapshot_log_bytes);
        Ok(node)
    }

    /// Publishes this member's name and client URLs through the log until it took effect.
    fn spawn_publisher(self: &Arc<Self>, attrs: MemberAttrs) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(node) = weak.upgrade() else { return };
                if node.sm.member_attrs().get(&node.id) == Some(&attrs) {
                    return;
                }
                let cmd = Command::publish(node.id, attrs.clone());
                match node.propose(cmd).await {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "publishing member attributes, will retry")
                    }
                }
                drop(node);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    /// Takes a snapshot whenever `limit` bytes of entries reached the log since the last one
    /// (openraft's own policy counts entries only).
    fn spawn_snapshot_trigger(self: &Arc<Self>, limit: u64) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let (mut mark, mut last_snapshot) = (0u64, 0u64);
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Some(node) = weak.upgrade() else { return };
                let status = node.status();
                let bytes = node.log.appended_bytes();
                if status.snapshot_index != last_snapshot {
                    (mark, last_snapshot) = (bytes, status.snapshot_index);
                }
                if bytes.saturating_sub(mark) < limit || status.applied_index <= last_snapshot {
                    continue;
                }
                tracing::info!(
                    bytes = bytes - mark,
                    "log bytes since the last snapshot reached the limit; taking a snapshot"
                );
                // Counted from here until the snapshot shows up, so one is asked for at a time.
                mark = bytes;
                if node.raft.trigger().snapshot().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Hands leadership to voter `target` and waits until it leads (etcd's MoveLeader). Only
    /// the leader can do it.
    pub async fn move_leader(&self, target: NodeId) -> Result<(), EtcdError> {
        let (voter, leader) = {
            let rx = self.raft.metrics();
            let m = rx.borrow_watched();
            let voter = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == target);
            (voter, m.current_leader)
        };
        if leader != Some(self.id) {
            return Err(EtcdError::NotLeader);
        }
        if !voter {
            return Err(EtcdError::BadLeaderTransferee);
        }
        if target == self.id {
            return Ok(());
        }
        self.raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|_| EtcdError::Stopped)?;
        self.raft
            .wait(Some(self.request_timeout))
            .metrics(|m| m.current_leader == Some(target), "leader moved")
            .await
            .map(|_| ())
            .map_err(|_| EtcdError::TimeoutLeaderTransfer)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The cluster's id, as configured.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// Whether `membership` (the one in effect, from openraft's metrics) shows this node
    /// removed: it was a member, and the membership no longer has it.
    pub(crate) fn removed_in(&self, membership: &StoredMembership) -> bool {
        if self.told_removed.load(Ordering::Relaxed) {
            return true;
        }
        if membership.membership().get_node(&self.id).is_some() {
            self.was_member.store(true, Ordering::Relaxed);
            return false;
        }
        self.was_member.load(Ordering::Relaxed) && membership.log_id().is_some()
    }

    /// Records that the leader removed this member.
    pub(crate) fn mark_removed(&self) {
        if !self.told_removed.swap(true, Ordering::Relaxed) {
            tracing::error!("this member has been permanently removed from the cluster");
        }
        self.removed_notify.notify_waiters();
    }

    /// Drops the cached connection and forward queue to `id` (its URLs changed).
    pub(crate) fn forget_peer(&self, id: NodeId) {
        self.peers.lock().expect("peers lock").remove(&id);
        self.forwarders.lock().expect("forwarders lock").remove(&id);
    }

    pub(crate) fn raft(&self) -> &Raft {
        &self.raft
    }

    pub(crate) fn log(&self) -> &LogStore {
        &self.log
    }

    /// Log entries held in memory and their bytes (the rest of the log is in the WAL only).
    pub fn log_entries_in_memory(&self) -> (usize, usize) {
        self.log.cached()
    }

    pub(crate) fn transport(&self) -> &Transport {
        &self.transport
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The shortest election timeout (leases are extended by it on a leader change).
    pub(crate) fn election_timeout(&self) -> Duration {
        self.election_timeout
    }

    pub(crate) fn metrics(&self) -> openraft::RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// A request id no other pending proposal of this node uses (0 is reserved for "none").
    pub(crate) fn next_request_id(&self) -> u64 {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        self.id
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(n)
            .max(1)
    }

    /// The state machine, for local reads.
    pub fn state(&self) -> &SmShared {
        &self.sm
    }

    pub fn status(&self) -> NodeStatus {
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        let is_learner = m
            .membership_config
            .membership()
            .learner_ids()
            .any(|l| l == self.id);
        NodeStatus {
            id: self.id,
            leader: m.current_leader,
            term: m.current_term,
            is_leader: m.state == ServerState::Leader,
            is_learner,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            snapshots_installed: self.sm.snapshots_installed(),
            fatal: match (&m.running_state, self.log.failure()) {
                (_, Some(e)) => Some(e),
                (Err(e), None) => Some(e.to_string()),
                (Ok(()), None) => None,
            },
        }
    }

    /// Whether this node believes it leads (cheaper than [`RaftNode::status`]).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// This node's current term (cheaper than [`RaftNode::status`]).
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }

    pub fn members(&self) -> Vec<MemberInfo> {
        let m = self.raft.metrics().borrow_watched().clone();
        let attrs = self.sm.member_attrs();
        let membership = m.membership_config.membership();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| {
                let a = attrs.get(id).cloned().unwrap_or_default();
                MemberInfo {
                    id: *id,
                    name: a.name,
                    peer_urls: node.peer_urls.clone(),
                    client_urls: a.client_urls,
                    is_learner: learners.contains(id),
                }
            })
            .collect()
    }

    /// Waits (bounded by `deadline`) until some node is known as leader.
    pub(crate) async fn leader(&self, deadline: Instant) -> Result<NodeId, EtcdError> {
        let mut rx = self.raft.metrics();
        loop {
            {
                let m = rx.borrow_watched();
                if let Err(e) = &m.running_state {
                    return Err(EtcdError::StorageFailed(e.to_string()));
                }
                if self.removed_in(&m.membership_config) {
                    return Err(EtcdError::MemberRemoved);
                }
                if let Some(l) = m.current_leader {
                    return Ok(l);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(EtcdError::NoLeader);
            }
            match tokio::time::timeout(left, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(EtcdError::Stopped),
                Err(_) => return Err(EtcdError::NoLeader),
            }
        }
    }

    pub(crate) fn grpc_peer(&self, id: NodeId) -> Result<PeerClient<GrpcChannel>, EtcdError> {
        if let Some(c) = self.peers.lock().expect("peers lock").get(&id) {
            return Ok(c.clone());
        }
        let client = peer_client(&self.peer_url(id)?).map_err(EtcdError::Internal)?;
        self.peers
            .lock()
            .expect("peers lock")
            .insert(id, client.clone());
        Ok(client)
    }

    /// The peer URL of member `id`, from the membership.
    fn peer_url(&self, id: NodeId) -> Result<String, EtcdError> {
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        // A member can hear from a leader (a vote, an append) before it knows the leader's
        // address: at a new cluster's start, before the membership entry reaches it, or when
        // restarted before it received the membership. Nothing is sent then: reads, asks and
        // forwarded writes wait and try again as after a leader change, by which time the
        // membership has usually arrived.
        let node = m
            .membership_config
            .membership()
            .get_node(&id)
            .ok_or(EtcdError::NotLeader)?;
        Ok(node.peer_urls.first().cloned().unwrap_or_default())
    }

    /// Replicates `cmd` and returns what applying it produced. Never retried once it may have
    /// been appended: an unknown outcome is reported as such.
    pub async fn propose(&self, cmd: Command) -> Result<Reply, EtcdError> {
        self.propose_indexed(cmd).await.map(|(reply, _)| reply)
    }

    /// [`RaftNode::propose`], also returning the index of the log entry.
    pub async fn propose_indexed(&self, cmd: Command) -> Result<(Reply, u64), EtcdError> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let leader = self.leader(deadline).await?;
            if leader == self.id {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, self.batcher.submit(cmd.clone())).await {
                    Err(_) => return Err(EtcdError::Timeout),
                    Ok(Err(EtcdError::NotLeader)) => {
                        // Not appended here: safe to send again once a leader is known.
                        self.wait_leader_change(leader, deadline).await?;
                        continue;
                    }
                    Ok(res) => return res,
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.forward(leader, &cmd, left).await? {
                Forwarded::NotSent | Forwarded::Answered(Err(EtcdError::NotLeader)) => {
                    // Nothing was proposed: safe to send again to whoever leads now.
                    self.wait_leader_change(leader, deadline).await?;
                }
                Forwarded::Lost => return Err(EtcdError::TimeoutDueToLeaderFail),
                Forwarded::Answered(res) => return res,
            }
        }
    }

    /// Hands `cmd` to the leader `to` and waits for its answer.
    async fn forward(
        &self,
        to: NodeId,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<Forwarded, EtcdError> {
        match &self.transport {
            Transport::Grpc => {
                let sender = match self.forwarder(to) {
                    Ok(sender) => sender,
                    // The leader's address is not known here yet: nothing was sent, so the
                    // write waits and goes again, as after a leader change.
                    Err(EtcdError::NotLeader) => return Ok(Forwarded::NotSent),
                    Err(e) => return Err(e),
                };
                let (done, rx) = oneshot::channel();
                sender
                    .send((cmd.clone(), done))
                    .map_err(|_| EtcdError::Stopped)?;
                match tokio::time::timeout(timeout, rx).await {
                    Err(_) => Err(EtcdError::Timeout),
                    Ok(Err(_)) => Ok(Forwarded::Lost),
                    Ok(Ok(f)) => Ok(f),
                }
            }
            Transport::Local(router) => {
                let Ok(leader) = router.route(self.id, to) else {
                    return Ok(Forwarded::NotSent);
                };
                let cmd = cmd.clone();
                let res =
                    tokio::time::timeout(
                        timeout,
                        async move { leader.propose_as_leader(cmd).await },
                    )
                    .await
                    .map_err(|_| EtcdError::Timeout)?;
                if router.can_reach(to, self.id) {
                    Ok(Forwarded::Answered(res))
                } else {
                    Ok(Forwarded::Lost)
                }
            }
        }
    }

    /// The queue of writes to forward to leader `to` (see [`crate::forward`]).
    fn forwarder(&self, to: NodeId) -> Result<ForwardQueue, EtcdError> {
        if let Some(q) = self.forwarders.lock().expect("forwarders lock").get(&to) {
            return Ok(q.clone());
        }
        // A connection of its own: a stream the leader is slow to read must not hold up the
        // reads and asks that share the peer client's connection.
        let client = peer_client(&self.peer_url(to)?).map_err(EtcdError::Internal)?;
        let tx = crate::forward::spawn(client, self.request_timeout);
        self.forwarders
            .lock()
            .expect("forwarders lock")
            .insert(to, tx.clone());
        Ok(tx)
    }

    /// Batches of writes forwarded to this node: (on forward streams, as calls of their own).
    pub fn forwarded_batches(&self) -> (u64, u64) {
        (
            self.forwarded_in.on_streams.load(Ordering::Relaxed),
            self.forwarded_in.as_calls.load(Ordering::Relaxed),
        )
    }

    /// Asks the leader `to` for a confirmed read index.
    async fn remote_read_index(&self, to: NodeId, timeout: Duration) -> Result<u64, EtcdError> {
        match &self.transport {
            Transport::Grpc => {
                let mut client = self.grpc_peer(to)?;
                match tokio::time::timeout(timeout, client.read_index(ReadIndexRequest {})).await {
                    Err(_) => Err(EtcdError::Timeout),
                    Ok(Err(_)) => Err(EtcdError::NotLeader),
                    Ok(Ok(r)) => {
                        postcard::from_bytes::<Result<u64, EtcdError>>(&r.into_inner().result)
                            .map_err(|e| EtcdError::Internal(e.to_string()))?
                    }
                }
            }
            Transport::Local(router) => {
                self.call_local(router, to, timeout, |leader| async move {
                    leader.read_index_as_leader().await
                })
                .await
            }
        }
    }

    /// Asks the leader `ask`, wherever it is (retried on a leader change: every such question
    /// is safe to repeat).
    pub(crate) async fn ask_leader(&self, ask: PeerAsk) -> Result<PeerAnswer, EtcdError> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let leader = self.leader(deadline).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            let res = if leader == self.id {
                self.answer(ask.clone()).await
            } else {
                self.remote_ask(leader, ask.clone(), left).await
            };
            match res {
                Err(EtcdError::NotLeader) => self.wait_leader_change(leader, deadline).await?,
                other => return other,
            }
        }
    }

    /// Asks member `to` (whether it leads or not) and returns its answer.
    pub(crate) async fn remote_ask(
        &self,
        to: NodeId,
        ask: PeerAsk,
        timeout: Duration,
    ) -> Result<PeerAnswer, EtcdError> {
        match &self.transport {
            Transport::Grpc => match ask_peer(self.grpc_peer(to)?, &ask, timeout).await {
                Ok(answer) => answer,
                Err(AskFailed::NoAnswer) => Err(EtcdError::Timeout),
                Err(AskFailed::Call(_)) => Err(EtcdError::NotLeader),
            },
            Transport::Local(router) => {
                self.call_local(
                    router,
                    to,
                    timeout,
                    |peer| async move { peer.answer(ask).await },
                )
                .await
            }
        }
    }

    /// Runs `f` on member `to` through the in-process router, as a peer call would: the link
    /// cut or the member down is [`EtcdError::NotLeader`] (nothing was asked, ask whoever leads
    /// next); no answer in time, or the way back cut, is [`EtcdError::Timeout`].
    async fn call_local<T, F, Fut>(
        &self,
        router: &crate::transport::LocalRouter,
        to: NodeId,
        timeout: Duration,
        f: F,
    ) -> Result<T, EtcdError>
    where
        F: FnOnce(Arc<RaftNode>) -> Fut,
        Fut: std::future::Future<Output = Result<T, EtcdError>>,
    {
        let peer = router
            .route(self.id, to)
            .map_err(|_| EtcdError::NotLeader)?;
        let res = tokio::time::timeout(timeout, f(peer))
            .await
            .map_err(|_| EtcdError::Timeout)?;
        if router.can_reach(to, self.id) {
            res
        } else {
            Err(EtcdError::Timeout)
        }
    }

    /// Answers a peer's question here ([`EtcdError::NotLeader`] for what only the leader may
    /// answer when this node does not lead).
    pub(crate) async fn answer(&self, ask: PeerAsk) -> Result<PeerAnswer, EtcdError> {
        match ask {
            PeerAsk::Lease(a) => self.lease_as_leader(a).await.map(PeerAnswer::Lease),
            PeerAsk::Admin(a) => self.admin_as_leader(a).await.map(PeerAnswer::Admin),
        }
    }

    /// A batch of writes a follower forwarded, each proposed as if it arrived here; the
    /// outcomes in order.
    pub(crate) async fn propose_forwarded(
        &self,
        cmds: Vec<Command>,
    ) -> Vec<Result<(Reply, u64), EtcdError>> {
        futures::future::join_all(cmds.into_iter().map(|cmd| self.propose_as_leader(cmd))).await
    }

    /// Proposes only if this node leads; [`EtcdError::NotLeader`] otherwise (nothing proposed).
    pub(crate) async fn propose_as_leader(&self, cmd: Command) -> Result<(Reply, u64), EtcdError> {
        tokio::time::timeout(self.request_timeout, self.batcher.submit(cmd))
            .await
            .unwrap_or(Err(EtcdError::Timeout))
    }

    /// Waits until the known leader is no longer `old` (or the deadline passes). A short pause
    /// bounds the loop when the same leader is reported again.
    pub(crate) async fn wait_leader_change(
        &self,
        old: NodeId,
        deadline: Instant,
    ) -> Result<(), EtcdError> {
        let mut rx = self.raft.metrics();
        let pause = tokio::time::sleep(Duration::from_millis(50));
        tokio::pin!(pause);
        loop {
            if rx.borrow_watched().current_leader != Some(old) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(EtcdError::Timeout);
            }
            tokio::select! {
                // In argument order: a seeded, single-threaded run must choose the same way.
                biased;
                _ = &mut pause => return Ok(()),
                r = rx.changed() => if r.is_err() { return Err(EtcdError::Stopped) },
                _ = tokio::time::sleep(left) => return Err(EtcdError::Timeout),
            }
        }
    }

    /// Leader side of ReadIndex: confirms leadership with a quorum and returns the index that a
    /// linearizable read must wait for. openraft queues concurrent requests and answers them
    /// together with one heartbeat round.
    pub(crate) async fn read_index_as_leader(&self) -> Result<u64, EtcdError> {
        // Without coalescing, each read runs a round of its own, one at a time, counted to show
        // it. The coalesced default (the hot read path) neither locks nor counts.
        let _own_round = match &self.read_round {
            Some((m, rounds)) => {
                let held = m.lock().await;
                rounds.fetch_add(1, Ordering::Relaxed);
                Some(held)
            }
            None => None,
        };
        let res = tokio::time::timeout(
            self.request_timeout,
            self.raft.get_read_linearizer(ReadPolicy::ReadIndex),
        )
        .await;
        match res {
            Err(_) => Err(EtcdError::Timeout),
            Ok(Ok(lin)) => Ok(lin.read_log_id().index()),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_)))) => {
                Err(EtcdError::NotLeader)
            }
            Ok(Err(RaftError::APIError(_))) => Err(EtcdError::Timeout),
            Ok(Err(RaftError::Fatal(e))) => Err(EtcdError::StorageFailed(e.to_string())),
        }
    }

    /// What this node's proposal batcher did so far (entries, requests, most in flight).
    pub fn proposal_counts(&self) -> ProposalCounts {
        self.batcher.counts()
    }

    /// With read coalescing off, the ReadIndex rounds this node ran as leader, one after the
    /// other (one per read); 0 with coalescing on, where rounds are not counted.
    pub fn uncoalesced_read_rounds(&self) -> u64 {
        self.read_round
            .as_ref()
            .map_or(0, |(_, rounds)| rounds.load(Ordering::Relaxed))
    }

    /// Returns once the local state machine reflects every write acknowledged before the call.
    pub async fn read_barrier(&self) -> Result<(), EtcdError> {
        self.read_index().await.map(|_| ())
    }

    /// [`RaftNode::read_barrier`], returning the confirmed read index.
    pub async fn read_index(&self) -> Result<u64, EtcdError> {
        let deadline = Instant::now() + self.request_timeout;
        let index = loop {
            let leader = self.leader(deadline).await?;
            let res = if leader == self.id {
                self.read_index_as_leader().await
            } else {
                let left = deadline.saturating_duration_since(Instant::now());
                self.remote_read_index(leader, left).await
            };
            match res {
                Ok(i) => break i,
                // Reads are safe to retry: try again against whoever leads now.
                Err(EtcdError::NotLeader) => self.wait_leader_change(leader, deadline).await?,
                Err(e) => return Err(e),
            }
        };
        self.wait_applied(index, deadline).await.map(|()| index)
    }

    /// [`RaftNode::read_barrier`] answered by this node alone, as the leader: its leadership
    /// confirmed by a quorum after the call, and everything committed before applied here.
    /// [`EtcdError::NotLeader`] when it does not lead.
    pub(crate) async fn read_barrier_as_leader(&self) -> Result<(), EtcdError> {
        let deadline = Instant::now() + self.request_timeout;
        let index = self.read_index_as_leader().await?;
        self.wait_applied(index, deadline).await
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), EtcdError> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map(|_| ())
            .map_err(|_| EtcdError::Timeout)
    }

    /// Whether [`RaftNode::crash`] was called. An embedding that resets the storage after a
    /// crash (to model what a real crash loses) checks it after reading local state: a read that
    /// raced with the crash must fail, as a request to a killed process does, rather than return
    /// the reset state.
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// Stops abruptly, as a killed process would: no checkpoint (what the log has is what
    /// survives).
    pub async fn crash(&self) {
        // First of all: whatever happens to the storage from here on must not reach a caller
        // (a killed process answers nothing more).
        self.crashed.store(true, Ordering::SeqCst);
        if let Transport::Local(router) = &self.transport {
            router.unregister(self.id);
        }
        let _ = self.raft.shutdown().await;
        self.await_storage_released().await;
        self.log.close();
    }

    /// Waits (bounded) until openraft's tasks have dropped their handles to the state machine and
    /// the log store. `Raft::shutdown` returns before every worker has finished dropping them,
    /// and a restart on the same directory must not find the store still open.
    async fn await_storage_released(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.sm) > self.released.0 || self.log.handles() > self.released.1
        {
            if Instant::now() >= deadline {
                tracing::warn!("raft tasks still hold the storage after shutdown");
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Stops Raft, then makes state durable and closes the log.
    pub async fn shutdown(&self) {
        if let Transport::Local(router) = &self.transport {
            router.unregister(self.id);
        }
        let _ = self.raft.shutdown().await;
        self.await_storage_released().await;
        if let Err(e) = self.sm.checkpoint() {
            tracing::warn!(error = %e, "final checkpoint failed; the log will be replayed");
        }
        self.log.close();
    }

    /// The gRPC service peers call on this node. Its long-lived calls (a leader's append
    /// streams, a follower's forward stream) stop taking requests when `stop` turns true, so
    /// that a graceful shutdown of the server that serves it does not wait for them (a forward
    /// stream still answers the batches it took).
    pub fn peer_service(
        self: &Arc<Self>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> PeerServer<PeerHandler> {
        PeerServer::new(PeerHandler {
            node: self.clone(),
            stop,
        })
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
    }
}

/// Writes the initial membership unless this node already has state (then it is a no-op).
async fn initialize(raft: &Raft, members: &BTreeMap<NodeId, PeerNode>) -> Result<(), StorageError> {
    match raft.initialize(members.clone()).await {
        Ok(()) => {
            tracing::info!("initialized a new cluster");
            Ok(())
        }
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(StorageError::Io(format!("raft initialize: {e}"))),
    }
}

/// Whether a failed call never reached the peer (the connection could not be made), so nothing
/// was sent. Any other failure may have happened after the peer received the request.
pub(crate) fn is_connect_error(status: &Status) -> bool {
    std::error::Error::source(status).is_some_and(c20_api::net::is_connect_error)
}

impl RaftNode {
    /// Takes one message of a snapshot transfer (see [`crate::snapshot_transfer`]).
    pub(crate) async fn receive_snapshot(&self, msg: SnapshotMsg) -> SnapshotAnswer {
        let unknown = |transfer: u64| SnapshotAnswer::Refused {
            next_offset: 0,
            why: format!("no snapshot transfer {transfer:x} in progress here"),
        };
        match msg {
            SnapshotMsg::Begin { transfer } => {
                *self.incoming_snapshot.lock().expect("snapshot lock") =
                    Some(Incoming::new(transfer));
                let (revision, compact_revision) = self
                    .sm
                    .read(|s| (s.current_revision(), s.compact_revision()));
                SnapshotAnswer::Begun {
                    revision,
                    compact_revision,
                }
            }
            SnapshotMsg::Chunk {
                transfer,
                offset,
                len,
                crc,
                data,
            } => match self
                .incoming_snapshot
                .lock()
                .expect("snapshot lock")
                .as_mut()
            {
                Some(inc) if inc.transfer() == transfer => inc.chunk(offset, len, crc, &data),
                _ => unknown(transfer),
            },
            SnapshotMsg::Finish {
                transfer,
                vote,
                meta,
                len,
            } => {
                let data = {
                    let mut slot = self.incoming_snapshot.lock().expect("snapshot lock");
                    match slot.as_mut() {
                        Some(inc) if inc.transfer() == transfer => inc.finish(len),
                        _ => return unknown(transfer),
                    }
                };
                match data {
                    Ok(data) => {
                        let snapshot = Snapshot {
                            meta,
                            snapshot: data,
                        };
                        SnapshotAnswer::Installed(
                            self.raft.install_full_snapshot(vote, snapshot).await,
                        )
                    }
                    Err(why) => {
                        tracing::warn!(transfer, "refused a snapshot: {why}");
                        SnapshotAnswer::Refused {
                            next_offset: 0,
                            why,
                        }
                    }
                }
            }
        }
    }
}

/// Serves a node's peer RPCs.
pub struct PeerHandler {
    node: Arc<RaftNode>,
    stop: tokio::sync::watch::Receiver<bool>,
}

fn bad_request(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("undecodable peer message: {e}"))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Status> {
    postcard::to_allocvec(v).map_err(|e| Status::internal(e.to_string()))
}

/// Decodes one append of an append stream.
fn decode_append(req: &RaftRequest) -> Result<AppendEntriesRequest<TypeConfig>, String> {
    if req.kind != RaftKind::Append as i32 {
        return Err(format!(
            "a request of kind {} on the append stream",
            req.kind
        ));
    }
    let payload = crate::network::decode_payload(req.format, &req.payload)?;
    postcard::from_bytes(&payload).map_err(|e| e.to_string())
}

/// Replies of an append stream, one per append, in order.
type AppendReplyStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftReply, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Peer for PeerHandler {
    type AppendStreamStream = AppendReplyStream;
    type ForwardStreamStream = crate::forward::ForwardReplyStream;

    async fn forward_stream(
        &self,
        request: Request<tonic::Streaming<ForwardRequest>>,
    ) -> Result<Response<Self::ForwardStreamStream>, Status> {
        Ok(Response::new(crate::forward::serve(
            self.node.clone(),
            request.into_inner(),
            self.stop.clone(),
        )))
    }

    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<RaftRequest>>,
    ) -> Result<Response<AppendReplyStream>, Status> {
        use futures::StreamExt;
        // Set when an append does not decode: the replies then end with this error, after the
        // answers to the appends before it.
        let refused: Arc<Mutex<Option<Status>>> = Arc::default();
        // The appends in arrival order, handed to Raft as they come. A broken connection or a
        // message that does not decode ends them, and so does the server's stop (the leader
        // opens a new stream when it has something to send).
        let mut stop_in = self.stop.clone();
        let appends = futures::stream::unfold(
            (request.into_inner(), refused.clone()),
            |(mut inbound, refused)| async move {
                let req = match inbound.message().await {
                    Ok(Some(req)) => req,
                    Ok(None) => return None,
                    Err(status) => {
                        tracing::debug!(%status, "append stream from the leader ended");
                        return None;
                    }
                };
                match decode_append(&req) {
                    Ok(rpc) => Some((rpc, (inbound, refused))),
                    Err(e) => {
                        *refused.lock().expect("refused lock") = Some(bad_request(e));
                        None
                    }
                }
            },
        )
        .take_until(async move {
            let _ = stop_in.wait_for(|s| *s).await;
        });
        let mut stop = self.stop.clone();
        let replies = self
            .node
            .raft
            .stream_append(appends)
            .map(|res| {
                let answer: Result<StreamAppendResult<TypeConfig>, String> =
                    res.map_err(|stopped| stopped.to_string());
                Ok(RaftReply {
                    payload: encode(&answer)?,
                })
            })
            .chain(
                futures::stream::once(async move {
                    refused.lock().expect("refused lock").take().map(Err)
                })
                .filter_map(std::future::ready),
            )
            .take_until(async move {
                let _ = stop.wait_for(|s| *s).await;
            });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn raft(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let req = request.into_inner();
        let payload = crate::network::decode_payload(req.format, &req.payload)
            .map_err(Status::invalid_argument)?;
        let raft = &self.node.raft;
        let payload = match RaftKind::try_from(req.kind) {
            Ok(RaftKind::Append) => {
                let rpc = postcard::from_bytes(&payload).map_err(bad_request)?;
                encode(&raft.append_entries(rpc).await)?
            }
            Ok(RaftKind::Vote) => {
                let rpc = postcard::from_bytes(&payload).map_err(bad_request)?;
                encode(&raft.vote(rpc).await)?
            }
            Ok(RaftKind::TransferLeader) => {
                let rpc = postcard::from_bytes(&payload).map_err(bad_request)?;
                encode(&raft.handle_transfer_leader(rpc).await)?
            }
            Ok(RaftKind::Snapshot) => {
                let msg: SnapshotMsg = postcard::from_bytes(&payload).map_err(bad_request)?;
                encode(&self.node.receive_snapshot(msg).await)?
            }
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown raft kind {}",
                    req.kind
                )))
            }
        };
        Ok(Response::new(RaftReply { payload }))
    }

    async fn forward(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardReply>, Status> {
        // A batch of commands from one follower; each is proposed as if it arrived here.
        self.node
            .forwarded_in
            .as_calls
            .fetch_add(1, Ordering::Relaxed);
        let cmds = postcard::from_bytes(&request.into_inner().command).map_err(bad_request)?;
        let results = self.node.propose_forwarded(cmds).await;
        Ok(Response::new(ForwardReply {
            result: encode(&results)?,
            id: 0,
        }))
    }

    async fn applied(
        &self,
        _request: Request<AppliedRequest>,
    ) -> Result<Response<AppliedReply>, Status> {
        Ok(Response::new(AppliedReply {
            index: self.node.status().applied_index,
        }))
    }

    async fn ask(&self, request: Request<AskRequest>) -> Result<Response<AskReply>, Status> {
        let ask: PeerAsk = postcard::from_bytes(&request.into_inner().ask).map_err(bad_request)?;
        let res = self.node.answer(ask).await;
        Ok(Response::new(AskReply {
            result: encode(&res)?,
        }))
    }

    async fn read_index(
        &self,
        _request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        let res = self.node.read_index_as_leader().await;
        Ok(Response::new(ReadIndexReply {
            result: encode(&res)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forwarded write may only be re-sent when it provably never left this node. The check
    /// once matched any "transport error", which also covers a connection that broke after the
    /// leader received the request: a retry could then apply one write twice.
    #[tokio::test]
    async fn only_refused_connections_count_as_never_sent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut client = peer_client(&format!("http://{addr}")).unwrap();
        let status = client.read_index(ReadIndexRequest {}).await.unwrap_err();
        assert!(is_connect_error(&status), "{status:?}");

        let broken = Status::unavailable("error reading a body from connection");
        assert!(!is_connect_error(&broken));
        let transport = Status::unavailable("transport error");
        assert!(!is_connect_error(&transport));
    }
}
