//! The agent gateway: the tonic `AgentGateway` server agents attach to. Registration
//! (node, pools, re-adopted VMs, task redelivery), heartbeats and node liveness, task
//! updates and unsolicited VM reports folded into the store, and sync-reply routing.
//! Over TLS ([`Gateway::with_pki`]) agents enroll with a join token ([`identity`]) and are
//! identified by their client certificate, never by what their messages say.

mod console;
mod heartbeats;
mod identity;
mod observe;
mod sessions;
#[cfg(test)]
mod tests;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use otherix_api::proto::agent_gateway_server::{AgentGateway, AgentGatewayServer};
use otherix_api::proto::{
    agent_message, server_message, AgentMessage, ConsoleFrame, EnrollRequest, EnrollResponse,
    Register, Registered, ServerMessage, TaskState, TaskUpdate, VmReport,
};
use otherix_api::{ErrorBody, ErrorCode, TaskKind, TaskProgress, TaskStatus, VmPhase};
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::error_chain;
use crate::events::TaskEvents;
use crate::locks::VmLocks;
use crate::pki::Pki;
use crate::reconcile::retry::Backoff;
use crate::reconcile::ReconcileTrigger;
use crate::store::{NodeRegistration, Store, StoreError, CAS_ATTEMPTS};
pub use console::{ConsoleLink, ConsoleRendezvous, PendingConsole};
pub use heartbeats::{HeartbeatBook, Liveness, DEFAULT_NODE_GRACE, NODE_GRACE_RANGE};
pub use identity::{check_claim, IdentityError};
pub use observe::{apply_task_outcome, apply_vm_report, TaskOutcome};
pub use sessions::{op_request, task_assignment, Outbox, Sessions};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("node {0} has no agent attached")]
    NotAttached(String),
    #[error("the agent of node {0} detached before replying")]
    SessionClosed(String),
    #[error("the agent of node {node} did not reply within {secs} s")]
    SyncTimeout { node: String, secs: u64 },
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("the replica holding the stream of node {node} failed the call: {message}")]
    Relay { node: String, message: String },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("store")]
    Store(#[from] StoreError),
}

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Status {
        match e {
            GatewayError::Protocol(m) => Status::invalid_argument(m),
            GatewayError::Identity(e) => Status::new(e.code(), e.to_string()),
            GatewayError::Store(ref inner) => {
                tracing::error!(error = %error_chain(inner), "gateway store error");
                Status::internal("internal error")
            }
            other => Status::unavailable(other.to_string()),
        }
    }
}

/// The gateway state; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    store: Store,
    sessions: Arc<Sessions>,
    locks: Arc<VmLocks>,
    events: TaskEvents,
    trigger: ReconcileTrigger,
    /// Delays of retries after failed tasks and crashes.
    backoff: Backoff,
    /// Set when the gateway runs over TLS: agents enroll and attach with certificates.
    pki: Option<Arc<Pki>>,
    /// This replica's id, recorded on the node while its stream is attached here.
    replica: Arc<str>,
    /// The grace period of node liveness.
    liveness: Liveness,
    /// Heartbeat writes of the nodes attached here.
    heartbeats: Arc<HeartbeatBook>,
    /// `otherix_vm_create_to_running_seconds`, observed when a vm.create succeeds.
    create_to_running: Option<Histogram>,
    /// Console sessions waiting for their agent to dial back.
    consoles: Arc<ConsoleRendezvous>,
}

impl Gateway {
    pub fn new(
        store: Store,
        sessions: Arc<Sessions>,
        locks: Arc<VmLocks>,
        events: TaskEvents,
        trigger: ReconcileTrigger,
    ) -> Self {
        Gateway {
            store,
            sessions,
            locks,
            events,
            trigger,
            backoff: Backoff::default(),
            pki: None,
            replica: Arc::from(""),
            liveness: Liveness::default(),
            heartbeats: Arc::default(),
            create_to_running: None,
            consoles: Arc::default(),
        }
    }

    /// Console sessions waiting for their agent's stream.
    pub fn consoles(&self) -> &Arc<ConsoleRendezvous> {
        &self.consoles
    }

    /// Observes the create-to-running time of every vm.create that succeeds into `h`.
    pub fn with_create_to_running(mut self, h: Histogram) -> Self {
        self.create_to_running = Some(h);
        self
    }

    /// Node liveness with this grace period (`--node-grace-period`).
    pub fn with_liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = liveness;
        self
    }

    /// The replica id recorded as the holder of the streams attached here.
    pub fn with_replica_id(mut self, replica: &str) -> Self {
        self.replica = Arc::from(replica);
        self
    }

    /// Runs the gateway over TLS with this PKI: `Enroll` signs node certificates and
    /// `Attach` takes the node from the client certificate.
    pub fn with_pki(mut self, pki: Option<Arc<Pki>>) -> Self {
        self.pki = pki;
        self
    }

    /// Retries after failed tasks and crashes wait `backoff` (short in tests).
    pub fn with_retry_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// The tonic service to mount on the agent listener.
    pub fn into_server(self) -> AgentGatewayServer<Gateway> {
        AgentGatewayServer::new(self)
    }

    /// Records the node, its pools and the VMs it reports; returns the node id.
    pub async fn register(&self, reg: &Register) -> Result<Uuid, GatewayError> {
        if reg.node.is_empty() {
            return Err(GatewayError::Protocol("Register.node is empty".into()));
        }
        let node_id = self
            .store
            .register_node(&NodeRegistration {
                name: reg.node.clone(),
                arch: reg.host_arch.clone(),
                guest_arches: reg.guest_arches.clone(),
                accel: reg.accel.clone(),
                vcpus: reg.vcpus,
                memory_mb: reg.memory_mb,
                agent_version: reg.agent_version.clone(),
                pools: reg
                    .pools
                    .iter()
                    .map(|p| (p.name.clone(), p.path.clone()))
                    .collect(),
                allow_file_urls: reg.allow_file_urls,
                firmware_dirs: reg.firmware_dirs.clone(),
            })
            .await?;
        for report in &reg.vms {
            self.apply_vm_report(&reg.node, report).await?;
        }
        tracing::info!(node = %reg.node, vms = reg.vms.len(), pools = reg.pools.len(), "node registered");
        Ok(node_id)
    }

    /// Handles one message of an attached agent.
    pub async fn handle_message(&self, node: &str, msg: AgentMessage) -> Result<(), GatewayError> {
        match msg.body {
            Some(agent_message::Body::Heartbeat(_)) => self.heartbeat(node),
            Some(agent_message::Body::TaskUpdate(u)) => self.apply_task_update(node, &u).await?,
            Some(agent_message::Body::VmReport(r)) => self.apply_vm_report(node, &r).await?,
            Some(agent_message::Body::SyncReply(r)) => {
                if !self.sessions.complete_sync(r) {
                    tracing::warn!(node, "sync reply nobody waits for (late or unknown)");
                }
            }
            // Kept in memory only; `/metrics` shows a VM's counters only if it is placed on
            // the reporting node.
            Some(agent_message::Body::NodeStats(s)) => self.sessions.record_stats(node, s.vms),
            Some(agent_message::Body::Register(_)) => {
                return Err(GatewayError::Protocol("Register sent twice".into()))
            }
            None => return Err(GatewayError::Protocol("empty AgentMessage".into())),
        }
        Ok(())
    }

    /// Persists the heartbeat when one is due, in the background: a slow database never
    /// holds up the agent's stream.
    fn heartbeat(&self, node: &str) {
        let started = tokio::time::Instant::now();
        if !self
            .heartbeats
            .begin(node, started, self.liveness.persist_every())
        {
            return;
        }
        let (store, book, node) = (self.store.clone(), self.heartbeats.clone(), node.to_owned());
        tokio::spawn(async move {
            let ok = match store.node_heartbeat(&node).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(node, error = %error_chain(&e), "recording a heartbeat failed");
                    false
                }
            };
            book.end(&node, started, ok);
        });
    }

    /// Folds a TaskUpdate into the task row and, when terminal, into the VM.
    pub async fn apply_task_update(&self, node: &str, u: &TaskUpdate) -> Result<(), GatewayError> {
        let Ok(task_id) = Uuid::parse_str(&u.task_id) else {
            return Err(GatewayError::Protocol(format!(
                "task id {:?} is not a uuid",
                u.task_id
            )));
        };
        let Some(peek) = self.store.task(task_id).await? else {
            tracing::warn!(node, task = %task_id, "update for an unknown task");
            return Ok(());
        };
        let _guard = match peek.vm_id {
            Some(vm_id) => Some(self.locks.lock(vm_id).await),
            None => None,
        };
        let Some(mut task) = self.store.task(task_id).await? else {
            return Ok(());
        };
        if task.node.as_deref() != Some(node) {
            tracing::warn!(node, task = %task_id, owner = ?task.node, "update from a node the task is not assigned to");
            return Ok(());
        }
        if task.status.is_terminal() {
            return Ok(()); // a re-sent final update
        }
        let now = self.store.now_ms();
        task.started_at_ms.get_or_insert(now);
        if !u.phase.is_empty() || u.bytes_total > 0 {
            task.progress = Some(TaskProgress {
                phase: u.phase.clone(),
                bytes_done: (u.bytes_total > 0 || u.bytes_done > 0).then_some(u.bytes_done),
                bytes_total: (u.bytes_total > 0).then_some(u.bytes_total),
            });
        }
        let outcome = match u.state() {
            TaskState::Running | TaskState::Unspecified => None,
            TaskState::Succeeded => Some((TaskStatus::Success, TaskOutcome::Succeeded)),
            TaskState::Failed => Some((
                TaskStatus::Failed,
                TaskOutcome::Failed(error_body(u, ErrorCode::Internal)),
            )),
            TaskState::Cancelled => Some((
                TaskStatus::Cancelled,
                TaskOutcome::Failed(error_body(u, ErrorCode::Cancelled)),
            )),
        };
        match outcome {
            None => {
                task.status = TaskStatus::Running;
                self.store.save_task(&task).await?;
            }
            Some((status, outcome)) => {
                task.status = status;
                task.finished_at_ms = Some(now);
                if let TaskOutcome::Failed(e) = &outcome {
                    task.error = Some(e.clone());
                }
                // Compare-and-swap on the VM: a write another replica made since the
                // read is read again and the outcome folded into it.
                let mut attempt = 1;
                loop {
                    let vm = match task.vm_id {
                        Some(id) => self.store.vm_by_id(id).await?,
                        None => None,
                    };
                    let Some(mut vm) = vm else {
                        self.store.save_task(&task).await?;
                        break;
                    };
                    apply_task_outcome(
                        &mut vm,
                        task.kind,
                        &outcome,
                        u.vm.as_ref(),
                        now,
                        &self.backoff,
                    );
                    match self.store.save_vm_and_task(&mut vm, &task).await {
                        Err(e) if e.is_conflict() && attempt < CAS_ATTEMPTS => attempt += 1,
                        Err(e) => return Err(e.into()),
                        Ok(()) => {
                            tracing::info!(task = %task.id, kind = %task.kind, vm = %vm.name, status = %task.status, phase = %vm.phase, "task finished");
                            if let Some(h) = &self.create_to_running {
                                if task.kind == TaskKind::VmCreate
                                    && task.status == TaskStatus::Success
                                    && vm.phase == VmPhase::Running
                                {
                                    h.observe((now - task.created_at_ms).max(0) as f64 / 1000.0);
                                }
                            }
                            break;
                        }
                    }
                }
            }
        }
        self.events.task_changed(task.id);
        if let Some(vm_id) = task.vm_id {
            let _ = self.trigger.send(vm_id);
        }
        Ok(())
    }

    /// Folds a VmReport from `node` into its VM (ignored while a task is in flight: the
    /// task's final update settles the VM).
    pub async fn apply_vm_report(&self, node: &str, report: &VmReport) -> Result<(), GatewayError> {
        let Ok(vm_id) = Uuid::parse_str(&report.vm_id) else {
            return Err(GatewayError::Protocol(format!(
                "vm id {:?} is not a uuid",
                report.vm_id
            )));
        };
        let _guard = self.locks.lock(vm_id).await;
        let mut attempt = 1;
        loop {
            let Some(mut vm) = self.store.vm_by_id(vm_id).await? else {
                tracing::warn!(node, vm = %vm_id, "report for a vm this server does not know");
                return Ok(());
            };
            if vm.deleted_at_ms.is_some()
                || vm.node.as_deref() != Some(node)
                || vm.current_task.is_some()
            {
                return Ok(());
            }
            if !apply_vm_report(&mut vm, report, self.store.now_ms(), &self.backoff) {
                return Ok(());
            }
            match self.store.save_vm(&mut vm).await {
                // Another replica wrote the VM since the read: fold the report into that.
                Err(e) if e.is_conflict() && attempt < CAS_ATTEMPTS => attempt += 1,
                Err(e) => return Err(e.into()),
                Ok(()) => {
                    tracing::info!(vm = %vm.name, node, phase = %vm.phase, "vm report applied");
                    let _ = self.trigger.send(vm_id);
                    return Ok(());
                }
            }
        }
    }

    /// Marks not ready the nodes without a persisted heartbeat for the grace period (the
    /// leader's job, fenced).
    pub fn spawn_liveness_monitor(&self, fence: Option<crate::store::Fence>) -> JoinHandle<()> {
        let store = self.store.clone();
        let liveness = self.liveness;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(liveness.sweep_every());
            let grace_ms = i64::try_from(liveness.grace.as_millis()).unwrap_or(i64::MAX);
            loop {
                tick.tick().await;
                let cutoff = store.now_ms().saturating_sub(grace_ms);
                match store
                    .mark_stale_nodes_not_ready(cutoff, fence.as_ref())
                    .await
                {
                    Ok(nodes) => {
                        for node in nodes {
                            tracing::warn!(
                                node,
                                grace_secs = liveness.grace.as_secs_f64(),
                                "no heartbeat from the node within the grace period; not ready"
                            );
                        }
                    }
                    Err(e) => tracing::warn!(error = %error_chain(&e), "liveness check failed"),
                }
            }
        })
    }

    /// After Register: answer Registered, attach the session, redeliver open tasks.
    async fn open_session(
        &self,
        node: &str,
        node_id: Uuid,
        outbox: &Outbox,
    ) -> Result<u64, GatewayError> {
        let registered = server_message::Body::Registered(Registered {
            node_id: node_id.to_string(),
            heartbeat_interval_ms: self.liveness.heartbeat_every().as_millis() as u32,
        });
        let _ = outbox.try_send(Ok(ServerMessage {
            body: Some(registered),
        }));
        // Attach before reading open tasks: a task emitted in between is then dispatched
        // (and maybe redelivered too; agents are idempotent by task id).
        let session = self.sessions.attach(node, outbox.clone());
        self.store.set_stream_replica(node, &self.replica).await?;
        let mut redeliver = Vec::new();
        for task in self.store.open_tasks_for_node(node).await? {
            let Some(vm_id) = task.vm_id else { continue };
            if let Some(vm) = self.store.vm_by_id(vm_id).await? {
                redeliver.push((task.id, task.kind, task_assignment(&task, &vm)));
            }
        }
        // Redelivery waits for room in the bounded outbox, which drains only once the
        // stream is handed to tonic: send from a task so attach can return first.
        let (outbox, node_name) = (outbox.clone(), node.to_owned());
        tokio::spawn(async move {
            for (id, kind, assignment) in redeliver {
                let body = server_message::Body::Task(assignment);
                if outbox
                    .send(Ok(ServerMessage { body: Some(body) }))
                    .await
                    .is_err()
                {
                    break;
                }
                tracing::info!(node = node_name, task = %id, %kind, "task redelivered");
            }
        });
        for vm_id in self.store.live_vm_ids_on_node(node).await? {
            let _ = self.trigger.send(vm_id);
        }
        Ok(session)
    }

    async fn read_agent_stream(
        self,
        node: String,
        session: u64,
        mut inbound: Streaming<AgentMessage>,
    ) {
        loop {
            let next = tokio::select! {
                next = inbound.message() => next,
                () = self.sessions.kicked(session) => {
                    tracing::warn!(node, "session closed by the server (credentials revoked)");
                    break;
                }
            };
            if self.sessions.is_kicked(session) {
                break;
            }
            match next {
                Ok(Some(msg)) => {
                    if let Err(e) = self.handle_message(&node, msg).await {
                        tracing::warn!(node, error = %error_chain(&e), "agent message rejected");
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::warn!(node, error = %status.message(), "agent stream failed");
                    break;
                }
            }
        }
        if self.sessions.detach(&node, session) {
            self.heartbeats.forget(&node);
            // Unless the agent already attached to another replica.
            match self.store.release_stream(&node, &self.replica).await {
                Ok(true) => tracing::warn!(node, "agent detached; node not ready"),
                Ok(false) => {
                    tracing::info!(node, "agent detached; its stream is on another replica now")
                }
                Err(e) => {
                    tracing::warn!(node, error = %error_chain(&e), "marking node not ready failed")
                }
            }
        }
    }
}

fn error_body(u: &TaskUpdate, default: ErrorCode) -> ErrorBody {
    if u.error_code.is_empty() {
        ErrorBody {
            code: default,
            message: if u.error_message.is_empty() {
                format!(
                    "the agent reported the task {}",
                    if default == ErrorCode::Cancelled {
                        "cancelled"
                    } else {
                        "failed"
                    }
                )
            } else {
                u.error_message.clone()
            },
        }
    } else {
        ErrorBody {
            code: ErrorCode::from_wire(&u.error_code),
            message: u.error_message.clone(),
        }
    }
}

impl Gateway {
    /// The peer's address (for logs) and, over TLS, the node its verified client
    /// certificate names (`None` with `--insecure-http`); a refused certificate is the
    /// status the agent gets.
    async fn identify<T>(&self, request: &Request<T>) -> Result<(String, Option<String>), Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".into());
        if self.pki.is_none() {
            return Ok((peer, None));
        }
        let certs = request.peer_certs();
        match self
            .authenticate_peer(certs.as_deref().map(|c| &c[..]))
            .await
        {
            Ok(node) => Ok((peer, Some(node))),
            Err(e) => Err(refuse(&peer, None, e)),
        }
    }
}

type ServerStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;
type ConsoleStream = Pin<Box<dyn Stream<Item = Result<ConsoleFrame, Status>> + Send>>;

#[tonic::async_trait]
impl AgentGateway for Gateway {
    type AttachStream = ServerStream;

    async fn attach(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let (peer, cert_node) = self.identify(&request).await?;
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before Register"))?;
        let Some(agent_message::Body::Register(reg)) = first.body else {
            return Err(Status::invalid_argument(
                "the first message must be Register",
            ));
        };
        if let Some(cert_node) = &cert_node {
            if let Err(e) = check_claim(cert_node, &reg.node) {
                return Err(refuse(&peer, Some(&reg.node), e.into()));
            }
        }
        let node_id = self.register(&reg).await?;
        let (outbox, rx) = mpsc::channel(sessions::SESSION_OUTBOX_CAPACITY);
        let session = self.open_session(&reg.node, node_id, &outbox).await?;
        tokio::spawn(
            self.clone()
                .read_agent_stream(reg.node.clone(), session, inbound),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ConsoleStream = ConsoleStream;

    async fn console(
        &self,
        request: Request<Streaming<ConsoleFrame>>,
    ) -> Result<Response<Self::ConsoleStream>, Status> {
        let (_, cert_node) = self.identify(&request).await?;
        let rx = self
            .consoles
            .arrive(cert_node.as_deref(), request.into_inner())
            .await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".into());
        match self.enroll_node(request.get_ref()).await {
            Ok(resp) => Ok(Response::new(resp)),
            Err(e) => {
                if matches!(e, GatewayError::Identity(_)) {
                    tracing::warn!(peer, reason = %e, "enrollment refused");
                }
                Err(e.into())
            }
        }
    }
}

/// Logs why an agent is refused (with its address and claimed node) and turns the reason
/// into the status it receives.
fn refuse(peer: &str, claimed: Option<&str>, e: GatewayError) -> Status {
    match &e {
        GatewayError::Identity(reason) => {
            tracing::warn!(peer, node = claimed.unwrap_or("-"), %reason, "agent refused")
        }
        other => tracing::warn!(peer, error = %error_chain(other), "agent authentication failed"),
    }
    e.into()
}
