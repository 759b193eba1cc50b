//! Chaos on real processes: a 3-member cluster whose peer traffic goes through user-space
//! proxies runs writers and readers while, in turn, the leader is killed with SIGKILL and
//! restarted, a member is cut off from its peers (its proxy drops every connection) and
//! healed, and every peer link turns slow and lossy (each relayed chunk delayed up to tens of
//! milliseconds, some breaking their connection) and clean again. Then:
//! - every acknowledged write is on every member;
//! - each writer's acknowledged writes got increasing revisions, and no linearizable read saw a
//!   revision below one already acknowledged when the read began (revisions never go back);
//! - every member ends with the same HashKV.
//!
//! `C20_CHAOS_SECS` sets how long faults are injected (default 30); `C20_CHAOS_SEED` replays a
//! fault schedule. `scripts/chaos.sh` runs it for longer. `C20_TESTS_USE_ETCD=1` runs it
//! against the real etcd (checks the test).

mod support;

use c20_api::etcdserverpb::RangeRequest;
use c20_client::{prefix_end, Client};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::proxy::PeerProxy;
use support::{hashkv_hashes, Cluster, Flavor};

const HEALTHY: Duration = Duration::from_secs(60);
const WRITERS: usize = 3;

/// xorshift64*, seeded: the fault schedule is reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Keys whose put was acknowledged.
    acked: Mutex<Vec<String>>,
    /// Puts that failed or timed out: applied or not.
    maybe: AtomicUsize,
    reads: AtomicUsize,
    /// Highest revision of an acknowledged write so far.
    max_acked_rev: AtomicI64,
    violations: Mutex<Vec<String>>,
}

/// `client` if it is there, else a connection to the member at `endpoints[*next % n]`
/// (moving on for the next call), else `None` after a short pause.
async fn client_at<'a>(
    client: &'a mut Option<Client>,
    endpoints: &[String],
    next: &mut usize,
) -> Option<&'a mut Client> {
    if client.is_none() {
        let ep = &endpoints[*next % endpoints.len()];
        *next += 1;
        let eps = [ep.as_str()];
        *client = tokio::time::timeout(Duration::from_secs(2), Client::connect(&eps))
            .await
            .ok()
            .and_then(Result::ok);
        if client.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    client.as_mut()
}

async fn writer(id: usize, endpoints: Vec<String>, s: Arc<Shared>) {
    let mut next = id;
    let mut client = None;
    let mut last_rev = 0i64;
    let mut seq = 0u64;
    while !s.stop.load(Ordering::Relaxed) {
        let Some(c) = client_at(&mut client, &endpoints, &mut next).await else {
            continue;
        };
        let key = format!("w/{id}/{seq:08}");
        seq += 1;
        match tokio::time::timeout(Duration::from_secs(5), c.put(key.clone(), seq.to_string()))
            .await
        {
            Ok(Ok(resp)) => {
                let rev = resp.header.map_or(0, |h| h.revision);
                if rev <= last_rev {
                    s.violations.lock().unwrap().push(format!(
                        "writer {id}: {key} acknowledged at revision {rev} after {last_rev}"
                    ));
                }
                last_rev = rev;
                s.max_acked_rev.fetch_max(rev, Ordering::SeqCst);
                s.acked.lock().unwrap().push(key);
            }
            _ => {
                s.maybe.fetch_add(1, Ordering::Relaxed);
                client = None;
            }
        }
    }
}

async fn reader(endpoints: Vec<String>, s: Arc<Shared>) {
    let mut next = 0;
    let mut client = None;
    let started = Instant::now();
    let mut last_rev = 0i64;
    while !s.stop.load(Ordering::Relaxed) {
        let floor = s.max_acked_rev.load(Ordering::SeqCst);
        let Some(c) = client_at(&mut client, &endpoints, &mut next).await else {
            continue;
        };
        let req = RangeRequest {
            key: b"w/".to_vec(),
            range_end: prefix_end(b"w/"),
            count_only: true,
            ..Default::default()
        };
        match tokio::time::timeout(Duration::from_secs(5), c.range(req)).await {
            Ok(Ok(resp)) => {
                let rev = resp.header.map_or(0, |h| h.revision);
                if rev < floor || rev < last_rev {
                    s.violations.lock().unwrap().push(format!(
                        "linearizable read from {} at {:?} got revision {rev}: writes up to \
                         {floor} were acknowledged before it began, the previous read saw \
                         {last_rev}",
                        endpoints[(next + endpoints.len() - 1) % endpoints.len()],
                        started.elapsed()
                    ));
                }
                last_rev = rev;
                // Every tenth read moves on to the next member, so all of them serve some.
                if s.reads.fetch_add(1, Ordering::Relaxed) % 10 == 9 {
                    client = None;
                }
            }
            // A cut-off member cannot confirm its read index: try the next one.
            _ => client = None,
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn no_acknowledged_write_is_lost_under_leader_kills_partitions_and_lossy_links() {
    let secs = env_u64("C20_CHAOS_SECS").unwrap_or(30);
    let seed = env_u64("C20_CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    });
    eprintln!("chaos: seed {seed} (replay the schedule with C20_CHAOS_SEED={seed}), {secs} s");
    let mut rng = Rng(seed);
    let rt = tokio::runtime::Runtime::new().unwrap();

    let mut c = Cluster::stopped(Flavor::C20, 3);
    let proxies: Vec<PeerProxy> = c
        .members
        .iter()
        .map(|m| {
            let target: SocketAddr = format!("127.0.0.1:{}", m.peer_port).parse().unwrap();
            rt.block_on(PeerProxy::start(target))
        })
        .collect();
    for (m, p) in c.members.iter_mut().zip(&proxies) {
        m.advertised_peer_port = Some(p.port);
    }
    c.start_all();
    c.wait_healthy(HEALTHY);

    let endpoints: Vec<String> = c.members.iter().map(|m| m.client_addr()).collect();
    let s = Arc::new(Shared::default());
    let mut tasks = Vec::new();
    for id in 0..WRITERS {
        tasks.push(rt.spawn(writer(id, endpoints.clone(), s.clone())));
    }
    tasks.push(rt.spawn(reader(endpoints.clone(), s.clone())));
    // (the reader's clock starts here too, so its times line up with the fault log)

    let (mut kills, mut partitions, mut degraded) = (0, 0, 0);
    let started = Instant::now();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut step = 0u64;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1500 + rng.below(1500)));
        if step.is_multiple_of(3) {
            let leader = c.wait_leader(HEALTHY);
            eprintln!(
                "chaos: {:?} kill -9 {}",
                started.elapsed(),
                c.members[leader].client_addr()
            );
            c.kill9(leader);
            kills += 1;
            std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
            c.restart(leader);
        } else if step % 3 == 2 {
            let delay_ms = 5 + rng.below(46);
            let loss = (1 + rng.below(20)) as f64 / 1000.0;
            eprintln!(
                "chaos: {:?} every peer link delays up to {delay_ms} ms and loses {:.1}%",
                started.elapsed(),
                loss * 100.0
            );
            for p in &proxies {
                p.degrade(delay_ms, loss, rng.below(u64::MAX));
            }
            degraded += 1;
            std::thread::sleep(Duration::from_millis(2000 + rng.below(2000)));
            for p in &proxies {
                p.restore();
            }
        } else {
            let victim = rng.below(3) as usize;
            eprintln!(
                "chaos: {:?} cut off {}",
                started.elapsed(),
                c.members[victim].client_addr()
            );
            proxies[victim].block();
            partitions += 1;
            std::thread::sleep(Duration::from_millis(1000 + rng.below(2000)));
            proxies[victim].heal();
        }
        c.check_alive();
        step += 1;
    }
    c.wait_healthy(HEALTHY);
    // Writes go on for a moment in the healed cluster, then stop.
    let before = s.acked.lock().unwrap().len();
    let deadline = Instant::now() + HEALTHY;
    while s.acked.lock().unwrap().len() < before + 100 {
        assert!(Instant::now() < deadline, "no writes succeed after healing");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        rt.block_on(t).unwrap();
    }

    let acked = s.acked.lock().unwrap().clone();
    eprintln!(
        "chaos: {kills} leader kills, {partitions} partitions, {degraded} slow and lossy \
         periods ({} peer connections broken by a lost chunk); {} writes acknowledged, {} \
         unknown, {} linearizable reads",
        proxies.iter().map(PeerProxy::lost_chunks).sum::<u64>(),
        acked.len(),
        s.maybe.load(Ordering::Relaxed),
        s.reads.load(Ordering::Relaxed)
    );
    assert!(kills >= 1 && partitions >= 1 && degraded >= 1);

    // Every member, once at the same revision, holds every acknowledged write.
    let rev = rt.block_on(async {
        let deadline = Instant::now() + HEALTHY;
        loop {
            let mut revs = Vec::new();
            for ep in &endpoints {
                let mut cl = Client::connect(&[ep.as_str()]).await.unwrap();
                revs.push(
                    cl.status()
                        .await
                        .map_or(0, |st| st.header.map_or(0, |h| h.revision)),
                );
            }
            if revs.iter().all(|r| *r == revs[0] && *r > 0) {
                return revs[0];
            }
            assert!(Instant::now() < deadline, "members never agree: {revs:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    rt.block_on(async {
        for ep in &endpoints {
            let mut cl = Client::connect(&[ep.as_str()]).await.unwrap();
            let r = cl
                .range(RangeRequest {
                    key: b"w/".to_vec(),
                    range_end: prefix_end(b"w/"),
                    keys_only: true,
                    serializable: true,
                    ..Default::default()
                })
                .await
                .unwrap();
            let have: HashSet<Vec<u8>> = r.kvs.into_iter().map(|kv| kv.key).collect();
            let lost: Vec<&String> = acked
                .iter()
                .filter(|k| !have.contains(k.as_bytes()))
                .collect();
            assert!(lost.is_empty(), "{ep} lost acknowledged writes: {lost:?}");
        }
    });
    let out = c
        .etcdctl_all(&["endpoint", "hashkv", "-w", "json", &format!("--rev={rev}")])
        .expect_ok("hashkv");
    let hashes = hashkv_hashes(&out.stdout);
    assert_eq!(hashes.len(), 3, "{}", out.stdout);
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{}", out.stdout);
    let violations = s.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:#?}");
    drop(proxies);
}
