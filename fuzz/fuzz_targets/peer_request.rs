//! Peer requests as a member receives them: a format byte and a payload (postcard, maybe lz4
//! compressed) from arbitrary bytes, then the Raft message inside. Nothing may panic or
//! allocate past the message limit, and compression round-trips any payload.
#![no_main]

use c20_raft::network::{decode_payload, PeerCompression, FORMAT_POSTCARD, FORMAT_POSTCARD_LZ4};
use c20_raft::types::TypeConfig;
use libfuzzer_sys::fuzz_target;
use openraft::raft::{AppendEntriesRequest, VoteRequest};

fuzz_target!(|data: &[u8]| {
    let Some((&format, payload)) = data.split_first() else {
        return;
    };
    let format = u32::from(format % 3);
    if let Ok(raw) = decode_payload(format, payload) {
        let _ = postcard::from_bytes::<AppendEntriesRequest<TypeConfig>>(&raw);
        let _ = postcard::from_bytes::<VoteRequest<TypeConfig>>(&raw);
    } else {
        assert_ne!(format, FORMAT_POSTCARD, "plain payloads are never refused");
    }
    let (f, wire) = PeerCompression { min_bytes: 1 }.encode(payload.to_vec());
    assert!(f == FORMAT_POSTCARD || f == FORMAT_POSTCARD_LZ4);
    let back = decode_payload(f, &wire).expect("own encoding decodes");
    assert_eq!(&*back, payload);
});
