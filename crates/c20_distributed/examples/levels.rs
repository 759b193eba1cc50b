//! Throughput and latency of every consistency level on a `LocalReplicator`, writes and reads.
//!
//! ```sh
//! cargo run --release -p c20_distributed --example levels [-- N R W TASKS OPS_PER_TASK]
//! ```

use c20_distributed::{ConsistencyLevel, LocalReplicator};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LEVELS: [ConsistencyLevel; 5] = [
    ConsistencyLevel::Eventual,
    ConsistencyLevel::Sequential,
    ConsistencyLevel::Quorum,
    ConsistencyLevel::Strong,
    ConsistencyLevel::All,
];

/// Runs `tasks` concurrent loops of `per_task` calls; returns (ops/s, p50 ms, p99 ms, errors).
async fn measure<F, Fut>(tasks: usize, per_task: usize, call: F) -> (f64, f64, f64, usize)
where
    F: Fn(usize, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let call = call.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            let mut errors = 0;
            for i in 0..per_task {
                let t0 = Instant::now();
                if call(t, i).await {
                    lat.push(t0.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.await.expect("task");
        all.extend(l);
        errors += e;
    }
    let wall = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        if all.is_empty() {
            return 0.0;
        }
        all[((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1] as f64 / 1000.0
    };
    (all.len() as f64 / wall, pct(0.5), pct(0.99), errors)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let get = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (n, r, w, tasks, per_task) = (get(0, 5), get(1, 3), get(2, 3), get(3, 100), get(4, 200));
    let rep = LocalReplicator::new(n, r, w);
    println!("LocalReplicator::new({n}, {r}, {w}), {tasks} tasks x {per_task} calls per level");
    println!(
        "{:<11} {:>12} {:>8} {:>8} {:>7} | {:>12} {:>8} {:>8} {:>7}",
        "level",
        "write ops/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "read ops/s",
        "p50 ms",
        "p99 ms",
        "errors"
    );
    for level in LEVELS {
        let wrep = rep.clone();
        let (wo, w50, w99, we) = measure(tasks, per_task, move |t, i| {
            let rep = wrep.clone();
            async move {
                rep.replicate(format!("{level}/{t}/{i}"), b"value", level)
                    .await
                    .is_ok()
            }
        })
        .await;
        let rrep = rep.clone();
        let (ro, r50, r99, re) = measure(tasks, per_task, move |t, i| {
            let rep = rrep.clone();
            async move { rep.read(format!("{level}/{t}/{i}"), level).await.is_ok() }
        })
        .await;
        println!("{:<11} {wo:>12.0} {w50:>8.3} {w99:>8.3} {we:>7} | {ro:>12.0} {r50:>8.3} {r99:>8.3} {re:>7}", level.as_str());
    }
    Ok(())
}
