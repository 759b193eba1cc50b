//! `c20 bench`: drive load at the etcd v3 KV API and report throughput and latency.
//!
//! Nothing here is c20-specific except the `c20-consistency` metadata, which etcd ignores, so the
//! same command measures c20 and etcd side by side. Connecting and preloading happen before the
//! clock starts; throughput is successful ops divided by the wall time of the whole timed run
//! (until the last client has finished), never a sum of per-client rates.

use crate::bench_timeline::{self, Samples, Window};
use anyhow::{Context, Result};
use c20_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use c20_api::etcdserverpb::kv_client::KvClient;
use c20_api::etcdserverpb::request_op::Request as TxnOp;
use c20_api::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use c20_api::net::GrpcChannel;
use c20_api::ConsistencyLevel;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::distr::Alphanumeric;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tonic::metadata::AsciiMetadataValue;

const CLIENTS_MAX: u64 = 100_000;
const CONNS_MAX: u64 = 1_024;
const TOTAL_DEFAULT: u64 = 10_000;
/// Default preload is min(key-space, this), so that most runs start within seconds.
const PRELOAD_DEFAULT_MAX: u64 = 10_000;
/// Preload runs this many concurrent txns, each with up to `preload_batch` puts.
const PRELOAD_WORKERS: u64 = 16;
/// Bytes of keys and values in one preload txn: well under the server's request limit.
const PRELOAD_BATCH_BYTES: usize = 256 * 1024;
/// Latencies above this are recorded as this (the histogram's upper bound).
const LATENCY_MAX_US: u64 = 3_600_000_000;
const LATENCY_SIGFIGS: u8 = 3;
/// Distinct error kinds kept; the rest are counted under [`ERROR_KIND_OTHER`].
const ERROR_KINDS_MAX: usize = 32;
const ERROR_KIND_OTHER: &str = "(other kinds)";
const ERROR_MESSAGE_MAX_CHARS: usize = 80;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const PROGRESS_TICK: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Put a random key.
    Put,
    /// Range-read a random key at --consistency.
    Get,
    /// Read a random key, then write it in a txn guarded by the mod_revision seen.
    TxnCas,
    /// Gets and puts, a --read-ratio fraction of them gets.
    Mixed,
}

impl Workload {
    fn as_str(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::TxnCas => "txn-cas",
            Workload::Mixed => "mixed",
        }
    }

    fn reads(self) -> bool {
        matches!(self, Workload::Get | Workload::Mixed)
    }
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// What each request does.
    #[arg(long, value_enum, default_value = "put")]
    workload: Workload,
    /// Comma-separated client endpoints (host:port); connections go to them round-robin.
    #[arg(
        long,
        env = "C20_ENDPOINTS",
        default_value = "127.0.0.1:2379",
        value_delimiter = ','
    )]
    endpoints: Vec<String>,
    /// Concurrent request loops.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=CLIENTS_MAX))]
    clients: u64,
    /// gRPC connections, shared round-robin by the clients.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=CONNS_MAX))]
    conns: u64,
    /// Key length in bytes: "k" and a zero-padded key index.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(2..))]
    key_size: u64,
    /// Value length in bytes.
    #[arg(long, default_value_t = 256)]
    val_size: u64,
    /// Number of distinct keys, drawn uniformly.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    key_space: u64,
    /// Number of requests [default: 10000 unless --duration is given].
    #[arg(long, conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    total: Option<u64>,
    /// Run this long instead of a number of requests (e.g. 500ms, 10s, 2m).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Consistency for get and mixed [default: strong], and for put (sent as c20-consistency):
    /// eventual|sequential|quorum|strong|all.
    #[arg(long, value_parser = parse_consistency)]
    consistency: Option<ConsistencyLevel>,
    /// Fraction of requests that are gets in mixed [default: 0.9].
    #[arg(long)]
    read_ratio: Option<f64>,
    /// Keys written before the timed run [default: min(key-space, 10000) for get and mixed, else 0].
    #[arg(long)]
    preload: Option<u64>,
    /// Seed of the key and operation choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A request without an answer after this long counts as an error.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print one JSON line instead of the table, and no progress bar.
    #[arg(long)]
    json: bool,
    /// A new random value for every write (by default each client repeats one value, which
    /// makes the stored data far more compressible than real data).
    #[arg(long)]
    fresh_values: bool,
    /// Take keys in order (0, 1, 2, ..., wrapping at --key-space) instead of at random, so that
    /// --total N with --key-space N writes N distinct keys.
    #[arg(long)]
    sequential_keys: bool,
    /// Also report latencies window by window over the timed run (e.g. 100ms): whether the
    /// slow requests are spread evenly or bunched. In --json, as "timeline".
    #[arg(long, value_parser = parse_duration)]
    timeline: Option<Duration>,
}

/// When the timed run ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Limit {
    Total(u64),
    Duration(Duration),
}

/// Validated settings of one run.
#[derive(Debug, PartialEq)]
struct Plan {
    workload: Workload,
    endpoints: Vec<String>,
    clients: u64,
    conns: u64,
    key_size: usize,
    val_size: usize,
    fresh_values: bool,
    sequential_keys: bool,
    key_space: u64,
    limit: Limit,
    /// `Some` exactly for the workloads that read (get, mixed).
    consistency: Option<ConsistencyLevel>,
    /// `Some` exactly for mixed.
    read_ratio: Option<f64>,
    preload: u64,
    seed: u64,
    timeout: Duration,
    json: bool,
    /// Window width of the latency timeline, when asked for.
    timeline: Option<Duration>,
}

fn parse_consistency(s: &str) -> Result<ConsistencyLevel, String> {
    s.parse()
}

/// `500ms`, `10s`, `2m`, `1h`, or a bare number of seconds; fractions allowed; must be > 0.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || format!("invalid duration {s:?}: expected e.g. 500ms, 10s, 2m");
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1e3,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if secs <= 0.0 {
        return Err(format!("duration {s:?} must be greater than zero"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

fn decimal_digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// `k` then `index` in decimal, zero-padded so that the key is exactly `key_size` bytes.
/// Needs `key_size > decimal_digits(index)` (checked once for the whole key space by `plan`).
fn format_key(index: u64, key_size: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(key_size);
    key.push(b'k');
    write!(key, "{index:0width$}", width = key_size - 1).expect("writing to a Vec");
    debug_assert_eq!(key.len(), key_size, "key index {index} wider than key size");
    key
}

impl BenchArgs {
    fn plan(self) -> Result<Plan, String> {
        let endpoints: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err("--endpoints: give at least one host:port".into());
        }
        let key_size = self.key_size as usize;
        if decimal_digits(self.key_space - 1) >= key_size {
            return Err(format!(
                "--key-size {} cannot hold \"k\" and {} digits for --key-space {}",
                self.key_size,
                decimal_digits(self.key_space - 1),
                self.key_space
            ));
        }
        let request_bytes = self.key_size.saturating_add(self.val_size);
        if request_bytes > c20_api::MAX_REQUEST_BYTES as u64 {
            return Err(format!(
                "--key-size plus --val-size is {request_bytes} bytes, over the {} byte request limit",
                c20_api::MAX_REQUEST_BYTES
            ));
        }
        let workload = self.workload;
        let consistency = match (workload.reads(), self.consistency) {
            (true, level) => Some(level.unwrap_or(ConsistencyLevel::Strong)),
            (false, None) => None,
            // Writes take a level too (c20 only; etcd ignores the metadata).
            (false, Some(level)) if matches!(workload, Workload::Put) => Some(level),
            (false, Some(_)) => {
                return Err(format!(
                    "--consistency applies to get, mixed and put, not {}",
                    workload.as_str()
                ))
            }
        };
        let read_ratio = match (workload, self.read_ratio) {
            (Workload::Mixed, r) => {
                let r = r.unwrap_or(0.9);
                if !(0.0..=1.0).contains(&r) {
                    return Err(format!("--read-ratio {r} is not between 0 and 1"));
                }
                Some(r)
            }
            (_, None) => None,
            (_, Some(_)) => {
                return Err(format!(
                    "--read-ratio applies to mixed, not {}",
                    workload.as_str()
                ))
            }
        };
        let preload = match self.preload {
            Some(n) if n > self.key_space => {
                return Err(format!(
                    "--preload {n} is more than --key-space {}",
                    self.key_space
                ))
            }
            Some(n) => n,
            None if workload.reads() => self.key_space.min(PRELOAD_DEFAULT_MAX),
            None => 0,
        };
        let limit = match (self.total, self.duration) {
            (Some(_), Some(_)) => return Err("give --total or --duration, not both".into()),
            (Some(n), None) => Limit::Total(n),
            (None, Some(d)) => Limit::Duration(d),
            (None, None) => Limit::Total(TOTAL_DEFAULT),
        };
        Ok(Plan {
            workload,
            endpoints,
            clients: self.clients,
            conns: self.conns,
            key_size,
            val_size: self.val_size as usize,
            fresh_values: self.fresh_values,
            sequential_keys: self.sequential_keys,
            key_space: self.key_space,
            limit,
            consistency,
            read_ratio,
            preload,
            seed: self.seed,
            timeout: self.timeout,
            json: self.json,
            timeline: self.timeline,
        })
    }
}

/// Failed requests by kind: the gRPC code name and the (truncated) message.
#[derive(Debug, Default, Clone, PartialEq)]
struct ErrorKinds {
    total: u64,
    by_kind: BTreeMap<String, u64>,
}

impl ErrorKinds {
    fn add(&mut self, kind: String, count: u64) {
        self.total += count;
        let kind = if self.by_kind.len() < ERROR_KINDS_MAX || self.by_kind.contains_key(&kind) {
            kind
        } else {
            ERROR_KIND_OTHER.to_string()
        };
        *self.by_kind.entry(kind).or_default() += count;
    }

    fn merge(&mut self, other: ErrorKinds) {
        for (kind, count) in other.by_kind {
            self.add(kind, count);
        }
    }
}

fn error_kind(code: tonic::Code, message: &str) -> String {
    let mut kind = format!("{code:?}: ");
    let mut chars = message.chars();
    kind.extend(chars.by_ref().take(ERROR_MESSAGE_MAX_CHARS));
    if chars.next().is_some() {
        kind.push_str("...");
    }
    kind
}

/// Latency percentiles of the successful ops, in milliseconds; all `None` when there were none.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
struct Latency {
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
    p999_ms: Option<f64>,
    max_ms: Option<f64>,
}

impl Latency {
    /// From a histogram of microseconds.
    fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| Some(us as f64 / 1e3);
        Latency {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIGS).expect("valid histogram bounds")
}

/// The result of one run; serialized as the `--json` line.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Report {
    workload: &'static str,
    consistency: Option<&'static str>,
    read_ratio: Option<f64>,
    clients: u64,
    conns: u64,
    key_size: usize,
    val_size: usize,
    key_space: u64,
    /// Completed requests: ok + errors.
    total: u64,
    /// Requests answered without error; includes conflicts.
    ok: u64,
    errors: u64,
    /// txn-cas requests whose compare failed (txn succeeded=false): a normal outcome, not an error.
    conflicts: u64,
    elapsed_s: f64,
    ops_per_s: f64,
    #[serde(flatten)]
    latency: Latency,
    endpoints: Vec<String>,
    error_kinds: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeline: Option<Vec<Window>>,
}

impl Report {
    fn new(plan: &Plan, mut stats: ClientStats, elapsed: Duration) -> Report {
        let timeline = plan
            .timeline
            .map(|w| std::mem::take(&mut stats.samples).windows(w));
        let elapsed_s = elapsed.as_secs_f64();
        let ops_per_s = if elapsed_s > 0.0 {
            stats.ok as f64 / elapsed_s
        } else {
            0.0
        };
        Report {
            workload: plan.workload.as_str(),
            consistency: plan.consistency.map(ConsistencyLevel::as_str),
            read_ratio: plan.read_ratio,
            clients: plan.clients,
            conns: plan.conns,
            key_size: plan.key_size,
            val_size: plan.val_size,
            key_space: plan.key_space,
            total: stats.ok + stats.errors.total,
            ok: stats.ok,
            errors: stats.errors.total,
            conflicts: stats.conflicts,
            elapsed_s: (elapsed_s * 1e6).round() / 1e6,
            ops_per_s: (ops_per_s * 10.0).round() / 10.0,
            latency: Latency::from_histogram(&stats.latency_us),
            endpoints: plan.endpoints.clone(),
            error_kinds: stats.errors.by_kind,
            timeline,
        }
    }

    fn json_line(&self) -> String {
        serde_json::to_string(self).expect("a report always serializes")
    }

    fn table(&self) -> String {
        let ms = bench_timeline::fmt_ms;
        let mut workload = self.workload.to_string();
        if let Some(c) = self.consistency {
            workload += &format!(" (consistency {c})");
        }
        if let Some(r) = self.read_ratio {
            workload += &format!(" (read ratio {r})");
        }
        let mut out = format!(
            "workload    {workload}\n\
             endpoints   {}\n\
             clients     {} over {} connection(s)\n\
             keys        {} B keys, {} distinct; {} B values\n\
             requests    {} completed: {} ok, {} errors, {} conflicts\n\
             elapsed     {:.3} s\n\
             throughput  {:.1} ops/s\n\
             latency ms  p50 {}  p95 {}  p99 {}  p99.9 {}  max {}\n",
            self.endpoints.join(","),
            self.clients,
            self.conns,
            self.key_size,
            self.key_space,
            self.val_size,
            self.total,
            self.ok,
            self.errors,
            self.conflicts,
            self.elapsed_s,
            self.ops_per_s,
            ms(self.latency.p50_ms),
            ms(self.latency.p95_ms),
            ms(self.latency.p99_ms),
            ms(self.latency.p999_ms),
            ms(self.latency.max_ms),
        );
        if !self.error_kinds.is_empty() {
            out += "errors by kind:\n";
            for (kind, count) in &self.error_kinds {
                out += &format!("  {count:>8}  {kind}\n");
            }
        }
        if let Some(windows) = &self.timeline {
            out += "timeline (by completion time):\n";
            out += &bench_timeline::table(windows);
        }
        out
    }
}

/// What one client loop saw.
struct ClientStats {
    latency_us: Histogram<u64>,
    ok: u64,
    conflicts: u64,
    errors: ErrorKinds,
    /// Each success's completion time and latency, kept only for `--timeline`.
    samples: Samples,
}

impl ClientStats {
    fn new() -> ClientStats {
        ClientStats {
            latency_us: new_histogram(),
            ok: 0,
            conflicts: 0,
            errors: ErrorKinds::default(),
            samples: Samples::default(),
        }
    }

    fn merge(&mut self, other: ClientStats) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms share bounds");
        self.ok += other.ok;
        self.conflicts += other.conflicts;
        self.errors.merge(other.errors);
        self.samples.merge(other.samples);
    }
}

/// State shared by the client loops of the timed run.
struct Shared {
    workload: Workload,
    key_size: usize,
    key_space: u64,
    read_ratio: f64,
    serializable: bool,
    fresh_values: bool,
    sequential_keys: bool,
    /// The `c20-consistency` value sent with every request, if the workload has a level.
    consistency: Option<AsciiMetadataValue>,
    timeout: Duration,
    limit: Limit,
    /// Whether client loops keep samples for the timeline.
    timeline: bool,
    start: Instant,
    /// Request slots handed out (`Limit::Total`).
    issued: AtomicU64,
    /// Requests completed, for the progress bar.
    done: AtomicU64,
    /// The next key with `sequential_keys`.
    next_key: AtomicU64,
}

impl Shared {
    /// The index of the next request's key: in order with `sequential_keys`, else at random.
    fn key_index(&self, rng: &mut SmallRng) -> u64 {
        if self.sequential_keys {
            self.next_key.fetch_add(1, Ordering::Relaxed) % self.key_space
        } else {
            rng.random_range(0..self.key_space)
        }
    }

    /// Starts the clock.
    fn new(plan: &Plan) -> Shared {
        Shared {
            workload: plan.workload,
            key_size: plan.key_size,
            key_space: plan.key_space,
            read_ratio: plan.read_ratio.unwrap_or(0.0),
            fresh_values: plan.fresh_values,
            sequential_keys: plan.sequential_keys,
            next_key: AtomicU64::new(0),
            serializable: plan.consistency == Some(ConsistencyLevel::Eventual),
            consistency: plan
                .consistency
                .map(|c| AsciiMetadataValue::from_static(c.as_str())),
            timeout: plan.timeout,
            limit: plan.limit,
            timeline: plan.timeline.is_some(),
            start: Instant::now(),
            issued: AtomicU64::new(0),
            done: AtomicU64::new(0),
        }
    }

    fn take_slot(&self) -> bool {
        match self.limit {
            Limit::Total(n) => self.issued.fetch_add(1, Ordering::Relaxed) < n,
            Limit::Duration(d) => self.start.elapsed() < d,
        }
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(level) = &self.consistency {
            req.metadata_mut()
                .insert(ConsistencyLevel::METADATA_KEY, level.clone());
        }
        req
    }
}

enum Op {
    Get,
    Put,
    Cas,
}

enum Outcome {
    Done,
    Conflict,
}

fn client_seed(seed: u64, index: u64) -> u64 {
    seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn random_value(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    rng.sample_iter(Alphanumeric).take(len).collect()
}

async fn one_op(
    kv: &mut KvClient<GrpcChannel>,
    s: &Shared,
    op: Op,
    key: Vec<u8>,
    value: &[u8],
) -> Result<Outcome, tonic::Status> {
    match op {
        Op::Get => {
            let range = RangeRequest {
                key,
                serializable: s.serializable,
                ..Default::default()
            };
            kv.range(s.request(range)).await?;
        }
        Op::Put => {
            let put = PutRequest {
                key,
                value: value.to_vec(),
                ..Default::default()
            };
            kv.put(s.request(put)).await?;
        }
        Op::Cas => {
            let range = RangeRequest {
                key: key.clone(),
                ..Default::default()
            };
            let seen = kv.range(s.request(range)).await?.into_inner();
            let (target, target_union) = match seen.kvs.first() {
                Some(kv) => (
                    CompareTarget::Mod,
                    TargetUnion::ModRevision(kv.mod_revision),
                ),
                None => (CompareTarget::Version, TargetUnion::Version(0)),
            };
            let txn = TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal as i32,
                    target: target as i32,
                    key: key.clone(),
                    range_end: Vec::new(),
                    target_union: Some(target_union),
                }],
                success: vec![RequestOp {
                    request: Some(TxnOp::RequestPut(PutRequest {
                        key,
                        value: value.to_vec(),
                        ..Default::default()
                    })),
                }],
                failure: Vec::new(),
            };
            if !kv.txn(s.request(txn)).await?.into_inner().succeeded {
                return Ok(Outcome::Conflict);
            }
        }
    }
    Ok(Outcome::Done)
}

async fn client_loop(
    mut kv: KvClient<GrpcChannel>,
    s: Arc<Shared>,
    seed: u64,
    val_size: usize,
) -> ClientStats {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut value = random_value(&mut rng, val_size);
    let mut stats = ClientStats::new();
    while s.take_slot() {
        if s.fresh_values {
            value = random_value(&mut rng, val_size);
        }
        let key = format_key(s.key_index(&mut rng), s.key_size);
        let op = match s.workload {
            Workload::Put => Op::Put,
            Workload::Get => Op::Get,
            Workload::TxnCas => Op::Cas,
            Workload::Mixed if rng.random::<f64>() < s.read_ratio => Op::Get,
            Workload::Mixed => Op::Put,
        };
        let started = Instant::now();
        let result = tokio::time::timeout(s.timeout, one_op(&mut kv, &s, op, key, &value)).await;
        let latency_us = started.elapsed().as_micros() as u64;
        match result {
            Ok(Ok(outcome)) => {
                stats.ok += 1;
                if matches!(outcome, Outcome::Conflict) {
                    stats.conflicts += 1;
                }
                stats.latency_us.saturating_record(latency_us);
                if s.timeline {
                    stats.samples.record(s.start.elapsed(), latency_us);
                }
            }
            Ok(Err(status)) => stats
                .errors
                .add(error_kind(status.code(), status.message()), 1),
            Err(_) => stats.errors.add(
                error_kind(
                    tonic::Code::DeadlineExceeded,
                    &format!("no answer within --timeout {:?}", s.timeout),
                ),
                1,
            ),
        }
        s.done.fetch_add(1, Ordering::Relaxed);
    }
    stats
}

async fn connect(plan: &Plan) -> Result<Vec<KvClient<GrpcChannel>>> {
    let mut clients = Vec::with_capacity(plan.conns as usize);
    for i in 0..plan.conns as usize {
        let ep = &plan.endpoints[i % plan.endpoints.len()];
        clients.push(KvClient::new(channel(ep).await?));
    }
    Ok(clients)
}

/// One connection to `ep` (`host:port` or a URL), with Nagle off and the writes of concurrent
/// calls gathered and unary requests ending with their message (`c20_api::net`).
pub(crate) async fn channel(ep: &str) -> Result<GrpcChannel> {
    let channel = c20_client::connect_channel(ep, CONNECT_TIMEOUT).await?;
    Ok(GrpcChannel::new(channel))
}

fn progress_bar(visible: bool, len: u64, template: &str) -> ProgressBar {
    let target = if visible {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    bar.set_style(ProgressStyle::with_template(template).expect("valid progress template"));
    bar
}

/// Puts per preload txn: as many as fit in [`PRELOAD_BATCH_BYTES`], at most etcd's txn op limit.
fn preload_batch(key_size: usize, val_size: usize) -> u64 {
    let per_put = key_size + val_size + 16;
    (PRELOAD_BATCH_BYTES / per_put).clamp(1, c20_api::MAX_TXN_OPS) as u64
}

/// Writes keys `0..plan.preload` in batched txns so that reads find them. Not timed.
async fn preload(plan: &Plan, kvs: &[KvClient<GrpcChannel>], show_bar: bool) -> Result<()> {
    let bar = progress_bar(
        show_bar,
        plan.preload,
        "preload [{elapsed_precise}] {wide_bar} {pos}/{len}",
    );
    let batch = preload_batch(plan.key_size, plan.val_size);
    let next = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for w in 0..PRELOAD_WORKERS.min(plan.preload.div_ceil(batch)) {
        let mut kv = kvs[w as usize % kvs.len()].clone();
        let (next, bar) = (next.clone(), bar.clone());
        let (count, key_size, timeout) = (plan.preload, plan.key_size, plan.timeout);
        let mut rng = SmallRng::seed_from_u64(client_seed(!plan.seed, w));
        let value = random_value(&mut rng, plan.val_size);
        set.spawn(async move {
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= count {
                    return Ok(());
                }
                let keys = first..count.min(first + batch);
                let puts = keys.clone().map(|i| RequestOp {
                    request: Some(TxnOp::RequestPut(PutRequest {
                        key: format_key(i, key_size),
                        value: value.clone(),
                        ..Default::default()
                    })),
                });
                let txn = TxnRequest {
                    success: puts.collect(),
                    ..Default::default()
                };
                let what = || format!("preload of keys {} to {}", keys.start, keys.end - 1);
                match tokio::time::timeout(timeout, kv.txn(txn)).await {
                    Ok(Ok(_)) => bar.inc(keys.end - keys.start),
                    Ok(Err(s)) => {
                        anyhow::bail!("{}: {}", what(), error_kind(s.code(), s.message()))
                    }
                    Err(_) => anyhow::bail!("{}: no answer within {timeout:?}", what()),
                }
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done.context("preload worker panicked")??;
    }
    bar.finish_and_clear();
    Ok(())
}

async fn timed_run(plan: &Plan, kvs: &[KvClient<GrpcChannel>], show_bar: bool) -> Result<Report> {
    let shared = Arc::new(Shared::new(plan));
    let bar = match plan.limit {
        Limit::Total(n) => progress_bar(
            show_bar,
            n,
            "[{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        ),
        Limit::Duration(d) => progress_bar(
            show_bar,
            d.as_millis() as u64,
            "[{elapsed_precise}] {wide_bar} {msg}",
        ),
    };
    let ticker = {
        let (s, bar) = (shared.clone(), bar.clone());
        tokio::spawn(async move {
            loop {
                let done = s.done.load(Ordering::Relaxed);
                match s.limit {
                    Limit::Total(_) => bar.set_position(done),
                    Limit::Duration(_) => {
                        bar.set_position(s.start.elapsed().as_millis() as u64);
                        bar.set_message(format!("{done} ops"));
                    }
                }
                tokio::time::sleep(PROGRESS_TICK).await;
            }
        })
    };
    let mut set = JoinSet::new();
    for i in 0..plan.clients {
        let kv = kvs[i as usize % kvs.len()].clone();
        set.spawn(client_loop(
            kv,
            shared.clone(),
            client_seed(plan.seed, i),
            plan.val_size,
        ));
    }
    let mut stats = ClientStats::new();
    while let Some(done) = set.join_next().await {
        stats.merge(done.context("client loop panicked")?);
    }
    let elapsed = shared.start.elapsed();
    ticker.abort();
    bar.finish_and_clear();
    Ok(Report::new(plan, stats, elapsed))
}

pub async fn run(args: BenchArgs) -> Result<()> {
    let plan = args.plan().map_err(anyhow::Error::msg)?;
    let show_bar = !plan.json && std::io::stderr().is_terminal();
    let kvs = connect(&plan).await?;
    if plan.preload > 0 {
        preload(&plan, &kvs, show_bar).await?;
    }
    let report = timed_run(&plan, &kvs, show_bar).await?;
    if plan.json {
        println!("{}", report.json_line());
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn plan(args: &[&str]) -> Result<Plan, String> {
        let argv = std::iter::once("bench").chain(args.iter().copied());
        Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .bench
            .plan()
    }

    #[test]
    fn keys_are_k_and_zero_padded_decimal_of_exactly_key_size_bytes() {
        assert_eq!(format_key(42, 8), b"k0000042");
        assert_eq!(format_key(0, 2), b"k0");
        assert_eq!(format_key(9_999_999, 8), b"k9999999");
        assert_eq!(format_key(7, 20).len(), 20);
        // Zero padding keeps byte order equal to index order, so ranges over keys are index ranges.
        assert!(format_key(9, 6) < format_key(10, 6));
    }

    #[test]
    fn key_size_must_hold_every_index_of_the_key_space() {
        assert!(plan(&["--key-size", "8", "--key-space", "10000000"]).is_ok());
        let err = plan(&["--key-size", "8", "--key-space", "10000001"]).unwrap_err();
        assert!(err.contains("--key-size 8"), "{err}");
        assert!(plan(&["--key-size", "2", "--key-space", "10"]).is_ok());
        assert!(plan(&["--key-size", "1"]).is_err());
    }

    #[test]
    fn total_or_duration_but_not_both_and_total_10000_by_default() {
        assert_eq!(plan(&[]).unwrap().limit, Limit::Total(10_000));
        assert_eq!(plan(&["--total", "5"]).unwrap().limit, Limit::Total(5));
        assert_eq!(
            plan(&["--duration", "1.5s"]).unwrap().limit,
            Limit::Duration(Duration::from_millis(1500))
        );
        let err = plan(&["--total", "5", "--duration", "1s"]).unwrap_err();
        assert!(err.contains("cannot be used with"), "{err}");
        assert!(plan(&["--total", "0"]).is_err());
        assert!(plan(&["--duration", "0s"]).is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "10x", "-1s", "1.2.3s", "0ms"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn consistency_and_read_ratio_belong_to_the_workloads_that_use_them() {
        let p = plan(&["--workload", "get"]).unwrap();
        assert_eq!(p.consistency, Some(ConsistencyLevel::Strong));
        assert_eq!(p.read_ratio, None);
        assert_eq!(p.preload, 10_000);
        let p = plan(&[
            "--workload",
            "get",
            "--consistency",
            "eventual",
            "--key-space",
            "50",
        ])
        .unwrap();
        assert_eq!(p.consistency, Some(ConsistencyLevel::Eventual));
        assert_eq!(p.preload, 50);
        let p = plan(&["--workload", "mixed"]).unwrap();
        assert_eq!(
            (p.consistency, p.read_ratio),
            (Some(ConsistencyLevel::Strong), Some(0.9))
        );
        let p = plan(&["--workload", "txn-cas"]).unwrap();
        assert_eq!((p.consistency, p.read_ratio, p.preload), (None, None, 0));

        assert!(plan(&["--workload", "txn-cas", "--consistency", "all"]).is_err());
        let p = plan(&["--workload", "put", "--consistency", "all"]).unwrap();
        assert_eq!(p.consistency, Some(ConsistencyLevel::All));
        assert!(plan(&["--workload", "get", "--read-ratio", "0.5"]).is_err());
        assert!(plan(&["--workload", "mixed", "--read-ratio", "1.5"]).is_err());
        assert!(plan(&["--workload", "get", "--consistency", "linear"]).is_err());
        assert!(plan(&["--preload", "11", "--key-space", "10"]).is_err());
        assert!(plan(&["--endpoints", ","]).is_err());
    }

    #[test]
    fn eventual_reads_are_serializable_and_every_level_travels_as_metadata() {
        let level_sent = |args: &[&str]| {
            let s = Shared::new(&plan(args).unwrap());
            let req = s.request(());
            let level = req.metadata().get(ConsistencyLevel::METADATA_KEY);
            (
                s.serializable,
                level.map(|v| v.to_str().unwrap().to_string()),
            )
        };
        assert_eq!(level_sent(&["--workload", "put"]), (false, None));
        assert_eq!(level_sent(&["--workload", "txn-cas"]), (false, None));
        assert_eq!(
            level_sent(&["--workload", "get"]),
            (false, Some("strong".into()))
        );
        assert_eq!(
            level_sent(&["--workload", "get", "--consistency", "eventual"]),
            (true, Some("eventual".into()))
        );
        for level in ["sequential", "quorum", "all"] {
            assert_eq!(
                level_sent(&["--workload", "mixed", "--consistency", level]),
                (false, Some(level.into()))
            );
        }
    }

    #[test]
    fn total_limit_hands_out_exactly_total_slots() {
        let s = Shared::new(&plan(&["--total", "3"]).unwrap());
        let taken = (0..10).filter(|_| s.take_slot()).count();
        assert_eq!(taken, 3);
    }

    #[test]
    fn sequential_keys_take_every_index_once_then_wrap() {
        let s = Shared::new(&plan(&["--key-space", "4", "--sequential-keys"]).unwrap());
        let mut rng = SmallRng::seed_from_u64(1);
        let got: Vec<u64> = (0..6).map(|_| s.key_index(&mut rng)).collect();
        assert_eq!(got, [0, 1, 2, 3, 0, 1]);
        // Without the flag, keys are drawn at random (and this seed does not draw them in order).
        let s = Shared::new(&plan(&["--key-space", "1000"]).unwrap());
        let got: Vec<u64> = (0..6).map(|_| s.key_index(&mut rng)).collect();
        assert!(got.iter().all(|&i| i < 1000));
        assert_ne!(got, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn preload_batches_fit_the_txn_op_and_request_limits() {
        assert_eq!(preload_batch(8, 256), c20_api::MAX_TXN_OPS as u64);
        assert_eq!(
            preload_batch(8, 4096),
            (PRELOAD_BATCH_BYTES / (8 + 4096 + 16)) as u64
        );
        assert_eq!(preload_batch(8, c20_api::MAX_REQUEST_BYTES - 8), 1);
    }

    #[test]
    fn error_kinds_truncate_messages_and_cap_distinct_kinds() {
        assert_eq!(
            error_kind(tonic::Code::Unavailable, "leader changed"),
            "Unavailable: leader changed"
        );
        let long = "é".repeat(ERROR_MESSAGE_MAX_CHARS + 5);
        let kind = error_kind(tonic::Code::Internal, &long);
        assert_eq!(
            kind.chars().count(),
            "Internal: ".len() + ERROR_MESSAGE_MAX_CHARS + 3
        );
        assert!(kind.ends_with("..."));

        let mut kinds = ErrorKinds::default();
        for i in 0..ERROR_KINDS_MAX + 10 {
            kinds.add(format!("kind {i}"), 2);
        }
        kinds.add("kind 0".into(), 1);
        assert_eq!(kinds.total, 2 * (ERROR_KINDS_MAX as u64 + 10) + 1);
        assert_eq!(kinds.by_kind.len(), ERROR_KINDS_MAX + 1);
        assert_eq!(kinds.by_kind["kind 0"], 3);
        assert_eq!(kinds.by_kind[ERROR_KIND_OTHER], 20);
        assert_eq!(kinds.by_kind.values().sum::<u64>(), kinds.total);
    }

    #[test]
    fn latency_percentiles_are_milliseconds_of_the_recorded_microseconds() {
        let mut h = new_histogram();
        assert_eq!(Latency::from_histogram(&h), Latency::default());
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        let l = Latency::from_histogram(&h);
        assert_eq!(l.p50_ms, Some(0.5));
        assert_eq!(l.p95_ms, Some(0.95));
        assert_eq!(l.p99_ms, Some(0.99));
        assert_eq!(l.p999_ms, Some(0.999));
        assert_eq!(l.max_ms, Some(1.0));
    }

    fn sample_report(plan: &Plan) -> Report {
        let mut stats = ClientStats::new();
        for us in [800, 1200, 2000] {
            stats.latency_us.record(us).unwrap();
        }
        stats.ok = 3;
        stats.conflicts = 1;
        stats
            .errors
            .add(error_kind(tonic::Code::Unavailable, "no leader"), 2);
        Report::new(plan, stats, Duration::from_millis(1500))
    }

    #[test]
    fn json_line_has_every_field_and_parses_back() {
        let p = plan(&[
            "--workload",
            "get",
            "--endpoints",
            "a:1,b:2",
            "--clients",
            "4",
        ])
        .unwrap();
        let line = sample_report(&p).json_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut want = vec![
            "workload",
            "consistency",
            "read_ratio",
            "clients",
            "conns",
            "key_size",
            "val_size",
            "key_space",
            "total",
            "ok",
            "errors",
            "conflicts",
            "elapsed_s",
            "ops_per_s",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "p999_ms",
            "max_ms",
            "endpoints",
            "error_kinds",
        ];
        want.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(v["workload"], "get");
        assert_eq!(v["consistency"], "strong");
        assert_eq!(v["read_ratio"], serde_json::Value::Null);
        assert_eq!(v["clients"], 4);
        assert_eq!(v["total"], 5);
        assert_eq!(v["ok"], 3);
        assert_eq!(v["errors"], 2);
        assert_eq!(v["conflicts"], 1);
        assert_eq!(v["elapsed_s"], 1.5);
        assert_eq!(v["ops_per_s"], 2.0);
        assert_eq!(v["p50_ms"], 1.2);
        assert_eq!(v["max_ms"], 2.0);
        assert_eq!(v["endpoints"], serde_json::json!(["a:1", "b:2"]));
        assert_eq!(
            v["error_kinds"],
            serde_json::json!({"Unavailable: no leader": 2})
        );
    }

    #[test]
    fn report_without_successes_has_null_latencies_and_put_has_null_consistency() {
        let p = plan(&["--workload", "put"]).unwrap();
        let r = Report::new(&p, ClientStats::new(), Duration::ZERO);
        let v: serde_json::Value = serde_json::from_str(&r.json_line()).unwrap();
        assert_eq!(v["consistency"], serde_json::Value::Null);
        assert_eq!(v["p99_ms"], serde_json::Value::Null);
        assert_eq!(v["ops_per_s"], 0.0);
        assert!(r.table().contains("p50 -"));
    }

    #[test]
    fn the_timeline_is_reported_only_when_asked_for() {
        let p = plan(&["--workload", "put", "--timeline", "250ms"]).unwrap();
        assert_eq!(p.timeline, Some(Duration::from_millis(250)));
        assert!(plan(&["--timeline", "0ms"]).is_err());
        let mut stats = ClientStats::new();
        for (done_ms, us) in [(10, 800), (20, 1200), (600, 9000)] {
            stats.latency_us.record(us).unwrap();
            stats.samples.record(Duration::from_millis(done_ms), us);
        }
        stats.ok = 3;
        let r = Report::new(&p, stats, Duration::from_millis(700));
        let v: serde_json::Value = serde_json::from_str(&r.json_line()).unwrap();
        let windows = v["timeline"].as_array().expect("timeline in the json line");
        let ops: Vec<u64> = windows.iter().map(|w| w["ops"].as_u64().unwrap()).collect();
        assert_eq!(ops, [2, 0, 1]);
        assert_eq!(windows[2]["start_ms"], 500.0);
        assert_eq!(windows[2]["p99_ms"], 9.0);
        assert!(r.table().contains("timeline (by completion time):"));
        // Without --timeline: no samples are kept and no timeline is printed.
        let p = plan(&["--workload", "put"]).unwrap();
        assert!(!Shared::new(&p).timeline);
        let v: serde_json::Value = serde_json::from_str(&sample_report(&p).json_line()).unwrap();
        assert!(v.get("timeline").is_none());
    }

    #[test]
    fn table_shows_counts_latency_and_error_kinds() {
        let p = plan(&["--workload", "txn-cas"]).unwrap();
        let t = sample_report(&p).table();
        assert!(
            t.contains("5 completed: 3 ok, 2 errors, 1 conflicts"),
            "{t}"
        );
        assert!(t.contains("throughput  2.0 ops/s"), "{t}");
        assert!(t.contains("p50 1.200"), "{t}");
        assert!(t.contains("       2  Unavailable: no leader"), "{t}");
    }
}
