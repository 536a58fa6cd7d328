//! Attached agents: one outbound channel per node, task dispatch, and the request/reply
//! correlation of synchronous operations (pause, resume, reset).
//!
//! Each agent's outbound channel is bounded ([`SESSION_OUTBOX_CAPACITY`]). Sending never
//! blocks a caller: when an agent stops reading and its channel fills up, its session is
//! closed instead of the queue growing; the agent reconnects, registers again and gets
//! every unfinished task redelivered.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use otherix_api::proto::{
    server_message, FirmwareRef, ServerMessage, SyncReply, SyncRequest, TaskAssignment, VmStats,
};
use tokio::sync::{mpsc, oneshot, Notify};
use tonic::Status;
use uuid::Uuid;

use super::GatewayError;
use crate::model::{TaskRecord, VmRecord};

/// Messages queued for one agent before its session is closed as not reading.
pub const SESSION_OUTBOX_CAPACITY: usize = 1024;

/// The stream of messages to one agent.
pub type Outbox = mpsc::Sender<Result<ServerMessage, Status>>;

struct Session {
    id: u64,
    outbox: Outbox,
}

struct PendingSync {
    node: String,
    reply: oneshot::Sender<SyncReply>,
}

/// The SyncRequest of a VM op (pause, resume, reset).
pub fn op_request(op: &str, vm_id: Uuid) -> SyncRequest {
    SyncRequest {
        op: op.to_owned(),
        vm_id: vm_id.to_string(),
        ..Default::default()
    }
}

#[derive(Default)]
pub struct Sessions {
    nodes: Mutex<HashMap<String, Session>>,
    pending_sync: Mutex<HashMap<String, PendingSync>>,
    next_id: AtomicU64,
    /// Sessions closed by the server ([`Sessions::kick`]); their reader stops.
    kicked: Mutex<HashSet<u64>>,
    kick: Notify,
    /// The last `NodeStats` of each node attached here (for `/metrics`).
    stats: Mutex<HashMap<String, Vec<VmStats>>>,
}

impl Sessions {
    /// Registers the outbox of a freshly attached agent, replacing an older session of
    /// the same node. Returns the session id for [`Sessions::detach`].
    pub fn attach(&self, node: &str, outbox: Outbox) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.nodes
            .lock()
            .expect("sessions poisoned")
            .insert(node.to_owned(), Session { id, outbox });
        id
    }

    /// Keeps `stats` as the node's latest VM counters.
    pub fn record_stats(&self, node: &str, stats: Vec<VmStats>) {
        self.stats
            .lock()
            .expect("stats poisoned")
            .insert(node.to_owned(), stats);
    }

    /// The latest VM counters of every node attached here, as (node, counters).
    pub fn stats(&self) -> Vec<(String, VmStats)> {
        let stats = self.stats.lock().expect("stats poisoned");
        stats
            .iter()
            .flat_map(|(node, vms)| vms.iter().map(move |v| (node.clone(), v.clone())))
            .collect()
    }

    /// Removes the session if it is still the node's current one; returns whether it was.
    /// Pending sync requests to the node fail (their senders drop).
    pub fn detach(&self, node: &str, session_id: u64) -> bool {
        let mut nodes = self.nodes.lock().expect("sessions poisoned");
        if nodes.get(node).map(|s| s.id) != Some(session_id) {
            return false;
        }
        nodes.remove(node);
        drop(nodes);
        self.stats.lock().expect("stats poisoned").remove(node);
        self.pending_sync
            .lock()
            .expect("pending sync poisoned")
            .retain(|_, p| p.node != node);
        true
    }

    /// Closes the node's current session from the server side: the agent's stream ends
    /// with `status`, the session is removed (its pending syncs fail) and its reader stops
    /// handling messages. Returns whether a session was attached.
    pub fn kick(&self, node: &str, status: Status) -> bool {
        let removed = self.nodes.lock().expect("sessions poisoned").remove(node);
        let Some(session) = removed else {
            return false;
        };
        self.stats.lock().expect("stats poisoned").remove(node);
        self.kicked
            .lock()
            .expect("kicked poisoned")
            .insert(session.id);
        // A full queue cannot take the status; dropping the sender still ends the stream.
        let _ = session.outbox.try_send(Err(status));
        self.pending_sync
            .lock()
            .expect("pending sync poisoned")
            .retain(|_, p| p.node != node);
        self.kick.notify_waiters();
        true
    }

    /// Whether `session_id` was closed by [`Sessions::kick`].
    pub fn is_kicked(&self, session_id: u64) -> bool {
        self.kicked
            .lock()
            .expect("kicked poisoned")
            .contains(&session_id)
    }

    /// Resolves once `session_id` is kicked.
    pub async fn kicked(&self, session_id: u64) {
        loop {
            let notified = self.kick.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_kicked(session_id) {
                return;
            }
            notified.await;
        }
    }

    /// The nodes whose agents are attached here.
    /// Ends every session with `status` (a replica shutting down): each agent sees its
    /// stream end at once and fails over to its next server. Returns how many ended.
    pub fn kick_all(&self, status: &Status) -> usize {
        self.attached_nodes()
            .iter()
            .filter(|node| self.kick(node, status.clone()))
            .count()
    }

    pub fn attached_nodes(&self) -> Vec<String> {
        self.nodes
            .lock()
            .expect("sessions poisoned")
            .keys()
            .cloned()
            .collect()
    }

    pub fn is_attached(&self, node: &str) -> bool {
        self.nodes
            .lock()
            .expect("sessions poisoned")
            .contains_key(node)
    }

    /// Sends one message to the node's agent; false when it is not attached. An agent
    /// whose queue is full is detached (its stream ends, it reconnects).
    pub fn send(&self, node: &str, body: server_message::Body) -> bool {
        let mut nodes = self.nodes.lock().expect("sessions poisoned");
        let Some(session) = nodes.get(node) else {
            return false;
        };
        match session
            .outbox
            .try_send(Ok(ServerMessage { body: Some(body) }))
        {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    node,
                    capacity = SESSION_OUTBOX_CAPACITY,
                    "agent is not reading its stream; closing its session"
                );
                let removed = nodes.remove(node);
                drop(nodes);
                if let Some(session) = removed {
                    // Like a kick: the reader stops, the stream ends once drained.
                    self.kicked
                        .lock()
                        .expect("kicked poisoned")
                        .insert(session.id);
                    self.kick.notify_waiters();
                }
                self.pending_sync
                    .lock()
                    .expect("pending sync poisoned")
                    .retain(|_, p| p.node != node);
                false
            }
        }
    }

    /// Sends a task to its node; false when the node is not attached (the task stays
    /// pending and is redelivered when the agent registers).
    pub fn dispatch(&self, task: &TaskRecord, vm: &VmRecord) -> bool {
        match &task.node {
            Some(node) => self.send(node, server_message::Body::Task(task_assignment(task, vm))),
            None => false,
        }
    }

    /// Sends `request` (its `request_id` is assigned here) and waits for its SyncReply.
    pub async fn sync_request(
        &self,
        node: &str,
        mut request: SyncRequest,
        timeout: Duration,
    ) -> Result<SyncReply, GatewayError> {
        let request_id = Uuid::new_v4().to_string();
        request.request_id = request_id.clone();
        let (tx, rx) = oneshot::channel();
        self.pending_sync
            .lock()
            .expect("pending sync poisoned")
            .insert(
                request_id.clone(),
                PendingSync {
                    node: node.to_owned(),
                    reply: tx,
                },
            );
        let sent = self.send(node, server_message::Body::SyncRequest(request));
        if !sent {
            self.forget_sync(&request_id);
            return Err(GatewayError::NotAttached(node.to_owned()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(GatewayError::SessionClosed(node.to_owned())),
            Err(_) => {
                self.forget_sync(&request_id);
                Err(GatewayError::SyncTimeout {
                    node: node.to_owned(),
                    secs: timeout.as_secs(),
                })
            }
        }
    }

    /// Hands a SyncReply to its waiter; false when nobody waits for it (late or unknown).
    pub fn complete_sync(&self, reply: SyncReply) -> bool {
        let pending = self
            .pending_sync
            .lock()
            .expect("pending sync poisoned")
            .remove(&reply.request_id);
        match pending {
            Some(p) => p.reply.send(reply).is_ok(),
            None => false,
        }
    }

    fn forget_sync(&self, request_id: &str) {
        self.pending_sync
            .lock()
            .expect("pending sync poisoned")
            .remove(request_id);
    }
}

/// The wire form of a task for its agent, with the VM's current spec.
pub fn task_assignment(task: &TaskRecord, vm: &VmRecord) -> TaskAssignment {
    let (pool, pool_path) = match &task.placement {
        Some(p) => (p.pool.clone(), p.pool_path.clone()),
        None => (
            vm.pool.clone().unwrap_or_default(),
            vm.pool_path.clone().unwrap_or_default(),
        ),
    };
    TaskAssignment {
        task_id: task.id.to_string(),
        kind: task.kind.as_str().to_owned(),
        vm_id: vm.id.to_string(),
        vm_name: vm.name.clone(),
        pool,
        pool_path,
        spec_json: serde_json::to_string(&vm.spec).expect("VmSpec serializes"),
        stop_timeout_ms: task.stop_timeout_ms.unwrap_or(0),
        bridge: vm.bridge.clone().unwrap_or_default(),
        firmware: vm.firmware.as_ref().map(|f| FirmwareRef {
            name: f.name.clone(),
            r#type: f.firmware_type.clone(),
            code: f.code.clone().unwrap_or_default(),
            vars_template: f.vars_template.clone().unwrap_or_default(),
        }),
        epoch: task.epoch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_sync_reply_reaches_waiter() {
        let sessions = std::sync::Arc::new(Sessions::default());
        let (tx, mut rx) = mpsc::channel(SESSION_OUTBOX_CAPACITY);
        sessions.attach("n1", tx);
        let s2 = sessions.clone();
        let agent = tokio::spawn(async move {
            let msg = rx.recv().await.unwrap().unwrap();
            let Some(server_message::Body::SyncRequest(req)) = msg.body else {
                panic!("expected sync request")
            };
            assert_eq!(req.op, "pause");
            assert!(s2.complete_sync(SyncReply {
                request_id: req.request_id,
                ok: true,
                ..Default::default()
            }));
        });
        let reply = sessions
            .sync_request(
                "n1",
                op_request("pause", Uuid::new_v4()),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert!(reply.ok);
        agent.await.unwrap();
    }

    #[tokio::test]
    async fn sessions_sync_unattached_node_is_not_attached_error() {
        let sessions = Sessions::default();
        let err = sessions
            .sync_request(
                "n1",
                op_request("pause", Uuid::new_v4()),
                Duration::from_secs(1),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, GatewayError::NotAttached(_)));
    }

    #[tokio::test]
    async fn sessions_sync_no_reply_times_out() {
        let sessions = Sessions::default();
        let (tx, _rx) = mpsc::channel(SESSION_OUTBOX_CAPACITY);
        sessions.attach("n1", tx);
        let err = sessions
            .sync_request(
                "n1",
                op_request("reset", Uuid::new_v4()),
                Duration::from_millis(50),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, GatewayError::SyncTimeout { .. }));
    }

    #[tokio::test]
    async fn sessions_full_outbox_closes_the_session_instead_of_growing() {
        let sessions = Sessions::default();
        let (tx, mut rx) = mpsc::channel(SESSION_OUTBOX_CAPACITY);
        sessions.attach("n1", tx);
        let cancel = || {
            server_message::Body::Cancel(otherix_api::proto::CancelTask {
                task_id: "t".into(),
            })
        };
        for _ in 0..SESSION_OUTBOX_CAPACITY {
            assert!(sessions.send("n1", cancel()));
        }
        assert!(!sessions.send("n1", cancel()), "the queue is full");
        assert!(!sessions.is_attached("n1"));
        assert!(!sessions.send("n1", cancel()));
        // The queued messages still drain, then the stream ends (the agent reconnects).
        let mut drained = 0;
        while rx.recv().await.is_some() {
            drained += 1;
        }
        assert_eq!(drained, SESSION_OUTBOX_CAPACITY);
    }

    #[tokio::test]
    async fn sessions_kick_ends_the_stream_with_the_status_and_wakes_the_reader() {
        let sessions = std::sync::Arc::new(Sessions::default());
        let (tx, mut rx) = mpsc::channel(SESSION_OUTBOX_CAPACITY);
        let id = sessions.attach("n1", tx);
        let s2 = sessions.clone();
        let reader = tokio::spawn(async move { s2.kicked(id).await });
        tokio::task::yield_now().await;
        assert!(sessions.kick("n1", Status::permission_denied("revoked")));
        reader.await.unwrap();
        assert!(sessions.is_kicked(id));
        assert!(!sessions.is_attached("n1"));
        let status = rx.recv().await.unwrap().unwrap_err();
        assert_eq!(status.message(), "revoked");
        assert!(!sessions.detach("n1", id));
        assert!(!sessions.kick("n1", Status::permission_denied("again")));
    }

    #[tokio::test]
    async fn sessions_detach_of_replaced_session_keeps_new_one() {
        let sessions = Sessions::default();
        let (tx1, _rx1) = mpsc::channel(SESSION_OUTBOX_CAPACITY);
        let (tx2, _rx2) = mpsc::channel(SESSION_OUTBOX_CAPACITY);
        let old = sessions.attach("n1", tx1);
        let _new = sessions.attach("n1", tx2);
        assert!(!sessions.detach("n1", old));
        assert!(sessions.is_attached("n1"));
    }
}
