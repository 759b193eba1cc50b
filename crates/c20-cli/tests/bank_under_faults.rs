//! Bank transfers with optimistic transactions (c20-client) on a 3-process c20 cluster whose
//! leader is killed with SIGKILL and restarted during the run. Strong reads of every balance
//! (one range read: one revision) run throughout; the total never changes.

mod support;

use c20_api::etcdserverpb::RangeRequest;
use c20_client::{prefix_end, Client, RetryPolicy, TxError};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{connect_any, wait_count, Cluster, Flavor};

const ACCOUNTS: u64 = 10;
const START_BALANCE: u64 = 100;

fn balance(v: Option<Vec<u8>>) -> u64 {
    String::from_utf8(v.expect("account exists"))
        .unwrap()
        .parse()
        .unwrap()
}

/// Every balance from one strong range read: (sum, revision).
async fn total(c: &mut Client) -> Result<(u64, i64), c20_client::ClientError> {
    let r = c
        .range(RangeRequest {
            key: b"acct/".to_vec(),
            range_end: prefix_end(b"acct/"),
            ..Default::default()
        })
        .await?;
    assert_eq!(r.kvs.len() as u64, ACCOUNTS, "an account vanished");
    let sum = r
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.value).parse::<u64>().unwrap())
        .sum();
    Ok((sum, r.header.unwrap().revision))
}

#[test]
fn the_total_of_all_balances_never_changes_across_a_leader_kill() {
    let mut cluster = Cluster::start(Flavor::C20, 3);
    cluster.wait_healthy(Duration::from_secs(30));
    cluster.wait_leader(Duration::from_secs(30));
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.client_addr()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = connect_any(&endpoints, 0).await;
        for a in 0..ACCOUNTS {
            c.put(format!("acct/{a}"), START_BALANCE.to_string())
                .await
                .unwrap();
        }
    });
    let transfers = Arc::new(AtomicUsize::new(0));
    let checks = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..4usize {
        let (endpoints, transfers, stop) = (endpoints.clone(), transfers.clone(), stop.clone());
        tasks.push(rt.spawn(async move {
            let mut c = connect_any(&endpoints, w).await;
            let mut seed = 0x9e37_79b9_u64 + w as u64;
            let policy = RetryPolicy {
                max_attempts: 50,
                ..Default::default()
            };
            while !stop.load(Ordering::Relaxed) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let from = (seed >> 33) % ACCOUNTS;
                let to = (from + 1 + (seed >> 45) % (ACCOUNTS - 1)) % ACCOUNTS;
                let amount = 1 + (seed >> 20) % 10;
                let res = c
                    .optimistic_with(&policy, |tx| {
                        Box::pin(async move {
                            let a = balance(tx.get(format!("acct/{from}")).await?);
                            let b = balance(tx.get(format!("acct/{to}")).await?);
                            if a < amount {
                                return Ok(false);
                            }
                            tx.put(format!("acct/{from}"), (a - amount).to_string());
                            tx.put(format!("acct/{to}"), (b + amount).to_string());
                            Ok(true)
                        })
                    })
                    .await;
                match res {
                    Ok(done) if done.value => {
                        transfers.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) | Err(TxError::Conflict { .. }) => {}
                    Err(_) => c = connect_any(&endpoints, w + 1).await,
                }
            }
        }));
    }
    {
        let (endpoints, checks, stop) = (endpoints.clone(), checks.clone(), stop.clone());
        tasks.push(rt.spawn(async move {
            let mut c = connect_any(&endpoints, 2).await;
            let mut last_rev = 0;
            while !stop.load(Ordering::Relaxed) {
                match total(&mut c).await {
                    Ok((sum, rev)) => {
                        assert_eq!(
                            sum,
                            ACCOUNTS * START_BALANCE,
                            "total changed at revision {rev}"
                        );
                        assert!(
                            rev >= last_rev,
                            "strong reads went back from {last_rev} to {rev}"
                        );
                        last_rev = rev;
                        checks.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => c = connect_any(&endpoints, 0).await,
                }
            }
        }));
    }
    wait_count(&transfers, 100, "the kill");
    let leader = cluster.wait_leader(Duration::from_secs(30));
    cluster.kill9(leader);
    let at_kill = transfers.load(Ordering::Relaxed);
    wait_count(&transfers, at_kill + 50, "transfers without the old leader");
    cluster.restart(leader);
    cluster.wait_healthy(Duration::from_secs(30));
    wait_count(&transfers, at_kill + 150, "transfers after the restart");
    let checks_before_end = checks.load(Ordering::Relaxed);
    wait_count(&checks, checks_before_end + 5, "more checks");
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("a worker did not stop")
                .unwrap();
        }
        // Every member, the restarted one included, ends with the same total.
        for (i, ep) in endpoints.iter().enumerate() {
            let mut c = Client::connect(&[ep.as_str()]).await.unwrap();
            let (sum, _) = total(&mut c).await.unwrap();
            assert_eq!(sum, ACCOUNTS * START_BALANCE, "member {i}");
        }
    });
    println!(
        "{} transfers, {} total checks",
        transfers.load(Ordering::Relaxed),
        checks.load(Ordering::Relaxed)
    );
}
