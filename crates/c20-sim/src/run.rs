//! A seeded workload under faults on a [`LocalReplicator`], recorded as a history.
//!
//! Clients put, delete, write two keys in one txn and read a small key space, through the
//! leader or through a replica of their choosing (linearizable reads, and `Sequential` reads in
//! the client's session), while a fault task isolates replicas (the leader among them), heals,
//! crashes and restarts them, cuts single links one way, loses and delays Raft messages at
//! random, and crashes every replica at once (a power failure) when the first client is half
//! done, and now and then besides. A crash loses what the replica's store had not checkpointed,
//! and leaves its Raft log's simulated disk as a power failure would: unsynced writes lost or
//! torn, so every restart recovers the real WAL from what is left.
//! Watchers follow every key meanwhile. The whole run is one thread and a simulated clock
//! seeded by the seed, so a seed replays exactly (see [`run`]). A lease client holds a lease
//! with a key of its own, keeps it alive through replicas of its choosing, reads the key,
//! revokes the lease now and then, and lets it lapse at the end, while the fault task also
//! steps replicas' wall clocks back and forth (see [`crate::lease_check`]).

use crate::checker::{check, Checked, Kind, Op, Value, Violation};
use crate::lease_check::{check_leases, last_renewal, LeaseCall, LeaseKind, LAPSE_WITHIN};
use crate::watch_check::{check_watches, Delivery, Seen, WatchLog};
use c20_distributed::api::etcdserverpb::{request_op, PutRequest, RequestOp, TxnRequest};
use c20_distributed::api::mvccpb::event::EventType;
use c20_distributed::{ConsistencyLevel, CrashDamage, EtcdError, LocalReplicator};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub seed: u64,
    pub replicas: usize,
    pub clients: usize,
    pub ops_per_client: usize,
    pub keys: usize,
    /// Watchers of every key from revision 1, checked against each other and the calls.
    pub watchers: usize,
    /// Clients that each hold a lease with a key attached (see [`crate::lease_check`]).
    pub lease_clients: usize,
    pub write_level: ConsistencyLevel,
    pub read_level: ConsistencyLevel,
    /// Whether the fault task runs.
    pub faults: bool,
    /// Whether a crash loses what a real crash loses: the store changes since the replica's
    /// last checkpoint, and what its log's simulated disk had not synced (the WAL syncs before
    /// it acknowledges, so only unacknowledged appends may go, or be torn).
    pub lose_unsynced: bool,
    /// Two worker threads and real time instead of one thread and a simulated clock: real
    /// races the seed does not control, so a seed does not replay (see [`run`]).
    pub threads: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            seed: 1,
            replicas: 3,
            clients: 4,
            ops_per_client: 60,
            keys: 3,
            watchers: 2,
            lease_clients: 1,
            write_level: ConsistencyLevel::Quorum,
            read_level: ConsistencyLevel::Strong,
            faults: true,
            lose_unsynced: true,
            threads: false,
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
        c20_distributed::splitmix(&mut self.0)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// How long a client waits for any call before it gives up (the outcome is then unknown).
const CALL_TIMEOUT: Duration = Duration::from_millis(500);

async fn within<T>(
    call: impl std::future::Future<Output = Result<T, EtcdError>>,
) -> Result<T, EtcdError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or(Err(EtcdError::Timeout))
}

/// A txn that puts `value` under both keys.
fn put_both(keys: [&[u8]; 2], value: &[u8]) -> TxnRequest {
    TxnRequest {
        success: keys
            .iter()
            .map(|k| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: k.to_vec(),
                    value: value.to_vec(),
                    ..Default::default()
                })),
            })
            .collect(),
        ..Default::default()
    }
}

/// Why replicas could not start again on what their crash left, as the run goes.
type RestartFailures = Arc<Mutex<Vec<String>>>;

/// Starts replica `i` again; a failure (its log did not recover) is recorded: a violation.
async fn restart(rep: &LocalReplicator, i: usize, failures: &RestartFailures) {
    if let Err(e) = rep.restart(i).await {
        let why = format!("replica {i} could not restart after its crash: {e}");
        failures.lock().expect("failures lock").push(why);
    }
}

/// Crashes every replica at once, then starts them all.
async fn power_failure(rep: &LocalReplicator, failures: &RestartFailures) {
    for i in 0..rep.replicas() {
        rep.crash(i).await;
    }
    for i in 0..rep.replicas() {
        restart(rep, i, failures).await;
    }
}

/// Every Raft message takes up to this long even on a calm network. On the simulated clock
/// nothing else takes time (computing is free), so without it a whole workload would happen
/// between two faults.
const CALM_DELAY: Duration = Duration::from_millis(2);

/// No loss, and each message delayed up to [`CALM_DELAY`].
fn calm(rep: &LocalReplicator, rng: &mut Rng) {
    rep.set_link_faults(0, CALM_DELAY, rng.next_u64());
}

/// The fault schedule: until `stop`, one seeded fault every 30..150 ms; and one power failure
/// once `halfway` is set (the first client is half done), so every run has one under load.
async fn inject_faults(
    rep: LocalReplicator,
    seed: u64,
    stop: Arc<AtomicBool>,
    halfway: Arc<AtomicBool>,
    failures: RestartFailures,
) {
    let mut rng = Rng::new(seed ^ 0xfa17);
    let n = rep.replicas();
    let mut down: Vec<usize> = Vec::new();
    let mut powered_off = false;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(30 + rng.below(120) as u64)).await;
        if !powered_off && halfway.load(Ordering::Relaxed) {
            powered_off = true;
            power_failure(&rep, &failures).await;
            down.clear();
            continue;
        }
        match rng.below(20) {
            0..=1 => rep.isolate(rng.below(n)),
            // Leader isolation: the replica that leads now loses every link.
            2 => {
                if let Some(l) = rep.leader() {
                    rep.isolate(l)
                }
            }
            3..=5 => rep.heal_all(),
            // An asymmetric partition: one direction of one link.
            6..=7 if n > 1 => {
                let from = rng.below(n);
                rep.cut_one_way(from, (from + 1 + rng.below(n - 1)) % n);
            }
            // A lossy, slow network for a while: up to 10% of Raft messages lost, each
            // delayed up to 20 ms.
            8..=9 => rep.set_link_faults(
                rng.below(101) as u32,
                CALM_DELAY.max(Duration::from_millis(rng.below(21) as u64)),
                rng.next_u64(),
            ),
            10..=11 => calm(&rep, &mut rng),
            // Never more than a minority down at once, but for a power failure.
            // Half of them cut the power of the replica's disk first, a few disk operations
            // ahead: mid-write, mid-truncation, mid-rotation; its log fails from then on until
            // the crash, 10 to 50 ms later.
            12..=14 if down.len() < (n - 1) / 2 => {
                let i = rng.below(n);
                if !down.contains(&i) {
                    if rng.below(2) == 0 {
                        rep.cut_power_after(i, rng.below(12) as u64);
                        tokio::time::sleep(Duration::from_millis(10 + rng.below(40) as u64)).await;
                    }
                    rep.crash(i).await;
                    down.push(i);
                }
            }
            // A power failure: every replica stops at once, then all start again.
            15 => {
                power_failure(&rep, &failures).await;
                down.clear();
            }
            // A wall-clock step on one replica, up to an hour either way (NTP, `date -s`):
            // only lease ids read that clock, and leases must keep their promises.
            16 => {
                let by_ms = 1 + rng.below(3_600_000) as i64;
                let by_ms = if rng.below(2) == 0 { by_ms } else { -by_ms };
                rep.step_wall_clock(rng.below(n), by_ms);
            }
            _ => {
                if let Some(i) = down.pop() {
                    restart(&rep, i, &failures).await;
                }
            }
        }
    }
    rep.heal_all();
    calm(&rep, &mut rng);
    for i in down {
        restart(&rep, i, &failures).await;
    }
}

/// One client's calls, appended to `history` as they return.
async fn client(
    rep: LocalReplicator,
    cfg: RunConfig,
    c: usize,
    clock: Arc<AtomicU64>,
    history: Arc<Mutex<Vec<Op>>>,
    halfway: Arc<AtomicBool>,
    run_name: String,
) {
    let mut rng = Rng::new(cfg.seed.wrapping_mul(1000).wrapping_add(c as u64));
    let tick = || clock.fetch_add(1, Ordering::SeqCst);
    // The client's single puts and its Sequential reads share this session.
    let session = rep.session();
    for i in 0..cfg.ops_per_client {
        if c == 0 && i == cfg.ops_per_client / 2 {
            halfway.store(true, Ordering::Relaxed);
        }
        // A replica panicked: the run has failed already; stop rather than wait out timeouts.
        if !panics_of(&run_name).is_empty() {
            break;
        }
        let k = rng.below(cfg.keys);
        let key = format!("key{k}").into_bytes();
        let value = format!("c{c}-{i}").into_bytes();
        let choice = rng.below(22);
        let call = tick();
        let mut ops = Vec::new();
        let mut served = None;
        if choice < 7 {
            let res = within(session.replicate(&key, &value, cfg.write_level)).await;
            // A failed write may still have happened: its outcome is unknown.
            let (ret, revision) = match res {
                Ok(ack) => (Some(tick()), ack.revision),
                Err(_) => (None, None),
            };
            ops.push((key, Kind::Put(value), ret, revision));
        } else if choice < 9 {
            let ret = within(rep.delete(&key, cfg.write_level))
                .await
                .ok()
                .map(|_| tick());
            ops.push((key, Kind::Delete, ret, None));
        } else if choice < 11 && cfg.keys > 1 {
            // Two distinct keys written by one txn.
            let other = format!("key{}", (k + 1 + rng.below(cfg.keys - 1)) % cfg.keys).into_bytes();
            let res = within(rep.txn(put_both([&key, &other], &value), cfg.write_level)).await;
            let (ret, revision) = match res {
                Ok(r) => (Some(tick()), r.header.map(|h| h.revision)),
                Err(_) => (None, None),
            };
            for k in [key, other] {
                ops.push((k, Kind::Put(value.clone()), ret, revision));
            }
        } else {
            // A read: at `Sequential` in the session from a replica the client picked (it may
            // be stale, but never older than what the session has seen); or linearizable, half
            // of them through a replica the client picked, as a client connected to one
            // endpoint does, the rest routed to the leader.
            let (res, kind): (_, fn(Value) -> Kind) = if choice >= 20 {
                let i = rng.below(cfg.replicas);
                let res = session.read_result_from(i, &key, ConsistencyLevel::Sequential);
                (within(res).await, Kind::SequentialGet)
            } else if rng.below(2) == 0 {
                let i = rng.below(cfg.replicas);
                (
                    within(rep.read_result_from(i, &key, cfg.read_level)).await,
                    Kind::Get,
                )
            } else {
                (
                    within(rep.read_result(&key, cfg.read_level)).await,
                    Kind::Get,
                )
            };
            match res {
                Ok(r) => {
                    served = Some((r.replica, r.revision));
                    let revision = r.kv.as_ref().map(|kv| kv.mod_revision);
                    ops.push((key, kind(r.kv.map(|kv| kv.value)), Some(tick()), revision));
                }
                Err(_) => ops.push((key, kind(None), None, None)),
            }
        }
        let failed = ops.iter().any(|(_, _, ret, _)| ret.is_none());
        {
            let mut h = history.lock().expect("history lock");
            for (key, kind, ret, revision) in ops {
                // Single puts are the only writes made through the session.
                let session = choice < 7 || matches!(kind, Kind::SequentialGet(_));
                h.push(Op {
                    client: c,
                    key,
                    kind,
                    call,
                    ret,
                    revision,
                    session,
                    served,
                });
            }
        }
        // Like a real client, wait a little after a failure (no leader, a timeout) before the
        // next call instead of spending the whole workload while the cluster is down.
        if failed {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The key of lease client `l`: in the watched range, apart from the other clients' keys.
fn lease_key(l: usize) -> Vec<u8> {
    format!("key-lease{l}").into_bytes()
}

/// The TTL a lease client asks for; the cluster raises it to its minimum (one and a half
/// election timeouts: 1 s here).
const LEASE_TTL: i64 = 1;

/// Calls of a lease client under the faults, 50 to 300 ms apart: about five TTLs.
const LEASE_STEPS: usize = 30;

/// A txn that puts `value` under `key` attached to `lease`.
fn put_with_lease(key: &[u8], value: &[u8], lease: i64) -> TxnRequest {
    TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                lease,
                ..Default::default()
            })),
        }],
        ..Default::default()
    }
}

/// What a lease client shares with the run.
struct LeaseRun {
    rep: LocalReplicator,
    clock: Arc<AtomicU64>,
    history: Arc<Mutex<Vec<Op>>>,
    began: tokio::time::Instant,
    client: usize,
    key: Vec<u8>,
    calls: Vec<LeaseCall>,
    rng: Rng,
    /// The lease held now: its number among the client's grants, and its id.
    lease: Option<(usize, i64)>,
    grants: usize,
}

impl LeaseRun {
    fn record(&mut self, lease: usize, kind: LeaseKind, call: Duration) {
        self.calls.push(LeaseCall {
            client: self.client,
            lease,
            kind,
            call,
            ret: self.began.elapsed(),
        });
    }

    fn push_op(&self, kind: Kind, call: u64, ret: Option<u64>, revision: Option<i64>) {
        self.push_served(kind, call, ret, revision, None);
    }

    fn push_served(
        &self,
        kind: Kind,
        call: u64,
        ret: Option<u64>,
        revision: Option<i64>,
        served: Option<(usize, i64)>,
    ) {
        self.history.lock().expect("history lock").push(Op {
            client: self.client,
            key: self.key.clone(),
            kind,
            call,
            ret,
            revision,
            session: false,
            served,
        });
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    /// Grants lease number `n` through replica `i` and attaches the key to it.
    async fn grant(&mut self, n: usize, i: usize) -> Option<i64> {
        let (call, at) = (self.tick(), self.began.elapsed());
        let (id, ttl) = within(self.rep.lease_grant_via(i, LEASE_TTL)).await.ok()?;
        self.record(n, LeaseKind::Granted { ttl }, at);
        // From its grant on, the lease may expire and delete the key: a delete whose outcome
        // is unknown, for the key-value checks.
        self.push_op(Kind::Delete, call, None, None);
        let value = format!("lease{}-{n}", self.client).into_bytes();
        let (call, at) = (self.tick(), self.began.elapsed());
        let txn = put_with_lease(&self.key, &value, id);
        match within(self.rep.txn(txn, ConsistencyLevel::Quorum)).await {
            Ok(r) => {
                let revision = r.header.map(|h| h.revision);
                self.push_op(Kind::Put(value), call, Some(self.tick()), revision);
                self.record(n, LeaseKind::Attached, at);
            }
            Err(_) => self.push_op(Kind::Put(value), call, None, None),
        }
        Some(id)
    }

    /// A linearizable read of the key, through replica `i` or the leader.
    async fn read(&mut self, via: Option<usize>) -> Option<bool> {
        let call = self.tick();
        let res = match via {
            Some(i) => {
                within(
                    self.rep
                        .read_result_from(i, &self.key, ConsistencyLevel::Strong),
                )
                .await
            }
            None => within(self.rep.read_result(&self.key, ConsistencyLevel::Strong)).await,
        };
        match res {
            Ok(r) => {
                let revision = r.kv.as_ref().map(|kv| kv.mod_revision);
                let present = r.kv.is_some();
                let kind = Kind::Get(r.kv.map(|kv| kv.value));
                let served = Some((r.replica, r.revision));
                self.push_served(kind, call, Some(self.tick()), revision, served);
                Some(present)
            }
            Err(_) => None,
        }
    }
}

/// A lease client's calls under the faults: `steps` of them.
async fn lease_client(mut lr: LeaseRun, steps: usize, run_name: String) -> LeaseRun {
    let n_replicas = lr.rep.replicas();
    let (mut rng, mut lease, mut grants) = (lr.rng.clone(), lr.lease, lr.grants);
    for _ in 0..steps {
        if !panics_of(&run_name).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50 + rng.below(250) as u64)).await;
        // Each call goes through a replica the client picked, as a client connected to one
        // endpoint: an isolated old leader gets asked too.
        let i = rng.below(n_replicas);
        let Some((n, id)) = lease else {
            lease = lr.grant(grants, i).await.map(|id| (grants, id));
            grants += 1;
            continue;
        };
        match rng.below(20) {
            0 => {
                let (call, at) = (lr.tick(), lr.began.elapsed());
                lr.record(n, LeaseKind::Revoke, at);
                let ret = within(lr.rep.lease_revoke_via(i, id))
                    .await
                    .ok()
                    .map(|()| lr.tick());
                lr.push_op(Kind::Delete, call, ret, None);
                lease = None;
            }
            1..=4 => {
                let at = lr.began.elapsed();
                let via = (rng.below(2) == 0).then_some(i);
                if let Some(present) = lr.read(via).await {
                    lr.record(n, LeaseKind::Read { present }, at);
                }
            }
            _ => {
                let at = lr.began.elapsed();
                match within(lr.rep.lease_keep_alive_via(i, id)).await {
                    Ok(ttl) => {
                        lr.record(n, LeaseKind::KeptAlive { ttl }, at);
                        if ttl == 0 {
                            lease = None;
                        }
                    }
                    Err(_) => lr.record(n, LeaseKind::KeepAliveUnknown, at),
                }
            }
        }
    }
    (lr.rng, lr.lease, lr.grants) = (rng, lease, grants);
    lr
}

/// Once the faults are over: holds a lease with the key attached, lets it lapse, and reads
/// until the key is gone (or long after it should be).
async fn lease_lapse(mut lr: LeaseRun) -> Vec<LeaseCall> {
    let n_replicas = lr.rep.replicas();
    let (mut rng, mut lease, mut grants) = (lr.rng.clone(), lr.lease, lr.grants);
    let mut attached = None;
    for _ in 0..10 {
        if let Some((n, _)) = lease {
            if lr
                .calls
                .iter()
                .any(|c| c.lease == n && c.kind == LeaseKind::Attached)
            {
                attached = Some(n);
                break;
            }
        }
        let i = rng.below(n_replicas);
        lease = lr.grant(grants, i).await.map(|id| (grants, id));
        grants += 1;
    }
    let Some(n) = attached else {
        return lr.calls;
    };
    let last_keep_alive = last_renewal(lr.calls.iter().filter(|c| c.lease == n));
    while lr.began.elapsed() < last_keep_alive + LAPSE_WITHIN + Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let at = lr.began.elapsed();
        if let Some(present) = lr.read(None).await {
            lr.record(n, LeaseKind::ReadAfterLapse { present }, at);
            if !present {
                break;
            }
        }
    }
    lr.calls
}

/// The workload's keys are `key0`, `key1`, ...: this range holds them all.
const WATCHED: (&[u8], &[u8]) = (b"key", b"kez");

/// How long watchers may take, once the last reads are done, to deliver what those reads saw.
const CATCH_UP: Duration = Duration::from_secs(10);

/// One watcher: follows every key from revision 1 on a replica it picks, resumes on another
/// when that one crashes (and, now and then, moves anyway), until it has delivered `target`
/// (set once the final reads are done) or `give_up` is set.
async fn watcher(
    rep: LocalReplicator,
    seed: u64,
    w: usize,
    clock: Arc<AtomicU64>,
    target: Arc<AtomicI64>,
    give_up: Arc<AtomicBool>,
) -> WatchLog {
    let mut rng = Rng::new(seed ^ (0x3a7c_0000 + w as u64));
    let mut log = WatchLog {
        watcher: w,
        reached: 1,
        ..WatchLog::default()
    };
    let done = |reached: i64| {
        let t = target.load(Ordering::Acquire);
        (t > 0 && reached > t) || give_up.load(Ordering::Acquire)
    };
    while !done(log.reached) {
        let i = rng.below(rep.replicas());
        let Ok(mut watch) = rep.watch_from(i, WATCHED.0, WATCHED.1, log.reached) else {
            // That replica is down: try another shortly.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        log.starts += 1;
        loop {
            match tokio::time::timeout(Duration::from_millis(100), watch.next()).await {
                Ok(Ok(events)) => {
                    let at = clock.fetch_add(1, Ordering::SeqCst);
                    let events = events
                        .into_iter()
                        .filter_map(|e| {
                            let put = e.r#type == EventType::Put as i32;
                            e.kv.map(|kv| Seen {
                                revision: kv.mod_revision,
                                key: kv.key,
                                value: put.then_some(kv.value),
                            })
                        })
                        .collect();
                    log.deliveries.push(Delivery {
                        replica: i,
                        at,
                        events,
                    });
                    log.reached = watch.next_revision();
                    // A client reconnecting elsewhere: resume on another replica.
                    if rng.below(8) == 0 {
                        break;
                    }
                }
                // The replica crashed: resume elsewhere from where this one stopped.
                Ok(Err(_)) => break,
                Err(_) => {
                    log.reached = watch.next_revision();
                    if done(log.reached) {
                        break;
                    }
                }
            }
        }
    }
    log
}

/// What a run recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Every call and its return.
    pub ops: Vec<Op>,
    /// Panics of replica threads during the run (an assertion inside openraft or c20 failed).
    pub replica_panics: Vec<String>,
    /// What each watcher received.
    pub watches: Vec<WatchLog>,
    /// The highest store revision the final reads saw, which every watcher must reach.
    pub final_revision: i64,
    /// How long the run took on its clock (simulated time, unless [`RunConfig::threads`]).
    pub took: Duration,
    /// The run never finished (see `STUCK_AFTER`); its thread still spins.
    pub stalled: bool,
    /// Replicas that could not start again on what their crash left.
    pub restart_failures: Vec<String>,
    /// What the crashes did to the replicas' simulated disks.
    pub disk: CrashDamage,
    /// The lease clients' calls, on the run's clock.
    pub leases: Vec<LeaseCall>,
}

impl Recorded {
    /// A replica panic is a violation by itself; otherwise the history is checked.
    pub fn check(&self) -> Result<Checked, Violation> {
        if let Some(p) = self.replica_panics.first() {
            return Err(Violation::of_run(format!(
                "a replica panicked or the run stalled ({} such failures in the run): {p}",
                self.replica_panics.len()
            )));
        }
        if let Some(f) = self.restart_failures.first() {
            return Err(Violation::of_run(format!(
                "{f} ({} such failures in the run)",
                self.restart_failures.len()
            )));
        }
        let mut checked = check(&self.ops)?;
        checked.watch = check_watches(&self.ops, &self.watches, self.final_revision)?;
        checked.lease = check_leases(&self.leases)?;
        Ok(checked)
    }

    /// Where this run and `other` (of the same seed) first differ, if they do: a replay must
    /// not.
    pub fn differs_from(&self, other: &Recorded) -> Option<String> {
        let (a, b) = (&self.ops, &other.ops);
        if let Some(i) = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) {
            return Some(format!(
                "operation {i}: {:?} against {:?}",
                a.get(i),
                b.get(i)
            ));
        }
        if self.leases != other.leases {
            return Some("the lease clients' calls differ".into());
        }
        if self.watches != other.watches {
            return Some("the watchers received different events".into());
        }
        if self.replica_panics != other.replica_panics
            || self.final_revision != other.final_revision
            || self.restart_failures != other.restart_failures
        {
            return Some("the panics, restarts or the final revision differ".into());
        }
        if self.disk != other.disk {
            return Some(format!(
                "the crashes did different damage: {:?} against {:?}",
                self.disk, other.disk
            ));
        }
        None
    }
}

/// Panics seen on the threads of simulator runs (each run's threads carry its own name) since
/// the process started: (thread name, what panicked).
static RUN_PANICS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Records every panic on a run's thread, then reports it as before.
fn watch_run_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            if let Some(name) = thread.name().filter(|n| n.starts_with(RUN_THREAD)) {
                if let Ok(mut p) = RUN_PANICS.lock() {
                    p.push((name.to_string(), info.to_string()));
                }
            }
            previous(info)
        }));
    });
}

/// The panics of the run whose threads are named `name`.
fn panics_of(name: &str) -> Vec<String> {
    RUN_PANICS.lock().map_or_else(
        |_| Vec::new(),
        |p| {
            p.iter()
                .filter(|(n, _)| n == name)
                .map(|(_, what)| what.clone())
                .collect()
        },
    )
}

/// Run threads are named `c20-sim-<n>`; runs at the same time in one process (tests) keep
/// their panics apart by it.
const RUN_THREAD: &str = "c20-sim-";

/// Runs the workload and returns every recorded operation, and any panic in the run.
///
/// By default ([`RunConfig::threads`] off) the whole run (every replica, client, watcher and
/// the fault task) is one single-threaded Tokio runtime on a thread of its own, with a paused
/// clock that jumps to the next timer whenever every task waits, Tokio's and openraft's random
/// choices seeded from the seed: the same seed gives the same history, call for call. With
/// `threads`, the run uses two worker threads and real time instead: thread interleavings the
/// seed does not control, and no replay.
pub fn run(cfg: &RunConfig) -> Recorded {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    watch_run_panics();
    let name = format!("{RUN_THREAD}{}", RUNS.fetch_add(1, Ordering::Relaxed));
    let cfg = cfg.clone();
    let thread_name = name.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let rt = runtime(&cfg, &thread_name).expect("a Tokio runtime for the run");
            c20_distributed::seed_raft_rng((!cfg.threads).then_some(cfg.seed));
            let recorded = rt.block_on(run_here(&cfg, &thread_name));
            c20_distributed::seed_raft_rng(None);
            let _ = tx.send(recorded);
        })
        .expect("a thread for the run");
    match rx.recv_timeout(STUCK_AFTER) {
        Ok(recorded) => recorded,
        // The run's thread panicked outside a task.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Recorded {
            replica_panics: panics_of(&name),
            ..Recorded::default()
        },
        // Left spinning: a thread cannot be stopped from outside; the process ends soon.
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Recorded {
            replica_panics: vec![format!(
                "the run was still going after {} s of real time: some task keeps running \
                 without ever waiting, so the simulated clock cannot move (a livelock)",
                STUCK_AFTER.as_secs()
            )],
            stalled: true,
            ..Recorded::default()
        },
    }
}

/// A run takes well under a second of real time (several in a debug build under load); one
/// still going after this is stuck.
const STUCK_AFTER: Duration = Duration::from_secs(120);

fn runtime(cfg: &RunConfig, name: &str) -> std::io::Result<tokio::runtime::Runtime> {
    if cfg.threads {
        return c20_distributed::replica_runtime(false)
            .thread_name(name)
            .enable_all()
            .build();
    }
    let mut b = tokio::runtime::Builder::new_current_thread();
    b.enable_all().start_paused(true);
    // Which of several ready branches a `select!` takes, and the order in which a watch
    // channel wakes its receivers, come from the runtime's seed; without `tokio_unstable`
    // (set in `.cargo/config.toml`) it cannot be fixed and replays may differ.
    #[cfg(tokio_unstable)]
    b.rng_seed(tokio::runtime::RngSeed::from_bytes(&cfg.seed.to_le_bytes()));
    b.build()
}

async fn run_here(cfg: &RunConfig, name: &str) -> Recorded {
    let began = tokio::time::Instant::now();
    let majority = cfg.replicas / 2 + 1;
    let mut builder = LocalReplicator::builder(cfg.replicas, majority, majority);
    if cfg.lose_unsynced {
        builder = builder.crash_loses_unsynced().simulated(cfg.seed);
    }
    let rep = builder
        .build_here()
        .await
        .expect("valid replicator parameters");
    calm(&rep, &mut Rng::new(cfg.seed ^ 0xca1));
    let clock = Arc::new(AtomicU64::new(0));
    let history = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let halfway = Arc::new(AtomicBool::new(false));
    let failures = RestartFailures::default();
    let faults = cfg.faults.then(|| {
        tokio::spawn(inject_faults(
            rep.clone(),
            cfg.seed,
            stop.clone(),
            halfway.clone(),
            failures.clone(),
        ))
    });
    let target = Arc::new(AtomicI64::new(0));
    let give_up = Arc::new(AtomicBool::new(false));
    let watchers: Vec<_> = (0..cfg.watchers)
        .map(|w| {
            tokio::spawn(watcher(
                rep.clone(),
                cfg.seed,
                w,
                clock.clone(),
                target.clone(),
                give_up.clone(),
            ))
        })
        .collect();
    let lease_clients: Vec<_> = (0..cfg.lease_clients)
        .map(|l| {
            // Client numbers after the plain clients and the final reader.
            let client = cfg.clients + 1 + l;
            let lr = LeaseRun {
                rep: rep.clone(),
                clock: clock.clone(),
                history: history.clone(),
                began,
                client,
                key: lease_key(l),
                calls: Vec::new(),
                rng: Rng::new(cfg.seed ^ (0x1ea5_0000 + client as u64)),
                lease: None,
                grants: 0,
            };
            tokio::spawn(lease_client(lr, LEASE_STEPS, name.to_string()))
        })
        .collect();
    let clients: Vec<_> = (0..cfg.clients)
        .map(|c| {
            tokio::spawn(client(
                rep.clone(),
                cfg.clone(),
                c,
                clock.clone(),
                history.clone(),
                halfway.clone(),
                name.to_string(),
            ))
        })
        .collect();
    for c in clients {
        c.await.expect("client task");
    }
    let mut lease_runs = Vec::new();
    for l in lease_clients {
        lease_runs.push(l.await.expect("lease client task"));
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(f) = faults {
        f.await.expect("fault task");
    }
    let mut leases = Vec::new();
    for lr in lease_runs {
        leases.extend(lease_lapse(lr).await);
    }
    // Once the faults are over, a last reader reads every key, so a write lost near the end
    // of the run shows too.
    let mut final_revision = 0;
    for k in 0..cfg.keys {
        let key = format!("key{k}").into_bytes();
        for _ in 0..5 {
            let call = clock.fetch_add(1, Ordering::SeqCst);
            if let Ok(r) = within(rep.read_result(&key, ConsistencyLevel::Strong)).await {
                final_revision = final_revision.max(r.revision);
                history.lock().expect("history lock").push(Op {
                    client: cfg.clients,
                    key,
                    revision: r.kv.as_ref().map(|kv| kv.mod_revision),
                    kind: Kind::Get(r.kv.map(|kv| kv.value)),
                    call,
                    ret: Some(clock.fetch_add(1, Ordering::SeqCst)),
                    session: false,
                    served: Some((r.replica, r.revision)),
                });
                break;
            }
        }
    }
    // Every watcher must now deliver what the final reads saw; one that cannot within
    // `CATCH_UP` is stopped, and the check reports how far it got.
    target.store(final_revision.max(1), Ordering::Release);
    let mut watches = Vec::new();
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    for w in watchers {
        let mut w = w;
        let log = match tokio::time::timeout_at(deadline, &mut w).await {
            Ok(log) => log,
            Err(_) => {
                give_up.store(true, Ordering::Release);
                w.await
            }
        };
        watches.push(log.expect("watcher task"));
    }
    let ops = history.lock().expect("history lock").clone();
    let replica_panics = panics_of(name);
    let restart_failures = failures.lock().expect("failures lock").clone();
    Recorded {
        ops,
        replica_panics,
        watches,
        final_revision,
        took: began.elapsed(),
        stalled: false,
        restart_failures,
        disk: rep.disk_damage(),
        leases,
    }
}
