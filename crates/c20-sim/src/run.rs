//! A seeded workload under faults on a [`LocalReplicator`], recorded as a history.
//!
//! Clients put, delete and read a small key space while a fault task isolates, heals, crashes
//! and restarts replicas, cuts single links one way, and loses and delays Raft messages at
//! random. A crash loses what the replica's store had not checkpointed. The seed fixes the client choices and the fault schedule; thread
//! scheduling is not under its control, so a seed reproduces the same workload and faults but
//! not always the same interleaving.

use crate::checker::{Kind, Op};
use c20_distributed::{ConsistencyLevel, LocalReplicator};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub seed: u64,
    pub replicas: usize,
    pub clients: usize,
    pub ops_per_client: usize,
    pub keys: usize,
    pub write_level: ConsistencyLevel,
    pub read_level: ConsistencyLevel,
    /// Whether the fault task runs.
    pub faults: bool,
    /// Whether a crash loses the store changes since the replica's last checkpoint, as a real
    /// crash does (the log survives: it is fsynced before anything is acknowledged).
    pub lose_unsynced: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            seed: 1,
            replicas: 3,
            clients: 4,
            ops_per_client: 60,
            keys: 3,
            write_level: ConsistencyLevel::Quorum,
            read_level: ConsistencyLevel::Strong,
            faults: true,
            lose_unsynced: true,
        }
    }
}

/// A small, seedable generator (splitmix64): the run needs reproducible choices, not quality.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Runs the workload and returns every recorded operation.
pub async fn run(cfg: &RunConfig) -> Vec<Op> {
    let majority = cfg.replicas / 2 + 1;
    let mut builder = LocalReplicator::builder(cfg.replicas, majority, majority);
    if cfg.lose_unsynced {
        builder = builder.crash_loses_unsynced();
    }
    let rep = builder.build().expect("valid replicator parameters");
    let clock = Arc::new(AtomicU64::new(0));
    let history = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let faults = if cfg.faults {
        let rep = rep.clone();
        let stop = stop.clone();
        let mut rng = Rng::new(cfg.seed ^ 0xfa17);
        let n = cfg.replicas;
        Some(tokio::spawn(async move {
            let mut down: Vec<usize> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(30 + rng.below(120) as u64)).await;
                match rng.below(7) {
                    0 => rep.isolate(rng.below(n)),
                    1 => rep.heal_all(),
                    // An asymmetric partition: one direction of one link.
                    4 if n > 1 => {
                        let from = rng.below(n);
                        rep.cut_one_way(from, (from + 1 + rng.below(n - 1)) % n);
                    }
                    // A lossy, slow network for a while: up to 10% of Raft messages lost, each
                    // delayed up to 20 ms.
                    5 => rep.set_link_faults(
                        rng.below(101) as u32,
                        Duration::from_millis(rng.below(21) as u64),
                        rng.next_u64(),
                    ),
                    6 => rep.set_link_faults(0, Duration::ZERO, 0),
                    // Never more than a minority down at once.
                    2 if down.len() < (n - 1) / 2 => {
                        let i = rng.below(n);
                        if !down.contains(&i) {
                            rep.crash(i).await;
                            down.push(i);
                        }
                    }
                    _ => {
                        if let Some(i) = down.pop() {
                            let _ = rep.restart(i).await;
                        }
                    }
                }
            }
            rep.heal_all();
            rep.set_link_faults(0, Duration::ZERO, 0);
            for i in down {
                let _ = rep.restart(i).await;
            }
        }))
    } else {
        None
    };

    let mut clients = Vec::new();
    for c in 0..cfg.clients {
        let rep = rep.clone();
        let clock = clock.clone();
        let history = history.clone();
        let cfg = cfg.clone();
        let mut rng = Rng::new(cfg.seed.wrapping_mul(1000).wrapping_add(c as u64));
        clients.push(tokio::spawn(async move {
            for i in 0..cfg.ops_per_client {
                let key = format!("key{}", rng.below(cfg.keys)).into_bytes();
                let choice = rng.below(10);
                let call = clock.fetch_add(1, Ordering::SeqCst);
                let (kind, ret) = if choice < 4 {
                    let value = format!("c{c}-{i}").into_bytes();
                    let res = rep.replicate(&key, &value, cfg.write_level).await;
                    // A failed write may still have happened: its outcome is unknown.
                    (
                        Kind::Put(value),
                        res.ok().map(|_| clock.fetch_add(1, Ordering::SeqCst)),
                    )
                } else if choice < 5 {
                    let res = rep.delete(&key, cfg.write_level).await;
                    (
                        Kind::Delete,
                        res.ok().map(|_| clock.fetch_add(1, Ordering::SeqCst)),
                    )
                } else {
                    match rep.read(&key, cfg.read_level).await {
                        Ok(v) => (Kind::Get(v), Some(clock.fetch_add(1, Ordering::SeqCst))),
                        Err(_) => (Kind::Get(None), None),
                    }
                };
                history.lock().expect("history lock").push(Op {
                    client: c,
                    key,
                    kind,
                    call,
                    ret,
                });
            }
        }));
    }
    for c in clients {
        c.await.expect("client task");
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(f) = faults {
        f.await.expect("fault task");
    }
    let h = history.lock().expect("history lock").clone();
    h
}
