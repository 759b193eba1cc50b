//! A distributed lock as etcd's client libraries build it (a lease, a key per contender created
//! with a txn on `create_revision == 0`, the lowest create revision holds the lock, waiters
//! watch their predecessor) on a 3-process c20 cluster whose leader is killed with SIGKILL and
//! restarted mid-run.
//!
//! Each holder increments a counter and writes its lease id to `holder`, both in a txn guarded
//! by its own lock key. Afterwards the whole history is replayed through a watch from revision 1:
//! at every revision where `holder` was written, the lock (the live `lock/` key with the lowest
//! create revision) must belong to the contender that wrote it, and the counter must have gone
//! up by exactly one each time. That is "at most one holder at any revision", checked on the
//! store's own history rather than on what the clients believe.

mod support;

use c20_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use c20_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use c20_api::etcdserverpb::{
    request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest,
};
use c20_client::{prefix_end, Client};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{connect_any, wait_count, Cluster, Flavor};

const CONTENDERS: usize = 4;
/// Increments wanted before the leader is killed, and in total.
const BEFORE_KILL: usize = 15;
const TOTAL: usize = 45;
const LEASE_TTL: i64 = 5;

fn put_op(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

fn cmp(key: &[u8], target: CompareTarget, u: TargetUnion) -> Compare {
    Compare {
        key: key.to_vec(),
        target: target as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(u),
        range_end: vec![],
    }
}

/// Connects to any member that answers, starting with a different one per contender.
/// Takes the lock, increments the counter once under it, releases it. Any error aborts the
/// attempt (the caller reconnects and tries again with a new lease).
async fn one_round(c: &mut Client) -> Result<bool, c20_client::ClientError> {
    let lease = c.lease_grant(LEASE_TTL, 0).await?.id;
    let _keepalive = c.lease_keep_alive(lease, Duration::from_millis(1000));
    let my_key = format!("lock/{lease:016x}").into_bytes();
    let created = c
        .txn(TxnRequest {
            compare: vec![cmp(
                &my_key,
                CompareTarget::Create,
                TargetUnion::CreateRevision(0),
            )],
            success: vec![put_op(&my_key, b"", lease)],
            failure: vec![],
        })
        .await?;
    let my_rev = created.header.unwrap().revision;
    // Wait until no key with a lower create revision is left.
    loop {
        let pred = c
            .range(RangeRequest {
                key: b"lock/".to_vec(),
                range_end: prefix_end(b"lock/"),
                max_create_revision: my_rev - 1,
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Create as i32,
                limit: 1,
                ..Default::default()
            })
            .await?;
        let Some(p) = pred.kvs.first() else { break };
        let mut w = c
            .watch(WatchCreateRequest {
                key: p.key.clone(),
                start_revision: pred.header.unwrap().revision + 1,
                ..Default::default()
            })
            .await?;
        'wait: loop {
            let r = tokio::time::timeout(Duration::from_secs(3 * LEASE_TTL as u64), w.next())
                .await
                .map_err(|_| c20_client::ClientError {
                    code: tonic::Code::DeadlineExceeded,
                    message: "predecessor never went away".into(),
                })??;
            match r {
                Some(r) if r.events.iter().any(|e| e.r#type == 1) => break 'wait,
                Some(_) => {}
                None => {
                    return Err(c20_client::ClientError {
                        code: tonic::Code::Unavailable,
                        message: "watch ended".into(),
                    })
                }
            }
        }
    }
    // Holding the lock: increment, guarded by our key and the counter's revision.
    let counter = c.get("counter").await?;
    let (value, mod_rev) = counter.kvs.first().map_or((0, 0), |kv| {
        (
            String::from_utf8_lossy(&kv.value).parse::<u64>().unwrap(),
            kv.mod_revision,
        )
    });
    let done = c
        .txn(TxnRequest {
            compare: vec![
                cmp(
                    &my_key,
                    CompareTarget::Create,
                    TargetUnion::CreateRevision(my_rev),
                ),
                cmp(
                    b"counter",
                    CompareTarget::Mod,
                    TargetUnion::ModRevision(mod_rev),
                ),
            ],
            success: vec![
                put_op(b"counter", (value + 1).to_string().as_bytes(), 0),
                put_op(b"holder", format!("{lease:016x}").as_bytes(), 0),
            ],
            failure: vec![],
        })
        .await?;
    c.delete(DeleteRangeRequest {
        key: my_key,
        ..Default::default()
    })
    .await?;
    let _ = c.lease_revoke(lease).await;
    Ok(done.succeeded)
}

#[test]
fn at_most_one_lock_holder_at_any_revision_across_a_leader_kill() {
    let mut cluster = Cluster::start(Flavor::C20, 3);
    cluster.wait_healthy(Duration::from_secs(30));
    cluster.wait_leader(Duration::from_secs(30));
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.client_addr()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let increments = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..CONTENDERS)
        .map(|i| {
            let endpoints = endpoints.clone();
            let increments = increments.clone();
            let stop = stop.clone();
            rt.spawn(async move {
                let mut c = connect_any(&endpoints, i).await;
                while !stop.load(Ordering::Relaxed) {
                    match one_round(&mut c).await {
                        Ok(true) => {
                            increments.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(false) => {}
                        Err(_) => c = connect_any(&endpoints, i + 1).await,
                    }
                }
            })
        })
        .collect();

    wait_count(&increments, BEFORE_KILL, "the kill");
    let leader = cluster.wait_leader(Duration::from_secs(30));
    cluster.kill9(leader);
    let after_kill = increments.load(Ordering::Relaxed);
    wait_count(
        &increments,
        after_kill + 5,
        "progress without the old leader",
    );
    cluster.restart(leader);
    wait_count(&increments, TOTAL, "the end");
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for w in workers {
            tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .expect("a contender did not stop")
                .unwrap();
        }
    });
    cluster.wait_healthy(Duration::from_secs(30));

    // Replay the history: who held the lock at each write of `holder`.
    let (holders, counters) = rt.block_on(async {
        let mut c = connect_any(&endpoints, 0).await;
        let now = c.get("counter").await.unwrap().header.unwrap().revision;
        let mut w = c
            .watch(WatchCreateRequest {
                key: vec![0],
                range_end: vec![0],
                start_revision: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut live: BTreeMap<Vec<u8>, (i64, i64)> = BTreeMap::new(); // key -> (create, lease)
        let mut lease_of_holder: Vec<(i64, String, Option<i64>)> = Vec::new();
        let mut counters = Vec::new();
        let mut at = 0;
        while at < now {
            let r = w.next().await.unwrap().expect("history stream ended");
            for e in r.events {
                let kv = e.kv.unwrap();
                at = kv.mod_revision;
                if kv.key.starts_with(b"lock/") {
                    if e.r#type == 1 {
                        live.remove(&kv.key);
                    } else {
                        live.insert(kv.key.clone(), (kv.create_revision, kv.lease));
                    }
                } else if kv.key == b"holder" {
                    // The owner of the lowest live lock key, by its lease.
                    let owner = live
                        .values()
                        .min_by_key(|(create, _)| *create)
                        .map(|(_, l)| *l);
                    lease_of_holder.push((
                        kv.mod_revision,
                        String::from_utf8(kv.value).unwrap(),
                        owner,
                    ));
                } else if kv.key == b"counter" {
                    counters.push(String::from_utf8(kv.value).unwrap().parse::<u64>().unwrap());
                }
            }
        }
        (lease_of_holder, counters)
    });
    // The counter went 1, 2, 3, ...: no increment lost or applied twice.
    assert_eq!(counters, (1..=counters.len() as u64).collect::<Vec<_>>());
    assert!(counters.len() >= TOTAL);
    // Every write of `holder` was made by the owner of the lock at that revision, and each
    // ownership covered one increment only.
    for (rev, who, owner) in &holders {
        let writer = i64::from_str_radix(who, 16).unwrap();
        assert_eq!(
            *owner,
            Some(writer),
            "lease {who} wrote at revision {rev} while the lock belonged to {owner:x?}"
        );
    }
    let mut owners: Vec<i64> = holders.iter().map(|(_, _, o)| o.unwrap()).collect();
    let n = owners.len();
    owners.dedup();
    assert_eq!(owners.len(), n, "one lock ownership covered two increments");
}
