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
use c20_api::etcdserverpb::maintenance_client::MaintenanceClient;
use c20_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    MemberListRequest, MemberListResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    StatusRequest, StatusResponse, TxnRequest, TxnResponse,
};
use std::time::Duration;
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

/// A connection to one endpoint of a cluster.
#[derive(Clone)]
pub struct Client {
    kv: KvClient<Channel>,
    maintenance: MaintenanceClient<Channel>,
    cluster: ClusterClient<Channel>,
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

    async fn connect_one(ep: &str) -> Result<Client, ClientError> {
        let url = if ep.contains("://") {
            ep.to_string()
        } else {
            format!("http://{ep}")
        };
        let channel = Endpoint::from_shared(url.clone())
            .map_err(|e| ClientError {
                code: tonic::Code::InvalidArgument,
                message: format!("bad endpoint {ep:?}: {e}"),
            })?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| ClientError {
                code: tonic::Code::Unavailable,
                message: format!("cannot connect to {ep}: {e}"),
            })?;
        let big = 64 * 1024 * 1024;
        Ok(Client {
            kv: KvClient::new(channel.clone())
                .max_decoding_message_size(big)
                .max_encoding_message_size(big),
            maintenance: MaintenanceClient::new(channel.clone()),
            cluster: ClusterClient::new(channel),
        })
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
