//! openraft's log storage on c20's WAL.
//!
//! Entries live in the WAL (durable); the newest of them, up to [`CACHE_BYTES_MAX`], also in
//! memory, where replication to followers that keep up and applying find them. Older entries
//! (a follower far behind, a restart's replay) are read back from the WAL. The vote and the
//! purge point live in small atomically replaced files beside it. An append is reported flushed
//! to openraft only from the WAL's group-commit thread, after fdatasync. An inline WAL (the
//! simulator's, on its simulated disk) has no thread: an append is written at once and synced
//! [`INLINE_SYNC_DELAY`] later on the runtime's clock, together with every append since.

use crate::types::{Entry, LogId, TypeConfig, Vote};
use c20_storage::{meta_file, Disk, StorageError, Wal, WalOptions};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::EntryPayload;
use openraft::OptionalSend;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

struct Shared {
    /// The durable log; `None` for a log held in memory only.
    wal: Option<Arc<Wal>>,
    /// Where `dir` is: the WAL's disk.
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    state: Mutex<State>,
    /// Bytes of entries appended to the WAL since the start (a snapshot trigger watches it).
    appended_bytes: std::sync::atomic::AtomicU64,
    /// Most bytes of entries (as the WAL stores them) kept in memory besides the WAL.
    cache_bytes_max: std::sync::atomic::AtomicUsize,
}

/// Entries kept in memory, newest first to stay. Followers in step and the apply loop read
/// entries milliseconds after they were appended, and 8 MiB is over a second of writes at full
/// speed (256-byte values), so they still find them here; a log that grows to its snapshot
/// trigger (256 MiB or 100,000 entries by default) no longer grows memory with it. 64 MiB left
/// 25-35 MiB more resident after a million puts (`scripts/bench-memory.sh`).
pub const CACHE_BYTES_MAX: usize = 8 << 20;

/// An entry in memory and the size of its WAL record.
struct Cached {
    entry: Entry,
    bytes: usize,
}

#[derive(Default)]
struct State {
    /// The newest entries: a suffix of the log, or all of it for a log in memory.
    log: BTreeMap<u64, Cached>,
    /// Sum of `bytes` over `log`.
    cached_bytes: usize,
    /// The newest entry that left `log` and is only in the WAL: the entries above the purge
    /// point up to it are read from there.
    evicted_last: Option<LogId>,
    /// Entries up to this index have been handed to the WAL (a read queued after that finds
    /// them there); only those may leave `log`.
    queued_upto: Option<u64>,
    /// Bumped by every truncation: a read that spans the WAL and memory starts over when it
    /// changed meanwhile, so it never splices two versions of the log.
    truncations: u64,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    /// Request ids whose proposer wants to know when they are durable in this log.
    append_waiters: HashMap<u64, AppendWaiter>,
}

/// How long after an append an inline WAL syncs (a simulated fdatasync's latency). Appends in
/// between share the sync; a crash in between finds them written and not synced.
pub const INLINE_SYNC_DELAY: Duration = Duration::from_millis(2);

/// Told the log index of an entry once it is durable in this log (or why it cannot be).
pub type AppendWaiter = oneshot::Sender<Result<u64, String>>;

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, raw: &[u8]) -> Result<T, StorageError> {
    postcard::from_bytes(raw).map_err(|e| StorageError::Corrupt(format!("{what}: {e}")))
}

impl LogStore {
    /// Opens the log in `dir`, replaying the WAL.
    pub fn open(dir: &Path) -> Result<LogStore, StorageError> {
        Self::open_with(dir, WalOptions::default())
    }

    /// [`LogStore::open`] with explicit WAL options.
    pub fn open_with(dir: &Path, opts: WalOptions) -> Result<LogStore, StorageError> {
        let disk = opts.disk.clone();
        disk.create_dir_all(dir)?;
        let (wal, recovery) = Wal::open(&dir.join("wal"), opts)?;
        if recovery.torn_bytes > 0 {
            tracing::warn!(
                bytes = recovery.torn_bytes,
                "cut a torn tail off the raft log"
            );
        }
        let vote: Option<Vote> = match meta_file::read(&*disk, &dir.join("vote"))? {
            Some(raw) => Some(decode("vote", &raw)?),
            None => None,
        };
        let last_purged: Option<LogId> = match meta_file::read(&*disk, &dir.join("purged"))? {
            Some(raw) => Some(decode("purge point", &raw)?),
            None => None,
        };
        let floor = last_purged.as_ref().map(|l| l.index);
        let mut log = BTreeMap::new();
        for (index, raw) in recovery.records {
            if floor.is_some_and(|f| index <= f) {
                continue;
            }
            let entry: Entry = decode("log entry", &raw)?;
            if entry.log_id.index != index {
                return Err(StorageError::Corrupt(format!(
                    "wal record {index} holds entry {}",
                    entry.log_id
                )));
            }
            let bytes = raw.len();
            log.insert(index, Cached { entry, bytes });
        }
        // The log must be gap-free above the purge point.
        let mut expect = floor.map(|f| f + 1);
        for &index in log.keys() {
            if let Some(e) = expect {
                if index != e {
                    return Err(StorageError::Corrupt(format!(
                        "hole in the raft log: entry {index} follows {}",
                        e - 1
                    )));
                }
            }
            expect = Some(index + 1);
        }
        let cached_bytes = log.values().map(|c| c.bytes).sum();
        let queued_upto = log.keys().next_back().copied();
        let store = LogStore {
            shared: Arc::new(Shared {
                wal: Some(Arc::new(wal)),
                disk,
                dir: dir.to_path_buf(),
                state: Mutex::new(State {
                    log,
                    cached_bytes,
                    queued_upto,
                    last_purged,
                    vote,
                    ..State::default()
                }),
                appended_bytes: Default::default(),
                cache_bytes_max: CACHE_BYTES_MAX.into(),
            }),
        };
        store.evict();
        Ok(store)
    }

    /// A log held in memory only: appends complete at once and nothing survives the process.
    /// Embedded clusters use it; a "restart" keeps this object, as a disk.
    pub fn in_memory() -> LogStore {
        LogStore {
            shared: Arc::new(Shared {
                wal: None,
                disk: c20_storage::disk::os(),
                dir: PathBuf::new(),
                state: Mutex::new(State::default()),
                appended_bytes: Default::default(),
                cache_bytes_max: usize::MAX.into(),
            }),
        }
    }

    /// Sets how many bytes of entries a durable log keeps in memory (tests use 0 to read
    /// every entry back from the WAL). A log in memory keeps everything.
    pub fn set_cache_bytes_max(&self, bytes: usize) {
        if self.shared.wal.is_some() {
            self.shared
                .cache_bytes_max
                .store(bytes, std::sync::atomic::Ordering::Relaxed);
            self.evict();
        }
    }

    /// Entries in memory and their WAL bytes.
    pub fn cached(&self) -> (usize, usize) {
        let st = self.shared.state.lock().expect("log state lock");
        (st.log.len(), st.cached_bytes)
    }

    /// Drops the oldest entries from memory while more than the cache's bytes are there. Only
    /// for entries already queued to the WAL: a read queued after them finds them there.
    fn evict(&self) {
        let mut st = self.shared.state.lock().expect("log state lock");
        self.evict_locked(&mut st);
    }

    fn evict_locked(&self, st: &mut State) {
        let max = self
            .shared
            .cache_bytes_max
            .load(std::sync::atomic::Ordering::Relaxed);
        while st.cached_bytes > max {
            let queued = st.queued_upto;
            let Some(entry) = st.log.first_entry() else {
                break;
            };
            if queued.is_none_or(|q| *entry.key() > q) {
                break;
            }
            let c = entry.remove();
            st.cached_bytes -= c.bytes;
            st.evicted_last = Some(c.entry.log_id);
        }
    }

    /// The entries in `[from, to)` that the WAL holds, decoded.
    async fn read_wal(&self, from: u64, to: u64) -> io::Result<Vec<Entry>> {
        let wal = self
            .shared
            .wal
            .clone()
            .expect("entries leave memory only for a WAL");
        let records = self.blocking(move || wal.read(from, to)).await?;
        records
            .into_iter()
            .map(|(index, raw)| {
                let entry: Entry = decode("log entry", &raw).map_err(io_err)?;
                if entry.log_id.index != index {
                    return Err(io_err(format!(
                        "wal record {index} holds entry {}",
                        entry.log_id
                    )));
                }
                Ok(entry)
            })
            .collect()
    }

    /// Runs `f` off the async threads, or at once for an inline WAL (on the simulator's
    /// single thread, where a blocking pool would be a race the seed does not control).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
    ) -> io::Result<T> {
        if self.shared.wal.as_ref().is_some_and(|w| w.is_inline()) {
            return f().map_err(io_err);
        }
        tokio::task::spawn_blocking(f)
            .await
            .map_err(io_err)?
            .map_err(io_err)
    }

    /// Registers interest in the entry proposed with request id `id`: the receiver learns its
    /// index once it is durable here. Ids must be unique among pending waiters.
    pub fn watch_append(&self, id: u64) -> oneshot::Receiver<Result<u64, String>> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .state
            .lock()
            .expect("log state lock")
            .append_waiters
            .insert(id, tx);
        rx
    }

    /// Forgets the waiter of `id` (its proposal failed before reaching the log).
    pub fn unwatch_append(&self, id: u64) {
        self.shared
            .state
            .lock()
            .expect("log state lock")
            .append_waiters
            .remove(&id);
    }

    /// Why the log stopped taking writes, if it did.
    /// Bytes of entries appended to the WAL since this process opened it (0 in memory).
    pub fn appended_bytes(&self) -> u64 {
        self.shared
            .appended_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn failure(&self) -> Option<String> {
        self.shared.wal.as_ref().and_then(|w| w.failure())
    }

    /// Number of handles to this log (clones share one log).
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.shared)
    }

    /// Stops the WAL writer after queued work completes.
    pub fn close(&self) {
        if let Some(wal) = &self.shared.wal {
            wal.close();
        }
    }

    async fn write_meta<T: serde::Serialize>(&self, name: &str, value: &T) -> io::Result<()> {
        if self.shared.wal.is_none() {
            return Ok(());
        }
        let raw = postcard::to_allocvec(value).map_err(io_err)?;
        let path = self.shared.dir.join(name);
        let disk = self.shared.disk.clone();
        self.blocking(move || meta_file::write(&*disk, &path, &raw))
            .await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        'read: loop {
            let mut out: Vec<Entry> = Vec::new();
            let mut next = start;
            let mut truncations = None;
            while next < end {
                // The part in memory ends the read; an older part comes from the WAL first.
                let to = {
                    let st = self.shared.state.lock().expect("log state lock");
                    if *truncations.get_or_insert(st.truncations) != st.truncations {
                        // The log changed under a read that had let go of the lock.
                        continue 'read;
                    }
                    let floor = st.last_purged.map_or(0, |l| l.index + 1);
                    if next < floor {
                        if !out.is_empty() {
                            return Err(io_err(format!(
                                "log entries from {next} were purged while being read"
                            )));
                        }
                        next = floor;
                    }
                    if next >= end {
                        return Ok(out);
                    }
                    let cache_first = st.log.first_key_value().map(|(&i, _)| i);
                    match st.evicted_last {
                        Some(last)
                            if next <= last.index && cache_first.is_none_or(|f| next < f) =>
                        {
                            end.min(last.index + 1).min(cache_first.unwrap_or(u64::MAX))
                        }
                        _ => {
                            if !out.is_empty() && cache_first.is_some_and(|f| f > next) {
                                return Err(io_err(format!("hole in the log read at {next}")));
                            }
                            let cached = st.log.range(next..end).map(|(_, c)| c.entry.clone());
                            out.extend(cached);
                            return Ok(out);
                        }
                    }
                };
                let read = self.read_wal(next, to).await?;
                match (read.first(), read.last()) {
                    (Some(first), Some(last)) => {
                        // A log may start above the purge point (the suite's logs start at
                        // 1), but once a read has begun, the next entry must follow.
                        if !out.is_empty() && first.log_id.index != next {
                            return Err(io_err(format!(
                                "log entry {next} is missing from the WAL"
                            )));
                        }
                        next = last.log_id.index + 1;
                    }
                    // Nothing held here yet: purged meanwhile, or the log starts further on.
                    _ if out.is_empty() => next = to,
                    _ => return Err(io_err(format!("log entry {next} is missing from the WAL"))),
                }
                out.extend(read);
            }
            return Ok(out);
        }
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.shared.state.lock().expect("log state lock").vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let st = self.shared.state.lock().expect("log state lock");
        let last = st.log.values().next_back().map(|c| c.entry.log_id);
        Ok(LogState {
            last_purged_log_id: st.last_purged,
            last_log_id: last.or(st.evicted_last).or(st.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        if let Some(e) = self.failure() {
            return Err(io_err(e));
        }
        self.write_meta("vote", vote).await?;
        self.shared.state.lock().expect("log state lock").vote = Some(*vote);
        Ok(())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let durable = self.shared.wal.is_some();
        let mut records = Vec::new();
        let mut waiting: Vec<(AppendWaiter, u64)> = Vec::new();
        let mut last = None;
        {
            let mut st = self.shared.state.lock().expect("log state lock");
            for e in entries {
                // openraft truncates before it replaces entries, so an append never lands on
                // an entry that is only in the WAL.
                debug_assert!(
                    last.is_some() || st.evicted_last.is_none_or(|l| e.log_id.index > l.index),
                    "append at {} over entries only in the WAL (up to {:?})",
                    e.log_id.index,
                    st.evicted_last
                );
                last = Some(e.log_id.index);
                let mut bytes = 0;
                if durable {
                    let raw = postcard::to_allocvec(&e).map_err(io_err)?;
                    bytes = raw.len();
                    records.push((e.log_id.index, raw));
                }
                if !st.append_waiters.is_empty() {
                    if let EntryPayload::Normal(cmd) = &e.payload {
                        if let Some(w) = st.append_waiters.remove(&cmd.id) {
                            waiting.push((w, e.log_id.index));
                        }
                    }
                }
                st.cached_bytes += bytes;
                if let Some(old) = st.log.insert(e.log_id.index, Cached { entry: e, bytes }) {
                    st.cached_bytes -= old.bytes;
                }
            }
        }
        let done = move |res: Result<(), StorageError>| {
            for (w, index) in waiting {
                let _ = w.send(res.as_ref().map(|()| index).map_err(|e| e.to_string()));
            }
            callback.io_completed(res.map_err(io_err));
        };
        let bytes: usize = records.iter().map(|(_, r)| r.len()).sum();
        self.shared
            .appended_bytes
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        match &self.shared.wal {
            Some(wal) => {
                wal.append(records, Box::new(done));
                if wal.is_inline() {
                    let wal = wal.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(INLINE_SYNC_DELAY).await;
                        wal.sync();
                    });
                }
                let mut st = self.shared.state.lock().expect("log state lock");
                if last.is_some() {
                    st.queued_upto = last;
                }
                self.evict_locked(&mut st);
            }
            None => done(Ok(())),
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        {
            let mut st = self.shared.state.lock().expect("log state lock");
            let gone: usize = st.log.split_off(&from).values().map(|c| c.bytes).sum();
            st.cached_bytes -= gone;
            st.truncations += 1;
            if st.queued_upto.is_some_and(|q| q >= from) {
                st.queued_upto = from.checked_sub(1);
            }
            if st.evicted_last.is_some_and(|l| l.index >= from) {
                // The new last entry is on disk only (or there is none above the purge point).
                st.evicted_last =
                    last_log_id.filter(|l| st.last_purged.is_none_or(|p| l.index > p.index));
            }
        }
        let Some(wal) = self.shared.wal.clone() else {
            return Ok(());
        };
        self.blocking(move || wal.truncate(from)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // The purge point is durable before any record goes, so a restart never sees a hole.
        self.write_meta("purged", &log_id).await?;
        {
            let mut st = self.shared.state.lock().expect("log state lock");
            let keep = st.log.split_off(&(log_id.index + 1));
            let gone: usize = st.log.values().map(|c| c.bytes).sum();
            st.log = keep;
            st.cached_bytes -= gone;
            if st.evicted_last.is_some_and(|l| l.index <= log_id.index) {
                st.evicted_last = None;
            }
            st.last_purged = Some(log_id);
        }
        let Some(wal) = self.shared.wal.clone() else {
            return Ok(());
        };
        let upto = log_id.index;
        self.blocking(move || wal.purge(upto)).await
    }
}
