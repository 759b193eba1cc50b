//! In-process clusters on the local router with in-memory storage: the same node code, with
//! partitions under test control.

mod common;

use c20_api::etcdserverpb::PutRequest;
use c20_api::EtcdError;
use c20_raft::{
    CheckpointPolicy, Command, LocalRouter, NodeId, PeerNode, RaftNode, RaftNodeConfig, Transport,
};
use c20_storage::{WriteOp, WriteResult};
use common::{local_get, put};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn cluster(n: u64) -> (Arc<LocalRouter>, BTreeMap<NodeId, Arc<RaftNode>>) {
    cluster_with(n, |_| {}).await
}

async fn cluster_with(
    n: u64,
    tune: impl Fn(&mut RaftNodeConfig),
) -> (Arc<LocalRouter>, BTreeMap<NodeId, Arc<RaftNode>>) {
    let router = LocalRouter::new();
    let peers: BTreeMap<NodeId, PeerNode> = (1..=n)
        .map(|id| {
            (
                id,
                PeerNode {
                    name: format!("r{id}"),
                    peer_urls: vec![],
                },
            )
        })
        .collect();
    let mut nodes = BTreeMap::new();
    for id in 1..=n {
        let mut cfg = RaftNodeConfig::new(id, Default::default(), peers.clone());
        cfg.in_memory = true;
        cfg.transport = Transport::Local(router.clone());
        cfg.heartbeat_interval_ms = 50;
        cfg.election_timeout_min_ms = 300;
        cfg.election_timeout_max_ms = 600;
        cfg.request_timeout = Duration::from_secs(3);
        tune(&mut cfg);
        nodes.insert(id, RaftNode::start(cfg).await.unwrap());
    }
    (router, nodes)
}

async fn leader_among(nodes: &BTreeMap<NodeId, Arc<RaftNode>>, skip: Option<NodeId>) -> NodeId {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for (id, n) in nodes {
            if Some(*id) != skip && n.status().is_leader {
                return *id;
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn shutdown(nodes: BTreeMap<NodeId, Arc<RaftNode>>) {
    for n in nodes.values() {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_follower_is_stale_locally_but_refuses_linearizable_reads() {
    let (router, nodes) = cluster(3).await;
    let leader = leader_among(&nodes, None).await;
    put(&nodes[&leader], "k", "old").await.unwrap();
    let follower = *nodes.keys().find(|&&i| i != leader).unwrap();
    nodes[&follower].read_barrier().await.unwrap();
    router.isolate(follower);
    put(&nodes[&leader], "k", "new").await.unwrap();
    // Its local state is stale, which is what a serializable (Eventual) read may show...
    assert_eq!(
        local_get(&nodes[&follower], "k").as_deref(),
        Some(&b"old"[..])
    );
    // ...but a linearizable read must not be served from it.
    assert!(nodes[&follower].read_barrier().await.is_err());
    router.heal(follower);
    nodes[&follower].read_barrier().await.unwrap();
    assert_eq!(
        local_get(&nodes[&follower], "k").as_deref(),
        Some(&b"new"[..])
    );
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_neither_commits_nor_serves_linearizable_reads() {
    let (router, nodes) = cluster(3).await;
    let old = leader_among(&nodes, None).await;
    put(&nodes[&old], "k", "1").await.unwrap();
    router.isolate(old);
    let new = leader_among(&nodes, Some(old)).await;
    put(&nodes[&new], "k", "2").await.unwrap();
    // The old leader may still believe it leads for a while; it must not confirm reads or writes.
    assert!(nodes[&old].read_barrier().await.is_err());
    assert!(put(&nodes[&old], "x", "lost").await.is_err());
    router.heal(old);
    nodes[&old].read_barrier().await.unwrap();
    assert_eq!(local_get(&nodes[&old], "k").as_deref(), Some(&b"2"[..]));
    assert_eq!(
        local_get(&nodes[&new], "x"),
        None,
        "an unacknowledged write appeared"
    );
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_in_memory_replicas_replicate_through_the_router() {
    let (_router, nodes) = cluster(5).await;
    let leader = leader_among(&nodes, None).await;
    let follower = *nodes.keys().find(|&&i| i != leader).unwrap();
    let mut last = 0;
    for i in 0..50 {
        last = put(&nodes[&follower], &format!("k{i}"), "v").await.unwrap();
    }
    assert_eq!(last, 51);
    for n in nodes.values() {
        n.read_barrier().await.unwrap();
        assert!(local_get(n, "k49").is_some());
    }
    shutdown(nodes).await;
}

/// Concurrent requests share log entries (batches); each must still get its own revision and its
/// own reply, including an error for one bad request among good ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_batched_together_keep_their_own_revisions_and_replies() {
    let (_router, nodes) = cluster(3).await;
    let leader = leader_among(&nodes, None).await;
    let node = nodes[&leader].clone();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let op = if i == 100 {
                WriteOp::Put(PutRequest {
                    key: "missing".into(),
                    ignore_value: true,
                    ..Default::default()
                })
            } else {
                WriteOp::Put(PutRequest {
                    key: format!("k{i:03}").into(),
                    value: format!("v{i}").into(),
                    ..Default::default()
                })
            };
            node.propose(Command::from_op(&op))
                .await
                .unwrap()
                .into_result()
        }));
    }
    let mut revisions = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(WriteResult::Put(r)) => revisions.push(r.header.unwrap().revision),
            Err(EtcdError::KeyNotFound) => assert_eq!(i, 100),
            other => panic!("request {i}: {other:?}"),
        }
    }
    revisions.sort_unstable();
    assert_eq!(revisions, (2..=200).collect::<Vec<i64>>());
    for i in (0..200).filter(|&i| i != 100) {
        assert_eq!(
            local_get(&node, &format!("k{i:03}")),
            Some(format!("v{i}").into_bytes())
        );
    }
    shutdown(nodes).await;
}

async fn put_with_lease(node: &RaftNode, k: &str, lease: i64) -> Result<i64, EtcdError> {
    let op = WriteOp::Put(PutRequest {
        key: k.into(),
        value: b"v".to_vec(),
        lease,
        ..Default::default()
    });
    match node.propose(Command::from_op(&op)).await?.into_result()? {
        WriteResult::Put(r) => Ok(r.header.unwrap().revision),
        other => panic!("unexpected {other:?}"),
    }
}

/// Waits (bounded) until lease `id` no longer exists on `node`.
async fn until_lease_gone(node: &RaftNode, id: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.leases().iter().any(|(l, _)| *l == id) {
        assert!(Instant::now() < deadline, "lease {id:x} never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_deletes_its_keys_at_one_revision_on_every_member() {
    let (_router, nodes) = cluster(3).await;
    let leader = leader_among(&nodes, None).await;
    let follower = &nodes[nodes.keys().find(|&&i| i != leader).unwrap()];
    // Granted and used through a follower: grants and puts are forwarded, keep-alives asked of
    // the leader.
    let granted = follower.lease_grant(1, 0).await.unwrap();
    assert!(granted.id > 0);
    assert_eq!(granted.ttl, follower.min_lease_ttl().max(1));
    for k in ["l/a", "l/b", "l/c"] {
        put_with_lease(follower, k, granted.id).await.unwrap();
    }
    put(follower, "l/free", "v").await.unwrap();
    assert_eq!(follower.lease_renew(granted.id).await.unwrap(), granted.ttl);
    assert_eq!(
        put_with_lease(follower, "l/x", granted.id + 1).await,
        Err(EtcdError::LeaseNotFound)
    );
    let (ttl, _, keys) = follower.lease_time_to_live(granted.id).await.unwrap();
    assert_eq!(ttl, granted.ttl);
    assert_eq!(keys.len(), 3);

    // Nobody keeps it alive: the leader revokes it.
    until_lease_gone(&nodes[&leader], granted.id).await;
    let mut revisions = Vec::new();
    for n in nodes.values() {
        n.read_barrier().await.unwrap();
        assert_eq!(local_get(n, "l/a"), None);
        assert_eq!(local_get(n, "l/free").as_deref(), Some(&b"v"[..]));
        let deletes = n
            .state()
            .read(|s| s.watch_events(b"l/", b"l0", 1, false, 1000))
            .unwrap()
            .events
            .into_iter()
            .filter(|e| e.r#type == 1)
            .map(|e| e.kv.unwrap().mod_revision)
            .collect::<Vec<_>>();
        assert_eq!(deletes.len(), 3);
        assert!(deletes.iter().all(|r| *r == deletes[0]), "{deletes:?}");
        revisions.push(deletes[0]);
    }
    assert!(revisions.iter().all(|r| *r == revisions[0]));
    assert_eq!(
        follower.lease_time_to_live(granted.id).await.unwrap(),
        (0, -1, vec![])
    );
    assert_eq!(follower.lease_renew(granted.id).await.unwrap(), 0);
    assert_eq!(
        follower.lease_revoke(granted.id).await,
        Err(EtcdError::LeaseNotFound)
    );
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_outlives_a_leader_crash_then_expires_under_the_new_leader() {
    let (_router, mut nodes) = cluster(3).await;
    let leader = leader_among(&nodes, None).await;
    let ttl = 5;
    let id = nodes[&leader].lease_grant(ttl, 0).await.unwrap().id;
    put_with_lease(&nodes[&leader], "held", id).await.unwrap();
    for n in nodes.values() {
        n.read_barrier().await.unwrap();
    }
    nodes[&leader].lease_renew(id).await.unwrap();
    // The lease's expiry as the old leader knew it is at most `ttl` from here.
    let renewed = Instant::now();
    let old = nodes.remove(&leader).unwrap();
    old.crash().await;
    let new_leader = leader_among(&nodes, None).await;
    let (granted, remaining, keys) = nodes[&new_leader].lease_time_to_live(id).await.unwrap();
    let asked = Instant::now();
    assert_eq!(granted, ttl);
    assert_eq!(keys, vec![b"held".to_vec()]);
    // The new leader's expiry (remaining is truncated to whole seconds) is not before the old.
    assert!(
        asked + Duration::from_secs(remaining as u64 + 1)
            > renewed + Duration::from_secs(ttl as u64),
        "lease shortened by the leader change: {remaining}s left"
    );
    // Without keep-alives the new leader expires it.
    until_lease_gone(&nodes[&new_leader], id).await;
    nodes[&new_leader].read_barrier().await.unwrap();
    assert_eq!(local_get(&nodes[&new_leader], "held"), None);
    shutdown(nodes).await;
}

/// Writes `n` keys `prefix{i}` through `node`, 50 at a time.
async fn write_many(node: &RaftNode, prefix: &str, n: usize) {
    for start in (0..n).step_by(50) {
        let puts = (start..(start + 50).min(n)).map(|i| {
            let k = format!("{prefix}{i:05}");
            async move { put(node, &k, "some value of moderate length").await }
        });
        for r in futures::future::join_all(puts).await {
            r.unwrap();
        }
    }
}

/// Writes rounds of keys `{prefix}{round}-…` through `leader` until it purged its log past
/// `index`.
async fn write_until_purged_past(leader: &RaftNode, index: u64, prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut round = 0;
    while leader.status().purged_index <= index {
        assert!(
            Instant::now() < deadline,
            "leader never purged: {:?}",
            leader.status()
        );
        write_many(leader, &format!("{prefix}{round}-"), 400).await;
        round += 1;
    }
}

/// Waits until `node` has applied at least up to `index`.
async fn until_applied(node: &RaftNode, index: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.status().applied_index < index {
        assert!(Instant::now() < deadline, "stuck at {:?}", node.status());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn hash(node: &RaftNode) -> (u32, i64, i64) {
    node.state().read(|s| {
        let (h, compact) = s.hash_kv(0).unwrap();
        (h, compact, s.current_revision())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_purged_log_catches_up_from_incremental_then_full_snapshots() {
    let (router, nodes) = cluster_with(3, |cfg| {
        cfg.snapshot_count = 300;
        cfg.snapshot_catchup_entries = 20;
    })
    .await;
    let leader = leader_among(&nodes, None).await;
    let l = &nodes[&leader];
    let follower = *nodes.keys().find(|&&i| i != leader).unwrap();
    let f = &nodes[&follower];
    write_many(l, "a", 200).await;
    until_applied(f, l.status().applied_index).await;

    // Behind the purged log with its history intact below: only the increment is sent.
    router.isolate(follower);
    let behind = f.status().last_log_index;
    write_until_purged_past(l, behind, "b").await;
    router.heal(follower);
    until_applied(f, l.status().applied_index).await;
    assert_eq!(f.status().snapshots_installed, (0, 1));
    assert_eq!(hash(f), hash(l));

    // Compacted above what the follower has: the increment cannot be cut, the full one goes.
    router.isolate(follower);
    let behind = f.status().last_log_index;
    write_many(l, "c", 100).await;
    let rev = l.state().read(|s| s.current_revision());
    l.propose(Command::from_op(&WriteOp::Compact(
        c20_api::etcdserverpb::CompactionRequest {
            revision: rev,
            ..Default::default()
        },
    )))
    .await
    .unwrap();
    write_until_purged_past(l, behind, "d").await;
    router.heal(follower);
    until_applied(f, l.status().applied_index).await;
    assert_eq!(f.status().snapshots_installed, (1, 1));
    assert_eq!(hash(f), hash(l));
    assert_eq!(hash(f).1, rev);
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_bytes_trigger_a_snapshot_long_before_the_entry_count() {
    let dir = tempfile::tempdir().unwrap();
    let (_router, nodes) = cluster_with(1, |cfg| {
        cfg.in_memory = false;
        cfg.data_dir = dir.path().join(cfg.id.to_string());
        cfg.snapshot_count = 1_000_000;
        cfg.snapshot_log_bytes = 64 << 10;
    })
    .await;
    let n = &nodes[&1];
    leader_among(&nodes, None).await;
    let value = "v".repeat(2000);
    for i in 0..100 {
        put(n, &format!("k{i}"), &value).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while n.status().snapshot_index == 0 {
        assert!(Instant::now() < deadline, "no snapshot: {:?}", n.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown(nodes).await;
}

/// A one-member cluster whose store lives on disk under `dir` and checkpoints by `policy`,
/// once it leads.
async fn one_member_on_disk(
    dir: &std::path::Path,
    policy: CheckpointPolicy,
) -> (Arc<LocalRouter>, BTreeMap<NodeId, Arc<RaftNode>>) {
    let (router, nodes) = cluster_with(1, |cfg| {
        cfg.in_memory = false;
        cfg.data_dir = dir.join(cfg.id.to_string());
        cfg.checkpoint = policy;
    })
    .await;
    leader_among(&nodes, None).await;
    (router, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_checkpoints_once_the_write_limit_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    // Never by time within this test: only the limit can trigger a checkpoint.
    let policy = CheckpointPolicy {
        interval: Duration::from_secs(3600),
        writes_max: 5,
        bytes_max: 0,
    };
    let (_router, nodes) = one_member_on_disk(dir.path(), policy).await;
    let n = &nodes[&1];
    let pending = || n.state().read(|s| s.pending_rows());
    for i in 1..=4 {
        put(n, &format!("k{i}"), "v").await.unwrap();
        assert_eq!(pending(), i, "rows wait for the checkpoint after put {i}");
    }
    // The fifth write reaches the limit: its apply hands every pending row to the checkpoint.
    put(n, "k5", "v").await.unwrap();
    assert_eq!(pending(), 0);
    put(n, "k6", "v").await.unwrap();
    assert_eq!(pending(), 1, "the count starts again after a checkpoint");
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_checkpoints_once_the_pending_rows_reach_the_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    // Neither time nor the write count can trigger a checkpoint within this test.
    let policy = CheckpointPolicy {
        interval: Duration::from_secs(3600),
        writes_max: u64::MAX,
        bytes_max: 1200,
    };
    let (_router, nodes) = one_member_on_disk(dir.path(), policy).await;
    let n = &nodes[&1];
    let pending = || n.state().read(|s| (s.pending_rows(), s.pending_bytes()));
    let value = "v".repeat(300);
    for i in 1..=3 {
        put(n, &format!("k{i}"), &value).await.unwrap();
        let (rows, bytes) = pending();
        assert_eq!(rows, i, "rows wait for the checkpoint after put {i}");
        assert!(
            bytes > 300 * i && bytes < 1200,
            "{bytes} bytes after put {i}"
        );
    }
    // The fourth row brings them past 1,200 bytes: its apply hands every pending row over.
    put(n, "k4", &value).await.unwrap();
    assert_eq!(pending(), (0, 0));
    // Small rows take many more writes to get there.
    for i in 1..=10 {
        put(n, &format!("s{i}"), "v").await.unwrap();
        assert_eq!(pending().0, i, "small put {i}");
    }
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_a_named_voter_and_only_from_the_leader() {
    let (_router, nodes) = cluster(3).await;
    let leader = leader_among(&nodes, None).await;
    let target = *nodes.keys().find(|&&i| i != leader).unwrap();
    let other = *nodes.keys().find(|&&i| i != leader && i != target).unwrap();
    assert_eq!(
        nodes[&other].move_leader(target).await,
        Err(EtcdError::NotLeader)
    );
    assert_eq!(
        nodes[&leader].move_leader(99).await,
        Err(EtcdError::BadLeaderTransferee)
    );
    nodes[&leader].move_leader(target).await.unwrap();
    assert!(nodes[&target].status().is_leader);
    // The new leader serves writes and every member follows it.
    put(&nodes[&target], "after", "move").await.unwrap();
    for n in nodes.values() {
        n.read_barrier().await.unwrap();
        assert_eq!(n.status().leader, Some(target));
    }
    shutdown(nodes).await;
}

/// `concurrent` puts of distinct keys through `node` at once; returns their revisions, sorted.
async fn concurrent_puts(node: &Arc<RaftNode>, prefix: &str, concurrent: usize) -> Vec<i64> {
    let mut tasks = Vec::new();
    for i in 0..concurrent {
        let node = node.clone();
        let key = format!("{prefix}{i:03}");
        tasks.push(tokio::spawn(async move { put(&node, &key, "v").await }));
    }
    let mut revisions = Vec::new();
    for t in tasks {
        revisions.push(t.await.unwrap().unwrap());
    }
    revisions.sort_unstable();
    revisions
}

/// The batching switch (`--batch-max-ops 1`): every client request becomes a log entry of its
/// own, and each still gets its own revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_batching_every_request_is_a_log_entry_of_its_own() {
    let (_router, nodes) = cluster_with(3, |c| c.batch.ops_max = 1).await;
    let leader = leader_among(&nodes, None).await;
    let node = nodes[&leader].clone();
    let before = node.status().last_log_index;
    let revisions = concurrent_puts(&node, "k", 150).await;
    assert_eq!(revisions, (2..=151).collect::<Vec<i64>>());
    let counts = node.proposal_counts();
    assert_eq!(counts.entries, counts.requests);
    assert!(counts.requests >= 150, "{counts:?}");
    assert!(node.status().last_log_index - before >= 150);
    shutdown(nodes).await;
}

/// Batching on a runtime with one thread, as each member runs on a small machine: writes that
/// arrive together on tasks of their own (one per client request, as gRPC serves them) leave
/// together in few log entries. Without the batcher's yield each was an entry of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn concurrent_writes_share_log_entries_on_a_one_thread_runtime() {
    let (_router, nodes) = cluster_with(3, |_| {}).await;
    let leader = leader_among(&nodes, None).await;
    let node = nodes[&leader].clone();
    let before = node.proposal_counts();
    let revisions = concurrent_puts(&node, "k", 150).await;
    assert_eq!(revisions, (2..=151).collect::<Vec<i64>>());
    let counts = node.proposal_counts();
    let (entries, requests) = (
        counts.entries - before.entries,
        counts.requests - before.requests,
    );
    // The members' own proposals (publishing their attributes at start) may join in.
    assert!(requests >= 150, "{requests}");
    assert!(
        entries * 10 <= requests,
        "{entries} entries for {requests} requests"
    );
    shutdown(nodes).await;
}

/// The pipelining window (`--proposal-window N`): at most N batches replicate at once (1 turns
/// pipelining off), and concurrent writes still all commit with their own revisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proposal_window_bounds_batches_in_flight() {
    for window in [1, 3] {
        let (_router, nodes) = cluster_with(3, |c| c.batch.window = window).await;
        let leader = leader_among(&nodes, None).await;
        let node = nodes[&leader].clone();
        let revisions = concurrent_puts(&node, "k", 200).await;
        assert_eq!(revisions, (2..=201).collect::<Vec<i64>>());
        let counts = node.proposal_counts();
        assert!(
            counts.in_flight_max <= window,
            "window {window}: {counts:?}"
        );
        assert!(counts.requests >= 200, "{counts:?}");
        for n in nodes.values() {
            n.read_barrier().await.unwrap();
            assert!(local_get(n, "k199").is_some());
        }
        shutdown(nodes).await;
    }
}

/// The read coalescing switch (`--read-coalescing false`): concurrent linearizable reads, on the
/// leader and through followers, each wait for a leader round of their own, and each still sees
/// every write acknowledged before it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_read_coalescing_each_read_waits_for_a_round_of_its_own() {
    let (_router, nodes) = cluster_with(3, |c| c.read_coalescing = false).await;
    let leader = leader_among(&nodes, None).await;
    let written = put(&nodes[&leader], "k", "v").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let node = nodes[&(i % 3 + 1)].clone();
        tasks.push(tokio::spawn(async move {
            let index = node.read_index().await.unwrap();
            (index, local_get(&node, "k"))
        }));
    }
    for t in tasks {
        let (index, value) = t.await.unwrap();
        assert!(index >= 1);
        assert_eq!(value.as_deref(), Some(&b"v"[..]));
    }
    assert_eq!(written, 2);
    // Every read, through a follower or not, ran a leader round of its own.
    assert!(nodes[&leader].uncoalesced_read_rounds() >= 60);
    shutdown(nodes).await;
}

/// `crashed()` is what an embedding that resets storage after a crash checks before answering
/// from local state: set by `crash`, on that node only, and never by a clean shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_says_so_and_only_that_one() {
    let (_router, mut nodes) = cluster(3).await;
    let leader = leader_among(&nodes, None).await;
    assert!(nodes.values().all(|n| !n.crashed()));
    let victim = nodes.remove(&leader).unwrap();
    victim.crash().await;
    assert!(victim.crashed());
    assert!(nodes.values().all(|n| !n.crashed()));
    for n in nodes.values() {
        n.shutdown().await;
        assert!(!n.crashed());
    }
}
