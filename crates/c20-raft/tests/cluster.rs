//! Three in-process nodes on loopback: replication, forwarding, read barriers, failover, restart.

mod common;

use c20_api::etcdserverpb::PutRequest;
use c20_api::EtcdError;
use c20_raft::log_store::CACHE_BYTES_MAX as LOG_CACHE_BYTES_MAX;
use c20_raft::network::PeerCompression;
use c20_raft::{Command, KvFaults, MemberAttrs, NodeId, PeerNode, RaftNode, RaftNodeConfig, Reply};
use c20_storage::{IoFaults, WriteOp};
use common::{local_get, put};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tonic::codegen::{http, BoxFuture, Service};

struct Member {
    node: Arc<RaftNode>,
    stop: tokio::sync::watch::Sender<bool>,
    server: JoinHandle<()>,
}

struct TestCluster {
    dir: tempfile::TempDir,
    peers: BTreeMap<NodeId, PeerNode>,
    addrs: BTreeMap<NodeId, SocketAddr>,
    members: BTreeMap<NodeId, Member>,
    faults: BTreeMap<NodeId, Arc<FailSyncs>>,
    /// Fail every write and sync of one member's store file once armed.
    kv_faults: BTreeMap<NodeId, Arc<FailSyncs>>,
    tuning: Tuning,
}

/// Settings the tests vary; each member of a cluster gets the same.
#[derive(Clone, Copy)]
struct Tuning {
    compression: PeerCompression,
    log_cache_bytes: usize,
    append_window: usize,
    /// Whether the peer servers offer `AppendStream` and `ForwardStream`; false answers both
    /// as a server that predates them does (see [`WithoutStreams`]).
    peer_streams: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            compression: PeerCompression::OFF,
            log_cache_bytes: LOG_CACHE_BYTES_MAX,
            append_window: c20_raft::network::DEFAULT_APPEND_WINDOW,
            peer_streams: true,
        }
    }
}

/// The peer service as a c20 without append and forward streams serves it: calls to those two
/// methods get gRPC's Unimplemented, as tonic answers a method it does not know; every other
/// call reaches the real service.
#[derive(Clone)]
struct WithoutStreams<S>(S);

impl<S> tonic::server::NamedService for WithoutStreams<S> {
    const NAME: &'static str = "c20peer.Peer";
}

impl<S> Service<http::Request<tonic::body::Body>> for WithoutStreams<S>
where
    S: Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
    >,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        match req.uri().path() {
            "/c20peer.Peer/AppendStream" | "/c20peer.Peer/ForwardStream" => {
                Box::pin(async { Ok(tonic::Status::unimplemented("").into_http()) })
            }
            _ => Box::pin(self.0.call(req)),
        }
    }
}

/// Fails every fsync (and, for the store's file, every write) of one member once armed.
#[derive(Default)]
struct FailSyncs(AtomicBool);

impl FailSyncs {
    fn check(&self) -> std::io::Result<()> {
        if self.0.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected EIO"));
        }
        Ok(())
    }
}

impl IoFaults for FailSyncs {
    fn before_sync(&self) -> std::io::Result<()> {
        self.check()
    }
}

/// The store's file: writes fail too.
struct FailKv(Arc<FailSyncs>);

impl IoFaults for FailKv {
    fn before_write(&self) -> std::io::Result<()> {
        self.0.check()
    }
    fn before_sync(&self) -> std::io::Result<()> {
        self.0.check()
    }
}

async fn start_member(
    dir: &Path,
    id: NodeId,
    addr: SocketAddr,
    peers: &BTreeMap<NodeId, PeerNode>,
    faults: (Arc<FailSyncs>, Arc<FailSyncs>),
    tuning: Tuning,
) -> Member {
    let mut cfg = RaftNodeConfig::new(id, dir.join(format!("n{id}")), peers.clone());
    let (wal, kv) = faults;
    cfg.wal.faults = Some(wal as Arc<dyn IoFaults>);
    cfg.kv_faults = Some(KvFaults(Arc::new(FailKv(kv))));
    cfg.log_cache_bytes = tuning.log_cache_bytes;
    cfg.peer_compression = tuning.compression;
    cfg.append_window = tuning.append_window;
    cfg.attrs = MemberAttrs {
        name: format!("n{id}"),
        client_urls: vec![],
    };
    cfg.heartbeat_interval_ms = 50;
    cfg.election_timeout_min_ms = 300;
    cfg.election_timeout_max_ms = 600;
    let node = RaftNode::start(cfg).await.expect("node starts");
    // The port was free a moment ago; rebinding the same address after a restart may race with
    // the old socket's teardown, so retry within a bound.
    let deadline = Instant::now() + Duration::from_secs(5);
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    };
    let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
    let svc = node.peer_service(stop_rx.clone());
    let mut builder = tonic::transport::Server::builder();
    let router = if tuning.peer_streams {
        builder.add_service(svc)
    } else {
        builder.add_service(WithoutStreams(svc))
    };
    let server = tokio::spawn(async move {
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let _ = router
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await;
    });
    Member { node, stop, server }
}

impl TestCluster {
    async fn start(n: usize) -> TestCluster {
        Self::start_with(n, Tuning::default()).await
    }

    async fn start_with(n: usize, tuning: Tuning) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let listeners: Vec<std::net::TcpListener> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut peers = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        for (i, l) in listeners.iter().enumerate() {
            let id = i as NodeId + 1;
            let addr = l.local_addr().unwrap();
            addrs.insert(id, addr);
            peers.insert(
                id,
                PeerNode {
                    name: format!("n{id}"),
                    peer_urls: vec![format!("http://{addr}")],
                },
            );
        }
        drop(listeners);
        let mut members = BTreeMap::new();
        let mut faults = BTreeMap::new();
        let mut kv_faults = BTreeMap::new();
        for (&id, &addr) in &addrs {
            let f = Arc::new(FailSyncs::default());
            faults.insert(id, f.clone());
            let kv = Arc::new(FailSyncs::default());
            kv_faults.insert(id, kv.clone());
            members.insert(
                id,
                start_member(dir.path(), id, addr, &peers, (f, kv), tuning).await,
            );
        }
        TestCluster {
            dir,
            peers,
            addrs,
            members,
            faults,
            kv_faults,
            tuning,
        }
    }

    async fn stop(&mut self, id: NodeId) {
        let m = self.members.remove(&id).expect("member running");
        let _ = m.stop.send(true);
        let _ = m.server.await;
        m.node.shutdown().await;
    }

    async fn restart(&mut self, id: NodeId) {
        let m = start_member(
            self.dir.path(),
            id,
            self.addrs[&id],
            &self.peers,
            (self.faults[&id].clone(), self.kv_faults[&id].clone()),
            self.tuning,
        )
        .await;
        self.members.insert(id, m);
    }

    fn node(&self, id: NodeId) -> &Arc<RaftNode> {
        &self.members[&id].node
    }

    async fn leader(&self) -> NodeId {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for m in self.members.values() {
                let st = m.node.status();
                if st.is_leader {
                    return st.id;
                }
            }
            assert!(Instant::now() < deadline, "no leader within 10s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.members.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_and_followers_forward() {
    let c = TestCluster::start(3).await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let r = put(c.node(leader), "a", "1").await.unwrap();
    assert_eq!(r, 2);
    // A write sent to a follower is forwarded and applied once, at the next revision.
    let r = put(c.node(follower), "b", "2").await.unwrap();
    assert_eq!(r, 3);
    // After a read barrier every node sees both writes locally.
    for id in 1..=3 {
        c.node(id).read_barrier().await.unwrap();
        assert_eq!(local_get(c.node(id), "a").as_deref(), Some(&b"1"[..]));
        assert_eq!(local_get(c.node(id), "b").as_deref(), Some(&b"2"[..]));
    }
    c.shutdown().await;
}

/// Puts `each` keys (`n<id>-<i>` = `v`) through each of the members `through`, all at once;
/// returns the revisions they got, in order. Panics if any put fails.
async fn put_at_once(c: &TestCluster, through: &[NodeId], each: usize) -> Vec<i64> {
    let writes = through.iter().flat_map(|&id| {
        let node = c.node(id).clone();
        (0..each).map(move |i| {
            let node = node.clone();
            async move { put(&node, &format!("n{id}-{i}"), "v").await }
        })
    });
    let mut revisions: Vec<i64> = futures::future::join_all(writes)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    revisions.sort_unstable();
    revisions
}

/// Writes entered at followers reach the leader in batches on forward streams, each write
/// answered on its own and applied once; once the leader stops, a follower's next write goes
/// to the new leader on a new stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_forward_writes_on_a_stream() {
    let mut c = TestCluster::start(3).await;
    let leader = c.leader().await;
    let followers: Vec<NodeId> = (1..=3).filter(|&i| i != leader).collect();
    let revisions = put_at_once(&c, &followers, 60).await;
    assert_eq!(
        revisions,
        (2..=121).collect::<Vec<i64>>(),
        "one revision each"
    );
    let (on_streams, as_calls) = c.node(leader).forwarded_batches();
    assert!(on_streams > 0, "no batch came on a stream");
    assert_eq!(as_calls, 0, "no batch came as a call of its own");
    assert!(on_streams < 120, "{on_streams} batches for 120 writes");

    c.stop(leader).await;
    let new = c.leader().await;
    let other = followers.iter().copied().find(|&f| f != new).unwrap();
    let rev = put(c.node(other), "after", "x").await.unwrap();
    assert_eq!(rev, 122);
    let (on_streams, as_calls) = c.node(new).forwarded_batches();
    assert!(on_streams >= 1 && as_calls == 0, "{on_streams} {as_calls}");
    c.node(new).read_barrier().await.unwrap();
    assert_eq!(local_get(c.node(new), "after").as_deref(), Some(&b"x"[..]));
    c.shutdown().await;
}

/// Members whose peers serve neither append streams nor forward streams (as a c20 from before
/// them would answer: Unimplemented) still replicate and forward: the leader falls back to one
/// call per append and the followers to one call per forwarded batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_streams_get_appends_and_forwarded_writes_as_calls() {
    let tuning = Tuning {
        peer_streams: false,
        ..Tuning::default()
    };
    let c = TestCluster::start_with(3, tuning).await;
    let leader = c.leader().await;
    let revisions = put_at_once(&c, &[1, 2, 3], 20).await;
    assert_eq!(
        revisions,
        (2..=61).collect::<Vec<i64>>(),
        "one revision each"
    );
    let (on_streams, as_calls) = c.node(leader).forwarded_batches();
    assert_eq!(on_streams, 0, "no forward stream can open");
    assert!(as_calls > 0, "the followers' writes came as calls");
    // Every member got every entry, so the appends reached both followers.
    for id in 1..=3 {
        c.node(id).read_barrier().await.unwrap();
        for from in 1..=3 {
            for i in [0, 19] {
                let key = format!("n{from}-{i}");
                assert_eq!(
                    local_get(c.node(id), &key).as_deref(),
                    Some(&b"v"[..]),
                    "{key} on n{id}"
                );
            }
        }
    }
    c.shutdown().await;
}

/// Appends sent one call each (append window 0) and several in flight on one stream (window 1,
/// and the default) reach every member in order: a burst of concurrent writes, then a follower
/// stopped and restarted, which must catch up over a new stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_replicate_in_order_over_calls_and_streams() {
    for append_window in [0, 1, c20_raft::network::DEFAULT_APPEND_WINDOW] {
        let tuning = Tuning {
            append_window,
            ..Tuning::default()
        };
        let mut c = TestCluster::start_with(3, tuning).await;
        let leader = c.leader().await;
        let node = c.node(leader).clone();
        let burst = |from: usize| {
            let node = node.clone();
            futures::future::join_all((from..from + 40).map(move |i| {
                let node = node.clone();
                async move { put(&node, &format!("k{i}"), &format!("v{i}")).await }
            }))
        };
        for r in burst(0).await {
            r.unwrap();
        }
        let follower = (1..=3).find(|&i| i != leader).unwrap();
        // The leader's stream to it is open and idle: the follower's graceful shutdown must
        // end it rather than wait for the leader to close it.
        tokio::time::timeout(Duration::from_secs(30), c.stop(follower))
            .await
            .unwrap_or_else(|_| panic!("window {append_window}: stopping a follower hangs"));
        for r in burst(40).await {
            r.unwrap();
        }
        c.restart(follower).await;
        let rev = put(c.node(leader), "last", "x").await.unwrap();
        assert_eq!(
            rev, 82,
            "window {append_window}: every write got its own revision"
        );
        for id in 1..=3 {
            c.node(id).read_barrier().await.unwrap();
            for i in 0..80 {
                assert_eq!(
                    local_get(c.node(id), &format!("k{i}")),
                    Some(format!("v{i}").into_bytes()),
                    "window {append_window}, member {id}, k{i}"
                );
            }
        }
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_appends_replicate_the_same_values() {
    let tuning = Tuning {
        compression: PeerCompression { min_bytes: 256 },
        ..Tuning::default()
    };
    let c = TestCluster::start_with(3, tuning).await;
    let leader = c.leader().await;
    let value = |i: usize| format!("{i:04}-").repeat(800);
    for i in 0..30 {
        put(c.node(leader), &format!("k{i}"), &value(i))
            .await
            .unwrap();
    }
    for id in 1..=3 {
        c.node(id).read_barrier().await.unwrap();
        for i in 0..30 {
            let got = local_get(c.node(id), &format!("k{i}")).unwrap();
            assert_eq!(got, value(i).into_bytes(), "member {id}, k{i}");
        }
    }
    // Only this test turns compression on in this process.
    let (requests, before, after) = c20_raft::network::compressed_requests();
    assert!(requests >= 30, "{requests} compressed appends");
    assert!(after * 4 < before, "{before} bytes compressed to {after}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_elects_a_new_leader_that_keeps_every_write() {
    let mut c = TestCluster::start(3).await;
    let old = c.leader().await;
    for i in 0..20 {
        put(c.node(old), &format!("k{i}"), "v").await.unwrap();
    }
    c.stop(old).await;
    let new = c.leader().await;
    assert_ne!(new, old);
    put(c.node(new), "after", "failover").await.unwrap();
    for i in 0..20 {
        c.node(new).read_barrier().await.unwrap();
        assert!(
            local_get(c.node(new), &format!("k{i}")).is_some(),
            "k{i} lost"
        );
    }
    // The old leader comes back as a follower and catches up.
    c.restart(old).await;
    c.node(old).read_barrier().await.unwrap();
    assert_eq!(
        local_get(c.node(old), "after").as_deref(),
        Some(&b"failover"[..])
    );
    c.shutdown().await;
}

/// With no log entry kept in memory, every read of the log goes back to the WAL: a follower
/// that missed writes catches up from entries the leader reads there, and a restarted cluster
/// re-applies its log from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_kept_only_in_the_wal_replicates_and_restarts() {
    let tuning = Tuning {
        log_cache_bytes: 0,
        ..Tuning::default()
    };
    let mut c = TestCluster::start_with(3, tuning).await;
    let leader = c.leader().await;
    let behind = if leader == 1 { 2 } else { 1 };
    c.stop(behind).await;
    let mut last = 0;
    for i in 0..200 {
        last = put(c.node(leader), &format!("k{i}"), &format!("v{i}"))
            .await
            .unwrap();
    }
    assert_eq!(c.node(leader).log_entries_in_memory(), (0, 0));
    c.restart(behind).await;
    c.node(behind).read_barrier().await.unwrap();
    for i in [0, 99, 199] {
        assert_eq!(
            local_get(c.node(behind), &format!("k{i}")),
            Some(format!("v{i}").into_bytes()),
            "k{i} on the member that was behind"
        );
    }
    for id in 1..=3 {
        c.stop(id).await;
    }
    for id in 1..=3 {
        c.restart(id).await;
    }
    let leader = c.leader().await;
    assert_eq!(put(c.node(leader), "next", "v").await.unwrap(), last + 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restart_continues_at_the_same_revision() {
    let mut c = TestCluster::start(3).await;
    let leader = c.leader().await;
    let mut last = 0;
    for i in 0..10 {
        last = put(c.node(leader), &format!("k{i}"), "v").await.unwrap();
    }
    for id in 1..=3 {
        c.stop(id).await;
    }
    for id in 1..=3 {
        c.restart(id).await;
    }
    let leader = c.leader().await;
    let r = put(c.node(leader), "next", "v").await.unwrap();
    assert_eq!(r, last + 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_cannot_commit_or_serve_linearizable_reads() {
    let mut c = TestCluster::start(3).await;
    let leader = c.leader().await;
    put(c.node(leader), "a", "1").await.unwrap();
    let others: Vec<NodeId> = (1..=3).filter(|&i| i != leader).collect();
    for id in &others {
        c.stop(*id).await;
    }
    // Nothing can be committed without a quorum: the write must not be acknowledged.
    let res = put(c.node(leader), "b", "2").await;
    assert!(res.is_err(), "a lone leader acknowledged a write: {res:?}");
    assert!(
        c.node(leader).read_barrier().await.is_err(),
        "a lone leader served a linearizable read"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_come_back_as_errors_and_change_nothing() {
    let c = TestCluster::start(3).await;
    let leader = c.leader().await;
    let op = WriteOp::Put(PutRequest {
        key: "missing".into(),
        ignore_value: true,
        ..Default::default()
    });
    let reply = c.node(leader).propose(Command::from_op(&op)).await.unwrap();
    assert_eq!(reply, Reply::Error(EtcdError::KeyNotFound));
    let rev = c.node(leader).state().read(|s| s.current_revision());
    assert_eq!(rev, 1);
    c.shutdown().await;
}

/// After a storage failure on `failed`: the member reports it and, even with `fault` healed,
/// takes no write; the others elect a new leader and take writes. Returns a member of those
/// others, with every committed write applied.
async fn failed_member_stays_down(c: &TestCluster, failed: NodeId, fault: &FailSyncs) -> NodeId {
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.node(failed).status().fatal.is_none() {
        assert!(
            Instant::now() < deadline,
            "the failed member does not report its storage error"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fault.0.store(false, Ordering::SeqCst);
    assert!(put(c.node(failed), "after", "3").await.is_err());
    // The others elect a new leader (the failed one went silent) and carry on.
    let other = (1..=3).find(|&i| i != failed).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.node(other).status().leader.is_none_or(|l| l == failed) {
        assert!(
            Instant::now() < deadline,
            "no new leader after the old one stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    put(c.node(other), "after", "3").await.unwrap();
    c.node(other).read_barrier().await.unwrap();
    other
}

/// The same rule for the store: once a checkpoint of the leader's store file fails (on the
/// checkpoint thread, after the writes in it were acknowledged), the leader applies nothing
/// more and stops; the log still holds those writes, and the others carry on with every
/// acknowledged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_store_checkpoint_stops_that_member_and_loses_nothing() {
    let c = TestCluster::start(3).await;
    let leader = c.leader().await;
    put(c.node(leader), "before", "0").await.unwrap();
    c.kv_faults[&leader].0.store(true, Ordering::SeqCst);
    // Writes go on being acknowledged until the next checkpoint fails; the one applied after
    // that cannot be.
    let mut acked = vec![];
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0.. {
        assert!(
            Instant::now() < deadline,
            "writes still succeed on a member whose checkpoint failed"
        );
        let key = format!("k{i}");
        match put(c.node(leader), &key, "v").await {
            Ok(_) => acked.push(key),
            Err(_) => break,
        }
    }
    let other = failed_member_stays_down(&c, leader, &c.kv_faults[&leader]).await;
    for key in std::iter::once("before".to_string()).chain(acked) {
        assert!(
            local_get(c.node(other), &key).is_some(),
            "acknowledged write {key} lost"
        );
    }
    c.shutdown().await;
}

/// The fsyncgate rule: after an fsync error a member must stop taking writes rather than retry,
/// and nothing may be acknowledged unless a majority made it durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fsync_error_stops_writes_on_that_member_only() {
    let c = TestCluster::start(3).await;
    let leader = c.leader().await;
    put(c.node(leader), "before", "1").await.unwrap();
    c.faults[&leader].0.store(true, Ordering::SeqCst);
    // The leader appends to its own log in parallel with replicating, so this write may still be
    // committed by the two followers' fsyncs before the leader's own fsync fails; then it is
    // acknowledged, and it must survive on the others. If it fails, its outcome is unknown.
    let during = put(c.node(leader), "during", "2").await;
    // The member reports the failure and refuses further writes, even with the disk "healed";
    // the other two carry on with every acknowledged write.
    let other = failed_member_stays_down(&c, leader, &c.faults[&leader]).await;
    assert_eq!(
        local_get(c.node(other), "before").as_deref(),
        Some(&b"1"[..])
    );
    if during.is_ok() {
        assert_eq!(
            local_get(c.node(other), "during").as_deref(),
            Some(&b"2"[..]),
            "a write acknowledged while the leader's fsync failed is not on the others"
        );
    }
    c.shutdown().await;
}
