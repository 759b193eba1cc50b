//! Consistency levels chosen per request through gRPC metadata.

use c20_api::etcdserverpb::kv_client::KvClient;
use c20_api::etcdserverpb::{PutRequest, RangeRequest};
use c20_server::{Server, ServerConfig};
use std::time::Duration;
use tonic::Request;

async fn single() -> (
    tempfile::TempDir,
    Server,
    KvClient<tonic::transport::Channel>,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::single(
        "solo",
        dir.path().join("solo"),
        "http://127.0.0.1:0",
        "http://127.0.0.1:0",
    );
    cfg.request_timeout = Duration::from_secs(1);
    let server = Server::start(cfg).await.unwrap();
    let addr = server.client_addrs()[0];
    let client = KvClient::connect(format!("http://{addr}")).await.unwrap();
    (dir, server, client)
}

fn with_meta<T>(msg: T, pairs: &[(&'static str, &str)]) -> Request<T> {
    let mut r = Request::new(msg);
    for (k, v) in pairs {
        r.metadata_mut().insert(*k, v.parse().unwrap());
    }
    r
}

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    }
}

fn get(k: &str) -> RangeRequest {
    RangeRequest {
        key: k.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn levels_from_metadata() {
    let (_dir, server, mut kv) = single().await;
    // Wait for the single member to lead (a linearizable read succeeds then).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while kv.range(get("warmup")).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let r = kv
        .put(with_meta(put("a", "1"), &[("c20-consistency", "all")]))
        .await
        .unwrap();
    let rev = r.into_inner().header.unwrap().revision;
    assert_eq!(rev, 2);

    // An Eventual put is acknowledged before its revision is known.
    let r = kv
        .put(with_meta(put("b", "2"), &[("c20-consistency", "eventual")]))
        .await
        .unwrap();
    assert_eq!(r.into_inner().header.unwrap().revision, 0);

    for level in ["eventual", "sequential", "quorum", "strong", "all"] {
        let r = kv
            .range(with_meta(get("a"), &[("c20-consistency", level)]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.kvs[0].value, b"1", "{level}");
    }

    // A session that has seen a revision this member never reaches is refused, not served stale.
    let err = kv
        .range(with_meta(
            get("a"),
            &[
                ("c20-consistency", "sequential"),
                ("c20-session-revision", "1000"),
            ],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("1000"), "{}", err.message());

    let err = kv
        .range(with_meta(get("a"), &[("c20-consistency", "linear")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("linear"), "{}", err.message());
    server.shutdown().await;
}
