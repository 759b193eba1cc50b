//! Writes proposed on a follower, handed to the leader.
//!
//! A follower's writes queue for their leader; one task per leader takes what has queued up
//! (up to [`FORWARD_BATCH_MAX`]) as one batch and sends it on a long-lived
//! `c20peer.Peer/ForwardStream` call, several batches in flight. The leader proposes each batch
//! as it arrives and answers it, tagged with the batch's id, as soon as its writes are applied,
//! in whatever order they finish. A call of its own per batch (`Forward`) paid for a new
//! HTTP/2 stream and its headers on both sides, and went through the channel's buffer task.
//!
//! What becomes of a write is never guessed: a batch whose stream could not connect was never
//! sent ([`Forwarded::NotSent`], safe to send again); one sent on a stream that then broke,
//! ended, or stayed unanswered past the request timeout may have been proposed
//! ([`Forwarded::Lost`]). A leader without the stream (an older c20) answers `Unimplemented`
//! before it reads anything: the batches sent on it go again as calls of their own, and so
//! does everything after.

use crate::types::{Command, Reply};
use c20_api::c20peer::peer_client::PeerClient;
use c20_api::c20peer::{ForwardReply, ForwardRequest};
use c20_api::net::GrpcChannel;
use c20_api::EtcdError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::Status;

/// Most writes forwarded to the leader in one batch.
pub(crate) const FORWARD_BATCH_MAX: usize = 256;

/// Most batches of one stream the leader works on at once; further ones wait in the stream.
pub(crate) const FORWARD_STREAM_BATCHES: usize = 256;

/// What became of a write handed to the leader.
#[derive(Clone)]
pub(crate) enum Forwarded {
    /// It never left this node: nothing was proposed.
    NotSent,
    /// It may have reached the leader, but no answer came back: outcome unknown.
    Lost,
    /// The leader's answer.
    Answered(Result<(Reply, u64), EtcdError>),
}

/// Batches of forwarded writes a node received, counted to show how they came.
#[derive(Debug, Default)]
pub(crate) struct ForwardedIn {
    /// On `ForwardStream` calls.
    pub(crate) on_streams: AtomicU64,
    /// As `Forward` calls of their own.
    pub(crate) as_calls: AtomicU64,
}

/// Where a write waits for its outcome.
pub(crate) type Done = oneshot::Sender<Forwarded>;

/// Queue of writes waiting to be forwarded to one leader.
pub(crate) type ForwardQueue = mpsc::UnboundedSender<(Command, Done)>;

/// The outcomes of a batch, as the leader encodes them.
type Outcomes = Vec<Result<(Reply, u64), EtcdError>>;

/// Starts the task that forwards writes queued for the leader behind `client`; a batch
/// unanswered for `timeout` counts as lost. The task ends when the queue's senders are gone.
pub(crate) fn spawn(client: PeerClient<GrpcChannel>, timeout: Duration) -> ForwardQueue {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Command, Done)>();
    tokio::spawn(async move {
        let unary = Arc::new(AtomicBool::new(false));
        let mut session: Option<Session> = None;
        while let Some(first) = rx.recv().await {
            crate::batcher::let_woken_senders_queue().await;
            let batch =
                crate::batcher::take_queued(&mut rx, first, FORWARD_BATCH_MAX, usize::MAX, |_| 0);
            let (cmds, dones): (Vec<Command>, Vec<Done>) = batch.into_iter().unzip();
            let body = match postcard::to_allocvec(&cmds) {
                Ok(body) => body,
                Err(e) => {
                    answer_all(dones, Forwarded::Answered(Err(internal(e))));
                    continue;
                }
            };
            let mut sent = Sent::Not(body, dones);
            while let Sent::Not(body, dones) = sent {
                if unary.load(Ordering::Acquire) {
                    tokio::spawn(call_unary(client.clone(), body, dones, timeout));
                    break;
                }
                let open = match session.take() {
                    Some(s) if !s.is_closed() => s,
                    _ => Session::open(client.clone(), timeout, unary.clone()),
                };
                sent = open.send(body, dones);
                session = Some(open);
            }
        }
    });
    tx
}

/// A batch handed to a session, or handed back because the session had ended (nothing sent).
enum Sent {
    Yes,
    Not(Vec<u8>, Vec<Done>),
}

/// One `ForwardStream` call and the batches sent on it that await their answers.
struct Session {
    out: mpsc::UnboundedSender<ForwardRequest>,
    state: Arc<Mutex<SessionState>>,
}

#[derive(Default)]
struct SessionState {
    /// Set when the call ended: nothing more may be sent on it.
    closed: bool,
    /// Set when the leader accepted the call: batches need no copy kept for a resend.
    opened: bool,
    next_id: u64,
    pending: HashMap<u64, Pending>,
}

struct Pending {
    /// Kept until the call opens, to send it again as a call of its own if the leader has no
    /// stream (empty after).
    body: Vec<u8>,
    dones: Vec<Done>,
    sent_at: Instant,
}

impl Session {
    /// Opens a call to the leader behind `client`; a task reads its answers.
    fn open(client: PeerClient<GrpcChannel>, timeout: Duration, unary: Arc<AtomicBool>) -> Session {
        let (out, out_rx) = mpsc::unbounded_channel();
        let state = Arc::new(Mutex::new(SessionState::default()));
        tokio::spawn(run(client, out_rx, state.clone(), timeout, unary));
        Session { out, state }
    }

    fn is_closed(&self) -> bool {
        self.state.lock().expect("forward session lock").closed
    }

    /// Sends a batch on the call, or hands it back if the call has ended.
    fn send(&self, body: Vec<u8>, dones: Vec<Done>) -> Sent {
        let mut st = self.state.lock().expect("forward session lock");
        if st.closed {
            return Sent::Not(body, dones);
        }
        st.next_id += 1;
        let id = st.next_id;
        let keep = if st.opened { Vec::new() } else { body.clone() };
        let req = ForwardRequest { command: body, id };
        if let Err(mpsc::error::SendError(req)) = self.out.send(req) {
            // The call dropped its request stream (it failed or was reset, and its task is
            // about to close the session) or its task is gone: this batch was never queued.
            st.closed = true;
            return Sent::Not(req.command, dones);
        }
        st.pending.insert(
            id,
            Pending {
                body: keep,
                dones,
                sent_at: Instant::now(),
            },
        );
        Sent::Yes
    }
}

/// Runs one `ForwardStream` call: sends what the session queues, hands each answer to its
/// batch, and settles every unanswered batch when the call ends.
async fn run(
    mut client: PeerClient<GrpcChannel>,
    out_rx: mpsc::UnboundedReceiver<ForwardRequest>,
    state: Arc<Mutex<SessionState>>,
    timeout: Duration,
    unary: Arc<AtomicBool>,
) {
    let outbound = futures::stream::unfold(out_rx, |mut rx| async move {
        rx.recv().await.map(|req| (req, rx))
    });
    let opened = tokio::time::timeout(timeout, client.forward_stream(outbound)).await;
    let mut inbound = match opened {
        Ok(Ok(resp)) => {
            let mut st = state.lock().expect("forward session lock");
            st.opened = true;
            for p in st.pending.values_mut() {
                p.body = Vec::new();
            }
            resp.into_inner()
        }
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
            // An older leader: it read none of the batches. They go again, one call each.
            unary.store(true, Ordering::Release);
            for p in close(&state) {
                tokio::spawn(call_unary(client.clone(), p.body, p.dones, timeout));
            }
            return;
        }
        Ok(Err(status)) if crate::node::is_connect_error(&status) => {
            settle(close(&state), Forwarded::NotSent);
            return;
        }
        Ok(Err(status)) => {
            tracing::debug!(%status, "forward stream to the leader failed");
            settle(close(&state), Forwarded::Lost);
            return;
        }
        Err(_) => {
            settle(close(&state), Forwarded::Lost);
            return;
        }
    };
    loop {
        let msg = match tokio::time::timeout(timeout, inbound.message()).await {
            Ok(Ok(Some(msg))) => msg,
            Ok(Ok(None)) => break,
            Ok(Err(status)) => {
                tracing::debug!(%status, "forward stream to the leader ended");
                break;
            }
            Err(_) => {
                // Quiet for a whole timeout: an idle session ends (the next batch opens a new
                // one, to whoever leads then); a batch waiting that long is lost.
                let mut st = state.lock().expect("forward session lock");
                if st.pending.is_empty() {
                    st.closed = true;
                    return;
                }
                if st.pending.values().any(|p| p.sent_at.elapsed() >= timeout) {
                    break;
                }
                continue;
            }
        };
        let Some(p) = state
            .lock()
            .expect("forward session lock")
            .pending
            .remove(&msg.id)
        else {
            tracing::warn!(id = msg.id, "leader answered a forwarded batch never sent");
            break;
        };
        answer(p.dones, &msg);
    }
    settle(close(&state), Forwarded::Lost);
}

/// Marks the session closed and takes its unanswered batches.
fn close(state: &Mutex<SessionState>) -> Vec<Pending> {
    let mut st = state.lock().expect("forward session lock");
    st.closed = true;
    st.pending.drain().map(|(_, p)| p).collect()
}

fn settle(pending: Vec<Pending>, outcome: Forwarded) {
    for p in pending {
        answer_all(p.dones, outcome.clone());
    }
}

fn answer_all(dones: Vec<Done>, outcome: Forwarded) {
    for done in dones {
        let _ = done.send(outcome.clone());
    }
}

/// Hands each write of a batch its outcome from the leader's answer.
fn answer(dones: Vec<Done>, reply: &ForwardReply) {
    match postcard::from_bytes::<Outcomes>(&reply.result) {
        Ok(results) if results.len() == dones.len() => {
            for (r, done) in results.into_iter().zip(dones) {
                let _ = done.send(Forwarded::Answered(r));
            }
        }
        // An answer that does not fit the batch: what the leader did is unknown.
        Ok(_) => answer_all(dones, Forwarded::Lost),
        Err(e) => answer_all(dones, Forwarded::Answered(Err(internal(e)))),
    }
}

/// Forwards one batch as a `Forward` call of its own.
async fn call_unary(
    mut client: PeerClient<GrpcChannel>,
    body: Vec<u8>,
    dones: Vec<Done>,
    timeout: Duration,
) {
    let req = ForwardRequest {
        command: body,
        id: 0,
    };
    match tokio::time::timeout(timeout, client.forward(req)).await {
        Err(_) => answer_all(dones, Forwarded::Lost),
        Ok(Err(status)) if crate::node::is_connect_error(&status) => {
            answer_all(dones, Forwarded::NotSent)
        }
        Ok(Err(_)) => answer_all(dones, Forwarded::Lost),
        Ok(Ok(reply)) => answer(dones, &reply.into_inner()),
    }
}

fn internal(e: impl std::fmt::Display) -> EtcdError {
    EtcdError::Internal(e.to_string())
}

/// The leader's side: answers each batch of a `ForwardStream` call as its writes are applied.
pub(crate) fn serve(
    node: Arc<crate::RaftNode>,
    inbound: tonic::Streaming<ForwardRequest>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> ForwardReplyStream {
    use futures::StreamExt;
    let mut stop_in = stop;
    // Batches in arrival order; a broken connection or the server's stop ends them. The
    // answers go on until every batch taken is answered: those writes are proposed, and each
    // is bounded by the request timeout.
    let batches = futures::stream::unfold(inbound, |mut inbound| async move {
        match inbound.message().await {
            Ok(Some(req)) => Some((req, inbound)),
            Ok(None) => None,
            Err(status) => {
                tracing::debug!(%status, "forward stream from a follower ended");
                None
            }
        }
    })
    .take_until(async move {
        let _ = stop_in.wait_for(|s| *s).await;
    });
    let replies = batches
        .map(move |req| {
            let node = node.clone();
            node.forwarded_in.on_streams.fetch_add(1, Ordering::Relaxed);
            async move {
                let Ok(cmds) = postcard::from_bytes(&req.command) else {
                    // Nothing proposed. An empty answer does not decode as the batch's
                    // outcomes, so the follower fails that batch alone.
                    tracing::warn!(id = req.id, "undecodable batch on a forward stream");
                    return Ok(ForwardReply {
                        result: Vec::new(),
                        id: req.id,
                    });
                };
                let results = node.propose_forwarded(cmds).await;
                let result =
                    postcard::to_allocvec(&results).map_err(|e| Status::internal(e.to_string()))?;
                Ok(ForwardReply { result, id: req.id })
            }
        })
        .buffer_unordered(FORWARD_STREAM_BATCHES);
    Box::pin(replies)
}

/// Answers of a forward stream, one per batch, in the order they are ready.
pub(crate) type ForwardReplyStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<ForwardReply, Status>> + Send + 'static>>;
