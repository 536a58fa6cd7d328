//! The agent's outgoing message queue (everything the session sends to the server) and
//! constructors for the proto messages that go through it.

use otherix_api::proto::{agent_message, AgentMessage, TaskState, TaskUpdate, VmPower, VmReport};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

/// Sender side of the queue the session drains into the gateway stream. Sending never
/// blocks and never fails the caller: with no receiver the message is dropped (the
/// server resynchronizes from `Register` and task redelivery).
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<AgentMessage>,
}

impl Outbox {
    pub fn new() -> (Outbox, mpsc::UnboundedReceiver<AgentMessage>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Outbox { tx }, rx)
    }

    pub fn send(&self, body: agent_message::Body) {
        let _ = self.tx.send(AgentMessage { body: Some(body) });
    }

    pub fn task_update(&self, update: TaskUpdate) {
        self.send(agent_message::Body::TaskUpdate(update));
    }

    pub fn vm_report(&self, report: VmReport) {
        self.send(agent_message::Body::VmReport(report));
    }
}

/// A `RUNNING` update with a phase and optional byte counts.
pub fn running_update(task_id: &str, phase: &str, bytes: Option<(u64, u64)>) -> TaskUpdate {
    let (bytes_done, bytes_total) = bytes.unwrap_or_default();
    TaskUpdate {
        task_id: task_id.to_string(),
        state: TaskState::Running as i32,
        phase: phase.to_string(),
        bytes_done,
        bytes_total,
        ..Default::default()
    }
}

/// A report with just the power state (the VM's pid, pool and log are filled in by whoever
/// knows them).
pub fn power_report(vm_id: &str, power: VmPower) -> VmReport {
    VmReport {
        vm_id: vm_id.to_string(),
        power: power as i32,
        ..Default::default()
    }
}

/// Streams progress of one task to the server.
#[derive(Clone)]
pub struct Progress {
    task_id: String,
    outbox: Outbox,
    /// The last phase reported, for the terminal update of a failed task.
    last_phase: Arc<Mutex<String>>,
}

impl Progress {
    pub fn new(task_id: &str, outbox: Outbox) -> Progress {
        Progress {
            task_id: task_id.to_string(),
            outbox,
            last_phase: Arc::default(),
        }
    }

    /// The phase most recently reported (empty when none was).
    pub fn last_phase(&self) -> String {
        self.last_phase.lock().expect("phase poisoned").clone()
    }

    fn remember(&self, phase: &str) {
        let mut last = self.last_phase.lock().expect("phase poisoned");
        if last.as_str() != phase {
            *last = phase.to_string();
        }
    }

    /// Reports the task's current phase, e.g. `powerdown sent`.
    pub fn phase(&self, phase: &str) {
        tracing::info!(task_id = %self.task_id, phase, "task phase");
        self.remember(phase);
        self.outbox
            .task_update(running_update(&self.task_id, phase, None));
    }

    /// Reports byte progress within a phase (bytes_total 0 when unknown).
    pub fn bytes(&self, phase: &str, done: u64, total: Option<u64>) {
        self.remember(phase);
        self.outbox.task_update(running_update(
            &self.task_id,
            phase,
            Some((done, total.unwrap_or(0))),
        ));
    }
}
