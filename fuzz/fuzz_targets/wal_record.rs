//! WAL records as recovery reads them: records decoded one after another from arbitrary bytes,
//! then the Raft entry inside each and the client request inside that. Nothing may panic; a
//! record that decodes re-encodes to the very bytes it came from.
//!
//! Random bytes almost never carry a valid crc32c, so the input is also wrapped as the payload
//! of a well-formed record: that reaches the entry and request decoding behind the checksum.
#![no_main]

use c20_raft::types::Entry;
use c20_storage::wal::{decode_record, encode_record};
use libfuzzer_sys::fuzz_target;
use openraft::EntryPayload;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok((index, payload, used)) = decode_record(rest) {
        check_record(rest, index, payload, used);
        rest = &rest[used..];
    }
    let mut wrapped = Vec::new();
    encode_record(&mut wrapped, data.len() as u64, data);
    let (index, payload, used) = decode_record(&wrapped).expect("a record just encoded decodes");
    assert_eq!(
        (index, payload, used),
        (data.len() as u64, data, wrapped.len())
    );
    check_record(&wrapped, index, payload, used);
});

fn check_record(raw: &[u8], index: u64, payload: &[u8], used: usize) {
    assert!(
        used >= 16 && used <= raw.len(),
        "record claims {used} of {} bytes",
        raw.len()
    );
    let mut again = Vec::new();
    encode_record(&mut again, index, payload);
    assert_eq!(
        again.as_slice(),
        &raw[..used],
        "record does not re-encode to its bytes"
    );
    if let Ok(entry) = postcard::from_bytes::<Entry>(payload) {
        // A command's body is the client's protobuf request: decoding it must not panic.
        if let EntryPayload::Normal(cmd) = &entry.payload {
            let _ = cmd.to_op();
        }
    }
}
