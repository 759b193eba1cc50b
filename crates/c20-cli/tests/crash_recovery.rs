//! Crash recovery of a 3-node c20 cluster of real processes, killed with SIGKILL.
//!
//! A write counts as acknowledged only when `etcdctl put` exited 0 and printed OK; every other
//! attempt is "maybe" (it may or may not have been applied). Acknowledged writes must survive any
//! crash; maybe-writes may go either way but every member must end with the same data.
//!
//! `C20_TESTS_USE_ETCD=1` runs the same tests against the real etcd (checks the tests).

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};
use support::{hashkv_hashes, header_revision, run_etcdctl, Cluster, Flavor};

const HEALTHY: Duration = Duration::from_secs(30);

fn key_name(i: usize) -> String {
    format!("k{i:05}")
}

fn value_of(i: usize) -> String {
    format!("value-{i:05}")
}

#[derive(Default)]
struct WriteLog {
    /// Indices whose put was acknowledged.
    acked: Vec<usize>,
    /// Indices whose put failed or timed out: outcome unknown.
    maybe: Vec<usize>,
    attempts: usize,
    last_error: String,
    finished: bool,
}

/// A thread that puts `k00000`, `k00001`, … one after the other through etcdctl with all
/// endpoints (rotated so that each member is tried first in turn), going to the next key after
/// every attempt, whatever its outcome.
struct Writer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<WriteLog>>,
    handle: Option<thread::JoinHandle<()>>,
}

fn lock(log: &Mutex<WriteLog>) -> MutexGuard<'_, WriteLog> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

impl Writer {
    fn start(endpoints: Vec<String>, max_attempts: usize, max_time: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(WriteLog::default()));
        let (thread_stop, thread_log) = (stop.clone(), log.clone());
        let handle = thread::spawn(move || {
            let start = Instant::now();
            let n = endpoints.len();
            let mut i = 0;
            while !thread_stop.load(Ordering::SeqCst)
                && i < max_attempts
                && start.elapsed() < max_time
            {
                let eps: Vec<&str> = (0..n).map(|k| endpoints[(i + k) % n].as_str()).collect();
                let key = key_name(i);
                let value = value_of(i);
                let out = run_etcdctl(
                    &eps.join(","),
                    &[
                        "--dial-timeout=2s",
                        "--command-timeout=5s",
                        "put",
                        &key,
                        &value,
                    ],
                    None,
                    Duration::from_secs(20),
                );
                let acked = out.ok() && out.stdout.trim() == "OK";
                {
                    let mut l = lock(&thread_log);
                    l.attempts = i + 1;
                    if acked {
                        l.acked.push(i);
                    } else {
                        l.maybe.push(i);
                        l.last_error = format!("put {key}: {out}");
                    }
                }
                if !acked {
                    // the cluster is electing or a member is down: do not spin
                    thread::sleep(Duration::from_millis(100));
                }
                i += 1;
            }
            lock(&thread_log).finished = true;
        });
        Writer {
            stop,
            log,
            handle: Some(handle),
        }
    }

    fn acked(&self) -> usize {
        lock(&self.log).acked.len()
    }

    /// Stops the thread and returns what it did.
    fn finish(mut self) -> WriteLog {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().expect("writer thread panicked");
        }
        std::mem::take(&mut *lock(&self.log))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Polls until the writer has `target` acknowledged writes; panics after `timeout`.
fn wait_for_acks(c: &mut Cluster, w: &Writer, target: usize, timeout: Duration, phase: &str) {
    let start = Instant::now();
    loop {
        let (acked, maybe, finished, last_error) = {
            let l = lock(&w.log);
            (
                l.acked.len(),
                l.maybe.len(),
                l.finished,
                l.last_error.clone(),
            )
        };
        if acked >= target {
            eprintln!(
                "[{phase}] {acked} writes acknowledged, {maybe} unknown, after {:?}",
                start.elapsed()
            );
            return;
        }
        if finished || start.elapsed() >= timeout {
            panic!(
                "[{phase}] only {acked} of {target} writes acknowledged ({maybe} unknown) after {:?}{}; \
                 last failed write: {last_error}\n{}",
                start.elapsed(),
                if finished { " and the writer reached its bounds" } else { "" },
                c.logs_tail(60)
            );
        }
        c.check_alive();
        thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `endpoint status` until every member reports the same revision three polls in a row
/// (no write is in flight any more); returns it.
fn wait_same_revision(c: &mut Cluster, timeout: Duration) -> i64 {
    let start = Instant::now();
    let mut stable = 0;
    let mut last: Option<i64> = None;
    loop {
        c.check_alive();
        let revs: Vec<Option<i64>> = (0..c.len())
            .map(|i| c.endpoint_status(i).map(|s| s.revision))
            .collect();
        let agreed = match revs.first() {
            Some(Some(r)) if revs.iter().all(|x| *x == Some(*r)) => Some(*r),
            _ => None,
        };
        if agreed.is_some() && agreed == last {
            stable += 1;
            if stable >= 2 {
                return agreed.unwrap_or_default();
            }
        } else {
            stable = 0;
        }
        last = agreed;
        if start.elapsed() >= timeout {
            panic!(
                "members did not converge to one revision within {timeout:?}: {revs:?}\n{}",
                c.logs_tail(60)
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// `etcdctl get` simple output: key and value lines alternate.
fn parse_simple_kvs(stdout: &str) -> BTreeMap<String, String> {
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.len().is_multiple_of(2),
        "odd number of lines in get output:\n{stdout}"
    );
    lines
        .chunks(2)
        .map(|kv| (kv[0].to_string(), kv[1].to_string()))
        .collect()
}

#[test]
fn acknowledged_writes_survive_kill9_of_follower_then_leader() {
    const STEP: usize = 15;
    const PHASE: Duration = Duration::from_secs(60);

    let mut c = Cluster::start(Flavor::C20, 3);
    c.wait_healthy(HEALTHY);
    let endpoints: Vec<String> = c.members.iter().map(|m| m.client_addr()).collect();
    let writer = Writer::start(endpoints, 5_000, Duration::from_secs(300));
    wait_for_acks(&mut c, &writer, STEP, PHASE, "all members up");

    // A follower dies: the other two keep a quorum.
    let leader = c.wait_leader(HEALTHY);
    let follower = (leader + 1) % c.len();
    eprintln!("kill -9 follower {}", c.members[follower].name);
    c.kill9(follower);
    let target = writer.acked() + STEP;
    wait_for_acks(&mut c, &writer, target, PHASE, "follower down");
    c.restart(follower);
    c.wait_member_healthy(follower, HEALTHY);
    let target = writer.acked() + STEP;
    wait_for_acks(&mut c, &writer, target, PHASE, "follower restarted");

    // The leader dies: the other two elect a new one.
    let leader = c.wait_leader(HEALTHY);
    eprintln!("kill -9 leader {}", c.members[leader].name);
    c.kill9(leader);
    let target = writer.acked() + STEP;
    wait_for_acks(&mut c, &writer, target, PHASE, "leader down");
    c.restart(leader);
    c.wait_member_healthy(leader, HEALTHY);
    let target = writer.acked() + STEP;
    wait_for_acks(&mut c, &writer, target, PHASE, "old leader restarted");

    let log = writer.finish();
    eprintln!(
        "writer: {} attempts, {} acknowledged, {} unknown",
        log.attempts,
        log.acked.len(),
        log.maybe.len()
    );

    c.wait_healthy(HEALTHY);
    let rev = wait_same_revision(&mut c, Duration::from_secs(60));

    // Every acknowledged write is on every member (serializable reads: each member's own state).
    let mut contents = Vec::new();
    for i in 0..c.len() {
        let name = c.members[i].name.clone();
        let out = c
            .etcdctl_at(i, &["get", "--prefix", "k", "--consistency=s"])
            .expect_ok(&format!("serializable get on {name}"));
        let kvs = parse_simple_kvs(&out.stdout);
        let missing: Vec<String> = log
            .acked
            .iter()
            .filter(|&&k| kvs.get(&key_name(k)) != Some(&value_of(k)))
            .map(|&k| key_name(k))
            .collect();
        assert!(
            missing.is_empty(),
            "{name} lost {} acknowledged writes (or has a wrong value): {missing:?}",
            missing.len()
        );
        for (key, value) in &kvs {
            let idx: Option<usize> = key.strip_prefix('k').and_then(|n| n.parse().ok());
            assert!(
                matches!(idx, Some(k) if k < log.attempts && *value == value_of(k)),
                "{name} has {key}={value}, which was never written"
            );
        }
        contents.push((name, kvs));
    }
    for (name, kvs) in &contents[1..] {
        let (first, first_kvs) = &contents[0];
        if kvs != first_kvs {
            let only_first: Vec<&String> =
                first_kvs.keys().filter(|k| !kvs.contains_key(*k)).collect();
            let only_this: Vec<&String> =
                kvs.keys().filter(|k| !first_kvs.contains_key(*k)).collect();
            panic!("{first} and {name} differ at revision {rev}: only on {first}: {only_first:?}; only on {name}: {only_this:?}");
        }
    }

    // The same KV hash at the same revision everywhere.
    let out = c
        .etcdctl_all(&["endpoint", "hashkv", &format!("--rev={rev}"), "-w", "json"])
        .expect_ok("endpoint hashkv");
    let hashes = hashkv_hashes(&out.stdout);
    assert_eq!(
        hashes.len(),
        c.len(),
        "one hash per member expected: {}",
        out.stdout
    );
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "members disagree on the KV hash at revision {rev}: {}",
        out.stdout
    );
}

/// The `"kvs":[…],"count":N` part of a `get -w json` output (without the header, which names
/// the member and the raft term).
fn kvs_part(json: &str) -> &str {
    match json.find("\"kvs\":") {
        Some(i) => json[i..].trim_end(),
        None => panic!("no kvs in {json}"),
    }
}

#[test]
fn whole_cluster_restart_keeps_data_and_revision() {
    let mut c = Cluster::start(Flavor::C20, 3);
    c.wait_healthy(HEALTHY);

    // Revisions: a fresh cluster is at 1; 20 puts -> 21; a delete -> 22; a txn -> 23.
    for i in 0..20 {
        c.etcdctl_at(i % 3, &["put", &format!("r{i:02}"), &format!("value-{i}")])
            .expect_ok("put");
    }
    c.etcdctl(&["del", "r05"]).expect_ok("del");
    let txn = c
        .etcdctl_with_stdin(
            &["txn"],
            "value(\"r00\") = \"value-0\"\n\nput r00 changed\nput r20 new\n\n\n",
        )
        .expect_ok("txn");
    assert!(txn.stdout.starts_with("SUCCESS"), "txn: {txn}");
    let before = c
        .etcdctl(&["get", "--prefix", "r", "-w", "json"])
        .expect_ok("get");
    let rev = header_revision(&before.stdout).expect("revision in header");
    assert_eq!(
        rev, 23,
        "revision after 20 puts, a delete and a txn: {}",
        before.stdout
    );
    c.etcdctl(&["compact", &(rev - 3).to_string()])
        .expect_ok("compact");

    c.stop_all();
    c.start_all();
    c.wait_healthy(HEALTHY);

    for i in 0..c.len() {
        let after = c
            .etcdctl_at(i, &["get", "--prefix", "r", "-w", "json"])
            .expect_ok("get after restart");
        assert_eq!(
            header_revision(&after.stdout),
            Some(rev),
            "{}: revision after restart: {}",
            c.members[i].name,
            after.stdout
        );
        assert_eq!(
            kvs_part(&after.stdout),
            kvs_part(&before.stdout),
            "{}: keys, values and their revisions after restart",
            c.members[i].name
        );
    }

    // The compaction survived the restart.
    let old = c.etcdctl(&["get", "r01", &format!("--rev={}", rev - 4)]);
    assert!(
        !old.ok() && old.stderr.contains("required revision has been compacted"),
        "a read below the compacted revision after restart: {old}"
    );
    let at = c
        .etcdctl(&["get", "r01", &format!("--rev={}", rev - 3)])
        .expect_ok("read at the compacted revision");
    assert_eq!(at.stdout, "r01\nvalue-1\n");

    // The next write continues the sequence.
    let put = c
        .etcdctl_at(2, &["put", "after", "restart", "-w", "json"])
        .expect_ok("put after restart");
    assert_eq!(
        header_revision(&put.stdout),
        Some(rev + 1),
        "{}",
        put.stdout
    );
    let get = c.etcdctl(&["get", "after"]).expect_ok("get after restart");
    assert_eq!(get.stdout, "after\nrestart\n");
}
