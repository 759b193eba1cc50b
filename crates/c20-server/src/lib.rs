//! One c20 node: etcd's v3 gRPC services on the client URLs, c20's peer service on the peer
//! URLs, over a [`c20_raft::RaftNode`].

mod cluster;
pub mod config;
mod kv;
mod lease;
mod maintenance;
pub mod tuning;
mod watch_service;

pub use c20_raft::node::default_apply_threads;
pub use config::{parse_initial_cluster, parse_url, ServerConfig};
pub use maintenance::ETCD_API_VERSION;

pub use watch_service::{WatchMetrics, EVENTS_PER_RESPONSE, SEND_QUEUE_RESPONSES};

use c20_api::etcdserverpb::cluster_server::ClusterServer;
use c20_api::etcdserverpb::kv_server::KvServer;
use c20_api::etcdserverpb::lease_server::LeaseServer;
use c20_api::etcdserverpb::maintenance_server::MaintenanceServer;
use c20_api::etcdserverpb::watch_server::WatchServer;
use c20_api::etcdserverpb::ResponseHeader;
use c20_api::net::Coalesce;
use c20_api::{GRPC_OVERHEAD_BYTES, MAX_REQUEST_BYTES};
use c20_raft::{MemberAttrs, NodeId, PeerNode, RaftNode, RaftNodeConfig};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

/// State every service shares.
pub(crate) struct Shared {
    pub(crate) node: Arc<RaftNode>,
    pub(crate) cluster_id: u64,
    /// `--initial-cluster-token`: member ids of added members derive from it.
    pub(crate) token: String,
    pub(crate) watch_metrics: Arc<WatchMetrics>,
}

impl Shared {
    /// Fills a response header as etcd does: cluster, member, term; the revision comes from the
    /// store (already set, or the current one).
    pub(crate) fn fill_header(&self, header: &mut Option<ResponseHeader>) {
        let revision = match header {
            Some(h) => h.revision,
            None => self.node.state().read(|s| s.current_revision()),
        };
        *header = Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.node.id(),
            revision,
            raft_term: self.node.term(),
        });
    }

    /// A header for responses that carry no revision (etcd leaves it out of member responses).
    pub(crate) fn header_without_revision(&self) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.node.id(),
            revision: 0,
            raft_term: self.node.term(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("storage: {0}")]
    Storage(#[from] c20_storage::StorageError),
    #[error("cannot listen on {addr}: {err}")]
    Listen {
        addr: SocketAddr,
        err: std::io::Error,
    },
}

/// A running node. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    node: Arc<RaftNode>,
    watch_metrics: Arc<WatchMetrics>,
    client_addrs: Vec<SocketAddr>,
    peer_addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Starts the node: opens its storage, joins Raft, and serves clients and peers.
    pub async fn start(cfg: ServerConfig) -> Result<Server, ServerError> {
        let token = cfg.initial_cluster_token.clone();
        let mut initial_members = BTreeMap::new();
        for (name, urls) in &cfg.initial_cluster {
            let id = config::member_id(urls, &token);
            initial_members.insert(
                id,
                PeerNode {
                    name: name.clone(),
                    peer_urls: urls.clone(),
                },
            );
        }
        let me = config::member_id(&cfg.initial_advertise_peer_urls, &token);
        if !initial_members.contains_key(&me) {
            return Err(ServerError::Config(format!(
                "--initial-cluster has no member with this node's --initial-advertise-peer-urls {}",
                cfg.initial_advertise_peer_urls.join(",")
            )));
        }
        if initial_members[&me].name != cfg.name {
            return Err(ServerError::Config(format!(
                "--initial-cluster names this node's peer URLs {:?}, but --name is {:?}",
                initial_members[&me].name, cfg.name
            )));
        }
        let ids: Vec<NodeId> = initial_members.keys().copied().collect();
        let cluster_id = if cfg.initial_cluster_state_new {
            config::cluster_id(&ids, &token)
        } else {
            // Joining: the cluster's id is whatever it was bootstrapped with; ask the others.
            let others: Vec<String> = initial_members
                .iter()
                .filter(|(id, _)| **id != me)
                .flat_map(|(_, n)| n.peer_urls.clone())
                .collect();
            c20_raft::ask_cluster_id(&others, std::time::Duration::from_secs(30))
                .await
                .map_err(|e| {
                    ServerError::Config(format!(
                        "--initial-cluster-state existing: no member of --initial-cluster told \
                         the cluster id ({e})"
                    ))
                })?
        };

        // Bind first: a port in use fails fast, before any state is touched.
        let mut client_listeners = Vec::new();
        for url in &cfg.listen_client_urls {
            client_listeners.push(bind(url).await?);
        }
        let mut peer_listeners = Vec::new();
        for url in &cfg.listen_peer_urls {
            peer_listeners.push(bind(url).await?);
        }

        let mut rcfg = RaftNodeConfig::new(me, cfg.data_dir.clone(), initial_members);
        rcfg.bootstrap = cfg.initial_cluster_state_new;
        rcfg.attrs = MemberAttrs {
            name: cfg.name.clone(),
            client_urls: cfg.advertise_client_urls.clone(),
        };
        rcfg.heartbeat_interval_ms = cfg.heartbeat_interval_ms;
        rcfg.election_timeout_min_ms = cfg.election_timeout_ms;
        rcfg.election_timeout_max_ms = cfg.election_timeout_ms * 2;
        rcfg.request_timeout = cfg.request_timeout;
        rcfg.snapshot_count = cfg.snapshot_count;
        rcfg.snapshot_catchup_entries = cfg.snapshot_catchup_entries;
        rcfg.snapshot_log_bytes = cfg.snapshot_log_bytes;
        rcfg.apply_threads = cfg.apply_threads;
        rcfg.peer_compression = c20_raft::network::PeerCompression {
            min_bytes: cfg.peer_compression_min_bytes,
        };
        rcfg.batch.ops_max = cfg.batch_max_ops;
        rcfg.batch.window = cfg.proposal_window;
        rcfg.append_window = cfg.peer_append_window;
        rcfg.read_coalescing = cfg.read_coalescing;
        rcfg.wal.preallocate = cfg.wal_preallocate;
        rcfg.checkpoint = c20_raft::CheckpointPolicy {
            interval: cfg.backend_batch_interval,
            writes_max: cfg.backend_batch_limit,
            bytes_max: cfg.backend_batch_bytes,
        };
        rcfg.cluster_id = cluster_id;
        let node = RaftNode::start(rcfg).await?;
        let shared = Arc::new(Shared {
            node: node.clone(),
            cluster_id,
            token: token.clone(),
            watch_metrics: Arc::new(WatchMetrics::default()),
        });

        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let local_addr = |l: &TcpListener| {
            l.local_addr().map_err(|err| ServerError::Listen {
                addr: "0.0.0.0:0".parse().expect("literal addr"),
                err,
            })
        };
        let mut client_addrs = Vec::new();
        let recv_max = MAX_REQUEST_BYTES + GRPC_OVERHEAD_BYTES;
        for l in client_listeners {
            client_addrs.push(local_addr(&l)?);
            let router = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(
                    KvServer::new(kv::KvService {
                        shared: shared.clone(),
                    })
                    .max_decoding_message_size(recv_max),
                )
                .add_service(
                    MaintenanceServer::new(maintenance::MaintenanceService {
                        shared: shared.clone(),
                    })
                    .max_decoding_message_size(recv_max),
                )
                .add_service(ClusterServer::new(cluster::ClusterService {
                    shared: shared.clone(),
                }))
                .add_service(
                    WatchServer::new(watch_service::WatchService {
                        shared: shared.clone(),
                        stop: stop_rx.clone(),
                        progress_interval: cfg.watch_progress_notify_interval,
                    })
                    .max_decoding_message_size(recv_max),
                )
                .add_service(
                    LeaseServer::new(lease::LeaseService {
                        shared: shared.clone(),
                        stop: stop_rx.clone(),
                    })
                    .max_decoding_message_size(recv_max),
                );
            tasks.push(serve(router, l, stop_rx.clone(), "client"));
        }
        let mut peer_addrs = Vec::new();
        for l in peer_listeners {
            peer_addrs.push(local_addr(&l)?);
            let router = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(node.peer_service(stop_rx.clone()));
            tasks.push(serve(router, l, stop_rx.clone(), "peer"));
        }
        tracing::info!(
            name = %cfg.name,
            member_id = %format!("{me:x}"),
            cluster_id = %format!("{cluster_id:x}"),
            clients = ?client_addrs,
            peers = ?peer_addrs,
            "c20 member serving"
        );
        Ok(Server {
            watch_metrics: shared.watch_metrics.clone(),
            node,
            client_addrs,
            peer_addrs,
            stop,
            tasks,
        })
    }

    pub fn node(&self) -> &Arc<RaftNode> {
        &self.node
    }

    /// Returns once this member has been removed from the cluster (it then refuses requests
    /// with etcd's "member has been permanently removed" error).
    pub async fn wait_removed(&self) {
        self.node.wait_removed().await
    }

    /// What this member's watch streams hold now.
    pub fn watch_metrics(&self) -> &WatchMetrics {
        &self.watch_metrics
    }

    pub fn client_addrs(&self) -> &[SocketAddr] {
        &self.client_addrs
    }

    pub fn peer_addrs(&self) -> &[SocketAddr] {
        &self.peer_addrs
    }

    /// Stops serving, stops Raft and makes state durable.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.node.shutdown().await;
    }
}

/// Serves `router` on `listener` until `stop` turns true.
fn serve(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Builder::tcp_nodelay does not reach sockets accepted from our own listener; without
        // it, Nagle's algorithm holds each reply's trailers for a delayed ACK (~40 ms).
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .map(|conn| conn.map(Coalesce::new));
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
        {
            tracing::error!(error = %e, "{what} server stopped");
        }
    })
}

async fn bind(url: &str) -> Result<TcpListener, ServerError> {
    let addr = parse_url(url).map_err(ServerError::Config)?;
    TcpListener::bind(addr)
        .await
        .map_err(|err| ServerError::Listen { addr, err })
}

/// Seeds `data_dir` (which must not exist) from a backup file's bytes, so that `c20 serve
/// --data-dir` on it starts a new cluster holding that data at the same revision. Returns the
/// revision.
pub fn restore_backup(backup: &[u8], data_dir: &std::path::Path) -> Result<i64, String> {
    if data_dir.exists() {
        return Err(format!(
            "data-dir {:?} exists",
            data_dir.display().to_string()
        ));
    }
    let container = c20_storage::snapshot::from_backup(backup).map_err(|e| e.to_string())?;
    let res = c20_raft::state_machine::restore(&data_dir.join("kv"), container);
    if res.is_err() {
        // Leave nothing half-written behind.
        let _ = std::fs::remove_dir_all(data_dir);
    }
    res.map_err(|e| e.to_string())
}
