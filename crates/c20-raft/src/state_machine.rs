//! openraft's state machine on the MVCC store.
//!
//! Committed entries are applied in batches (every entry ready at once goes into one redb write
//! transaction). The store is checkpointed durably at intervals, written on the store's own
//! checkpoint thread while applying goes on; until then the WAL is the only durable copy, and at
//! restart openraft re-applies entries above the store's applied index.
//! A snapshot is a full image of the store in the snapshot container (zstd-compressed,
//! checksummed: `c20_storage::snapshot`), written atomically to `snapshot` before openraft may
//! purge the log below it. A peer that already holds part of the history gets an incremental
//! snapshot instead (see [`ship_for`]).

use crate::types::{
    Command, LogId, MemberAttrs, NodeId, Op, Reply, Snapshot, SnapshotMeta, StoredMembership,
    TypeConfig,
};
use c20_api::EtcdError;
use c20_storage::mvcc::{ExportRefs, MvccImage};
use c20_storage::snapshot::{self as container, Kind};
use c20_storage::{meta_file, IoFaults, MvccStore, StorageError, WriteOp, WriteResult};
use futures::{FutureExt, Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// Most entries applied in one redb transaction.
const APPLY_BATCH_ENTRIES_MAX: usize = 1024;
/// When the store writes a durable checkpoint of what was applied since the last one (etcd's
/// `--backend-batch-interval` and `--backend-batch-limit`, and c20's own
/// `--backend-batch-bytes`). Each is checked after every applied batch, and a checkpoint
/// still being written defers the next, so a checkpoint may hold a little more than a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// At least this often while writes are applied...
    pub interval: Duration,
    /// ...or once this many write requests were applied...
    pub writes_max: u64,
    /// ...or once the rows waiting for it come to this many bytes
    /// ([`MvccStore::pending_bytes`]), whichever comes first; 0 sets no such bound.
    pub bytes_max: u64,
}

/// Default of [`CheckpointPolicy::interval`], etcd's default batch interval. Short checkpoints
/// spread the store's page writes and fsyncs evenly; one a second made each a burst that
/// stalled the log's own fsyncs (docs/BENCHMARKS.md).
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// Default of [`CheckpointPolicy::writes_max`], etcd's default batch limit.
pub const DEFAULT_CHECKPOINT_WRITES_MAX: u64 = 10_000;

/// Default of [`CheckpointPolicy::bytes_max`] (etcd has no such bound). A checkpoint's fsync
/// takes about as long as its bytes take to write, and the log's fsyncs on the same disk wait
/// behind it. Under put-100 (about 27,000 writes a second, 256-byte values) 100 ms of rows come
/// to about 0.8 MB; a checkpoint at every 128 KiB took the log's slowest fsyncs from
/// 4.5-5.5 ms to 2.8-3.8 ms and the clients' p99 down by about a fifth, for about 2 µs more
/// of the checkpoint thread's CPU per write (docs/BENCHMARKS.md, "Checkpoints bounded in
/// bytes"). Below about 1.3 MB a second of writes the interval comes first.
pub const DEFAULT_CHECKPOINT_BYTES_MAX: u64 = 128 << 10;

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            interval: DEFAULT_CHECKPOINT_INTERVAL,
            writes_max: DEFAULT_CHECKPOINT_WRITES_MAX,
            bytes_max: DEFAULT_CHECKPOINT_BYTES_MAX,
        }
    }
}

/// Progress towards the next checkpoint.
#[derive(Debug)]
struct CheckpointClock {
    policy: CheckpointPolicy,
    /// When the last checkpoint was taken.
    since: Instant,
    /// Write requests applied since.
    writes: u64,
}

impl CheckpointClock {
    /// Counts `writes` more, with `pending_bytes` now waiting; whether a checkpoint is due.
    fn add(&mut self, writes: u64, pending_bytes: usize) -> bool {
        self.writes += writes;
        let p = &self.policy;
        self.since.elapsed() >= p.interval
            || self.writes >= p.writes_max
            || (p.bytes_max > 0 && pending_bytes as u64 >= p.bytes_max)
    }

    /// A checkpoint was taken: the count towards the next starts again.
    fn restart(&mut self) {
        self.since = Instant::now();
        self.writes = 0;
    }
}

/// `applied` as the store keeps it with each checkpoint.
fn encode_applied(applied: &Applied) -> Result<Vec<u8>, StorageError> {
    postcard::to_allocvec(applied).map_err(|e| StorageError::Io(e.to_string()))
}

/// How far the store has applied the log, stored with every applied batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    members: BTreeMap<NodeId, MemberAttrs>,
}

/// The payload of a snapshot container: for a full snapshot the whole store; for an
/// incremental one only the history above `base` (see [`MvccImage::since`]).
#[derive(Serialize, Deserialize)]
struct SnapshotPayload {
    meta: SnapshotMeta,
    members: BTreeMap<NodeId, MemberAttrs>,
    /// The revision an incremental snapshot builds on; 0 for a full one.
    base: i64,
    image: MvccImage,
}

impl SnapshotPayload {
    /// The container of a full snapshot of the store content `refs` (taken under the store's
    /// lock) as of `applied`, and its meta; encoding needs no lock. The payload is written
    /// field by field and event by event into a compressing writer, so it decodes as a
    /// [`SnapshotPayload`] while neither the image nor its encoding is ever held whole: only
    /// the compressed container is.
    fn encode_full(refs: &ExportRefs, applied: Applied) -> io::Result<(Vec<u8>, SnapshotMeta)> {
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
        };
        let mut w = container::ContainerWriter::new(Kind::Full);
        let base = 0i64;
        postcard::to_io(&(&meta, &applied.members, base), &mut w).map_err(io_err)?;
        refs.write_image(&mut w)?;
        Ok((w.finish().map_err(io_err)?, meta))
    }

    fn encode(&self) -> io::Result<Vec<u8>> {
        let kind = if self.base == 0 {
            Kind::Full
        } else {
            Kind::Incremental
        };
        let raw = postcard::to_allocvec(self).map_err(io_err)?;
        container::encode(kind, &raw).map_err(io_err)
    }

    fn decode(data: &[u8]) -> io::Result<SnapshotPayload> {
        let d = container::decode(data).map_err(io_err)?;
        let p: SnapshotPayload = postcard::from_bytes(&d.payload).map_err(io_err)?;
        if (d.kind == Kind::Full) != (p.base == 0) {
            return Err(io_err(format!(
                "snapshot: {:?} container with base revision {}",
                d.kind, p.base
            )));
        }
        Ok(p)
    }
}

/// What to send a peer whose store is at `revision`, compacted at `compact_revision`, given the
/// full snapshot `full`: only the history above its revision when that is intact here and the
/// peer is not empty, else `full` itself.
pub fn ship_for(full: Vec<u8>, revision: i64, compact_revision: i64) -> Vec<u8> {
    if revision <= 1 {
        return full;
    }
    let incremental = (|| -> io::Result<Option<Vec<u8>>> {
        let p = SnapshotPayload::decode(&full)?;
        if p.base != 0 || compact_revision > revision {
            return Ok(None);
        }
        let Some(image) = p.image.since(revision) else {
            return Ok(None);
        };
        let inc = SnapshotPayload {
            meta: p.meta,
            members: p.members,
            base: revision,
            image,
        };
        Ok(Some(inc.encode()?))
    })();
    match incremental {
        Ok(Some(inc)) if inc.len() < full.len() => {
            tracing::info!(
                revision,
                incremental_bytes = inc.len(),
                full_bytes = full.len(),
                "sending an incremental snapshot"
            );
            inc
        }
        Ok(_) => full,
        Err(e) => {
            tracing::warn!("cannot cut an incremental snapshot, sending the full one: {e}");
            full
        }
    }
}

/// The applied record a store carries (none yet: the default).
fn applied_of(store: &MvccStore) -> Result<Applied, StorageError> {
    if store.applied().is_empty() {
        return Ok(Applied::default());
    }
    postcard::from_bytes(store.applied())
        .map_err(|e| StorageError::Corrupt(format!("applied record: {e}")))
}

/// Where the reply of an applied request comes from. Replies are built only for entries a client
/// waits for (the leader's), not on every replica.
enum Source {
    Op(usize),
    Fixed(Reply),
    Batch(Vec<Source>),
}

impl Source {
    fn reply(self, results: &mut [Option<Result<WriteResult, EtcdError>>]) -> Reply {
        match self {
            Source::Fixed(r) => r,
            Source::Op(i) => Reply::from_result(results[i].take().expect("one reply per op")),
            Source::Batch(parts) => {
                Reply::Batch(parts.into_iter().map(|p| p.reply(results)).collect())
            }
        }
    }
}

/// Files one command of a committed entry: a KV op goes to `ops`, a member publication to
/// `published`.
fn collect(
    cmd: Command,
    log_id: &LogId,
    ops: &mut Vec<WriteOp>,
    published: &mut Vec<(NodeId, MemberAttrs)>,
) -> Source {
    match cmd.op {
        Op::PublishMember { id, attrs } => {
            published.push((id, attrs));
            Source::Fixed(Reply::Published)
        }
        // An expired lease's revoke appended in a later term than it was decided in: a leader
        // in between may have renewed the lease. It changes nothing; the reply (read only by
        // the lessor's log) says the proposer no longer led in that term.
        Op::LeaseRevoke(_)
            if cmd
                .expiry_term()
                .is_some_and(|t| t != log_id.leader_id.term) =>
        {
            Source::Fixed(Reply::Error(EtcdError::NotLeader))
        }
        Op::Batch(_) => panic!("invariant violated: entry {log_id} nests a batch in a batch"),
        _ => match cmd.to_op() {
            Some(Ok(op)) => {
                ops.push(op);
                Source::Op(ops.len() - 1)
            }
            Some(Err(e)) => {
                panic!("invariant violated: committed entry {log_id} does not decode: {e}")
            }
            None => unreachable!("every other op is a KV op"),
        },
    }
}

/// Shared view of the state machine: the server reads the store through it.
pub struct SmShared {
    store: RwLock<MvccStore>,
    applied: RwLock<Applied>,
    /// Where the latest snapshot is kept: a file, or memory for an in-memory state machine.
    snapshot_path: Option<PathBuf>,
    snapshot_mem: Mutex<Option<Vec<u8>>>,
    /// The latest snapshot's meta, once known: sending a snapshot then needs no decoding.
    snapshot_meta: Mutex<Option<SnapshotMeta>>,
    checkpoint: Mutex<CheckpointClock>,
    /// The store's current revision, announced after every applied batch (watchers wait on it).
    revision: tokio::sync::watch::Sender<i64>,
    /// Snapshots installed from a leader: full, incremental.
    installed: [AtomicU64; 2],
}

impl SmShared {
    /// Runs `f` against the store as it is now.
    pub fn read<T>(&self, f: impl FnOnce(&MvccStore) -> T) -> T {
        f(&self.store.read().expect("store lock"))
    }

    /// Follows the store's current revision: changes after each applied batch that wrote.
    pub fn subscribe_revision(&self) -> tokio::sync::watch::Receiver<i64> {
        self.revision.subscribe()
    }

    fn announce_revision(&self, rev: i64) {
        self.revision.send_if_modified(|r| {
            let changed = *r != rev;
            *r = rev;
            changed
        });
    }

    /// Snapshots installed from a leader so far: (full, incremental).
    pub fn snapshots_installed(&self) -> (u64, u64) {
        (
            self.installed[0].load(Ordering::Relaxed),
            self.installed[1].load(Ordering::Relaxed),
        )
    }

    /// Makes an in-memory store lose, at [`SmShared::lose_unsynced`], what its last checkpoint
    /// did not cover, as a store on disk does at a crash (simulation).
    pub fn model_disk(&self) {
        self.store.write().expect("store lock").model_disk();
    }

    /// What a crash does to the state machine: back to its last checkpoint (openraft re-applies
    /// the log above it at the next start).
    pub fn lose_unsynced(&self) -> Result<(), StorageError> {
        let mut store = self.store.write().expect("store lock");
        store.lose_unsynced()?;
        *self.applied.write().expect("applied lock") = applied_of(&store)?;
        self.announce_revision(store.current_revision());
        Ok(())
    }

    /// Threads for the parallel reads of an applied batch (1 = strictly serial apply).
    pub fn set_apply_threads(&self, threads: usize) {
        self.store
            .write()
            .expect("store lock")
            .set_apply_threads(threads);
    }

    /// When checkpoints are taken from now on.
    pub fn set_checkpoint_policy(&self, policy: CheckpointPolicy) {
        self.checkpoint.lock().expect("checkpoint lock").policy = policy;
    }

    /// Published attributes of every member that has published them.
    pub fn member_attrs(&self) -> BTreeMap<NodeId, MemberAttrs> {
        self.applied.read().expect("applied lock").members.clone()
    }

    /// Makes everything applied so far durable.
    pub fn checkpoint(&self) -> Result<(), StorageError> {
        let mut store = self.store.write().expect("store lock");
        self.checkpoint_locked(&mut store)
    }

    /// Checkpoints `store` (whose lock the caller holds) with the current applied record.
    fn checkpoint_locked(&self, store: &mut MvccStore) -> Result<(), StorageError> {
        store.set_applied(encode_applied(&self.applied.read().expect("applied lock"))?);
        self.checkpoint.lock().expect("checkpoint lock").restart();
        store.checkpoint()
    }

    /// Keeps `raw` (whose meta is `meta`) as the latest snapshot, durably when the state
    /// machine has a directory.
    fn save_snapshot(&self, raw: &[u8], meta: &SnapshotMeta) -> Result<(), StorageError> {
        match &self.snapshot_path {
            Some(path) => meta_file::write(&c20_storage::OsDisk, path, raw)?,
            None => *self.snapshot_mem.lock().expect("snapshot lock") = Some(raw.to_vec()),
        }
        *self.snapshot_meta.lock().expect("snapshot lock") = Some(meta.clone());
        Ok(())
    }

    /// A full snapshot container of the store as it is now, and its revision (for backups:
    /// Maintenance.Snapshot). The store's lock is held only to take references.
    pub fn export_snapshot(&self) -> io::Result<(Vec<u8>, i64)> {
        let (refs, applied, rev) = {
            let store = self.store.read().expect("store lock");
            let applied = self.applied.read().expect("applied lock").clone();
            (store.export_refs(), applied, store.current_revision())
        };
        Ok((SnapshotPayload::encode_full(&refs, applied)?.0, rev))
    }

    /// Size in bytes of the store's file (for Status.dbSize).
    pub fn db_size(&self) -> u64 {
        let store = self.store.read().expect("store lock");
        store.file_size()
    }
}

/// Seeds the store directory `kv_dir` of a new member with the data of a full snapshot
/// `container`: its keys, history, revisions and leases, and nothing of the old cluster's log
/// or membership (the new cluster starts its own log on top). Returns the revision restored.
pub fn restore(kv_dir: &Path, container: &[u8]) -> Result<i64, StorageError> {
    let payload =
        SnapshotPayload::decode(container).map_err(|e| StorageError::Corrupt(e.to_string()))?;
    if payload.base != 0 {
        return Err(StorageError::Corrupt(
            "an incremental snapshot cannot seed a member".into(),
        ));
    }
    std::fs::create_dir_all(kv_dir)?;
    let mut store = MvccStore::open(&kv_dir.join("kv.redb"))?;
    let applied =
        postcard::to_allocvec(&Applied::default()).map_err(|e| StorageError::Io(e.to_string()))?;
    let rev = payload.image.current_rev;
    store.import(payload.image, applied)?;
    Ok(rev)
}

#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<SmShared>,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl StateMachine {
    pub fn open(dir: &Path) -> Result<StateMachine, StorageError> {
        Self::open_with_faults(dir, None)
    }

    /// [`StateMachine::open`] with fault injection in front of the store's file.
    pub fn open_with_faults(
        dir: &Path,
        faults: Option<Arc<dyn IoFaults>>,
    ) -> Result<StateMachine, StorageError> {
        std::fs::create_dir_all(dir)?;
        let store = MvccStore::open_with_faults(&dir.join("kv.redb"), faults)?;
        Self::with_store(store, Some(dir.join("snapshot")))
    }

    /// A state machine held in memory only.
    pub fn in_memory() -> Result<StateMachine, StorageError> {
        Self::with_store(MvccStore::in_memory()?, None)
    }

    fn with_store(
        store: MvccStore,
        snapshot_path: Option<PathBuf>,
    ) -> Result<StateMachine, StorageError> {
        let applied = applied_of(&store)?;
        let revision = tokio::sync::watch::Sender::new(store.current_revision());
        Ok(StateMachine {
            shared: Arc::new(SmShared {
                revision,
                store: RwLock::new(store),
                applied: RwLock::new(applied),
                snapshot_path,
                snapshot_mem: Mutex::new(None),
                snapshot_meta: Mutex::new(None),
                checkpoint: Mutex::new(CheckpointClock {
                    policy: CheckpointPolicy::default(),
                    since: Instant::now(),
                    writes: 0,
                }),
                installed: Default::default(),
            }),
        })
    }

    pub fn shared(&self) -> Arc<SmShared> {
        self.shared.clone()
    }

    fn apply_batch(&self, batch: Vec<EntryResponder<TypeConfig>>) -> io::Result<()> {
        let mut ops: Vec<WriteOp> = Vec::new();
        let mut replies = Vec::new();
        let mut membership = None;
        let mut published = Vec::new();
        let mut last_applied = None;
        for (entry, responder) in batch {
            let source = match entry.payload {
                EntryPayload::Blank => Source::Fixed(Reply::Published),
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    Source::Fixed(Reply::Published)
                }
                EntryPayload::Normal(Command {
                    op: Op::Batch(cmds),
                    ..
                }) => Source::Batch(
                    cmds.into_iter()
                        .map(|c| collect(c, &entry.log_id, &mut ops, &mut published))
                        .collect(),
                ),
                EntryPayload::Normal(cmd) => collect(cmd, &entry.log_id, &mut ops, &mut published),
            };
            last_applied = Some(entry.log_id);
            if let Some(r) = responder {
                replies.push((r, source));
            }
        }
        let writes = ops.len() as u64;
        let (mut results, rev) = {
            let mut store = self.shared.store.write().expect("store lock");
            let results = store.apply_batch(ops).map_err(io_err)?;
            let mut applied = self.shared.applied.write().expect("applied lock");
            if let Some(m) = membership {
                applied.membership = m;
            }
            applied.members.extend(published);
            if last_applied.is_some() {
                applied.last_applied = last_applied;
            }
            // Written on the store's checkpoint thread: applying goes on meanwhile. While the
            // last one is still being written, the rows stay pending and the next apply tries
            // again. The clock's lock is taken under the store's, as in `checkpoint_locked`.
            let mut clock = self.shared.checkpoint.lock().expect("checkpoint lock");
            if clock.add(writes, store.pending_bytes()) && !store.checkpoint_busy() {
                store.set_applied(encode_applied(&applied).map_err(io_err)?);
                store.checkpoint_in_background().map_err(io_err)?;
                clock.restart();
            }
            (
                results.into_iter().map(Some).collect::<Vec<_>>(),
                store.current_revision(),
            )
        };
        self.shared.announce_revision(rev);
        for (responder, source) in replies {
            responder.send(source.reply(&mut results));
        }
        Ok(())
    }

    fn read_snapshot_file(&self) -> io::Result<Option<Snapshot>> {
        let raw = match &self.shared.snapshot_path {
            Some(path) => meta_file::read(&c20_storage::OsDisk, path).map_err(io_err)?,
            None => self
                .shared
                .snapshot_mem
                .lock()
                .expect("snapshot lock")
                .clone(),
        };
        let Some(raw) = raw else {
            return Ok(None);
        };
        let cached = self
            .shared
            .snapshot_meta
            .lock()
            .expect("snapshot lock")
            .clone();
        let meta = match cached {
            Some(meta) => meta,
            None => {
                // First use since start: the meta is inside the payload.
                let meta = SnapshotPayload::decode(&raw)?.meta;
                *self.shared.snapshot_meta.lock().expect("snapshot lock") = Some(meta.clone());
                meta
            }
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: raw,
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let shared = self.shared.clone();
        let in_memory = shared.snapshot_path.is_none();
        off_thread(in_memory, move || -> io::Result<Snapshot> {
            // The store is durable up to the snapshot before the log below it may be purged.
            let (refs, applied) = {
                let mut store = shared.store.write().expect("store lock");
                shared.checkpoint_locked(&mut store).map_err(io_err)?;
                let applied = shared.applied.read().expect("applied lock").clone();
                (store.export_refs(), applied)
            };
            // Encoding happens without the lock: applying goes on meanwhile.
            let (raw, meta) = SnapshotPayload::encode_full(&refs, applied)?;
            drop(refs);
            shared.save_snapshot(&raw, &meta).map_err(io_err)?;
            Ok(Snapshot {
                meta,
                snapshot: raw,
            })
        })
        .await
    }
}

/// Runs `f` on Tokio's blocking pool, or inline for an in-memory state machine on a
/// single-threaded runtime: a simulated cluster on one thread must not hand work to another
/// (on a multi-threaded runtime inline work would hold up a worker's other replicas).
async fn off_thread<T: Send + 'static>(
    in_memory: bool,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let single_threaded = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
    if in_memory && single_threaded {
        return f();
    }
    tokio::task::spawn_blocking(f).await.map_err(io_err)?
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let a = self.shared.applied.read().expect("applied lock");
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        loop {
            let Some(first) = entries.try_next().await? else {
                return Ok(());
            };
            let mut batch = vec![first];
            while batch.len() < APPLY_BATCH_ENTRIES_MAX {
                match entries.try_next().now_or_never() {
                    Some(Ok(Some(next))) => batch.push(next),
                    Some(Ok(None)) | None => break,
                    Some(Err(e)) => return Err(e),
                }
            }
            self.apply_batch(batch)?;
        }
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let shared = self.shared.clone();
        let meta = meta.clone();
        let in_memory = shared.snapshot_path.is_none();
        off_thread(in_memory, move || -> io::Result<()> {
            let received_bytes = snapshot.len();
            let started = Instant::now();
            let payload = SnapshotPayload::decode(&snapshot)?;
            let applied = Applied {
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
                members: payload.members,
            };
            let raw = postcard::to_allocvec(&applied).map_err(io_err)?;
            let incremental = payload.base != 0;
            let (refs, revision) = {
                let mut store = shared.store.write().expect("store lock");
                if incremental {
                    store
                        .import_incremental(payload.base, payload.image, raw)
                        .map_err(io_err)?;
                } else {
                    store.import(payload.image, raw).map_err(io_err)?;
                }
                *shared.applied.write().expect("applied lock") = applied.clone();
                let revision = store.current_revision();
                shared.announce_revision(revision);
                (incremental.then(|| store.export_refs()), revision)
            };
            // The snapshot kept here is always a full one: rebuilt from the store (outside its
            // lock) when only the increment arrived.
            let full = match refs {
                Some(refs) => SnapshotPayload::encode_full(&refs, applied)?.0,
                None => snapshot,
            };
            shared.save_snapshot(&full, &meta).map_err(io_err)?;
            shared.installed[usize::from(incremental)].fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                kind = if incremental { "incremental" } else { "full" },
                received_bytes,
                revision,
                took_ms = started.elapsed().as_millis() as u64,
                "installed a snapshot from the leader"
            );
            Ok(())
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        self.read_snapshot_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use c20_api::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};

    fn entry(term: u64, index: u64, cmd: Command) -> EntryResponder<TypeConfig> {
        let log_id = LogId::new_term_index(term, index);
        (
            <crate::types::Entry as openraft::entry::RaftEntry>::new_normal(log_id, cmd),
            None,
        )
    }

    async fn apply(sm: &mut StateMachine, entries: Vec<EntryResponder<TypeConfig>>) {
        sm.apply(futures::stream::iter(entries.into_iter().map(Ok)))
            .await
            .expect("apply");
    }

    fn lease_ids(sm: &StateMachine) -> Vec<i64> {
        let mut ids: Vec<i64> = sm
            .shared()
            .read(|s| s.leases())
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// A leader's revoke of an expired lease counts only in the term in which the leader found
    /// it expired: proposed after losing and winning the lead again, it changes nothing, alone
    /// or in a batch.
    #[tokio::test]
    async fn an_expiry_revoke_applies_only_in_the_term_it_was_decided_in() {
        let mut sm = StateMachine::in_memory().expect("in-memory state machine");
        let grant = |id| Command::from_op(&WriteOp::LeaseGrant(LeaseGrantRequest { id, ttl: 60 }));
        apply(&mut sm, vec![entry(2, 1, grant(7)), entry(2, 2, grant(8))]).await;
        assert_eq!(lease_ids(&sm), vec![7, 8]);
        let later = Command {
            id: 0,
            op: Op::Batch(vec![Command::expiry_revoke(8, 2)]),
        };
        apply(
            &mut sm,
            vec![
                entry(3, 3, Command::expiry_revoke(7, 2)),
                entry(3, 4, later),
            ],
        )
        .await;
        assert_eq!(
            lease_ids(&sm),
            vec![7, 8],
            "a revoke decided in term 2 applied in term 3"
        );
        let now = Command {
            id: 0,
            op: Op::Batch(vec![Command::expiry_revoke(8, 3)]),
        };
        apply(
            &mut sm,
            vec![entry(3, 5, Command::expiry_revoke(7, 3)), entry(3, 6, now)],
        )
        .await;
        assert_eq!(lease_ids(&sm), Vec::<i64>::new());
    }

    /// What each revoke becomes at apply: a stale expiry answers NotLeader and adds no op; a
    /// current one, and a client's revoke in any term, revoke.
    #[test]
    fn revokes_are_filed_by_their_term() {
        let file = |cmd: Command, term: u64| {
            let (mut ops, mut published) = (Vec::new(), Vec::new());
            let source = collect(
                cmd,
                &LogId::new_term_index(term, 1),
                &mut ops,
                &mut published,
            );
            (source, ops)
        };
        let (source, ops) = file(Command::expiry_revoke(7, 2), 3);
        assert!(matches!(
            source,
            Source::Fixed(Reply::Error(EtcdError::NotLeader))
        ));
        assert!(ops.is_empty());
        let revoke_7 = [WriteOp::LeaseRevoke(LeaseRevokeRequest { id: 7 })];
        let (source, ops) = file(Command::expiry_revoke(7, 3), 3);
        assert!(matches!(source, Source::Op(0)));
        assert_eq!(ops, revoke_7);
        let client = Command::from_op(&revoke_7[0]);
        assert_eq!(client.expiry_term(), None);
        let (source, ops) = file(client, 5);
        assert!(matches!(source, Source::Op(0)));
        assert_eq!(ops, revoke_7);
    }

    /// A member without the term rule reads the leader's expiry as the plain revoke it was
    /// before (rolling upgrades: it must decode, and it revokes).
    #[test]
    fn an_expiry_revoke_reads_as_a_plain_revoke_without_the_term_rule() {
        let cmd = Command::expiry_revoke(7, 2);
        assert_eq!(cmd.expiry_term(), Some(2));
        let Op::LeaseRevoke(body) = &cmd.op else {
            panic!("an expiry revoke is a LeaseRevoke op: {cmd}");
        };
        use prost::Message;
        assert_eq!(
            LeaseRevokeRequest::decode(body.as_slice()).expect("decodes"),
            LeaseRevokeRequest { id: 7 }
        );
    }
}
