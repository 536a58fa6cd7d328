//! otherixd: the otherix control plane binary. Parses flags, opens the store, serves the
//! HTTP API on `--listen` and the agent gateway on `--agent-listen`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use otherixd::daemon::{Daemon, RESYNC_INTERVAL};
use otherixd::store::default_database_url;
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
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let database_url = args
        .database_url
        .clone()
        .unwrap_or_else(|| default_database_url(&args.data_dir));
    let mut daemon = Daemon::open(&database_url)
        .await
        .context("opening the database")?;

    if let Some(path) = daemon
        .bootstrap_admin_token(&args.data_dir)
        .await
        .context("bootstrapping the admin token")?
    {
        eprintln!("otherixd: admin token written to {}", path.display());
    }
    let http = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let agents = tokio::net::TcpListener::bind(args.agent_listen)
        .await
        .with_context(|| format!("binding --agent-listen {}", args.agent_listen))?;
    eprintln!(
        "otherixd: api http://{}, agents http://{}, data {}",
        http.local_addr()?,
        agents.local_addr()?,
        args.data_dir.display()
    );
    let _background = daemon.spawn_background(RESYNC_INTERVAL);
    let manifests = match &args.manifests_dir {
        Some(dir) => Some(
            otherixd::manifests_dir::ManifestsWatcher::spawn(dir.clone(), daemon.state.clone())
                .context("starting the --manifests-dir watcher")?,
        ),
        None => None,
    };

    let app = daemon.app();
    let http_server = async move {
        axum::serve(http, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("serving the HTTP API")
    };
    let gateway = daemon.gateway.clone().into_server();
    let agent_server = async move {
        tonic::transport::Server::builder()
            .add_service(gateway)
            .serve_with_incoming_shutdown(TcpListenerStream::new(agents), shutdown_signal())
            .await
            .context("serving the agent gateway")
    };
    tokio::try_join!(http_server, agent_server)?;
    if let Some(watcher) = manifests {
        tokio::task::spawn_blocking(move || watcher.stop()).await?;
    }
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
