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
//! Indexes inside a segment are consecutive. One writer thread owns the files: it drains every
//! queued append, writes them, and calls `fdatasync` once for the lot (group commit) before it
//! reports any of them done. A bad record at the tail of the last segment is a torn write and is
//! cut off at open; a bad record anywhere else is corruption and open fails. After any write or
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
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

const SEGMENT_MAGIC: &[u8; 6] = b"C20WAL";
const SEGMENT_VERSION: u8 = 1;
const SEGMENT_HEADER_LEN: u64 = 8;
const RECORD_HEADER_LEN: usize = 16;
/// A record longer than this is treated as garbage (the largest request is far smaller).
const RECORD_BYTES_MAX: usize = 256 * 1024 * 1024;

#[derive(Clone)]
pub struct WalOptions {
    /// A segment is closed and a new one started once it grows past this size.
    pub segment_bytes_max: u64,
    /// Test seam: consulted before each write and sync of the writer thread.
    pub faults: Option<Arc<dyn IoFaults>>,
    /// Where the segment files live.
    pub disk: Arc<dyn Disk>,
    /// Run every operation on the caller's thread instead of a writer thread; appends wait
    /// for [`Wal::sync`].
    pub inline: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes_max: 64 * 1024 * 1024,
            faults: None,
            disk: crate::disk::os(),
            inline: false,
        }
    }
}

impl std::fmt::Debug for WalOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalOptions")
            .field("segment_bytes_max", &self.segment_bytes_max)
            .field("faults", &self.faults.is_some())
            .field("inline", &self.inline)
            .finish()
    }
}

/// Fault injection for tests: an `Err` returned here is treated exactly as the failure of the
/// write or sync that was about to happen.
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

struct Writer {
    dir: PathBuf,
    opts: WalOptions,
    segments: Vec<Segment>,
    /// The open last segment and its length.
    active: Option<(Box<dyn DiskFile>, u64)>,
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
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, WalRecovery), StorageError> {
        let disk = opts.disk.clone();
        disk.create_dir_all(dir)?;
        let mut segs: Vec<Segment> = Vec::new();
        for name in disk.list(dir)? {
            if let Some(stem) = name.strip_suffix(".wal") {
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
            loop {
                if pos == raw.len() {
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
                        recovery.torn_bytes += (raw.len() - pos) as u64;
                        let mut f = disk.open(&seg.path, false)?;
                        f.set_len(pos as u64)?;
                        f.sync_all()?;
                        break;
                    }
                }
            }
            kept.push(seg);
        }
        // Records must be consecutive inside a segment; across segments a gap is allowed only
        // where the log was purged (for example after a snapshot was installed).
        let active = match kept.last() {
            Some(seg) => Some((disk.open(&seg.path, false)?, disk.len(&seg.path)?)),
            None => None,
        };
        let failed = Arc::new(Mutex::new(None));
        let writer = Writer {
            dir: dir.to_path_buf(),
            opts,
            segments: kept,
            active,
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
            if let Some((f, _)) = &mut self.active {
                let _ = f.sync_data();
            }
        }
        self.sync_and_report(waiting);
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
        self.before_sync()?;
        match &mut self.active {
            Some((f, _)) => Ok(f.sync_data()?),
            None => Ok(()),
        }
    }

    fn before_sync(&self) -> std::io::Result<()> {
        match &self.opts.faults {
            Some(faults) => faults.before_sync(),
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
                (Some((_, len)), last) => {
                    let pending = *len + buf.len() as u64;
                    pending >= self.opts.segment_bytes_max
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
                (Some((_, len)), Some(seg)) => (seg.first, *len),
                _ => unreachable!("a segment is active after rotate"),
            };
            self.offsets.insert(index, (first, len + buf.len() as u64));
            encode_record(&mut buf, index, &payload);
        }
        self.flush_buf(&mut buf)
    }

    fn flush_buf(&mut self, buf: &mut Vec<u8>) -> Result<(), StorageError> {
        if buf.is_empty() {
            return Ok(());
        }
        if let Some(faults) = &self.opts.faults {
            faults.before_write()?;
        }
        let (f, len) = self
            .active
            .as_mut()
            .expect("records are only buffered for an active segment");
        f.write(buf)?;
        *len += buf.len() as u64;
        buf.clear();
        Ok(())
    }

    /// Closes the active segment durably and starts a new one whose first record is `first`.
    fn rotate(&mut self, first: u64) -> Result<(), StorageError> {
        self.sync_active()?;
        let disk = self.opts.disk.clone();
        let path = self.dir.join(format!("{first:020}.wal"));
        let mut f = disk.open(&path, true)?;
        let mut header = Vec::with_capacity(SEGMENT_HEADER_LEN as usize);
        header.extend_from_slice(SEGMENT_MAGIC);
        header.push(SEGMENT_VERSION);
        header.push(0);
        f.write(&header)?;
        f.sync_all()?;
        disk.sync_dir(&self.dir)?;
        self.segments.push(Segment { first, path });
        self.active = Some((f, SEGMENT_HEADER_LEN));
        Ok(())
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
            self.active = Some((disk.open(&seg.path, false)?, disk.len(&seg.path)?));
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
                    (Some((_, len)), None) => *len,
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

#[cfg(test)]
#[path = "wal_test.rs"]
mod wal_test;
