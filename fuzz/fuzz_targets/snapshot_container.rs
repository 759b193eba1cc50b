//! Snapshot containers and backups from arbitrary bytes: checking and decoding never panic,
//! whatever passes `verify` decodes, and any payload survives encode then decode unchanged.
#![no_main]

use c20_storage::snapshot::{self, Kind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = snapshot::container_len(data);
    if let Ok(inner) = snapshot::from_backup(data) {
        let _ = snapshot::verify(inner);
    }
    if let Ok((kind, codec, _)) = snapshot::verify(data) {
        // Verified means the checksum matched; the body may still fail to decompress.
        if let Ok(d) = snapshot::decode(data) {
            assert_eq!((d.kind, d.codec), (kind, codec));
        }
    } else {
        assert!(
            snapshot::decode(data).is_err(),
            "decode took what verify refused"
        );
    }
    let kind = if data.first().is_some_and(|b| b & 1 == 1) {
        Kind::Incremental
    } else {
        Kind::Full
    };
    let container = snapshot::encode(kind, data).expect("any payload encodes");
    let back = snapshot::decode(&container).expect("an encoded container decodes");
    assert_eq!(back.kind, kind);
    assert_eq!(back.payload, data);
    let backup = snapshot::to_backup(container.clone());
    assert_eq!(
        snapshot::from_backup(&backup).expect("own backup"),
        container.as_slice()
    );
});
