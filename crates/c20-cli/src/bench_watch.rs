//! `c20 bench-watch`: watch event throughput and put-to-event latency (against c20 or etcd).
//!
//! `--watchers` watches on one key, multiplexed over `--streams` streams spread round-robin over
//! the endpoints. Two phases:
//! - latency: puts at a steady `--rate` per second; each value carries its send time, and every
//!   watcher's event of it records put-to-event latency;
//! - throughput: `--puts` puts from `--clients` loops as fast as they go; events per second is
//!   every event delivered to every watcher over the time from the first put to the last event.

use crate::bench::channel;
use anyhow::{Context, Result};
use c20_api::etcdserverpb::kv_client::KvClient;
use c20_api::etcdserverpb::watch_client::WatchClient;
use c20_api::etcdserverpb::{watch_request, PutRequest, WatchCreateRequest, WatchRequest};
use c20_api::net::GrpcChannel;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(clap::Args, Debug)]
pub struct BenchWatchArgs {
    #[command(flatten)]
    ep: crate::client_cmds::Endpoints,
    /// Watchers, all on one key.
    #[arg(long, default_value_t = 1000)]
    watchers: u64,
    /// Watch streams the watchers are spread over.
    #[arg(long, default_value_t = 10)]
    streams: u64,
    /// Puts per second in the latency phase, for `--latency-secs`.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    #[arg(long, default_value_t = 5)]
    latency_secs: u64,
    /// Puts in the throughput phase.
    #[arg(long, default_value_t = 2000)]
    puts: u64,
    /// Concurrent put loops in the throughput phase.
    #[arg(long, default_value_t = 16)]
    clients: u64,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
}

const KEY: &[u8] = b"bench-watch";

/// What the stream readers share: events seen, latencies, and the time of the last event.
struct Sink {
    base: Instant,
    events: AtomicU64,
    latency_us: Mutex<Histogram<u64>>,
    last_event_us: AtomicU64,
}

pub async fn run(a: BenchWatchArgs) -> Result<()> {
    anyhow::ensure!(
        a.watchers >= 1 && a.streams >= 1,
        "need watchers and streams"
    );
    let sink = Arc::new(Sink {
        base: Instant::now(),
        events: AtomicU64::new(0),
        latency_us: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        last_event_us: AtomicU64::new(0),
    });
    // Open the watches and wait until every one is created.
    let mut readers = Vec::new();
    for s in 0..a.streams {
        let n = a.watchers / a.streams + u64::from(s < a.watchers % a.streams);
        if n == 0 {
            continue;
        }
        let endpoints = &a.ep.endpoints;
        let ch = channel(&endpoints[s as usize % endpoints.len()]).await?;
        let (tx, mut rx) = mpsc::channel(n as usize + 1);
        for _ in 0..n {
            tx.send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    WatchCreateRequest {
                        key: KEY.to_vec(),
                        ..Default::default()
                    },
                )),
            })
            .await
            .expect("queue sized for every create");
        }
        let requests = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut responses = WatchClient::new(ch)
            .max_decoding_message_size(64 << 20)
            .watch(requests)
            .await?
            .into_inner();
        let mut created = 0;
        while created < n {
            let r = responses.message().await?.context("watch stream ended")?;
            anyhow::ensure!(!r.canceled, "watch refused: {}", r.cancel_reason);
            created += u64::from(r.created);
        }
        let sink = sink.clone();
        readers.push(tokio::spawn(async move {
            let _keep_open = tx;
            while let Ok(Some(r)) = responses.message().await {
                let now = sink.base.elapsed().as_micros() as u64;
                let mut h = sink.latency_us.lock().expect("histogram lock");
                for e in &r.events {
                    let sent =
                        e.kv.as_ref()
                            .and_then(|kv| std::str::from_utf8(&kv.value).ok())
                            .and_then(|v| v.split(':').nth(1))
                            .and_then(|t| t.parse::<u64>().ok());
                    if let Some(sent) = sent {
                        let _ = h.record(now.saturating_sub(sent).max(1));
                    }
                }
                drop(h);
                sink.events
                    .fetch_add(r.events.len() as u64, Ordering::Relaxed);
                sink.last_event_us.fetch_max(now, Ordering::Relaxed);
            }
        }));
    }
    let kv_channel = channel(&a.ep.endpoints[0]).await?;
    let put = |kv: &mut KvClient<GrpcChannel>, phase: &str| {
        let value = format!("{phase}:{}", sink.base.elapsed().as_micros());
        let mut kv = kv.clone();
        async move {
            kv.put(PutRequest {
                key: KEY.to_vec(),
                value: value.into_bytes(),
                ..Default::default()
            })
            .await
        }
    };

    // Latency phase: a steady rate.
    let mut kv = KvClient::new(kv_channel.clone());
    let lat_puts = a.rate * a.latency_secs;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / a.rate.max(1)));
    for _ in 0..lat_puts {
        tick.tick().await;
        put(&mut kv, "l").await?;
    }
    wait_events(&sink, lat_puts * a.watchers).await?;
    let latency = sink.latency_us.lock().expect("histogram lock").clone();

    // Throughput phase: as fast as the put loops go.
    let before = sink.events.load(Ordering::Relaxed);
    let start_us = sink.base.elapsed().as_micros() as u64;
    let next = Arc::new(AtomicU64::new(0));
    let loops: Vec<_> = (0..a.clients)
        .map(|_| {
            let next = next.clone();
            let kv = KvClient::new(kv_channel.clone());
            let sink = sink.clone();
            let total = a.puts;
            tokio::spawn(async move {
                let mut kv = kv;
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let value = format!("t:{}", sink.base.elapsed().as_micros());
                    kv.put(PutRequest {
                        key: KEY.to_vec(),
                        value: value.into_bytes(),
                        ..Default::default()
                    })
                    .await?;
                }
                Ok::<(), tonic::Status>(())
            })
        })
        .collect();
    for l in loops {
        l.await??;
    }
    wait_events(&sink, before + a.puts * a.watchers).await?;
    let delivered = sink.events.load(Ordering::Relaxed) - before;
    let secs = (sink.last_event_us.load(Ordering::Relaxed) - start_us) as f64 / 1e6;
    let events_per_s = delivered as f64 / secs;
    for r in readers {
        r.abort();
    }
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1e3;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "watchers": a.watchers, "streams": a.streams, "rate": a.rate,
                "latency_puts": lat_puts, "latency_p50_ms": ms(0.5), "latency_p99_ms": ms(0.99),
                "latency_max_ms": latency.max() as f64 / 1e3,
                "throughput_puts": a.puts, "events": delivered, "events_per_s": events_per_s.round(),
            })
        );
    } else {
        println!(
            "{} watchers on {} streams\nlatency put->event at {}/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\nthroughput: {} puts -> {} events in {:.2} s = {:.0} events/s",
            a.watchers, a.streams, a.rate, ms(0.5), ms(0.99), latency.max() as f64 / 1e3,
            a.puts, delivered, secs, events_per_s
        );
    }
    Ok(())
}

/// Waits (bounded) until `n` events have arrived in total.
async fn wait_events(sink: &Sink, n: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while sink.events.load(Ordering::Relaxed) < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {n} events arrived",
            sink.events.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}
