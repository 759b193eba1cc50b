use super::*;
use c20_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use c20_api::etcdserverpb::range_request::{SortOrder, SortTarget};

fn store() -> (tempfile::TempDir, MvccStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = MvccStore::open(&dir.path().join("kv.redb")).unwrap();
    (dir, s)
}

fn put(s: &mut MvccStore, k: &str, v: &str) -> PutResponse {
    let req = PutRequest {
        key: k.into(),
        value: v.into(),
        prev_kv: true,
        ..Default::default()
    };
    match s.apply_batch(vec![WriteOp::Put(req)]).unwrap().remove(0) {
        Ok(WriteResult::Put(r)) => r,
        other => panic!("put failed: {other:?}"),
    }
}

fn apply(s: &mut MvccStore, op: WriteOp) -> Result<WriteResult, EtcdError> {
    s.apply_batch(vec![op]).unwrap().remove(0)
}

fn get(s: &MvccStore, k: &str) -> Option<KeyValue> {
    s.range(&RangeRequest {
        key: k.into(),
        ..Default::default()
    })
    .unwrap()
    .kvs
    .pop()
}

fn keys(r: &RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

fn op_put(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })),
    }
}

fn cmp(k: &str, target: CompareTarget, result: CompareResult, u: TargetUnion) -> Compare {
    Compare {
        key: k.into(),
        target: target as i32,
        result: result as i32,
        target_union: Some(u),
        range_end: vec![],
    }
}

#[test]
fn revisions_start_at_one_and_track_create_mod_version() {
    let (_d, mut s) = store();
    assert_eq!(s.current_revision(), 1);
    let r = put(&mut s, "a", "1");
    assert_eq!(r.header.unwrap().revision, 2);
    assert_eq!(r.prev_kv, None);
    let r = put(&mut s, "a", "2");
    assert_eq!(r.prev_kv.unwrap().value, b"1");
    let kv = get(&s, "a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    assert_eq!(kv.value, b"2");
}

#[test]
fn delete_of_nothing_keeps_the_revision_and_recreate_resets_version() {
    let (_d, mut s) = store();
    put(&mut s, "a", "1");
    let del = |k: &str| {
        WriteOp::DeleteRange(DeleteRangeRequest {
            key: k.into(),
            prev_kv: true,
            ..Default::default()
        })
    };
    let Ok(WriteResult::DeleteRange(r)) = apply(&mut s, del("missing")) else {
        panic!()
    };
    assert_eq!((r.deleted, r.header.unwrap().revision), (0, 2));
    let Ok(WriteResult::DeleteRange(r)) = apply(&mut s, del("a")) else {
        panic!()
    };
    assert_eq!((r.deleted, r.header.unwrap().revision), (1, 3));
    assert_eq!(r.prev_kvs[0].value, b"1");
    assert!(get(&s, "a").is_none());
    put(&mut s, "a", "again");
    let kv = get(&s, "a").unwrap();
    assert_eq!((kv.create_revision, kv.version), (4, 1));
}

#[test]
fn range_options_prefix_from_key_limit_sort_filters() {
    let (_d, mut s) = store();
    for (k, v) in [("k1", "c"), ("k2", "a"), ("k3", "b"), ("z", "z")] {
        put(&mut s, k, v);
    }
    put(&mut s, "k2", "a2");
    let base = RangeRequest {
        key: "k".into(),
        range_end: "l".into(),
        ..Default::default()
    };
    let r = s.range(&base).unwrap();
    assert_eq!(keys(&r), ["k1", "k2", "k3"]);
    assert_eq!((r.count, r.more), (3, false));

    let r = s
        .range(&RangeRequest {
            limit: 2,
            ..base.clone()
        })
        .unwrap();
    assert_eq!(keys(&r), ["k1", "k2"]);
    assert_eq!((r.count, r.more), (3, true));

    let r = s
        .range(&RangeRequest {
            sort_target: SortTarget::Value as i32,
            sort_order: SortOrder::Descend as i32,
            ..base.clone()
        })
        .unwrap();
    assert_eq!(keys(&r), ["k1", "k3", "k2"]);

    // A non-key target without an order sorts ascending.
    let r = s
        .range(&RangeRequest {
            sort_target: SortTarget::Mod as i32,
            ..base.clone()
        })
        .unwrap();
    assert_eq!(keys(&r), ["k1", "k3", "k2"]);

    let r = s
        .range(&RangeRequest {
            key: "k2".into(),
            range_end: vec![0],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keys(&r), ["k2", "k3", "z"]);

    let r = s
        .range(&RangeRequest {
            count_only: true,
            ..base.clone()
        })
        .unwrap();
    assert_eq!((r.count, r.kvs.len()), (3, 0));
    let r = s
        .range(&RangeRequest {
            keys_only: true,
            ..base.clone()
        })
        .unwrap();
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));

    let r = s
        .range(&RangeRequest {
            min_mod_revision: 4,
            max_create_revision: 4,
            ..base.clone()
        })
        .unwrap();
    assert_eq!(keys(&r), ["k2", "k3"]);
    // count is the size of the range, before filters.
    assert_eq!(r.count, 3);

    // An end before the key is an empty range, not a panic.
    let r = s
        .range(&RangeRequest {
            key: "z".into(),
            range_end: "a".into(),
            ..Default::default()
        })
        .unwrap();
    assert!(r.kvs.is_empty());
}

#[test]
fn reads_at_old_revisions_until_compacted() {
    let (_d, mut s) = store();
    put(&mut s, "a", "v2");
    put(&mut s, "a", "v3");
    put(&mut s, "a", "v4");
    let at = |s: &MvccStore, rev| {
        s.range(&RangeRequest {
            key: "a".into(),
            revision: rev,
            ..Default::default()
        })
    };
    assert_eq!(at(&s, 2).unwrap().kvs[0].value, b"v2");
    assert_eq!(at(&s, 5).unwrap_err(), EtcdError::FutureRev);
    assert_eq!(
        apply(
            &mut s,
            WriteOp::Compact(CompactionRequest {
                revision: 3,
                physical: false
            })
        ),
        Ok(WriteResult::Compact(CompactionResponse {
            header: Some(header(4))
        }))
    );
    assert_eq!(at(&s, 2).unwrap_err(), EtcdError::Compacted);
    assert_eq!(at(&s, 3).unwrap().kvs[0].value, b"v3");
    assert_eq!(
        apply(
            &mut s,
            WriteOp::Compact(CompactionRequest {
                revision: 3,
                physical: false
            })
        ),
        Err(EtcdError::Compacted)
    );
    assert_eq!(
        apply(
            &mut s,
            WriteOp::Compact(CompactionRequest {
                revision: 9,
                physical: false
            })
        ),
        Err(EtcdError::FutureRev)
    );
    assert_eq!(s.compact_revision(), 3);
}

#[test]
fn txn_takes_one_revision_and_sees_its_own_writes() {
    let (_d, mut s) = store();
    put(&mut s, "a", "1");
    let t = TxnRequest {
        compare: vec![cmp(
            "a",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value("1".into()),
        )],
        success: vec![
            op_put("a", "2"),
            op_put("b", "2"),
            RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: "b".into(),
                    ..Default::default()
                })),
            },
        ],
        failure: vec![op_put("c", "x")],
    };
    let Ok(WriteResult::Txn(r)) = apply(&mut s, WriteOp::Txn(t.clone())) else {
        panic!()
    };
    assert!(r.succeeded);
    assert_eq!(r.header.unwrap().revision, 3);
    let Some(response_op::Response::ResponseRange(rr)) = &r.responses[2].response else {
        panic!()
    };
    assert_eq!(rr.kvs[0].value, b"2");
    assert_eq!(get(&s, "a").unwrap().mod_revision, 3);
    assert_eq!(get(&s, "b").unwrap().mod_revision, 3);
    // Second time the compare fails: failure branch.
    let Ok(WriteResult::Txn(r)) = apply(&mut s, WriteOp::Txn(t)) else {
        panic!()
    };
    assert!(!r.succeeded);
    assert_eq!(get(&s, "c").unwrap().value, b"x");
}

#[test]
fn compares_on_every_target_and_missing_keys() {
    let (_d, mut s) = store();
    put(&mut s, "a", "m");
    put(&mut s, "a", "n");
    use CompareResult::*;
    use CompareTarget::*;
    let cases = [
        (cmp("a", Version, Equal, TargetUnion::Version(2)), true),
        (cmp("a", Version, Greater, TargetUnion::Version(1)), true),
        (
            cmp("a", Create, Equal, TargetUnion::CreateRevision(2)),
            true,
        ),
        (cmp("a", Mod, Less, TargetUnion::ModRevision(3)), false),
        (cmp("a", Mod, NotEqual, TargetUnion::ModRevision(2)), true),
        (
            cmp("a", Value, Greater, TargetUnion::Value("m".into())),
            true,
        ),
        (cmp("a", Lease, Equal, TargetUnion::Lease(0)), true),
        (cmp("nope", Version, Equal, TargetUnion::Version(0)), true),
        (
            cmp("nope", Create, Equal, TargetUnion::CreateRevision(0)),
            true,
        ),
        (cmp("nope", Value, Equal, TargetUnion::Value(vec![])), false),
    ];
    for (c, want) in cases {
        assert_eq!(s.compare(&c), want, "{c:?}");
    }
}

#[test]
fn failing_txn_changes_nothing() {
    let (_d, mut s) = store();
    put(&mut s, "a", "1");
    let t = TxnRequest {
        success: vec![
            op_put("b", "1"),
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: "missing".into(),
                    ignore_value: true,
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    assert_eq!(apply(&mut s, WriteOp::Txn(t)), Err(EtcdError::KeyNotFound));
    assert_eq!(s.current_revision(), 2);
    assert!(get(&s, "b").is_none());
}

#[test]
fn validation_matches_etcd() {
    assert_eq!(
        validate_put(&PutRequest::default()),
        Err(EtcdError::EmptyKey)
    );
    assert_eq!(
        validate_range(&RangeRequest::default()),
        Err(EtcdError::EmptyKey)
    );
    let dup = TxnRequest {
        success: vec![op_put("a", "1"), op_put("a", "2")],
        ..Default::default()
    };
    assert_eq!(validate_txn(&dup), Err(EtcdError::DuplicateKey));
    let put_in_delete = TxnRequest {
        success: vec![
            op_put("ab", "1"),
            RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: "a".into(),
                        range_end: "b".into(),
                        ..Default::default()
                    },
                )),
            },
        ],
        ..Default::default()
    };
    assert_eq!(validate_txn(&put_in_delete), Err(EtcdError::DuplicateKey));
    let too_many = TxnRequest {
        success: (0..=MAX_TXN_OPS)
            .map(|i| op_put(&format!("k{i}"), "v"))
            .collect(),
        ..Default::default()
    };
    assert_eq!(validate_txn(&too_many), Err(EtcdError::TooManyOps));
    let same_key_both_branches = TxnRequest {
        success: vec![op_put("a", "1")],
        failure: vec![op_put("a", "2")],
        ..Default::default()
    };
    assert_eq!(validate_txn(&same_key_both_branches), Ok(()));
}

#[test]
fn state_survives_checkpoint_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let hash;
    {
        let mut s = MvccStore::open(&path).unwrap();
        put(&mut s, "a", "1");
        put(&mut s, "b", "2");
        put(&mut s, "a", "3");
        apply(
            &mut s,
            WriteOp::Compact(CompactionRequest {
                revision: 3,
                physical: true,
            }),
        )
        .unwrap();
        s.set_applied(b"applied-7".to_vec());
        s.checkpoint().unwrap();
        hash = s.hash_kv(0).unwrap();
    }
    let s = MvccStore::open(&path).unwrap();
    assert_eq!(s.current_revision(), 4);
    assert_eq!(s.compact_revision(), 3);
    assert_eq!(s.applied(), b"applied-7");
    assert_eq!(get(&s, "a").unwrap().value, b"3");
    assert_eq!(get(&s, "b").unwrap().create_revision, 3);
    assert_eq!(s.hash_kv(0).unwrap(), hash);
}

#[test]
fn an_image_written_event_by_event_is_the_postcard_encoding_of_the_image() {
    let (_d, mut s) = store();
    apply(
        &mut s,
        WriteOp::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 9 }),
    )
    .unwrap();
    for i in 0..300 {
        put(&mut s, &format!("k{}", i % 40), &"v".repeat(i));
    }
    apply(
        &mut s,
        WriteOp::DeleteRange(DeleteRangeRequest {
            key: "k1".into(),
            range_end: "k2".into(),
            ..Default::default()
        }),
    )
    .unwrap();
    apply(
        &mut s,
        WriteOp::Compact(CompactionRequest {
            revision: 100,
            ..Default::default()
        }),
    )
    .unwrap();
    let mut streamed = Vec::new();
    s.export_refs().write_image(&mut streamed).unwrap();
    assert_eq!(streamed, postcard::to_allocvec(&s.export()).unwrap());
    let image: MvccImage = postcard::from_bytes(&streamed).unwrap();
    assert!(image.events.len() > 40 && image.compact_rev == 100 && image.leases.len() == 1);
}

#[test]
fn export_then_import_reproduces_the_store() {
    let (_d, mut s) = store();
    put(&mut s, "a", "1");
    put(&mut s, "b", "2");
    apply(
        &mut s,
        WriteOp::DeleteRange(DeleteRangeRequest {
            key: "a".into(),
            ..Default::default()
        }),
    )
    .unwrap();
    put(&mut s, "c", "3");
    let image = s.export();
    let (_d2, mut other) = store();
    put(&mut other, "stale", "x");
    other.import(image.clone(), b"applied".to_vec()).unwrap();
    assert_eq!(other.export(), image);
    assert_eq!(other.hash_kv(0).unwrap(), s.hash_kv(0).unwrap());
    assert!(get(&other, "stale").is_none());
    assert!(get(&other, "a").is_none());
    assert_eq!(other.current_revision(), 5);
    assert_eq!(other.applied(), b"applied");
}

#[test]
fn descending_sort_keeps_ties_in_key_order() {
    let (_d, mut s) = store();
    for k in ["a", "b", "c"] {
        put(&mut s, k, "same");
    }
    put(&mut s, "d", "zzz");
    let r = s
        .range(&RangeRequest {
            key: "a".into(),
            range_end: "z".into(),
            sort_target: SortTarget::Value as i32,
            sort_order: SortOrder::Descend as i32,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keys(&r), ["d", "a", "b", "c"]);
}

#[test]
fn in_memory_store_behaves_like_the_file_store() {
    let mut s = MvccStore::in_memory().unwrap();
    put(&mut s, "a", "1");
    put(&mut s, "a", "2");
    s.checkpoint().unwrap();
    assert_eq!(get(&s, "a").unwrap().version, 2);
    assert!(s.file_size() > 0);
}

#[test]
fn pending_bytes_count_the_rows_the_next_checkpoint_writes() {
    let (_d, mut s) = store();
    assert_eq!(s.pending_bytes(), 0);
    put(&mut s, "a", &"v".repeat(300));
    let one = s.pending_bytes();
    // The row's key (16 bytes), its flag and the encoded KeyValue, value included.
    let row = StoredKv::from_kv(&get(&s, "a").unwrap()).encoded_len();
    assert_eq!(one, 16 + 1 + row);
    put(&mut s, "a", &"w".repeat(300));
    assert_eq!(
        s.pending_bytes(),
        2 * one,
        "the second version is a row of its own"
    );
    // Compacting away the first version removes its row: a key's worth more.
    compact(&mut s, 3);
    assert_eq!(s.pending_bytes(), 2 * one + 16);
    s.checkpoint().unwrap();
    assert_eq!(s.pending_bytes(), 0, "a checkpoint takes them all");
    put(&mut s, "b", "1");
    assert!(s.pending_bytes() > 16 && s.pending_bytes() < one);
}

#[test]
fn only_checkpointed_changes_reach_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    {
        let mut s = MvccStore::open(&path).unwrap();
        put(&mut s, "a", "1");
        s.set_applied(b"at-a".to_vec());
        s.checkpoint().unwrap();
        assert_eq!(s.pending_rows(), 0);
        put(&mut s, "b", "2");
        s.set_applied(b"at-b".to_vec());
        assert_eq!(s.pending_rows(), 1);
        // Dropped without a checkpoint, as in a crash: the log replays "b" at restart.
    }
    let s = MvccStore::open(&path).unwrap();
    assert_eq!(s.applied(), b"at-a");
    assert_eq!(s.current_revision(), 2);
    assert!(get(&s, "a").is_some());
    assert!(get(&s, "b").is_none());
}

// -------------------------------------------------------------------------------------------
// watch events and leases

fn grant(s: &mut MvccStore, id: i64, ttl: i64) -> Result<WriteResult, EtcdError> {
    apply(s, WriteOp::LeaseGrant(LeaseGrantRequest { ttl, id }))
}

fn put_lease(s: &mut MvccStore, k: &str, lease: i64) -> Result<WriteResult, EtcdError> {
    apply(
        s,
        WriteOp::Put(PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            lease,
            ..Default::default()
        }),
    )
}

/// `(type, key, revision)` of each event.
fn summary(b: &WatchBatch) -> Vec<(i32, String, i64)> {
    b.events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (
                e.r#type,
                String::from_utf8(kv.key.clone()).unwrap(),
                kv.mod_revision,
            )
        })
        .collect()
}

#[test]
fn watch_events_come_in_revision_order_with_prev_kv() {
    let (_d, mut s) = store();
    put(&mut s, "a", "1"); // 2
    put(&mut s, "b", "1"); // 3
    put(&mut s, "a", "2"); // 4
    apply(
        &mut s,
        WriteOp::DeleteRange(DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: b"c".to_vec(),
            ..Default::default()
        }),
    )
    .unwrap(); // 5: a and b
    let all = s.watch_events(b"a", b"c", 2, true, 100).unwrap();
    assert_eq!(
        summary(&all),
        vec![
            (0, "a".into(), 2),
            (0, "b".into(), 3),
            (0, "a".into(), 4),
            (1, "a".into(), 5),
            (1, "b".into(), 5),
        ]
    );
    assert_eq!(all.next_rev, 6);
    assert_eq!(all.events[0].prev_kv, None);
    assert_eq!(all.events[2].prev_kv.as_ref().unwrap().value, b"1");
    assert_eq!(all.events[3].prev_kv.as_ref().unwrap().value, b"2");
    // One key only, from a later revision.
    let a = s.watch_events(b"a", b"", 3, false, 100).unwrap();
    assert_eq!(summary(&a), vec![(0, "a".into(), 4), (1, "a".into(), 5)]);
    assert_eq!(a.events[0].prev_kv, None);
    // A future start waits there.
    let f = s.watch_events(b"a", b"", 9, false, 100).unwrap();
    assert!(f.events.is_empty());
    assert_eq!(f.next_rev, 9);
}

#[test]
fn watch_events_stop_only_at_revision_boundaries() {
    let (_d, mut s) = store();
    // Revision 2 holds three events; revision 3 one more.
    let txn = TxnRequest {
        success: vec![op_put("x", "1"), op_put("y", "1"), op_put("z", "1")],
        ..Default::default()
    };
    apply(&mut s, WriteOp::Txn(txn)).unwrap();
    put(&mut s, "x", "2");
    let first = s.watch_events(b"a", &[0], 2, false, 1).unwrap();
    assert_eq!(first.events.len(), 3, "revision 2 is never split");
    assert_eq!(first.next_rev, 3);
    let rest = s
        .watch_events(b"a", &[0], first.next_rev, false, 1)
        .unwrap();
    assert_eq!(summary(&rest), vec![(0, "x".into(), 3)]);
    assert_eq!(rest.next_rev, 4);
}

#[test]
fn watch_events_below_the_compaction_are_refused_and_survive_restart_above_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let mut s = MvccStore::open(&path).unwrap();
    put(&mut s, "a", "1"); // 2
    put(&mut s, "a", "2"); // 3
    apply(
        &mut s,
        WriteOp::DeleteRange(DeleteRangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        }),
    )
    .unwrap(); // 4
    put(&mut s, "b", "1"); // 5
    apply(
        &mut s,
        WriteOp::Compact(CompactionRequest {
            revision: 4,
            physical: false,
        }),
    )
    .unwrap();
    assert_eq!(s.watch_events(b"a", &[0], 3, false, 100), Err(4));
    let before = s.watch_events(b"a", &[0], 4, true, 100).unwrap();
    assert_eq!(
        summary(&before),
        vec![(1, "a".into(), 4), (0, "b".into(), 5)]
    );
    s.checkpoint().unwrap();
    drop(s);
    let s = MvccStore::open(&path).unwrap();
    assert_eq!(s.watch_events(b"a", &[0], 4, true, 100).unwrap(), before);
    assert_eq!(s.watch_events(b"a", &[0], 3, false, 100), Err(4));
}

#[test]
fn revoking_a_lease_deletes_its_keys_at_one_revision() {
    let (_d, mut s) = store();
    let Ok(WriteResult::LeaseGrant(g)) = grant(&mut s, 7, 30) else {
        panic!("grant failed")
    };
    assert_eq!((g.id, g.ttl), (7, 30));
    assert_eq!(grant(&mut s, 7, 30), Err(EtcdError::LeaseExist));
    assert_eq!(put_lease(&mut s, "k", 8), Err(EtcdError::LeaseNotFound));
    put_lease(&mut s, "k1", 7).unwrap();
    put_lease(&mut s, "k2", 7).unwrap();
    put(&mut s, "other", "v");
    // Re-putting without the lease detaches the key.
    put_lease(&mut s, "k3", 7).unwrap();
    put(&mut s, "k3", "free");
    assert_eq!(s.lease(7), Some((30, vec![b"k1".to_vec(), b"k2".to_vec()])));
    let rev = s.current_revision();
    apply(&mut s, WriteOp::LeaseRevoke(LeaseRevokeRequest { id: 7 })).unwrap();
    assert_eq!(s.current_revision(), rev + 1);
    assert_eq!(get(&s, "k1"), None);
    assert_eq!(get(&s, "k2"), None);
    assert_eq!(get(&s, "k3").unwrap().value, b"free");
    let events = s.watch_events(b"k", b"l", rev + 1, false, 100).unwrap();
    assert_eq!(
        summary(&events),
        vec![(1, "k1".into(), rev + 1), (1, "k2".into(), rev + 1)]
    );
    assert_eq!(s.lease(7), None);
    assert_eq!(
        apply(&mut s, WriteOp::LeaseRevoke(LeaseRevokeRequest { id: 7 })),
        Err(EtcdError::LeaseNotFound)
    );
}

#[test]
fn leases_survive_reopen_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let mut s = MvccStore::open(&path).unwrap();
    grant(&mut s, 1, 10).unwrap();
    grant(&mut s, 2, 20).unwrap();
    put_lease(&mut s, "a", 1).unwrap();
    apply(&mut s, WriteOp::LeaseRevoke(LeaseRevokeRequest { id: 2 })).unwrap();
    s.checkpoint().unwrap();
    let image = s.export();
    assert_eq!(image.leases, vec![(1, 10)]);
    drop(s);
    let s = MvccStore::open(&path).unwrap();
    assert_eq!(s.leases(), vec![(1, 10)]);
    assert_eq!(s.lease(1), Some((10, vec![b"a".to_vec()])));
    for mut copy in [MvccStore::in_memory().unwrap(), store().1] {
        copy.import(image.clone(), vec![]).unwrap();
        assert_eq!(copy.lease(1), Some((10, vec![b"a".to_vec()])));
        assert_eq!(copy.leases(), vec![(1, 10)]);
    }
}

fn del(s: &mut MvccStore, k: &str) {
    apply(
        s,
        WriteOp::DeleteRange(DeleteRangeRequest {
            key: k.into(),
            ..Default::default()
        }),
    )
    .unwrap();
}

fn compact(s: &mut MvccStore, rev: i64) {
    apply(
        s,
        WriteOp::Compact(CompactionRequest {
            revision: rev,
            ..Default::default()
        }),
    )
    .unwrap();
}

#[test]
fn incremental_snapshot_brings_a_lagging_store_to_the_same_state() {
    for on_disk in [true, false] {
        let (_d, mut leader) = store();
        for i in 0..50 {
            put(&mut leader, &format!("k{i:02}"), "v1");
        }
        grant(&mut leader, 7, 100).unwrap();
        compact(&mut leader, 10);
        del(&mut leader, "k03");
        // The follower holds the leader's state as of now...
        let base = leader.current_revision();
        let (_d2, mut follower) = store();
        let mut follower = if on_disk {
            follower.import(leader.export(), vec![]).unwrap();
            follower
        } else {
            let mut m = MvccStore::in_memory().unwrap();
            m.import(leader.export(), vec![]).unwrap();
            m
        };
        // ...then applies one more entry of its own log (events above the base come from the
        // delta whatever the store holds there)...
        put(&mut follower, "k49", "v2");
        // ...and misses overwrites, a delete, a recreated key, lease changes and a compaction
        // at the base (which keeps the delete made at that revision).
        for i in 0..5 {
            put(&mut leader, &format!("k{i:02}"), "v2");
        }
        put(&mut leader, "k49", "v2");
        del(&mut leader, "k10");
        put(&mut leader, "k03", "back");
        put_lease(&mut leader, "leased", 7).unwrap();
        grant(&mut leader, 8, 50).unwrap();
        compact(&mut leader, base);
        put(&mut leader, "k00", "v3");

        let full = leader.export();
        let delta = full.since(base).expect("compaction is at the base");
        assert!(delta.events.len() < full.events.len() / 4);
        follower
            .import_incremental(base, delta, b"at".to_vec())
            .unwrap();
        assert_eq!(follower.export(), full, "on disk: {on_disk}");
        assert_eq!(follower.hash_kv(0).unwrap(), leader.hash_kv(0).unwrap());
        assert_eq!(follower.applied(), b"at");
        assert_eq!(follower.lease(7), leader.lease(7));
        assert_eq!(follower.lease(7).unwrap().1, vec![b"leased".to_vec()]);
        assert_eq!(follower.compact_revision(), base);
    }
}

#[test]
fn incremental_snapshot_is_refused_when_history_above_the_base_is_gone() {
    let (_d, mut s) = store();
    put(&mut s, "a", "1");
    put(&mut s, "a", "2");
    let base = s.current_revision();
    put(&mut s, "a", "3");
    put(&mut s, "b", "1");
    compact(&mut s, base + 1);
    assert!(s.export().since(base).is_none());
    assert!(s.export().since(s.current_revision() + 1).is_none());
    // A store behind the base cannot take the delta.
    let delta = s.export().since(base + 1).unwrap();
    let (_d2, mut behind) = store();
    let e = behind
        .import_incremental(base + 1, delta, vec![])
        .unwrap_err();
    assert!(e.to_string().contains("this store is at 1"), "{e}");
    assert_eq!(behind.current_revision(), 1);
}

/// Found by the `snapshot_image` fuzz target: an increment whose compaction lay above its own
/// current revision was imported first and refused after, leaving the store emptied.
#[test]
fn images_with_impossible_revisions_are_refused_and_change_nothing() {
    let (_d, mut s) = store();
    put(&mut s, "a", "1");
    put(&mut s, "b", "1");
    let before = (s.export(), s.hash_kv(0).unwrap());
    let image = |current_rev, compact_rev, events: Vec<u64>| MvccImage {
        current_rev,
        compact_rev,
        events: events
            .into_iter()
            .map(|main| (main, 0, serde_bytes::ByteBuf::from(vec![0u8])))
            .collect(),
        leases: vec![],
    };
    let cases = [
        (
            image(0, 40, vec![]),
            "compacted at revision 40 with current revision 0",
        ),
        (image(5, -1, vec![]), "compacted at revision -1"),
        (image(5, 0, vec![6]), "event at revision 6.0, outside 1..=5"),
        (image(5, 0, vec![0]), "event at revision 0.0"),
    ];
    for (bad, why) in cases {
        let e = s.import_incremental(2, bad.clone(), vec![]).unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
        let e = s.import(bad, vec![]).unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
        assert_eq!((s.export(), s.hash_kv(0).unwrap()), before);
    }
    // An increment that would take the store back below its own revision.
    let e = s
        .import_incremental(2, image(2, 0, vec![]), vec![])
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("up to revision 2, but this store is at 3"),
        "{e}"
    );
    assert_eq!((s.export(), s.hash_kv(0).unwrap()), before);
}

#[test]
fn a_crash_loses_what_the_last_checkpoint_did_not_make_durable() {
    let (_d, on_disk) = store();
    let mut in_memory = MvccStore::in_memory().unwrap();
    in_memory.model_disk();
    for mut s in [on_disk, in_memory] {
        put(&mut s, "a", "1");
        s.set_applied(b"one".to_vec());
        s.checkpoint().unwrap();
        put(&mut s, "b", "2");
        s.set_applied(b"two".to_vec());
        s.lose_unsynced().unwrap();
        assert!(get(&s, "a").is_some());
        assert!(get(&s, "b").is_none());
        assert_eq!(s.current_revision(), 2);
        assert_eq!(s.applied(), b"one");
    }
    // A plain in-memory store keeps everything (nothing models a disk).
    let mut plain = MvccStore::in_memory().unwrap();
    put(&mut plain, "a", "1");
    plain.lose_unsynced().unwrap();
    assert!(get(&plain, "a").is_some());
}

/// An installed snapshot (an import) is durable at once, on disk and in a store that models a
/// disk alike: a crash right after it returns to the snapshot, not to the checkpoint before it
/// (the log below the snapshot is purged by then, so nothing could re-apply what lies between).
#[test]
fn an_imported_image_survives_a_crash_without_a_checkpoint() {
    let (_d, mut source) = store();
    put(&mut source, "a", "1");
    put(&mut source, "b", "2");
    let image = source.export();
    let (_d2, on_disk) = store();
    let mut in_memory = MvccStore::in_memory().unwrap();
    in_memory.model_disk();
    for mut s in [on_disk, in_memory] {
        put(&mut s, "old", "x");
        s.set_applied(b"before".to_vec());
        s.checkpoint().unwrap();
        s.import(image.clone(), b"snapshot".to_vec()).unwrap();
        s.lose_unsynced().unwrap();
        assert_eq!(get(&s, "b").map(|kv| kv.value), Some(b"2".to_vec()));
        assert!(get(&s, "old").is_none());
        assert_eq!(s.current_revision(), 3);
        assert_eq!(s.applied(), b"snapshot");
    }
}

/// Checkpoints written on the checkpoint thread land one after the other: the second removes
/// the row of revision 2 that the first inserted (compaction), and a reopened file holds exactly
/// what the last one, sent just before the store was dropped, brought it to.
#[test]
fn background_checkpoints_land_in_order_and_a_reopen_finds_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let hash;
    {
        let mut s = MvccStore::open(&path).unwrap();
        put(&mut s, "a", "1");
        s.set_applied(b"one".to_vec());
        s.checkpoint_in_background().unwrap();
        // Only one checkpoint is in flight at a time (a busy thread leaves the rows pending):
        // wait, so that each of these three is sent.
        s.wait_checkpoints().unwrap();
        put(&mut s, "a", "2");
        compact(&mut s, 3);
        s.set_applied(b"two".to_vec());
        s.checkpoint_in_background().unwrap();
        s.wait_checkpoints().unwrap();
        put(&mut s, "b", "3");
        s.set_applied(b"three".to_vec());
        s.checkpoint_in_background().unwrap();
        assert_eq!(
            s.pending_rows(),
            0,
            "the rows went to the checkpoint thread"
        );
        hash = s.hash_kv(0).unwrap();
        put(&mut s, "c", "4");
        // Dropped without another checkpoint, as in a crash: dropping waits for those sent.
    }
    let s = MvccStore::open(&path).unwrap();
    assert_eq!(s.applied(), b"three");
    assert_eq!(s.current_revision(), 4);
    assert_eq!(s.compact_revision(), 3);
    assert_eq!(get(&s, "a").unwrap().value, b"2");
    assert_eq!(get(&s, "b").unwrap().value, b"3");
    assert!(get(&s, "c").is_none());
    assert_eq!(
        s.hash_kv(0).unwrap(),
        hash,
        "the compacted row stayed removed"
    );
}

/// A crash while a checkpoint is being written finds it whole (the crash here waits for it)
/// and loses what came after; a checkpoint taken inline afterwards waits for the thread too.
#[test]
fn a_crash_after_a_background_checkpoint_keeps_it_and_loses_the_rest() {
    let (_d, mut s) = store();
    put(&mut s, "a", "1");
    s.set_applied(b"one".to_vec());
    s.checkpoint_in_background().unwrap();
    put(&mut s, "b", "2");
    s.set_applied(b"two".to_vec());
    s.lose_unsynced().unwrap();
    assert!(get(&s, "a").is_some());
    assert!(get(&s, "b").is_none());
    assert_eq!(s.applied(), b"one");
    put(&mut s, "c", "3");
    s.set_applied(b"three".to_vec());
    s.checkpoint_in_background().unwrap();
    put(&mut s, "d", "4");
    s.set_applied(b"four".to_vec());
    s.checkpoint().unwrap();
    s.lose_unsynced().unwrap();
    assert_eq!(s.applied(), b"four");
    assert!(get(&s, "c").is_some() && get(&s, "d").is_some());
}

/// A checkpoint that fails on the checkpoint thread stops writes on the store: the write after
/// it is refused and changes nothing, every later one too (even with the disk "healed"), and
/// reads go on serving what was applied. The log still holds everything since the last good
/// checkpoint, so nothing acknowledged is lost.
#[test]
fn a_failed_background_checkpoint_stops_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let fail = Arc::new(crate::test_faults::FailNth::every());
    let mut s = MvccStore::open_with_faults(&path, Some(fail.clone())).unwrap();
    put(&mut s, "a", "1");
    s.checkpoint_in_background().unwrap();
    s.wait_checkpoints().unwrap();
    put(&mut s, "b", "2");
    fail.arm(true);
    // Sending succeeds; the write fails on the thread.
    s.checkpoint_in_background().unwrap();
    assert!(matches!(s.wait_checkpoints(), Err(StorageError::Failed(_))));
    let put_c = WriteOp::Put(PutRequest {
        key: "c".into(),
        value: "3".into(),
        ..Default::default()
    });
    assert!(matches!(
        s.apply_batch(vec![put_c.clone()]),
        Err(StorageError::Failed(_))
    ));
    assert_eq!(
        s.current_revision(),
        3,
        "the refused write took no revision"
    );
    assert!(get(&s, "c").is_none());
    fail.arm(false);
    assert!(matches!(
        s.apply_batch(vec![put_c]),
        Err(StorageError::Failed(_))
    ));
    assert!(s.checkpoint_in_background().is_err());
    assert_eq!(get(&s, "a").unwrap().value, b"1");
    assert_eq!(get(&s, "b").unwrap().value, b"2");
    // The file holds the last good checkpoint: a restart replays the rest from the log.
    drop(s);
    let s = MvccStore::open(&path).unwrap();
    assert_eq!(s.current_revision(), 2);
    assert_eq!(get(&s, "a").unwrap().value, b"1");
    assert!(get(&s, "b").is_none());
}

/// The checkpoint thread runs below the threads that serve requests.
#[cfg(target_os = "linux")]
#[test]
fn the_checkpoint_thread_runs_at_a_lower_priority() {
    let (_d, mut s) = store();
    put(&mut s, "a", "1");
    s.checkpoint_in_background().unwrap();
    s.wait_checkpoints().unwrap();
    let mut seen = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if comm.trim() != "c20-checkpoint" {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(task.join("stat")) else {
            continue;
        };
        // Fields after the command's closing parenthesis: state is field 3, nice field 19.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let nice: i32 = after.split(' ').nth(16).unwrap().parse().unwrap();
        assert_eq!(nice, checkpoint::CHECKPOINT_NICE, "{}", task.display());
        seen += 1;
    }
    assert!(seen >= 1, "no checkpoint thread found");
}
