//! Harness for integration tests that drive real server processes.
//!
//! A [`Cluster`] is n processes on 127.0.0.1 — either `c20 serve` or the real `etcd` — started
//! with the same etcd flags, each logging to `DIR/nI.log` inside a temporary directory. Tests talk
//! to it only through the real `etcdctl` (v3 API), exactly as a user would, and compare outputs
//! after [`normalize`] has replaced what legitimately differs between two clusters (ids, ports,
//! durations, versions, sizes, hashes, raft term and index).
//!
//! Environment knobs:
//! - `C20_TESTS_USE_ETCD=1`: every cluster asked for as [`Flavor::C20`] runs the real etcd
//!   instead. This checks the tests themselves against the reference implementation (for the
//!   etcdctl compatibility test it compares two independent etcd clusters, which is the
//!   self-check of the normalizer).
//! - `C20_TESTS_KEEP_DIR=1`: keep the temporary directories (data and logs) after the test.
//!
//! Every process started here is killed when its [`Cluster`] is dropped, also when a test fails;
//! on failure the tail of every member's log is printed.
#![allow(dead_code)]

pub mod proxy;

use regex::{Captures, Regex};
use std::cell::{Cell, OnceCell, RefCell};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

pub const ETCD_BIN: &str = "/usr/bin/etcd";
pub const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";
pub const C20_BIN: &str = env!("CARGO_BIN_EXE_c20");

/// Set to run the real etcd wherever a test asks for c20 (checks the tests against etcd).
pub const USE_ETCD_ENV: &str = "C20_TESTS_USE_ETCD";
/// Set to keep the clusters' temporary directories.
pub const KEEP_DIR_ENV: &str = "C20_TESTS_KEEP_DIR";

/// How long one etcdctl invocation may take before the harness kills it. etcdctl has its own
/// dial (2 s) and command (5 s) timeouts; this is only a backstop against a hung process.
pub const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(30);

/// A regex compiled once per call site (the `OnceLock` makes use inside loops cheap).
macro_rules! re {
    ($pat:expr) => {{
        static RE: OnceLock<Regex> = OnceLock::new();
        #[allow(clippy::regex_creation_in_loops)]
        RE.get_or_init(|| Regex::new($pat).expect("valid regex"))
    }};
}

fn env_flag(name: &str) -> bool {
    matches!(std::env::var(name), Ok(v) if !v.is_empty() && v != "0")
}

// ---------------------------------------------------------------------------------------------
// ports and prerequisites

/// A port that was free a moment ago (bind 127.0.0.1:0, read the port, close).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct ports: all listeners are held until every port is known, then dropped together,
/// so the kernel cannot hand out the same port twice.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    let ports = listeners
        .iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect();
    drop(listeners);
    ports
}

const INSTALL_HINT: &str = "install the Debian packages etcd-server and etcd-client \
     (`apt-get install -y etcd-server etcd-client`; CI installs them in .ci/run)";

/// Panics (never skips) when etcdctl is missing: every integration test drives clusters with it.
pub fn require_etcdctl() {
    if !Path::new(ETCDCTL_BIN).exists() {
        panic!("{ETCDCTL_BIN} not found: these tests drive clusters with the real etcdctl 3.4; {INSTALL_HINT}");
    }
}

/// Panics (never skips) when the reference etcd server is missing.
pub fn require_etcd() {
    if !Path::new(ETCD_BIN).exists() {
        panic!(
            "{ETCD_BIN} not found: this test compares c20 with the real etcd 3.4; {INSTALL_HINT}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// etcdctl

/// What one etcdctl run printed. `status` is the exit code (None: killed by a signal or by the
/// harness after [`ETCDCTL_TIMEOUT`]).
#[derive(Clone, Debug)]
pub struct Output {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.status == Some(0)
    }

    /// Panics with everything etcdctl printed unless it exited 0.
    pub fn expect_ok(self, what: &str) -> Output {
        if !self.ok() {
            panic!("{what}: etcdctl failed: {self}");
        }
        self
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}{}\n--- stdout\n{}--- stderr\n{}",
            self.status,
            if self.timed_out {
                " (killed after timeout)"
            } else {
                ""
            },
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `/usr/bin/etcdctl --endpoints=<endpoints> <args…>` with ETCDCTL_API=3, feeding `stdin`
/// (or /dev/null), and kills it after `timeout`.
pub fn run_etcdctl(
    endpoints: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Output {
    require_etcdctl();
    let mut cmd = Command::new(ETCDCTL_BIN);
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str() {
            if k.starts_with("ETCDCTL_") {
                cmd.env_remove(k);
            }
        }
    }
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {ETCDCTL_BIN}: {e}"));

    let writer = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let data = data.to_vec();
        thread::spawn(move || {
            // etcdctl may exit before reading everything (e.g. on a usage error): ignore EPIPE.
            let _ = pipe.write_all(&data);
        })
    });
    let mut out_pipe = child.stdout.take().expect("stdout pipe");
    let mut err_pipe = child.stderr.take().expect("stderr pipe");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });

    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) => {}
            Err(e) => panic!("waiting for etcdctl: {e}"),
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().ok();
        }
        thread::sleep(Duration::from_millis(5));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Output {
        status: status.and_then(|s| s.code()),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        timed_out,
    }
}

/// A c20-client connection to the first of `endpoints` (starting at index `first`, going
/// round) that answers; retried for up to a minute while members restart.
pub async fn connect_any(endpoints: &[String], first: usize) -> c20_client::Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for i in 0..endpoints.len() {
            let ep = &endpoints[(first + i) % endpoints.len()];
            if let Ok(c) = c20_client::Client::connect(&[ep.as_str()]).await {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "no member answers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to two minutes) until `counter` reaches `n`; panics naming `what` it waited for.
pub fn wait_count(counter: &std::sync::atomic::AtomicUsize, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while counter.load(std::sync::atomic::Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "stuck before {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// clusters

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    C20,
    Etcd,
}

impl Flavor {
    pub fn label(self) -> &'static str {
        match self {
            Flavor::C20 => "c20",
            Flavor::Etcd => "etcd",
        }
    }
}

pub struct Member {
    pub name: String,
    pub client_port: u16,
    /// Where the member listens for peers.
    pub peer_port: u16,
    /// Where peers are told to reach it, when that is a proxy in front of `peer_port`.
    pub advertised_peer_port: Option<u16>,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub child: Option<Child>,
    /// How many times this member's process was started.
    pub spawns: u32,
}

impl Member {
    /// `127.0.0.1:PORT`, the form given to `etcdctl --endpoints`.
    pub fn client_addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
    /// The peer URL other members use (the proxy's, when there is one).
    pub fn peer_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.advertised_peer_port.unwrap_or(self.peer_port)
        )
    }
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// Member and cluster ids as the cluster reports them (from `member list -w json`).
#[derive(Clone, Debug)]
pub struct IdMap {
    pub cluster_id: u64,
    /// (member id, member name)
    pub members: Vec<(u64, String)>,
}

/// One member's `endpoint status -w json`.
#[derive(Clone, Debug)]
pub struct EpStatus {
    pub member_id: u64,
    /// 0 when the member knows no leader.
    pub leader: u64,
    pub revision: i64,
    pub raft_term: u64,
    pub raft_index: u64,
}

pub struct Cluster {
    /// The flavor actually running (C20 becomes Etcd under `C20_TESTS_USE_ETCD`).
    pub flavor: Flavor,
    pub members: Vec<Member>,
    pub dir: tempfile::TempDir,
    pub token: String,
    ids: OnceCell<IdMap>,
    unknown_ids: RefCell<Vec<u64>>,
    /// Set once the logs went into a panic message (Drop then does not print them again).
    logs_shown: Cell<bool>,
    /// More server flags for every member.
    pub extra_args: Vec<String>,
}

impl Cluster {
    /// Spawns `n` members (`n1`…`nN`) with fresh data directories; does not wait for them.
    pub fn start(flavor: Flavor, n: usize) -> Cluster {
        let mut c = Cluster::stopped(flavor, n);
        c.start_all();
        c
    }

    /// Spawns `n` members started with `extra` server flags besides the usual ones (flags
    /// both etcd and c20 take, when the test also runs against etcd).
    pub fn start_with(flavor: Flavor, n: usize, extra: &[&str]) -> Cluster {
        let mut c = Cluster::stopped(flavor, n);
        c.extra_args = extra.iter().map(|s| s.to_string()).collect();
        c.start_all();
        c
    }

    /// Starts every member that is not running (the first start, or a restart after a stop).
    pub fn start_all(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i);
            }
        }
    }

    /// Plans `n` members (ports, directories) without starting any.
    pub fn stopped(flavor: Flavor, n: usize) -> Cluster {
        assert!(n >= 1);
        require_etcdctl();
        let flavor = if flavor == Flavor::C20 && env_flag(USE_ETCD_ENV) {
            Flavor::Etcd
        } else {
            flavor
        };
        if flavor == Flavor::Etcd {
            require_etcd();
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("c20-it-{}-", flavor.label()))
            .tempdir()
            .expect("create temp dir");
        let ports = free_ports(2 * n);
        let token = format!("c20-it-{}-{}", std::process::id(), ports[0]);
        let members = (0..n)
            .map(|i| Member {
                name: format!("n{}", i + 1),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                advertised_peer_port: None,
                data_dir: dir.path().join(format!("n{}", i + 1)),
                log_path: dir.path().join(format!("n{}.log", i + 1)),
                child: None,
                spawns: 0,
            })
            .collect();
        let mut c = Cluster {
            flavor,
            members,
            dir,
            token,
            ids: OnceCell::new(),
            unknown_ids: RefCell::new(Vec::new()),
            logs_shown: Cell::new(false),
            extra_args: Vec::new(),
        };
        if env_flag(KEEP_DIR_ENV) {
            c.dir.disable_cleanup(true);
            eprintln!(
                "[harness] {} cluster dir kept: {}",
                flavor.label(),
                c.dir.path().display()
            );
        }
        c
    }

    /// `--initial-cluster` of this cluster: `n1=http://…,n2=…`.
    pub fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The server flags of member `i`: the same etcd flags for c20 and etcd. A restart uses the
    /// same flags (`--initial-cluster-state new`); a member with an existing data directory must
    /// ignore the initial-cluster flags, as etcd does.
    pub fn server_args(&self, i: usize) -> Vec<String> {
        let m = &self.members[i];
        let initial = self.initial_cluster();
        let pairs: [(&str, String); 9] = [
            ("--name", m.name.clone()),
            ("--data-dir", m.data_dir.to_string_lossy().into_owned()),
            ("--listen-client-urls", m.client_url()),
            ("--advertise-client-urls", m.client_url()),
            (
                "--listen-peer-urls",
                format!("http://127.0.0.1:{}", m.peer_port),
            ),
            ("--initial-advertise-peer-urls", m.peer_url()),
            ("--initial-cluster", initial),
            ("--initial-cluster-state", "new".to_string()),
            ("--initial-cluster-token", self.token.clone()),
        ];
        let mut args = Vec::with_capacity(2 * pairs.len());
        for (flag, value) in pairs {
            args.push(flag.to_string());
            args.push(value);
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }

    fn spawn(&mut self, i: usize) {
        assert!(
            self.members[i].child.is_none(),
            "{} is already running",
            self.members[i].name
        );
        let args = self.server_args(i);
        let mut cmd = match self.flavor {
            Flavor::C20 => {
                let mut cmd = Command::new(C20_BIN);
                cmd.arg("serve").env("RUST_LOG", "info,openraft=warn");
                cmd
            }
            Flavor::Etcd => Command::new(ETCD_BIN),
        };
        for (k, _) in std::env::vars_os() {
            if let Some(k) = k.to_str() {
                // etcd refuses to start when an ETCD_* variable duplicates a flag.
                if k.starts_with("ETCD_") || k.starts_with("ETCDCTL_") {
                    cmd.env_remove(k);
                }
            }
        }
        let label = self.flavor.label();
        let m = &mut self.members[i];
        m.spawns += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", m.log_path.display()));
        let _ = writeln!(
            log,
            "=== harness: start #{} of {} ({label}): {:?}",
            m.spawns, m.name, args
        );
        let log_err = log.try_clone().expect("clone log file handle");
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label} for {}: {e}", m.name));
        m.child = Some(child);
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Comma-separated client addresses of all members.
    pub fn endpoints_all(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_addr())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Comma-separated client addresses of the members whose process is running.
    pub fn endpoints_running(&self) -> String {
        self.members
            .iter()
            .filter(|m| m.is_running())
            .map(|m| m.client_addr())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILL member `i` (std's `Child::kill` is SIGKILL on unix) and reap it.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM member `i`, wait up to `grace` for it to exit, then SIGKILL.
    pub fn terminate(&mut self, i: usize, grace: Duration) {
        let Some(mut child) = self.members[i].child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Start member `i` again with the same flags and data directory.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
    }

    /// SIGKILL every member.
    pub fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
    }

    /// Panics (with the logs) if a member that should be running has exited.
    pub fn check_alive(&mut self) {
        let mut dead = Vec::new();
        for m in &mut self.members {
            if let Some(child) = m.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    dead.push(format!("{} exited unexpectedly ({status})", m.name));
                }
            }
        }
        if !dead.is_empty() {
            panic!("{}\n{}", dead.join("\n"), self.logs_tail(60));
        }
    }

    /// Polls `etcdctl endpoint health` on every running member every 100 ms until it succeeds
    /// for all of them; panics with the logs after `timeout`.
    pub fn wait_healthy(&mut self, timeout: Duration) {
        let eps = self.endpoints_running();
        self.wait_health_of(&eps, timeout);
    }

    /// Like [`Cluster::wait_healthy`] for member `i` only.
    pub fn wait_member_healthy(&mut self, i: usize, timeout: Duration) {
        let eps = self.members[i].client_addr();
        self.wait_health_of(&eps, timeout);
    }

    fn wait_health_of(&mut self, eps: &str, timeout: Duration) {
        let start = Instant::now();
        let mut last;
        loop {
            self.check_alive();
            last = run_etcdctl(
                eps,
                &[
                    "--dial-timeout=1s",
                    "--command-timeout=3s",
                    "endpoint",
                    "health",
                ],
                None,
                Duration::from_secs(20),
            );
            if last.ok() {
                return;
            }
            if start.elapsed() >= timeout {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{} endpoints {eps} not healthy after {timeout:?}; last `endpoint health`: {last}\n{}",
            self.flavor.label(),
            self.logs_tail(60)
        );
    }

    /// etcdctl against member 0.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_at(0, args)
    }

    /// etcdctl against member `i`.
    pub fn etcdctl_at(&self, i: usize, args: &[&str]) -> Output {
        run_etcdctl(&self.members[i].client_addr(), args, None, ETCDCTL_TIMEOUT)
    }

    /// etcdctl against member 0 with `stdin` (e.g. `txn`, whose compares and operations are read
    /// from standard input: three sections, each ended by an empty line).
    pub fn etcdctl_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        self.etcdctl_at_with_stdin(0, args, stdin.as_bytes())
    }

    pub fn etcdctl_at_with_stdin(&self, i: usize, args: &[&str], stdin: &[u8]) -> Output {
        run_etcdctl(
            &self.members[i].client_addr(),
            args,
            Some(stdin),
            ETCDCTL_TIMEOUT,
        )
    }

    /// etcdctl with `--endpoints` = every member (running or not).
    pub fn etcdctl_all(&self, args: &[&str]) -> Output {
        run_etcdctl(&self.endpoints_all(), args, None, ETCDCTL_TIMEOUT)
    }

    /// `endpoint status -w json` of member `i`, or None if it did not answer.
    pub fn endpoint_status(&self, i: usize) -> Option<EpStatus> {
        let out = run_etcdctl(
            &self.members[i].client_addr(),
            &[
                "--dial-timeout=1s",
                "--command-timeout=3s",
                "endpoint",
                "status",
                "-w",
                "json",
            ],
            None,
            Duration::from_secs(20),
        );
        if !out.ok() {
            return None;
        }
        parse_status_json(&out.stdout)
    }

    /// The index of the member that every running member names as leader, if they agree and the
    /// leader is one of them.
    pub fn leader_index(&self) -> Option<usize> {
        let mut statuses = Vec::new();
        for (i, m) in self.members.iter().enumerate() {
            if m.is_running() {
                statuses.push((i, self.endpoint_status(i)?));
            }
        }
        let leader = statuses.first()?.1.leader;
        if leader == 0 || statuses.iter().any(|(_, s)| s.leader != leader) {
            return None;
        }
        statuses
            .iter()
            .find(|(_, s)| s.member_id == leader)
            .map(|(i, _)| *i)
    }

    /// Polls [`Cluster::leader_index`] until the running members agree on a leader.
    pub fn wait_leader(&mut self, timeout: Duration) -> usize {
        let start = Instant::now();
        loop {
            self.check_alive();
            if let Some(i) = self.leader_index() {
                return i;
            }
            if start.elapsed() >= timeout {
                panic!(
                    "{}: running members did not agree on a leader within {timeout:?}\n{}",
                    self.flavor.label(),
                    self.logs_tail(60)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Member and cluster ids, fetched once with `member list -w json`.
    pub fn id_map(&self) -> &IdMap {
        self.ids.get_or_init(|| self.fetch_id_map())
    }

    fn fetch_id_map(&self) -> IdMap {
        let start = Instant::now();
        loop {
            let out = run_etcdctl(
                &self.endpoints_running(),
                &[
                    "--dial-timeout=1s",
                    "--command-timeout=3s",
                    "member",
                    "list",
                    "-w",
                    "json",
                ],
                None,
                Duration::from_secs(20),
            );
            if out.ok() {
                if let Some(map) = parse_member_list_json(&out.stdout) {
                    return map;
                }
            }
            if start.elapsed() > Duration::from_secs(15) {
                // Go on without names: ids then normalize to `<ID?k>` by first appearance, and
                // the comparison shows what is wrong with `member list` itself.
                eprintln!(
                    "[harness] {}: cannot read member ids with `member list -w json`: {out}",
                    self.flavor.label()
                );
                return IdMap {
                    cluster_id: 0,
                    members: Vec::new(),
                };
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Placeholder for an id seen in output: `<CLUSTER_ID>`, `<ID:nI>` for a member, else
    /// `<ID?k>` numbered by first appearance.
    pub fn id_placeholder(&self, id: u64) -> String {
        let map = self.id_map();
        if id == map.cluster_id {
            return "<CLUSTER_ID>".to_string();
        }
        if let Some((_, name)) = map.members.iter().find(|(m, _)| *m == id) {
            return format!("<ID:{name}>");
        }
        let mut unknown = self.unknown_ids.borrow_mut();
        let k = match unknown.iter().position(|u| *u == id) {
            Some(k) => k,
            None => {
                unknown.push(id);
                unknown.len() - 1
            }
        };
        format!("<ID?{}>", k + 1)
    }

    fn hex_id_placeholder(&self, hex: &str) -> String {
        match u64::from_str_radix(hex, 16) {
            Ok(v) => self.id_placeholder(v),
            Err(_) => hex.to_string(),
        }
    }

    fn dec_id_placeholder(&self, dec: &str) -> String {
        match dec.parse::<u64>() {
            Ok(v) => self.id_placeholder(v),
            Err(_) => dec.to_string(),
        }
    }

    fn port_placeholder(&self, port: &str) -> Option<String> {
        let p: u16 = port.parse().ok()?;
        for (i, m) in self.members.iter().enumerate() {
            if m.client_port == p {
                return Some(format!("<CPORT_{}>", i + 1));
            }
            if m.peer_port == p {
                return Some(format!("<PPORT_{}>", i + 1));
            }
        }
        None
    }

    /// The last `n` lines of every member's log.
    pub fn logs_tail(&self, n: usize) -> String {
        self.logs_shown.set(true);
        let mut s = String::new();
        for m in &self.members {
            let text = std::fs::read(&m.log_path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|e| format!("(cannot read {}: {e})\n", m.log_path.display()));
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(n);
            s.push_str(&format!(
                "----- {} {} log ({}), last {} lines -----\n",
                self.flavor.label(),
                m.name,
                m.log_path.display(),
                lines.len() - from
            ));
            for l in &lines[from..] {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if thread::panicking() && !self.logs_shown.get() {
            eprintln!("{}", self.logs_tail(60));
        }
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// parsing etcdctl's JSON (Go's encoding/json: compact, fixed field order)

fn capture_u64(re: &Regex, s: &str) -> Option<u64> {
    re.captures(s)?.get(1)?.as_str().parse().ok()
}

/// Parses one member's `endpoint status -w json` output.
pub fn parse_status_json(s: &str) -> Option<EpStatus> {
    Some(EpStatus {
        member_id: capture_u64(re!(r#""member_id":(\d+)"#), s)?,
        leader: capture_u64(re!(r#""leader":(\d+)"#), s).unwrap_or(0),
        revision: capture_u64(re!(r#""revision":(\d+)"#), s).unwrap_or(0) as i64,
        raft_term: capture_u64(re!(r#""raft_term":(\d+)"#), s).unwrap_or(0),
        raft_index: capture_u64(re!(r#""raftIndex":(\d+)"#), s).unwrap_or(0),
    })
}

/// Parses `member list -w json`.
pub fn parse_member_list_json(s: &str) -> Option<IdMap> {
    let cluster_id = capture_u64(re!(r#""cluster_id":(\d+)"#), s)?;
    let members: Vec<(u64, String)> = re!(r#"\{"ID":(\d+),"name":"([^"]*)""#)
        .captures_iter(s)
        .filter_map(|c| Some((c[1].parse::<u64>().ok()?, c[2].to_string())))
        .collect();
    if members.is_empty() {
        return None;
    }
    Some(IdMap {
        cluster_id,
        members,
    })
}

/// The `"revision"` of the first response header in a `-w json` output.
pub fn header_revision(json: &str) -> Option<i64> {
    capture_u64(re!(r#""revision":(\d+)"#), json).map(|v| v as i64)
}

/// Every `"hash":N` in an `endpoint hashkv -w json` output.
pub fn hashkv_hashes(json: &str) -> Vec<u64> {
    re!(r#""hash":(\d+)"#)
        .captures_iter(json)
        .filter_map(|c| c[1].parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// normalization

/// Replaces what legitimately differs between two clusters in etcdctl output, so that the
/// outputs of two clusters given the same commands compare equal:
/// - member and cluster ids (hex in simple/table output, decimal in json/fields) become
///   `<ID:nI>` (by member name) and `<CLUSTER_ID>`; other ids `<ID?k>` by first appearance;
/// - the cluster's client and peer ports become `<CPORT_i>` / `<PPORT_i>`;
/// - durations (`took`), server versions, db sizes, KV hashes, raft term, raft index, raft
///   applied index and which member is leader become placeholders;
/// - etcdctl's client log lines lose their timestamp and client UUID;
/// - tables lose their column padding (widths follow the content).
///
/// Revisions, keys, values, counts, names, flags and error messages are kept.
pub fn normalize(s: &str, cluster: &Cluster) -> String {
    // Tables first: their cells are recognised by column header on the raw text.
    let s = normalize_tables(s, cluster);

    // `endpoint status` simple format:
    // endpoint, id, version, db size, is leader, is learner, raft term, raft index, applied, errors
    let s = re!(r"(?m)^(\S+), ([0-9a-f]+), ([^,\n]*), ([^,\n]*), (true|false), (true|false), (\d+), (\d+), (\d+), ([^\n]*)$")
        .replace_all(&s, |c: &Captures| {
            format!(
                "{}, {}, <VER>, <SIZE>, <IS_LEADER>, {}, <TERM>, <INDEX>, <INDEX>, {}",
                &c[1],
                cluster.hex_id_placeholder(&c[2]),
                &c[6],
                &c[10]
            )
        })
        .into_owned();
    // `endpoint hashkv` simple format: endpoint, hash
    let s = re!(r"(?m)^(\S+:\d+), (\d+)$")
        .replace_all(&s, "${1}, <HASH>")
        .into_owned();
    // `member list` simple format: id, status, name, peer urls, client urls, is learner
    let s = re!(r"(?m)^([0-9a-f]+), (started|unstarted), ")
        .replace_all(&s, |c: &Captures| {
            format!("{}, {}, ", cluster.hex_id_placeholder(&c[1]), &c[2])
        })
        .into_owned();

    // json (-w json)
    let s = re!(r#""(cluster_id|member_id|ID)":(\d+)"#)
        .replace_all(&s, |c: &Captures| {
            format!("\"{}\":{}", &c[1], cluster.dec_id_placeholder(&c[2]))
        })
        .into_owned();
    let s = re!(r#""leader":\d+"#)
        .replace_all(&s, "\"leader\":<LEADER>")
        .into_owned();
    let s = re!(r#""(raft_term|raftTerm)":\d+"#)
        .replace_all(&s, "\"${1}\":<TERM>")
        .into_owned();
    let s = re!(r#""(raftIndex|raftAppliedIndex)":\d+"#)
        .replace_all(&s, "\"${1}\":<INDEX>")
        .into_owned();
    let s = re!(r#""(dbSize|dbSizeInUse)":\d+"#)
        .replace_all(&s, "\"${1}\":<SIZE>")
        .into_owned();
    let s = re!(r#""hash":\d+"#)
        .replace_all(&s, "\"hash\":<HASH>")
        .into_owned();
    let s = re!(r#""version":"[^"]*""#)
        .replace_all(&s, "\"version\":\"<VER>\"")
        .into_owned();
    let s = re!(r#""took":"[^"]*""#)
        .replace_all(&s, "\"took\":\"<DUR>\"")
        .into_owned();

    // fields (-w fields): `"Name" : value`
    let s = re!(r#""(ClusterID|MemberID|ID)" : (\d+)"#)
        .replace_all(&s, |c: &Captures| {
            format!("\"{}\" : {}", &c[1], cluster.dec_id_placeholder(&c[2]))
        })
        .into_owned();
    let s = re!(r#""Leader" : \d+"#)
        .replace_all(&s, "\"Leader\" : <LEADER>")
        .into_owned();
    let s = re!(r#""RaftTerm" : \d+"#)
        .replace_all(&s, "\"RaftTerm\" : <TERM>")
        .into_owned();
    let s = re!(r#""(RaftIndex|RaftAppliedIndex)" : \d+"#)
        .replace_all(&s, "\"${1}\" : <INDEX>")
        .into_owned();
    let s = re!(r#""(DBSize|DBSizeInUse)" : \d+"#)
        .replace_all(&s, "\"${1}\" : <SIZE>")
        .into_owned();
    let s = re!(r#""Hash" : \d+"#)
        .replace_all(&s, "\"Hash\" : <HASH>")
        .into_owned();
    let s = re!(r#""Version" : "[^"]*""#)
        .replace_all(&s, "\"Version\" : \"<VER>\"")
        .into_owned();
    let s = re!(r#""Took" : \S+"#)
        .replace_all(&s, "\"Took\" : <DUR>")
        .into_owned();

    // `endpoint health` simple format
    let s = re!(r"took = \S+")
        .replace_all(&s, "took = <DUR>")
        .into_owned();

    // etcdctl's client-side log lines (zap json): timestamp and per-process client UUID
    let s = re!(r#""ts":"[^"]*""#)
        .replace_all(&s, "\"ts\":\"<TS>\"")
        .into_owned();
    let s = re!(r"client-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
        .replace_all(&s, "client-<UUID>")
        .into_owned();

    // ports of this cluster, wherever an address is printed
    re!(r"\b(127\.0\.0\.1|localhost):(\d+)\b")
        .replace_all(&s, |c: &Captures| match cluster.port_placeholder(&c[2]) {
            Some(p) => format!("{}:{}", &c[1], p),
            None => c[0].to_string(),
        })
        .into_owned()
}

fn is_table_border(line: &str) -> bool {
    line.len() >= 2 && line.starts_with('+') && line.chars().all(|ch| ch == '+' || ch == '-')
}

/// Rewrites etcdctl's `-w table` output without padding (`| a | b |`, borders as `+-+-+`) and
/// replaces the cells of volatile columns, recognised by their header.
fn normalize_tables(s: &str, cluster: &Cluster) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut header: Option<Vec<String>> = None;
    for line in s.split('\n') {
        let t = line.trim_end();
        if is_table_border(t) {
            out.push(re!(r"-+").replace_all(t, "-").into_owned());
            continue;
        }
        if t.len() >= 2 && t.starts_with('|') && t.ends_with('|') {
            let mut cells: Vec<String> = t[1..t.len() - 1]
                .split('|')
                .map(|c| c.trim().to_string())
                .collect();
            match &header {
                None => header = Some(cells.clone()),
                Some(h) => {
                    for (col, cell) in cells.iter_mut().enumerate() {
                        let Some(name) = h.get(col) else { continue };
                        let replacement = match name.as_str() {
                            "ID" => Some(cluster.hex_id_placeholder(cell)),
                            "VERSION" => Some("<VER>".to_string()),
                            "DB SIZE" => Some("<SIZE>".to_string()),
                            "IS LEADER" => Some("<IS_LEADER>".to_string()),
                            "RAFT TERM" => Some("<TERM>".to_string()),
                            "RAFT INDEX" | "RAFT APPLIED INDEX" => Some("<INDEX>".to_string()),
                            "TOOK" => Some("<DUR>".to_string()),
                            "HASH" => Some("<HASH>".to_string()),
                            _ => None,
                        };
                        if let Some(r) = replacement {
                            if !cell.is_empty() {
                                *cell = r;
                            }
                        }
                    }
                }
            }
            out.push(format!("| {} |", cells.join(" | ")));
            continue;
        }
        header = None;
        out.push(line.to_string());
    }
    out.join("\n")
}

/// Sorts the member objects of a normalized `member list -w json` output by their text (which
/// starts with `{"ID":<ID:nI>`, so by member name): etcd lists members ordered by id, and ids
/// differ between clusters.
pub fn sort_json_members(s: &str) -> String {
    let found: Vec<(usize, usize)> = re!(r#"\{"ID":[^{}]*\}"#)
        .find_iter(s)
        .map(|m| (m.start(), m.end()))
        .collect();
    if found.len() < 2 {
        return s.to_string();
    }
    let contiguous = found.windows(2).all(|w| &s[w[0].1..w[1].0] == ",");
    if !contiguous {
        return s.to_string();
    }
    let mut objs: Vec<&str> = found.iter().map(|&(a, b)| &s[a..b]).collect();
    objs.sort();
    format!(
        "{}{}{}",
        &s[..found[0].0],
        objs.join(","),
        &s[found[found.len() - 1].1..]
    )
}

/// Sorts lines (for outputs whose line order is not defined, e.g. `endpoint health` over
/// several endpoints, which prints in completion order, or `member list`, which etcd orders by
/// member id). In a table only the body rows are sorted.
pub fn sort_lines(s: &str) -> String {
    let mut lines: Vec<&str> = s.lines().collect();
    let n = lines.len();
    let is_table = n >= 4
        && is_table_border(lines[0])
        && is_table_border(lines[2])
        && is_table_border(lines[n - 1]);
    if is_table {
        lines[3..n - 1].sort();
    } else {
        lines.sort();
    }
    let mut out = lines.join("\n");
    if !lines.is_empty() {
        out.push('\n');
    }
    out
}
