//! Node-to-node transport: openraft RPCs over c20's gRPC peer service.
//!
//! Each peer gets one lazily connected HTTP/2 channel that reconnects by itself. Payloads are
//! postcard-encoded openraft messages inside a protobuf envelope with a format byte.

use crate::node::RaftNode;
use crate::snapshot_transfer::{self, SendError, SnapshotAnswer, SnapshotMsg, CHUNK_BYTES};
use crate::transport::{LocalRouter, Transport};
use crate::types::{NodeId, PeerNode, Snapshot, TypeConfig, Vote};
use c20_api::c20peer::peer_client::PeerClient;
use c20_api::c20peer::{RaftKind, RaftRequest};
use c20_api::net::GrpcChannel;
use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{
    Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{stream_append_sequential, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::OptionalSend;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Endpoint;

/// The payload format byte: postcard.
pub const FORMAT_POSTCARD: u32 = 0;
/// The payload format byte: postcard, then an lz4 block behind the uncompressed length (u32,
/// little-endian).
pub const FORMAT_POSTCARD_LZ4: u32 = 1;

/// Compression of peer request payloads (appends carry the client's keys and values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCompression {
    /// Payloads at least this long are lz4-compressed; 0 turns compression off.
    pub min_bytes: usize,
}

/// Peer requests this process sent compressed, and their bytes before and after.
static COMPRESSED: [std::sync::atomic::AtomicU64; 3] =
    [const { std::sync::atomic::AtomicU64::new(0) }; 3];

/// (requests, bytes before, bytes after) of the peer requests this process sent compressed.
pub fn compressed_requests() -> (u64, u64, u64) {
    let get = |i: usize| COMPRESSED[i].load(std::sync::atomic::Ordering::Relaxed);
    (get(0), get(1), get(2))
}

impl PeerCompression {
    pub const OFF: PeerCompression = PeerCompression { min_bytes: 0 };

    /// Wraps a postcard payload: compressed when it is long enough and compression shrinks it.
    pub fn encode(self, raw: Vec<u8>) -> (u32, Vec<u8>) {
        if self.min_bytes == 0 || raw.len() < self.min_bytes || raw.len() > u32::MAX as usize {
            return (FORMAT_POSTCARD, raw);
        }
        let mut out = vec![0; 4 + lz4_flex::block::get_maximum_output_size(raw.len())];
        out[..4].copy_from_slice(&(raw.len() as u32).to_le_bytes());
        match lz4_flex::block::compress_into(&raw, &mut out[4..]) {
            Ok(n) if 4 + n < raw.len() => {
                out.truncate(4 + n);
                for (i, v) in [1, raw.len(), out.len()].into_iter().enumerate() {
                    COMPRESSED[i].fetch_add(v as u64, std::sync::atomic::Ordering::Relaxed);
                }
                (FORMAT_POSTCARD_LZ4, out)
            }
            _ => (FORMAT_POSTCARD, raw),
        }
    }
}

/// The postcard bytes of a peer payload in `format`; refuses unknown formats, damaged lz4 and
/// lengths above [`PEER_MESSAGE_BYTES_MAX`].
pub fn decode_payload(format: u32, payload: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    match format {
        FORMAT_POSTCARD => Ok(std::borrow::Cow::Borrowed(payload)),
        FORMAT_POSTCARD_LZ4 => {
            let (len, block) = payload
                .split_first_chunk::<4>()
                .ok_or("lz4 payload shorter than its length prefix")?;
            let len = u32::from_le_bytes(*len) as usize;
            if len > PEER_MESSAGE_BYTES_MAX {
                return Err(format!(
                    "lz4 payload claims {len} bytes, above the {PEER_MESSAGE_BYTES_MAX} limit"
                ));
            }
            // lz4 expands at most about 255 times: a tiny request must not make this member
            // allocate a gigabyte it announces.
            if len > block.len().saturating_mul(255).saturating_add(16) {
                return Err(format!(
                    "lz4 payload claims {len} bytes from a {}-byte block",
                    block.len()
                ));
            }
            let mut out = vec![0; len];
            let n = lz4_flex::block::decompress_into(block, &mut out)
                .map_err(|e| format!("damaged lz4 payload: {e}"))?;
            if n != len {
                return Err(format!("lz4 payload of {n} bytes, {len} announced"));
            }
            Ok(std::borrow::Cow::Owned(out))
        }
        other => Err(format!("unknown payload format {other}")),
    }
}

/// Largest message between peers (snapshots travel in chunks of `CHUNK_BYTES`, far below).
pub const PEER_MESSAGE_BYTES_MAX: usize = 1 << 30;

/// The longest one message of a snapshot transfer may take (the last one installs it).
const SNAPSHOT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// The least time an append that carries entries may take before it counts as lost.
const APPEND_WITH_ENTRIES_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to a peer's URL (`http://host:port`), lazily.
pub fn peer_channel(url: &str) -> Result<GrpcChannel, String> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("bad peer url {url:?}: {e}"))?
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    Ok(GrpcChannel::new(endpoint.connect_with_connector_lazy(
        c20_api::net::CoalescingConnector::new(Duration::from_millis(500)),
    )))
}

pub fn peer_client(url: &str) -> Result<PeerClient<GrpcChannel>, String> {
    Ok(PeerClient::new(peer_channel(url)?)
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX))
}

pub struct Network {
    pub(crate) from: NodeId,
    pub(crate) transport: Transport,
    pub(crate) compression: PeerCompression,
    pub(crate) append_window: usize,
}

/// Default of the most log appends in flight to one follower on its append stream.
pub const DEFAULT_APPEND_WINDOW: usize = 16;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> Self::Network {
        match &self.transport {
            Transport::Grpc => {
                let url = node.peer_urls.first().cloned().unwrap_or_default();
                PeerConnection::Grpc(GrpcConnection {
                    target,
                    client: peer_client(&url),
                    compression: self.compression,
                    append_window: self.append_window,
                    no_append_stream: false,
                })
            }
            Transport::Local(router) => PeerConnection::Local(LocalConnection {
                from: self.from,
                target,
                router: router.clone(),
            }),
        }
    }
}

/// One member's link to one peer.
pub enum PeerConnection {
    Grpc(GrpcConnection),
    Local(LocalConnection),
}

pub struct GrpcConnection {
    target: NodeId,
    client: Result<PeerClient<GrpcChannel>, String>,
    compression: PeerCompression,
    /// Most appends in flight on one append stream; 0: one unary call per append, each
    /// waiting for the answer to the one before.
    append_window: usize,
    /// The peer answered that it does not serve append streams (an older c20): appends to it
    /// go as calls of their own from then on.
    no_append_stream: bool,
}

/// A direct in-process link, subject to the router's cuts in both directions: a request that
/// went through but whose answer is cut counts as a lost reply.
pub struct LocalConnection {
    from: NodeId,
    target: NodeId,
    router: Arc<LocalRouter>,
}

impl LocalConnection {
    async fn call<T, E, F, Fut>(&self, timeout: Duration, f: F) -> Result<T, RPCError<TypeConfig>>
    where
        E: std::error::Error + 'static,
        F: FnOnce(Arc<RaftNode>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let (delay, request_lost, reply_lost) = self.router.fate();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if request_lost {
            return Err(RPCError::Network(NetworkError::from_string(format!(
                "message to {:x} lost",
                self.target
            ))));
        }
        let node = self
            .router
            .route(self.from, self.target)
            .map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))?;
        let res = match tokio::time::timeout(timeout, f(node)).await {
            Err(_) => {
                return Err(RPCError::Network(NetworkError::from_string(format!(
                    "call to {:x} timed out after {timeout:?}",
                    self.target
                ))))
            }
            Ok(r) => r,
        };
        if reply_lost || !self.router.can_reach(self.target, self.from) {
            return Err(RPCError::Network(NetworkError::from_string(format!(
                "reply from {:x} lost",
                self.target
            ))));
        }
        res.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }
}

impl GrpcConnection {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        kind: RaftKind,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => return Err(RPCError::Unreachable(Unreachable::from_string(e.clone()))),
        };
        grpc_call(client, self.target, kind, req, timeout, self.compression).await
    }
}

/// A peer request of `kind` carrying `req`, postcard-encoded and compressed as configured.
fn raft_request<Req: Serialize>(
    kind: RaftKind,
    req: &Req,
    compression: PeerCompression,
) -> Result<RaftRequest, postcard::Error> {
    let (format, payload) = compression.encode(postcard::to_allocvec(req)?);
    Ok(RaftRequest {
        kind: kind as i32,
        format,
        payload,
    })
}

/// One peer RPC of `kind` to `target`, its payload and answer postcard-encoded.
async fn grpc_call<Req: Serialize, Resp: DeserializeOwned>(
    mut client: PeerClient<GrpcChannel>,
    target: NodeId,
    kind: RaftKind,
    req: &Req,
    timeout: Duration,
    compression: PeerCompression,
) -> Result<Resp, RPCError<TypeConfig>> {
    let request = raft_request(kind, req, compression)
        .map_err(|e| RPCError::Network(NetworkError::from_string(e.to_string())))?;
    let reply = match tokio::time::timeout(timeout, client.raft(request)).await {
        Err(_) => {
            return Err(RPCError::Network(NetworkError::from_string(format!(
                "{kind:?} to {target:x} timed out after {timeout:?}"
            ))))
        }
        Ok(Err(status)) => {
            return Err(RPCError::Unreachable(Unreachable::from_string(format!(
                "{kind:?} to {target:x}: {status}"
            ))))
        }
        Ok(Ok(r)) => r.into_inner(),
    };
    postcard::from_bytes(&reply.payload)
        .map_err(|e| RPCError::Network(NetworkError::from_string(e.to_string())))
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = Vec<u8>;

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<AppendReplies<'s>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        let streamed =
            matches!(self, PeerConnection::Grpc(c) if c.append_window > 0 && !c.no_append_stream);
        if !streamed {
            return stream_append_sequential(self, input, option);
        }
        match self {
            PeerConnection::Grpc(c) => {
                let client = c.client.clone();
                let (target, compression, window) = (c.target, c.compression, c.append_window);
                let no_append_stream = &mut c.no_append_stream;
                Box::pin(async move {
                    let client =
                        client.map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))?;
                    let opened =
                        open_append_stream(client, target, compression, window, input, option)
                            .await;
                    if let Err(OpenError::Unimplemented(e)) = &opened {
                        tracing::warn!(
                            peer = %format!("{target:x}"),
                            error = %e,
                            "peer serves no append streams; sending appends one call each"
                        );
                        *no_append_stream = true;
                    }
                    opened.map_err(RPCError::from)
                })
            }
            PeerConnection::Local(_) => unreachable!("local links are never streamed"),
        }
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let timeout = append_timeout(&rpc, &option);
        match self {
            PeerConnection::Grpc(c) => c.append_entries(rpc, timeout).await,
            PeerConnection::Local(c) => {
                c.call(
                    timeout,
                    |n| async move { n.raft().append_entries(rpc).await },
                )
                .await
            }
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self {
            PeerConnection::Grpc(c) => c.vote(rpc, option).await,
            PeerConnection::Local(c) => {
                c.call(
                    option.soft_ttl(),
                    |n| async move { n.raft().vote(rpc).await },
                )
                .await
            }
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self {
            PeerConnection::Grpc(c) => {
                let r: Result<TransferLeaderResponse<TypeConfig>, Fatal<TypeConfig>> = c
                    .call(RaftKind::TransferLeader, &req, option.soft_ttl())
                    .await?;
                r.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
            }
            PeerConnection::Local(c) => {
                c.call(option.soft_ttl(), |n| async move {
                    n.raft().handle_transfer_leader(req).await
                })
                .await
            }
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let meta = snapshot.meta;
        let full = snapshot.snapshot;
        let choose = Box::new(move |revision, compact_revision| {
            crate::state_machine::ship_for(full, revision, compact_revision)
        });
        match self {
            PeerConnection::Grpc(c) => {
                let client = c
                    .client
                    .clone()
                    .map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e)))?;
                let target = c.target;
                let call = |msg: SnapshotMsg| {
                    let client = client.clone();
                    async move {
                        grpc_call(
                            client,
                            target,
                            RaftKind::Snapshot,
                            &msg,
                            SNAPSHOT_MESSAGE_TIMEOUT,
                            // Snapshot chunks are zstd-compressed already.
                            PeerCompression::OFF,
                        )
                        .await
                    }
                };
                transfer_snapshot(call, vote, meta, choose, cancel).await
            }
            PeerConnection::Local(c) => {
                let call = |msg: SnapshotMsg| {
                    c.call(SNAPSHOT_MESSAGE_TIMEOUT, move |n| async move {
                        Ok::<_, std::convert::Infallible>(n.receive_snapshot(msg).await)
                    })
                };
                transfer_snapshot(call, vote, meta, choose, cancel).await
            }
        }
    }
}

/// Runs one snapshot transfer over `call` (one message, one answer) until the receiver
/// installed the snapshot, the transfer failed, or replication closed.
async fn transfer_snapshot<F, Fut>(
    call: F,
    vote: Vote,
    meta: crate::types::SnapshotMeta,
    choose: Box<snapshot_transfer::Choose<'_>>,
    cancel: impl Future<Output = ReplicationClosed>,
) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>>
where
    F: FnMut(SnapshotMsg) -> Fut,
    Fut: Future<Output = Result<SnapshotAnswer, RPCError<TypeConfig>>>,
{
    let send = snapshot_transfer::send(call, next_transfer_id(), vote, meta, choose, CHUNK_BYTES);
    let sent = tokio::select! {
        // In argument order: a seeded, single-threaded run must choose the same way.
        biased;
        r = send => r,
        closed = cancel => return Err(StreamingError::Closed(closed)),
    };
    match sent {
        Ok((SnapshotAnswer::Installed(Ok(resp)), _)) => Ok(resp),
        Ok((SnapshotAnswer::Installed(Err(fatal)), _)) => {
            Err(StreamingError::Unreachable(Unreachable::new(&fatal)))
        }
        Ok((other, _)) => Err(StreamingError::Network(NetworkError::from_string(format!(
            "snapshot transfer ended with {other:?}"
        )))),
        Err(SendError::Link(e)) => Err(e.into()),
        Err(SendError::Refused(why)) => {
            Err(StreamingError::Network(NetworkError::from_string(why)))
        }
    }
}

/// A transfer id unique enough to tell a receiver's current transfer from an older one.
fn next_transfer_id() -> u64 {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// openraft sizes the append deadline for heartbeats; entries (up to 1.5 MiB requests,
/// batched) need longer than one heartbeat interval on a busy or slow machine.
fn append_timeout(rpc: &AppendEntriesRequest<TypeConfig>, option: &RPCOption) -> Duration {
    if rpc.entries.is_empty() {
        option.soft_ttl()
    } else {
        option.soft_ttl().max(APPEND_WITH_ENTRIES_TIMEOUT)
    }
}

/// What a stream of appends yields: per request, the follower's answer, in request order.
type AppendReplies<'s> =
    BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>;

/// Why an append stream did not open.
enum OpenError {
    /// The peer does not serve append streams.
    Unimplemented(String),
    Other(RPCError<TypeConfig>),
}

impl From<OpenError> for RPCError<TypeConfig> {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Unimplemented(e) => RPCError::Unreachable(Unreachable::from_string(e)),
            OpenError::Other(e) => e,
        }
    }
}

/// Held by a session's replies: dropping it ends the session's outbound side and closes its
/// window, so nothing waits on either afterwards.
struct SessionEnd {
    _end: tokio::sync::oneshot::Sender<()>,
    room: Arc<tokio::sync::Semaphore>,
}

impl Drop for SessionEnd {
    fn drop(&mut self) {
        self.room.close();
    }
}

/// Appends to one follower over one gRPC stream: each request leaves as soon as openraft makes
/// it, while up to `window` earlier ones await their answers (a unary call per append would wait
/// for each answer, and pay for a new HTTP/2 stream and its headers every time). The follower
/// feeds the stream to its Raft in order and answers in order. An answer overdue by the append
/// deadline ends the stream with an error; openraft then opens a new one.
async fn open_append_stream<S>(
    mut client: PeerClient<GrpcChannel>,
    target: NodeId,
    compression: PeerCompression,
    window: usize,
    input: S,
    option: RPCOption,
) -> Result<AppendReplies<'static>, OpenError>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
{
    // The first append is taken before connecting, as a call per append would: openraft waits
    // out its backoff inside that step, so a follower that is down is not redialled in a tight
    // loop (which on loopback can even connect a socket to itself on the follower's port).
    let mut input = input;
    let Some(first) = input.next().await else {
        return Ok(Box::pin(futures::stream::empty()));
    };
    let input = futures::stream::iter([first]).chain(input);
    let room = Arc::new(tokio::sync::Semaphore::new(window));
    // Deadlines of the requests sent and not yet answered, oldest first.
    let due = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    // The session's end: when the replies are dropped (or the stream never opens), the
    // outbound side stops taking openraft's requests at once. hyper's task would otherwise
    // keep pulling them into a stream nobody reads, holding openraft's request state.
    let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
    let session = SessionEnd {
        _end: end_tx,
        room: room.clone(),
    };
    let outbound = futures::stream::unfold(
        (input, room.clone(), due.clone(), option.clone(), end_rx),
        move |(mut input, room, due, option, mut end)| async move {
            // Taken before the next request is made, so that what openraft adds meanwhile
            // leaves together in it.
            let permit = tokio::select! {
                biased;
                _ = &mut end => return None,
                p = room.acquire() => p.ok()?,
            };
            permit.forget();
            let rpc = tokio::select! {
                biased;
                _ = &mut end => return None,
                r = input.next() => r?,
            };
            let req = match raft_request(RaftKind::Append, &rpc, compression) {
                Ok(req) => req,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode an append; ending the stream");
                    return None;
                }
            };
            due.lock()
                .expect("append deadlines lock")
                .push_back(tokio::time::Instant::now() + append_timeout(&rpc, &option));
            Some((req, (input, room, due, option, end)))
        },
    );
    // Opening takes a round trip (the follower answers with headers at once); allow what an
    // append with entries gets.
    let open_timeout = option.soft_ttl().max(APPEND_WITH_ENTRIES_TIMEOUT);
    let opened = tokio::time::timeout(open_timeout, client.append_stream(outbound)).await;
    let inbound = match opened {
        Err(_) => {
            return Err(OpenError::Other(RPCError::Network(
                NetworkError::from_string(format!(
                    "opening the append stream to {target:x} timed out"
                )),
            )))
        }
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
            return Err(OpenError::Unimplemented(status.to_string()))
        }
        Ok(Err(status)) => {
            return Err(OpenError::Other(RPCError::Unreachable(
                Unreachable::from_string(format!("append stream to {target:x}: {status}")),
            )))
        }
        Ok(Ok(r)) => r.into_inner(),
    };
    let check_every = option.soft_ttl();
    let replies = futures::stream::unfold(Some((inbound, session, due)), move |state| async move {
        let (mut inbound, session, due) = state?;
        let msg = loop {
            match tokio::time::timeout(check_every, inbound.message()).await {
                Ok(msg) => break msg,
                Err(_) => {
                    let oldest = due.lock().expect("append deadlines lock").front().copied();
                    if oldest.is_some_and(|d| d <= tokio::time::Instant::now()) {
                        let e = NetworkError::from_string(format!(
                            "append to {target:x} unanswered past its deadline"
                        ));
                        return Some((Err(RPCError::Network(e)), None));
                    }
                }
            }
        };
        let reply = match msg {
            Ok(Some(reply)) => reply,
            Ok(None) => return None,
            Err(status) => {
                let e = Unreachable::from_string(format!("append stream to {target:x}: {status}"));
                return Some((Err(RPCError::Unreachable(e)), None));
            }
        };
        due.lock().expect("append deadlines lock").pop_front();
        session.room.add_permits(1);
        let answer: Result<StreamAppendResult<TypeConfig>, String> =
            match postcard::from_bytes(&reply.payload) {
                Ok(a) => a,
                Err(e) => {
                    let e = NetworkError::from_string(format!("undecodable append answer: {e}"));
                    return Some((Err(RPCError::Network(e)), None));
                }
            };
        match answer {
            Ok(res) => Some((Ok(res), Some((inbound, session, due)))),
            Err(stopped) => {
                let e = Unreachable::from_string(format!("{target:x} stopped: {stopped}"));
                Some((Err(RPCError::Unreachable(e)), None))
            }
        }
    });
    Ok(Box::pin(replies))
}

impl GrpcConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        timeout: Duration,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let r: Result<AppendEntriesResponse<TypeConfig>, RaftError<TypeConfig>> =
            self.call(RaftKind::Append, &rpc, timeout).await?;
        r.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let r: Result<VoteResponse<TypeConfig>, RaftError<TypeConfig>> =
            self.call(RaftKind::Vote, &rpc, option.soft_ttl()).await?;
        r.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compressible(n: usize) -> Vec<u8> {
        (0..n).map(|i| b"key-value-"[i % 10]).collect()
    }

    #[test]
    fn long_compressible_payloads_travel_as_lz4_and_come_back_whole() {
        let raw = compressible(8192);
        let (format, wire) = PeerCompression { min_bytes: 4096 }.encode(raw.clone());
        assert_eq!(format, FORMAT_POSTCARD_LZ4);
        assert!(wire.len() < raw.len() / 4, "{} bytes", wire.len());
        assert_eq!(&*decode_payload(format, &wire).unwrap(), raw.as_slice());
    }

    #[test]
    fn short_incompressible_or_switched_off_payloads_travel_as_they_are() {
        let short = compressible(100);
        assert_eq!(
            PeerCompression { min_bytes: 4096 }.encode(short.clone()),
            (FORMAT_POSTCARD, short.clone())
        );
        let long = compressible(8192);
        assert_eq!(PeerCompression::OFF.encode(long.clone()).0, FORMAT_POSTCARD);
        // Bytes with no repetition do not shrink: sent plain rather than larger.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(
            PeerCompression { min_bytes: 1 }.encode(noise.clone()),
            (FORMAT_POSTCARD, noise)
        );
    }

    #[test]
    fn damaged_oversized_and_unknown_payloads_are_refused() {
        let (_, mut wire) = PeerCompression { min_bytes: 1 }.encode(compressible(8192));
        let cut = decode_payload(FORMAT_POSTCARD_LZ4, &wire[..wire.len() - 3]).unwrap_err();
        assert!(cut.contains("damaged lz4 payload"), "{cut}");
        wire[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let huge = decode_payload(FORMAT_POSTCARD_LZ4, &wire).unwrap_err();
        assert!(huge.contains("above the"), "{huge}");
        // Within the message limit, but far more than the block could expand to.
        let mut tiny = (1u32 << 29).to_le_bytes().to_vec();
        tiny.push(0);
        let bomb = decode_payload(FORMAT_POSTCARD_LZ4, &tiny).unwrap_err();
        assert!(bomb.contains("from a 1-byte block"), "{bomb}");
        wire[..4].copy_from_slice(&9000u32.to_le_bytes());
        let short = decode_payload(FORMAT_POSTCARD_LZ4, &wire).unwrap_err();
        assert!(short.contains("8192 bytes, 9000 announced"), "{short}");
        assert!(decode_payload(FORMAT_POSTCARD_LZ4, &[1, 2]).is_err());
        let unknown = decode_payload(7, b"x").unwrap_err();
        assert_eq!(unknown, "unknown payload format 7");
    }
}
