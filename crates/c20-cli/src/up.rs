//! `c20 up`: a local 3-member cluster as three `c20 serve` child processes.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

/// Members `c20 up` starts.
const MEMBERS: usize = 3;

#[derive(clap::Args)]
pub struct UpArgs {
    /// Parent directory of the members' data (one sub-directory each).
    #[arg(long, env = "C20_DATA_DIR", default_value = "c20-data")]
    data_dir: PathBuf,
    /// Client ports of the three members on 127.0.0.1 (etcd's Procfile uses these).
    #[arg(long, value_delimiter = ',', default_values_t = [2379u16, 22379, 32379])]
    client_ports: Vec<u16>,
    /// Peer ports of the three members on 127.0.0.1.
    #[arg(long, value_delimiter = ',', default_values_t = [2380u16, 22380, 32380])]
    peer_ports: Vec<u16>,
}

/// Checks the port lists before anything starts: three each, all different.
fn check_ports(args: &UpArgs) -> Result<()> {
    for (flag, ports) in [
        ("--client-ports", &args.client_ports),
        ("--peer-ports", &args.peer_ports),
    ] {
        if ports.len() != MEMBERS {
            bail!(
                "{flag} needs {MEMBERS} ports (one per member), got {}",
                ports.len()
            );
        }
    }
    let mut all: Vec<u16> = args
        .client_ports
        .iter()
        .chain(&args.peer_ports)
        .copied()
        .collect();
    all.sort_unstable();
    if let Some(w) = all.windows(2).find(|w| w[0] == w[1]) {
        bail!("port {} is given twice", w[0]);
    }
    Ok(())
}

pub fn run(args: UpArgs) -> Result<()> {
    check_ports(&args)?;
    let (client_ports, peer_ports) = (&args.client_ports, &args.peer_ports);
    let exe = std::env::current_exe().context("finding the c20 binary")?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let initial_cluster = (0..MEMBERS)
        .map(|i| format!("n{}=http://127.0.0.1:{}", i + 1, peer_ports[i]))
        .collect::<Vec<_>>()
        .join(",");
    // The three members share this machine's CPUs: each gets its share of the runtime threads
    // one `c20 serve` would take alone (see `--worker-threads`), unless the environment says.
    let worker_threads =
        crate::default_runtime_threads(crate::available_cpus(), MEMBERS).to_string();
    // Stops the members already started if anything below fails, a later spawn included.
    let mut members = Members::default();
    for i in 0..MEMBERS {
        let name = format!("n{}", i + 1);
        let client = format!("http://127.0.0.1:{}", client_ports[i]);
        let peer = format!("http://127.0.0.1:{}", peer_ports[i]);
        let mut cmd = Command::new(&exe);
        cmd.arg("serve");
        if std::env::var_os("C20_WORKER_THREADS").is_none() {
            cmd.args(["--worker-threads", &worker_threads]);
        }
        let child = cmd
            .args(["--name", &name])
            .arg("--data-dir")
            .arg(args.data_dir.join(&name))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "c20-local"])
            .spawn()
            .with_context(|| format!("starting member {name}"))?;
        members.0.push((name, child));
    }
    let endpoints = client_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "c20: 3 members starting, data in {}",
        args.data_dir.display()
    );
    println!("  endpoints: {endpoints}");
    println!("  try:       etcdctl --endpoints {endpoints} put foo bar");
    println!("             c20 get foo");
    println!("  stop:      Ctrl-C");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let exited = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = term.recv() => return Ok::<_, anyhow::Error>(None),
                _ = int.recv() => return Ok(None),
                _ = tick.tick() => {
                    for (name, child) in members.0.iter_mut() {
                        if let Some(status) = child.try_wait()? {
                            return Ok(Some(format!("member {name} exited: {status}")));
                        }
                    }
                }
            }
        }
    })?;
    println!("c20: stopping members");
    for (name, status) in members.stop()? {
        println!("c20: {name} stopped ({status})");
    }
    if let Some(why) = exited {
        bail!(why);
    }
    Ok(())
}

/// The members `c20 up` started, by name. Dropping it stops those still running.
#[derive(Default)]
struct Members(Vec<(String, Child)>);

/// How long a member may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

impl Members {
    /// Sends SIGTERM to every member still running (so each finishes its in-flight work and
    /// checkpoints) and waits for all of them, killing any still running after
    /// [`STOP_GRACE`]; returns how each ended.
    fn stop(&mut self) -> Result<Vec<(String, ExitStatus)>> {
        for (_, child) in self.0.iter_mut() {
            // Whatever `try_wait` says short of "exited", signal it: a member must not be left.
            if !matches!(child.try_wait(), Ok(Some(_))) {
                // SAFETY: plain syscall on a PID this process spawned and has not reaped.
                unsafe {
                    libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        let deadline = std::time::Instant::now() + STOP_GRACE;
        let mut ended = Vec::new();
        let mut failed = None;
        for (name, mut child) in self.0.drain(..) {
            match wait_until(&mut child, deadline) {
                Ok(status) => ended.push((name, status)),
                Err(e) => {
                    // Waiting failed, not the member: it must not be left running.
                    let _ = child.kill();
                    let _ = child.wait();
                    failed = failed.or(Some(e));
                }
            }
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(ended),
        }
    }
}

/// Waits for `child` to exit, and kills it if it is still running at `deadline`.
fn wait_until(child: &mut Child, deadline: std::time::Instant) -> std::io::Result<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if std::time::Instant::now() >= deadline {
            child.kill()?;
            return child.wait();
        }
        // std offers no wait with a timeout; a member takes well under a second to stop.
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn start(program: &str, args: &[&str]) -> Child {
        Command::new(program).args(args).spawn().expect("spawn")
    }

    fn running(pid: u32) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
    }

    #[test]
    fn stopping_members_terminates_the_running_ones_and_reaps_all() {
        let mut done = start("true", &[]);
        done.wait().expect("wait");
        let mut members = Members(vec![
            ("a".into(), start("sleep", &["30"])),
            ("b".into(), done),
        ]);
        let ended = members.stop().expect("stop");
        assert_eq!(ended.len(), 2);
        assert_eq!(ended[0].0, "a");
        assert_eq!(ended[0].1.signal(), Some(libc::SIGTERM));
        assert!(ended[1].1.success());
        assert!(members.0.is_empty());
    }

    #[test]
    fn a_member_still_running_at_the_deadline_is_killed() {
        let mut child = start("sleep", &["30"]);
        let status = wait_until(&mut child, std::time::Instant::now()).expect("wait");
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    /// What `run` relies on when a later member fails to start: the members started before
    /// are stopped as the function returns.
    #[test]
    fn dropping_members_stops_those_still_running() {
        let members = Members(vec![
            ("a".into(), start("sleep", &["30"])),
            ("b".into(), start("sleep", &["30"])),
        ]);
        let pids: Vec<u32> = members.0.iter().map(|(_, c)| c.id()).collect();
        assert!(pids.iter().all(|&p| running(p)));
        drop(members);
        for pid in pids {
            assert!(!running(pid), "member process {pid} still exists");
        }
    }
}
