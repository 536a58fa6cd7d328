//! Finished task results under `DATA_DIR/tasks/<task_id>.json` (atomic writes), so a
//! redelivered task gets its final `TaskUpdate` re-sent instead of being run again.

use std::path::{Path, PathBuf};

use otherix_api::proto::{TaskUpdate, VmReport};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::atomic_file::write_json_atomic;

#[derive(Debug, thiserror::Error)]
pub enum TaskStoreError {
    #[error("cannot write task result {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("cannot read task result {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("task result {0} is corrupt")]
    Corrupt(PathBuf, #[source] serde_json::Error),
}

/// JSON mirror of a `VmReport`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredVmReport {
    vm_id: String,
    power: i32,
    pid: u32,
    pool: String,
    exit_status: Option<i32>,
    detail: String,
    serial_log: String,
    #[serde(default)]
    guest_shutdown: bool,
}

/// JSON mirror of a terminal `TaskUpdate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredUpdate {
    task_id: String,
    state: i32,
    phase: String,
    error_code: String,
    error_message: String,
    vm: Option<StoredVmReport>,
}

impl From<&VmReport> for StoredVmReport {
    fn from(r: &VmReport) -> Self {
        StoredVmReport {
            vm_id: r.vm_id.clone(),
            power: r.power,
            pid: r.pid,
            pool: r.pool.clone(),
            exit_status: r.exit_status,
            detail: r.detail.clone(),
            serial_log: r.serial_log.clone(),
            guest_shutdown: r.guest_shutdown,
        }
    }
}

impl From<StoredVmReport> for VmReport {
    fn from(r: StoredVmReport) -> Self {
        VmReport {
            vm_id: r.vm_id,
            power: r.power,
            pid: r.pid,
            pool: r.pool,
            exit_status: r.exit_status,
            detail: r.detail,
            serial_log: r.serial_log,
            guest_shutdown: r.guest_shutdown,
        }
    }
}

/// The directory of finished task results.
pub struct TaskStore {
    dir: PathBuf,
}

impl TaskStore {
    pub fn new(data_dir: &Path) -> TaskStore {
        TaskStore {
            dir: data_dir.join("tasks"),
        }
    }

    fn path(&self, task_id: Uuid) -> PathBuf {
        self.dir.join(format!("{task_id}.json"))
    }

    /// Persists a task's terminal update.
    pub fn save(&self, task_id: Uuid, update: &TaskUpdate) -> Result<(), TaskStoreError> {
        let stored = StoredUpdate {
            task_id: update.task_id.clone(),
            state: update.state,
            phase: update.phase.clone(),
            error_code: update.error_code.clone(),
            error_message: update.error_message.clone(),
            vm: update.vm.as_ref().map(StoredVmReport::from),
        };
        let path = self.path(task_id);
        write_json_atomic(&path, &stored).map_err(|e| TaskStoreError::Write(path, e))
    }

    /// The task's terminal update, if it finished before.
    pub fn load(&self, task_id: Uuid) -> Result<Option<TaskUpdate>, TaskStoreError> {
        let path = self.path(task_id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(TaskStoreError::Read(path, e)),
        };
        let stored: StoredUpdate =
            serde_json::from_slice(&bytes).map_err(|e| TaskStoreError::Corrupt(path, e))?;
        Ok(Some(TaskUpdate {
            task_id: stored.task_id,
            state: stored.state,
            phase: stored.phase,
            bytes_done: 0,
            bytes_total: 0,
            error_code: stored.error_code,
            error_message: stored.error_message,
            vm: stored.vm.map(VmReport::from),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otherix_api::proto::{TaskState, VmPower};

    #[test]
    fn task_store_save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = TaskStore::new(dir.path());
        let id = Uuid::new_v4();
        assert!(store.load(id).unwrap().is_none());
        let update = TaskUpdate {
            task_id: id.to_string(),
            state: TaskState::Failed as i32,
            phase: "waiting for guest".into(),
            error_code: "stop_timeout".into(),
            error_message: "guest did not power off".into(),
            vm: Some(VmReport {
                vm_id: "v".into(),
                power: VmPower::Running as i32,
                pid: 7,
                exit_status: Some(-9),
                ..Default::default()
            }),
            ..Default::default()
        };
        store.save(id, &update).unwrap();
        assert_eq!(store.load(id).unwrap(), Some(update));
    }
}
