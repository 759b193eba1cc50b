//! `c20 up`, the README's command that runs c20: three members that etcdctl uses as one
//! cluster, stopped together by SIGTERM; and port lists it refuses before starting anything.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{free_ports, run_etcdctl, C20_BIN, ETCDCTL_TIMEOUT};

/// `c20 up`, stopped with SIGTERM (and, past a bound, SIGKILL) if a test ends without doing so.
struct Up(Child);

impl Up {
    fn terminate(&self) {
        // SAFETY: a plain syscall on a PID this test spawned and has not reaped.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
    }

    /// Waits for the process to exit, at most `bound`.
    fn wait(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            self.terminate();
            if self.wait(Duration::from_secs(20)).is_none() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn up_runs_three_members_that_serve_as_one_cluster_and_stop_together() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(6);
    let (client, peer) = ports.split_at(3);
    let mut up = Up(Command::new(C20_BIN)
        .arg("up")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--client-ports", &join(client)])
        .args(["--peer-ports", &join(peer)])
        .env_remove("C20_WORKER_THREADS")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start c20 up"));
    let endpoints: Vec<String> = client.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let all = endpoints.join(",");

    // Every member answers once the cluster has a leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health = run_etcdctl(&all, &["endpoint", "health"], None, ETCDCTL_TIMEOUT);
        if health.ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "members not healthy within 30 s: {health}"
        );
        assert!(up.0.try_wait().unwrap().is_none(), "c20 up exited early");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A write through one member is read through each of the others.
    let put = run_etcdctl(&endpoints[0], &["put", "foo", "bar"], None, ETCDCTL_TIMEOUT);
    assert!(put.ok() && put.stdout.trim() == "OK", "{put}");
    for ep in &endpoints[1..] {
        let get = run_etcdctl(ep, &["get", "foo"], None, ETCDCTL_TIMEOUT);
        assert!(get.ok(), "{get}");
        assert_eq!(get.stdout, "foo\nbar\n", "get through {ep}");
    }
    let members = run_etcdctl(&all, &["member", "list"], None, ETCDCTL_TIMEOUT);
    assert!(members.ok(), "{members}");
    assert_eq!(members.stdout.lines().count(), 3, "{members}");

    // SIGTERM stops every member, and c20 up reports each one stopped.
    up.terminate();
    let status = up
        .wait(Duration::from_secs(30))
        .expect("c20 up stops within 30 s of SIGTERM");
    assert!(status.success(), "c20 up exited with {status}");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut up.0.stdout.take().unwrap(), &mut out).unwrap();
    for name in ["n1", "n2", "n3"] {
        assert!(
            out.contains(&format!("c20: {name} stopped")),
            "{name} not reported stopped:\n{out}"
        );
    }
    for ep in &endpoints {
        assert!(
            std::net::TcpStream::connect(ep).is_err(),
            "{ep} still accepts connections"
        );
    }
    // Each member kept its data under the directory given.
    for name in ["n1", "n2", "n3"] {
        assert!(
            dir.path().join(name).is_dir(),
            "no data directory for {name}"
        );
    }
}

#[test]
fn up_refuses_port_lists_it_cannot_use_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(6);
    let cases: [(String, String, &str); 3] = [
        (
            join(&ports[..2]),
            join(&ports[3..]),
            "--client-ports needs 3 ports",
        ),
        (
            join(&ports[..3]),
            join(&ports[3..5]),
            "--peer-ports needs 3 ports",
        ),
        (
            join(&ports[..3]),
            join(&[ports[3], ports[4], ports[0]]),
            "is given twice",
        ),
    ];
    for (client, peer, expected) in cases {
        let out = Command::new(C20_BIN)
            .arg("up")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--client-ports", &client])
            .args(["--peer-ports", &peer])
            .output()
            .expect("run c20 up");
        assert!(!out.status.success(), "accepted {client} / {peer}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{expected:?} not in: {stderr}");
        assert!(
            !dir.path().join("data").exists(),
            "created the data directory for {client} / {peer}"
        );
    }
}
