//! The file system under the WAL and the meta files, as a seam.
//!
//! [`OsDisk`] is the real one. [`SimDisk`] keeps files in memory and remembers what was synced:
//! [`SimDisk::crash`] leaves it as a power failure would, with everything synced, a seeded
//! prefix of what was not, possibly the first unsynced write after it torn (cut short, or its
//! length reached but its bytes zeros or garbage, or its end reached and its start not), and
//! possibly some later writes landed regardless (out of order, up to the next truncation). Names behave like an ordered metadata journal:
//! creates, renames, removals and directory creations survive a crash in the order they were
//! made, up to a seeded point after the last [`Disk::sync_dir`], which commits them all.
//! The simulator runs each replica's Raft log on one, so its crashes exercise the WAL's own
//! recovery (torn tails cut, segments found by name) instead of a log that cannot fail.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The file operations c20's own files need.
pub trait Disk: Send + Sync + 'static {
    /// Creates `dir` and its missing parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the files directly in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// The whole file; an error of kind `NotFound` when there is none.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// `len` bytes from `offset`; an error when the file is shorter.
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// The file's length.
    fn len(&self, path: &Path) -> io::Result<u64>;
    /// Opens `path` for writing, its cursor at the end; with `create`, created or emptied first.
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn DiskFile>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes creates, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// A file open for writing. Writes go to its cursor, which starts at the end of the file.
pub trait DiskFile: Send {
    /// Writes `buf` at the cursor, over what the file held there or past its end, and moves
    /// the cursor past it.
    fn write(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Moves the cursor to `pos`, at most the file's length.
    fn seek(&mut self, pos: u64) -> io::Result<()>;
    /// Cuts (or extends) the file to `len`; the cursor goes to the new end.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Makes the file's content durable (fdatasync).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Makes the file's content and metadata durable (fsync).
    fn sync_all(&mut self) -> io::Result<()>;
}

/// The operating system's file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsDisk;

/// The default disk: the real one.
pub fn os() -> Arc<dyn Disk> {
    Arc::new(OsDisk)
}

struct OsFile(File);

impl Disk for OsDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        File::open(path)?.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(fs::metadata(path)?.len())
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn DiskFile>> {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(create)
            .open(path)?;
        f.seek(SeekFrom::End(0))?;
        Ok(Box::new(OsFile(f)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl DiskFile for OsFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }

    fn seek(&mut self, pos: u64) -> io::Result<()> {
        if pos > self.0.metadata()?.len() {
            return Err(past_the_end(pos));
        }
        self.0.seek(SeekFrom::Start(pos))?;
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)?;
        self.0.seek(SeekFrom::End(0))?;
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }
}

/// What crashes did to a [`SimDisk`], summed over its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashDamage {
    pub crashes: u64,
    /// Unsynced file writes (and truncations) that a crash undid.
    pub writes_lost: u64,
    /// Writes a crash left torn: cut short, zeros or garbage where their bytes should be, or
    /// their end without their start.
    pub writes_torn: u64,
    /// Creates, renames and removals a crash undid.
    pub names_lost: u64,
    /// Crashes that cut the power in the middle of the disk's user's work
    /// ([`SimDisk::cut_power_after`]).
    pub mid_operation: u64,
}

impl std::ops::AddAssign for CrashDamage {
    fn add_assign(&mut self, o: CrashDamage) {
        self.crashes += o.crashes;
        self.writes_lost += o.writes_lost;
        self.writes_torn += o.writes_torn;
        self.names_lost += o.names_lost;
        self.mid_operation += o.mid_operation;
    }
}

/// An in-memory disk that a crash leaves as a power failure would (see the module's doc).
/// Clones share the disk.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
}

enum FileOp {
    /// Bytes written at an offset.
    Write(u64, Vec<u8>),
    SetLen(u64),
}

/// Writes `buf` into `data` at `at`, extending it if needed (a gap reads as zeros, as on a
/// real file system).
fn write_at(data: &mut Vec<u8>, at: u64, buf: &[u8]) {
    let at = at as usize;
    let end = at + buf.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[at..end].copy_from_slice(buf);
}

fn past_the_end(pos: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("cursor {pos} is past the end of the file"),
    )
}

#[derive(Default)]
struct SimFile {
    /// The content as of the last sync.
    synced: Vec<u8>,
    /// The content now.
    data: Vec<u8>,
    /// What changed `synced` into `data`, in order.
    pending: Vec<FileOp>,
}

#[derive(Clone)]
enum NameOp {
    Mkdir(PathBuf),
    Link(PathBuf, u64),
    Unlink(PathBuf),
    /// Atomic, as on ext4 and xfs: after a crash the file has one name or the other.
    Rename(PathBuf, PathBuf),
}

#[derive(Default, Clone)]
struct Names {
    dirs: BTreeSet<PathBuf>,
    files: BTreeMap<PathBuf, u64>,
}

impl Names {
    fn apply(&mut self, op: &NameOp) {
        match op {
            NameOp::Mkdir(d) => {
                self.dirs.insert(d.clone());
            }
            NameOp::Link(p, id) => {
                self.files.insert(p.clone(), *id);
            }
            NameOp::Unlink(p) => {
                self.files.remove(p);
            }
            NameOp::Rename(from, to) => {
                if let Some(id) = self.files.remove(from) {
                    self.files.insert(to.clone(), id);
                }
            }
        }
    }
}

#[derive(Default)]
struct SimState {
    /// Bumped by every crash: handles from before it fail.
    generation: u64,
    rng: u64,
    files: BTreeMap<u64, SimFile>,
    next_file: u64,
    names: Names,
    /// The names as of the last `sync_dir`.
    synced_names: Names,
    /// What changed `synced_names` into `names`, in order.
    pending_names: Vec<NameOp>,
    damage: CrashDamage,
    /// Operations left before the power is cut (see [`SimDisk::cut_power_after`]).
    cut_after: Option<u64>,
    /// The power was cut: every operation fails until the next crash.
    dead: bool,
}

impl SimState {
    fn below(&mut self, n: usize) -> usize {
        (crate::splitmix(&mut self.rng) % n as u64) as usize
    }

    /// What a power failure leaves (see [`SimDisk::crash`]).
    fn power_cut(&mut self) {
        self.damage.crashes += 1;
        let ids: Vec<u64> = self.files.keys().copied().collect();
        for id in ids {
            let pending = std::mem::take(&mut self.files.get_mut(&id).expect("listed").pending);
            let kept = self.below(pending.len() + 1);
            let tear = kept < pending.len() && self.below(2) == 0;
            let mut data = self.files[&id].synced.clone();
            for op in &pending[..kept] {
                match op {
                    FileOp::Write(at, buf) => write_at(&mut data, *at, buf),
                    FileOp::SetLen(len) => data.resize(*len as usize, 0),
                }
            }
            if tear {
                if let FileOp::Write(at, buf) = &pending[kept] {
                    let cut = self.below(buf.len().max(1));
                    let rest = at + cut as u64;
                    // Part of it reached the disk, the rest did not: a start (the file ends
                    // early or keeps what it held there), or a start and the length, with
                    // zeros or whatever the sectors held before for the rest. Or the sectors
                    // landed out of order: the end reached the disk and the start did not.
                    match self.below(4) {
                        0 => write_at(&mut data, *at, &buf[..cut]),
                        1 => {
                            write_at(&mut data, *at, &buf[..cut]);
                            write_at(&mut data, rest, &vec![0; buf.len() - cut]);
                        }
                        2 => {
                            write_at(&mut data, *at, &buf[..cut]);
                            let junk: Vec<u8> = (cut..buf.len())
                                .map(|_| crate::splitmix(&mut self.rng) as u8)
                                .collect();
                            write_at(&mut data, rest, &junk);
                        }
                        _ => write_at(&mut data, rest, &buf[cut..]),
                    }
                    self.damage.writes_torn += 1;
                }
            }
            // Sectors reach the disk out of order: a later write may have landed though one
            // before it did not (up to a truncation, which the file system keeps in order).
            let mut landed = 0;
            for op in pending.iter().skip(kept + 1) {
                match op {
                    FileOp::SetLen(_) => break,
                    FileOp::Write(at, buf) => {
                        if self.below(4) == 0 {
                            write_at(&mut data, *at, buf);
                            landed += 1;
                        }
                    }
                }
            }
            self.damage.writes_lost += (pending.len() - kept - landed) as u64;
            let f = self.files.get_mut(&id).expect("listed");
            f.synced = data.clone();
            f.data = data;
        }
        let pending = std::mem::take(&mut self.pending_names);
        let kept = self.below(pending.len() + 1);
        let mut names = self.synced_names.clone();
        for op in &pending[..kept] {
            names.apply(op);
        }
        self.damage.names_lost += (pending.len() - kept) as u64;
        let live: BTreeSet<u64> = names.files.values().copied().collect();
        self.files.retain(|id, _| live.contains(id));
        self.synced_names = names.clone();
        self.names = names;
    }

    /// Lets an operation of a handle of `generation` through, unless the disk crashed since,
    /// its power is cut, or the cut is due now.
    fn admit(&mut self, generation: u64) -> io::Result<()> {
        if self.generation != generation {
            return Err(gone());
        }
        if self.dead {
            return Err(io::Error::other("the simulated disk lost its power"));
        }
        match self.cut_after {
            Some(0) => {
                self.power_cut();
                self.damage.mid_operation += 1;
                self.dead = true;
                Err(io::Error::other("the simulated disk lost its power"))
            }
            Some(n) => {
                self.cut_after = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn name_op(&mut self, op: NameOp) {
        self.names.apply(&op);
        self.pending_names.push(op);
    }

    fn file_of(&self, path: &Path) -> io::Result<u64> {
        self.names.files.get(path).copied().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no such file", path.display()),
            )
        })
    }

    fn data(&self, path: &Path) -> io::Result<&Vec<u8>> {
        let id = self.file_of(path)?;
        Ok(&self.files[&id].data)
    }
}

fn gone() -> io::Error {
    io::Error::other("the simulated disk crashed under this handle")
}

impl SimDisk {
    /// An empty disk whose crashes choose what survives from `seed`.
    pub fn new(seed: u64) -> SimDisk {
        let state = SimState {
            rng: seed,
            ..SimState::default()
        };
        SimDisk {
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().expect("sim disk lock")
    }

    /// A handle to the disk as it is now. It fails every operation after the next crash, as the
    /// process that held it would be gone.
    pub fn mount(&self) -> Arc<dyn Disk> {
        Arc::new(SimMount {
            disk: self.clone(),
            generation: self.lock().generation,
        })
    }

    /// A power failure: every file keeps what was synced and a seeded prefix of its unsynced
    /// writes, the first write past that prefix possibly torn; the names keep a seeded prefix of
    /// the changes since the last directory sync. Handles from before fail from now on. After
    /// [`SimDisk::cut_power_after`] fired, the disk stays as the cut left it.
    pub fn crash(&self) {
        let mut st = self.lock();
        if !st.dead {
            st.power_cut();
        }
        st.dead = false;
        st.cut_after = None;
        st.generation += 1;
    }

    /// Cuts the power in the middle of whatever the disk's user is doing: `ops` operations from
    /// now, the disk is left as [`SimDisk::crash`] leaves it, and that operation and every later
    /// one fail (EIO) until the crash that restarts its user. A crash before then cancels it.
    pub fn cut_power_after(&self, ops: u64) {
        self.lock().cut_after = Some(ops);
    }

    /// What crashes did to this disk so far.
    pub fn damage(&self) -> CrashDamage {
        self.lock().damage
    }
}

struct SimMount {
    disk: SimDisk,
    generation: u64,
}

impl SimMount {
    fn lock(&self) -> io::Result<std::sync::MutexGuard<'_, SimState>> {
        let mut st = self.disk.lock();
        st.admit(self.generation)?;
        Ok(st)
    }
}

struct SimHandle {
    disk: SimDisk,
    generation: u64,
    id: u64,
    cursor: u64,
}

impl SimHandle {
    fn with<T>(&self, f: impl FnOnce(&mut SimFile) -> T) -> io::Result<T> {
        let mut st = self.disk.lock();
        st.admit(self.generation)?;
        match st.files.get_mut(&self.id) {
            Some(file) => Ok(f(file)),
            None => Err(gone()),
        }
    }
}

impl Disk for SimMount {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock()?;
        for d in dir.ancestors() {
            if !d.as_os_str().is_empty() && !st.names.dirs.contains(d) {
                st.name_op(NameOp::Mkdir(d.to_path_buf()));
            }
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.lock()?;
        if !st.names.dirs.contains(dir) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no such directory", dir.display()),
            ));
        }
        Ok(st
            .names
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        Ok(self.lock()?.data(path)?.clone())
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let st = self.lock()?;
        let data = st.data(path)?;
        let from = offset as usize;
        match data.get(from..from + len) {
            Some(bytes) => Ok(bytes.to_vec()),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: read past the end", path.display()),
            )),
        }
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(self.lock()?.data(path)?.len() as u64)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn DiskFile>> {
        let mut st = self.lock()?;
        let id = match (st.file_of(path), create) {
            (Ok(id), false) => id,
            (Ok(id), true) => {
                let f = st.files.get_mut(&id).expect("named files exist");
                f.data.clear();
                f.pending.push(FileOp::SetLen(0));
                id
            }
            (Err(e), false) => return Err(e),
            (Err(_), true) => {
                let parent = path.parent().unwrap_or(Path::new(""));
                if !st.names.dirs.contains(parent) {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{}: no such directory", parent.display()),
                    ));
                }
                let id = st.next_file;
                st.next_file += 1;
                st.files.insert(id, SimFile::default());
                st.name_op(NameOp::Link(path.to_path_buf(), id));
                id
            }
        };
        let cursor = st.files[&id].data.len() as u64;
        Ok(Box::new(SimHandle {
            disk: self.disk.clone(),
            generation: self.generation,
            id,
            cursor,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock()?;
        st.file_of(from)?;
        st.name_op(NameOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock()?;
        st.file_of(path)?;
        st.name_op(NameOp::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        // One journal for the whole disk: a commit makes every name change durable.
        let mut st = self.lock()?;
        st.pending_names.clear();
        st.synced_names = st.names.clone();
        Ok(())
    }
}

impl DiskFile for SimHandle {
    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        let at = self.cursor;
        self.with(|f| {
            write_at(&mut f.data, at, buf);
            f.pending.push(FileOp::Write(at, buf.to_vec()));
            at + buf.len() as u64
        })
        .map(|end| self.cursor = end)
    }

    fn seek(&mut self, pos: u64) -> io::Result<()> {
        let len = self.with(|f| f.data.len() as u64)?;
        if pos > len {
            return Err(past_the_end(pos));
        }
        self.cursor = pos;
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.with(|f| {
            f.data.resize(len as usize, 0);
            f.pending.push(FileOp::SetLen(len));
        })?;
        self.cursor = len;
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.with(|f| {
            f.synced = f.data.clone();
            f.pending.clear();
        })
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

#[cfg(test)]
#[path = "disk_test.rs"]
mod disk_test;
