//! A user-space TCP proxy in front of a member's peer port, so that tests can cut a member off
//! from its peers (tc/netem is not available on these machines).
//!
//! Every member reaches member `i` through `i`'s proxy. Blocking that proxy drops the open
//! connections and refuses new ones: nothing reaches `i` from its peers, while `i` can still
//! call them through their proxies (an asymmetric partition, the kind that trips leases and
//! pre-vote). Blocking every proxy but one's isolates it completely from the others' point of
//! view in both directions.
//!
//! A proxy can also degrade its link instead: every chunk it relays waits a random delay, and
//! with a set probability a chunk ends its connection instead of passing (over TCP a lost
//! message is a broken connection: gRPC reconnects and Raft resends).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How a degraded link treats each chunk it relays.
#[derive(Default)]
struct Degrade {
    /// Most milliseconds a chunk waits (0: none).
    delay_ms_max: AtomicU64,
    /// Chance per million that a chunk breaks its connection instead.
    loss_per_million: AtomicU64,
    /// xorshift state for both draws.
    rng: AtomicU64,
    /// Connections broken by a lost chunk so far.
    lost: AtomicU64,
}

impl Degrade {
    fn draw(&self, n: u64) -> u64 {
        let mut x = self.rng.load(Ordering::Relaxed) | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// Copies `from` to `to` chunk by chunk under `d` until either side closes or a chunk is lost.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    d: Arc<Degrade>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let loss = d.loss_per_million.load(Ordering::Relaxed);
        if loss > 0 && d.draw(1_000_000) < loss {
            d.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let delay = d.delay_ms_max.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(d.draw(delay + 1))).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

pub struct PeerProxy {
    pub port: u16,
    blocked: Arc<AtomicBool>,
    degrade: Arc<Degrade>,
    /// Bumped on every block: open connections end when it changes.
    cut: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl PeerProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `target`. Call inside a Tokio runtime.
    pub async fn start(target: SocketAddr) -> PeerProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let blocked = Arc::new(AtomicBool::new(false));
        let degrade = Arc::new(Degrade::default());
        let (cut, _) = watch::channel(0u64);
        let (b, c, deg) = (blocked.clone(), cut.clone(), degrade.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if b.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut_rx = c.subscribe();
                let d = deg.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (in_r, in_w) = inbound.into_split();
                    let (out_r, out_w) = outbound.into_split();
                    // Either direction ending (closed, or a chunk lost) ends the connection.
                    tokio::select! {
                        _ = pump(in_r, out_w, d.clone()) => {}
                        _ = pump(out_r, in_w, d) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        PeerProxy {
            port,
            blocked,
            degrade,
            cut,
            task,
        }
    }

    /// From now on (open connections too) every relayed chunk waits up to `delay_ms_max`, and
    /// breaks its connection instead with probability `loss`; `seed` fixes the draws.
    pub fn degrade(&self, delay_ms_max: u64, loss: f64, seed: u64) {
        self.degrade.rng.store(seed | 1, Ordering::Relaxed);
        self.degrade
            .delay_ms_max
            .store(delay_ms_max, Ordering::Relaxed);
        self.degrade
            .loss_per_million
            .store((loss * 1e6) as u64, Ordering::Relaxed);
    }

    /// Connections this proxy broke by losing a chunk.
    pub fn lost_chunks(&self) -> u64 {
        self.degrade.lost.load(Ordering::Relaxed)
    }

    /// Back to a clean link.
    pub fn restore(&self) {
        self.degrade(0, 0.0, 1);
    }

    /// Drops every open connection and refuses new ones until [`PeerProxy::heal`].
    pub fn block(&self) {
        self.blocked.store(true, Ordering::SeqCst);
        self.cut.send_modify(|g| *g += 1);
    }

    pub fn heal(&self) {
        self.blocked.store(false, Ordering::SeqCst);
    }

    pub fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::SeqCst)
    }
}

impl Drop for PeerProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut.send_modify(|g| *g += 1);
    }
}
