//! Checkpoints written to redb on a thread of their own.
//!
//! A checkpoint of a second of puts is thousands of rows and an fsync: tens of milliseconds in
//! which, written inline, nothing else could be applied. [`Checkpointer`] takes the rows and the
//! revision they bring the file to, and writes them behind the caller's back, one checkpoint
//! after the other in the order they were sent (a later one may remove rows an earlier one
//! inserted). The log still holds everything a pending checkpoint holds, so a crash meanwhile
//! loses nothing: the store reopens at the last checkpoint that committed and the log is
//! replayed from there.

use super::{PendingRows, EVENTS, LEASES, META, META_APPLIED, META_COMPACT_REV, META_CURRENT_REV};
use crate::StorageError;
use redb::{Database, Durability};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// The rows one checkpoint writes and the state of the store they bring the file to.
pub(super) struct Checkpoint {
    pub rows: PendingRows,
    pub current_rev: i64,
    pub compact_rev: i64,
    pub applied: Vec<u8>,
}

impl Checkpoint {
    /// Writes the checkpoint in one redb transaction, durably.
    pub fn write(&self, db: &Database) -> Result<(), StorageError> {
        let mut w = db.begin_write().map_err(redb::Error::from)?;
        w.set_durability(Durability::Immediate)
            .map_err(|e| StorageError::Redb(e.to_string()))?;
        {
            let mut events = w.open_table(EVENTS).map_err(redb::Error::from)?;
            let mut row = Vec::new();
            // Inserts before removes: an event added and compacted away within one checkpoint
            // interval must not survive.
            for e in &self.rows.inserts {
                row.clear();
                e.encode_row(&mut row);
                events
                    .insert(e.row_key(), row.as_slice())
                    .map_err(redb::Error::from)?;
            }
            for k in &self.rows.removes {
                events.remove(*k).map_err(redb::Error::from)?;
            }
            let mut meta = w.open_table(META).map_err(redb::Error::from)?;
            meta.insert(META_CURRENT_REV, self.current_rev.to_le_bytes().as_slice())
                .map_err(redb::Error::from)?;
            meta.insert(META_COMPACT_REV, self.compact_rev.to_le_bytes().as_slice())
                .map_err(redb::Error::from)?;
            meta.insert(META_APPLIED, self.applied.as_slice())
                .map_err(redb::Error::from)?;
            let mut leases = w.open_table(LEASES).map_err(redb::Error::from)?;
            for (id, ttl) in &self.rows.leases {
                match ttl {
                    Some(ttl) => leases.insert(*id, *ttl).map(|_| ()),
                    None => leases.remove(*id).map(|_| ()),
                }
                .map_err(redb::Error::from)?;
            }
        }
        w.commit().map_err(redb::Error::from)?;
        Ok(())
    }
}

#[derive(Default)]
struct Progress {
    sent: u64,
    written: u64,
    /// The first failed write; nothing after it is written.
    error: Option<String>,
}

type Shared = Arc<(Mutex<Progress>, Condvar)>;

/// The thread that writes checkpoints, in order. Dropping it waits for those already sent.
pub(super) struct Checkpointer {
    jobs: Option<mpsc::Sender<Checkpoint>>,
    progress: Shared,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub fn start(db: Arc<Database>) -> Result<Checkpointer, StorageError> {
        let (jobs, rx) = mpsc::channel::<Checkpoint>();
        let progress: Shared = Arc::default();
        let shared = progress.clone();
        let thread = std::thread::Builder::new()
            .name("c20-checkpoint".into())
            .spawn(move || {
                yield_to_requests();
                for job in rx {
                    let failed = shared.0.lock().expect("progress lock").error.is_some();
                    // A panic inside redb must not leave `wait` waiting for ever: it counts as
                    // a failed write.
                    let res = if failed {
                        Ok(())
                    } else {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.write(&db)))
                            .unwrap_or_else(|_| {
                                Err(StorageError::Failed("the checkpoint write panicked".into()))
                            })
                    };
                    drop(job);
                    let mut p = shared.0.lock().unwrap_or_else(|e| e.into_inner());
                    if let Err(e) = res {
                        p.error.get_or_insert(e.to_string());
                    }
                    p.written += 1;
                    shared.1.notify_all();
                }
            })
            .map_err(|e| StorageError::Io(format!("starting the checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            jobs: Some(jobs),
            progress,
            thread: Some(thread),
        })
    }

    /// Queues `job` behind those already sent.
    pub fn send(&self, job: Checkpoint) -> Result<(), StorageError> {
        self.progress.0.lock().expect("progress lock").sent += 1;
        let sent = self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok());
        if !sent {
            let mut p = self.progress.0.lock().expect("progress lock");
            p.sent -= 1;
            return Err(StorageError::Failed("the checkpoint thread is gone".into()));
        }
        Ok(())
    }

    /// Whether a checkpoint sent is still being written.
    pub fn busy(&self) -> bool {
        let p = self.progress.0.lock().expect("progress lock");
        p.written < p.sent
    }

    /// The first write that failed, if any.
    pub fn error(&self) -> Option<String> {
        self.progress.0.lock().expect("progress lock").error.clone()
    }

    /// Waits until every checkpoint sent is written (or skipped after a failure); returns the
    /// first failure.
    pub fn wait(&self) -> Result<(), String> {
        let (lock, cv) = &*self.progress;
        let p = cv
            .wait_while(lock.lock().expect("progress lock"), |p| p.written < p.sent)
            .expect("progress lock");
        match &p.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How much lower than the threads that serve requests the checkpoint thread runs (a nice
/// value). A checkpoint is background work: the log already holds what it writes, so it can
/// wait while the runtime and log threads have work; the default scheduler then gives it about
/// a tenth of a CPU that both want.
pub const CHECKPOINT_NICE: i32 = 10;

/// Lowers the calling thread's priority by [`CHECKPOINT_NICE`] (Linux gives each thread a nice
/// value of its own). Failing to is harmless: the thread runs at the normal priority.
fn yield_to_requests() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority reads no memory of ours; on Linux, PRIO_PROCESS with id 0 names
        // the calling thread.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, CHECKPOINT_NICE) };
        if rc != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "could not lower the checkpoint thread's priority"
            );
        }
    }
}
