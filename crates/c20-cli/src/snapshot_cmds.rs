//! `c20 snapshot save|restore`: backups as etcdctl takes them, and seeding a new cluster.

use crate::client_cmds::Endpoints;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    cmd: SnapshotCmd,
}

#[derive(clap::Subcommand)]
enum SnapshotCmd {
    /// Stream a backup of one member's store into FILE (the first endpoint's member).
    Save {
        file: PathBuf,
        #[command(flatten)]
        ep: Endpoints,
    },
    /// Seed the data directory of a member of a new cluster from a backup FILE; then start it
    /// with `c20 serve` and the same --name, --initial-cluster and --initial-advertise-peer-urls.
    Restore {
        file: PathBuf,
        /// The new member's data directory (must not exist) [default: NAME.c20].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The new member's name.
        #[arg(long, default_value = "default")]
        name: String,
        /// The new cluster, `name=peer-url,...`; must name this member.
        #[arg(long)]
        initial_cluster: Option<String>,
        #[arg(long, default_value = "http://127.0.0.1:2380", value_delimiter = ',')]
        initial_advertise_peer_urls: Vec<String>,
        #[arg(long, default_value = "etcd-cluster")]
        initial_cluster_token: String,
    },
}

pub async fn run(a: SnapshotArgs) -> Result<()> {
    match a.cmd {
        SnapshotCmd::Save { file, ep } => save(file, ep).await,
        SnapshotCmd::Restore {
            file,
            data_dir,
            name,
            initial_cluster,
            initial_advertise_peer_urls,
            initial_cluster_token: _,
        } => {
            let cluster = match &initial_cluster {
                Some(s) => c20_server::parse_initial_cluster(s).map_err(anyhow::Error::msg)?,
                None => vec![(name.clone(), initial_advertise_peer_urls.clone())],
            };
            match cluster.iter().find(|(n, _)| *n == name) {
                None => bail!("--initial-cluster has no member named {name:?}"),
                Some((_, urls)) if *urls != initial_advertise_peer_urls => bail!(
                    "--initial-cluster must include {name}={} given --initial-advertise-peer-urls",
                    initial_advertise_peer_urls.join(",")
                ),
                Some(_) => {}
            }
            let data_dir = data_dir.unwrap_or_else(|| PathBuf::from(format!("{name}.c20")));
            let raw =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let rev = c20_server::restore_backup(&raw, &data_dir).map_err(anyhow::Error::msg)?;
            println!(
                "restored snapshot at revision {rev} into {}",
                data_dir.display()
            );
            Ok(())
        }
    }
}

async fn save(file: PathBuf, ep: Endpoints) -> Result<()> {
    let first = Endpoints {
        endpoints: ep.endpoints.into_iter().take(1).collect(),
    };
    let mut client = first.connect().await?;
    let mut stream = client
        .snapshot()
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    // Written beside the target and renamed once whole and durable, as etcdctl does.
    let part = file.with_extension("part");
    let mut f =
        std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
    let mut size = 0u64;
    let result = async {
        while let Some(msg) = stream
            .message()
            .await
            .map_err(|e| anyhow::anyhow!(e.message().to_string()))?
        {
            f.write_all(&msg.blob)?;
            size += msg.blob.len() as u64;
        }
        f.sync_all()?;
        // Checked before it is kept: a cut stream must not look like a backup.
        let raw = std::fs::read(&part)?;
        c20_storage::snapshot::from_backup(&raw)?;
        std::fs::rename(&part, &file)?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&part);
        return Err(e.context(format!("saving a snapshot to {}", file.display())));
    }
    tracing::debug!(size, "snapshot saved");
    println!("Snapshot saved at {}", file.display());
    Ok(())
}
