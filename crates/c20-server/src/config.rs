//! A node's configuration, named as etcd names its flags.

use c20_raft::NodeId;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `--name`
    pub name: String,
    /// `--data-dir`
    pub data_dir: PathBuf,
    /// `--listen-client-urls`
    pub listen_client_urls: Vec<String>,
    /// `--advertise-client-urls`
    pub advertise_client_urls: Vec<String>,
    /// `--listen-peer-urls`
    pub listen_peer_urls: Vec<String>,
    /// `--initial-advertise-peer-urls`
    pub initial_advertise_peer_urls: Vec<String>,
    /// `--initial-cluster`, parsed: (name, peer URLs).
    pub initial_cluster: Vec<(String, Vec<String>)>,
    /// `--initial-cluster-state new|existing`
    pub initial_cluster_state_new: bool,
    /// `--initial-cluster-token`
    pub initial_cluster_token: String,
    /// `--heartbeat-interval` (ms)
    pub heartbeat_interval_ms: u64,
    /// `--election-timeout` (ms); randomized between it and twice it.
    pub election_timeout_ms: u64,
    /// `--snapshot-count`
    pub snapshot_count: u64,
    /// `--experimental-snapshot-catchup-entries`: entries kept below a snapshot for slow
    /// followers.
    pub snapshot_catchup_entries: u64,
    /// `--snapshot-log-bytes`: a snapshot is also taken after this many bytes of log entries.
    pub snapshot_log_bytes: u64,
    /// How long a request may wait for a leader or a commit.
    pub request_timeout: Duration,
    /// `--experimental-watch-progress-notify-interval`: how often watchers that asked for
    /// progress notifications get one while idle.
    pub watch_progress_notify_interval: Duration,
    /// `--apply-threads`: threads reading for independent requests of an applied batch in
    /// parallel (1 = strictly serial apply).
    pub apply_threads: usize,
    /// `--peer-compression-min-bytes`: peer requests at least this long travel lz4-compressed
    /// (0 = never).
    pub peer_compression_min_bytes: usize,
    /// `--batch-max-ops`: most client requests in one log entry (1 = batching off).
    pub batch_max_ops: usize,
    /// `--proposal-window`: most batches replicating at once (1 = no pipelining, 0 = no bound).
    pub proposal_window: usize,
    /// `--peer-append-window`: most log appends in flight to one follower on its append stream
    /// (0 = one call per append, each after the answer to the one before).
    pub peer_append_window: usize,
    /// `--read-coalescing`: whether concurrent linearizable reads share quorum rounds.
    pub read_coalescing: bool,
    /// `--wal-preallocate`: whether log segments are created zero-filled to their full size.
    pub wal_preallocate: bool,
    /// `--backend-batch-interval`: the longest time between checkpoints of the store while
    /// writes are applied.
    pub backend_batch_interval: Duration,
    /// `--backend-batch-limit`: the most write requests applied between checkpoints.
    pub backend_batch_limit: u64,
    /// `--backend-batch-bytes`: a checkpoint is also taken once the rows waiting for it come
    /// to about this many bytes (0: no such trigger).
    pub backend_batch_bytes: u64,
}

/// Default of `--batch-max-ops`.
pub const DEFAULT_BATCH_MAX_OPS: usize = c20_raft::batcher::DEFAULT_BATCH_OPS_MAX;

/// Default of `--proposal-window`.
pub const DEFAULT_PROPOSAL_WINDOW: usize = c20_raft::batcher::DEFAULT_PROPOSAL_WINDOW;

/// Default of `--peer-append-window`.
pub const DEFAULT_PEER_APPEND_WINDOW: usize = c20_raft::network::DEFAULT_APPEND_WINDOW;

/// Default of `--backend-batch-interval`.
pub const DEFAULT_BACKEND_BATCH_INTERVAL: Duration =
    c20_raft::state_machine::DEFAULT_CHECKPOINT_INTERVAL;

/// Default of `--backend-batch-limit`.
pub const DEFAULT_BACKEND_BATCH_LIMIT: u64 = c20_raft::state_machine::DEFAULT_CHECKPOINT_WRITES_MAX;

/// Default of `--backend-batch-bytes`.
pub const DEFAULT_BACKEND_BATCH_BYTES: u64 = c20_raft::state_machine::DEFAULT_CHECKPOINT_BYTES_MAX;

/// Default of `--peer-compression-min-bytes` (docs/BENCHMARKS.md has the measurement behind it).
pub const DEFAULT_PEER_COMPRESSION_MIN_BYTES: usize = 0;

impl ServerConfig {
    /// A single-member configuration on the given URLs (handy for tests and `c20 serve`
    /// without flags).
    pub fn single(name: &str, data_dir: PathBuf, client_url: &str, peer_url: &str) -> ServerConfig {
        ServerConfig {
            name: name.to_string(),
            data_dir,
            listen_client_urls: vec![client_url.to_string()],
            advertise_client_urls: vec![client_url.to_string()],
            listen_peer_urls: vec![peer_url.to_string()],
            initial_advertise_peer_urls: vec![peer_url.to_string()],
            initial_cluster: vec![(name.to_string(), vec![peer_url.to_string()])],
            initial_cluster_state_new: true,
            initial_cluster_token: "etcd-cluster".to_string(),
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            snapshot_count: 100_000,
            snapshot_catchup_entries: 5000,
            snapshot_log_bytes: 256 << 20,
            request_timeout: Duration::from_secs(7),
            watch_progress_notify_interval: Duration::from_secs(600),
            apply_threads: c20_raft::node::default_apply_threads(),
            peer_compression_min_bytes: DEFAULT_PEER_COMPRESSION_MIN_BYTES,
            batch_max_ops: DEFAULT_BATCH_MAX_OPS,
            proposal_window: DEFAULT_PROPOSAL_WINDOW,
            peer_append_window: DEFAULT_PEER_APPEND_WINDOW,
            read_coalescing: true,
            wal_preallocate: true,
            backend_batch_interval: DEFAULT_BACKEND_BATCH_INTERVAL,
            backend_batch_limit: DEFAULT_BACKEND_BATCH_LIMIT,
            backend_batch_bytes: DEFAULT_BACKEND_BATCH_BYTES,
        }
    }
}

/// Parses etcd's `--initial-cluster` value: `name=url,name=url,...` (a name may repeat to give a
/// member several peer URLs).
pub fn parse_initial_cluster(s: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| format!("--initial-cluster entry {part:?} is not name=url"))?;
        parse_url(url)?;
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => out.push((name.to_string(), vec![url.to_string()])),
        }
    }
    if out.is_empty() {
        return Err("--initial-cluster is empty".into());
    }
    Ok(out)
}

/// Parses `http://host:port` into a socket address to bind.
pub fn parse_url(url: &str) -> Result<SocketAddr, String> {
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if url.starts_with("https://") || url.starts_with("unixs://") {
        return Err(format!(
            "{url}: TLS URLs are not supported yet; use http://"
        ));
    } else {
        return Err(format!("{url}: expected http://host:port"));
    };
    let hostport = rest.trim_end_matches('/');
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport
        .parse::<SocketAddr>()
        .map_err(|e| format!("{url}: {e} (expected an IP address and port)"))
}

/// FNV-1a, 64 bits: a stable hash for ids derived from names and URLs.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A member's id: derived from its sorted peer URLs and the cluster token, as etcd derives it, so
/// every member computes the same ids from the same `--initial-cluster`.
pub fn member_id(peer_urls: &[String], token: &str) -> NodeId {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let joined = urls.join(",");
    let id = fnv1a(&[joined.as_bytes(), token.as_bytes()]);
    id.max(1)
}

/// The cluster id: derived from the sorted ids of the initial members.
pub fn cluster_id(member_ids: &[NodeId], token: &str) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_be_bytes()).collect();
    fnv1a(&[&bytes, token.as_bytes()]).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_initial_cluster() {
        let c =
            parse_initial_cluster("a=http://127.0.0.1:1,b=http://127.0.0.1:2,a=http://127.0.0.1:3")
                .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].1, vec!["http://127.0.0.1:1", "http://127.0.0.1:3"]);
        assert!(parse_initial_cluster("a").unwrap_err().contains("name=url"));
        assert!(parse_initial_cluster("a=https://127.0.0.1:1")
            .unwrap_err()
            .contains("TLS"));
        assert!(parse_initial_cluster("").is_err());
    }

    #[test]
    fn ids_are_stable_and_depend_on_urls_and_token() {
        let a = member_id(&["http://127.0.0.1:2380".into()], "t");
        assert_eq!(a, member_id(&["http://127.0.0.1:2380".into()], "t"));
        assert_ne!(a, member_id(&["http://127.0.0.1:2381".into()], "t"));
        assert_ne!(a, member_id(&["http://127.0.0.1:2380".into()], "u"));
        assert_eq!(cluster_id(&[1, 2, 3], "t"), cluster_id(&[3, 1, 2], "t"));
    }
}
