//! Client subcommands: put, get, del, txn, status, members.

use crate::txn_parse;
use anyhow::{Context, Result};
use c20_api::etcdserverpb::{response_op, DeleteRangeRequest, PutRequest, RangeRequest};
use c20_api::mvccpb::KeyValue;
use c20_client::{prefix_end, Client};
use std::io::Read;

#[derive(clap::Args, Debug)]
pub struct Endpoints {
    /// Comma-separated client endpoints.
    #[arg(
        long,
        env = "C20_ENDPOINTS",
        default_value = "127.0.0.1:2379",
        value_delimiter = ',',
        global = true
    )]
    pub(crate) endpoints: Vec<String>,
}

impl Endpoints {
    pub(crate) async fn connect(&self) -> Result<Client> {
        let eps: Vec<&str> = self.endpoints.iter().map(String::as_str).collect();
        Client::connect(&eps)
            .await
            .map_err(|e| anyhow::anyhow!(e.message))
    }
}

#[derive(clap::Args)]
pub struct PutArgs {
    key: String,
    value: String,
    /// Print the previous key-value.
    #[arg(long)]
    prev_kv: bool,
    /// Attach the key to this lease (hexadecimal id, as `c20 lease grant` prints it).
    #[arg(long, value_parser = parse_lease_id)]
    lease: Option<i64>,
    #[command(flatten)]
    ep: Endpoints,
}

#[derive(clap::Args)]
pub struct GetArgs {
    key: String,
    /// Everything with KEY as prefix.
    #[arg(long)]
    prefix: bool,
    /// Read at this revision.
    #[arg(long, default_value_t = 0)]
    rev: i64,
    /// Serve from the local state of the endpoint (may be stale).
    #[arg(long)]
    serializable: bool,
    #[command(flatten)]
    ep: Endpoints,
}

#[derive(clap::Args)]
pub struct DelArgs {
    key: String,
    #[arg(long)]
    prefix: bool,
    #[command(flatten)]
    ep: Endpoints,
}

#[derive(clap::Args)]
pub struct TxnArgs {
    /// Prompt for each section (compares, success ops, failure ops), as `etcdctl txn -i` does;
    /// each section ends with an empty line.
    #[arg(short, long)]
    interactive: bool,
    #[command(flatten)]
    ep: Endpoints,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    ep: Endpoints,
}

/// Parses a lease id written in hexadecimal, as etcdctl takes it.
pub(crate) fn parse_lease_id(s: &str) -> Result<i64, String> {
    i64::from_str_radix(s, 16).map_err(|e| format!("bad lease ID ({e}), expecting ID in Hex"))
}

pub(crate) fn print_kv(kv: &KeyValue) {
    println!("{}", String::from_utf8_lossy(&kv.key));
    println!("{}", String::from_utf8_lossy(&kv.value));
}

/// The key and range end for one key, or for every key under it as a prefix.
pub(crate) fn key_range(key: String, prefix: bool) -> (Vec<u8>, Vec<u8>) {
    let key = key.into_bytes();
    let range_end = if prefix { prefix_end(&key) } else { Vec::new() };
    (key, range_end)
}

pub(crate) fn fail(e: c20_client::ClientError) -> anyhow::Error {
    anyhow::anyhow!(e.message)
}

pub async fn put(a: PutArgs) -> Result<()> {
    let mut c = a.ep.connect().await?;
    let r = c
        .put_request(PutRequest {
            key: a.key.into_bytes(),
            value: a.value.into_bytes(),
            prev_kv: a.prev_kv,
            lease: a.lease.unwrap_or(0),
            ..Default::default()
        })
        .await
        .map_err(fail)?;
    println!("OK");
    if let Some(prev) = r.prev_kv {
        print_kv(&prev);
    }
    Ok(())
}

pub async fn get(a: GetArgs) -> Result<()> {
    let mut c = a.ep.connect().await?;
    let (key, range_end) = key_range(a.key, a.prefix);
    let r = c
        .range(RangeRequest {
            key,
            range_end,
            revision: a.rev,
            serializable: a.serializable,
            ..Default::default()
        })
        .await
        .map_err(fail)?;
    for kv in &r.kvs {
        print_kv(kv);
    }
    Ok(())
}

pub async fn del(a: DelArgs) -> Result<()> {
    let mut c = a.ep.connect().await?;
    let (key, range_end) = key_range(a.key, a.prefix);
    let r = c
        .delete(DeleteRangeRequest {
            key,
            range_end,
            ..Default::default()
        })
        .await
        .map_err(fail)?;
    println!("{}", r.deleted);
    Ok(())
}

pub async fn txn(a: TxnArgs) -> Result<()> {
    let input = if a.interactive {
        read_interactive_txn()?
    } else {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .context("reading the txn from stdin")?;
        input
    };
    let req = txn_parse::parse(&input).map_err(anyhow::Error::msg)?;
    let mut c = a.ep.connect().await?;
    let r = c.txn(req).await.map_err(fail)?;
    println!("{}", if r.succeeded { "SUCCESS" } else { "FAILURE" });
    for op in r.responses {
        println!();
        match op.response {
            Some(response_op::Response::ResponsePut(_)) => println!("OK"),
            Some(response_op::Response::ResponseRange(rr)) => rr.kvs.iter().for_each(print_kv),
            Some(response_op::Response::ResponseDeleteRange(d)) => println!("{}", d.deleted),
            Some(response_op::Response::ResponseTxn(_)) => println!("(nested txn)"),
            None => {}
        }
    }
    Ok(())
}

/// Reads the three sections of a txn with etcdctl's prompts; returns them in the stdin format.
fn read_interactive_txn() -> Result<String> {
    use std::io::{BufRead, Write};
    let mut lines = std::io::stdin().lock().lines();
    let mut out = String::new();
    for prompt in [
        "compares:",
        "success requests (get, put, del):",
        "failure requests (get, put, del):",
    ] {
        println!("{prompt}");
        std::io::stdout().flush()?;
        for line in lines.by_ref() {
            let line = line.context("reading the txn from stdin")?;
            if line.trim().is_empty() {
                break;
            }
            out.push_str(&line);
            out.push('\n');
        }
        out.push('\n');
    }
    Ok(out)
}

pub async fn status(a: StatusArgs) -> Result<()> {
    println!(
        "{:<22} {:>16} {:>8} {:>10} {:>9} {:>10} {:>10} {:>18}",
        "ENDPOINT",
        "ID",
        "VERSION",
        "DB SIZE",
        "IS LEADER",
        "RAFT TERM",
        "RAFT INDEX",
        "RAFT APPLIED INDEX"
    );
    let mut failed = 0;
    for ep in &a.ep.endpoints {
        let res = async {
            let mut c = Client::connect(&[ep.as_str()]).await?;
            c.status().await
        }
        .await;
        match res {
            Ok(s) => {
                let id = s.header.as_ref().map_or(0, |h| h.member_id);
                println!(
                    "{:<22} {:>16x} {:>8} {:>10} {:>9} {:>10} {:>10} {:>18}",
                    ep,
                    id,
                    s.version,
                    s.db_size,
                    s.leader == id,
                    s.raft_term,
                    s.raft_index,
                    s.raft_applied_index
                );
                for e in s.errors {
                    println!("  error: {e}");
                }
            }
            Err(e) => {
                failed += 1;
                println!("{ep:<22} unreachable: {}", e.message);
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} endpoint(s) did not answer");
    }
    Ok(())
}

pub async fn members(a: StatusArgs) -> Result<()> {
    let mut c = a.ep.connect().await?;
    let r = c.member_list().await.map_err(fail)?;
    for m in r.members {
        let started = if m.name.is_empty() {
            "unstarted"
        } else {
            "started"
        };
        println!(
            "{:x}, {}, {}, {}, {}, {}",
            m.id,
            started,
            m.name,
            m.peer_ur_ls.join(","),
            m.client_ur_ls.join(","),
            m.is_learner
        );
    }
    Ok(())
}
