//! The agent's outgoing message queue (everything the session sends to the server) and
//! constructors for the proto messages that go through it.

use otherix_api::proto::{agent_message, AgentMessage, TaskState, TaskUpdate, VmPower, VmReport};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

/// How many messages the outbox holds before senders wait (or progress is dropped).
pub const OUTBOX_CAPACITY: usize = 1024;

/// Sender side of the queue the session drains into the gateway stream. The queue is
/// bounded ([`OUTBOX_CAPACITY`]): [`Outbox::send_wait`] waits for room (backpressure, for
/// messages that must arrive: terminal task updates, VM reports, sync replies);
/// [`Outbox::send`] never blocks and drops the message when the queue is full (for
/// `RUNNING` progress, which the next update supersedes). With no receiver a message is
/// dropped (the server resynchronizes from `Register` and task redelivery).
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<AgentMessage>,
}

impl Outbox {
    pub fn new() -> (Outbox, mpsc::Receiver<AgentMessage>) {
        Outbox::with_capacity(OUTBOX_CAPACITY)
    }

    pub fn with_capacity(capacity: usize) -> (Outbox, mpsc::Receiver<AgentMessage>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Outbox { tx }, rx)
    }

    /// Queues a message unless the queue is full (then it is dropped and logged).
    pub fn send(&self, body: agent_message::Body) {
        if let Err(mpsc::error::TrySendError::Full(_)) =
            self.tx.try_send(AgentMessage { body: Some(body) })
        {
            tracing::debug!("outbox full; dropping a progress message");
        }
    }

    /// Queues a message, waiting while the queue is full.
    pub async fn send_wait(&self, body: agent_message::Body) {
        let _ = self.tx.send(AgentMessage { body: Some(body) }).await;
    }

    /// Queues a progress update (dropped when the queue is full).
    pub fn task_update(&self, update: TaskUpdate) {
        self.send(agent_message::Body::TaskUpdate(update));
    }

    /// Queues a task's final update, waiting for room.
    pub async fn final_update(&self, update: TaskUpdate) {
        self.send_wait(agent_message::Body::TaskUpdate(update))
            .await;
    }

    /// Queues a VM report, waiting for room.
    pub async fn vm_report(&self, report: VmReport) {
        self.send_wait(agent_message::Body::VmReport(report)).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn outbox_is_bounded_drops_progress_and_waits_for_final_updates() {
        let (outbox, mut rx) = Outbox::with_capacity(2);
        for i in 0..5 {
            outbox.task_update(running_update("t", &format!("p{i}"), None));
        }
        let waiting = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                outbox
                    .final_update(TaskUpdate {
                        task_id: "t".into(),
                        state: TaskState::Succeeded as i32,
                        ..Default::default()
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "a full outbox makes final updates wait"
        );
        let phase = |m: AgentMessage| match m.body {
            Some(agent_message::Body::TaskUpdate(u)) => (u.phase, u.state),
            other => panic!("{other:?}"),
        };
        assert_eq!(phase(rx.recv().await.unwrap()).0, "p0");
        waiting.await.unwrap();
        assert_eq!(phase(rx.recv().await.unwrap()).0, "p1");
        assert_eq!(
            phase(rx.recv().await.unwrap()).1,
            TaskState::Succeeded as i32
        );
        assert!(rx.try_recv().is_err(), "p2..p4 were dropped");
    }
}
