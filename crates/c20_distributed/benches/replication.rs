//! criterion benches of the replication core on `LocalReplicator` (in-process, in memory):
//! `quorum_write`, `strong_consistency_read`, `log_replication` (100 writes committed on 5
//! replicas) and `leader_election` (5 replicas: crash the leader, time until a new one commits a
//! write). Set-up happens outside the timed part.
//!
//! ```sh
//! cargo bench -p c20_distributed --bench replication
//! ```

use c20_distributed::{ConsistencyLevel, LocalReplicator};
use criterion::{criterion_group, criterion_main, Criterion};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn quorum_write(c: &mut Criterion) {
    let rt = runtime();
    let rep = LocalReplicator::new(5, 3, 3);
    let n = AtomicU64::new(0);
    c.bench_function("quorum_write", |b| {
        b.to_async(&rt).iter(|| {
            let key = format!("k{}", n.fetch_add(1, Ordering::Relaxed));
            let rep = rep.clone();
            async move {
                rep.replicate(key, b"value", ConsistencyLevel::Quorum)
                    .await
                    .expect("write")
            }
        })
    });
}

fn strong_consistency_read(c: &mut Criterion) {
    let rt = runtime();
    let rep = LocalReplicator::new(5, 3, 3);
    rt.block_on(rep.replicate("key", b"value", ConsistencyLevel::Quorum))
        .expect("preload");
    c.bench_function("strong_consistency_read", |b| {
        b.to_async(&rt).iter(|| {
            let rep = rep.clone();
            async move {
                rep.read("key", ConsistencyLevel::Strong)
                    .await
                    .expect("read")
            }
        })
    });
}

fn log_replication(c: &mut Criterion) {
    let rt = runtime();
    let rep = LocalReplicator::new(5, 3, 3);
    let n = AtomicU64::new(0);
    c.bench_function("log_replication_100_entries_5_nodes", |b| {
        b.to_async(&rt).iter(|| {
            let base = n.fetch_add(100, Ordering::Relaxed);
            let rep = rep.clone();
            async move {
                let writes = (0..100).map(|i| {
                    let rep = rep.clone();
                    async move {
                        rep.replicate(format!("e{}", base + i), b"v", ConsistencyLevel::Quorum)
                            .await
                            .expect("write")
                    }
                });
                futures_join_all(writes).await
            }
        })
    });
}

/// Waits for every future (a tiny join_all, to keep the bench's dependencies small).
async fn futures_join_all<F>(fs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

fn leader_election(c: &mut Criterion) {
    let rt = runtime();
    let rep = LocalReplicator::new(5, 3, 3);
    let mut group = c.benchmark_group("leader_election");
    group.sample_size(10);
    group.bench_function("5_nodes_kill_leader_until_a_write_commits", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let rep = rep.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let leader = loop {
                        if let Some(l) = rep.leader() {
                            break l;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    };
                    rep.crash(leader).await;
                    let t0 = Instant::now();
                    while rep
                        .replicate("election", b"v", ConsistencyLevel::Quorum)
                        .await
                        .is_err()
                    {}
                    total += t0.elapsed();
                    rep.restart(leader).await.expect("restart");
                }
                total
            }
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3));
    targets = quorum_write, strong_consistency_read, log_replication, leader_election
}
criterion_main!(benches);
