//! `c20 watch` and `c20 lease`, printing what etcdctl prints.

use crate::client_cmds::{fail, key_range, parse_lease_id, print_kv, Endpoints};
use anyhow::Result;
use c20_api::etcdserverpb::WatchCreateRequest;
use c20_api::mvccpb::event::EventType;

#[derive(clap::Args)]
pub struct WatchArgs {
    key: String,
    /// Every key with KEY as prefix.
    #[arg(long)]
    prefix: bool,
    /// Start at this revision (replaying history from it).
    #[arg(long, default_value_t = 0)]
    rev: i64,
    /// Print each event's previous key-value.
    #[arg(long)]
    prev_kv: bool,
    /// Ask for progress notifications while idle.
    #[arg(long)]
    progress_notify: bool,
    #[command(flatten)]
    ep: Endpoints,
}

/// Prints events as they come until the watch ends (or the process is interrupted).
pub async fn watch(a: WatchArgs) -> Result<()> {
    let mut c = a.ep.connect().await?;
    let (key, range_end) = key_range(a.key, a.prefix);
    let mut w = c
        .watch(WatchCreateRequest {
            key,
            range_end,
            start_revision: a.rev,
            prev_kv: a.prev_kv,
            progress_notify: a.progress_notify,
            ..Default::default()
        })
        .await
        .map_err(fail)?;
    while let Some(r) = w.next().await.map_err(fail)? {
        if r.compact_revision != 0 {
            anyhow::bail!(
                "watch was canceled (etcdserver: mvcc: required revision has been compacted; \
                 compacted at {})",
                r.compact_revision
            );
        }
        if r.canceled {
            anyhow::bail!("watch was canceled ({})", r.cancel_reason);
        }
        if r.events.is_empty() {
            println!("progress notify: {}", r.header.map_or(0, |h| h.revision));
            continue;
        }
        for e in r.events {
            let kind = if e.r#type == EventType::Delete as i32 {
                "DELETE"
            } else {
                "PUT"
            };
            println!("{kind}");
            if let Some(prev) = &e.prev_kv {
                print_kv(prev);
            }
            if let Some(kv) = &e.kv {
                print_kv(kv);
            }
        }
    }
    anyhow::bail!("watch is canceled by the server")
}

#[derive(clap::Args)]
pub struct LeaseArgs {
    #[command(subcommand)]
    cmd: LeaseCmd,
    #[command(flatten)]
    ep: Endpoints,
}

#[derive(clap::Subcommand)]
enum LeaseCmd {
    /// Grant a lease of TTL seconds.
    Grant { ttl: i64 },
    /// Revoke a lease (its keys are deleted).
    Revoke {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
    },
    /// Show a lease's granted and remaining TTL.
    Timetolive {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Also list the keys attached.
        #[arg(long)]
        keys: bool,
    },
    /// Keep a lease alive (until interrupted, or once).
    KeepAlive {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        #[arg(long)]
        once: bool,
    },
    /// List every lease.
    List,
}

pub async fn lease(a: LeaseArgs) -> Result<()> {
    let mut c = a.ep.connect().await?;
    match a.cmd {
        LeaseCmd::Grant { ttl } => {
            let r = c.lease_grant(ttl, 0).await.map_err(fail)?;
            println!("lease {:016x} granted with TTL({}s)", r.id, r.ttl);
        }
        LeaseCmd::Revoke { id } => {
            c.lease_revoke(id).await.map_err(fail)?;
            println!("lease {id:016x} revoked");
        }
        LeaseCmd::Timetolive { id, keys } => {
            let r = c.lease_time_to_live(id, keys).await.map_err(fail)?;
            if r.granted_ttl == 0 && r.ttl == -1 {
                println!("lease {id:016x} already expired");
                return Ok(());
            }
            let mut line = format!(
                "lease {id:016x} granted with TTL({}s), remaining({}s)",
                r.granted_ttl, r.ttl
            );
            if keys {
                let names: Vec<String> = r
                    .keys
                    .iter()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .collect();
                line.push_str(&format!(", attached keys([{}])", names.join(" ")));
            }
            println!("{line}");
        }
        LeaseCmd::KeepAlive { id, once } => loop {
            let r = c.lease_keep_alive_once(id).await.map_err(fail)?;
            if r.ttl <= 0 && once {
                anyhow::bail!("etcdserver: requested lease not found");
            }
            if r.ttl <= 0 {
                anyhow::bail!("lease {id:016x} expired or revoked.");
            }
            println!("lease {id:016x} keepalived with TTL({})", r.ttl);
            if once {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_secs((r.ttl as u64 / 3).max(1))).await;
        },
        LeaseCmd::List => {
            let r = c.lease_leases().await.map_err(fail)?;
            println!("found {} leases", r.leases.len());
            for l in r.leases {
                println!("{:016x}", l.id);
            }
        }
    }
    Ok(())
}
