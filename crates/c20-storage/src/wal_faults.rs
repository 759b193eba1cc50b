//! The WAL's disk with [`IoFaults`] in front of every operation that changes it: a test arms a
//! fault and the next write, truncation, rename, removal or sync fails as on a disk that
//! returns EIO, wherever the log makes it (appends, segment rotation and preparation,
//! truncation, purge). Reads pass through.

use crate::disk::{Disk, DiskFile};
use crate::wal::IoFaults;
use std::io;
use std::path::Path;
use std::sync::Arc;

pub(crate) struct FaultyDisk {
    pub(crate) disk: Arc<dyn Disk>,
    pub(crate) faults: Arc<dyn IoFaults>,
}

impl Disk for FaultyDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.faults.before_write()?;
        self.disk.create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.disk.list(dir)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.disk.read(path)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.disk.read_at(path, offset, len)
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        self.disk.len(path)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn DiskFile>> {
        if create {
            self.faults.before_write()?;
        }
        Ok(Box::new(FaultyFile {
            file: self.disk.open(path, create)?,
            faults: self.faults.clone(),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.faults.before_write()?;
        self.disk.rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.faults.before_write()?;
        self.disk.remove(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.faults.before_sync()?;
        self.disk.sync_dir(dir)
    }
}

struct FaultyFile {
    file: Box<dyn DiskFile>,
    faults: Arc<dyn IoFaults>,
}

impl DiskFile for FaultyFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.faults.before_write()?;
        self.file.write(buf)
    }

    fn seek(&mut self, pos: u64) -> io::Result<()> {
        self.file.seek(pos)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.faults.before_write()?;
        self.file.set_len(len)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.faults.before_sync()?;
        self.file.sync_data()
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.faults.before_sync()?;
        self.file.sync_all()
    }
}
