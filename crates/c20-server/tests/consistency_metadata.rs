//! Consistency levels chosen per request through gRPC metadata.

use c20_api::etcdserverpb::kv_client::KvClient;
use c20_api::etcdserverpb::{PutRequest, RangeRequest};
use std::time::Duration;
use tonic::Request;

mod common;

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
    let m = common::member(|cfg| cfg.request_timeout = Duration::from_secs(1)).await;
    let server = m.server;
    let mut kv = KvClient::connect(m.endpoint.clone()).await.unwrap();

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
