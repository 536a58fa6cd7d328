//! Change notifications inside one process: every task write publishes the task id, and
//! long-polls of `GET /v1/tasks/{id}` wake on it; every append to the event log rings
//! [`ring`], and the event streams' pump re-reads the log head (a hint only: the pump
//! also polls, and other replicas hear `otherix_event`).

use tokio::sync::broadcast;
use uuid::Uuid;

const CAPACITY: usize = 1024;

/// The process-wide bell of the event log: a counter bumped by every append (rung inside
/// the writing transaction, so a woken reader may still find nothing new and looks again
/// shortly) and by `otherix_event` notifications from other replicas.
static EVENT_BELL: std::sync::OnceLock<tokio::sync::watch::Sender<u64>> =
    std::sync::OnceLock::new();

fn bell() -> &'static tokio::sync::watch::Sender<u64> {
    EVENT_BELL.get_or_init(|| tokio::sync::watch::Sender::new(0))
}

/// Announces that events were (or are about to be) committed.
pub fn ring() {
    bell().send_modify(|n| *n = n.wrapping_add(1));
}

/// A receiver that sees every [`ring`] after this call.
pub fn bell_listener() -> tokio::sync::watch::Receiver<u64> {
    bell().subscribe()
}

#[derive(Clone)]
pub struct TaskEvents {
    tx: broadcast::Sender<Uuid>,
}

impl Default for TaskEvents {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        TaskEvents { tx }
    }
}

impl TaskEvents {
    /// Announces that task `id` changed.
    pub fn task_changed(&self, id: Uuid) {
        // No subscribers is fine.
        let _ = self.tx.send(id);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Uuid> {
        self.tx.subscribe()
    }
}
