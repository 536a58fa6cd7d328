//! Wiring: opens the store and builds the sessions, gateway, reconciler and services that
//! share it. `main` serves what this builds; tests build it on a temp data dir.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::api::nodes::NodeEnrollment;
use crate::api::{app, AppState};
use crate::events::TaskEvents;
use crate::gateway::{Gateway, Sessions};
use crate::leader::{Elector, Leadership, LeaseTiming};
use crate::locks::VmLocks;
use crate::metrics::Metrics;
use crate::pki::Pki;
use crate::reconcile::retry::Backoff;
use crate::reconcile::Reconciler;
use crate::relay::Relay;
use crate::service::{
    ApplyService, ClusterService, EntityService, EventService, IdentityService, OpsService,
    TaskService, VmService,
};
use crate::store::{Fence, Store, StoreError};

/// The file in the data dir that receives the first admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("creating the first admin token")]
    Service(#[from] crate::service::ServiceError),
    #[error("writing the admin token to {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How often the leader scans every live VM for work no trigger announced (read-only:
/// only VMs with something to do are queued). Triggers (API writes, agent reports, task
/// updates, sessions opening) do the work; this only catches drift, so it is slow.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(120);

pub struct Daemon {
    pub store: Store,
    pub gateway: Gateway,
    pub reconciler: Arc<Reconciler>,
    pub state: AppState,
    triggers: Option<mpsc::UnboundedReceiver<Uuid>>,
    /// The sender of `triggers`: VM triggers other replicas announce reach the leader here.
    trigger: mpsc::UnboundedSender<Uuid>,
    relay: Arc<Relay>,
    retention: crate::retention::RetentionPolicy,
    /// This replica's lease holder id (unique per process).
    pub holder: String,
    lease: LeaseTiming,
    leadership: Option<Leadership>,
    election: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

/// Knobs of [`Daemon::open_with`]; the defaults are what `otherixd` runs with.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Backoff of retries after failed vm.create / vm.start tasks and crashes (2 s
    /// doubling to 5 min by default; tests shorten it).
    pub retry_backoff: Backoff,
    /// Purging of old finished tasks and deleted VM rows (`--retention`).
    pub retention: crate::retention::RetentionPolicy,
    /// The cluster PKI: the gateway runs over TLS (enrollment, agents identified by their
    /// client certificate). `None` is `--insecure-http` (agents identified by name).
    pub pki: Option<Arc<Pki>>,
    /// Leader lease duration and renew interval (15 s / 2 s by default).
    pub lease: LeaseTiming,
    /// Node liveness grace period (`--node-grace-period`, 20 s by default).
    pub liveness: crate::gateway::Liveness,
    /// This replica's agent gateway URL as agents reach it, for console streams
    /// (`--agent-advertise-url`); empty: agents dial the server they are attached to.
    pub agent_advertise_url: String,
}

impl Daemon {
    /// Opens the database (running migrations) and builds every component. Node status is
    /// left alone: the leader's liveness sweep marks nodes whose heartbeats stopped.
    pub async fn open(database_url: &str) -> Result<Daemon, StoreError> {
        Self::open_with(database_url, DaemonOptions::default()).await
    }

    /// [`Daemon::open`] with non-default knobs.
    pub async fn open_with(database_url: &str, opts: DaemonOptions) -> Result<Daemon, StoreError> {
        Ok(Self::from_store(Store::open(database_url).await?, opts))
    }

    /// Builds every component on an open store (`otherixd` opens the store first: the
    /// cluster CA, which `opts.pki` is built from, lives in it).
    pub fn from_store(store: Store, opts: DaemonOptions) -> Daemon {
        let holder = Uuid::new_v4().to_string();
        let sessions = Arc::new(Sessions::default());
        let locks = Arc::new(VmLocks::default());
        let events = TaskEvents::default();
        let (trigger, triggers) = mpsc::unbounded_channel();
        let metrics = Arc::new(Metrics::new(store.clone(), sessions.clone()));
        let gateway = Gateway::new(
            store.clone(),
            sessions.clone(),
            locks.clone(),
            events.clone(),
            trigger.clone(),
        )
        .with_retry_backoff(opts.retry_backoff)
        .with_pki(opts.pki.clone())
        .with_replica_id(&holder)
        .with_liveness(opts.liveness)
        .with_create_to_running(metrics.create_to_running());
        let relay = Arc::new(Relay::new(
            store.clone(),
            sessions.clone(),
            events.clone(),
            holder.clone(),
        ));
        let reconciler = Arc::new(
            Reconciler::new(store.clone(), sessions.clone(), locks, events.clone())
                .with_retry_backoff(opts.retry_backoff)
                .with_queue_metrics(metrics.reconcile_queue()),
        );
        let vms = Arc::new(VmService::new(
            store.clone(),
            reconciler.clone(),
            gateway.clone(),
            relay.clone(),
        ));
        let cluster = Arc::new(ClusterService::new(store.clone()));
        let state = AppState {
            console: Arc::new(crate::service::console::ConsoleService::new(
                store.clone(),
                relay.clone(),
                gateway.consoles().clone(),
                opts.agent_advertise_url.clone(),
            )),
            metrics,
            events: Arc::new(EventService::new(store.clone())),
            apply: Arc::new(ApplyService::new(
                store.clone(),
                reconciler.clone(),
                vms.clone(),
            )),
            vms,
            tasks: Arc::new(TaskService::new(store.clone(), events.clone())),
            cluster: cluster.clone(),
            identity: Arc::new(IdentityService::new(store.clone())),
            enrollment: Arc::new(NodeEnrollment::new(
                store.clone(),
                relay.clone(),
                cluster,
                opts.pki.clone(),
            )),
            entities: Arc::new(EntityService::new(store.clone())),
            ops: Arc::new(OpsService::new(
                store.clone(),
                relay.clone(),
                reconciler.clone(),
                events,
            )),
        };
        Daemon {
            store,
            gateway,
            reconciler,
            state,
            triggers: Some(triggers),
            trigger,
            relay,
            retention: opts.retention,
            holder,
            lease: opts.lease,
            leadership: None,
            election: None,
        }
    }

    /// On the very first start (no API token exists), creates the `admin` token and writes
    /// its secret to `DATA_DIR/admin.token` (mode 0600, created exclusively). Returns the
    /// path when it wrote one.
    pub async fn bootstrap_admin_token(
        &self,
        data_dir: &Path,
    ) -> Result<Option<PathBuf>, BootstrapError> {
        let Some(secret) = self.state.identity.bootstrap_admin().await? else {
            return Ok(None);
        };
        let path = data_dir.join(ADMIN_TOKEN_FILE);
        let write = || -> std::io::Result<()> {
            let _ = std::fs::remove_file(&path);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(format!("{secret}\n").as_bytes())?;
            f.sync_all()
        };
        write().map_err(|source| BootstrapError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(Some(path))
    }

    /// The HTTP API router.
    pub fn app(&self) -> Router {
        app(self.state.clone())
    }

    /// Starts the leader election and, while this replica leads, the work that must run
    /// once: the reconcile loops (triggers + periodic resync), the node liveness sweep and
    /// retention. They stop when leadership is lost and start again when it is gained.
    /// Call once.
    pub fn spawn_background(&mut self, resync_every: Duration) -> Vec<JoinHandle<()>> {
        let triggers = Arc::new(tokio::sync::Mutex::new(
            self.triggers
                .take()
                .expect("spawn_background is called once"),
        ));
        let (elector, mut leadership) =
            Elector::new(self.store.clone(), self.holder.clone(), self.lease);
        let (stop, stopped) = watch::channel(false);
        self.election = Some((stop, tokio::spawn(elector.run(stopped))));
        self.leadership = Some(leadership.clone());
        self.state.metrics.set_leadership(leadership.clone());
        let reconciler = self.reconciler.clone();
        let gateway = self.gateway.clone();
        let store = self.store.clone();
        let retention = self.retention;
        let holder = self.holder.clone();
        let supervisor = tokio::spawn(async move {
            let mut running: Vec<JoinHandle<()>> = Vec::new();
            loop {
                let epoch = *leadership.borrow_and_update();
                running.drain(..).for_each(|h| h.abort());
                if let Some(epoch) = epoch {
                    let fence = store.is_postgres().then(|| Fence {
                        holder: holder.clone(),
                        epoch,
                    });
                    if let Some(fence) = &fence {
                        match store.adopt_open_tasks(fence).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(
                                epoch,
                                tasks = n,
                                "adopted the unfinished tasks of earlier leaders"
                            ),
                            Err(e) => {
                                tracing::warn!(epoch, error = %crate::error_chain(&e), "adopting unfinished tasks failed")
                            }
                        }
                    }
                    running = reconciler.clone().spawn_loops(
                        triggers.clone(),
                        resync_every,
                        fence.clone(),
                    );
                    running.push(gateway.spawn_liveness_monitor(fence.clone()));
                    running.push(crate::retention::spawn(store.clone(), retention, fence));
                } else {
                    // A standby hands its triggers to the leader (through the database).
                    let triggers = triggers.clone();
                    let store = store.clone();
                    running.push(tokio::spawn(async move {
                        let mut triggers = triggers.lock().await;
                        while let Some(id) = triggers.recv().await {
                            let payload = id.to_string();
                            if let Err(e) = store.announce(crate::store::channel::VM, &payload).await {
                                tracing::warn!(vm = %id, error = %crate::error_chain(&e), "handing a trigger to the leader failed");
                            }
                        }
                    }));
                }
                if leadership.changed().await.is_err() {
                    break;
                }
            }
            running.drain(..).for_each(|h| h.abort());
        });
        let relay = self.relay.clone().spawn(
            self.leadership.clone().expect("set above"),
            self.trigger.clone(),
        );
        vec![supervisor, relay]
    }

    /// Whether this replica leads, and at which epoch (after [`Daemon::spawn_background`]).
    pub fn leading(&self) -> Option<i64> {
        self.leadership.as_ref().and_then(|l| *l.borrow())
    }

    /// The leadership watch (after [`Daemon::spawn_background`]).
    /// Runs only this replica's relay, as a replica that never leads (no election, no
    /// loops): it serves the API and agent streams, delivers tasks to its agents and
    /// forwards nothing. Tests put several of these behind one client; returns once the
    /// relay listens.
    pub async fn spawn_relay_as_follower(&self) -> JoinHandle<()> {
        let (_never_leads, leadership) = watch::channel(None);
        let handle = self.relay.clone().spawn(leadership, self.trigger.clone());
        self.relay.listening().await;
        handle
    }

    pub fn leadership(&self) -> Option<Leadership> {
        self.leadership.clone()
    }

    /// Stops the election and gives the lease up so a standby takes over at once.
    pub async fn resign(&mut self) {
        if let Some((stop, handle)) = self.election.take() {
            let _ = stop.send(true);
            let _ = handle.await;
        }
    }

    /// [`Daemon::resign`] as soon as `signal` completes (a shutdown signal), without
    /// waiting for the servers to drain; the handle completes once resigned.
    pub fn resign_on(
        &mut self,
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        let election = self.election.take();
        tokio::spawn(async move {
            signal.await;
            if let Some((stop, handle)) = election {
                let _ = stop.send(true);
                let _ = handle.await;
            }
        })
    }
}
