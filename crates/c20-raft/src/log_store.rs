//! openraft's log storage on c20's WAL.
//!
//! Entries live in the WAL (durable) and in memory (for reads by replication); the vote and the
//! purge point live in small atomically replaced files beside it. An append is reported flushed
//! to openraft only from the WAL's group-commit thread, after fdatasync.

use crate::types::{Entry, LogId, TypeConfig, Vote};
use c20_storage::planted::{self, Bug};
use c20_storage::{meta_file, StorageError, Wal, WalOptions};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::EntryPayload;
use openraft::OptionalSend;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

struct Shared {
    /// The durable log; `None` for a log held in memory only.
    wal: Option<Arc<Wal>>,
    dir: PathBuf,
    state: Mutex<State>,
    /// Bytes of entries appended to the WAL since the start (a snapshot trigger watches it).
    appended_bytes: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct State {
    log: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    /// Request ids whose proposer wants to know when they are durable in this log.
    append_waiters: HashMap<u64, AppendWaiter>,
    /// Only under the planted bug `ack-before-fsync`: each append's first index and when it
    /// was acknowledged.
    unsynced: VecDeque<(u64, Instant)>,
}

/// Under the planted bug `ack-before-fsync`, how long an acknowledged append stays volatile.
const UNSYNCED_WRITEBACK: Duration = Duration::from_millis(500);

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
        std::fs::create_dir_all(dir)?;
        let (wal, recovery) = Wal::open(&dir.join("wal"), opts)?;
        if recovery.torn_bytes > 0 {
            tracing::warn!(
                bytes = recovery.torn_bytes,
                "cut a torn tail off the raft log"
            );
        }
        let vote: Option<Vote> = match meta_file::read(&dir.join("vote"))? {
            Some(raw) => Some(decode("vote", &raw)?),
            None => None,
        };
        let last_purged: Option<LogId> = match meta_file::read(&dir.join("purged"))? {
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
            log.insert(index, entry);
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
        Ok(LogStore {
            shared: Arc::new(Shared {
                wal: Some(Arc::new(wal)),
                dir: dir.to_path_buf(),
                state: Mutex::new(State {
                    log,
                    last_purged,
                    vote,
                    ..State::default()
                }),
                appended_bytes: Default::default(),
            }),
        })
    }

    /// A log held in memory only: appends complete at once and nothing survives the process.
    /// Embedded clusters and the simulator use it; a "restart" keeps this object, as a disk.
    pub fn in_memory() -> LogStore {
        LogStore {
            shared: Arc::new(Shared {
                wal: None,
                dir: PathBuf::new(),
                state: Mutex::new(State::default()),
                appended_bytes: Default::default(),
            }),
        }
    }

    /// The planted bug `ack-before-fsync`: the append from `first` on is acknowledged at once
    /// but reaches the disk only after 500 ms, as if an unsynced page cache wrote it back then;
    /// a crash ([`LogStore::lose_unsynced`]) loses every append younger than that.
    fn flush_later(&self, first: Option<u64>) {
        if let Some(first) = first {
            let mut st = self.shared.state.lock().expect("log state lock");
            while st
                .unsynced
                .front()
                .is_some_and(|(_, at)| at.elapsed() >= UNSYNCED_WRITEBACK)
            {
                st.unsynced.pop_front();
            }
            st.unsynced.push_back((first, Instant::now()));
        }
    }

    /// What a crash does to a log in memory: every append is durable before it is
    /// acknowledged, so nothing is lost, except under the planted bug `ack-before-fsync`.
    pub fn lose_unsynced(&self) {
        let mut st = self.shared.state.lock().expect("log state lock");
        let unsynced = std::mem::take(&mut st.unsynced);
        let lost = unsynced
            .into_iter()
            .filter(|(_, at)| at.elapsed() < UNSYNCED_WRITEBACK)
            .map(|(first, _)| first)
            .min();
        if let Some(from) = lost {
            st.log.split_off(&from);
        }
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
        tokio::task::spawn_blocking(move || meta_file::write(&path, &raw))
            .await
            .map_err(io_err)?
            .map_err(io_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let st = self.shared.state.lock().expect("log state lock");
        Ok(st.log.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.shared.state.lock().expect("log state lock").vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let st = self.shared.state.lock().expect("log state lock");
        let last = st.log.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: st.last_purged,
            last_log_id: last.or(st.last_purged),
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
        let mut first = None;
        {
            let mut st = self.shared.state.lock().expect("log state lock");
            for e in entries {
                first.get_or_insert(e.log_id.index);
                if durable {
                    let raw = postcard::to_allocvec(&e).map_err(io_err)?;
                    records.push((e.log_id.index, raw));
                }
                if !st.append_waiters.is_empty() {
                    if let EntryPayload::Normal(cmd) = &e.payload {
                        if let Some(w) = st.append_waiters.remove(&cmd.id) {
                            waiting.push((w, e.log_id.index));
                        }
                    }
                }
                st.log.insert(e.log_id.index, e);
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
            Some(wal) => wal.append(records, Box::new(done)),
            None if planted::active(Bug::AckBeforeFsync) => {
                self.flush_later(first);
                done(Ok(()))
            }
            None => done(Ok(())),
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        self.shared
            .state
            .lock()
            .expect("log state lock")
            .log
            .split_off(&from);
        let Some(wal) = self.shared.wal.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || wal.truncate(from))
            .await
            .map_err(io_err)?
            .map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // The purge point is durable before any record goes, so a restart never sees a hole.
        self.write_meta("purged", &log_id).await?;
        {
            let mut st = self.shared.state.lock().expect("log state lock");
            let keep = st.log.split_off(&(log_id.index + 1));
            st.log = keep;
            st.last_purged = Some(log_id);
        }
        let Some(wal) = self.shared.wal.clone() else {
            return Ok(());
        };
        let upto = log_id.index;
        tokio::task::spawn_blocking(move || wal.purge(upto))
            .await
            .map_err(io_err)?
            .map_err(io_err)
    }
}
