//! Applying one batch of 1,024 read-heavy txns, strictly serially and with the parallel phase.
//!
//! Each txn compares one key, reads a range of 32 keys and writes one key, all at random over
//! 100,000 keys, so most txns of a batch are independent. `cargo bench -p c20-storage --bench
//! apply`.

use c20_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use c20_api::etcdserverpb::{request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use c20_storage::{MvccStore, WriteOp};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

/// The allocator the `c20` binary runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEYS: u64 = 100_000;
const BATCH: usize = 1024;

fn key(i: u64) -> Vec<u8> {
    format!("key{:06}", i % KEYS).into_bytes()
}

fn loaded_store() -> MvccStore {
    let mut s = MvccStore::in_memory().unwrap();
    let puts: Vec<WriteOp> = (0..KEYS)
        .map(|i| {
            WriteOp::Put(PutRequest {
                key: key(i),
                value: vec![b'v'; 64],
                ..Default::default()
            })
        })
        .collect();
    s.apply_batch(puts).unwrap();
    s
}

fn batch(seed: u64) -> Vec<WriteOp> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..BATCH)
        .map(|_| {
            let (c, r, w) = (next(), next() % (KEYS - 32), next());
            WriteOp::Txn(TxnRequest {
                compare: vec![Compare {
                    key: key(c),
                    range_end: vec![],
                    target: CompareTarget::Version as i32,
                    result: CompareResult::Greater as i32,
                    target_union: Some(TargetUnion::Version(0)),
                }],
                success: vec![
                    RequestOp {
                        request: Some(request_op::Request::RequestRange(RangeRequest {
                            key: key(r),
                            range_end: key(r + 32),
                            ..Default::default()
                        })),
                    },
                    RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: key(w),
                            value: vec![b'w'; 64],
                            ..Default::default()
                        })),
                    },
                ],
                failure: vec![],
            })
        })
        .collect()
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply_1024_read_heavy_txns");
    g.sample_size(20);
    for threads in [1usize, 2] {
        let name = if threads == 1 {
            "serial"
        } else {
            "parallel_2_threads"
        };
        let mut store = loaded_store();
        store.set_apply_threads(threads);
        let mut seed = 7;
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    seed += 1;
                    batch(seed)
                },
                |ops| store.apply_batch(ops).unwrap(),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
