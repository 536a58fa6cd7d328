//! otherix-agent: the otherix node agent binary. Parses flags, sets up logging, resolves
//! the accelerator, re-adopts VMs on disk, then runs the VM monitor and the gateway
//! session until killed. VMs keep running when the agent exits.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;
use otherix_agent::driver::VmDriver;
use otherix_agent::enroll;
use otherix_agent::executor::Executor;
use otherix_agent::host::{self, AccelChoice};
use otherix_agent::image_fetch::{gib_to_bytes, FetchPolicy, DEFAULT_MAX_IMAGE_GIB};
use otherix_agent::local_driver::LocalDriver;
use otherix_agent::outbox::Outbox;
use otherix_agent::qemu::process::{untraversable_ancestor, RunAs};
use otherix_agent::session::{self, NodeInfo, Transport};
use otherix_agent::url_policy::{Cidr, UrlPolicy};
use otherix_agent::vm_registry::VmRegistry;
use otherix_agent::{guest_agent, monitor};
use otherix_api::firmware_path::DEFAULT_FIRMWARE_DIRS;

/// The otherix node agent: runs VMs with QEMU for otherixd.
#[derive(Debug, Parser)]
#[command(name = "otherix-agent", version)]
struct Args {
    /// otherixd agent gateway URL (its --agent-listen address), e.g.
    /// https://10.0.0.1:7071 (http:// only for servers started with --insecure-http).
    /// Repeat (or comma-separate in the env var) for several replicas: the agent attaches
    /// to one and moves to the next at once when it goes away.
    #[arg(
        long = "server",
        env = "OTHERIX_AGENT_SERVER",
        value_delimiter = ',',
        required = true
    )]
    servers: Vec<String>,
    /// One-time join token from `otherix node join-token NODE`, needed on the first start
    /// against an https:// server (the agent then keeps a certificate in DATA_DIR/tls).
    #[arg(long, env = "OTHERIX_AGENT_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// This node's name.
    #[arg(long)]
    node: String,
    /// Agent state: VM records, run dirs (QMP sockets, pidfiles, serial logs), task results.
    #[arg(long)]
    data_dir: PathBuf,
    /// A storage pool this node serves, as NAME=PATH; repeat for several.
    #[arg(long = "pool", value_name = "NAME=PATH", required = true, value_parser = parse_pool)]
    pools: Vec<(String, PathBuf)>,
    /// Accelerator: auto uses KVM only when a probe guest really runs under it.
    #[arg(long, value_enum, default_value = "auto")]
    accel: AccelChoice,
    /// Accept file:// image URLs (tests and air-gapped nodes).
    #[arg(long)]
    allow_file_urls: bool,
    /// Let image downloads reach this IP network even though a built-in rule refuses it
    /// (link-local, multicast, cloud metadata); repeatable. Loopback and private ranges are
    /// allowed without it.
    #[arg(long = "allow-image-cidr", value_name = "CIDR")]
    allow_image_cidrs: Vec<Cidr>,
    /// Refuse image downloads from this IP network (wins over everything); repeatable.
    #[arg(long = "deny-image-cidr", value_name = "CIDR")]
    deny_image_cidrs: Vec<Cidr>,
    /// Largest image download accepted, in GiB (fractions allowed); a larger body is cut
    /// off with image_too_large.
    #[arg(long, default_value_t = DEFAULT_MAX_IMAGE_GIB, value_parser = parse_gib)]
    max_image_gib: f64,
    /// A directory firmware files (UEFI code and vars templates) may come from; repeatable.
    /// Default: /usr/share/OVMF, /usr/share/AAVMF, /usr/share/seabios, /usr/share/qemu.
    #[arg(long = "firmware-dir", value_name = "DIR")]
    firmware_dirs: Vec<PathBuf>,
    /// When the agent runs as root, QEMU runs as this unprivileged user (created by
    /// scripts/install-deps.sh); '' keeps QEMU as root (development only).
    #[arg(long, default_value = "otherix-qemu")]
    qemu_user: String,
    /// The same limit in bytes (overrides --max-image-gib; for tests).
    #[arg(long, hide = true)]
    max_image_bytes: Option<u64>,
}

fn parse_gib(s: &str) -> Result<f64, String> {
    let gib: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    gib_to_bytes(gib).ok_or_else(|| format!("{s:?}: expected a positive number of GiB"))?;
    Ok(gib)
}

fn parse_pool(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=PATH"))?;
    otherix_api::validate::validate_name("pool name", name).map_err(|e| e.message)?;
    if path.is_empty() {
        return Err(format!("{s:?}: empty pool path"));
    }
    Ok((name.to_string(), PathBuf::from(path)))
}

/// The user QEMU runs as: `--qemu-user` when the agent is root, else nobody to switch to.
fn qemu_run_as(name: &str) -> anyhow::Result<Option<RunAs>> {
    if name.is_empty() {
        tracing::warn!("--qemu-user '': QEMU runs as the agent's user");
        return Ok(None);
    }
    if !nix::unistd::geteuid().is_root() {
        tracing::info!(
            qemu_user = name,
            "the agent is not root; QEMU runs as the agent's user"
        );
        return Ok(None);
    }
    let user = nix::unistd::User::from_name(name)
        .with_context(|| format!("looking up --qemu-user {name}"))?
        .with_context(|| {
            format!(
                "--qemu-user {name}: no such user; create it (scripts/install-deps.sh does: \
                 useradd --system --no-create-home --shell /usr/sbin/nologin {name}) \
                 or pass --qemu-user '' to run QEMU as root (development only)"
            )
        })?;
    if user.uid.is_root() {
        bail!("--qemu-user {name} is root; name an unprivileged user");
    }
    tracing::info!(
        qemu_user = name,
        uid = user.uid.as_raw(),
        "QEMU runs unprivileged"
    );
    Ok(Some(RunAs {
        name: name.to_string(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    }))
}

fn absolute_dir(path: &std::path::Path, what: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {what} {}", path.display()))?;
    path.canonicalize()
        .with_context(|| format!("resolving {what} {}", path.display()))
}

/// Enrolls at the first of `servers` that answers; a refusal (used or expired token) is
/// final, an unreachable server tries the next.
async fn enroll_at_any(
    servers: &[String],
    token: &str,
    node: &str,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let mut last = None;
    for server in servers {
        match enroll::enroll(server, token, node, data_dir).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_unreachable() => {
                tracing::warn!(server, error = %e, "enrollment: server unreachable, trying the next");
                last = Some(
                    anyhow::Error::new(e).context(format!("enrolling node {node} at {server}")),
                );
            }
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("enrolling node {node} at {server}"))
                )
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no --server given")))
}

/// Plain for http:// servers; for https:// enrolls first when there is no certificate yet
/// (needs --join-token), then mTLS with the stored certificate.
async fn transport(args: &Args, data_dir: &std::path::Path) -> anyhow::Result<Transport> {
    let plain = args.servers.iter().all(|s| s.starts_with("http://"));
    if plain {
        if args.join_token.is_some() {
            bail!(
                "--join-token needs https:// servers (got {})",
                args.servers.join(", ")
            );
        }
        return Ok(Transport::Plain);
    }
    if let Some(bad) = args.servers.iter().find(|s| !s.starts_with("https://")) {
        bail!("--server {bad}: expected an https:// URL (all --server URLs must be https:// or all http://)");
    }
    let cert = enroll::tls_dir(data_dir).join(enroll::NODE_CERT_FILE);
    if enroll::is_enrolled(data_dir) {
        if args.join_token.is_some() {
            tracing::warn!(cert = %cert.display(), "already enrolled; --join-token is ignored");
        }
    } else {
        let Some(token) = &args.join_token else {
            bail!(
                "no client certificate ({} is missing) and no --join-token: on the server run \
                 `otherix node join-token {}` and start the agent once with --join-token TOKEN",
                cert.display(),
                args.node
            );
        };
        enroll_at_any(&args.servers, token, &args.node, data_dir).await?;
        eprintln!(
            "otherix-agent: enrolled node {}; certificate in {}",
            args.node,
            cert.display()
        );
    }
    let config = enroll::load_client_config(data_dir)
        .with_context(|| format!("loading the node certificate from {}", cert.display()))?;
    Ok(Transport::Tls(config))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    let data_dir = absolute_dir(&args.data_dir, "data dir")?;
    let transport = transport(&args, &data_dir).await?;
    let mut pools = Vec::new();
    for (name, path) in &args.pools {
        if pools.iter().any(|(n, _): &(String, PathBuf)| n == name) {
            bail!("pool {name} is given twice");
        }
        pools.push((name.clone(), absolute_dir(path, "pool path")?));
    }
    let Some(host_arch) = host::host_arch() else {
        bail!("unsupported host architecture {}", std::env::consts::ARCH);
    };
    let accel = host::resolve_accel(args.accel).await;
    let guest_arches: Vec<&str> = host::guest_arches().iter().map(|a| a.as_str()).collect();
    if guest_arches.is_empty() {
        tracing::warn!(
            "no qemu-system-* binary with its firmware (SeaBIOS, AAVMF) found; this node cannot run VMs"
        );
    }
    tracing::info!(
        node = args.node,
        accel = accel.as_str(),
        ?guest_arches,
        "otherix-agent starting"
    );

    let fetch_policy = FetchPolicy {
        allow_file_urls: args.allow_file_urls,
        url_policy: UrlPolicy {
            allow: args.allow_image_cidrs.clone(),
            deny: args.deny_image_cidrs.clone(),
        },
        max_bytes: args
            .max_image_bytes
            .or_else(|| gib_to_bytes(args.max_image_gib))
            .context("--max-image-gib")?,
    };
    let firmware_dirs: Vec<PathBuf> = if args.firmware_dirs.is_empty() {
        DEFAULT_FIRMWARE_DIRS.iter().map(PathBuf::from).collect()
    } else {
        args.firmware_dirs.clone()
    };
    for dir in &firmware_dirs {
        if !dir.is_absolute() {
            bail!("--firmware-dir {}: must be an absolute path", dir.display());
        }
    }
    let run_as = qemu_run_as(&args.qemu_user)?;
    if let Some(user) = &run_as {
        let dirs = pools
            .iter()
            .map(|(_, p)| p)
            .chain(std::iter::once(&data_dir));
        for dir in dirs {
            if let Some(closed) = untraversable_ancestor(dir, user) {
                bail!(
                    "--qemu-user {} cannot traverse {} (on the way to {}); QEMU runs as that \
                     user and must reach the VM files below it: allow traversal \
                     (e.g. chmod o+x {}) or move the pool or data dir",
                    user.name,
                    closed.display(),
                    dir.display(),
                    closed.display()
                );
            }
        }
    }
    let registry = Arc::new(VmRegistry::new(&data_dir));
    let driver = Arc::new(
        LocalDriver::new(registry.clone(), accel, args.allow_file_urls)
            .with_pools(pools.clone())
            .with_fetch_policy(fetch_policy)
            .with_firmware_dirs(&firmware_dirs)
            .with_run_as(run_as),
    );
    // Before any task can start a download: whatever is in images/tmp is a leftover.
    driver.sweep_image_tmp();
    for report in driver.report_all().await {
        tracing::info!(
            vm_id = report.vm_id,
            power = report.power,
            pid = report.pid,
            guest_shutdown = report.guest_shutdown,
            detail = report.detail,
            "re-adopted VM"
        );
    }
    let (outbox, outbox_rx) = Outbox::new();
    let executor = Executor::new(
        driver.clone(),
        registry.clone(),
        &data_dir,
        outbox.clone(),
        pools.clone(),
    );
    tokio::spawn(guest_agent::run(registry.clone(), outbox.clone()));
    tokio::spawn(otherix_agent::vm_stats::run(
        registry.clone(),
        outbox.clone(),
    ));
    tokio::spawn(monitor::run(registry, outbox.clone()));
    {
        let executor = executor.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(6 * 3600));
            loop {
                every.tick().await;
                executor.prune_task_records();
            }
        });
    }

    let node = NodeInfo {
        node: args.node,
        host_arch: host_arch.as_str().to_string(),
        guest_arches: guest_arches.iter().map(|a| a.to_string()).collect(),
        accel: accel.as_str().to_string(),
        vcpus: host::vcpus(),
        memory_mb: host::memory_mb(),
        pools,
        allow_file_urls: args.allow_file_urls,
        firmware_dirs: driver.firmware_dirs().to_vec(),
    };
    tokio::select! {
        () = session::run(args.servers, transport, node, executor, driver, outbox, outbox_rx) => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; VMs keep running"),
    }
    Ok(())
}
