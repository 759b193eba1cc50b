//! `cargo run --release -p c20-sim -- --seeds N [--nodes 3|5] [--minutes M] [--first S] [--ops K]
//! [--threads]`
//!
//! Runs seeds `S..S+N` (with `--minutes`, as many seeds from `S` as fit in M minutes) and checks
//! each history; prints the shortest slice of a failing key's history found and the command
//! that replays the seed. Every seed runs twice and the two histories must be identical (a
//! replay mismatch otherwise). Exit code 1 when any history breaks a promise or any replay
//! differs.
//!
//! `--threads` runs on two threads in real time instead of one thread in simulated time: races
//! the seed does not control, so nothing replays and replays are not compared.
//!
//! `--plant BUG` (built with `--features planted-bugs`) switches a known bug on and stops at
//! the first seed that shows it; the exit code is then 1 when no seed did.

use c20_sim::run::{run, RunConfig};
use std::time::{Duration, Instant};

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Result<Option<T>, String>
where
    T::Err: std::fmt::Display,
{
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .ok_or(format!("{name} needs a value"))?
            .parse()
            .map(Some)
            .map_err(|e| format!("{name}: {e}")),
    }
}

struct Args {
    seeds: u64,
    first: u64,
    nodes: usize,
    ops: usize,
    minutes: Option<f64>,
    plant: Option<c20_distributed::planted::Bug>,
    threads: bool,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let threads = args.iter().any(|a| a == "--threads");
    let args: Vec<String> = args.iter().filter(|a| *a != "--threads").cloned().collect();
    let args = &args[..];
    const KNOWN: [&str; 6] = [
        "--seeds",
        "--first",
        "--nodes",
        "--ops",
        "--minutes",
        "--plant",
    ];
    for a in args.iter().step_by(2) {
        if !KNOWN.contains(&a.as_str()) {
            return Err(format!(
                "unknown option {a:?}; options: {} --threads",
                KNOWN.join(" ")
            ));
        }
    }
    let a = Args {
        seeds: arg(args, "--seeds")?.unwrap_or(20),
        first: arg(args, "--first")?.unwrap_or(1),
        nodes: arg(args, "--nodes")?.unwrap_or(3),
        ops: arg(args, "--ops")?.unwrap_or(60),
        minutes: arg(args, "--minutes")?,
        plant: arg(args, "--plant")?,
        threads,
    };
    if a.nodes != 3 && a.nodes != 5 {
        return Err("--nodes must be 3 or 5".into());
    }
    if a.minutes.is_some_and(|m| m.is_nan() || m <= 0.0) {
        return Err("--minutes must be above 0".into());
    }
    if a.plant.is_some() && !cfg!(feature = "planted-bugs") {
        return Err(
            "--plant needs a build with the planted bugs: cargo run --release -p c20-sim --features planted-bugs -- ..."
                .into(),
        );
    }
    Ok(a)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = match parse(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("c20-sim: {e}");
            std::process::exit(2);
        }
    };
    #[cfg(feature = "planted-bugs")]
    c20_distributed::planted::plant(a.plant);
    #[cfg(not(tokio_unstable))]
    if !a.threads {
        eprintln!(
            "c20-sim: built without --cfg tokio_unstable (RUSTFLAGS replaces .cargo/config.toml's \
             flags): Tokio's random choices are not seeded, so replays may differ"
        );
    }
    let started = Instant::now();
    let budget = a.minutes.map(|m| Duration::from_secs_f64(m * 60.0));
    let (mut seeds, mut total_ops, mut violations, mut undecided) = (0u64, 0usize, 0u64, 0usize);
    let mut mismatches = 0u64;
    let mut simulated = std::time::Duration::ZERO;
    let mut session_reads = 0usize;
    let mut watch = c20_sim::watch_check::WatchChecked::default();
    let mut disk = c20_distributed::CrashDamage::default();
    let mut leases = c20_sim::lease_check::LeaseChecked::default();
    let mut seed = a.first;
    loop {
        let more = match budget {
            Some(b) => seeds == 0 || started.elapsed() < b,
            None => seeds < a.seeds,
        };
        if !more {
            break;
        }
        let cfg = RunConfig {
            seed,
            replicas: a.nodes,
            ops_per_client: a.ops,
            threads: a.threads,
            ..RunConfig::default()
        };
        let recorded = run(&cfg);
        simulated += recorded.took;
        // A stalled run is not replayed: that would only leave a second thread spinning.
        if !a.threads && !recorded.stalled {
            if let Some(diff) = recorded.differs_from(&run(&cfg)) {
                mismatches += 1;
                println!("seed {seed}: the replay differs: {diff}");
            }
        }
        seeds += 1;
        total_ops += recorded.ops.len();
        disk += recorded.disk;
        let result = recorded.check();
        if let Ok(c) = &result {
            undecided += c.undecided;
            session_reads += c.session_reads;
            watch += c.watch;
            leases += c.lease;
        }
        if let Err(v) = result {
            violations += 1;
            println!("seed {seed}: {v}");
            let plant = a.plant.map_or(String::new(), |b| {
                format!(" --features planted-bugs -- --plant {b}")
            });
            let sep = if plant.is_empty() { " --" } else { "" };
            let threads = if a.threads { " --threads" } else { "" };
            println!(
                "{}: cargo run --release -p c20-sim{plant}{sep} --seeds 1 --first {seed} --nodes {} --ops {}{threads}",
                if a.threads { "rerun (not an exact replay)" } else { "replay" },
                a.nodes,
                a.ops
            );
            if a.plant.is_some() {
                break;
            }
        }
        seed += 1;
    }
    if let Some(b) = a.plant {
        if violations > 0 {
            println!("planted bug {b}: found after {seeds} seeds");
        } else {
            println!("planted bug {b}: not found in {seeds} seeds");
        }
    }
    if undecided > 0 {
        println!("{undecided} key histories were too large to decide (search budget spent)");
    }
    println!("{session_reads} Sequential reads were held to what their session had seen");
    println!(
        "{:.1} minutes on the runs' clocks ({})",
        simulated.as_secs_f64() / 60.0,
        if a.threads { "real time" } else { "simulated" }
    );
    println!(
        "{} watch events over {} revisions agreed with the calls ({} watch resumptions; {} writes \
         whose outcome the client never learned were shown applied)",
        watch.events, watch.revisions, watch.resumes, watch.unknown_writes_applied
    );
    println!(
        "{} leases kept their promises ({} reads and keep-alives held to one; {} seen to expire \
         once let lapse)",
        leases.leases, leases.promised_calls, leases.lapsed
    );
    println!(
        "{} crashes ({} of them mid-operation) left the logs' simulated disks with {} unsynced \
         writes lost, {} torn and {} name changes undone",
        disk.crashes, disk.mid_operation, disk.writes_lost, disk.writes_torn, disk.names_lost
    );
    let replays = if a.threads {
        "not checked (--threads)".to_string()
    } else {
        mismatches.to_string()
    };
    println!(
        "seeds: {seeds}, ops: {total_ops}, minutes: {:.1}, violations: {violations}, replay-mismatches: {replays}",
        started.elapsed().as_secs_f64() / 60.0
    );
    let failed = mismatches > 0
        || match a.plant {
            Some(_) => violations == 0,
            None => violations > 0,
        };
    if failed {
        std::process::exit(1);
    }
}
