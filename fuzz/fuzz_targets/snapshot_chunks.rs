//! A snapshot transfer's receiving side fed arbitrary peer messages: decoding and chunk
//! handling never panic, and a transfer only finishes with a container that verifies.
#![no_main]

use c20_raft::snapshot_transfer::{Incoming, SnapshotAnswer, SnapshotMsg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut incoming = Incoming::new(1);
    let mut rest = data;
    while !rest.is_empty() {
        let Ok((msg, tail)) = postcard::take_from_bytes::<SnapshotMsg>(rest) else {
            break;
        };
        rest = tail;
        match msg {
            SnapshotMsg::Chunk {
                offset,
                len,
                crc,
                data,
                ..
            } => {
                let before = incoming.received() as u64;
                match incoming.chunk(offset, len, crc, &data) {
                    SnapshotAnswer::Received { next_offset } => {
                        assert_eq!(next_offset, before + data.len() as u64);
                        assert_eq!(crc32c::crc32c(&data), crc);
                    }
                    SnapshotAnswer::Refused { next_offset, why } => {
                        assert_eq!(next_offset, before, "a refusal moved the offset: {why}");
                    }
                    other => panic!("a chunk got {other:?}"),
                }
            }
            SnapshotMsg::Finish { len, .. } => {
                if let Ok(container) = incoming.finish(len) {
                    assert!(c20_storage::snapshot::verify(&container).is_ok());
                }
            }
            _ => {}
        }
    }
});
