//! The promises of each consistency level on [`LocalReplicator`], checked under faults.

use c20_distributed::{ConfigError, ConsistencyLevel, EtcdError, LocalReplicator};
use std::time::{Duration, Instant};

use ConsistencyLevel::*;

/// The usage of the original guide, as written: built outside any runtime, used from one.
#[test]
fn the_guide_usage_works_as_written() {
    let replicator = LocalReplicator::new(5, 3, 3);
    let r2 = replicator.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        replicator
            .replicate("key", "value", ConsistencyLevel::Quorum)
            .await
            .unwrap();
        let v: Option<Vec<u8>> = r2.read("key", ConsistencyLevel::Strong).await.unwrap();
        assert_eq!(v.as_deref(), Some(&b"value"[..]));
    });
}

#[test]
fn invalid_parameters_name_the_broken_rule() {
    assert_eq!(
        LocalReplicator::try_new(0, 1, 1).err(),
        Some(ConfigError::NoReplicas { n: 0 })
    );
    assert_eq!(
        LocalReplicator::try_new(3, 4, 2).err(),
        Some(ConfigError::ReadQuorum { n: 3, r: 4 })
    );
    assert_eq!(
        LocalReplicator::try_new(3, 2, 0).err(),
        Some(ConfigError::WriteQuorum { n: 3, w: 0 })
    );
    let e = LocalReplicator::try_new(5, 2, 3).err().unwrap();
    assert!(e.to_string().contains("r + w must exceed n"), "{e}");
    let panic = std::panic::catch_unwind(|| LocalReplicator::new(5, 2, 2)).unwrap_err();
    let msg = panic.downcast_ref::<String>().unwrap();
    assert!(msg.contains("r + w must exceed n"), "{msg}");
}

async fn wait_leader(rep: &LocalReplicator, not: Option<usize>) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = rep.leader() {
            if Some(l) != not {
                return l;
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_follower_serves_stale_eventual_reads_but_never_stale_quorum_or_strong() {
    let rep = LocalReplicator::new(3, 2, 2);
    rep.replicate("k", "old", Quorum).await.unwrap();
    let leader = wait_leader(&rep, None).await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    // The follower has applied "old" once a Strong read through it succeeds.
    assert_eq!(
        rep.read_from(follower, "k", Strong)
            .await
            .unwrap()
            .as_deref(),
        Some(&b"old"[..])
    );
    rep.isolate(follower);
    rep.replicate("k", "new", Quorum).await.unwrap();
    assert_eq!(
        rep.read_from(follower, "k", Eventual)
            .await
            .unwrap()
            .as_deref(),
        Some(&b"old"[..]),
        "an Eventual read of the isolated follower shows its (stale) local state"
    );
    for level in [Quorum, Strong] {
        match rep.read_from(follower, "k", level).await {
            Err(_) => {}
            Ok(v) => assert_eq!(v.as_deref(), Some(&b"new"[..]), "stale {level} read"),
        }
    }
    rep.heal(follower);
    assert_eq!(
        rep.read_from(follower, "k", Quorum)
            .await
            .unwrap()
            .as_deref(),
        Some(&b"new"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_never_answers_strong() {
    let rep = LocalReplicator::new(3, 2, 2);
    rep.replicate("k", "1", Quorum).await.unwrap();
    let old = wait_leader(&rep, None).await;
    rep.isolate(old);
    let _new = wait_leader(&rep, Some(old)).await;
    rep.replicate("k", "2", Quorum).await.unwrap();
    match rep.read_from(old, "k", Strong).await {
        Err(_) => {}
        Ok(v) => assert_eq!(
            v.as_deref(),
            Some(&b"2"[..]),
            "the deposed leader answered Strong with stale data"
        ),
    }
    rep.heal(old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_reads_never_go_backwards_for_a_session() {
    let rep = LocalReplicator::new(3, 2, 2);
    let session = rep.session();
    let leader = wait_leader(&rep, None).await;
    let lagging = (0..3).find(|&i| i != leader).unwrap();
    rep.isolate(lagging);
    for i in 0..20 {
        session
            .replicate("k", format!("v{i}"), Quorum)
            .await
            .unwrap();
        // Whichever replica serves it, the session sees its own last write (the lagging replica
        // cannot, so it must not be the one that answers with old data).
        let v = session.read("k", Sequential).await.unwrap();
        assert_eq!(
            v,
            Some(format!("v{i}").into_bytes()),
            "read {i} went backwards"
        );
    }
    rep.heal(lagging);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_names_the_member_that_did_not_apply() {
    let rep = LocalReplicator::new(3, 2, 2);
    rep.replicate("k", "1", All).await.unwrap();
    let leader = wait_leader(&rep, None).await;
    let down = (0..3).find(|&i| i != leader).unwrap();
    rep.crash(down).await;
    match rep.replicate("k", "2", All).await {
        Err(EtcdError::NotAppliedEverywhere(missing)) => {
            assert_eq!(missing.len(), 1, "{missing:?}");
            assert!(
                missing[0].starts_with(&format!("{:x} ", down + 1)),
                "{missing:?}"
            );
        }
        other => panic!("expected NotAppliedEverywhere, got {other:?}"),
    }
    // The write itself committed on the majority.
    assert_eq!(
        rep.read("k", Strong).await.unwrap().as_deref(),
        Some(&b"2"[..])
    );
    rep.restart(down).await.unwrap();
    rep.replicate("k", "3", All).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventual_writes_report_commit_or_discard() {
    let rep = LocalReplicator::new(3, 2, 2);
    let w = rep.replicate_async("a", "1").await.unwrap();
    assert!(w.index > 0);
    let rev = w.outcome().await.unwrap();
    assert!(rev >= 2);

    // A leader cut off accepts an Eventual write into its own log, but it can never commit:
    // the new leader's log replaces it, and the handle says so.
    let old = wait_leader(&rep, None).await;
    rep.isolate(old);
    let lost = rep.replicate_async_via(old, "b", "lost").await.unwrap();
    let _new = wait_leader(&rep, Some(old)).await;
    rep.replicate("c", "committed", Quorum).await.unwrap();
    rep.heal(old);
    assert_eq!(lost.outcome().await, Err(EtcdError::Discarded));
    assert_eq!(rep.read("b", Strong).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_and_restart_keeps_acknowledged_writes() {
    let rep = LocalReplicator::new(3, 2, 2);
    for i in 0..10 {
        rep.replicate(format!("k{i}"), "v", Quorum).await.unwrap();
    }
    let leader = wait_leader(&rep, None).await;
    rep.crash(leader).await;
    let new = wait_leader(&rep, Some(leader)).await;
    assert_ne!(new, leader);
    rep.replicate("after", "v", Quorum).await.unwrap();
    rep.restart(leader).await.unwrap();
    for i in 0..10 {
        assert_eq!(
            rep.read_from(leader, format!("k{i}"), Quorum)
                .await
                .unwrap()
                .as_deref(),
            Some(&b"v"[..])
        );
    }
    assert_eq!(
        rep.read_from(leader, "after", Quorum)
            .await
            .unwrap()
            .as_deref(),
        Some(&b"v"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_txn_go_through_the_replicas() {
    use c20_distributed::api::etcdserverpb::{
        compare, request_op, Compare, PutRequest, RequestOp, TxnRequest,
    };
    let rep = LocalReplicator::new(3, 2, 2);
    rep.replicate("k", "v", Quorum).await.unwrap();
    assert!(rep.delete("k", Quorum).await.unwrap());
    assert!(!rep.delete("k", Quorum).await.unwrap());
    let txn = TxnRequest {
        compare: vec![Compare {
            key: b"k".to_vec(),
            target: compare::CompareTarget::Version as i32,
            result: compare::CompareResult::Equal as i32,
            target_union: Some(compare::TargetUnion::Version(0)),
            range_end: vec![],
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: b"k".to_vec(),
                value: b"created".to_vec(),
                ..Default::default()
            })),
        }],
        failure: vec![],
    };
    assert!(rep.txn(txn.clone(), Strong).await.unwrap().succeeded);
    assert!(!rep.txn(txn, Strong).await.unwrap().succeeded);
    assert_eq!(
        rep.read("k", Strong).await.unwrap().as_deref(),
        Some(&b"created"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_disk_survive_a_restart_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let rep = LocalReplicator::builder(3, 2, 2)
        .dir(dir.path())
        .build()
        .unwrap();
    rep.replicate("k", "durable", Quorum).await.unwrap();
    rep.crash(0).await;
    rep.restart(0).await.unwrap();
    assert_eq!(
        rep.read_from(0, "k", Quorum).await.unwrap().as_deref(),
        Some(&b"durable"[..])
    );
}

/// A read result names the replica that served it and the store revision it saw: an isolated
/// follower's Eventual read shows its own older revision, a Strong read the leader's newer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_results_say_which_replica_served_them_at_what_revision() {
    let rep = LocalReplicator::new(3, 2, 2);
    let first = rep.replicate("k", "old", Quorum).await.unwrap();
    let leader = wait_leader(&rep, None).await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let r = rep.read_result_from(follower, "k", Strong).await.unwrap();
    assert_eq!((r.replica, r.revision), (follower, first.revision.unwrap()));
    rep.isolate(follower);
    let second = rep.replicate("k", "new", Quorum).await.unwrap();
    let stale = rep.read_result_from(follower, "k", Eventual).await.unwrap();
    assert_eq!(stale.replica, follower);
    assert_eq!(stale.revision, first.revision.unwrap());
    assert_eq!(stale.kv.unwrap().value, b"old");
    let fresh = rep.read_result("k", Strong).await.unwrap();
    assert_eq!(fresh.revision, second.revision.unwrap());
    assert_ne!(fresh.replica, follower);
    rep.heal(follower);
}

/// A watcher delivers a range's events in revision order from the revision asked for, ends
/// with `Stopped` when its replica crashes, and resumes on another replica without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_delivers_in_order_and_resumes_on_another_replica_after_a_crash() {
    let rep = LocalReplicator::new(3, 2, 2);
    let leader = wait_leader(&rep, None).await;
    let follower = (leader + 1) % 3;
    let mut revs = Vec::new();
    for i in 0..5 {
        let ack = rep.replicate(format!("w/{i}"), "v", Quorum).await.unwrap();
        revs.push(ack.revision.unwrap());
    }
    // Outside the range: never delivered.
    rep.replicate("x", "v", Quorum).await.unwrap();

    let mut watch = rep.watch_from(follower, "w/", "w0", revs[1]).unwrap();
    assert_eq!(watch.replica(), follower);
    let mut got = Vec::new();
    while got.len() < 4 {
        for e in watch.next().await.unwrap() {
            let kv = e.kv.unwrap();
            got.push((kv.key, kv.mod_revision));
        }
    }
    let want: Vec<(Vec<u8>, i64)> = (1..5)
        .map(|i| (format!("w/{i}").into_bytes(), revs[i]))
        .collect();
    assert_eq!(got, want);

    rep.crash(follower).await;
    assert!(matches!(watch.next().await, Err(EtcdError::Stopped)));
    assert!(rep.watch_from(follower, "w/", "w0", 1).is_err());

    let resume_at = watch.next_revision();
    let ack = rep.replicate("w/5", "v", Quorum).await.unwrap();
    let other = (follower + 1) % 3;
    let mut resumed = rep.watch_from(other, "w/", "w0", resume_at).unwrap();
    let events = resumed.next().await.unwrap();
    let kv = events[0].kv.as_ref().unwrap();
    assert_eq!(
        (kv.key.as_slice(), kv.mod_revision),
        (&b"w/5"[..], ack.revision.unwrap())
    );
    assert_eq!(events.len(), 1);
}
