//! otherix-simnode: simulated nodes for control-plane scale benchmarks only (kwok-style).
//! One process hosts many nodes; each holds a real gateway session (the agent's own
//! [`session`] code: real gRPC, real TLS with a certificate from a real join-token
//! enrollment, real heartbeats) and runs tasks through the agent's real [`Executor`] on a
//! [`SimDriver`]: VMs are in memory, with plausible delays and no QEMU. Never use it to
//! test behaviour; it is what `scripts/bench.sh` runs to put 10,000 VMs on 100 nodes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use otherix_agent::enroll;
use otherix_agent::executor::Executor;
use otherix_agent::outbox::Outbox;
use otherix_agent::session::{self, NodeInfo, Transport};
use otherix_agent::sim_driver::{SimDriver, SimTimings};
use otherix_agent::vm_registry::VmRegistry;

/// Simulated otherix nodes (no QEMU) for control-plane benchmarks; not for production.
#[derive(Debug, Parser)]
#[command(name = "otherix-simnode", version)]
struct Args {
    /// otherixd agent gateway URL (its --agent-listen address); repeatable.
    #[arg(long = "server", value_delimiter = ',', required = true)]
    servers: Vec<String>,
    /// How many nodes this process simulates.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Node names are PREFIX001, PREFIX002, ... (at least three digits).
    #[arg(long, default_value = "sim-")]
    name_prefix: String,
    /// State of every simulated node (task results, certificates) under DIR/<node>.
    /// Put it on tmpfs: its writes are not what a control-plane benchmark measures.
    #[arg(long)]
    data_dir: PathBuf,
    /// For https:// servers: a file of `NODE TOKEN` lines (tokens from
    /// `otherix node join-token NODE`), used by nodes not enrolled yet.
    #[arg(long)]
    join_tokens: Option<PathBuf>,
    /// Pool every node serves.
    #[arg(long, default_value = "default")]
    pool: String,
    /// vCPUs each node announces.
    #[arg(long, default_value_t = 64)]
    vcpus: u32,
    /// Memory (MiB) each node announces.
    #[arg(long, default_value_t = 262_144)]
    memory_mb: u64,
    /// Simulated milliseconds for disk creation, QEMU start, graceful stop.
    #[arg(long, default_value_t = 15)]
    prepare_ms: u64,
    #[arg(long, default_value_t = 90)]
    start_ms: u64,
    #[arg(long, default_value_t = 300)]
    stop_ms: u64,
}

/// `PREFIX` + the 1-based index, zero-padded to three digits.
fn node_name(prefix: &str, index: usize) -> String {
    format!("{prefix}{index:03}")
}

/// The `NODE TOKEN` lines of a join-tokens file.
fn parse_tokens(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

async fn transport(
    servers: &[String],
    node: &str,
    data_dir: &Path,
    tokens: &[(String, String)],
) -> anyhow::Result<Transport> {
    if servers.iter().all(|s| s.starts_with("http://")) {
        return Ok(Transport::Plain);
    }
    if !enroll::is_enrolled(data_dir) {
        let Some((_, token)) = tokens.iter().find(|(n, _)| n == node) else {
            bail!("node {node} is not enrolled and --join-tokens has no token for it");
        };
        enroll::enroll(&servers[0], token, node, data_dir)
            .await
            .with_context(|| format!("enrolling {node}"))?;
    }
    Ok(Transport::Tls(enroll::load_client_config(data_dir)?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let tokens = match &args.join_tokens {
        Some(path) => parse_tokens(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        ),
        None => Vec::new(),
    };
    let timings = SimTimings {
        prepare: Duration::from_millis(args.prepare_ms),
        start: Duration::from_millis(args.start_ms),
        stop: Duration::from_millis(args.stop_ms),
        ..SimTimings::default()
    };
    let mut sessions = tokio::task::JoinSet::new();
    for i in 1..=args.nodes {
        let name = node_name(&args.name_prefix, i);
        let data_dir = args.data_dir.join(&name);
        let pool_path = data_dir.join(format!("pool-{}", args.pool));
        std::fs::create_dir_all(&pool_path)
            .with_context(|| format!("creating {}", pool_path.display()))?;
        let transport = transport(&args.servers, &name, &data_dir, &tokens).await?;
        let pools = vec![(args.pool.clone(), pool_path)];
        let driver = Arc::new(SimDriver::new(&name, timings));
        let registry = Arc::new(VmRegistry::new(&data_dir));
        let (outbox, outbox_rx) = Outbox::new();
        let executor = Executor::new(
            driver.clone(),
            registry,
            &data_dir,
            outbox.clone(),
            pools.clone(),
        );
        let node = NodeInfo {
            node: name,
            host_arch: "amd64".into(),
            guest_arches: vec!["amd64".into()],
            accel: "tcg".into(),
            vcpus: args.vcpus,
            memory_mb: args.memory_mb,
            pools,
            allow_file_urls: false,
            firmware_dirs: Vec::new(),
        };
        let servers = args.servers.clone();
        sessions.spawn(session::run(
            servers, transport, node, executor, driver, outbox, outbox_rx,
        ));
    }
    eprintln!("otherix-simnode: {} simulated nodes attached", args.nodes);
    tokio::select! {
        _ = sessions.join_next() => bail!("a simulated node's session ended"),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_and_token_file() {
        assert_eq!(node_name("sim-", 1), "sim-001");
        assert_eq!(node_name("s", 1234), "s1234");
        let tokens = parse_tokens("sim-001 abc\n\nsim-002  def \nbroken\n");
        assert_eq!(
            tokens,
            vec![
                ("sim-001".to_owned(), "abc".to_owned()),
                ("sim-002".to_owned(), "def".to_owned())
            ]
        );
    }
}
