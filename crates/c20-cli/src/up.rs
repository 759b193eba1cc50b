//! `c20 up`: a local 3-member cluster as three `c20 serve` child processes.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::{Child, Command};
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
    let mut children: Vec<(String, Child)> = Vec::new();
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
        children.push((name, child));
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
                    for (name, child) in children.iter_mut() {
                        if let Some(status) = child.try_wait()? {
                            return Ok(Some(format!("member {name} exited: {status}")));
                        }
                    }
                }
            }
        }
    })?;
    println!("c20: stopping members");
    for (_, child) in children.iter_mut() {
        if child.try_wait()?.is_none() {
            // SIGTERM lets each member finish in-flight work and checkpoint.
            // SAFETY: plain syscall on a PID this process spawned and has not reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    for (name, child) in children.iter_mut() {
        let status = child.wait()?;
        println!("c20: {name} stopped ({status})");
    }
    if let Some(why) = exited {
        bail!(why);
    }
    Ok(())
}
