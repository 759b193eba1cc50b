//! Small records replaced atomically and durably: write a temporary file, fsync it, rename it
//! over the old one, fsync the directory. A reader sees the old record or the new one, whole.
//!
//! Layout (little-endian): `"C20M"` magic, version `1`, 3 reserved zero bytes, payload length
//! (u32), crc32c of the payload (u32), payload.

use crate::disk::Disk;
use crate::StorageError;
use std::path::Path;

const MAGIC: &[u8; 4] = b"C20M";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 16;

/// Durably replaces `path` on `disk` with `payload`.
pub fn write(disk: &dyn Disk, path: &Path, payload: &[u8]) -> Result<(), StorageError> {
    let dir = path
        .parent()
        .ok_or_else(|| StorageError::Io(format!("{} has no parent directory", path.display())))?;
    let tmp = path.with_extension("tmp");
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    buf.extend_from_slice(MAGIC);
    buf.push(VERSION);
    buf.extend_from_slice(&[0, 0, 0]);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    buf.extend_from_slice(payload);
    let mut f = disk.open(&tmp, true)?;
    f.write(&buf)?;
    f.sync_all()?;
    drop(f);
    disk.rename(&tmp, path)?;
    disk.sync_dir(dir)?;
    Ok(())
}

/// Reads the record at `path` on `disk`; `None` when it was never written.
pub fn read(disk: &dyn Disk, path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    let raw = match disk.read(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let corrupt = |why: &str| StorageError::Corrupt(format!("{}: {why}", path.display()));
    if raw.len() < HEADER_LEN || &raw[..4] != MAGIC {
        return Err(corrupt("bad header"));
    }
    if raw[4] != VERSION {
        return Err(corrupt(&format!("unknown version {}", raw[4])));
    }
    let len = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(raw[12..16].try_into().expect("4 bytes"));
    let payload = &raw[HEADER_LEN..];
    if payload.len() != len || crc32c::crc32c(payload) != crc {
        return Err(corrupt("length or checksum mismatch"));
    }
    Ok(Some(payload.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::OsDisk;
    use std::fs;

    #[test]
    fn round_trips_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vote");
        assert_eq!(read(&OsDisk, &p).unwrap(), None);
        write(&OsDisk, &p, b"first").unwrap();
        assert_eq!(read(&OsDisk, &p).unwrap().as_deref(), Some(&b"first"[..]));
        write(&OsDisk, &p, b"second, longer").unwrap();
        assert_eq!(
            read(&OsDisk, &p).unwrap().as_deref(),
            Some(&b"second, longer"[..])
        );
    }

    #[test]
    fn detects_a_flipped_byte() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vote");
        write(&OsDisk, &p, b"payload").unwrap();
        let mut raw = fs::read(&p).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 0x40;
        fs::write(&p, raw).unwrap();
        assert!(matches!(read(&OsDisk, &p), Err(StorageError::Corrupt(_))));
    }
}
