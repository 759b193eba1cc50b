//! A single in-process member for the service tests of this crate.
#![allow(dead_code)]

use c20_client::Client;
use c20_server::{Server, ServerConfig};
use std::time::{Duration, Instant};

pub struct Member {
    pub _dir: tempfile::TempDir,
    pub server: Server,
    pub client: Client,
    /// `http://127.0.0.1:PORT` of its client API.
    pub endpoint: String,
}

/// Starts one member on ports of its own (configured by `tune`) and waits until it leads.
pub async fn member(tune: impl FnOnce(&mut ServerConfig)) -> Member {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::single(
        "solo",
        dir.path().join("solo"),
        "http://127.0.0.1:0",
        "http://127.0.0.1:0",
    );
    tune(&mut cfg);
    let server = Server::start(cfg).await.unwrap();
    let endpoint = format!("http://{}", server.client_addrs()[0]);
    let mut client = Client::connect(&[&endpoint]).await.unwrap();
    // A linearizable read succeeds once the member leads.
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get("warmup").await.is_err() {
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Member {
        _dir: dir,
        server,
        client,
        endpoint,
    }
}
