//! Optimistic transactions from c20-client against one in-process member.

use c20_client::{Client, RetryPolicy, TxError};
use std::time::Duration;

mod common;

async fn member() -> (tempfile::TempDir, c20_server::Server, Client) {
    let m = common::member(|_| {}).await;
    (m._dir, m.server, m.client)
}

fn number(v: Option<Vec<u8>>) -> u64 {
    v.map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_of_one_counter_lose_nothing() {
    let (_dir, server, client) = member().await;
    const CLIENTS: u64 = 8;
    const INCREMENTS: u64 = 25;
    let policy = RetryPolicy {
        max_attempts: 1000,
        ..Default::default()
    };
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let c = client.clone();
            let policy = policy.clone();
            tokio::spawn(async move {
                let mut attempts = 0;
                for _ in 0..INCREMENTS {
                    let done = c
                        .optimistic_with(&policy, |tx| {
                            Box::pin(async move {
                                let n = number(tx.get("counter").await?);
                                tx.put("counter", (n + 1).to_string());
                                Ok(n + 1)
                            })
                        })
                        .await
                        .unwrap();
                    attempts += done.attempts as u64;
                }
                attempts
            })
        })
        .collect();
    let mut attempts = 0;
    for t in tasks {
        attempts += t.await.unwrap();
    }
    let mut c = client.clone();
    let value = number(c.get("counter").await.unwrap().kvs.pop().map(|kv| kv.value));
    assert_eq!(value, CLIENTS * INCREMENTS);
    println!(
        "{} increments, {attempts} attempts, {} conflicts retried",
        CLIENTS * INCREMENTS,
        attempts - CLIENTS * INCREMENTS
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_own_writes_and_a_conflict_reports_its_attempts() {
    let (_dir, server, client) = member().await;
    // Read-your-own-writes, and a key read as absent that stays absent commits.
    let done = client
        .optimistic(|tx| {
            Box::pin(async move {
                assert_eq!(tx.get("fresh").await?, None);
                tx.put("a", "1");
                let a = tx.get("a").await?;
                tx.delete("a");
                let gone = tx.get("a").await?;
                tx.put("fresh", "x");
                Ok((a, gone))
            })
        })
        .await
        .unwrap();
    assert_eq!(done.value, (Some(b"1".to_vec()), None));
    assert_eq!(done.attempts, 1);
    let mut c = client.clone();
    assert_eq!(c.get("fresh").await.unwrap().kvs[0].value, b"x");
    assert!(c.get("a").await.unwrap().kvs.is_empty());

    // Another writer changes a key read (here: creates one read as absent) between the read and
    // the commit, every time: the attempts run out.
    let policy = RetryPolicy {
        max_attempts: 3,
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
    };
    let res = client
        .optimistic_with(&policy, |tx| {
            let mut other = client.clone();
            Box::pin(async move {
                let seen = tx.get("contended").await?;
                other.put("contended", "changed").await.unwrap();
                if seen.is_some() {
                    other
                        .delete(c20_api::etcdserverpb::DeleteRangeRequest {
                            key: b"contended".to_vec(),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                }
                tx.put("contended", "mine");
                Ok(())
            })
        })
        .await;
    match res {
        Err(TxError::Conflict { attempts }) => assert_eq!(attempts, 3),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_ne!(
        c.get("contended")
            .await
            .unwrap()
            .kvs
            .first()
            .map(|kv| kv.value.clone()),
        Some(b"mine".to_vec())
    );
    server.shutdown().await;
}
