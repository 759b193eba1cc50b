//! A snapshot's store image as a receiver decodes and installs it, from arbitrary bytes (the
//! container's checksum only guards against damage, not against a hostile or buggy sender).
//! Installing never panics, and an image that is refused leaves the store as it was.
#![no_main]

use c20_api::etcdserverpb::PutRequest;
use c20_storage::mvcc::MvccImage;
use c20_storage::{MvccStore, WriteOp};
use libfuzzer_sys::fuzz_target;

fn store_with_two_keys() -> MvccStore {
    let mut s = MvccStore::in_memory().expect("in-memory store");
    let puts = ["a", "b"]
        .map(|k| {
            WriteOp::Put(PutRequest {
                key: k.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })
        })
        .to_vec();
    s.apply_batch(puts).expect("store is healthy");
    s
}

fuzz_target!(|data: &[u8]| {
    let Ok(image) = postcard::from_bytes::<MvccImage>(data) else {
        return;
    };
    let mut full = store_with_two_keys();
    let before = (full.current_revision(), full.hash_kv(0).ok());
    if full.import(image.clone(), Vec::new()).is_err() {
        assert_eq!((full.current_revision(), full.hash_kv(0).ok()), before);
    }
    let mut delta = store_with_two_keys();
    if delta.import_incremental(2, image, Vec::new()).is_err() {
        assert_eq!((delta.current_revision(), delta.hash_kv(0).ok()), before);
    }
});
