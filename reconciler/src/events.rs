//! Task change notifications: every task write publishes the task id, and long-polls of
//! `GET /v1/tasks/{id}` wake on it.

use tokio::sync::broadcast;
use uuid::Uuid;

const CAPACITY: usize = 1024;

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
