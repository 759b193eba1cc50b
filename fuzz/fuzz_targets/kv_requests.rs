//! KV requests as a client sends them: arbitrary bytes cut into protobuf bodies of Put,
//! DeleteRange, Txn, Compaction and Range. Decoding and validation never panic; what passes
//! validation is applied to two in-memory stores, one applying strictly in order and one with
//! the parallel apply, which must give the same results and the same HashKV.
#![no_main]

use c20_api::etcdserverpb::CompactionRequest;
use c20_storage::mvcc::{validate_delete, validate_put, validate_range, validate_txn};
use c20_storage::{MvccStore, WriteOp};
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// The request `body` decodes to, if it decodes and passes `check` (as the gRPC layer checks it).
fn valid<T: Message + Default, E>(body: &[u8], check: impl Fn(&T) -> Result<(), E>) -> Option<T> {
    T::decode(body).ok().filter(|r| check(r).is_ok())
}

fuzz_target!(|data: &[u8]| {
    let mut ops = Vec::new();
    let mut ranges = Vec::new();
    let mut rest = data;
    // Each request: a tag byte, a length byte, then that many bytes of protobuf.
    while rest.len() >= 2 {
        let (tag, len) = (rest[0], rest[1] as usize);
        let body = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[2 + body.len()..];
        match tag % 5 {
            0 => ops.extend(valid(body, validate_put).map(WriteOp::Put)),
            1 => ops.extend(valid(body, validate_delete).map(WriteOp::DeleteRange)),
            2 => ops.extend(valid(body, validate_txn).map(WriteOp::Txn)),
            3 => ops.extend(
                valid(body, |_: &CompactionRequest| Ok::<(), ()>(())).map(WriteOp::Compact),
            ),
            _ => ranges.extend(valid(body, validate_range)),
        }
    }
    let mut serial = MvccStore::in_memory().expect("in-memory store");
    let mut parallel = MvccStore::in_memory().expect("in-memory store");
    parallel.set_apply_threads(2);
    let a = serial.apply_batch(ops.clone()).expect("store is healthy");
    let b = parallel.apply_batch(ops).expect("store is healthy");
    assert_eq!(a, b, "serial and parallel apply disagree");
    let rev = serial.current_revision();
    assert_eq!(rev, parallel.current_revision());
    assert_eq!(serial.hash_kv(0).ok(), parallel.hash_kv(0).ok());
    for r in &ranges {
        assert_eq!(
            serial.range(r),
            parallel.range(r),
            "ranges disagree for {r:?}"
        );
    }
});
