//! Histories recorded under faults are linearizable at the linearizable levels, and the checker
//! does catch the stale reads a weaker level produces.

use c20_distributed::ConsistencyLevel;
use c20_sim::checker::check;
use c20_sim::run::{run, RunConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_writes_and_strong_or_quorum_reads_stay_linearizable_under_faults() {
    for seed in 1..=6 {
        let read_level = if seed % 2 == 0 {
            ConsistencyLevel::Quorum
        } else {
            ConsistencyLevel::Strong
        };
        let cfg = RunConfig {
            seed,
            read_level,
            ..RunConfig::default()
        };
        let recorded = run(&cfg).await;
        let history = &recorded.ops;
        let definite = history.iter().filter(|o| o.ret.is_some()).count();
        assert!(
            definite > history.len() / 2,
            "seed {seed}: too few completed operations"
        );
        match recorded.check() {
            Err(v) => panic!("seed {seed} ({read_level}): {v}"),
            Ok(c) => assert_eq!(c.undecided, 0, "seed {seed}: {c:?}"),
        }
    }
}

/// Reads that promise no recency (Eventual, served by any replica, including an isolated one)
/// must show up as violations within a few seeds: the checker sees what a weaker level gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_that_skip_the_read_index_are_caught() {
    let mut caught = None;
    for seed in 1..=20 {
        let cfg = RunConfig {
            seed,
            read_level: ConsistencyLevel::Eventual,
            clients: 6,
            keys: 2,
            ..RunConfig::default()
        };
        if check(&run(&cfg).await.ops).is_err() {
            caught = Some(seed);
            break;
        }
    }
    assert!(
        caught.is_some(),
        "20 seeds of Eventual reads under partitions showed no stale read"
    );
}
