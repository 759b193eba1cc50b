//! The snapshot container: what a snapshot file holds and what crosses the wire, byte for byte.
//!
//! Layout (little-endian), see docs/FORMATS.md:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `"C20S"` |
//! | 1 | format version, `1` |
//! | 1 | codec: `0` stored as is, `1` zstd |
//! | 1 | kind: `0` full, `1` incremental |
//! | 1 | reserved, `0` |
//! | 8 | length of the payload before compression |
//! | 8 | length n of the body |
//! | n | body: the payload, compressed by the codec |
//! | 4 | crc32c of every byte before it |
//!
//! The payload itself is opaque here (the state machine's postcard record). Payloads smaller
//! than [`COMPRESS_MIN_BYTES`] are stored as is: compressing them saves nothing worth the time.
//!
//! A backup (what `etcdctl snapshot save` and `c20 snapshot save` write) is a container padded
//! with zeros to a multiple of 512 bytes, then the SHA-256 of everything before it: the shape
//! etcd's snapshot stream has, which etcdctl checks before it keeps the file.

use crate::StorageError;

const MAGIC: &[u8; 4] = b"C20S";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 24;
const TRAILER_LEN: usize = 4;

/// Payloads at least this large are compressed.
pub const COMPRESS_MIN_BYTES: usize = 4096;

/// zstd level 1: on store images it compresses as well as the default level 3, three times
/// faster (`cargo run --release -p c20-storage --example snapshot_sizes`, docs/BENCHMARKS.md).
const ZSTD_LEVEL: i32 = 1;

/// Largest payload a container may announce; anything larger is taken as corruption rather
/// than allocated.
const PAYLOAD_BYTES_MAX: u64 = 1 << 36;

/// How the body is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Stored = 0,
    Zstd = 1,
}

/// What the payload is: a whole store, or only what changed since a base the receiver has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Full = 0,
    Incremental = 1,
}

/// A decoded container.
#[derive(Debug)]
pub struct Decoded {
    pub kind: Kind,
    pub codec: Codec,
    pub payload: Vec<u8>,
}

/// Wraps `payload`, compressing it with zstd when it is large enough.
pub fn encode(kind: Kind, payload: &[u8]) -> Result<Vec<u8>, StorageError> {
    let codec = if payload.len() >= COMPRESS_MIN_BYTES {
        Codec::Zstd
    } else {
        Codec::Stored
    };
    encode_with(kind, codec, payload)
}

/// Wraps `payload` with the given codec.
pub fn encode_with(kind: Kind, codec: Codec, payload: &[u8]) -> Result<Vec<u8>, StorageError> {
    let compressed;
    let body = match codec {
        Codec::Stored => payload,
        Codec::Zstd => {
            compressed = zstd::bulk::compress(payload, ZSTD_LEVEL)
                .map_err(|e| StorageError::Io(format!("snapshot compression: {e}")))?;
            &compressed[..]
        }
    };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + TRAILER_LEN);
    out.extend_from_slice(&header(
        kind,
        codec,
        payload.len() as u64,
        body.len() as u64,
    ));
    out.extend_from_slice(body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Builds a container from a payload written piece by piece, so a large payload is never held
/// whole: the first [`COMPRESS_MIN_BYTES`] are buffered, and a payload that grows past them
/// goes through a zstd stream from then on. A payload that stays smaller is stored as is, as
/// [`encode`] would store it.
pub struct ContainerWriter {
    kind: Kind,
    payload_len: u64,
    state: WriterState,
}

enum WriterState {
    Buffering(Vec<u8>),
    Compressing(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl ContainerWriter {
    pub fn new(kind: Kind) -> ContainerWriter {
        ContainerWriter {
            kind,
            payload_len: 0,
            state: WriterState::Buffering(Vec::new()),
        }
    }

    /// The finished container.
    pub fn finish(self) -> Result<Vec<u8>, StorageError> {
        let mut out = match self.state {
            WriterState::Buffering(payload) => return encode(self.kind, &payload),
            WriterState::Compressing(enc) => enc
                .finish()
                .map_err(|e| StorageError::Io(format!("snapshot compression: {e}")))?,
        };
        let body_len = (out.len() - HEADER_LEN) as u64;
        out[..HEADER_LEN].copy_from_slice(&header(
            self.kind,
            Codec::Zstd,
            self.payload_len,
            body_len,
        ));
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }
}

impl std::io::Write for ContainerWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.payload_len += buf.len() as u64;
        match &mut self.state {
            WriterState::Compressing(enc) => enc.write_all(buf)?,
            WriterState::Buffering(head) => {
                head.extend_from_slice(buf);
                if head.len() >= COMPRESS_MIN_BYTES {
                    // The header is written at the end, once the lengths are known.
                    let head = std::mem::take(head);
                    let mut enc =
                        zstd::stream::write::Encoder::new(vec![0; HEADER_LEN], ZSTD_LEVEL)?;
                    enc.write_all(&head)?;
                    self.state = WriterState::Compressing(enc);
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn header(kind: Kind, codec: Codec, payload_len: u64, body_len: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(MAGIC);
    h[4] = VERSION;
    h[5] = codec as u8;
    h[6] = kind as u8;
    h[8..16].copy_from_slice(&payload_len.to_le_bytes());
    h[16..24].copy_from_slice(&body_len.to_le_bytes());
    h
}

/// Checks the container's framing and checksum without decompressing it.
pub fn verify(raw: &[u8]) -> Result<(Kind, Codec, u64), StorageError> {
    let corrupt = |why: String| StorageError::Corrupt(format!("snapshot: {why}"));
    if raw.len() < HEADER_LEN + TRAILER_LEN {
        return Err(corrupt(format!(
            "{} bytes is shorter than the {}-byte frame (truncated?)",
            raw.len(),
            HEADER_LEN + TRAILER_LEN
        )));
    }
    if &raw[..4] != MAGIC {
        return Err(corrupt("not a c20 snapshot (bad magic)".into()));
    }
    if raw[4] != VERSION {
        return Err(corrupt(format!("unknown format version {}", raw[4])));
    }
    let body_len = u64::from_le_bytes(raw[16..24].try_into().expect("8 bytes"));
    let want_len = (HEADER_LEN + TRAILER_LEN) as u64 + body_len;
    if raw.len() as u64 != want_len {
        return Err(corrupt(format!(
            "{} bytes where the header announces {want_len} ({})",
            raw.len(),
            if (raw.len() as u64) < want_len {
                "truncated"
            } else {
                "trailing bytes"
            }
        )));
    }
    let (body_end, trailer) = raw.split_at(raw.len() - TRAILER_LEN);
    let want = u32::from_le_bytes(trailer.try_into().expect("4 bytes"));
    let got = crc32c::crc32c(body_end);
    if want != got {
        return Err(corrupt(format!(
            "checksum mismatch (stored {want:08x}, computed {got:08x}): corrupt or truncated"
        )));
    }
    let codec = match raw[5] {
        0 => Codec::Stored,
        1 => Codec::Zstd,
        c => return Err(corrupt(format!("unknown codec {c}"))),
    };
    let kind = match raw[6] {
        0 => Kind::Full,
        1 => Kind::Incremental,
        k => return Err(corrupt(format!("unknown kind {k}"))),
    };
    let len = u64::from_le_bytes(raw[8..16].try_into().expect("8 bytes"));
    if len > PAYLOAD_BYTES_MAX {
        return Err(corrupt(format!("payload length {len} is implausible")));
    }
    Ok((kind, codec, len))
}

/// Length of the container at the start of `raw` (which may continue with other bytes), once
/// its header is there.
pub fn container_len(raw: &[u8]) -> Option<usize> {
    if raw.len() < HEADER_LEN || &raw[..4] != MAGIC {
        return None;
    }
    let body_len = u64::from_le_bytes(raw[16..24].try_into().expect("8 bytes"));
    usize::try_from(body_len)
        .ok()?
        .checked_add(HEADER_LEN + TRAILER_LEN)
}

const BACKUP_ALIGN: usize = 512;
const SHA256_LEN: usize = 32;

/// A backup file of `container`: padded to 512 bytes, then its SHA-256.
pub fn to_backup(mut container: Vec<u8>) -> Vec<u8> {
    use sha2::Digest;
    let padded = container.len().div_ceil(BACKUP_ALIGN) * BACKUP_ALIGN;
    container.resize(padded, 0);
    let digest = sha2::Sha256::digest(&container);
    container.extend_from_slice(&digest);
    container
}

/// The container inside a backup file, once the file's SHA-256 and the container's own
/// checksum match.
pub fn from_backup(raw: &[u8]) -> Result<&[u8], StorageError> {
    use sha2::Digest;
    let corrupt = |why: String| StorageError::Corrupt(format!("snapshot file: {why}"));
    if raw.len() % BACKUP_ALIGN != SHA256_LEN {
        return Err(corrupt(format!(
            "{} bytes is not a whole backup (512-byte blocks and a SHA-256): truncated?",
            raw.len()
        )));
    }
    let (body, digest) = raw.split_at(raw.len() - SHA256_LEN);
    if sha2::Sha256::digest(body).as_slice() != digest {
        return Err(corrupt("SHA-256 mismatch: the file is corrupt".into()));
    }
    let len = container_len(body)
        .filter(|n| *n <= body.len())
        .ok_or_else(|| corrupt("no c20 snapshot inside (an etcd bolt file?)".into()))?;
    verify(&body[..len])?;
    Ok(&body[..len])
}

/// Checks and unwraps a container.
pub fn decode(raw: &[u8]) -> Result<Decoded, StorageError> {
    let (kind, codec, len) = verify(raw)?;
    let body = &raw[HEADER_LEN..raw.len() - TRAILER_LEN];
    let payload = match codec {
        Codec::Stored => body.to_vec(),
        Codec::Zstd => zstd::bulk::decompress(body, len as usize)
            .map_err(|e| StorageError::Corrupt(format!("snapshot: zstd: {e}")))?,
    };
    if payload.len() as u64 != len {
        return Err(StorageError::Corrupt(format!(
            "snapshot: payload is {} bytes, header says {len}",
            payload.len()
        )));
    }
    Ok(Decoded {
        kind,
        codec,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8 / 7).collect()
    }

    #[test]
    fn round_trips_both_codecs_and_kinds() {
        for (n, codec) in [(10, Codec::Stored), (100_000, Codec::Zstd)] {
            for kind in [Kind::Full, Kind::Incremental] {
                let payload = sample(n);
                let raw = encode(kind, &payload).unwrap();
                let d = decode(&raw).unwrap();
                assert_eq!((d.kind, d.codec), (kind, codec));
                assert_eq!(d.payload, payload);
            }
        }
    }

    #[test]
    fn a_payload_written_in_pieces_decodes_to_the_same_bytes() {
        use std::io::Write;
        for n in [0, 10, COMPRESS_MIN_BYTES - 1, COMPRESS_MIN_BYTES, 300_000] {
            for kind in [Kind::Full, Kind::Incremental] {
                let payload = sample(n);
                let mut w = ContainerWriter::new(kind);
                for piece in payload.chunks(777) {
                    w.write_all(piece).unwrap();
                }
                let raw = w.finish().unwrap();
                let d = decode(&raw).unwrap();
                let codec = if n < COMPRESS_MIN_BYTES {
                    Codec::Stored
                } else {
                    Codec::Zstd
                };
                assert_eq!((d.kind, d.codec), (kind, codec), "{n} bytes");
                assert_eq!(d.payload, payload, "{n} bytes");
                if n < COMPRESS_MIN_BYTES {
                    assert_eq!(raw, encode(kind, &payload).unwrap(), "{n} bytes");
                }
            }
        }
    }

    #[test]
    fn backups_round_trip_and_are_checked() {
        let c = encode(Kind::Full, &sample(10_000)).unwrap();
        let b = to_backup(c.clone());
        assert_eq!(b.len() % 512, 32);
        assert_eq!(from_backup(&b).unwrap(), &c[..]);
        let mut bad = b.clone();
        bad[100] ^= 1;
        let e = from_backup(&bad).unwrap_err().to_string();
        assert!(e.contains("SHA-256 mismatch"), "{e}");
        let e = from_backup(&b[..b.len() - 1]).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = from_backup(&to_backup(b"bolt".repeat(300)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no c20 snapshot inside"), "{e}");
    }

    #[test]
    fn large_repetitive_payloads_get_smaller() {
        let payload = sample(1 << 20);
        let raw = encode(Kind::Full, &payload).unwrap();
        assert!(raw.len() < payload.len() / 4, "{} bytes", raw.len());
    }

    #[test]
    fn any_flipped_byte_or_cut_is_refused() {
        let raw = encode(Kind::Full, &sample(50_000)).unwrap();
        for i in [0, 5, 6, 9, 20, raw.len() / 2, raw.len() - 1] {
            let mut bad = raw.clone();
            bad[i] ^= 0x40;
            let e = decode(&bad).unwrap_err().to_string();
            assert!(e.starts_with("corrupt data: snapshot:"), "byte {i}: {e}");
        }
        for cut in [0, 3, 19, raw.len() / 2, raw.len() - 1] {
            let e = decode(&raw[..cut]).unwrap_err().to_string();
            assert!(
                e.contains("truncated") || e.contains("checksum"),
                "cut at {cut}: {e}"
            );
        }
    }
}
