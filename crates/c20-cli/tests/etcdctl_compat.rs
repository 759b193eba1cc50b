//! etcdctl compatibility: one sequence of etcdctl 3.4 commands runs against a 3-node real etcd
//! cluster and a 3-node c20 cluster; the transcripts (command, exit status, normalized stdout and
//! stderr) must be identical.
//!
//! Every command runs sequentially, so revisions are deterministic and are compared exactly.
//! What legitimately differs (ids, ports, durations, versions, sizes, hashes, raft term/index,
//! which member leads) is replaced by `support::normalize`.
//!
//! Self-check of the normalizer: `C20_TESTS_USE_ETCD=1 cargo test --test etcdctl_compat` runs the
//! "c20" side on a second, independent etcd cluster; it must pass.
//! Both transcripts are written to `$CARGO_TARGET_TMPDIR/etcdctl_compat.{etcd,c20}.txt`.

mod support;

use std::time::Duration;
use support::{
    hashkv_hashes, header_revision, normalize, require_etcd, run_etcdctl, sort_json_members,
    sort_lines, Cluster, Flavor, ETCDCTL_TIMEOUT,
};

#[derive(Clone, Copy)]
enum Target {
    Member(usize),
    All,
}

struct Step {
    target: Target,
    args: Vec<String>,
    stdin: Option<Vec<u8>>,
    /// Shown in the transcript instead of a large stdin.
    stdin_note: Option<String>,
    sort_lines: bool,
    sort_members: bool,
}

impl Step {
    /// Compare the output with its lines sorted (line order not defined by etcdctl/etcd).
    fn sorted(&mut self) -> &mut Self {
        self.sort_lines = true;
        self
    }

    /// `member list -w json`: compare with members ordered by name (etcd orders them by id).
    fn members_sorted(&mut self) -> &mut Self {
        self.sort_members = true;
        self
    }

    fn title(&self) -> String {
        let who = match self.target {
            Target::Member(i) => format!("n{}", i + 1),
            Target::All => "all".to_string(),
        };
        let args: Vec<String> = self.args.iter().map(|a| shell_quote(a)).collect();
        let mut t = format!("$ [{who}] etcdctl {}", args.join(" "));
        match (&self.stdin_note, &self.stdin) {
            (Some(note), _) => t.push_str(&format!(" <<< ({note})")),
            (None, Some(data)) => {
                t.push_str(" <<EOF\n");
                t.push_str(&String::from_utf8_lossy(data));
                t.push_str("EOF");
            }
            (None, None) => {}
        }
        t
    }
}

fn shell_quote(a: &str) -> String {
    if a.is_empty() {
        return "\"\"".to_string();
    }
    if a.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_=.,:/".contains(c))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

#[derive(Default)]
struct Seq {
    steps: Vec<Step>,
}

impl Seq {
    fn push(&mut self, target: Target, args: &[&str], stdin: Option<Vec<u8>>) -> &mut Step {
        self.steps.push(Step {
            target,
            args: args.iter().map(|s| s.to_string()).collect(),
            stdin,
            stdin_note: None,
            sort_lines: false,
            sort_members: false,
        });
        self.steps.last_mut().expect("just pushed")
    }

    /// Against member n1.
    fn run(&mut self, args: &[&str]) -> &mut Step {
        self.push(Target::Member(0), args, None)
    }

    /// Against member `i` (0-based).
    fn on(&mut self, i: usize, args: &[&str]) -> &mut Step {
        self.push(Target::Member(i), args, None)
    }

    /// With `--endpoints` = all three members.
    fn all(&mut self, args: &[&str]) -> &mut Step {
        self.push(Target::All, args, None)
    }

    fn with_stdin(&mut self, args: &[&str], stdin: &str) -> &mut Step {
        self.push(Target::Member(0), args, Some(stdin.as_bytes().to_vec()))
    }

    fn with_big_stdin(&mut self, args: &[&str], len: usize) -> &mut Step {
        let step = self.push(Target::Member(0), args, Some(vec![b'x'; len]));
        step.stdin_note = Some(format!("stdin: {len} bytes of 'x'"));
        step
    }

    /// `etcdctl txn` in non-interactive mode reads three sections from stdin — compares,
    /// success ops, failure ops — each ended by an empty line.
    fn txn(
        &mut self,
        extra: &[&str],
        compares: &[&str],
        success: &[&str],
        failure: &[&str],
    ) -> &mut Step {
        let mut stdin = String::new();
        for section in [compares, success, failure] {
            for line in section {
                stdin.push_str(line);
                stdin.push('\n');
            }
            stdin.push('\n');
        }
        let mut args = vec!["txn"];
        args.extend_from_slice(extra);
        self.with_stdin(&args, &stdin)
    }
}

/// The command sequence. Comments give the store revision after each write (a fresh cluster is
/// at revision 1).
fn sequence() -> Vec<Step> {
    let mut s = Seq::default();

    // ---- put
    s.run(&["put", "a", "1"]); // 2
    s.run(&["put", "b", "2"]); // 3
    s.run(&["put", "--prev-kv", "a", "11"]); // 4, prints the previous a=1
    s.run(&["put", "c", "3"]); // 5
    s.run(&["put", "ab", "4"]); // 6
    s.run(&["put", "--prev-kv", "fresh", "x"]); // 7, no previous value
    s.run(&["put", "d", "5", "-w", "json"]); // 8
    s.on(1, &["put", "e", "6", "-w", "json"]); // 9, through n2
    s.run(&["put", "f", "7", "-w", "fields"]); // 10

    // ---- get
    s.run(&["get", "a"]);
    s.run(&["get", "a", "-w", "json"]);
    s.run(&["get", "a", "-w", "fields"]);
    s.run(&["get", "--prefix", "a"]);
    s.run(&["get", "--from-key", "b"]);
    s.run(&["get", "a", "c"]);
    s.run(&["get", "nokey"]);
    s.run(&["get", "nokey", "-w", "json"]);
    s.run(&["get", "--prefix", "", "--limit=2"]);
    s.run(&["get", "--from-key", "", "--limit=2", "-w", "json"]);
    s.run(&["get", "a", "--rev=2"]);
    s.run(&["get", "a", "--rev=3", "-w", "json"]);
    s.run(&["get", "--prefix", "", "--rev=5"]);
    s.run(&["get", "--prefix", "", "--rev=1"]);
    for sort in [
        &["--sort-by=MODIFY", "--order=DESCEND"][..],
        &["--sort-by=CREATE", "--order=ASCEND"][..],
        &["--sort-by=VERSION", "--order=DESCEND"][..],
        &["--sort-by=VERSION"][..],
        &["--sort-by=VALUE"][..],
        &["--sort-by=VALUE", "--order=DESCEND"][..],
        &["--sort-by=KEY", "--order=DESCEND"][..],
        &["--order=DESCEND"][..],
        &["--sort-by=MODIFY"][..],
        &[
            "--sort-by=VALUE",
            "--order=DESCEND",
            "--limit=2",
            "-w",
            "json",
        ][..],
    ] {
        let mut args = vec!["get", "--prefix", ""];
        args.extend_from_slice(sort);
        s.run(&args);
    }
    s.run(&[
        "get",
        "--from-key",
        "b",
        "--sort-by=CREATE",
        "--order=DESCEND",
        "--keys-only",
    ]);
    s.run(&["get", "--prefix", "a", "--keys-only"]);
    s.run(&["get", "--prefix", "", "--keys-only", "-w", "json"]);
    s.run(&["get", "--prefix", "a", "--print-value-only"]);
    // etcdctl 3.4 has no --count-only (3.5 added it); the count is in the json output.
    s.run(&["get", "--prefix", "", "--limit=1", "-w", "json"]);

    // ---- reads served by the other members
    s.on(1, &["get", "--prefix", "a"]);
    s.on(2, &["get", "b", "-w", "json"]);
    // n3 has applied everything up to the linearizable read above, so a serializable read there
    // is deterministic.
    s.on(2, &["get", "b", "--consistency=s"]);
    s.on(
        2,
        &["get", "--from-key", "", "--keys-only", "--consistency=s"],
    );

    // ---- del
    s.run(&["del", "nokey"]); // 10: deleting nothing makes no revision
    s.run(&["del", "--prev-kv", "b"]); // 11
    s.run(&["del", "--prefix", "a", "-w", "json"]); // 12: a and ab, one revision
    s.on(2, &["del", "c"]); // 13, through n3
    s.run(&["del", "x", "z"]); // nothing in [x, z)
    s.run(&["del", "e", "f"]); // 14: [e, f) is e
    s.run(&["get", "--from-key", ""]);

    // ---- errors and --ignore-value
    s.run(&["put", "--ignore-value", "nokey"]); // etcdserver: key not found
    s.run(&["put", "--ignore-value", "fresh"]); // 15: value kept, version 2
    s.run(&["get", "fresh", "-w", "json"]);
    s.run(&["get", ""]); // etcdserver: key is not provided
    s.run(&["put", "", "v"]);
    s.run(&["del", ""]);
    // a value read from stdin (trailing newline included)
    s.with_stdin(&["put", "stdinkey"], "hello\nworld\n"); // 16
    s.run(&["get", "stdinkey"]);
    s.run(&["get", "stdinkey", "-w", "json"]);

    // ---- txn (keys now: d=5 c8, f=7 c10, fresh=x c7 m15 v2, stdinkey c16)
    s.txn(
        &[],
        &[
            r#"value("d") = "5""#,
            r#"version("d") = "1""#,
            r#"create("f") = "10""#,
            r#"mod("fresh") > "7""#,
        ],
        &["put t1 a", "get d", "del fresh"],
        &["put never x"],
    ); // 17, SUCCESS
    s.txn(
        &["-w", "json"],
        &[r#"value("d") != "5""#],
        &["put never x"],
        &["put t2 b", "get t1"],
    ); // 18, FAILURE; the get after the put sees revision 18
    s.txn(
        &["-w", "json"],
        &[r#"create("d") < "8""#],
        &["put never x"],
        &["get d"],
    ); // FAILURE, read-only: 18
    s.txn(
        &[],
        &[
            r#"version("nope") = "0""#,
            r#"create("nope") = "0""#,
            r#"mod("nope") = "0""#,
        ],
        &["put t3 c"],
        &["put never x"],
    ); // 19: a missing key compares as version/create/mod 0
    s.txn(
        &[],
        &[r#"value("nope") != "x""#],
        &["put never x"],
        &["put t4 d"],
    ); // 20: value compare on a missing key is false
    s.txn(
        &["-w", "json"],
        &[
            r#"value("t1") < "b""#,
            r#"value("t1") > """#,
            r#"mod("t1") = "17""#,
            r#"version("t1") != "2""#,
        ],
        &["put t1 aa", "get t1"],
        &["put never x"],
    ); // 21
    s.txn(
        &[],
        &[],
        &["put t5 x", "put t6 y", "get t --prefix --keys-only"],
        &[],
    ); // 22, no compares: SUCCESS
    s.txn(&[], &[r#"version("d") > "5""#], &["put never x"], &[]); // FAILURE with no ops: 22
    let too_many: Vec<String> = (1..=129).map(|i| format!("put m{i:03} x")).collect();
    let too_many: Vec<&str> = too_many.iter().map(|x| x.as_str()).collect();
    s.txn(&[], &[], &too_many, &[]); // etcdserver: too many operations in txn request
    s.txn(&[], &[], &too_many[..128], &[]); // 23: exactly 128 is allowed
    s.run(&["del", "--prefix", "m"]); // 24: 128
    s.txn(&[], &[], &["put dup 1", "put dup 2"], &[]); // etcdserver: duplicate key given in txn request
    s.txn(&[], &[], &["put dup 1", "del dup"], &[]); // same
    s.txn(&[], &[], &["del --prefix t", "put t1 z"], &[]); // a put inside a deleted range: same
    s.txn(&[], &[], &["put dup 1", "get dup"], &[]); // 25: reading a written key is fine
    s.run(&["get", "--prefix", "t", "-w", "json"]);

    // ---- compaction (revision 25)
    s.run(&["compact", "21"]);
    s.run(&["get", "t1", "--rev=20"]); // required revision has been compacted
    s.run(&["get", "t1", "--rev=21"]);
    s.run(&["get", "t1", "--rev=25"]);
    s.run(&["get", "t1", "--rev=26"]); // required revision is a future revision
    s.run(&["get", "t1", "--rev=1000"]);
    s.run(&["compact", "21"]); // compacted
    s.run(&["compact", "10"]); // compacted
    s.run(&["compact", "1000"]); // future
    s.run(&["compact", "23", "--physical"]);
    s.run(&["get", "--prefix", "", "--rev=22"]); // compacted

    // ---- request size: etcd's default --max-request-bytes is 1.5 MiB. A value that large does
    // not fit in an argument (Linux limits one argument to 128 KiB), so it comes from stdin.
    s.with_big_stdin(&["put", "big"], 1_677_722); // 1.6 MiB: etcdserver: request is too large
    s.with_big_stdin(&["put", "big"], 1_468_006); // 26: 1.4 MiB is accepted
    s.run(&["get", "big", "--keys-only", "-w", "json"]);
    s.run(&["del", "big"]); // 27

    // ---- cluster and maintenance; the linearizable reads first make n2 and n3 apply everything
    s.on(1, &["get", "d"]);
    s.on(2, &["get", "d"]);
    s.run(&["member", "list"]).sorted();
    s.run(&["member", "list", "-w", "table"]).sorted();
    s.run(&["member", "list", "-w", "json"]).members_sorted();
    s.all(&["endpoint", "status"]);
    s.all(&["endpoint", "status", "-w", "json"]);
    s.all(&["endpoint", "status", "-w", "table"]);
    s.run(&["endpoint", "status", "-w", "fields"]);
    s.run(&["endpoint", "health"]);
    s.all(&["endpoint", "health"]).sorted();
    s.run(&["endpoint", "health", "-w", "json"]);
    s.run(&["endpoint", "health", "-w", "table"]);
    s.all(&["endpoint", "hashkv"]);
    s.all(&["endpoint", "hashkv", "-w", "json"]);
    s.all(&["endpoint", "hashkv", "--rev=25", "-w", "table"]);
    s.on(2, &["put", "last", "1", "-w", "json"]); // 28, through n3
    s.run(&["get", "--from-key", "", "-w", "json"]);

    s.steps
}

fn run_step(c: &Cluster, step: &Step) -> String {
    let endpoints = match step.target {
        Target::Member(i) => c.members[i].client_addr(),
        Target::All => c.endpoints_all(),
    };
    let args: Vec<&str> = step.args.iter().map(|a| a.as_str()).collect();
    let out = run_etcdctl(&endpoints, &args, step.stdin.as_deref(), ETCDCTL_TIMEOUT);
    let mut stdout = normalize(&out.stdout, c);
    let mut stderr = normalize(&out.stderr, c);
    if step.sort_members {
        stdout = sort_json_members(&stdout);
    }
    if step.sort_lines {
        stdout = sort_lines(&stdout);
        stderr = sort_lines(&stderr);
    }
    let status = if out.timed_out {
        "killed after timeout".to_string()
    } else {
        match out.status {
            Some(code) => code.to_string(),
            None => "killed by a signal".to_string(),
        }
    };
    format!(
        "{}\nexit: {status}\n--- stdout\n{}--- stderr\n{}",
        step.title(),
        with_final_newline(stdout),
        with_final_newline(stderr)
    )
}

fn with_final_newline(mut s: String) -> String {
    if !s.is_empty() && !s.ends_with('\n') {
        s.push_str("\n\\ (no newline at end)\n");
    }
    s
}

fn transcript(c: &Cluster, steps: &[Step]) -> Vec<String> {
    steps.iter().map(|step| run_step(c, step)).collect()
}

/// Line diff (longest common subsequence): "  " same, "- " only in `a`, "+ " only in `b`.
fn line_diff(a: &str, b: &str) -> String {
    let x: Vec<&str> = a.lines().collect();
    let y: Vec<&str> = b.lines().collect();
    let (n, m) = (x.len(), y.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if x[i] == y[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && x[i] == y[j] {
            out.push_str(&format!("  {}\n", x[i]));
            i += 1;
            j += 1;
        } else if j == m || (i < n && lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("- {}\n", x[i]));
            i += 1;
        } else {
            out.push_str(&format!("+ {}\n", y[j]));
            j += 1;
        }
    }
    out
}

/// Every member reports the same KV hash at the same revision.
fn assert_hashkv_agrees(c: &Cluster) {
    let out = c
        .etcdctl_all(&["endpoint", "hashkv", "-w", "json"])
        .expect_ok("endpoint hashkv");
    let hashes = hashkv_hashes(&out.stdout);
    assert_eq!(
        hashes.len(),
        c.len(),
        "{}: one hash per member expected: {}",
        c.flavor.label(),
        out.stdout
    );
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "{}: members disagree on the KV hash: {}",
        c.flavor.label(),
        out.stdout
    );
}

#[test]
fn etcdctl_output_matches_real_etcd() {
    require_etcd();
    let mut etcd = Cluster::start(Flavor::Etcd, 3);
    let mut c20 = Cluster::start(Flavor::C20, 3);
    etcd.wait_healthy(Duration::from_secs(30));
    c20.wait_healthy(Duration::from_secs(30));
    // `endpoint status` output hides which member leads; check here that all agree on one.
    etcd.wait_leader(Duration::from_secs(30));
    c20.wait_leader(Duration::from_secs(30));

    let steps = sequence();
    let expected = transcript(&etcd, &steps);
    let actual = transcript(&c20, &steps);

    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let etcd_file = dir.join("etcdctl_compat.etcd.txt");
    let c20_file = dir.join("etcdctl_compat.c20.txt");
    let _ = std::fs::write(&etcd_file, expected.join("\n"));
    let _ = std::fs::write(&c20_file, actual.join("\n"));

    let differing: Vec<usize> = (0..steps.len())
        .filter(|&i| expected[i] != actual[i])
        .collect();
    if !differing.is_empty() {
        let mut msg = format!(
            "{} of {} etcdctl steps print differently on c20 than on etcd 3.4 \
             (- etcd, + c20; full transcripts: {} and {})\n",
            differing.len(),
            steps.len(),
            etcd_file.display(),
            c20_file.display()
        );
        const SHOWN: usize = 6;
        for &i in differing.iter().take(SHOWN) {
            msg.push_str(&format!("\n===== step {} =====\n", i + 1));
            msg.push_str(&line_diff(&expected[i], &actual[i]));
        }
        if differing.len() > SHOWN {
            msg.push_str("\nother differing steps:\n");
            for &i in &differing[SHOWN..] {
                let title = steps[i].title();
                msg.push_str(&format!(
                    "  step {}: {}\n",
                    i + 1,
                    title.lines().next().unwrap_or("")
                ));
            }
        }
        panic!("{msg}");
    }

    // Beyond the transcript: what normalization hides must still be coherent.
    for c in [&etcd, &c20] {
        assert_hashkv_agrees(c);
        let out = c
            .etcdctl(&["get", "last", "-w", "json"])
            .expect_ok("get last");
        assert_eq!(
            header_revision(&out.stdout),
            Some(28),
            "{}: {}",
            c.flavor.label(),
            out.stdout
        );
    }
    etcd.wait_leader(Duration::from_secs(10));
    c20.wait_leader(Duration::from_secs(10));
}
