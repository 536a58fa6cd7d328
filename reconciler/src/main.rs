//! otherixd: the otherix control plane binary. Parses flags, opens the store, loads the
//! cluster PKI (its CA from the store, created on first start), serves the HTTPS API on
//! `--listen` and the TLS agent gateway on `--agent-listen` (both plain with
//! `--insecure-http`, loopback only).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use std::time::Duration;

use otherix_api::duration::parse_duration;
use otherixd::daemon::{Daemon, DaemonOptions, RESYNC_INTERVAL};
use otherixd::gateway::{Liveness, NODE_GRACE_RANGE};
use otherixd::pki::{self, PkiOptions, SanOptions};
use otherixd::retention::RetentionPolicy;
use otherixd::store::{default_database_url, Store};
use otherixd::tls_listener::TlsIncoming;
use tokio_stream::wrappers::TcpListenerStream;

/// The otherix control plane.
#[derive(Parser, Debug)]
#[command(name = "otherixd", version)]
struct Args {
    /// HTTP API address, e.g. 127.0.0.1:7070.
    #[arg(long, env = "OTHERIXD_LISTEN")]
    listen: SocketAddr,
    /// Agent gateway (gRPC) address, e.g. 127.0.0.1:7071.
    #[arg(long, env = "OTHERIXD_AGENT_LISTEN")]
    agent_listen: SocketAddr,
    /// State directory; holds otherix.db unless --database-url says otherwise.
    #[arg(long, env = "OTHERIXD_DATA_DIR")]
    data_dir: PathBuf,
    /// sqlite://PATH or postgres://... (default: SQLite in the data dir).
    #[arg(long, env = "OTHERIXD_DATABASE_URL")]
    database_url: Option<String>,
    /// Apply every manifest in DIR at start-up and again whenever a file in it changes
    /// (like `otherix create -f DIR --watch --prune`). The server owns the directory:
    /// objects are stamped with `otherix.dev/source: <DIR>`, and objects carrying that
    /// annotation whose documents are removed from DIR are deleted.
    #[arg(long, env = "OTHERIXD_MANIFESTS_DIR", value_name = "DIR")]
    manifests_dir: Option<PathBuf>,
    /// Finished tasks and deleted VMs older than this are purged (e.g. 30d, 12h, 1s); the
    /// newest task of every live VM stays.
    #[arg(long, env = "OTHERIXD_RETENTION", default_value = "30d", value_parser = parse_duration)]
    retention: Duration,
    /// How long `GET /v1/events` keeps events: `?since=` older than this is 410
    /// cursor_expired (purged by the retention job, so up to --retention-interval later).
    #[arg(long, env = "OTHERIXD_EVENT_RETENTION", default_value = "1h", value_parser = parse_duration)]
    event_retention: Duration,
    /// How often the retention purge runs.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    retention_interval: Duration,
    /// A node without a heartbeat for this long is marked not_ready (2s..10m). Agents
    /// beat every second; each replica writes a node's heartbeat at most every
    /// min(5s, grace/4). A closed agent stream marks the node at once.
    #[arg(long, env = "OTHERIXD_NODE_GRACE_PERIOD", default_value = "20s", value_parser = parse_node_grace)]
    node_grace_period: Duration,
    /// Another name or IP clients and agents use to reach this server; added to the
    /// generated server certificate. Repeat for several.
    #[arg(long = "tls-san", value_name = "NAME|IP")]
    tls_san: Vec<String>,
    /// Serve this certificate (PEM chain) on the HTTPS API instead of the generated
    /// DATA_DIR/tls/server.crt. The cluster CA is still created: it signs node
    /// certificates, and the agent gateway keeps the generated certificate it signed.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The URL agents reach this replica's gateway at, for the console streams they dial
    /// back (with several replicas, the agent of a VM may be attached to another one).
    /// Default: https://AGENT-LISTEN-ADDRESS, or, when that is 0.0.0.0 / [::], none
    /// (agents then dial the server they are attached to, right on a single replica).
    #[arg(long, env = "OTHERIXD_AGENT_ADVERTISE_URL", value_name = "URL")]
    agent_advertise_url: Option<String>,
    /// Serve both listeners in plain HTTP with agents identified by name (tests only).
    /// Refused unless --listen and --agent-listen are loopback addresses.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "tls_san"])]
    insecure_http: bool,
}

/// `--node-grace-period`: a duration within [`NODE_GRACE_RANGE`].
fn parse_node_grace(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    let (min, max) = NODE_GRACE_RANGE;
    if d < min || d > max {
        return Err(format!(
            "must be from {}s to {}s (got {text})",
            min.as_secs(),
            max.as_secs()
        ));
    }
    Ok(d)
}

/// How long the servers may drain after SIGTERM/Ctrl-C before the process exits anyway.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The agent gateway's gRPC server: HTTP/2 PINGs drop the session of an agent that stops
/// answering (a frozen or partitioned host) within ~20 s, the default liveness grace
/// period, so its stream is released. A live agent heartbeats every second, so the server
/// only pings a silent one. (Agents ping the server every 2 s / 3 s themselves, to leave a
/// frozen replica fast.)
fn agent_server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if args.insecure_http {
        pki::check_insecure_listen(&[
            ("--listen", args.listen),
            ("--agent-listen", args.agent_listen),
        ])
        .map_err(anyhow::Error::msg)?;
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let database_url = args
        .database_url
        .clone()
        .unwrap_or_else(|| default_database_url(&args.data_dir));
    // The store first: the cluster CA lives in it.
    let store = Store::open(&database_url)
        .await
        .context("opening the database")?;
    let pki = if args.insecure_http {
        None
    } else {
        let tls_dir = args.data_dir.join("tls");
        let opts = PkiOptions {
            sans: SanOptions {
                extra: args.tls_san.clone(),
                host_name: pki::host_name(),
                listen: vec![args.listen, args.agent_listen],
            },
            cert_file: args.tls_cert.clone(),
            key_file: args.tls_key.clone(),
        };
        let (pki, origin) = pki::load(&store, &tls_dir, &opts).await.with_context(|| {
            format!(
                "loading the cluster PKI (server certificate in {})",
                tls_dir.display()
            )
        })?;
        match origin {
            pki::PkiOrigin::Created => {
                tracing::info!("created the cluster CA (stored in the database)")
            }
            pki::PkiOrigin::Adopted => tracing::info!(
                dir = %tls_dir.display(),
                "stored this data dir's CA in the database as the cluster CA"
            ),
            pki::PkiOrigin::Loaded => {}
        }
        eprintln!("otherixd: CA fingerprint {}", pki.ca_fingerprint());
        Some(Arc::new(pki))
    };
    let http = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let agents = tokio::net::TcpListener::bind(args.agent_listen)
        .await
        .with_context(|| format!("binding --agent-listen {}", args.agent_listen))?;
    let agent_advertise_url = otherixd::service::console::advertise_url(
        args.agent_advertise_url.as_deref(),
        pki.is_some(),
        agents.local_addr()?,
    )
    .map_err(anyhow::Error::msg)?;
    let mut daemon = Daemon::from_store(
        store,
        DaemonOptions {
            pki: pki.clone(),
            retention: RetentionPolicy {
                max_age: args.retention,
                every: args.retention_interval.max(Duration::from_millis(100)),
                events_max_age: args.event_retention,
                ..RetentionPolicy::default()
            },
            liveness: Liveness {
                grace: args.node_grace_period,
            },
            agent_advertise_url,
            ..Default::default()
        },
    );

    if let Some(path) = daemon
        .bootstrap_admin_token(&args.data_dir)
        .await
        .context("bootstrapping the admin token")?
    {
        eprintln!("otherixd: admin token written to {}", path.display());
    }
    let scheme = if pki.is_some() { "https" } else { "http" };
    eprintln!(
        "otherixd: api {scheme}://{}, agents {scheme}://{}, data {}",
        http.local_addr()?,
        agents.local_addr()?,
        args.data_dir.display()
    );
    let _background = daemon.spawn_background(RESYNC_INTERVAL);
    // Give the leader lease up at the signal, not after the servers drained.
    let resigned = daemon.resign_on(shutdown_signal());
    // At the signal, end every agent stream from this side (their agents fail over to
    // another --server at once); tonic's drain then has nothing left to wait for.
    let sessions = daemon.gateway.sessions().clone();
    let end_sessions = async move {
        shutdown_signal().await;
        let n = sessions.kick_all(&tonic::Status::unavailable("otherixd is shutting down"));
        tracing::info!(sessions = n, "ended the agent sessions");
    };
    // At the signal, end the event streams (clients resume on another replica).
    let events = daemon.state.events.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        events.close();
    });
    let manifests = match &args.manifests_dir {
        Some(dir) => Some(
            otherixd::manifests_dir::ManifestsWatcher::spawn(dir.clone(), daemon.state.clone())
                .context("starting the --manifests-dir watcher")?,
        ),
        None => None,
    };

    let app = daemon.app();
    let gateway = daemon.gateway.clone().into_server();
    let (http_server, agent_server) = match &pki {
        Some(pki) => {
            let https = TlsIncoming::spawn(http, pki.https_config()?)?;
            let agents = TlsIncoming::spawn(agents, pki.gateway_config()?)?;
            let http_server: futures::future::BoxFuture<'static, anyhow::Result<()>> =
                Box::pin(async move {
                    axum::serve(https, app)
                        .with_graceful_shutdown(shutdown_signal())
                        .await
                        .context("serving the HTTPS API")
                });
            let agent_server: futures::future::BoxFuture<'static, anyhow::Result<()>> =
                Box::pin(async move {
                    agent_server_builder()
                        .add_service(gateway)
                        .serve_with_incoming_shutdown(agents.into_stream(), end_sessions)
                        .await
                        .context("serving the agent gateway")
                });
            (http_server, agent_server)
        }
        None => {
            let http_server: futures::future::BoxFuture<'static, anyhow::Result<()>> =
                Box::pin(async move {
                    axum::serve(http, app)
                        .with_graceful_shutdown(shutdown_signal())
                        .await
                        .context("serving the HTTP API")
                });
            let agent_server: futures::future::BoxFuture<'static, anyhow::Result<()>> =
                Box::pin(async move {
                    agent_server_builder()
                        .add_service(gateway)
                        .serve_with_incoming_shutdown(TcpListenerStream::new(agents), end_sessions)
                        .await
                        .context("serving the agent gateway")
                });
            (http_server, agent_server)
        }
    };
    // Connections that outlive the drain (a long-poll, a stuck client) do not keep the
    // process up.
    let drain_limit = async {
        shutdown_signal().await;
        tokio::time::sleep(SHUTDOWN_DRAIN).await;
    };
    tokio::select! {
        served = async { tokio::try_join!(http_server, agent_server) } => { served?; }
        _ = drain_limit => tracing::warn!(
            "connections still open {}s after the shutdown signal; exiting anyway",
            SHUTDOWN_DRAIN.as_secs()
        ),
    }
    if let Some(watcher) = manifests {
        tokio::task::spawn_blocking(move || watcher.stop()).await?;
    }
    let _ = resigned.await;
    tracing::info!("shut down");
    daemon.store.close().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
