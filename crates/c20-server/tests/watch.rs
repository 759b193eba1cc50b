//! The Watch service against one in-process member: etcd's six watch guarantees by name, the
//! create/cancel/progress protocol, and bounded memory for a watcher that stops reading.

use c20_api::etcdserverpb::watch_client::WatchClient;
use c20_api::etcdserverpb::watch_create_request::FilterType;
use c20_api::etcdserverpb::{
    request_op, watch_request, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
    WatchCreateRequest, WatchRequest, WatchResponse,
};
use c20_api::mvccpb::Event;
use c20_client::{prefix_end, Client};
use c20_server::{EVENTS_PER_RESPONSE, SEND_QUEUE_RESPONSES};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;

mod common;

/// One member whose idle watchers get progress notifications every 200 ms.
async fn member() -> common::Member {
    common::member(|cfg| cfg.watch_progress_notify_interval = Duration::from_millis(200)).await
}

fn create(key: &str, start: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.into(),
        start_revision: start,
        ..Default::default()
    }
}

fn prefix(p: &str, start: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        range_end: prefix_end(p.as_bytes()),
        ..create(p, start)
    }
}

async fn put(c: &mut Client, k: &str, v: &str) -> i64 {
    c.put(k, v).await.unwrap().header.unwrap().revision
}

/// Reads responses until `n` events arrived (bounded wait); returns the responses.
async fn collect(w: &mut c20_client::Watch, n: usize) -> Vec<WatchResponse> {
    let mut out = Vec::new();
    let mut got = 0;
    while got < n {
        let r = tokio::time::timeout(Duration::from_secs(20), w.next())
            .await
            .expect("events did not arrive")
            .unwrap()
            .expect("stream ended");
        got += r.events.len();
        out.push(r);
    }
    out
}

fn events(rs: &[WatchResponse]) -> Vec<Event> {
    rs.iter().flat_map(|r| r.events.clone()).collect()
}

/// `(key, mod_revision, type)` of each event.
fn keyrevs(es: &[Event]) -> Vec<(String, i64, i32)> {
    es.iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (
                String::from_utf8(kv.key.clone()).unwrap(),
                kv.mod_revision,
                e.r#type,
            )
        })
        .collect()
}

fn txn_puts(keys: &[String], value: &[u8]) -> TxnRequest {
    TxnRequest {
        success: keys
            .iter()
            .map(|k| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: k.clone().into_bytes(),
                    value: value.to_vec(),
                    ..Default::default()
                })),
            })
            .collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_unique_and_reliable_under_concurrent_writers() {
    let mut m = member().await;
    let mut w = m.client.watch(prefix("c/", 0)).await.unwrap();
    // Four writers, each putting and deleting its own keys; every acknowledged revision is kept.
    let mut writers = Vec::new();
    for t in 0..4 {
        let mut c = m.client.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..150 {
                let key = format!("c/{t}/{}", i % 10);
                acked.push((key.clone(), put(&mut c, &key, "v").await, 0));
                if i % 3 == 0 {
                    let d = c
                        .delete(DeleteRangeRequest {
                            key: key.clone().into_bytes(),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    acked.push((key, d.header.unwrap().revision, 1));
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for wr in writers {
        acked.extend(wr.await.unwrap());
    }
    let got = keyrevs(&events(&collect(&mut w, acked.len()).await));
    // Ordered: revisions never go backwards.
    assert!(got.windows(2).all(|p| p[0].1 <= p[1].1), "out of order");
    // Unique: no event twice.
    let distinct: HashSet<_> = got.iter().cloned().collect();
    assert_eq!(distinct.len(), got.len(), "an event was delivered twice");
    // Reliable: exactly the acknowledged writes, none missing.
    let mut want = acked.clone();
    want.sort_by_key(|(_, rev, _)| *rev);
    assert_eq!(got, want);
    m.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_a_revision_is_never_split_across_responses() {
    let mut m = member().await;
    let start = m.client.get("x").await.unwrap().header.unwrap().revision + 1;
    // Revisions of 120 events each: a catch-up read takes whole revisions only, even where
    // its per-response event budget runs out in the middle of one.
    let revisions = 20;
    for t in 0..revisions {
        let keys: Vec<String> = (0..120).map(|i| format!("a/{t:02}/{i:03}")).collect();
        m.client.txn(txn_puts(&keys, b"v")).await.unwrap();
    }
    let mut w = m.client.watch(prefix("a/", start)).await.unwrap();
    let rs = collect(&mut w, 120 * revisions as usize).await;
    assert!(
        rs.len() > 1,
        "expected the catch-up to take several responses"
    );
    let mut seen_in: Vec<(i64, usize)> = Vec::new();
    for (i, r) in rs.iter().enumerate() {
        assert!(r.events.len() < EVENTS_PER_RESPONSE + 120);
        for e in &r.events {
            seen_in.push((e.kv.as_ref().unwrap().mod_revision, i));
        }
        let last = r.events.last().unwrap().kv.as_ref().unwrap().mod_revision;
        assert!(r.header.as_ref().unwrap().revision >= last);
    }
    for rev in start..start + revisions {
        let responses: HashSet<usize> = seen_in
            .iter()
            .filter(|(r, _)| *r == rev)
            .map(|(_, i)| *i)
            .collect();
        assert_eq!(
            responses.len(),
            1,
            "revision {rev} split over {responses:?}"
        );
    }
    m.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumable_from_any_revision_until_compacted() {
    let mut m = member().await;
    let mut revs = Vec::new();
    for i in 0..10 {
        revs.push(put(&mut m.client, "r", &i.to_string()).await);
    }
    // Resume from the middle: exactly the suffix.
    let mut w = m.client.watch(create("r", revs[4])).await.unwrap();
    let got = keyrevs(&events(&collect(&mut w, 6).await));
    assert_eq!(
        got.iter().map(|g| g.1).collect::<Vec<_>>(),
        revs[4..].to_vec()
    );
    // A future start revision waits for it.
    let future = revs[9] + 2;
    let mut wf = m.client.watch(create("r", future)).await.unwrap();
    put(&mut m.client, "r", "skipped").await;
    let r = put(&mut m.client, "r", "seen").await;
    let got = keyrevs(&events(&collect(&mut wf, 1).await));
    assert_eq!(got, vec![("r".into(), r, 0)]);

    m.client.compact(revs[6]).await.unwrap();
    // At the compaction revision still works...
    let mut at = m.client.watch(create("r", revs[6])).await.unwrap();
    assert_eq!(
        collect(&mut at, 1).await[0].events[0]
            .kv
            .as_ref()
            .unwrap()
            .mod_revision,
        revs[6]
    );
    // ...below it the watch is created, then canceled with the compaction revision.
    let mut below = m.client.watch(create("r", revs[5])).await.unwrap();
    let r = below.next().await.unwrap().unwrap();
    assert!(r.canceled);
    assert_eq!(r.compact_revision, revs[6]);
    assert!(r.events.is_empty());
    m.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarkable_progress_notifications_and_requests() {
    let mut m = member().await;
    let rev = put(&mut m.client, "b", "1").await;
    let mut w = m
        .client
        .watch(WatchCreateRequest {
            progress_notify: true,
            ..create("b", 0)
        })
        .await
        .unwrap();
    put(&mut m.client, "other", "x").await;
    // Idle: a progress notification carries the revision the watcher has reached.
    let bookmark = loop {
        let r = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if r.events.is_empty() && !r.canceled && r.header.as_ref().unwrap().revision > rev {
            assert_eq!(r.watch_id, w.id);
            break r.header.unwrap().revision;
        }
    };
    // Resuming after the bookmark sees what came after it, and nothing before.
    let next = put(&mut m.client, "b", "2").await;
    let mut resumed = m.client.watch(create("b", bookmark + 1)).await.unwrap();
    let got = keyrevs(&events(&collect(&mut resumed, 1).await));
    assert_eq!(got, vec![("b".into(), next, 0)]);
    // A progress request is answered with watch id -1 at the current revision.
    resumed.request_progress().await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), resumed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.watch_id, -1);
    assert!(r.events.is_empty());
    assert_eq!(r.header.unwrap().revision, next);
    m.server.shutdown().await;
}

/// A raw stream: the request sender and the responses.
async fn raw_stream(
    endpoint: &str,
) -> (mpsc::Sender<WatchRequest>, tonic::Streaming<WatchResponse>) {
    let mut client = WatchClient::connect(endpoint.to_string())
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20);
    let (tx, mut rx) = mpsc::channel(16);
    let requests = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let responses = client.watch(requests).await.unwrap().into_inner();
    (tx, responses)
}

fn create_req(c: WatchCreateRequest) -> WatchRequest {
    WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(c)),
    }
}

async fn next(s: &mut tonic::Streaming<WatchResponse>) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("no response")
        .unwrap()
        .expect("stream ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_multiplexes_watchers_with_ids_filters_and_prev_kv() {
    let mut m = member().await;
    let (tx, mut rx) = raw_stream(&m.endpoint).await;
    // Server-chosen ids count from 0; a client-chosen id is kept.
    tx.send(create_req(create("f", 0))).await.unwrap();
    let a = next(&mut rx).await;
    assert!(a.created && !a.canceled);
    assert_eq!(a.watch_id, 0);
    tx.send(create_req(WatchCreateRequest {
        watch_id: 42,
        filters: vec![FilterType::Noput as i32],
        prev_kv: true,
        ..create("f", 0)
    }))
    .await
    .unwrap();
    assert_eq!(next(&mut rx).await.watch_id, 42);
    tx.send(create_req(WatchCreateRequest {
        filters: vec![FilterType::Nodelete as i32],
        ..create("f", 0)
    }))
    .await
    .unwrap();
    assert_eq!(next(&mut rx).await.watch_id, 1);
    // Refused creations: a taken id, an empty range.
    tx.send(create_req(WatchCreateRequest {
        watch_id: 42,
        ..create("g", 0)
    }))
    .await
    .unwrap();
    let dup = next(&mut rx).await;
    assert!(dup.created && dup.canceled);
    assert_eq!(dup.watch_id, -1);
    assert_eq!(
        dup.cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    tx.send(create_req(WatchCreateRequest {
        range_end: b"a".to_vec(),
        ..create("b", 0)
    }))
    .await
    .unwrap();
    let empty = next(&mut rx).await;
    assert!(empty.canceled);
    assert_eq!(empty.cancel_reason, "mvcc: watcher range is empty");

    let p = put(&mut m.client, "f", "1").await;
    let d = m
        .client
        .delete(DeleteRangeRequest {
            key: b"f".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    let mut by_id: std::collections::BTreeMap<i64, Vec<Event>> = Default::default();
    while by_id.values().map(Vec::len).sum::<usize>() < 4 {
        let r = next(&mut rx).await;
        by_id.entry(r.watch_id).or_default().extend(r.events);
    }
    assert_eq!(
        keyrevs(&by_id[&0]),
        vec![("f".into(), p, 0), ("f".into(), d, 1)]
    );
    assert_eq!(keyrevs(&by_id[&42]), vec![("f".into(), d, 1)]);
    assert_eq!(by_id[&42][0].prev_kv.as_ref().unwrap().value, b"1");
    assert_eq!(keyrevs(&by_id[&1]), vec![("f".into(), p, 0)]);
    assert_eq!(by_id[&1][0].prev_kv, None);

    // Cancel one: confirmed, and it gets nothing more; unknown ids are ignored.
    for id in [42, 7] {
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CancelRequest(
                c20_api::etcdserverpb::WatchCancelRequest { watch_id: id },
            )),
        })
        .await
        .unwrap();
    }
    let c = next(&mut rx).await;
    assert!(c.canceled);
    assert_eq!(c.watch_id, 42);
    let d2 = m
        .client
        .delete(DeleteRangeRequest {
            key: b"f".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(d2.deleted, 0);
    let p2 = put(&mut m.client, "f", "2").await;
    let mut rest = Vec::new();
    while rest.len() < 2 {
        rest.push(next(&mut rx).await);
    }
    let mut ids: Vec<i64> = rest.iter().map(|r| r.watch_id).collect();
    ids.sort();
    assert_eq!(ids, vec![0, 1]);
    assert!(rest
        .iter()
        .all(|r| keyrevs(&r.events) == vec![("f".into(), p2, 0)]));
    m.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_revision_is_fragmented_only_on_request() {
    let mut m = member().await;
    // 40 keys of 64 KiB, then one delete of them all with prev_kv: ~5 MiB at one revision.
    let value = vec![b'x'; 64 * 1024];
    for chunk in 0..4 {
        let keys: Vec<String> = (0..10).map(|i| format!("big/{chunk}{i}")).collect();
        m.client.txn(txn_puts(&keys, &value)).await.unwrap();
    }
    let (tx, mut rx) = raw_stream(&m.endpoint).await;
    for (id, fragment) in [(1, true), (2, false)] {
        tx.send(create_req(WatchCreateRequest {
            watch_id: id,
            prev_kv: true,
            fragment,
            ..prefix("big/", 0)
        }))
        .await
        .unwrap();
        assert!(next(&mut rx).await.created);
    }
    m.client
        .delete(DeleteRangeRequest {
            key: b"big/".to_vec(),
            range_end: prefix_end(b"big/"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut pieces: std::collections::BTreeMap<i64, Vec<WatchResponse>> = Default::default();
    let count = |p: &std::collections::BTreeMap<i64, Vec<WatchResponse>>, id| {
        p.get(&id).map_or(0, |rs: &Vec<WatchResponse>| {
            rs.iter().map(|r| r.events.len()).sum::<usize>()
        })
    };
    while count(&pieces, 1) < 40 || count(&pieces, 2) < 40 {
        let r = next(&mut rx).await;
        pieces.entry(r.watch_id).or_default().push(r);
    }
    let frags = &pieces[&1];
    assert!(frags.len() > 1, "expected fragments");
    assert!(frags[..frags.len() - 1].iter().all(|r| r.fragment));
    assert!(!frags.last().unwrap().fragment);
    let whole = &pieces[&2];
    assert_eq!(whole.len(), 1);
    assert!(!whole[0].fragment);
    assert_eq!(events(frags), whole[0].events);
    m.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_holds_bounded_memory_and_then_catches_up() {
    let m = member().await;
    let (tx, mut rx) = raw_stream(&m.endpoint).await;
    tx.send(create_req(prefix("s/", 0))).await.unwrap();
    assert!(next(&mut rx).await.created);
    // 100,000 puts (100,000 revisions) from 64 writers while the client reads nothing.
    let value = vec![b'v'; 100];
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = (0..64)
        .map(|_| {
            let mut c = m.client.clone();
            let value = value.clone();
            let issued = issued.clone();
            tokio::spawn(async move {
                loop {
                    let i = issued.fetch_add(1, Ordering::Relaxed);
                    if i >= 100_000 {
                        return;
                    }
                    c.put(format!("s/{i:06}"), value.clone()).await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let metrics = m.server.watch_metrics();
    let peak = metrics.queued_bytes_peak.load(Ordering::Relaxed);
    // What the stream may hold: its queue of responses, each at most one response's worth of
    // events (an event here encodes to well under 200 bytes). The events total over 12 MB.
    let bound = (SEND_QUEUE_RESPONSES * EVENTS_PER_RESPONSE * 200) as i64;
    assert!(peak <= bound, "queued {peak} bytes, bound {bound}");
    // Then it catches up from the store: every event, in order, once.
    let mut seen = 0usize;
    let mut last = (0i64, String::new());
    while seen < 100_000 {
        for e in next(&mut rx).await.events {
            let kv = e.kv.unwrap();
            let at = (kv.mod_revision, String::from_utf8(kv.key).unwrap());
            assert!(at > last, "{at:?} after {last:?}");
            last = at;
            seen += 1;
        }
    }
    assert_eq!(seen, 100_000);
    assert!(metrics.queued_bytes_peak.load(Ordering::Relaxed) <= bound);
    m.server.shutdown().await;
}
