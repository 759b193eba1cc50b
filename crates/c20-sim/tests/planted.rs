//! Each planted bug (`c20_storage::planted`) is found by the simulator within 200 seeds.
//!
//! The bugs switch on for the whole process, so this file holds one test that plants them one
//! after another; no other test shares its process.

use c20_distributed::planted::{plant, Bug};
use c20_sim::run::{run, RunConfig};

/// The first seed (1-based count) whose history breaks a promise, with what it broke.
fn first_failing_seed(limit: u64) -> Option<(u64, String, String)> {
    for seed in 1..=limit {
        let recorded = run(&RunConfig {
            seed,
            ..RunConfig::default()
        });
        if let Err(v) = recorded.check() {
            return Some((seed, v.reason.clone(), v.to_string()));
        }
    }
    None
}

/// The kinds of violation a bug can show as: any other would be a false alarm, not a find.
fn expected(bug: Bug) -> &'static [&'static str] {
    match bug {
        // Lost acknowledged writes, or openraft's assertion on a follower's log going back;
        // the watchers see a lost write missing, or its revision taken by another.
        Bug::AckBeforeFsync => &[
            "no linearization",
            "replica panicked",
            "no watcher delivered it",
            "the watchers saw this write at revision",
            "disagree on revision",
        ],
        // A stale read, or one behind a revision a watcher had already delivered.
        Bug::StrongReadWithoutReadIndex => &["no linearization", "a watcher had delivered"],
        Bug::TxnAtTwoRevisions => &[
            "was read at revision",
            "one txn's writes were delivered at revisions",
            "the watchers saw this write at revision",
        ],
        Bug::SequentialReadIgnoresSession => &["a Sequential read"],
        Bug::WatchResumeSkipsARevision => &["skipped from revision"],
        // A deposed leader renews on its own; a new one before its predecessor's revoke.
        Bug::KeepAliveWithoutReadBarrier => &["though kept alive until"],
        // A put or txn applied twice: its value at two revisions.
        Bug::RetryWithoutDedup => &[
            "applied twice",
            "the watchers saw this write at revision",
            "no linearization",
            "was read at revision",
        ],
    }
}

#[test]
fn every_planted_bug_is_found_within_200_seeds() {
    let mut found = Vec::new();
    for bug in Bug::ALL {
        plant(Some(bug));
        let result = first_failing_seed(200);
        plant(None);
        match result {
            Some((seed, reason, violation)) => {
                println!("{bug}: found at seed {seed}\n{violation}");
                assert!(
                    expected(bug).iter().any(|e| reason.contains(e)),
                    "{bug} showed as an unexpected violation at seed {seed}: {violation}"
                );
                found.push((bug, seed));
            }
            None => panic!("planted bug {bug} went unnoticed for 200 seeds"),
        }
    }
    println!("found: {found:?}");
}
