//! Sending a snapshot to a peer in checksummed chunks.
//!
//! A transfer is a conversation of small messages, each one peer RPC:
//!
//! 1. `Begin`: the receiver says what it already holds (its applied revision and compaction
//!    revision). When the snapshot's history above that revision is intact, the sender ships
//!    only what changed since (an incremental snapshot); otherwise the full one.
//! 2. `Chunk`s of at most [`CHUNK_BYTES`], each with its offset, length and crc32c. The
//!    receiver refuses a chunk that is corrupt, truncated or out of place, naming why and where
//!    it wants to continue; the sender resends from there, up to [`CHUNK_RETRIES`] times in a
//!    row before it gives up (openraft then starts a new transfer later).
//! 3. `Finish`: the receiver checks the whole container (its own checksum) and installs it. A
//!    container that fails the check is refused and sent again from the start.

use crate::types::{SnapshotMeta, TypeConfig, Vote};
use openraft::errors::Fatal;
use openraft::raft::SnapshotResponse;
use serde::{Deserialize, Serialize};
use std::future::Future;

/// Largest chunk of one message.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Refusals in a row (for one chunk or the finish) before a transfer is abandoned.
pub const CHUNK_RETRIES: u32 = 5;

/// From the sender.
#[derive(Debug, Serialize, Deserialize)]
pub enum SnapshotMsg {
    Begin {
        transfer: u64,
    },
    Chunk {
        transfer: u64,
        offset: u64,
        len: u32,
        crc: u32,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Finish {
        transfer: u64,
        vote: Vote,
        meta: SnapshotMeta,
        len: u64,
    },
}

/// From the receiver.
#[derive(Debug, Serialize, Deserialize)]
pub enum SnapshotAnswer {
    /// The receiver's store: its current and compaction revisions.
    Begun {
        revision: i64,
        compact_revision: i64,
    },
    /// The chunk was taken; the next one starts here.
    Received { next_offset: u64 },
    /// The chunk (or the whole container, at finish) was refused: why, and where to resume.
    Refused { next_offset: u64, why: String },
    /// openraft's answer to the installed snapshot.
    Installed(Result<SnapshotResponse<TypeConfig>, Fatal<TypeConfig>>),
}

/// A transfer being received: the bytes so far.
#[derive(Debug, Default)]
pub struct Incoming {
    transfer: u64,
    buf: Vec<u8>,
}

impl Incoming {
    pub fn new(transfer: u64) -> Incoming {
        Incoming {
            transfer,
            buf: Vec::new(),
        }
    }

    pub fn transfer(&self) -> u64 {
        self.transfer
    }

    /// Bytes taken so far.
    pub fn received(&self) -> usize {
        self.buf.len()
    }

    /// Takes one chunk, or says why not and where the sender must resume.
    pub fn chunk(&mut self, offset: u64, len: u32, crc: u32, data: &[u8]) -> SnapshotAnswer {
        let have = self.buf.len() as u64;
        let refuse = |why: String| SnapshotAnswer::Refused {
            next_offset: have,
            why,
        };
        if offset != have {
            return refuse(format!(
                "snapshot chunk at offset {offset} is out of place: {have} bytes received so far"
            ));
        }
        if data.len() != len as usize {
            return refuse(format!(
                "snapshot chunk at offset {offset} is truncated: {} of {len} bytes",
                data.len()
            ));
        }
        let got = crc32c::crc32c(data);
        if got != crc {
            return refuse(format!(
                "snapshot chunk at offset {offset} is corrupt: checksum {got:08x}, sent as {crc:08x}"
            ));
        }
        self.buf.extend_from_slice(data);
        SnapshotAnswer::Received {
            next_offset: self.buf.len() as u64,
        }
    }

    /// The whole container once `len` bytes arrived and it checks out; otherwise why not (the
    /// transfer starts over).
    pub fn finish(&mut self, len: u64) -> Result<Vec<u8>, String> {
        let data = std::mem::take(&mut self.buf);
        if data.len() as u64 != len {
            return Err(format!(
                "snapshot is truncated: {} of {len} bytes received",
                data.len()
            ));
        }
        c20_storage::snapshot::verify(&data).map_err(|e| e.to_string())?;
        Ok(data)
    }
}

/// Why a transfer ended without an installed snapshot.
#[derive(Debug)]
pub enum SendError<E> {
    /// The link failed (openraft retries later).
    Link(E),
    /// The receiver kept refusing.
    Refused(String),
}

/// How the sender picks what to ship once it knows the receiver's state: given the receiver's
/// revision and compaction revision, the bytes to send (an incremental container or the full
/// one).
pub type Choose<'a> = dyn FnOnce(i64, i64) -> Vec<u8> + Send + 'a;

/// Runs one transfer over `call` (one message, one answer) and returns the receiver's install
/// answer and the number of refusals it overcame.
pub async fn send<E, F, Fut>(
    mut call: F,
    transfer: u64,
    vote: Vote,
    meta: SnapshotMeta,
    choose: Box<Choose<'_>>,
    chunk_bytes: usize,
) -> Result<(SnapshotAnswer, u32), SendError<E>>
where
    F: FnMut(SnapshotMsg) -> Fut,
    Fut: Future<Output = Result<SnapshotAnswer, E>>,
{
    let data = match call(SnapshotMsg::Begin { transfer })
        .await
        .map_err(SendError::Link)?
    {
        SnapshotAnswer::Begun {
            revision,
            compact_revision,
        } => choose(revision, compact_revision),
        other => return Err(SendError::Refused(format!("unexpected answer {other:?}"))),
    };
    let mut offset = 0usize;
    let mut refusals_in_a_row = 0u32;
    let mut refusals = 0u32;
    // Counts a refusal; gives up after too many in a row.
    let mut refused = |in_a_row: &mut u32, why: String| -> Result<(), SendError<E>> {
        *in_a_row += 1;
        refusals += 1;
        tracing::warn!(transfer, "{why}; resending");
        if *in_a_row > CHUNK_RETRIES {
            return Err(SendError::Refused(why));
        }
        Ok(())
    };
    loop {
        while offset < data.len() {
            let end = (offset + chunk_bytes).min(data.len());
            let piece = &data[offset..end];
            let msg = SnapshotMsg::Chunk {
                transfer,
                offset: offset as u64,
                len: piece.len() as u32,
                crc: crc32c::crc32c(piece),
                data: piece.to_vec(),
            };
            match call(msg).await.map_err(SendError::Link)? {
                SnapshotAnswer::Received { next_offset } => {
                    offset = next_offset as usize;
                    refusals_in_a_row = 0;
                }
                SnapshotAnswer::Refused { next_offset, why } => {
                    refused(&mut refusals_in_a_row, why)?;
                    offset = next_offset as usize;
                }
                other => return Err(SendError::Refused(format!("unexpected answer {other:?}"))),
            }
        }
        let finish = SnapshotMsg::Finish {
            transfer,
            vote,
            meta: meta.clone(),
            len: data.len() as u64,
        };
        match call(finish).await.map_err(SendError::Link)? {
            installed @ SnapshotAnswer::Installed(_) => return Ok((installed, refusals)),
            SnapshotAnswer::Refused { why, .. } => {
                refused(&mut refusals_in_a_row, why)?;
                // The receiver dropped what it had; begin again from the first byte.
                offset = 0;
            }
            other => return Err(SendError::Refused(format!("unexpected answer {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use c20_storage::snapshot::{encode, Kind};
    use std::sync::Mutex;

    /// A receiver behind a link that damages chosen chunks once each: `flip` corrupts a byte,
    /// `cut` drops the chunk's tail, `garble_finish` corrupts the assembled container once.
    struct FlakyLink {
        incoming: Mutex<Incoming>,
        flip: Mutex<Vec<u64>>,
        cut: Mutex<Vec<u64>>,
        garble_finish: Mutex<bool>,
        installed: Mutex<Option<Vec<u8>>>,
    }

    impl FlakyLink {
        fn deliver(&self, msg: SnapshotMsg) -> SnapshotAnswer {
            match msg {
                SnapshotMsg::Begin { transfer } => {
                    *self.incoming.lock().unwrap() = Incoming::new(transfer);
                    SnapshotAnswer::Begun {
                        revision: 1,
                        compact_revision: 0,
                    }
                }
                SnapshotMsg::Chunk {
                    offset,
                    len,
                    crc,
                    mut data,
                    ..
                } => {
                    let mut flip = self.flip.lock().unwrap();
                    if let Some(i) = flip.iter().position(|o| *o == offset) {
                        flip.remove(i);
                        data[len as usize / 2] ^= 1;
                    }
                    let mut cut = self.cut.lock().unwrap();
                    if let Some(i) = cut.iter().position(|o| *o == offset) {
                        cut.remove(i);
                        data.truncate(len as usize - 3);
                    }
                    self.incoming.lock().unwrap().chunk(offset, len, crc, &data)
                }
                SnapshotMsg::Finish { len, vote, .. } => {
                    let mut incoming = self.incoming.lock().unwrap();
                    if std::mem::take(&mut *self.garble_finish.lock().unwrap()) {
                        incoming.buf[7] ^= 0x10;
                    }
                    match incoming.finish(len) {
                        Ok(data) => {
                            *self.installed.lock().unwrap() = Some(data);
                            SnapshotAnswer::Installed(Ok(SnapshotResponse::new(vote)))
                        }
                        Err(why) => SnapshotAnswer::Refused {
                            next_offset: 0,
                            why,
                        },
                    }
                }
            }
        }
    }

    fn container() -> Vec<u8> {
        let payload: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        encode(Kind::Full, &payload).unwrap()
    }

    async fn run(link: &FlakyLink, data: Vec<u8>) -> Result<u32, SendError<()>> {
        let (answer, refusals) = send(
            |msg| {
                let a = link.deliver(msg);
                async move { Ok::<_, ()>(a) }
            },
            9,
            Vote::new(1, 1),
            SnapshotMeta::default(),
            Box::new(move |_, _| data),
            64 * 1024,
        )
        .await?;
        assert!(matches!(answer, SnapshotAnswer::Installed(Ok(_))));
        Ok(refusals)
    }

    fn link(flip: Vec<u64>, cut: Vec<u64>, garble_finish: bool) -> FlakyLink {
        FlakyLink {
            incoming: Mutex::new(Incoming::default()),
            flip: Mutex::new(flip),
            cut: Mutex::new(cut),
            garble_finish: Mutex::new(garble_finish),
            installed: Mutex::new(None),
        }
    }

    #[tokio::test]
    async fn corrupt_and_truncated_chunks_are_refused_and_resent() {
        let data = container();
        assert!(data.len() > 3 * 64 * 1024, "{} bytes", data.len());
        let l = link(vec![65536], vec![131072, 131072], true);
        let refusals = run(&l, data.clone()).await.unwrap();
        // One flipped chunk, the same chunk cut twice, one garbled container.
        assert_eq!(refusals, 4);
        assert_eq!(l.installed.lock().unwrap().as_deref(), Some(&data[..]));
    }

    #[tokio::test]
    async fn a_receiver_that_keeps_refusing_ends_the_transfer() {
        let data = container();
        let l = link(vec![0; CHUNK_RETRIES as usize + 1], vec![], false);
        match run(&l, data).await {
            Err(SendError::Refused(why)) => {
                assert!(why.contains("offset 0 is corrupt"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        assert!(l.installed.lock().unwrap().is_none());
    }

    #[test]
    fn refusals_name_the_problem_and_keep_what_arrived() {
        let mut r = Incoming::new(1);
        let a = b"first chunk".to_vec();
        assert!(matches!(
            r.chunk(0, a.len() as u32, crc32c::crc32c(&a), &a),
            SnapshotAnswer::Received { next_offset: 11 }
        ));
        let b = b"second".to_vec();
        let crc = crc32c::crc32c(&b);
        let cases: [(u64, u32, u32, &[u8], &str); 3] = [
            (0, 6, crc, &b, "out of place: 11 bytes received so far"),
            (11, 6, crc, &b[..4], "truncated: 4 of 6 bytes"),
            (11, 6, crc ^ 1, &b, "is corrupt: checksum"),
        ];
        for (offset, len, crc, data, want) in cases {
            match r.chunk(offset, len, crc, data) {
                SnapshotAnswer::Refused { next_offset, why } => {
                    assert_eq!(next_offset, 11);
                    assert!(why.contains(want), "{why}");
                }
                other => panic!("{other:?}"),
            }
        }
        let e = r.finish(11).unwrap_err();
        assert!(e.contains("corrupt data: snapshot"), "{e}");
    }
}
