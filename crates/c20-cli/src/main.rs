//! `c20`: run a node (`serve`) or a local cluster (`up`), and talk to a cluster.

mod bench;
mod bench_timeline;
mod bench_watch;
mod client_cmds;
mod snapshot_cmds;
mod txn_parse;
mod up;
mod watch_lease_cmds;

use anyhow::{Context, Result};
use c20_server::{parse_initial_cluster, Server, ServerConfig};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// mimalloc: the node allocates many small objects per request (keys, values, log entries);
/// measured faster than the system allocator on the write path (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often [`start_returning_freed_memory`] lets mimalloc return memory.
const MEMORY_RETURN_INTERVAL: Duration = Duration::from_secs(1);

/// Starts a thread that lets mimalloc hand freed memory back to the kernel once a second.
///
/// mimalloc returns memory that has stayed free for a second (its `purge_delay`), but only when
/// it next runs: inside a later allocation or free of a busy enough thread. A member that goes
/// quiet right after a burst of writes kept what the burst freed: after a million puts,
/// members settled 40-45 MiB apart from run to run (docs/BENCHMARKS.md, "Memory after 1M
/// keys"). A collect on a thread of its own runs the overdue returns of the whole process;
/// it touches no memory in use, so it costs the serving threads nothing.
fn start_returning_freed_memory() {
    let spawned = std::thread::Builder::new()
        .name("c20-mem-return".into())
        .spawn(|| loop {
            std::thread::sleep(MEMORY_RETURN_INTERVAL);
            // SAFETY: mi_collect takes no arguments that point anywhere and may be called from
            // any thread at any time.
            unsafe { libmimalloc_sys::mi_collect(false) };
        });
    if let Err(e) = spawned {
        tracing::warn!("not returning freed memory to the kernel: {e}");
    }
}

#[derive(Parser)]
#[command(
    name = "c20",
    version,
    about = "c20: a replicated, transactional key-value store that speaks the etcd v3 API"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one member (flags as etcd names them).
    Serve(Box<ServeArgs>),
    /// Start a local 3-member cluster on 127.0.0.1 (clients on :2379, :22379, :32379).
    Up(up::UpArgs),
    /// Write a key.
    Put(client_cmds::PutArgs),
    /// Read a key or a range.
    Get(client_cmds::GetArgs),
    /// Delete a key or a range.
    Del(client_cmds::DelArgs),
    /// Run a transaction read from stdin, in etcdctl's format.
    Txn(client_cmds::TxnArgs),
    /// Print events on a key or prefix as they happen (or from a past revision).
    Watch(watch_lease_cmds::WatchArgs),
    /// Grant, revoke, inspect, keep alive and list leases.
    Lease(watch_lease_cmds::LeaseArgs),
    /// Print each endpoint's status, like `etcdctl endpoint status`.
    Status(client_cmds::StatusArgs),
    /// List the members of the cluster.
    Members(client_cmds::StatusArgs),
    /// Save a backup of a member's store, or seed a new cluster's member from one.
    Snapshot(snapshot_cmds::SnapshotArgs),
    /// Measure throughput and latency of puts, gets, txn CAS or a mix (against c20 or etcd).
    Bench(bench::BenchArgs),
    /// Measure watch event throughput and put-to-event latency (against c20 or etcd).
    BenchWatch(bench_watch::BenchWatchArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Human-readable name of this member.
    #[arg(long, env = "C20_NAME", default_value = "default")]
    name: String,
    /// Where this member keeps its data.
    #[arg(long, env = "C20_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[arg(
        long,
        env = "C20_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    listen_client_urls: Vec<String>,
    #[arg(
        long,
        env = "C20_ADVERTISE_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    advertise_client_urls: Vec<String>,
    #[arg(
        long,
        env = "C20_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380",
        value_delimiter = ','
    )]
    listen_peer_urls: Vec<String>,
    #[arg(
        long,
        env = "C20_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://127.0.0.1:2380",
        value_delimiter = ','
    )]
    initial_advertise_peer_urls: Vec<String>,
    /// `name=peer-url,...` for every initial member (default: this member alone).
    #[arg(long, env = "C20_INITIAL_CLUSTER")]
    initial_cluster: Option<String>,
    /// `new` to bootstrap a cluster, `existing` to join one.
    #[arg(long, env = "C20_INITIAL_CLUSTER_STATE", default_value = "new", value_parser = ["new", "existing"])]
    initial_cluster_state: String,
    #[arg(
        long,
        env = "C20_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    initial_cluster_token: String,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, env = "C20_HEARTBEAT_INTERVAL", default_value_t = 100)]
    heartbeat_interval: u64,
    /// Raft election timeout in milliseconds.
    #[arg(long, env = "C20_ELECTION_TIMEOUT", default_value_t = 1000)]
    election_timeout: u64,
    /// Committed entries between snapshots.
    #[arg(long, env = "C20_SNAPSHOT_COUNT", default_value_t = 100_000)]
    snapshot_count: u64,
    /// Entries kept in the log below a snapshot, so a follower that lags by fewer needs no
    /// snapshot.
    #[arg(
        long,
        env = "C20_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES",
        default_value_t = 5000
    )]
    experimental_snapshot_catchup_entries: u64,
    /// Bytes of log entries between snapshots (whichever of this and --snapshot-count comes
    /// first).
    #[arg(long, env = "C20_SNAPSHOT_LOG_BYTES", default_value_t = 256 << 20)]
    snapshot_log_bytes: u64,
    /// How often idle watchers that asked for progress notifications get one (`100ms`, `5s`,
    /// `10m`).
    #[arg(
        long,
        env = "C20_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m",
        value_parser = parse_duration
    )]
    experimental_watch_progress_notify_interval: Duration,
    /// Threads that read for independent requests of an applied batch in parallel; results are
    /// exactly those of serial apply. 1 turns it off. [default: cores, at most 4]
    #[arg(long, env = "C20_APPLY_THREADS", value_parser = clap::value_parser!(u64).range(1..=64))]
    apply_threads: Option<u64>,
    /// Peer requests (log appends) at least this many bytes long travel lz4-compressed; 0
    /// turns compression off.
    #[arg(long, env = "C20_PEER_COMPRESSION_MIN_BYTES", default_value_t = c20_server::config::DEFAULT_PEER_COMPRESSION_MIN_BYTES)]
    peer_compression_min_bytes: usize,
    /// Most client requests the leader puts in one log entry; 1 turns batching off.
    #[arg(
        long,
        env = "C20_BATCH_MAX_OPS",
        default_value_t = c20_server::config::DEFAULT_BATCH_MAX_OPS as u64,
        value_parser = clap::value_parser!(u64).range(1..=65536)
    )]
    batch_max_ops: u64,
    /// Most batches the leader has replicating at once (pipelining); requests that arrive while
    /// the window is full leave together in the next batch. 1 turns pipelining off, 0 leaves it
    /// unbounded.
    #[arg(long, env = "C20_PROPOSAL_WINDOW", default_value_t = c20_server::config::DEFAULT_PROPOSAL_WINDOW as u64, value_parser = clap::value_parser!(u64).range(0..=4096))]
    proposal_window: u64,
    /// Most log appends the leader has in flight to one follower on its append stream; 0 sends
    /// each append as a call of its own, after the answer to the one before.
    #[arg(long, env = "C20_PEER_APPEND_WINDOW", default_value_t = c20_server::config::DEFAULT_PEER_APPEND_WINDOW as u64, value_parser = clap::value_parser!(u64).range(0..=1024))]
    peer_append_window: u64,
    /// Whether concurrent linearizable reads share the leader's quorum rounds; false gives each
    /// read a round of its own (for measuring what coalescing contributes).
    #[arg(long, env = "C20_READ_COALESCING", default_value_t = true, action = clap::ArgAction::Set)]
    read_coalescing: bool,
    /// Whether the log's segments are created zero-filled to their full size, so that an
    /// fsync of appended records needs no file system journal commit; false lets each segment
    /// grow as it is written (for measuring what preallocation contributes).
    #[arg(long, env = "C20_WAL_PREALLOCATE", default_value_t = true, action = clap::ArgAction::Set)]
    wal_preallocate: bool,
    /// The longest time between checkpoints of the store while writes are applied (`100ms`,
    /// `1s`); the log holds what is not checkpointed yet.
    #[arg(
        long,
        env = "C20_BACKEND_BATCH_INTERVAL",
        default_value = "100ms",
        value_parser = parse_any_duration
    )]
    backend_batch_interval: Duration,
    /// The most write requests applied between checkpoints of the store.
    #[arg(
        long,
        env = "C20_BACKEND_BATCH_LIMIT",
        default_value_t = c20_server::config::DEFAULT_BACKEND_BATCH_LIMIT,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    backend_batch_limit: u64,
    /// A checkpoint of the store is also taken once the rows waiting for it come to about
    /// this many bytes, so that its fsync is short and the log's fsyncs on the same disk do not
    /// wait long behind it; 0 sets no such bound (etcd has none).
    #[arg(
        long,
        env = "C20_BACKEND_BATCH_BYTES",
        default_value_t = c20_server::config::DEFAULT_BACKEND_BATCH_BYTES
    )]
    backend_batch_bytes: u64,
    /// Threads of the async runtime that serves clients and peers. 0 (the default): one fewer
    /// than the CPUs this process may use, at least one, leaving a CPU to the log's writer and
    /// the checkpoint threads. When several members share a machine, divide its CPUs among them.
    #[arg(long, env = "C20_WORKER_THREADS", default_value_t = 0)]
    worker_threads: usize,
    /// Whether the runtime runs a task that another task just woke before the tasks already
    /// waiting (Tokio's "LIFO slot"); false (the default) runs them in the order they were
    /// woken, so the requests and replies that pile up meanwhile leave together.
    #[arg(long, env = "C20_RUNTIME_LIFO_SLOT", default_value_t = false, action = clap::ArgAction::Set)]
    runtime_lifo_slot: bool,
}

/// The runtime threads for `--worker-threads N` on a machine where this process may use `cpus`
/// CPUs: N, or for 0 one member's share of [`default_runtime_threads`].
fn runtime_threads(worker_threads: usize, cpus: usize) -> usize {
    if worker_threads > 0 {
        worker_threads
    } else {
        default_runtime_threads(cpus, 1)
    }
}

/// Runtime threads for each of `members` members sharing a machine of `cpus` CPUs: one CPU is
/// left to the log's writer and checkpoint threads, the rest divided among the members, at
/// least one each. `c20 up` passes this to its members.
///
/// Why not one per CPU, tokio's default: on the 2-CPU test machine, with three members and the
/// bench client sharing it, one runtime thread per member served 8-56% more puts, reads and
/// txns a second than two, and put-1's p50 went from 0.94-1.06 ms to 0.83 ms
/// (docs/BENCHMARKS.md, "Runtime threads"). A thread that parks and is woken for each task
/// costs a futex call and a context switch on an oversubscribed machine; the log's writer
/// thread and the checkpoint thread need a CPU of their own besides.
pub(crate) fn default_runtime_threads(cpus: usize, members: usize) -> usize {
    (cpus.saturating_sub(1) / members.max(1)).max(1)
}

/// The CPUs this process may use (at least one).
pub(crate) fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Parses a duration as etcd's flags write them, 100ms at least.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_any_duration(s)?;
    if d < Duration::from_millis(100) {
        return Err(format!("{s:?} is below the 100ms minimum"));
    }
    Ok(d)
}

/// Parses a duration as etcd's flags write them: a number and `ms`, `s`, `m` or `h`.
fn parse_any_duration(s: &str) -> Result<Duration, String> {
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit (ms, s, m or h)"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?} is not a duration"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m or h)")),
    };
    Ok(Duration::from_millis(ms))
}

fn main() -> Result<()> {
    // Huge-page faults stalled put-100's tail for tens of milliseconds while the store grew
    // (docs/BENCHMARKS.md). A kernel without the setting leaves things as they were.
    let _ = c20_server::tuning::disable_transparent_huge_pages();
    let cli = Cli::parse();
    let mut builder = match &cli.cmd {
        Cmd::Serve(args) => c20_raft::rt::multi_thread_runtime(
            runtime_threads(args.worker_threads, available_cpus()),
            args.runtime_lifo_slot,
        ),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = builder
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.cmd {
        Cmd::Serve(args) => {
            init_logging();
            start_returning_freed_memory();
            rt.block_on(serve(*args))
        }
        Cmd::Up(args) => {
            init_logging();
            up::run(args)
        }
        Cmd::Put(a) => rt.block_on(client_cmds::put(a)),
        Cmd::Get(a) => rt.block_on(client_cmds::get(a)),
        Cmd::Del(a) => rt.block_on(client_cmds::del(a)),
        Cmd::Txn(a) => rt.block_on(client_cmds::txn(a)),
        Cmd::Watch(a) => rt.block_on(watch_lease_cmds::watch(a)),
        Cmd::Lease(a) => rt.block_on(watch_lease_cmds::lease(a)),
        Cmd::Status(a) => rt.block_on(client_cmds::status(a)),
        Cmd::Members(a) => rt.block_on(client_cmds::members(a)),
        Cmd::Snapshot(a) => rt.block_on(snapshot_cmds::run(a)),
        Cmd::Bench(a) => rt.block_on(bench::run(a)),
        Cmd::BenchWatch(a) => rt.block_on(bench_watch::run(a)),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn serve(a: ServeArgs) -> Result<()> {
    let data_dir = a
        .data_dir
        .unwrap_or_else(|| PathBuf::from(format!("{}.c20", a.name)));
    let initial_cluster = match &a.initial_cluster {
        Some(s) => parse_initial_cluster(s).map_err(anyhow::Error::msg)?,
        None => vec![(a.name.clone(), a.initial_advertise_peer_urls.clone())],
    };
    let cfg = ServerConfig {
        name: a.name,
        data_dir,
        listen_client_urls: a.listen_client_urls,
        advertise_client_urls: a.advertise_client_urls,
        listen_peer_urls: a.listen_peer_urls,
        initial_advertise_peer_urls: a.initial_advertise_peer_urls,
        initial_cluster,
        initial_cluster_state_new: a.initial_cluster_state == "new",
        initial_cluster_token: a.initial_cluster_token,
        heartbeat_interval_ms: a.heartbeat_interval,
        election_timeout_ms: a.election_timeout,
        snapshot_count: a.snapshot_count,
        snapshot_catchup_entries: a.experimental_snapshot_catchup_entries,
        snapshot_log_bytes: a.snapshot_log_bytes,
        request_timeout: Duration::from_secs(7),
        watch_progress_notify_interval: a.experimental_watch_progress_notify_interval,
        apply_threads: a
            .apply_threads
            .map_or_else(c20_server::default_apply_threads, |n| n as usize),
        peer_compression_min_bytes: a.peer_compression_min_bytes,
        batch_max_ops: a.batch_max_ops as usize,
        proposal_window: a.proposal_window as usize,
        peer_append_window: a.peer_append_window as usize,
        read_coalescing: a.read_coalescing,
        wal_preallocate: a.wal_preallocate,
        backend_batch_interval: a.backend_batch_interval,
        backend_batch_limit: a.backend_batch_limit,
        backend_batch_bytes: a.backend_batch_bytes,
    };
    let server = Server::start(cfg).await?;
    let removed = tokio::select! {
        r = wait_for_signal() => { r?; false }
        _ = server.wait_removed() => true,
    };
    tracing::info!("stopping");
    server.shutdown().await;
    tracing::info!("stopped");
    if removed {
        anyhow::bail!("etcdserver: the member has been permanently removed from the cluster");
    }
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_args(flags: &[&str]) -> ServeArgs {
        let argv = ["c20", "serve"].iter().chain(flags);
        match Cli::try_parse_from(argv).expect("flags parse").cmd {
            Cmd::Serve(a) => *a,
            _ => unreachable!("parsed a serve command"),
        }
    }

    #[test]
    fn the_runtime_leaves_a_cpu_to_the_writer_threads_unless_told_otherwise() {
        let auto = serve_args(&[]).worker_threads;
        assert_eq!(auto, 0);
        assert_eq!(runtime_threads(auto, 1), 1);
        assert_eq!(runtime_threads(auto, 2), 1);
        assert_eq!(runtime_threads(auto, 8), 7);
        let three = serve_args(&["--worker-threads", "3"]).worker_threads;
        assert_eq!(runtime_threads(three, 2), 3);
        assert_eq!(runtime_threads(three, 64), 3);
        // c20 up's three members on one machine.
        assert_eq!(default_runtime_threads(2, 3), 1);
        assert_eq!(default_runtime_threads(16, 3), 5);
    }

    #[test]
    fn backend_batch_flags_default_to_the_servers_defaults_and_take_etcd_durations() {
        let a = serve_args(&[]);
        assert_eq!(
            a.backend_batch_interval,
            c20_server::config::DEFAULT_BACKEND_BATCH_INTERVAL
        );
        assert_eq!(
            a.backend_batch_limit,
            c20_server::config::DEFAULT_BACKEND_BATCH_LIMIT
        );
        assert_eq!(
            a.backend_batch_bytes,
            c20_server::config::DEFAULT_BACKEND_BATCH_BYTES
        );
        let a = serve_args(&[
            "--backend-batch-interval",
            "1s",
            "--backend-batch-limit",
            "500",
            "--backend-batch-bytes",
            "0",
        ]);
        assert_eq!(a.backend_batch_interval, Duration::from_secs(1));
        assert_eq!(a.backend_batch_limit, 500);
        assert_eq!(a.backend_batch_bytes, 0);
        assert_eq!(
            serve_args(&["--backend-batch-interval", "10ms"]).backend_batch_interval,
            Duration::from_millis(10)
        );
        let argv = ["c20", "serve", "--backend-batch-limit", "0"];
        assert!(Cli::try_parse_from(argv).is_err());
        let argv = ["c20", "serve", "--backend-batch-interval", "10"];
        assert!(Cli::try_parse_from(argv).is_err());
    }

    /// What the flag does to the runtime is tested in `c20_raft::rt`
    /// (`the_runtime_runs_woken_tasks_in_order_unless_told_otherwise`).
    #[test]
    fn the_lifo_slot_flag_is_off_unless_turned_on() {
        assert!(!serve_args(&[]).runtime_lifo_slot);
        assert!(serve_args(&["--runtime-lifo-slot", "true"]).runtime_lifo_slot);
    }

    #[test]
    fn wal_preallocation_is_on_unless_turned_off() {
        assert!(serve_args(&[]).wal_preallocate);
        assert!(!serve_args(&["--wal-preallocate", "false"]).wal_preallocate);
        assert!(serve_args(&["--wal-preallocate", "true"]).wal_preallocate);
        let argv = ["c20", "serve", "--wal-preallocate", "maybe"];
        assert!(Cli::try_parse_from(argv).is_err());
    }
}
