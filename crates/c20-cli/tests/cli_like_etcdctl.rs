//! `c20 txn -i`, `c20 watch` and `c20 lease` print what etcdctl prints for the same request,
//! both run against the same c20 member.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{run_etcdctl, Cluster, Flavor, C20_BIN, ETCDCTL_BIN, ETCDCTL_TIMEOUT};

/// Runs `c20 <args> --endpoints <ep>` with `stdin`; returns (exit code, stdout).
fn c20(ep: &str, args: &[&str], stdin: &str) -> (Option<i32>, String) {
    let mut child = Command::new(C20_BIN)
        .args(args)
        .arg("--endpoints")
        .arg(ep)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run c20");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn etcdctl(ep: &str, args: &[&str], stdin: &str) -> (Option<i32>, String) {
    let stdin = (!stdin.is_empty()).then_some(stdin.as_bytes());
    let o = run_etcdctl(ep, args, stdin, ETCDCTL_TIMEOUT);
    (o.status, o.stdout)
}

/// The first `n` stdout lines of a long-running watch command, which is then killed.
fn watch_lines(mut cmd: Command, n: usize) -> Vec<String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("start watch");
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    while lines.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn a_serving_member_runs_without_transparent_huge_pages_and_returns_freed_memory() {
    let mut cluster = Cluster::start(Flavor::C20, 1);
    cluster.wait_healthy(Duration::from_secs(30));
    let pid = cluster.members[0].child.as_ref().expect("member runs").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let thp = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .expect("the kernel reports THP_enabled");
    assert_eq!(thp.trim(), "0", "transparent huge pages stay on: {thp:?}");
    // The thread that lets the allocator return freed memory while the member is idle.
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("proc tasks")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect();
    assert!(
        threads.iter().any(|t| t == "c20-mem-return"),
        "no memory-return thread among {threads:?}"
    );
}

#[test]
fn c20_commands_print_what_etcdctl_prints() {
    let mut cluster = Cluster::start(Flavor::C20, 1);
    cluster.wait_healthy(Duration::from_secs(30));
    let ep = cluster.members[0].client_addr();
    for (k, v) in [("k", "v"), ("k2", "v2"), ("k", "v3")] {
        assert_eq!(c20(&ep, &["put", k, v], "").0, Some(0));
    }

    // txn -i: the prompts, then the result (read-only, so both runs see the same state).
    let txn = "value(\"k\") = \"v3\"\n\nget k\nget k2\n\nget nope\n\n";
    assert_eq!(
        c20(&ep, &["txn", "-i"], txn),
        etcdctl(&ep, &["txn", "-i"], txn)
    );
    let failing = "value(\"k\") = \"other\"\n\nget k\n\nget k2\n\n";
    assert_eq!(
        c20(&ep, &["txn", "-i"], failing),
        etcdctl(&ep, &["txn", "-i"], failing)
    );

    // watch --rev replays the same events in the same format.
    let mut ours = Command::new(C20_BIN);
    ours.args([
        "watch",
        "--rev=2",
        "--prefix",
        "k",
        "--prev-kv",
        "--endpoints",
        &ep,
    ]);
    let mut theirs = Command::new(ETCDCTL_BIN);
    theirs
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={ep}"))
        .args(["watch", "--rev=2", "--prefix", "k", "--prev-kv"]);
    let expected = watch_lines(theirs, 3 + 3 + 5);
    assert_eq!(expected.len(), 11, "{expected:?}");
    assert_eq!(watch_lines(ours, 11), expected);

    // lease: a lease granted by c20 reads back the same through both.
    let (code, granted) = c20(&ep, &["lease", "grant", "100"], "");
    assert_eq!(code, Some(0));
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(granted, format!("lease {id} granted with TTL(100s)\n"));
    assert_eq!(
        c20(&ep, &["put", "--lease", &id, "leased", "x"], "").0,
        Some(0)
    );
    for args in [
        &["lease", "list"][..],
        &["lease", "keep-alive", "--once", &id][..],
        &["get", "leased"][..],
    ] {
        assert_eq!(c20(&ep, args, ""), etcdctl(&ep, args, ""), "{args:?}");
    }
    let ttl = |(code, out): (Option<i32>, String)| {
        // The remaining TTL may tick between the two calls.
        (
            code,
            out.split(", remaining").next().unwrap().to_string(),
            out.contains("attached keys([leased])"),
        )
    };
    assert_eq!(
        ttl(c20(&ep, &["lease", "timetolive", "--keys", &id], "")),
        ttl(etcdctl(&ep, &["lease", "timetolive", "--keys", &id], ""))
    );
    assert_eq!(
        c20(&ep, &["lease", "revoke", &id], "").1,
        format!("lease {id} revoked\n")
    );
    assert_eq!(
        c20(&ep, &["lease", "timetolive", &id], ""),
        etcdctl(&ep, &["lease", "timetolive", &id], "")
    );
}
