//! A Rust client for c20 that speaks the etcd v3 API, so it works against etcd too.
//!
//! ```no_run
//! # async fn demo() -> Result<(), c20_client::ClientError> {
//! let mut c = c20_client::Client::connect(&["127.0.0.1:2379"]).await?;
//! c.put("greeting", "hello").await?;
//! let kvs = c.get("greeting").await?.kvs;
//! assert_eq!(kvs[0].value, b"hello");
//! # Ok(()) }
//! ```

use c20_api::etcdserverpb::cluster_client::ClusterClient;
use c20_api::etcdserverpb::kv_client::KvClient;
use c20_api::etcdserverpb::lease_client::LeaseClient;
use c20_api::etcdserverpb::maintenance_client::MaintenanceClient;
use c20_api::etcdserverpb::watch_client::WatchClient;
use c20_api::etcdserverpb::{
    watch_request, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, MemberListRequest, MemberListResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, StatusRequest, StatusResponse,
    TxnRequest, TxnResponse, WatchCancelRequest, WatchCreateRequest, WatchProgressRequest,
    WatchRequest, WatchResponse,
};
use std::time::Duration;
use tokio::sync::mpsc;

mod optimistic;
use c20_api::net::GrpcChannel;
pub use optimistic::{Committed, RetryPolicy, Tx, TxBody, TxError};
use tonic::transport::{Channel, Endpoint};

/// A failed call: the gRPC code and etcd's message, as the server sent them.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message} (code {code:?})")]
pub struct ClientError {
    pub code: tonic::Code,
    pub message: String,
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

/// The end of the range that holds every key with `prefix` (etcd's prefix convention).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A request stream fed from a channel.
fn receiver_stream<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Connects one channel to `ep` (`host:port` or a URL) within `connect_timeout`, through
/// [`c20_api::net::CoalescingConnector`]: Nagle off, the writes of concurrent calls gathered.
/// A bad endpoint is `InvalidArgument`, one that cannot be reached `Unavailable`.
pub async fn connect_channel(ep: &str, connect_timeout: Duration) -> Result<Channel, ClientError> {
    let url = if ep.contains("://") {
        ep.to_string()
    } else {
        format!("http://{ep}")
    };
    Endpoint::from_shared(url)
        .map_err(|e| ClientError {
            code: tonic::Code::InvalidArgument,
            message: format!("bad endpoint {ep:?}: {e}"),
        })?
        .connect_with_connector(c20_api::net::CoalescingConnector::new(connect_timeout))
        .await
        .map_err(|e| ClientError {
            code: tonic::Code::Unavailable,
            message: format!("cannot connect to {ep}: {e}"),
        })
}

/// A connection to one endpoint of a cluster.
#[derive(Clone)]
pub struct Client {
    kv: KvClient<GrpcChannel>,
    maintenance: MaintenanceClient<GrpcChannel>,
    cluster: ClusterClient<GrpcChannel>,
    watch: WatchClient<GrpcChannel>,
    lease: LeaseClient<GrpcChannel>,
}

/// One watch on its own stream. Responses come from [`Watch::next`]; dropping it ends the
/// stream.
pub struct Watch {
    /// The id the server gave the watch.
    pub id: i64,
    requests: mpsc::Sender<WatchRequest>,
    responses: tonic::Streaming<WatchResponse>,
}

impl Watch {
    /// The next response (events, progress, cancellation); `None` once the stream ended.
    pub async fn next(&mut self) -> Result<Option<WatchResponse>, ClientError> {
        Ok(self.responses.message().await?)
    }

    /// Asks for a progress notification (answered once every watcher of the stream caught up).
    pub async fn request_progress(&self) -> Result<(), ClientError> {
        self.send(watch_request::RequestUnion::ProgressRequest(
            WatchProgressRequest {},
        ))
        .await
    }

    /// Asks the server to cancel the watch; the confirmation arrives through [`Watch::next`].
    pub async fn cancel(&self) -> Result<(), ClientError> {
        self.send(watch_request::RequestUnion::CancelRequest(
            WatchCancelRequest { watch_id: self.id },
        ))
        .await
    }

    async fn send(&self, r: watch_request::RequestUnion) -> Result<(), ClientError> {
        self.requests
            .send(WatchRequest {
                request_union: Some(r),
            })
            .await
            .map_err(|_| ClientError {
                code: tonic::Code::Cancelled,
                message: "watch stream closed".into(),
            })
    }
}

/// Keeps a lease alive in the background until dropped.
pub struct KeepAlive {
    task: tokio::task::JoinHandle<()>,
    /// The TTL of the latest answer (0 once the lease is gone); updated by the task.
    pub ttl: tokio::sync::watch::Receiver<i64>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Connects to the first endpoint that answers (`host:port` or `http://host:port`).
    pub async fn connect(endpoints: &[&str]) -> Result<Client, ClientError> {
        let mut last = None;
        for ep in endpoints {
            match Self::connect_one(ep).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClientError {
            code: tonic::Code::InvalidArgument,
            message: "no endpoints given".into(),
        }))
    }

    /// A client on a channel the caller built (lazily connected, TLS, ...).
    pub fn from_channel(channel: Channel) -> Client {
        let channel = GrpcChannel::new(channel);
        let big = 64 * 1024 * 1024;
        Client {
            kv: KvClient::new(channel.clone())
                .max_decoding_message_size(big)
                .max_encoding_message_size(big),
            maintenance: MaintenanceClient::new(channel.clone()),
            cluster: ClusterClient::new(channel.clone()),
            watch: WatchClient::new(channel.clone()).max_decoding_message_size(big),
            lease: LeaseClient::new(channel),
        }
    }

    async fn connect_one(ep: &str) -> Result<Client, ClientError> {
        let channel = connect_channel(ep, Duration::from_secs(3)).await?;
        Ok(Client::from_channel(channel))
    }

    pub async fn put(
        &mut self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<PutResponse, ClientError> {
        self.put_request(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
        .await
    }

    pub async fn put_request(&mut self, req: PutRequest) -> Result<PutResponse, ClientError> {
        Ok(self.kv.put(req).await?.into_inner())
    }

    /// Linearizable read of one key.
    pub async fn get(&mut self, key: impl Into<Vec<u8>>) -> Result<RangeResponse, ClientError> {
        self.range(RangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .await
    }

    pub async fn range(&mut self, req: RangeRequest) -> Result<RangeResponse, ClientError> {
        Ok(self.kv.range(req).await?.into_inner())
    }

    pub async fn delete(
        &mut self,
        req: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, ClientError> {
        Ok(self.kv.delete_range(req).await?.into_inner())
    }

    pub async fn txn(&mut self, req: TxnRequest) -> Result<TxnResponse, ClientError> {
        Ok(self.kv.txn(req).await?.into_inner())
    }

    pub async fn compact(&mut self, revision: i64) -> Result<CompactionResponse, ClientError> {
        Ok(self
            .kv
            .compact(CompactionRequest {
                revision,
                physical: true,
            })
            .await?
            .into_inner())
    }

    pub async fn status(&mut self) -> Result<StatusResponse, ClientError> {
        Ok(self
            .maintenance
            .status(StatusRequest {})
            .await?
            .into_inner())
    }

    /// The connected member's backup as a stream of blobs (what `etcdctl snapshot save`
    /// writes to its file, in order).
    pub async fn snapshot(
        &mut self,
    ) -> Result<tonic::Streaming<c20_api::etcdserverpb::SnapshotResponse>, ClientError> {
        Ok(self
            .maintenance
            .snapshot(c20_api::etcdserverpb::SnapshotRequest {})
            .await?
            .into_inner())
    }

    /// Opens a watch on a stream of its own and waits until the server created it. A creation
    /// the server refused is an error with the server's reason.
    pub async fn watch(&mut self, create: WatchCreateRequest) -> Result<Watch, ClientError> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
        })
        .await
        .expect("the receiver is alive");
        let mut responses = self.watch.watch(receiver_stream(rx)).await?.into_inner();
        let created = responses.message().await?.ok_or_else(|| ClientError {
            code: tonic::Code::Unavailable,
            message: "watch stream ended before the watch was created".into(),
        })?;
        if created.canceled {
            return Err(ClientError {
                code: tonic::Code::InvalidArgument,
                message: created.cancel_reason,
            });
        }
        Ok(Watch {
            id: created.watch_id,
            requests: tx,
            responses,
        })
    }

    /// Grants a lease of `ttl` seconds; `id` 0 lets the server choose it.
    pub async fn lease_grant(
        &mut self,
        ttl: i64,
        id: i64,
    ) -> Result<LeaseGrantResponse, ClientError> {
        Ok(self
            .lease
            .lease_grant(LeaseGrantRequest { ttl, id })
            .await?
            .into_inner())
    }

    pub async fn lease_revoke(&mut self, id: i64) -> Result<LeaseRevokeResponse, ClientError> {
        Ok(self
            .lease
            .lease_revoke(LeaseRevokeRequest { id })
            .await?
            .into_inner())
    }

    /// One keep-alive round trip; the answer's TTL is 0 when the lease no longer exists.
    pub async fn lease_keep_alive_once(
        &mut self,
        id: i64,
    ) -> Result<LeaseKeepAliveResponse, ClientError> {
        let req = futures::stream::iter([LeaseKeepAliveRequest { id }]);
        let mut answers = self.lease.lease_keep_alive(req).await?.into_inner();
        answers.message().await?.ok_or_else(|| ClientError {
            code: tonic::Code::Unavailable,
            message: "keep-alive stream ended without an answer".into(),
        })
    }

    /// Keeps lease `id` alive every `interval` on one stream until the returned handle is
    /// dropped; the stream is reopened after a failure.
    pub fn lease_keep_alive(&self, id: i64, interval: Duration) -> KeepAlive {
        let mut lease = self.lease.clone();
        let (ttl_tx, ttl) = tokio::sync::watch::channel(-1);
        let task = tokio::spawn(async move {
            loop {
                let (tx, rx) = mpsc::channel(1);
                if let Ok(resp) = lease.lease_keep_alive(receiver_stream(rx)).await {
                    let mut answers = resp.into_inner();
                    loop {
                        if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                            break;
                        }
                        match answers.message().await {
                            Ok(Some(a)) => {
                                let _ = ttl_tx.send(a.ttl);
                                if a.ttl <= 0 {
                                    return;
                                }
                            }
                            _ => break,
                        }
                        tokio::time::sleep(interval).await;
                    }
                }
                tokio::time::sleep(interval / 4).await;
            }
        });
        KeepAlive { task, ttl }
    }

    pub async fn lease_time_to_live(
        &mut self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse, ClientError> {
        Ok(self
            .lease
            .lease_time_to_live(LeaseTimeToLiveRequest { id, keys })
            .await?
            .into_inner())
    }

    pub async fn lease_leases(&mut self) -> Result<LeaseLeasesResponse, ClientError> {
        Ok(self
            .lease
            .lease_leases(LeaseLeasesRequest {})
            .await?
            .into_inner())
    }

    pub async fn member_list(&mut self) -> Result<MemberListResponse, ClientError> {
        Ok(self
            .cluster
            .member_list(MemberListRequest {
                linearizable: false,
            })
            .await?
            .into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_follows_etcd() {
        assert_eq!(prefix_end(b"abc"), b"abd");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
