//! The stress test of the original `c20_distributed` guide, done right:
//! `LocalReplicator::new(5, 3, 3)`, 100 concurrent tasks × 1000 `Quorum` writes each.
//! Throughput is total operations over the wall time of the whole run; latency percentiles come
//! from every single write.
//!
//! ```sh
//! cargo run --release -p c20_distributed --example stress [-- TASKS WRITES_PER_TASK]
//! ```
//!
//! The process runs without transparent huge pages unless `C20_KEEP_THP=1` is set, and the
//! replicas' runtime without Tokio's LIFO slot unless `C20_RUNTIME_LIFO_SLOT=1` is set
//! (docs/BENCHMARKS.md compares each pair).

use c20_distributed::{ConsistencyLevel, LocalReplicator};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As c20's docs advise for any process holding a growing store (see the function's docs);
    // `C20_KEEP_THP=1` keeps huge pages, for comparison.
    if std::env::var_os("C20_KEEP_THP").is_none() {
        c20_distributed::disable_transparent_huge_pages()?;
    }
    let mut args = std::env::args().skip(1);
    let tasks: usize = args.next().map_or(Ok(100), |a| a.parse())?;
    let per_task: usize = args.next().map_or(Ok(1000), |a| a.parse())?;

    let lifo_slot = std::env::var("C20_RUNTIME_LIFO_SLOT").is_ok_and(|v| v == "1");
    let replicator = LocalReplicator::builder(5, 3, 3)
        .runtime_lifo_slot(lifo_slot)
        .build()?;
    let started = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let rep = replicator.clone();
        handles.push(tokio::spawn(async move {
            let mut latencies_us = Vec::with_capacity(per_task);
            let mut errors = 0usize;
            for i in 0..per_task {
                let key = format!("task{t:03}/key{i:05}");
                let t0 = Instant::now();
                match rep
                    .replicate(&key, b"value", ConsistencyLevel::Quorum)
                    .await
                {
                    Ok(_) => latencies_us.push(t0.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            (latencies_us, errors)
        }));
    }
    let mut all = Vec::with_capacity(tasks * per_task);
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.await?;
        all.extend(l);
        errors += e;
    }
    let wall = started.elapsed();
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i] as f64 / 1000.0
    };
    let ok = all.len();
    println!("LocalReplicator::new(5, 3, 3): {tasks} tasks x {per_task} Quorum writes");
    println!(
        "  ok {ok}, errors {errors}, wall {:.3} s",
        wall.as_secs_f64()
    );
    println!("  throughput {:.0} ops/s", ok as f64 / wall.as_secs_f64());
    println!(
        "  latency ms: p50 {:.3}  p95 {:.3}  p99 {:.3}  max {:.3}",
        pct(0.50),
        pct(0.95),
        pct(0.99),
        pct(1.0)
    );
    // Every acknowledged write is readable at Strong.
    let probe = replicator
        .read("task000/key00000", ConsistencyLevel::Strong)
        .await?;
    assert_eq!(probe.as_deref(), Some(&b"value"[..]));
    Ok(())
}
