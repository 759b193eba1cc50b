//! A user-space TCP proxy in front of a member's peer port, so that tests can cut a member off
//! from its peers (tc/netem is not available on these machines).
//!
//! Every member reaches member `i` through `i`'s proxy. Blocking that proxy drops the open
//! connections and refuses new ones: nothing reaches `i` from its peers, while `i` can still
//! call them through their proxies (an asymmetric partition, the kind that trips leases and
//! pre-vote). Blocking every proxy but one's isolates it completely from the others' point of
//! view in both directions.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct PeerProxy {
    pub port: u16,
    blocked: Arc<AtomicBool>,
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
        let (cut, _) = watch::channel(0u64);
        let (b, c) = (blocked.clone(), cut.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if b.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut_rx = c.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    tokio::select! {
                        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        PeerProxy {
            port,
            blocked,
            cut,
            task,
        }
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
