//! The etcd Watch service.
//!
//! Each stream has one task that owns its watchers. A watcher is only a position: the next
//! revision it has to deliver. When the store's revision moves, or the client has room for more,
//! the task reads the watcher's events from the store (`MvccStore::watch_events`) and sends
//! them. Nothing is pushed into per-watcher buffers, so a watcher whose client reads slowly
//! simply falls behind and later catches up from the store's history (etcd's unsynced
//! watchers); what a stream holds in memory is bounded by its send queue
//! ([`SEND_QUEUE_RESPONSES`] responses of at most [`EVENTS_PER_RESPONSE`] events, or one
//! revision, each).
//!
//! The guarantees etcd documents hold by construction: events are read in revision order
//! (ordered), each position only moves forward (unique), a watcher skips no revision it
//! watches (reliable), a revision is never split across responses unless the client asked for
//! fragments (atomic), and a watch can start at any revision not compacted away (resumable),
//! with progress notifications carrying the revision reached (bookmarkable).

use crate::Shared;
use c20_api::etcdserverpb::watch_create_request::FilterType;
use c20_api::etcdserverpb::watch_server::Watch;
use c20_api::etcdserverpb::{
    watch_request, ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse,
};
use c20_api::mvccpb::event::EventType;
use c20_api::{GRPC_OVERHEAD_BYTES, MAX_REQUEST_BYTES};
use futures::Stream;
use prost::Message;
use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

/// Responses a stream may have queued for its client before it stops reading events.
pub const SEND_QUEUE_RESPONSES: usize = 16;
/// Most events in one response (more only when one revision holds more).
pub const EVENTS_PER_RESPONSE: usize = 1000;
/// A response of this size or more is split when the watcher asked for fragments (etcd's limit).
const FRAGMENT_BYTES: usize = MAX_REQUEST_BYTES + GRPC_OVERHEAD_BYTES;

const ERR_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
const ERR_COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

/// What the watch streams of one member hold, for operators and tests.
#[derive(Debug, Default)]
pub struct WatchMetrics {
    /// Encoded bytes of responses queued for clients and not yet taken by the transport.
    pub queued_bytes: AtomicI64,
    /// The most `queued_bytes` ever reached.
    pub queued_bytes_peak: AtomicI64,
    /// Watchers open now.
    pub watchers: AtomicI64,
    /// Events sent to clients.
    pub events_sent: AtomicI64,
}

impl WatchMetrics {
    fn queued(&self, bytes: i64) {
        let now = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.queued_bytes_peak.fetch_max(now, Ordering::Relaxed);
    }
}

pub struct WatchService {
    pub(crate) shared: Arc<Shared>,
    /// Turns true when the server stops; every stream then ends.
    pub(crate) stop: watch::Receiver<bool>,
    /// How often watchers that asked for it get a progress notification.
    pub(crate) progress_interval: Duration,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let (tx, rx) = mpsc::channel(SEND_QUEUE_RESPONSES);
        let metrics = self.shared.watch_metrics.clone();
        let task = StreamTask {
            shared: self.shared.clone(),
            watchers: BTreeMap::new(),
            next_auto_id: 0,
            control: VecDeque::new(),
            progress_requested: false,
            last_served: None,
        };
        let io = StreamIo {
            inbound: request.into_inner(),
            tx,
            revision: self.shared.node.state().subscribe_revision(),
            stop: self.stop.clone(),
        };
        tokio::spawn(task.run(io, self.progress_interval));
        Ok(Response::new(Box::pin(Outbound { rx, metrics })))
    }
}

/// The response side of a stream; counts what leaves the queue.
struct Outbound {
    rx: mpsc::Receiver<(WatchResponse, i64)>,
    metrics: Arc<WatchMetrics>,
}

impl Stream for Outbound {
    type Item = Result<WatchResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some((resp, bytes))) => {
                self.metrics.queued(-bytes);
                Poll::Ready(Some(Ok(resp)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        // Whatever is still queued is freed with the queue.
        self.rx.close();
        while let Ok((_, bytes)) = self.rx.try_recv() {
            self.metrics.queued(-bytes);
        }
    }
}

struct Watcher {
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// The next revision to deliver.
    next_rev: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    fragment: bool,
    /// Whether events went out since the last progress tick.
    sent_since_tick: bool,
}

struct StreamTask {
    shared: Arc<Shared>,
    watchers: BTreeMap<i64, Watcher>,
    next_auto_id: i64,
    /// Responses to send before any more events (created, canceled, progress, fragments).
    control: VecDeque<WatchResponse>,
    /// A progress request waits until every watcher has caught up.
    progress_requested: bool,
    /// The watcher served last, so that catch-up goes round the watchers.
    last_served: Option<i64>,
}

/// What a stream task waits on.
struct StreamIo {
    inbound: Streaming<WatchRequest>,
    tx: mpsc::Sender<(WatchResponse, i64)>,
    /// The store's revision.
    revision: watch::Receiver<i64>,
    /// The server's stop signal.
    stop: watch::Receiver<bool>,
}

impl StreamTask {
    async fn run(mut self, mut io: StreamIo, progress_interval: Duration) {
        let mut ticker = tokio::time::interval(progress_interval);
        ticker.tick().await;
        loop {
            let current = *io.revision.borrow_and_update();
            self.answer_progress_request(current);
            let work =
                !self.control.is_empty() || self.watchers.values().any(|w| w.next_rev <= current);
            tokio::select! {
                biased;
                _ = io.stop.wait_for(|s| *s) => break,
                msg = io.inbound.message() => match msg {
                    Ok(Some(req)) => self.handle(req, current),
                    Ok(None) | Err(_) => break,
                },
                permit = io.tx.reserve(), if work => {
                    let Ok(permit) = permit else { break };
                    if let Some(resp) = self.next_response(current) {
                        let bytes = resp.encoded_len() as i64;
                        self.shared.watch_metrics.queued(bytes);
                        permit.send((resp, bytes));
                    }
                }
                changed = io.revision.changed() => if changed.is_err() { break },
                _ = ticker.tick() => self.progress_tick(current),
            }
        }
        self.shared
            .watch_metrics
            .watchers
            .fetch_sub(self.watchers.len() as i64, Ordering::Relaxed);
    }

    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        let mut h = Some(ResponseHeader {
            revision,
            ..Default::default()
        });
        self.shared.fill_header(&mut h);
        h
    }

    fn handle(&mut self, req: WatchRequest, current: i64) {
        match req.request_union {
            Some(watch_request::RequestUnion::CreateRequest(c)) => self.create(c, current),
            // Canceling an id that does not exist is ignored, as etcd does.
            Some(watch_request::RequestUnion::CancelRequest(c))
                if self.watchers.remove(&c.watch_id).is_some() =>
            {
                self.shared
                    .watch_metrics
                    .watchers
                    .fetch_sub(1, Ordering::Relaxed);
                self.control.push_back(WatchResponse {
                    header: self.header(current),
                    watch_id: c.watch_id,
                    canceled: true,
                    ..Default::default()
                });
            }
            Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                self.progress_requested = true;
            }
            Some(watch_request::RequestUnion::CancelRequest(_)) | None => {}
        }
    }

    fn create(&mut self, c: WatchCreateRequest, current: i64) {
        let key = if c.key.is_empty() { vec![0] } else { c.key };
        let failure = if !c.range_end.is_empty() && c.range_end != [0] && key >= c.range_end {
            Some(ERR_EMPTY_RANGE)
        } else if c.start_revision < 0 {
            Some(ERR_COMPACTED)
        } else if c.watch_id != 0 && self.watchers.contains_key(&c.watch_id) {
            Some(ERR_DUPLICATE_ID)
        } else {
            None
        };
        if let Some(reason) = failure {
            self.control.push_back(WatchResponse {
                header: self.header(current),
                watch_id: -1,
                created: true,
                canceled: true,
                cancel_reason: reason.into(),
                ..Default::default()
            });
            return;
        }
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_auto_id) {
                self.next_auto_id += 1;
            }
            self.next_auto_id
        };
        let filters: Vec<FilterType> = c
            .filters
            .iter()
            .filter_map(|f| FilterType::try_from(*f).ok())
            .collect();
        self.watchers.insert(
            id,
            Watcher {
                key,
                range_end: c.range_end,
                next_rev: if c.start_revision == 0 {
                    current + 1
                } else {
                    c.start_revision
                },
                prev_kv: c.prev_kv,
                no_put: filters.contains(&FilterType::Noput),
                no_delete: filters.contains(&FilterType::Nodelete),
                progress_notify: c.progress_notify,
                fragment: c.fragment,
                sent_since_tick: false,
            },
        );
        self.shared
            .watch_metrics
            .watchers
            .fetch_add(1, Ordering::Relaxed);
        self.control.push_back(WatchResponse {
            header: self.header(current),
            watch_id: id,
            created: true,
            ..Default::default()
        });
    }

    /// The next response to send: a queued control response, else the next events of a
    /// watcher that is behind (going round them). `None` when reading found nothing to send.
    fn next_response(&mut self, current: i64) -> Option<WatchResponse> {
        if let Some(r) = self.control.pop_front() {
            return Some(r);
        }
        let after = self.last_served.map_or(i64::MIN, |id| id.saturating_add(1));
        let id = self
            .watchers
            .range(after..)
            .chain(self.watchers.range(..after))
            .find(|(_, w)| w.next_rev <= current)
            .map(|(id, _)| *id)?;
        self.last_served = Some(id);
        let w = &self.watchers[&id];
        let read = self.shared.node.state().read(|s| {
            s.watch_events(
                &w.key,
                &w.range_end,
                w.next_rev,
                w.prev_kv,
                EVENTS_PER_RESPONSE,
            )
        });
        let batch = match read {
            Ok(batch) => batch,
            Err(compact_revision) => {
                // The history this watcher needs is gone: tell it where compaction reached and
                // end it (etcd's response carries no header revision).
                self.watchers.remove(&id);
                self.shared
                    .watch_metrics
                    .watchers
                    .fetch_sub(1, Ordering::Relaxed);
                return Some(WatchResponse {
                    header: self.header(0),
                    watch_id: id,
                    compact_revision,
                    canceled: true,
                    ..Default::default()
                });
            }
        };
        let w = self.watchers.get_mut(&id).expect("watcher just read");
        w.next_rev = batch.next_rev;
        let (no_put, no_delete, fragment) = (w.no_put, w.no_delete, w.fragment);
        let events: Vec<_> = batch
            .events
            .into_iter()
            .filter(|e| {
                let put = e.r#type == EventType::Put as i32;
                !(put && no_put || !put && no_delete)
            })
            .collect();
        if events.is_empty() {
            return None;
        }
        w.sent_since_tick = true;
        self.shared
            .watch_metrics
            .events_sent
            .fetch_add(events.len() as i64, Ordering::Relaxed);
        let resp = WatchResponse {
            header: self.header(batch.next_rev - 1),
            watch_id: id,
            events,
            ..Default::default()
        };
        if !fragment || resp.encoded_len() < FRAGMENT_BYTES || resp.events.len() < 2 {
            return Some(resp);
        }
        let mut pieces = split(resp);
        let first = pieces.remove(0);
        for p in pieces.into_iter().rev() {
            self.control.push_front(p);
        }
        Some(first)
    }

    /// Sends the answer to a progress request once every watcher has caught up.
    fn answer_progress_request(&mut self, current: i64) {
        if !self.progress_requested || self.watchers.values().any(|w| w.next_rev <= current) {
            return;
        }
        self.progress_requested = false;
        self.control.push_back(WatchResponse {
            header: self.header(current),
            watch_id: -1,
            ..Default::default()
        });
    }

    /// A progress notification to each watcher that asked for them, is caught up, and had no
    /// events since the last tick.
    fn progress_tick(&mut self, current: i64) {
        let mut due = Vec::new();
        for (id, w) in self.watchers.iter_mut() {
            if w.progress_notify && !w.sent_since_tick && w.next_rev == current + 1 {
                due.push(*id);
            }
            w.sent_since_tick = false;
        }
        for id in due {
            self.control.push_back(WatchResponse {
                header: self.header(current),
                watch_id: id,
                ..Default::default()
            });
        }
    }
}

/// Splits a response into pieces under the fragment size, each with at least one event; every
/// piece but the last is marked as a fragment.
fn split(resp: WatchResponse) -> Vec<WatchResponse> {
    let base = WatchResponse {
        events: Vec::new(),
        ..resp.clone()
    };
    let mut pieces = Vec::new();
    let mut cur = base.clone();
    for e in resp.events {
        if !cur.events.is_empty() && cur.encoded_len() + e.encoded_len() + 8 >= FRAGMENT_BYTES {
            cur.fragment = true;
            pieces.push(std::mem::replace(&mut cur, base.clone()));
        }
        cur.events.push(e);
    }
    pieces.push(cur);
    pieces
}
