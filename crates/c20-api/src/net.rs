//! gRPC connections that send many small calls and replies in few system calls and round trips.
//!
//! - [`Coalesce`]: a socket that sends what several tasks wrote in one system call. An HTTP/2
//!   connection task flushes as soon as one reply is ready. When a Raft commit completes many
//!   requests at once, their handler tasks each hand over a reply and each wakes the connection
//!   task, which then runs between them and writes every reply with a `writev` of its own: one
//!   system call (and one loopback delivery) per reply. [`Coalesce`] holds the first flush back
//!   for one turn of the scheduler: the connection task goes to the back of the run queue, the
//!   other replies join the buffer, and the next flush sends them together. Nothing waits on a
//!   timer; a lone reply is sent one scheduler turn later.
//! - [`GrpcChannel`]: a channel whose unary requests end with their message. A tonic server
//!   starts a unary call only once the request stream has ended, and a tonic client learns that
//!   its one-message stream has ended only by asking for the next message, after the message has
//!   gone out: the end follows as an empty frame of its own, later, from another task. Here the
//!   body looks one message ahead, so the message leaves marked as the last.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::Frame;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::codegen::http::{self, Uri};
use tonic::codegen::{Body, Service};
use tonic::transport::Channel;

/// Above this many buffered bytes a write first drains the buffer into the socket.
const HIGH_WATER: usize = 256 * 1024;

/// `inner` with its writes gathered and sent at the second consecutive flush (see the module).
#[derive(Debug)]
pub struct Coalesce<S> {
    inner: S,
    buf: Vec<u8>,
    /// Bytes of `buf` already sent.
    sent: usize,
    /// The current flush has yielded once already.
    yielded: bool,
    stats: CoalesceStats,
}

/// What a [`Coalesce`] did, to show that it gathers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CoalesceStats {
    /// Writes handed to this socket.
    pub writes: u64,
    /// Writes it made to the socket beneath.
    pub sends: u64,
}

impl<S> Coalesce<S> {
    pub fn new(inner: S) -> Self {
        Coalesce {
            inner,
            buf: Vec::new(),
            sent: 0,
            yielded: false,
            stats: CoalesceStats::default(),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn stats(&self) -> CoalesceStats {
        self.stats
    }
}

impl<S: AsyncWrite + Unpin> Coalesce<S> {
    /// Writes the buffer into `inner` until it is empty or `inner` would block.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.stats.sends += 1;
            self.sent += n;
        }
        self.buf.clear();
        if self.buf.capacity() > 2 * HIGH_WATER {
            // One large message (a snapshot chunk) must not pin its size for the connection's life.
            self.buf = Vec::new();
        }
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Makes room for more bytes: drains first when the buffer is full.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buf.len() >= HIGH_WATER {
            std::task::ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_room(cx))?;
        self.stats.writes += 1;
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_room(cx))?;
        self.stats.writes += 1;
        let mut n = 0;
        for b in bufs {
            self.buf.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.sent == self.buf.len() {
            return Pin::new(&mut self.inner).poll_flush(cx);
        }
        if !self.yielded {
            // Let the tasks already woken add their bytes first.
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        std::task::ready!(self.poll_drain(cx))?;
        self.yielded = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Coalesce<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// A failed or timed-out TCP connect: nothing was sent. Callers tell it from failures after the
/// connection was made by its type, anywhere in an error's source chain.
#[derive(Debug, thiserror::Error)]
#[error("tcp connect error: {0}")]
pub struct ConnectError(#[source] pub io::Error);

/// Connects a gRPC channel to `http://host:port` over TCP within a timeout, with Nagle's
/// algorithm off and the writes of the channel's calls gathered by [`Coalesce`]. For
/// `tonic::transport::Endpoint::connect_with_connector`; the timeout is the connector's own (not
/// the endpoint's), so that a connect that timed out is a [`ConnectError`] like a refused one.
#[derive(Debug, Clone, Copy)]
pub struct CoalescingConnector {
    timeout: std::time::Duration,
}

impl CoalescingConnector {
    pub fn new(connect_timeout: std::time::Duration) -> Self {
        CoalescingConnector {
            timeout: connect_timeout,
        }
    }
}

/// Is `err`, or any error in its source chain, a [`ConnectError`]?
pub fn is_connect_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<ConnectError>() {
            return true;
        }
        next = e.source();
    }
    false
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<Coalesce<TcpStream>>, ConnectError>> + Send>>;

impl tonic::codegen::Service<Uri> for CoalescingConnector {
    type Response = TokioIo<Coalesce<TcpStream>>;
    type Error = ConnectError;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let timeout = self.timeout;
        Box::pin(async move {
            let host = uri.host().unwrap_or_default();
            // An IPv6 literal comes bracketed.
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host)
                .to_string();
            let default_port = if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            };
            let port = uri.port_u16().unwrap_or(default_port);
            let stream = tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port)))
                .await
                .map_err(|_| ConnectError(io::ErrorKind::TimedOut.into()))?
                .map_err(ConnectError)?;
            stream.set_nodelay(true).map_err(ConnectError)?;
            Ok(TokioIo::new(Coalesce::new(stream)))
        })
    }
}

/// A channel (see the module) whose request bodies report their end with their last message.
#[derive(Debug, Clone)]
pub struct GrpcChannel(Channel);

impl GrpcChannel {
    pub fn new(channel: Channel) -> Self {
        GrpcChannel(channel)
    }
}

impl Service<http::Request<tonic::body::Body>> for GrpcChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = tonic::transport::channel::ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        self.0
            .call(request.map(|body| tonic::body::Body::new(EagerEnd::new(body))))
    }
}

/// A body that, having produced a frame, asks at once for the next one: if the body has ended
/// it says so with this frame ([`Body::is_end_stream`]); a frame already there is kept for the
/// next call; a stream still waiting for its next message is simply polled again later.
#[derive(Debug)]
pub struct EagerEnd<B: Body> {
    inner: B,
    next: Option<Result<Frame<B::Data>, B::Error>>,
    ended: bool,
}

impl<B: Body> EagerEnd<B> {
    pub fn new(inner: B) -> Self {
        EagerEnd {
            inner,
            next: None,
            ended: false,
        }
    }
}

impl<B: Body + Unpin> Body for EagerEnd<B>
where
    B::Data: Unpin,
    B::Error: Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = match this.next.take() {
            Some(frame) => frame,
            None if this.ended => return Poll::Ready(None),
            None => match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(frame) => frame,
                None => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
            },
        };
        // After an error the stream is over; nothing more is read from it.
        if !this.ended && frame.is_ok() {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(next)) => this.next = Some(next),
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => {}
            }
        }
        Poll::Ready(Some(frame))
    }

    fn is_end_stream(&self) -> bool {
        self.next.is_none() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn writes_before_a_flush_leave_in_one_send_in_order() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut sock = Coalesce::new(near);
        sock.write_all(b"one ").await.unwrap();
        sock.write_all(b"two ").await.unwrap();
        sock.write_all(b"three").await.unwrap();
        assert_eq!(sock.stats().sends, 0, "nothing leaves before a flush");
        sock.flush().await.unwrap();
        assert_eq!(
            sock.stats(),
            CoalesceStats {
                writes: 3,
                sends: 1
            }
        );
        let mut got = vec![0; 13];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one two three");
    }

    #[test]
    fn the_first_flush_yields_once_and_wakes_its_task() {
        let (near, _far) = tokio::io::duplex(1 << 20);
        let mut sock = Coalesce::new(near);
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut sock = Pin::new(&mut sock);
        assert!(sock.as_mut().poll_write(&mut cx, b"a").is_ready());
        assert!(sock.as_mut().poll_flush(&mut cx).is_pending());
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "the yield must reschedule the task"
        );
        // Another task's reply joins before the second flush, which sends both.
        assert!(sock.as_mut().poll_write(&mut cx, b"b").is_ready());
        assert!(matches!(
            sock.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(sock.stats().sends, 1);
        // With nothing buffered a flush does not yield.
        assert!(matches!(
            sock.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_full_buffer_waits_for_the_socket_and_loses_nothing() {
        // The socket beneath takes 4 KiB at a time; the writer writes far past the high water.
        let (near, mut far) = tokio::io::duplex(4096);
        let total = 3 * HIGH_WATER + 123;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut sock = Coalesce::new(near);
        let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(1000) {
            sock.write_all(chunk).await.unwrap();
            assert!(sock.buf.len() <= HIGH_WATER + 1000, "the buffer is bounded");
        }
        sock.shutdown().await.unwrap();
        drop(sock);
        assert_eq!(reader.await.unwrap(), data);
    }

    #[tokio::test]
    async fn the_connector_reports_a_refused_connection_as_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let uri: Uri = format!("http://{addr}").parse().unwrap();
        let mut connector = CoalescingConnector::new(std::time::Duration::from_secs(5));
        let err = tonic::codegen::Service::call(&mut connector, uri)
            .await
            .expect_err("nothing listens there");
        assert_eq!(err.0.kind(), io::ErrorKind::ConnectionRefused);
        #[derive(Debug, thiserror::Error)]
        #[error("transport error")]
        struct Transport(#[source] ConnectError);
        assert!(
            is_connect_error(&Transport(err)),
            "found through the source chain"
        );
        assert!(!is_connect_error(&io::Error::other("connection reset")));
    }

    #[tokio::test]
    async fn the_connector_reaches_an_ipv4_and_a_bracketed_ipv6_literal() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = tokio::net::TcpListener::bind(bind).await else {
                continue; // no IPv6 loopback on this machine
            };
            let addr = listener.local_addr().unwrap();
            let uri: Uri = format!("http://{addr}").parse().unwrap();
            let (conn, accepted) = tokio::join!(
                tonic::codegen::Service::call(
                    &mut CoalescingConnector::new(std::time::Duration::from_secs(5)),
                    uri
                ),
                listener.accept()
            );
            let conn = conn.unwrap();
            assert!(
                conn.inner().get_ref().nodelay().unwrap(),
                "Nagle must be off"
            );
            assert_eq!(
                accepted.unwrap().0.peer_addr().unwrap(),
                conn.inner().get_ref().local_addr().unwrap()
            );
        }
    }

    /// A body like tonic's request body: it learns that it has ended only when asked for a
    /// frame after its last one. `None` in `script` is a moment with nothing ready (Pending).
    struct Scripted {
        script: std::collections::VecDeque<Option<&'static str>>,
    }

    impl Body for Scripted {
        type Data = tonic::codegen::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            match self.script.pop_front() {
                None => Poll::Ready(None),
                Some(Some(data)) => Poll::Ready(Some(Ok(Frame::data(data.into())))),
                Some(None) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            }
        }
    }

    fn scripted(script: &[Option<&'static str>]) -> EagerEnd<Scripted> {
        EagerEnd::new(Scripted {
            script: script.iter().copied().collect(),
        })
    }

    fn poll(body: &mut EagerEnd<Scripted>) -> Poll<Option<String>> {
        let waker = Waker::from(Arc::new(CountWakes(AtomicUsize::new(0))));
        let mut cx = Context::from_waker(&waker);
        Pin::new(body).poll_frame(&mut cx).map(|f| {
            f.map(|f| String::from_utf8(f.unwrap().into_data().unwrap().to_vec()).unwrap())
        })
    }

    #[test]
    fn a_one_message_body_reports_its_end_with_the_message() {
        let mut body = scripted(&[Some("request")]);
        assert!(!body.is_end_stream());
        assert_eq!(poll(&mut body), Poll::Ready(Some("request".into())));
        assert!(
            body.is_end_stream(),
            "the message must leave marked as the last"
        );
        assert_eq!(poll(&mut body), Poll::Ready(None));
    }

    #[test]
    fn a_stream_keeps_every_message_in_order_and_waits_when_nothing_is_ready() {
        let mut body = scripted(&[Some("a"), Some("b"), None, Some("c"), None, None, Some("d")]);
        assert_eq!(poll(&mut body), Poll::Ready(Some("a".into())));
        assert!(
            !body.is_end_stream(),
            "b was read ahead and is still to come"
        );
        assert_eq!(poll(&mut body), Poll::Ready(Some("b".into())));
        assert!(!body.is_end_stream());
        assert_eq!(poll(&mut body), Poll::Ready(Some("c".into())));
        assert_eq!(poll(&mut body), Poll::Pending);
        assert!(!body.is_end_stream());
        assert_eq!(poll(&mut body), Poll::Ready(Some("d".into())));
        assert!(body.is_end_stream());
        assert_eq!(poll(&mut body), Poll::Ready(None));
    }
}
