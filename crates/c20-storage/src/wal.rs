//! The Raft log as a segmented write-ahead log.
//!
//! A directory of segment files named `{first_index:020}.wal`. Each starts with an 8-byte header
//! (`"C20WAL"`, version `1`, a reserved zero byte) followed by records:
//!
//! ```text
//! +-------------+-------------+--------------+----------------+
//! | len u32 LE  | crc u32 LE  | index u64 LE | payload        |
//! +-------------+-------------+--------------+----------------+
//!   len = 8 + payload length; crc = crc32c(index bytes ++ payload)
//! ```
//!
//! With [`WalOptions::preallocate`] (the default) a segment is created zero-filled (up to
//! 64 MiB), so records overwrite blocks the file system has already allocated and written: an
//! `fdatasync` then flushes the data alone, without a metadata journal commit. Only the last
//! segment may run on past its records, in zeros: a segment is cut to its records before the
//! next one starts. The next segment is prepared ahead (`next-segment.tmp`: header and zeros,
//! synced) and renamed into place at rotation. A log whose last segment has no zeros ahead (a
//! new log, one cut at open, a segment from before preallocation) moves to a prepared one as
//! soon as it is ready. Preparing is best effort: if it fails, segments grow as written.
//!
//! Indexes inside a segment are consecutive. One writer thread owns the files: it drains every
//! queued append, writes them, and calls `fdatasync` once for the lot (group commit) before it
//! reports any of them done. A bad record at the tail of the last segment is a torn write and is
//! cut off at open, with everything after it; a bad record anywhere else is corruption and open
//! fails. After any write or
//! sync error the log refuses all further operations.
//!
//! The files are reached through a [`Disk`]: the real file system, or the simulator's disk that
//! a crash tears. With [`WalOptions::inline`] there is no writer thread: each operation runs on
//! the caller's thread, and appends are written at once but synced and reported only at the
//! next [`Wal::sync`] (or truncate, purge or close), which the owner calls when it likes: group
//! commit on the caller's schedule. The simulator's single-threaded runs need that to be a
//! function of their seed, and a crash between the write and the sync is what tears a write.

use crate::disk::{Disk, DiskFile};
use crate::planted::{self, Bug};
use crate::StorageError;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

const SEGMENT_MAGIC: &[u8; 6] = b"C20WAL";
const SEGMENT_VERSION: u8 = 1;
const SEGMENT_HEADER_LEN: u64 = 8;
const RECORD_HEADER_LEN: usize = 16;
/// A record longer than this is treated as garbage (the largest request is far smaller).
const RECORD_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Most bytes a new segment is zero-filled to (its `segment_bytes_max` when that is smaller).
const PREALLOCATE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// The segment being prepared, in the log's directory.
const NEXT_SEGMENT: &str = "next-segment.tmp";
/// A segment is prepared this many zeros at a time. In the background each chunk is synced
/// and followed by a pause, so that the log's own fsyncs never queue behind a whole segment's
/// worth of writes (a 64 MiB burst stalled put-100 for 60 ms; docs/BENCHMARKS.md).
const PREPARE_CHUNK: u64 = 1024 * 1024;
const PREPARE_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

#[derive(Clone)]
pub struct WalOptions {
    /// A segment is closed and a new one started once it grows past this size.
    pub segment_bytes_max: u64,
    /// Test seam: consulted before every operation that changes the log's files (writes,
    /// truncations, renames, removals, syncs), wherever the log makes it.
    pub faults: Option<Arc<dyn IoFaults>>,
    /// Where the segment files live.
    pub disk: Arc<dyn Disk>,
    /// Run every operation on the caller's thread instead of a writer thread; appends wait
    /// for [`Wal::sync`].
    pub inline: bool,
    /// Create each segment zero-filled to its full size (see the module's doc); an inline log
    /// prepares it when it rotates, a writer thread ahead of time on a thread of its own.
    pub preallocate: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes_max: 64 * 1024 * 1024,
            faults: None,
            disk: crate::disk::os(),
            inline: false,
            preallocate: true,
        }
    }
}

impl std::fmt::Debug for WalOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalOptions")
            .field("segment_bytes_max", &self.segment_bytes_max)
            .field("faults", &self.faults.is_some())
            .field("inline", &self.inline)
            .field("preallocate", &self.preallocate)
            .finish()
    }
}

/// Fault injection for tests: an `Err` returned here is treated exactly as the failure of the
/// operation that was about to happen. For the log, `before_write` comes before every
/// operation that changes its files (writes, `set_len`, creating, renaming and removing files
/// and directories) and `before_sync` before every file and directory sync; for the store,
/// before each write, `set_len` and sync of its file.
pub trait IoFaults: Send + Sync + 'static {
    fn before_write(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn before_sync(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What `open` found on disk.
#[derive(Debug, Default)]
pub struct WalRecovery {
    /// Every record, in index order.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Bytes cut off a torn tail, if any.
    pub torn_bytes: u64,
}

/// Records as `(index, payload)`, in index order.
pub type Records = Vec<(u64, Vec<u8>)>;

/// Called once the records of an append are durable (or failed to become so).
pub type AppendDone = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

enum Op {
    Append {
        records: Vec<(u64, Vec<u8>)>,
        done: AppendDone,
    },
    Truncate {
        from: u64,
        done: mpsc::Sender<Result<(), StorageError>>,
    },
    Purge {
        upto: u64,
        done: mpsc::Sender<Result<(), StorageError>>,
    },
    Read {
        from: u64,
        to: u64,
        done: mpsc::Sender<Result<Records, StorageError>>,
    },
    /// Sync and report every append written so far.
    Sync,
}

/// Handle to the log; cheap to share behind an `Arc`.
pub struct Wal {
    tx: Mutex<Option<mpsc::Sender<Op>>>,
    failed: Arc<Mutex<Option<String>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The writer itself, when operations run on the caller's thread.
    inline: Option<Mutex<Writer>>,
}

struct Segment {
    first: u64,
    path: PathBuf,
}

/// A segment being prepared in the background.
struct Preparing {
    thread: JoinHandle<io::Result<()>>,
    /// Set to stop it (it then removes what it wrote).
    cancel: Arc<AtomicBool>,
}

/// The open last segment.
struct Active {
    file: Box<dyn DiskFile>,
    /// Where its records end; the file's cursor is there.
    len: u64,
    /// The file runs on past `len` in zeros (preallocated): cut it to `len` before it is closed.
    zero_tail: bool,
}

struct Writer {
    dir: PathBuf,
    opts: WalOptions,
    segments: Vec<Segment>,
    active: Option<Active>,
    /// The thread preparing the next segment (see [`NEXT_SEGMENT`]).
    next: Option<Preparing>,
    /// Preparing a segment failed once: segments grow as written from then on.
    prepare_failed: bool,
    /// index → (segment first index, byte offset of the record).
    offsets: BTreeMap<u64, (u64, u64)>,
    failed: Arc<Mutex<Option<String>>>,
    /// Under the planted bug `ack-before-fsync`: appends were acknowledged without their sync.
    sync_owed: bool,
    /// Inline: appends written and waiting for [`Wal::sync`].
    unsynced: Vec<AppendDone>,
}

impl Wal {
    /// Opens the log in `dir` (created if missing), recovering what is there.
    pub fn open(dir: &Path, mut opts: WalOptions) -> Result<(Wal, WalRecovery), StorageError> {
        if let Some(faults) = &opts.faults {
            opts.disk = Arc::new(faults::FaultyDisk {
                disk: opts.disk.clone(),
                faults: faults.clone(),
            });
        }
        let disk = opts.disk.clone();
        disk.create_dir_all(dir)?;
        let mut segs: Vec<Segment> = Vec::new();
        for name in disk.list(dir)? {
            if name == NEXT_SEGMENT {
                // Half prepared when the last run ended, or prepared and never used.
                disk.remove(&dir.join(&name))?;
            } else if let Some(stem) = name.strip_suffix(".wal") {
                let first = stem.parse::<u64>().map_err(|_| {
                    StorageError::Corrupt(format!("unexpected wal file name {name}"))
                })?;
                segs.push(Segment {
                    first,
                    path: dir.join(&name),
                });
            }
        }
        segs.sort_by_key(|s| s.first);

        let mut recovery = WalRecovery::default();
        let mut offsets = BTreeMap::new();
        let n = segs.len();
        let mut kept = Vec::new();
        // Where the records of the last kept segment end, and whether zeros follow them.
        let mut last_end = (0, false);
        for (i, seg) in segs.into_iter().enumerate() {
            let is_last = i + 1 == n;
            let raw = disk.read(&seg.path)?;
            if (raw.len() as u64) < SEGMENT_HEADER_LEN {
                if is_last {
                    // Torn while being created: nothing in it was ever acknowledged.
                    recovery.torn_bytes += raw.len() as u64;
                    disk.remove(&seg.path)?;
                    disk.sync_dir(dir)?;
                    continue;
                }
                return Err(StorageError::Corrupt(format!(
                    "{}: segment shorter than its header",
                    seg.path.display()
                )));
            }
            if &raw[..6] != SEGMENT_MAGIC || raw[6] != SEGMENT_VERSION {
                return Err(StorageError::Corrupt(format!(
                    "{}: bad segment header",
                    seg.path.display()
                )));
            }
            let mut pos = SEGMENT_HEADER_LEN as usize;
            let mut expect = seg.first;
            let mut zero_tail = false;
            loop {
                if pos == raw.len() {
                    break;
                }
                if is_last && raw[pos..].iter().all(|&b| b == 0) {
                    // The rest of a preallocated segment: nothing was ever written there. (A
                    // closed segment was cut to its records, so only the last one has this.)
                    zero_tail = true;
                    break;
                }
                match decode_record(&raw[pos..]) {
                    Ok((index, payload, used)) if index == expect => {
                        offsets.insert(index, (seg.first, pos as u64));
                        recovery.records.push((index, payload.to_vec()));
                        expect += 1;
                        pos += used;
                    }
                    bad => {
                        let why = match bad {
                            Ok((index, _, _)) => format!("index {index} where {expect} was due"),
                            Err(why) => why,
                        };
                        if !is_last {
                            return Err(StorageError::Corrupt(format!(
                                "{} at byte {pos}: {why}",
                                seg.path.display()
                            )));
                        }
                        tracing::warn!(
                            segment = %seg.path.display(),
                            offset = pos,
                            %why,
                            "cutting torn tail off the log"
                        );
                        // Everything after it goes too: an unfinished write may have reached
                        // the disk in any order, and what new records leave of it could read as
                        // records.
                        recovery.torn_bytes += (raw.len() - pos) as u64;
                        let mut f = disk.open(&seg.path, false)?;
                        f.set_len(pos as u64)?;
                        f.sync_all()?;
                        break;
                    }
                }
            }
            last_end = (pos as u64, zero_tail);
            kept.push(seg);
        }
        // Records must be consecutive inside a segment; across segments a gap is allowed only
        // where the log was purged (for example after a snapshot was installed).
        let active = match kept.last() {
            Some(seg) => {
                let (len, zero_tail) = last_end;
                let mut file = disk.open(&seg.path, false)?;
                // A process that crashed after a write and before its fsync left records in
                // the page cache only: they are reported as recovered, so make them durable.
                file.sync_data()?;
                file.seek(len)?;
                Some(Active {
                    file,
                    len,
                    zero_tail,
                })
            }
            None => None,
        };
        let failed = Arc::new(Mutex::new(None));
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            opts,
            segments: kept,
            active,
            next: None,
            prepare_failed: false,
            offsets,
            failed: failed.clone(),
            sync_owed: false,
            unsynced: Vec::new(),
        };
        if writer.opts.inline {
            let wal = Wal {
                tx: Mutex::new(None),
                failed,
                thread: Mutex::new(None),
                inline: Some(Mutex::new(writer)),
            };
            return Ok((wal, recovery));
        }
        writer.maybe_prepare_next();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("c20-wal".into())
            .spawn(move || writer.run(rx))?;
        Ok((
            Wal {
                tx: Mutex::new(Some(tx)),
                failed,
                thread: Mutex::new(Some(thread)),
                inline: None,
            },
            recovery,
        ))
    }

    /// Queues records for a durable append; `done` runs after their fsync. Indexes must follow
    /// the last appended record, or start a new run after a purge.
    pub fn append(&self, records: Vec<(u64, Vec<u8>)>, done: AppendDone) {
        if let Some(e) = self.failure() {
            done(Err(StorageError::Failed(e)));
            return;
        }
        // A record the reader would refuse is never written: at restart it would look like a
        // torn tail and be cut. (Requests are capped far below this at the API.)
        if let Some((index, p)) = records.iter().find(|(_, p)| p.len() > RECORD_BYTES_MAX - 8) {
            done(Err(StorageError::Io(format!(
                "log record {index} of {} bytes is over the {RECORD_BYTES_MAX}-byte limit",
                p.len() + 8
            ))));
            return;
        }
        let op = Op::Append { records, done };
        if let Err(mpsc::SendError(Op::Append { done, .. })) = self.send(op) {
            done(Err(StorageError::Failed("log is closed".into())));
        }
    }

    /// Removes every record with index >= `from`, durably.
    pub fn truncate(&self, from: u64) -> Result<(), StorageError> {
        let (tx, rx) = mpsc::channel();
        self.send(Op::Truncate { from, done: tx })
            .map_err(|_| StorageError::Failed("log is closed".into()))?;
        rx.recv()
            .map_err(|_| StorageError::Failed("log writer stopped".into()))?
    }

    /// Deletes segments that hold only records with index <= `upto`.
    pub fn purge(&self, upto: u64) -> Result<(), StorageError> {
        let (tx, rx) = mpsc::channel();
        self.send(Op::Purge { upto, done: tx })
            .map_err(|_| StorageError::Failed("log is closed".into()))?;
        rx.recv()
            .map_err(|_| StorageError::Failed("log writer stopped".into()))?
    }

    /// The records with index in `[from, to)` that the log holds, read back from the files, in
    /// order and without gaps: from the first it holds in the range up to the first gap after
    /// it. Runs on the writer
    /// thread after everything queued before it has been written (not necessarily synced), so
    /// an appended record is readable as soon as its append was queued.
    pub fn read(&self, from: u64, to: u64) -> Result<Records, StorageError> {
        let (tx, rx) = mpsc::channel();
        self.send(Op::Read { from, to, done: tx })
            .map_err(|_| StorageError::Failed("log is closed".into()))?;
        rx.recv()
            .map_err(|_| StorageError::Failed("log writer stopped".into()))?
    }

    /// Syncs every append written so far and reports them. Only an inline log needs it: the
    /// writer thread syncs each batch it writes.
    pub fn sync(&self) {
        let _ = self.send(Op::Sync);
    }

    /// The error that stopped the log, if one did.
    pub fn failure(&self) -> Option<String> {
        self.failed.lock().expect("wal failure lock").clone()
    }

    /// Whether operations run on the caller's thread (see [`WalOptions::inline`]).
    pub fn is_inline(&self) -> bool {
        self.inline.is_some()
    }

    fn send(&self, op: Op) -> Result<(), mpsc::SendError<Op>> {
        if let Some(writer) = &self.inline {
            writer
                .lock()
                .expect("wal writer lock")
                .handle_batch(vec![op]);
            return Ok(());
        }
        match self.tx.lock().expect("wal sender lock").as_ref() {
            Some(tx) => tx.send(op),
            None => Err(mpsc::SendError(op)),
        }
    }

    /// Stops the writer after it finished everything queued.
    pub fn close(&self) {
        if let Some(writer) = &self.inline {
            writer.lock().expect("wal writer lock").sync_at_close();
        }
        self.tx.lock().expect("wal sender lock").take();
        if let Some(t) = self.thread.lock().expect("wal thread lock").take() {
            let _ = t.join();
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.close();
    }
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            self.handle_batch(batch);
        }
        self.sync_at_close();
    }

    fn sync_at_close(&mut self) {
        let waiting = std::mem::take(&mut self.unsynced);
        if waiting.is_empty() {
            if let Some(a) = &mut self.active {
                let _ = a.file.sync_data();
            }
        }
        self.sync_and_report(waiting);
        if let Some(next) = self.next.take() {
            // Nothing is left writing in the directory once the log is closed.
            next.cancel.store(true, Ordering::Relaxed);
            let _ = next.thread.join();
        }
    }

    fn fail(&self, e: &StorageError) -> StorageError {
        let mut failed = self.failed.lock().expect("wal failure lock");
        if failed.is_none() {
            tracing::error!(error = %e, "log write failed; refusing all further writes");
            *failed = Some(e.to_string());
        }
        StorageError::Failed(failed.clone().unwrap_or_default())
    }

    fn is_failed(&self) -> Option<StorageError> {
        self.failed
            .lock()
            .expect("wal failure lock")
            .clone()
            .map(StorageError::Failed)
    }

    fn handle_batch(&mut self, batch: Vec<Op>) {
        if std::mem::take(&mut self.sync_owed) {
            // Under the planted bug `ack-before-fsync`: the last batch's sync, late.
            let _ = self.sync_active();
        }
        let mut waiting = std::mem::take(&mut self.unsynced);
        let mut sync = !self.opts.inline;
        for op in batch {
            match op {
                Op::Append { records, done } => {
                    if let Some(e) = self.is_failed() {
                        done(Err(e));
                        continue;
                    }
                    match self.write_records(records) {
                        Ok(()) => waiting.push(done),
                        Err(e) => {
                            let e = self.fail(&e);
                            done(Err(e));
                        }
                    }
                }
                Op::Truncate { from, done } => {
                    // Everything queued before must be settled before the files change.
                    self.sync_and_report(std::mem::take(&mut waiting));
                    let res = self
                        .is_failed()
                        .map_or_else(|| self.truncate(from).map_err(|e| self.fail(&e)), Err);
                    let _ = done.send(res);
                }
                Op::Purge { upto, done } => {
                    self.sync_and_report(std::mem::take(&mut waiting));
                    let res = self
                        .is_failed()
                        .map_or_else(|| self.purge(upto).map_err(|e| self.fail(&e)), Err);
                    let _ = done.send(res);
                }
                Op::Read { from, to, done } => {
                    // Appends queued before are written already: a read needs no sync. After a
                    // failed write the offsets may point past what reached the file. A read
                    // error is the reader's, not the log's: it does not stop writes.
                    let res = self.is_failed().map_or_else(|| self.read(from, to), Err);
                    let _ = done.send(res);
                }
                Op::Sync => sync = true,
            }
        }
        if sync {
            self.sync_and_report(waiting);
        } else {
            self.unsynced = waiting;
        }
    }

    /// One fsync for every append written since the last one.
    fn sync_and_report(&mut self, waiting: Vec<AppendDone>) {
        if waiting.is_empty() {
            return;
        }
        if planted::active(Bug::AckBeforeFsync) {
            // Acknowledged now, synced when the next operation comes.
            self.sync_owed = true;
            for done in waiting {
                done(Ok(()));
            }
            return;
        }
        let res = self.sync_active();
        let res = match res {
            Ok(()) => self.is_failed().map_or(Ok(()), Err),
            Err(e) => Err(self.fail(&e)),
        };
        for done in waiting {
            done(res.clone());
        }
    }

    fn sync_active(&mut self) -> Result<(), StorageError> {
        match &mut self.active {
            Some(a) => Ok(a.file.sync_data()?),
            None => Ok(()),
        }
    }

    fn last_index(&self) -> Option<u64> {
        self.offsets.keys().next_back().copied()
    }

    fn write_records(&mut self, records: Vec<(u64, Vec<u8>)>) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        for (index, payload) in records {
            if let Some(last) = self.last_index() {
                if index <= last {
                    // Overwriting: the caller replaces a suffix of the log.
                    self.flush_buf(&mut buf)?;
                    self.truncate(index)?;
                }
            }
            let needs_new_segment = match (&self.active, self.last_index()) {
                (None, _) => true,
                (Some(a), last) => {
                    let pending = a.len + buf.len() as u64;
                    let prepared_ready =
                        !a.zero_tail && self.next.as_ref().is_some_and(|n| n.thread.is_finished());
                    pending >= self.opts.segment_bytes_max
                        || prepared_ready
                        || last.is_some_and(|l| index != l + 1)
                        || (last.is_none()
                            && self.segments.last().is_some_and(|s| s.first != index))
                }
            };
            if needs_new_segment {
                self.flush_buf(&mut buf)?;
                self.rotate(index)?;
            }
            let (first, len) = match (&self.active, self.segments.last()) {
                (Some(a), Some(seg)) => (seg.first, a.len),
                _ => unreachable!("a segment is active after rotate"),
            };
            self.offsets.insert(index, (first, len + buf.len() as u64));
            encode_record(&mut buf, index, &payload);
        }
        self.flush_buf(&mut buf)?;
        self.maybe_prepare_next();
        Ok(())
    }

    fn flush_buf(&mut self, buf: &mut Vec<u8>) -> Result<(), StorageError> {
        if buf.is_empty() {
            return Ok(());
        }
        let a = self
            .active
            .as_mut()
            .expect("records are only buffered for an active segment");
        a.file.write(buf)?;
        a.len += buf.len() as u64;
        buf.clear();
        Ok(())
    }

    /// Closes the active segment durably and starts a new one whose first record is `first`.
    fn rotate(&mut self, first: u64) -> Result<(), StorageError> {
        self.sync_active()?;
        if let Some(a) = &mut self.active {
            if a.zero_tail {
                // A closed segment ends at its last record: its length is where reads stop.
                a.file.set_len(a.len)?;
                a.file.sync_all()?;
                a.zero_tail = false;
            }
        }
        let disk = self.opts.disk.clone();
        let path = self.dir.join(format!("{first:020}.wal"));
        let (file, zero_tail) = match self.take_prepared() {
            Some(prepared) => {
                // Header and zeros are durable already: the rename makes it the segment.
                disk.rename(&prepared, &path)?;
                let mut f = disk.open(&path, false)?;
                f.seek(SEGMENT_HEADER_LEN)?;
                (f, true)
            }
            None => {
                let mut f = disk.open(&path, true)?;
                f.write(&segment_header())?;
                f.sync_all()?;
                (f, false)
            }
        };
        disk.sync_dir(&self.dir)?;
        self.segments.push(Segment { first, path });
        self.active = Some(Active {
            file,
            len: SEGMENT_HEADER_LEN,
            zero_tail,
        });
        self.maybe_prepare_next();
        Ok(())
    }

    /// The path of a prepared segment, if preallocation is on: the one the thread prepared
    /// (waiting for it if need be), or for an inline log one prepared now. `None` if nothing
    /// is being prepared, or preparing failed: the segment then grows as it is written.
    fn take_prepared(&mut self) -> Option<PathBuf> {
        if !self.opts.preallocate || self.prepare_failed {
            return None;
        }
        let tmp = self.dir.join(NEXT_SEGMENT);
        let res = match self.next.take() {
            Some(next) => next
                .thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the preparing thread panicked"))),
            None if self.opts.inline => {
                prepare_segment(&*self.opts.disk, &tmp, self.preallocate_bytes(), None)
            }
            None => return None,
        };
        match res {
            Ok(()) => Some(tmp),
            Err(e) => {
                tracing::warn!(error = %e, "could not prepare a log segment; segments grow as written from now on");
                self.prepare_failed = true;
                None
            }
        }
    }

    /// Starts preparing the next segment in the background (writer thread only) once it will
    /// be wanted: when the last segment has no zeros ahead, or has used half of them.
    fn maybe_prepare_next(&mut self) {
        if !self.opts.preallocate || self.opts.inline || self.prepare_failed || self.next.is_some()
        {
            return;
        }
        let half = self.preallocate_bytes() / 2;
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.zero_tail && a.len < half)
        {
            return;
        }
        let disk = self.opts.disk.clone();
        let tmp = self.dir.join(NEXT_SEGMENT);
        let size = self.preallocate_bytes();
        // A new log waits for its first segment: no pauses then, nothing else is writing.
        let pace = self.active.is_some();
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = cancel.clone();
        match std::thread::Builder::new()
            .name("c20-wal-prepare".into())
            .spawn(move || prepare_segment(&*disk, &tmp, size, Some((&stop, pace))))
        {
            Ok(thread) => self.next = Some(Preparing { thread, cancel }),
            Err(e) => {
                tracing::warn!(error = %e, "could not start preparing log segments; segments grow as written");
                self.prepare_failed = true;
            }
        }
    }

    fn preallocate_bytes(&self) -> u64 {
        self.opts
            .segment_bytes_max
            .clamp(SEGMENT_HEADER_LEN, PREALLOCATE_BYTES_MAX)
    }

    fn truncate(&mut self, from: u64) -> Result<(), StorageError> {
        let Some(&(seg_first, offset)) = self.offsets.get(&from) else {
            // Nothing at or after `from` unless `from` precedes everything we hold.
            let all_after = self.offsets.keys().next().is_some_and(|&f| f > from);
            if !all_after {
                return Ok(());
            }
            return self.truncate_segments_from(0, None);
        };
        let seg_pos = self
            .segments
            .iter()
            .position(|s| s.first == seg_first)
            .expect("every offset points into a known segment");
        let cut = if offset == SEGMENT_HEADER_LEN {
            None
        } else {
            Some(offset)
        };
        self.truncate_segments_from(seg_pos, cut)?;
        self.offsets.split_off(&from);
        Ok(())
    }

    /// Removes segments from position `pos` on; with `keep_until`, segment `pos` is kept and cut
    /// to that length instead.
    fn truncate_segments_from(
        &mut self,
        pos: usize,
        keep_until: Option<u64>,
    ) -> Result<(), StorageError> {
        if let (Some(len), Some(a)) = (keep_until, &mut self.active) {
            if a.zero_tail && pos + 1 == self.segments.len() {
                // Cutting into the last, preallocated segment: zeros over the records that go
                // keep its preallocation (a crash halfway leaves them torn, and cut at open).
                a.file.seek(len)?;
                a.file.write(&vec![0; (a.len - len) as usize])?;
                a.file.sync_data()?;
                a.file.seek(len)?;
                a.len = len;
                return Ok(());
            }
        }
        self.active = None;
        let disk = self.opts.disk.clone();
        let remove_from = if keep_until.is_some() { pos + 1 } else { pos };
        // Newest first, and all removals durable before the kept segment is cut: a crash in
        // between leaves the log a prefix of itself, never one with a hole in the middle.
        for seg in self.segments.drain(remove_from..).rev() {
            disk.remove(&seg.path)?;
        }
        disk.sync_dir(&self.dir)?;
        if let Some(len) = keep_until {
            let seg = &self.segments[pos];
            let mut f = disk.open(&seg.path, false)?;
            f.set_len(len)?;
            f.sync_all()?;
        }
        if keep_until.is_none() && pos == 0 {
            self.offsets.clear();
        }
        if let Some(seg) = self.segments.last() {
            // Cut to `keep_until`, or closed (and cut) before the removed ones started.
            self.active = Some(Active {
                file: disk.open(&seg.path, false)?,
                len: disk.len(&seg.path)?,
                zero_tail: false,
            });
        }
        Ok(())
    }

    fn read(&self, from: u64, to: u64) -> Result<Records, StorageError> {
        let mut out = Vec::new();
        let Some(&first) = self.offsets.range(from..to).next().map(|(i, _)| i) else {
            return Ok(out);
        };
        let mut next = first;
        // One read per segment: from the first wanted record to the end of the last one.
        while next < to {
            let Some(&(seg_first, start)) = self.offsets.get(&next) else {
                break;
            };
            let seg_pos = self
                .segments
                .iter()
                .position(|s| s.first == seg_first)
                .expect("every offset points into a known segment");
            let seg = &self.segments[seg_pos];
            let next_seg_first = self.segments.get(seg_pos + 1).map(|s| s.first);
            let last = (to - 1).min(next_seg_first.map_or(u64::MAX, |f| f - 1));
            let end = match self.offsets.range(last + 1..).next() {
                Some((_, &(f, off))) if f == seg_first => off,
                _ => match (&self.active, next_seg_first) {
                    (Some(a), None) => a.len,
                    _ => self.opts.disk.len(&seg.path)?,
                },
            };
            if end < start {
                return Err(StorageError::Corrupt(format!(
                    "wal record {next} at offset {start} is past the segment's end {end}"
                )));
            }
            let buf = self
                .opts
                .disk
                .read_at(&seg.path, start, (end - start) as usize)?;
            let mut at = 0;
            while at < buf.len() && next < to {
                let (index, payload, used) = decode_record(&buf[at..]).map_err(|e| {
                    StorageError::Corrupt(format!("wal record {next} read back: {e}"))
                })?;
                if index != next {
                    return Err(StorageError::Corrupt(format!(
                        "wal record {next} read back as {index}"
                    )));
                }
                out.push((index, payload.to_vec()));
                at += used;
                next += 1;
            }
            if !self.offsets.contains_key(&next) {
                break;
            }
        }
        Ok(out)
    }

    fn purge(&mut self, upto: u64) -> Result<(), StorageError> {
        // A segment may go when the next one starts at or below upto + 1: all its records are
        // <= upto. The active segment stays.
        let mut removable = 0;
        for w in self.segments.windows(2) {
            if w[1].first <= upto + 1 {
                removable += 1;
            } else {
                break;
            }
        }
        if removable == 0 {
            return Ok(());
        }
        let next_first = self.segments[removable].first;
        let disk = self.opts.disk.clone();
        for seg in self.segments.drain(..removable) {
            disk.remove(&seg.path)?;
        }
        disk.sync_dir(&self.dir)?;
        let keep = self.offsets.split_off(&next_first);
        self.offsets = keep;
        Ok(())
    }
}

/// The first bytes of every segment.
fn segment_header() -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0; SEGMENT_HEADER_LEN as usize];
    h[..6].copy_from_slice(SEGMENT_MAGIC);
    h[6] = SEGMENT_VERSION;
    h
}

/// Writes a segment ready for records at `path`: the header, then zeros up to `size` bytes,
/// synced. In the background (`background`: a stop flag, and whether to pace the writes) it
/// stops when the flag is set; whatever stops it, it removes what it wrote.
fn prepare_segment(
    disk: &dyn Disk,
    path: &Path,
    size: u64,
    background: Option<(&AtomicBool, bool)>,
) -> io::Result<()> {
    let write = || -> io::Result<()> {
        let mut f = disk.open(path, true)?;
        f.write(&segment_header())?;
        let zeros = vec![0; PREPARE_CHUNK.min(size) as usize];
        let mut left = size.saturating_sub(SEGMENT_HEADER_LEN);
        while left > 0 {
            if let Some((stop, pace)) = background {
                if stop.load(Ordering::Relaxed) {
                    return Err(io::Error::other("stopped: the log closed"));
                }
                if pace && left < size - SEGMENT_HEADER_LEN {
                    f.sync_data()?;
                    std::thread::sleep(PREPARE_PAUSE);
                }
            }
            let n = left.min(zeros.len() as u64) as usize;
            f.write(&zeros[..n])?;
            left -= n as u64;
        }
        f.sync_all()
    };
    let res = write();
    if res.is_err() {
        let _ = disk.remove(path);
    }
    res
}

/// Appends one record: length, crc32c of index and payload, index, payload (docs/FORMATS.md).
pub fn encode_record(buf: &mut Vec<u8>, index: u64, payload: &[u8]) {
    let len = 8 + payload.len();
    let mut crc = crc32c::crc32c(&index.to_le_bytes());
    crc = crc32c::crc32c_append(crc, payload);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Decodes one record at the start of `raw`: (index, payload, bytes used).
pub fn decode_record(raw: &[u8]) -> Result<(u64, &[u8], usize), String> {
    if raw.len() < RECORD_HEADER_LEN {
        return Err(format!(
            "{} bytes left, a record header needs 16",
            raw.len()
        ));
    }
    let len = u32::from_le_bytes(raw[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(raw[4..8].try_into().expect("4 bytes"));
    if !(8..=RECORD_BYTES_MAX).contains(&len) {
        return Err(format!("record length {len} out of bounds"));
    }
    if raw.len() < 8 + len {
        return Err(format!("record of {len} bytes, {} left", raw.len() - 8));
    }
    let body = &raw[8..8 + len];
    if crc32c::crc32c(body) != crc {
        return Err("checksum mismatch".into());
    }
    let index = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
    Ok((index, &body[8..], 8 + len))
}

#[path = "wal_faults.rs"]
mod faults;

#[cfg(test)]
#[path = "wal_test.rs"]
mod wal_test;
