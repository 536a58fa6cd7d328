//! Cross-replica relay on PostgreSQL LISTEN/NOTIFY: a task reaches its agent on whichever
//! replica holds the node's stream, task changes wake long-polls on every replica,
//! triggers from a standby reach the leader, sync calls (pause, logs, ...) and task
//! cancels run where the stream is, and a revoked node's session closes wherever it is.
//! On SQLite (one replica) every call here is local.

mod payload;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use otherix_api::proto::{server_message, CancelTask, SyncReply, SyncRequest};
use prost::Message;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use crate::error_chain;
use crate::events::TaskEvents;
use crate::gateway::{GatewayError, Sessions};
use crate::leader::Leadership;
use crate::store::{channel, Store, StoreError, SyncCallOutcome};
use otherix_api::TaskStatus;
pub use payload::{Announcement, SyncFailure};

/// How long a relayed sync call waits for the holder of the stream to claim it.
const CLAIM_WAIT: Duration = Duration::from_secs(3);
/// How often a waiting relayed call re-reads its row (a lost notification costs this).
const POLL_EVERY: Duration = Duration::from_millis(500);
/// Extra time a relayed call waits beyond the holder's own timeout.
const RELAY_SLACK: Duration = Duration::from_secs(2);
/// How often pending tasks of locally attached nodes are delivered again even without a
/// notification (a listener that reconnected may have missed some).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// One replica's end of the relay; cheap to share.
pub struct Relay {
    store: Store,
    sessions: Arc<Sessions>,
    events: TaskEvents,
    /// This replica's id (the leader election's holder id).
    me: String,
    /// Relayed sync calls this replica waits for, woken by `otherix_sync_done`.
    waiting: Mutex<HashMap<Uuid, Arc<Notify>>>,
    /// True while the listener is connected and listening on every channel.
    listening: watch::Sender<bool>,
}

impl Relay {
    pub fn new(store: Store, sessions: Arc<Sessions>, events: TaskEvents, me: String) -> Relay {
        Relay {
            store,
            sessions,
            events,
            me,
            waiting: Mutex::default(),
            listening: watch::Sender::new(false),
        }
    }

    /// Waits until the listener hears every channel (at once on SQLite, where there is
    /// nothing to hear). Announcements made before that are only caught by the sweep.
    pub async fn listening(&self) {
        if !self.store.is_postgres() {
            return;
        }
        let mut rx = self.listening.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|on| *on).await;
    }

    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// Runs `op` (pause, resume, reset) on a VM's agent; see [`Relay::sync_request`].
    pub async fn sync(
        &self,
        node: &str,
        op: &str,
        vm_id: Uuid,
        timeout: Duration,
    ) -> Result<SyncReply, GatewayError> {
        self.sync_request(node, crate::gateway::op_request(op, vm_id), timeout)
            .await
    }

    /// Sends a sync request to `node`'s agent and waits for its reply: over this replica's
    /// stream when it holds it, else through the replica that does (a `sync_calls` row).
    pub async fn sync_request(
        &self,
        node: &str,
        request: SyncRequest,
        timeout: Duration,
    ) -> Result<SyncReply, GatewayError> {
        if !self.store.is_postgres() || self.sessions.is_attached(node) {
            return self.sessions.sync_request(node, request, timeout).await;
        }
        match self.store.stream_replica(node).await? {
            Some(holder) if holder != self.me => {}
            // No stream, or a record of our own stream that is already gone.
            _ => return Err(GatewayError::NotAttached(node.to_owned())),
        }
        let id = Uuid::new_v4();
        let woken = Arc::new(Notify::new());
        self.waiting
            .lock()
            .expect("relay waiters poisoned")
            .insert(id, woken.clone());
        let result = self.relayed_call(id, node, &request, timeout, &woken).await;
        self.waiting
            .lock()
            .expect("relay waiters poisoned")
            .remove(&id);
        if let Err(e) = self.store.delete_sync_call(id).await {
            tracing::warn!(call = %id, error = %error_chain(&e), "removing a relayed sync call failed");
        }
        result
    }

    async fn relayed_call(
        &self,
        id: Uuid,
        node: &str,
        request: &SyncRequest,
        timeout: Duration,
        woken: &Notify,
    ) -> Result<SyncReply, GatewayError> {
        let started = Instant::now();
        let request_hex = hex::encode(request.encode_to_vec());
        self.store
            .insert_sync_call(id, node, &request_hex, timeout.as_millis() as i64)
            .await?;
        loop {
            let _ = tokio::time::timeout(POLL_EVERY, woken.notified()).await;
            let (claimed, outcome) = self.store.sync_call_state(id).await?;
            match outcome {
                Some(SyncCallOutcome::Reply(hex_reply)) => {
                    return decode_reply(&hex_reply).map_err(GatewayError::Protocol)
                }
                Some(SyncCallOutcome::Error(e)) => {
                    return Err(SyncFailure::parse(&e).into_error(node))
                }
                None => {}
            }
            let waited = started.elapsed();
            if !claimed && waited >= CLAIM_WAIT {
                return Err(GatewayError::NotAttached(node.to_owned()));
            }
            if waited >= timeout + RELAY_SLACK {
                return Err(GatewayError::SyncTimeout {
                    node: node.to_owned(),
                    secs: timeout.as_secs(),
                });
            }
        }
    }

    /// Asks `node`'s agent to cancel a task, wherever its stream is; false when no
    /// replica holds the node's stream.
    pub async fn cancel_task(&self, node: &str, task_id: Uuid) -> Result<bool, StoreError> {
        let body = server_message::Body::Cancel(CancelTask {
            task_id: task_id.to_string(),
        });
        if self.sessions.send(node, body) {
            return Ok(true);
        }
        if !self.store.is_postgres() {
            return Ok(false);
        }
        match self.store.stream_replica(node).await? {
            Some(holder) if holder != self.me => {
                self.store
                    .announce(
                        channel::CANCEL,
                        &Announcement::cancel_payload(task_id, node),
                    )
                    .await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Closes `node`'s session on every replica; returns whether this one held it.
    pub async fn kick(&self, node: &str, why: &str) -> Result<bool, StoreError> {
        let dropped = self
            .sessions
            .kick(node, tonic::Status::permission_denied(why.to_owned()));
        self.store.announce(channel::KICK, node).await?;
        Ok(dropped)
    }

    /// Listens for announcements until aborted (PostgreSQL only; returns at once on
    /// SQLite). `leading` tells whether VM triggers from other replicas go to `trigger`.
    pub fn spawn(
        self: Arc<Self>,
        leading: Leadership,
        trigger: mpsc::UnboundedSender<Uuid>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            if !self.store.is_postgres() {
                return;
            }
            loop {
                let mut listener = match self.listen().await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %error_chain(&e), "relay cannot listen; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                self.listening.send_replace(true);
                // Whatever was announced while not listening.
                self.deliver_pending().await;
                let mut sweep = tokio::time::interval(SWEEP_EVERY);
                sweep.tick().await;
                loop {
                    tokio::select! {
                        next = listener.try_recv() => match next {
                            Ok(Some(n)) => match Announcement::parse(n.channel(), n.payload()) {
                                Some(a) => self.clone().handle(a, &leading, &trigger),
                                None => tracing::warn!(channel = n.channel(), payload = n.payload(), "unreadable relay announcement"),
                            },
                            Ok(None) => {
                                tracing::warn!("relay listener connection lost; reconnecting");
                                self.listening.send_replace(false);
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(error = %error_chain(&e), "relay listener failed; reconnecting");
                                self.listening.send_replace(false);
                                break;
                            }
                        },
                        _ = sweep.tick() => self.deliver_pending().await,
                    }
                }
            }
        })
    }

    async fn listen(&self) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
        let mut l = sqlx::postgres::PgListener::connect(self.store.database_url()).await?;
        l.listen_all(channel::ALL).await?;
        Ok(l)
    }

    fn handle(
        self: Arc<Self>,
        a: Announcement,
        leading: &Leadership,
        trigger: &mpsc::UnboundedSender<Uuid>,
    ) {
        match a {
            Announcement::Task { id, status, node } => {
                self.events.task_changed(id);
                let deliver = status == TaskStatus::Pending
                    && node
                        .as_deref()
                        .is_some_and(|n| self.sessions.is_attached(n));
                if deliver {
                    tokio::spawn(async move {
                        if let Err(e) = self.deliver(id).await {
                            tracing::warn!(task = %id, error = %error_chain(&e), "delivering a task failed");
                        }
                    });
                }
            }
            Announcement::Vm(id) => {
                if leading.borrow().is_some() {
                    let _ = trigger.send(id);
                }
            }
            Announcement::Sync { id, node } => {
                if self.sessions.is_attached(&node) {
                    tokio::spawn(async move { self.serve_sync_call(id).await });
                }
            }
            Announcement::SyncDone(id) => {
                let woken = self
                    .waiting
                    .lock()
                    .expect("relay waiters poisoned")
                    .get(&id)
                    .cloned();
                if let Some(w) = woken {
                    w.notify_one();
                }
            }
            Announcement::Cancel { task, node } => {
                self.sessions.send(
                    &node,
                    server_message::Body::Cancel(CancelTask {
                        task_id: task.to_string(),
                    }),
                );
            }
            Announcement::Event(_) => crate::events::ring(),
            Announcement::Kick(node) => {
                if self.sessions.kick(
                    &node,
                    tonic::Status::permission_denied(format!(
                        "the certificate of node {node} was revoked"
                    )),
                ) {
                    tracing::warn!(node, "session closed: node revoked on another replica");
                }
            }
        }
    }

    /// Sends a pending task to its agent if this replica holds the node's stream.
    async fn deliver(&self, id: Uuid) -> Result<(), StoreError> {
        let Some(task) = self.store.task(id).await? else {
            return Ok(());
        };
        if task.status != TaskStatus::Pending {
            return Ok(());
        }
        let Some(vm_id) = task.vm_id else {
            return Ok(());
        };
        if let Some(vm) = self.store.vm_by_id(vm_id).await? {
            if self.sessions.dispatch(&task, &vm) {
                tracing::info!(task = %task.id, kind = %task.kind, vm = %vm.name, node = ?task.node, "task dispatched");
            }
        }
        Ok(())
    }

    /// Delivers every pending task of the nodes attached here.
    async fn deliver_pending(&self) {
        for node in self.sessions.attached_nodes() {
            let tasks = match self.store.open_tasks_for_node(&node).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(node, error = %error_chain(&e), "reading pending tasks failed");
                    continue;
                }
            };
            for task in tasks
                .into_iter()
                .filter(|t| t.status == TaskStatus::Pending)
            {
                if let Err(e) = self.deliver(task.id).await {
                    tracing::warn!(task = %task.id, error = %error_chain(&e), "delivering a task failed");
                }
            }
        }
    }

    /// Claims a relayed sync call, runs it over the local stream and writes the outcome.
    async fn serve_sync_call(&self, id: Uuid) {
        let row = match self.store.claim_sync_call(id, &self.me).await {
            Ok(Some(row)) => row,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(call = %id, error = %error_chain(&e), "claiming a sync call failed");
                return;
            }
        };
        let outcome = match decode_request(&row.request) {
            Err(e) => SyncCallOutcome::Error(SyncFailure::Other(e).to_string()),
            Ok(request) => {
                let timeout = Duration::from_millis(row.timeout_ms.max(0) as u64);
                match self
                    .sessions
                    .sync_request(&row.node, request, timeout)
                    .await
                {
                    Ok(reply) => SyncCallOutcome::Reply(hex::encode(reply.encode_to_vec())),
                    Err(e) => SyncCallOutcome::Error(SyncFailure::of(&e).to_string()),
                }
            }
        };
        if let Err(e) = self.store.finish_sync_call(id, &outcome).await {
            tracing::warn!(call = %id, error = %error_chain(&e), "writing a sync call's reply failed");
        }
    }
}

fn decode_request(hex_request: &str) -> Result<SyncRequest, String> {
    let bytes = hex::decode(hex_request).map_err(|e| format!("sync call request: {e}"))?;
    SyncRequest::decode(bytes.as_slice()).map_err(|e| format!("sync call request: {e}"))
}

fn decode_reply(hex_reply: &str) -> Result<SyncReply, String> {
    let bytes = hex::decode(hex_reply).map_err(|e| format!("sync call reply: {e}"))?;
    SyncReply::decode(bytes.as_slice()).map_err(|e| format!("sync call reply: {e}"))
}
