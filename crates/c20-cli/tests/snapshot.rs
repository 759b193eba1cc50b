//! Snapshots of a 3-process cluster: a follower that missed 20,000 writes behind a purged log
//! catches up through a snapshot; `etcdctl snapshot save` then restore seeds a new cluster with
//! the same data at the same revision.
//!
//! `C20_TESTS_USE_ETCD=1` runs the same tests against the real etcd (checks the tests).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{connect_any, hashkv_hashes, header_revision, Cluster, Flavor, C20_BIN};

const HEALTHY: Duration = Duration::from_secs(30);

/// Puts `n` keys `{prefix}{i}` through the cluster, 64 at a time; every put must succeed.
fn write_many(c: &Cluster, prefix: &str, n: usize) {
    let endpoints: Vec<String> = c
        .members
        .iter()
        .filter(|m| m.is_running())
        .map(|m| m.client_addr())
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = connect_any(&endpoints, 0).await;
        for start in (0..n).step_by(64) {
            let puts = (start..(start + 64).min(n)).map(|i| {
                let mut client = client.clone();
                let key = format!("{prefix}{i:06}");
                async move { client.put(key, format!("value {i:06} ").repeat(8)).await }
            });
            for r in futures::future::join_all(puts).await {
                r.expect("put");
            }
        }
    });
}

/// Revision of every running member (`endpoint status`), once they all agree.
fn common_revision(c: &Cluster) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let revs: Vec<i64> = (0..c.len())
            .filter_map(|i| c.endpoint_status(i).map(|s| s.revision))
            .collect();
        if revs.len() == c.len() && revs.iter().all(|r| *r == revs[0]) {
            return revs[0];
        }
        assert!(Instant::now() < deadline, "revisions never agree: {revs:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_follower_that_missed_20000_writes_catches_up_through_a_snapshot() {
    // etcd keeps 5,000 entries below a snapshot; c20 the same by default. c20 puts concurrent
    // writes into shared entries (64 at a time here), so 20,000 writes are a few hundred
    // entries: it snapshots every 100 and keeps 50 to make sure the follower's place is purged.
    let mut c = Cluster::stopped(Flavor::C20, 3);
    let args: &[&str] = match c.flavor {
        Flavor::C20 => &[
            "--snapshot-count",
            "100",
            "--experimental-snapshot-catchup-entries",
            "50",
        ],
        Flavor::Etcd => &["--snapshot-count", "2000"],
    };
    c.extra_args = args.iter().map(|s| s.to_string()).collect();
    c.start_all();
    c.wait_healthy(HEALTHY);
    write_many(&c, "before/", 500);
    let leader = c.wait_leader(HEALTHY);
    let follower = (leader + 1) % 3;
    c.terminate(follower, Duration::from_secs(10));
    write_many(&c, "during/", 20_000);
    c.restart(follower);
    c.wait_member_healthy(follower, HEALTHY);
    let rev = common_revision(&c);
    assert!(rev > 20_500, "revision {rev}");
    let hashes = c.etcdctl_all(&["endpoint", "hashkv", "-w", "json", &format!("--rev={rev}")]);
    let hashes = hashkv_hashes(&hashes.expect_ok("hashkv").stdout);
    assert_eq!(hashes.len(), 3, "{hashes:?}");
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    let out = c
        .etcdctl_at(
            follower,
            &["get", "during/", "--prefix", "--limit=1", "-w", "json"],
        )
        .expect_ok("count");
    assert!(out.stdout.contains("\"count\":20000"), "{}", out.stdout);
    if c.flavor == Flavor::C20 {
        let log = std::fs::read_to_string(&c.members[follower].log_path).unwrap();
        assert!(
            log.contains("installed a snapshot from the leader"),
            "the follower caught up without a snapshot: {}",
            c.logs_tail(30)
        );
    }
}

/// `snapshot restore` of one member of a new cluster: c20's own command, or etcdctl's for etcd.
fn restore(new: &Cluster, i: usize, file: &Path) -> std::process::Output {
    let m = &new.members[i];
    let args = [
        "snapshot".to_string(),
        "restore".to_string(),
        file.to_string_lossy().into_owned(),
        "--data-dir".to_string(),
        m.data_dir.to_string_lossy().into_owned(),
        "--name".to_string(),
        m.name.clone(),
        "--initial-cluster".to_string(),
        new.initial_cluster(),
        "--initial-advertise-peer-urls".to_string(),
        m.peer_url(),
        "--initial-cluster-token".to_string(),
        new.token.clone(),
    ];
    let bin = match new.flavor {
        Flavor::C20 => C20_BIN,
        Flavor::Etcd => support::ETCDCTL_BIN,
    };
    Command::new(bin)
        .args(&args)
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap()
}

/// Keys, values and revisions of everything, without the header's ids and term.
fn everything(c: &Cluster, i: usize) -> (Option<i64>, String) {
    let out = c
        .etcdctl_at(i, &["get", "", "--prefix", "-w", "json"])
        .expect_ok("get everything");
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    (header_revision(&out.stdout), json["kvs"].to_string())
}

#[test]
fn snapshot_save_then_restore_gives_a_new_cluster_the_same_data_and_revision() {
    let mut c = Cluster::start(Flavor::C20, 3);
    c.wait_healthy(HEALTHY);
    write_many(&c, "k/", 3000);
    for args in [
        &["put", "k/000007", "overwritten"][..],
        &["del", "k/00001", "--prefix"],
        &["compaction", "100"],
        &["put", "last", "one"],
    ] {
        c.etcdctl(args).expect_ok("setup");
    }
    let before = everything(&c, 0);
    let rev = before.0.unwrap();
    let hash_before = hashkv_hashes(
        &c.etcdctl(&["endpoint", "hashkv", "-w", "json", &format!("--rev={rev}")])
            .expect_ok("hashkv")
            .stdout,
    );

    let file = c.dir.path().join("backup.db");
    let out = c
        .etcdctl_at(1, &["snapshot", "save", &file.to_string_lossy()])
        .expect_ok("snapshot save");
    assert!(
        out.stdout
            .contains(&format!("Snapshot saved at {}", file.display())),
        "{}",
        out.stdout
    );
    if c.flavor == Flavor::C20 {
        // c20's own save writes the same kind of file.
        let own = c.dir.path().join("own.db");
        let st = Command::new(C20_BIN)
            .args(["snapshot", "save", &own.to_string_lossy(), "--endpoints"])
            .arg(c.members[2].client_addr())
            .output()
            .unwrap();
        assert!(st.status.success(), "{st:?}");
        // A damaged file is refused and leaves no data directory behind.
        let mut raw = std::fs::read(&own).unwrap();
        let mid = raw.len() / 2;
        raw[mid] ^= 1;
        let bad = c.dir.path().join("bad.db");
        std::fs::write(&bad, raw).unwrap();
        let target = c.dir.path().join("never");
        let st = Command::new(C20_BIN)
            .args(["snapshot", "restore", &bad.to_string_lossy(), "--data-dir"])
            .arg(&target)
            .output()
            .unwrap();
        assert!(!st.status.success());
        let err = String::from_utf8_lossy(&st.stderr);
        assert!(err.contains("SHA-256 mismatch"), "{err}");
        assert!(!target.exists());
    }
    c.stop_all();

    let mut new = Cluster::stopped(c.flavor, 3);
    for i in 0..3 {
        let out = restore(&new, i, &file);
        assert!(out.status.success(), "restore {i}: {out:?}");
    }
    new.start_all();
    new.wait_healthy(HEALTHY);
    for i in 0..3 {
        assert_eq!(everything(&new, i), before, "member {i}");
    }
    let hash_after = hashkv_hashes(
        &new.etcdctl(&["endpoint", "hashkv", "-w", "json", &format!("--rev={rev}")])
            .expect_ok("hashkv")
            .stdout,
    );
    assert_eq!(hash_after, hash_before);
    let out = new
        .etcdctl(&["put", "after", "restore", "-w", "json"])
        .expect_ok("put after restore");
    assert_eq!(header_revision(&out.stdout), Some(rev + 1));
}
