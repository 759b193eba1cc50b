//! etcdctl compatibility for Watch and Lease: one scenario of etcdctl 3.4 commands, with watches
//! running in the background while writes happen, runs against a 3-node real etcd cluster and a
//! 3-node c20 cluster; the transcripts must be identical after normalization.
//!
//! Lease ids differ between clusters: each id granted is captured as a variable (`{L1}`), used
//! in later commands, and printed as its variable name. Remaining TTLs depend on timing: they
//! are checked to lie within the granted TTL and then printed as `<N>`.
//! `C20_TESTS_USE_ETCD=1` runs the "c20" side on a second etcd cluster (the self-check).

mod support;

use regex::Regex;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use support::{
    normalize, require_etcd, run_etcdctl, Cluster, Flavor, ETCDCTL_BIN, ETCDCTL_TIMEOUT,
};

enum Action {
    /// Run etcdctl on member `on` (`{Lx}` in args is replaced by lease variable x).
    Run(usize, Vec<String>),
    /// `lease grant TTL` on n1, keeping the id printed as variable `var`.
    Grant(&'static str, i64),
    /// Start `etcdctl watch ...` on member `on` in the background as `name`.
    Watch(&'static str, usize, Vec<String>),
    /// Wait for `lines` lines of the background watch `name`, then stop it and record them.
    Collect(&'static str, usize),
    /// Poll `lease timetolive` of a variable until it reports the lease expired (bounded).
    UntilExpired(&'static str),
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn scenario() -> Vec<Action> {
    use Action::*;
    vec![
        // ---- watch: live on n1 and n2 while the writes happen, then replays with --rev.
        // A background etcdctl says nothing when its watch is created, so a live watch names
        // the next revision (a fresh cluster is at 1) instead of racing the first write.
        Watch(
            "W1",
            0,
            args(&["watch", "--rev=2", "--prefix", "w/", "--prev-kv"]),
        ),
        Watch("W2", 1, args(&["watch", "--rev=2", "w/a"])),
        Run(0, args(&["put", "w/a", "1"])),       // 2
        Run(0, args(&["put", "w/a", "2"])),       // 3
        Run(1, args(&["put", "w/b", "x"])),       // 4, through n2
        Run(0, args(&["del", "w/a"])),            // 5
        Run(0, args(&["put", "w/c", "1"])),       // 6
        Run(0, args(&["del", "--prefix", "w/"])), // 7: b and c at one revision
        Collect("W1", 3 + 5 + 3 + 5 + 3 + 5 + 5),
        Collect("W2", 9),
        Watch("R1", 0, args(&["watch", "--rev=3", "--prefix", "w/"])),
        Collect("R1", 18),
        Watch("R2", 2, args(&["watch", "--rev=2", "w/a", "--prev-kv"])),
        Collect("R2", 13),
        Run(0, args(&["compact", "4"])),
        Run(0, args(&["watch", "--rev=2", "w/a"])), // canceled: compacted
        Watch("R3", 0, args(&["watch", "--rev=4", "--prefix", "w/"])),
        Collect("R3", 3 + 3 + 3 + 6),
        // ---- lease
        Grant("L1", 60),
        Run(0, args(&["put", "--lease={L1}", "l/a", "1"])),
        Run(1, args(&["put", "--lease={L1}", "l/b", "2"])),
        Run(0, args(&["lease", "timetolive", "{L1}"])),
        Run(2, args(&["lease", "timetolive", "--keys", "{L1}"])),
        Run(0, args(&["lease", "keep-alive", "--once", "{L1}"])),
        Run(1, args(&["lease", "keep-alive", "--once", "{L1}"])),
        Run(0, args(&["lease", "list"])),
        Run(0, args(&["get", "--prefix", "l/"])),
        Watch("W3", 1, args(&["watch", "--rev=10", "--prefix", "l/"])), // the revoke's revision
        Run(0, args(&["lease", "revoke", "{L1}"])),
        Run(0, args(&["get", "--prefix", "l/"])),
        Run(0, args(&["lease", "timetolive", "{L1}"])),
        Run(0, args(&["lease", "revoke", "{L1}"])),
        Run(0, args(&["lease", "keep-alive", "--once", "{L1}"])),
        Run(0, args(&["put", "--lease={L1}", "l/c", "3"])),
        Run(0, args(&["lease", "grant", "9000000001"])),
        Grant("L2", 1), // raised to the minimum TTL
        Run(0, args(&["lease", "timetolive", "{L2}"])),
        Run(2, args(&["put", "--lease={L2}", "l/e", "1"])),
        UntilExpired("L2"),
        Run(0, args(&["get", "--prefix", "l/"])),
        Collect("W3", 6 + 3 + 3),
        Run(0, args(&["lease", "list"])),
    ]
}

/// A background etcdctl whose stdout lines are collected as they come.
struct Background {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: thread::JoinHandle<String>,
}

fn spawn_watch(endpoint: &str, args: &[String]) -> Background {
    let mut child = Command::new(ETCDCTL_BIN)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start etcdctl watch");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = child.stdout.take().unwrap();
    let sink = lines.clone();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let mut err = child.stderr.take().unwrap();
    let stderr = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    Background {
        child,
        lines,
        stderr,
    }
}

/// Runs the scenario on `c`; returns the transcript, one entry per action.
fn play(c: &Cluster) -> Vec<String> {
    let mut vars: BTreeMap<&str, String> = BTreeMap::new();
    let mut watches: BTreeMap<&str, Background> = BTreeMap::new();
    let mut out = Vec::new();
    let remaining = Regex::new(r"granted with TTL\((\d+)s\), remaining\((-?\d+)s\)").unwrap();
    // etcd lists a lease's keys in no defined order.
    let attached = Regex::new(r"attached keys\(\[([^\]]*)\]\)").unwrap();
    let fill = |a: &[String], vars: &BTreeMap<&str, String>| -> Vec<String> {
        a.iter()
            .map(|s| {
                let mut s = s.clone();
                for (k, v) in vars {
                    s = s.replace(&format!("{{{k}}}"), v);
                }
                s
            })
            .collect()
    };
    // Lease ids print as their variable; remaining TTLs are range-checked, then hidden.
    let clean = |s: &str, vars: &BTreeMap<&str, String>| -> String {
        let mut s = normalize(s, c);
        for (k, v) in vars {
            s = s.replace(v.as_str(), &format!("<{k}>"));
        }
        let s = attached.replace_all(&s, |caps: &regex::Captures| {
            let mut keys: Vec<&str> = caps[1].split(' ').collect();
            keys.sort();
            format!("attached keys([{}])", keys.join(" "))
        });
        remaining
            .replace_all(&s, |caps: &regex::Captures| {
                let granted: i64 = caps[1].parse().unwrap();
                let left: i64 = caps[2].parse().unwrap();
                assert!(
                    (0..=granted).contains(&left),
                    "{}: remaining {left}s of {granted}s",
                    c.flavor.label()
                );
                format!("granted with TTL({granted}s), remaining(<N>s)")
            })
            .into_owned()
    };
    for action in scenario() {
        match action {
            Action::Run(on, a) => {
                let a = fill(&a, &vars);
                let refs: Vec<&str> = a.iter().map(String::as_str).collect();
                let o = run_etcdctl(&c.members[on].client_addr(), &refs, None, ETCDCTL_TIMEOUT);
                out.push(format!(
                    "$ [n{}] etcdctl {}\nexit: {:?}\n--- stdout\n{}--- stderr\n{}",
                    on + 1,
                    clean(&refs.join(" "), &vars),
                    o.status,
                    clean(&o.stdout, &vars),
                    clean(&o.stderr, &vars)
                ));
            }
            Action::Grant(var, ttl) => {
                let ttl = ttl.to_string();
                let o = run_etcdctl(
                    &c.members[0].client_addr(),
                    &["lease", "grant", &ttl],
                    None,
                    ETCDCTL_TIMEOUT,
                )
                .expect_ok("lease grant");
                let id = o
                    .stdout
                    .split_whitespace()
                    .nth(1)
                    .expect("lease id in grant output")
                    .to_string();
                vars.insert(var, id);
                out.push(format!(
                    "$ [n1] etcdctl lease grant {ttl}\n--- stdout\n{}",
                    clean(&o.stdout, &vars)
                ));
            }
            Action::Watch(name, on, a) => {
                watches.insert(name, spawn_watch(&c.members[on].client_addr(), &a));
                out.push(format!(
                    "$ [n{}] etcdctl {} &  # {name}",
                    on + 1,
                    a.join(" ")
                ));
            }
            Action::Collect(name, n) => {
                let mut w = watches.remove(name).expect("watch started");
                let deadline = Instant::now() + Duration::from_secs(20);
                while w.lines.lock().unwrap().len() < n && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(10));
                }
                let _ = w.child.kill();
                let _ = w.child.wait();
                let lines = w.lines.lock().unwrap().clone();
                let stderr = w.stderr.join().unwrap_or_default();
                out.push(format!(
                    "# {name}: {} lines\n--- stdout\n{}\n--- stderr\n{}",
                    lines.len(),
                    clean(&lines.join("\n"), &vars),
                    clean(&stderr, &vars)
                ));
            }
            Action::UntilExpired(var) => {
                let id = vars[var].clone();
                let deadline = Instant::now() + Duration::from_secs(30);
                let last = loop {
                    let o = run_etcdctl(
                        &c.members[0].client_addr(),
                        &["lease", "timetolive", &id],
                        None,
                        ETCDCTL_TIMEOUT,
                    );
                    if o.stdout.contains("already expired") || Instant::now() >= deadline {
                        break o;
                    }
                    thread::sleep(Duration::from_millis(100));
                };
                out.push(format!(
                    "$ [n1] etcdctl lease timetolive {{{var}}}  # until expired\n--- stdout\n{}",
                    clean(&last.stdout, &vars)
                ));
            }
        }
    }
    out
}

#[test]
fn etcdctl_watch_and_lease_match_real_etcd() {
    require_etcd();
    let mut etcd = Cluster::start(Flavor::Etcd, 3);
    let mut c20 = Cluster::start(Flavor::C20, 3);
    etcd.wait_healthy(Duration::from_secs(30));
    c20.wait_healthy(Duration::from_secs(30));
    etcd.wait_leader(Duration::from_secs(30));
    c20.wait_leader(Duration::from_secs(30));

    let expected = play(&etcd);
    let actual = play(&c20);
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let _ = std::fs::write(
        dir.join("etcdctl_watch_lease.etcd.txt"),
        expected.join("\n"),
    );
    let _ = std::fs::write(dir.join("etcdctl_watch_lease.c20.txt"), actual.join("\n"));
    let differing: Vec<String> = expected
        .iter()
        .zip(&actual)
        .filter(|(e, a)| e != a)
        .map(|(e, a)| format!("----- etcd:\n{e}\n----- c20:\n{a}\n"))
        .collect();
    assert!(
        differing.is_empty(),
        "{} of {} steps differ:\n{}",
        differing.len(),
        expected.len(),
        differing.join("\n")
    );
}
