//! Resident memory of one MVCC store after a million puts of distinct 8-byte keys with 256-byte
//! values (batches of 100, a checkpoint every 10,000), then after a snapshot image is exported:
//! the store's share of a node's memory, without Raft, the log or the network.
//!
//! ```sh
//! cargo run --release -p c20-storage --example store_memory -- [disk|memory]
//! ```
//!
//! `disk` (the default) is a store on redb in a temporary directory, as `c20 serve` keeps it;
//! `memory` is the embedded cluster's store.

use c20_api::etcdserverpb::PutRequest;
use c20_storage::{MvccStore, WriteOp};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEYS: u64 = 1_000_000;
const BATCH: u64 = 100;

fn rss_mib() -> String {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024)
    };
    format!("RSS {} MiB, peak {} MiB", field("VmRSS:"), field("VmHWM:"))
}

fn main() {
    let on_disk = std::env::args().nth(1).as_deref() != Some("memory");
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut store = if on_disk {
        MvccStore::open(&dir.path().join("store")).expect("open the store")
    } else {
        MvccStore::in_memory().expect("store in memory")
    };
    let value = vec![b'v'; 256];
    for batch in 0..KEYS / BATCH {
        let ops = (0..BATCH)
            .map(|i| {
                WriteOp::Put(PutRequest {
                    key: format!("{:08}", batch * BATCH + i).into_bytes(),
                    value: value.clone(),
                    ..Default::default()
                })
            })
            .collect();
        store.apply_batch(ops).expect("apply");
        if batch % 100 == 99 {
            store.checkpoint().expect("checkpoint");
        }
    }
    println!(
        "{} store, {KEYS} keys: {}",
        if on_disk { "disk" } else { "memory" },
        rss_mib()
    );
    let image = store.export();
    println!(
        "with an exported image of {} events: {}",
        image.events.len(),
        rss_mib()
    );
}
