//! Helpers shared by the cluster tests of this crate.

use c20_api::etcdserverpb::{PutRequest, RangeRequest};
use c20_api::EtcdError;
use c20_raft::{Command, RaftNode};
use c20_storage::{WriteOp, WriteResult};

/// Proposes `k = v` through `node`; returns the revision it got.
pub async fn put(node: &RaftNode, k: &str, v: &str) -> Result<i64, EtcdError> {
    let op = WriteOp::Put(PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    });
    match node.propose(Command::from_op(&op)).await?.into_result()? {
        WriteResult::Put(r) => Ok(r.header.expect("put has a header").revision),
        other => panic!("unexpected {other:?}"),
    }
}

/// The value of `k` in `node`'s local state (no read barrier).
pub fn local_get(node: &RaftNode, k: &str) -> Option<Vec<u8>> {
    node.state()
        .read(|s| {
            s.range(&RangeRequest {
                key: k.into(),
                ..Default::default()
            })
        })
        .expect("local range")
        .kvs
        .pop()
        .map(|kv| kv.value)
}
