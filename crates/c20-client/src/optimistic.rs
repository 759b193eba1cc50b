//! Optimistic multi-key transactions over the etcd API.
//!
//! The closure reads keys through a [`Tx`] (all at one snapshot revision, the first read's) and
//! buffers writes; reads see the transaction's own writes. Commit is one etcd `Txn` whose
//! compares check that every key read is unchanged since that revision (`mod_revision` equal,
//! or `create_revision == 0` for a key read as absent), with the buffered writes as its success
//! branch. If another writer got in between, the closure runs again after a jittered, growing
//! pause, up to a limit; then the caller gets [`TxError::Conflict`] with the attempt count.
//! It uses only the etcd API, so it works against etcd as well.

use crate::{Client, ClientError};
use c20_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use c20_api::etcdserverpb::{
    request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often and how patiently a conflicting transaction is retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all (the first included).
    pub max_attempts: u32,
    /// Pause before the second attempt; doubles each time up to `max_backoff`. The actual
    /// pause is drawn uniformly between zero and it (full jitter).
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            base_backoff: Duration::from_millis(2),
            max_backoff: Duration::from_millis(200),
        }
    }
}

/// Why an optimistic transaction did not commit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TxError {
    /// Every attempt found a key it read changed by someone else.
    #[error("optimistic transaction conflicted {attempts} times; gave up")]
    Conflict { attempts: u32 },
    /// A call failed (the outcome of a failed commit is unknown).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The closure gave up with its own reason.
    #[error("transaction aborted: {0}")]
    Aborted(String),
}

/// What a committed transaction produced.
#[derive(Debug, Clone)]
pub struct Committed<T> {
    pub value: T,
    /// Attempts it took (1 when nothing conflicted).
    pub attempts: u32,
    /// The revision of the commit (the snapshot revision for a transaction that wrote nothing).
    pub revision: i64,
}

/// One attempt's view: reads at one revision, buffered writes.
pub struct Tx {
    client: Client,
    /// The revision every read is served at (set by the first read).
    revision: Option<i64>,
    /// Keys read, with the mod revision seen (0 = absent).
    reads: BTreeMap<Vec<u8>, i64>,
    /// Buffered writes: a value to put, or `None` to delete.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Tx {
    /// The value of `key`: this transaction's own write if it made one, else the value at the
    /// snapshot revision.
    pub async fn get(&mut self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>, TxError> {
        let key = key.into();
        if let Some(w) = self.writes.get(&key) {
            return Ok(w.clone());
        }
        let r = self
            .client
            .range(RangeRequest {
                key: key.clone(),
                revision: self.revision.unwrap_or(0),
                ..Default::default()
            })
            .await?;
        if self.revision.is_none() {
            self.revision = r.header.as_ref().map(|h| h.revision);
        }
        let kv = r.kvs.into_iter().next();
        self.reads
            .entry(key)
            .or_insert(kv.as_ref().map_or(0, |kv| kv.mod_revision));
        Ok(kv.map(|kv| kv.value))
    }

    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.insert(key.into(), Some(value.into()));
    }

    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.writes.insert(key.into(), None);
    }

    /// The etcd txn that commits this attempt.
    fn commit_request(&self) -> TxnRequest {
        let compare = self
            .reads
            .iter()
            .map(|(key, rev)| {
                let (target, union) = if *rev == 0 {
                    (CompareTarget::Create, TargetUnion::CreateRevision(0))
                } else {
                    (CompareTarget::Mod, TargetUnion::ModRevision(*rev))
                };
                Compare {
                    key: key.clone(),
                    range_end: Vec::new(),
                    target: target as i32,
                    result: CompareResult::Equal as i32,
                    target_union: Some(union),
                }
            })
            .collect();
        let success = self
            .writes
            .iter()
            .map(|(key, w)| RequestOp {
                request: Some(match w {
                    Some(value) => request_op::Request::RequestPut(PutRequest {
                        key: key.clone(),
                        value: value.clone(),
                        ..Default::default()
                    }),
                    None => request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                        key: key.clone(),
                        ..Default::default()
                    }),
                }),
            })
            .collect();
        TxnRequest {
            compare,
            success,
            failure: Vec::new(),
        }
    }
}

/// The body of an optimistic transaction: runs once per attempt.
pub type TxBody<'t, T> = Pin<Box<dyn Future<Output = Result<T, TxError>> + Send + 't>>;

impl Client {
    /// Runs `body` as an optimistic transaction with the default [`RetryPolicy`].
    pub async fn optimistic<T, F>(&self, body: F) -> Result<Committed<T>, TxError>
    where
        F: for<'t> FnMut(&'t mut Tx) -> TxBody<'t, T>,
    {
        self.optimistic_with(&RetryPolicy::default(), body).await
    }

    /// Runs `body` as an optimistic transaction, retrying on conflict as `policy` says.
    pub async fn optimistic_with<T, F>(
        &self,
        policy: &RetryPolicy,
        mut body: F,
    ) -> Result<Committed<T>, TxError>
    where
        F: for<'t> FnMut(&'t mut Tx) -> TxBody<'t, T>,
    {
        let mut backoff = policy.base_backoff;
        let mut seed = jitter_seed();
        for attempt in 1..=policy.max_attempts.max(1) {
            let mut tx = Tx {
                client: self.clone(),
                revision: None,
                reads: BTreeMap::new(),
                writes: BTreeMap::new(),
            };
            let value = body(&mut tx).await?;
            if tx.writes.is_empty() {
                // Nothing to commit: the reads were one consistent snapshot already.
                return Ok(Committed {
                    value,
                    attempts: attempt,
                    revision: tx.revision.unwrap_or(0),
                });
            }
            let r = tx.client.txn(tx.commit_request()).await?;
            if r.succeeded {
                return Ok(Committed {
                    value,
                    attempts: attempt,
                    revision: r.header.map_or(0, |h| h.revision),
                });
            }
            if attempt < policy.max_attempts {
                seed = xorshift(seed);
                let pause = backoff.mul_f64((seed % 10_000) as f64 / 10_000.0);
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(policy.max_backoff);
            }
        }
        Err(TxError::Conflict {
            attempts: policy.max_attempts.max(1),
        })
    }
}

fn jitter_seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    // Different tasks started in the same nanosecond still differ by their stack address.
    let local = 0u8;
    (t ^ (&local as *const u8 as u64).rotate_left(32)) | 1
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commit_checks_every_key_read_and_carries_every_write() {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let mut tx = Tx {
            client: Client::from_channel(channel),
            revision: Some(9),
            reads: BTreeMap::from([(b"present".to_vec(), 7), (b"absent".to_vec(), 0)]),
            writes: BTreeMap::new(),
        };
        tx.put("present", "new");
        tx.delete("gone");
        let t = tx.commit_request();
        let cmp: Vec<(Vec<u8>, i32, Option<TargetUnion>)> = t
            .compare
            .iter()
            .map(|c| (c.key.clone(), c.target, c.target_union.clone()))
            .collect();
        assert_eq!(
            cmp,
            vec![
                (
                    b"absent".to_vec(),
                    CompareTarget::Create as i32,
                    Some(TargetUnion::CreateRevision(0))
                ),
                (
                    b"present".to_vec(),
                    CompareTarget::Mod as i32,
                    Some(TargetUnion::ModRevision(7))
                ),
            ]
        );
        assert_eq!(t.success.len(), 2);
        assert!(t.failure.is_empty());
    }
}
