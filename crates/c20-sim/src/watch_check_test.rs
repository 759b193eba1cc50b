use super::*;

/// A put of `key = value` by `client`, called at `call`, acknowledged at `ret` with `revision`.
fn put(client: usize, key: &str, value: &str, call: u64, ret: Option<(u64, i64)>) -> Op {
    Op {
        client,
        key: key.as_bytes().to_vec(),
        kind: Kind::Put(value.as_bytes().to_vec()),
        call,
        ret: ret.map(|r| r.0),
        revision: ret.map(|r| r.1),
        session: false,
        served: None,
    }
}

fn seen(revision: i64, key: &str, value: Option<&str>) -> Seen {
    Seen {
        revision,
        key: key.as_bytes().to_vec(),
        value: value.map(|v| v.as_bytes().to_vec()),
    }
}

fn delivery(at: u64, events: Vec<Seen>) -> Delivery {
    Delivery {
        replica: 0,
        at,
        events,
    }
}

fn log(watcher: usize, deliveries: Vec<Delivery>, reached: i64) -> WatchLog {
    WatchLog {
        watcher,
        deliveries,
        reached,
        starts: 1,
    }
}

/// Three writes: `a` at 2, a txn of `a` and `b` at 3, `b` at 4 (its ack lost).
fn history() -> Vec<Op> {
    vec![
        put(0, "a", "v1", 1, Some((2, 2))),
        put(1, "a", "t", 3, Some((5, 3))),
        put(1, "b", "t", 3, Some((5, 3))),
        put(0, "b", "v2", 6, None),
    ]
}

fn good_log(watcher: usize) -> WatchLog {
    log(
        watcher,
        vec![
            delivery(4, vec![seen(2, "a", Some("v1"))]),
            delivery(7, vec![seen(3, "a", Some("t")), seen(3, "b", Some("t"))]),
            delivery(9, vec![seen(4, "b", Some("v2"))]),
        ],
        5,
    )
}

#[test]
fn agreeing_complete_watchers_pass_and_place_unknown_writes() {
    let c = check_watches(&history(), &[good_log(0), good_log(1)], 4).unwrap();
    assert_eq!(c.events, 8);
    assert_eq!(c.revisions, 3);
    assert_eq!(c.unknown_writes_applied, 1);
}

fn fails(history: &[Op], logs: &[WatchLog], final_revision: i64, what: &str) {
    match check_watches(history, logs, final_revision) {
        Ok(c) => panic!("expected a violation ({what}), got {c:?}"),
        Err(v) => assert!(v.to_string().contains(what), "expected {what:?} in: {v}"),
    }
}

#[test]
fn a_gap_a_repeat_or_a_split_revision_is_caught() {
    let mut gap = good_log(0);
    gap.deliveries.remove(1);
    fails(&history(), &[gap], 4, "skipped from revision 2 to 4");

    let mut repeat = good_log(0);
    repeat.deliveries[2].events[0] = seen(3, "b", Some("t"));
    fails(&history(), &[repeat], 4, "after revision 3");

    let mut split = good_log(0);
    let second = split.deliveries[1].events.pop().unwrap();
    split.deliveries.insert(2, delivery(8, vec![second]));
    fails(&history(), &[split], 4, "out of order, repeated, or split");
}

#[test]
fn watchers_that_disagree_on_a_revision_are_caught() {
    let mut other = good_log(1);
    other.deliveries[0].events[0] = seen(2, "a", Some("t"));
    fails(
        &history(),
        &[good_log(0), other],
        4,
        "disagree on revision 2",
    );
}

#[test]
fn a_watcher_that_never_catches_up_is_caught() {
    let mut behind = good_log(1);
    behind.deliveries.pop();
    behind.reached = 4;
    fails(&history(), &[good_log(0), behind], 4, "never caught up");
}

#[test]
fn a_write_nobody_made_or_made_at_another_revision_is_caught() {
    let mut invented = good_log(0);
    invented.deliveries[2].events[0] = seen(4, "b", Some("nobody"));
    fails(&history(), &[invented], 4, "which no client wrote");

    let mut h = history();
    h[0].revision = Some(3);
    fails(&h, &[good_log(0)], 4, "saw this write at revision 2");
}

#[test]
fn a_write_applied_twice_is_caught() {
    // The write whose ack was lost, applied again at the next revision (a retry not
    // deduplicated).
    let mut twice = good_log(0);
    twice
        .deliveries
        .push(delivery(10, vec![seen(5, "b", Some("v2"))]));
    twice.reached = 6;
    fails(&history(), &[twice], 5, "applied twice");
}

#[test]
fn an_acknowledged_write_missing_from_the_stream_is_caught() {
    // Acknowledged at revision 2, inside the range the watcher delivered, yet not in it.
    let mut h = history();
    h.push(put(2, "c", "lost", 1, Some((3, 2))));
    let mut missing = good_log(0);
    missing.deliveries.pop();
    missing.reached = 4;
    fails(&h, &[missing], 3, "no watcher delivered it");
}

#[test]
fn half_a_txn_is_caught() {
    let mut h = history();
    // The txn's ack was lost; the watchers show only its write of `a`.
    h[1].ret = None;
    h[1].revision = None;
    h[2].ret = None;
    h[2].revision = None;
    let mut half = good_log(0);
    half.deliveries[1].events.pop();
    fails(
        &h,
        &[half],
        4,
        "one txn's writes were delivered at revisions",
    );
}

#[test]
fn a_later_write_at_a_lower_revision_is_caught() {
    // `v2` was called (6) after `t` was acknowledged (5), yet sits below it.
    let h = history();
    let swapped = log(
        0,
        vec![
            delivery(4, vec![seen(2, "a", Some("v1"))]),
            delivery(9, vec![seen(3, "b", Some("v2"))]),
            delivery(10, vec![seen(4, "a", Some("t")), seen(4, "b", Some("t"))]),
        ],
        5,
    );
    let mut h2 = h.clone();
    h2[1].revision = None;
    h2[2].revision = None;
    fails(&h2, &[swapped], 4, "before another was called");
}

#[test]
fn a_read_behind_a_delivered_revision_is_caught() {
    let mut h = history();
    h.push(Op {
        client: 3,
        key: b"a".to_vec(),
        kind: Kind::Get(Some(b"v1".to_vec())),
        call: 8,
        ret: Some(11),
        revision: Some(2),
        session: false,
        served: Some((2, 2)),
    });
    fails(&h, &[good_log(0)], 4, "had delivered revision 3");
}

#[test]
fn a_delete_event_needs_a_delete_call() {
    let mut h = history();
    let mut with_delete = good_log(0);
    with_delete
        .deliveries
        .push(delivery(12, vec![seen(5, "a", None)]));
    with_delete.reached = 6;
    fails(&h, &[with_delete.clone()], 5, "no delete of it was called");
    h.push(Op {
        client: 2,
        key: b"a".to_vec(),
        kind: Kind::Delete,
        call: 11,
        ret: None,
        revision: None,
        session: false,
        served: None,
    });
    check_watches(&h, &[with_delete], 5).unwrap();
}

#[test]
fn a_watcher_that_moves_on_without_delivering_the_last_revisions_is_caught() {
    let mut short = good_log(0);
    short.deliveries.pop();
    // Still claims to have gone past revision 4.
    fails(&history(), &[short], 4, "delivered only up to Some(3)");
}

#[test]
fn watchers_that_all_skip_the_first_revision_are_caught() {
    let mut late = good_log(0);
    late.deliveries.remove(0);
    fails(&history(), &[late], 4, "the first write makes revision 2");
}

#[test]
fn a_watcher_that_begins_later_than_the_others_is_caught() {
    let mut late = good_log(1);
    late.deliveries.remove(0);
    fails(
        &history(),
        &[good_log(0), late],
        4,
        "began at revision Some(3)",
    );
}

#[test]
fn a_write_delivered_before_it_was_called_is_caught() {
    let mut h = history();
    // The unknown write of `b = v2` called after a watcher had already delivered it.
    h[3].call = 10;
    fails(&h, &[good_log(0)], 4, "before its call");
}
