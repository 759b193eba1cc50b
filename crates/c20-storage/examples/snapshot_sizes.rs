//! Snapshot sizes: how much a full snapshot compresses, and how small an incremental one is
//! after 1% of the keys changed.
//!
//!   cargo run --release -p c20-storage --example snapshot_sizes -- [KEYS] [VALUE_SIZE]
//!
//! Loads KEYS keys (default 100,000) with VALUE_SIZE-byte values (default 256) into an
//! in-memory store, twice: values of random letters and digits (what `c20 bench` writes), and
//! values of random bytes (incompressible). Prints the raw size (keys + values), the snapshot
//! payload (the store image a snapshot carries: every kept version with its revisions and
//! metadata), the full snapshot container (zstd), and after rewriting 1% of the keys the full
//! and the incremental container.

use c20_api::etcdserverpb::PutRequest;
use c20_storage::mvcc::MvccImage;
use c20_storage::snapshot::{encode, Kind};
use c20_storage::{MvccStore, WriteOp};
use std::time::Instant;

/// xorshift64*: enough randomness for values, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn value(&mut self, len: usize, alnum: bool) -> Vec<u8> {
        const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..len)
            .map(|_| {
                let r = self.next();
                if alnum {
                    ALNUM[(r % ALNUM.len() as u64) as usize]
                } else {
                    (r >> 24) as u8
                }
            })
            .collect()
    }
}

fn put_all(store: &mut MvccStore, puts: Vec<(Vec<u8>, Vec<u8>)>) {
    for chunk in puts.chunks(1000) {
        let ops = chunk
            .iter()
            .map(|(k, v)| {
                WriteOp::Put(PutRequest {
                    key: k.clone(),
                    value: v.clone(),
                    ..Default::default()
                })
            })
            .collect();
        for r in store.apply_batch(ops).expect("apply") {
            r.expect("put");
        }
    }
}

fn container(kind: Kind, image: &MvccImage) -> (usize, usize, f64) {
    let payload = postcard::to_allocvec(image).expect("encode");
    let start = Instant::now();
    let c = encode(kind, &payload).expect("compress");
    (
        payload.len(),
        c.len(),
        start.elapsed().as_secs_f64() * 1000.0,
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let keys: usize = args.get(1).map_or(100_000, |a| a.parse().expect("KEYS"));
    let value_size: usize = args.get(2).map_or(256, |a| a.parse().expect("VALUE_SIZE"));
    println!("{keys} keys, {value_size}-byte values; sizes in bytes, ratio = raw / full container");
    println!(
        "{:<8} | {:>11} {:>11} {:>11} {:>6} {:>8} | {:>11} {:>11} {:>6}",
        "values", "raw", "payload", "full", "ratio", "zstd ms", "full (+1%)", "incr (1%)", "incr %"
    );
    for alnum in [true, false] {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut store = MvccStore::in_memory().expect("store");
        let puts: Vec<_> = (0..keys)
            .map(|i| {
                (
                    format!("key/{i:08}").into_bytes(),
                    rng.value(value_size, alnum),
                )
            })
            .collect();
        let raw: usize = puts.iter().map(|(k, v)| k.len() + v.len()).sum();
        put_all(&mut store, puts);
        let (payload, full, ms) = container(Kind::Full, &store.export());

        let base = store.current_revision();
        let changed = (keys / 100).max(1);
        let updates: Vec<_> = (0..changed)
            .map(|_| {
                let i = rng.next() as usize % keys;
                (
                    format!("key/{i:08}").into_bytes(),
                    rng.value(value_size, alnum),
                )
            })
            .collect();
        put_all(&mut store, updates);
        let image = store.export();
        let (_, full_after, _) = container(Kind::Full, &image);
        let delta = image.since(base).expect("no compaction happened");
        let (_, incremental, _) = container(Kind::Incremental, &delta);
        println!(
            "{:<8} | {:>11} {:>11} {:>11} {:>6.2} {:>8.1} | {:>11} {:>11} {:>6.2}",
            if alnum { "alnum" } else { "random" },
            raw,
            payload,
            full,
            raw as f64 / full as f64,
            ms,
            full_after,
            incremental,
            100.0 * incremental as f64 / full_after as f64
        );
    }
}
