//! Finished task results under `DATA_DIR/tasks/<task_id>.json` (atomic writes), so a
//! redelivered task gets its final `TaskUpdate` re-sent instead of being run again.
//! Results older than [`TASK_RECORD_MAX_AGE`] are pruned ([`TaskStore::prune`]): the
//! server redelivers only unfinished tasks, so a week-old result is never asked for.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

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
            // Not kept: a replayed result carries no guest agent news.
            guest: None,
        }
    }
}

/// How long a finished task's result is kept.
pub const TASK_RECORD_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// True when a record last written at `modified` is older than `max_age` at `now`.
pub fn expired(modified: SystemTime, now: SystemTime, max_age: Duration) -> bool {
    now.duration_since(modified).is_ok_and(|age| age > max_age)
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

    /// Removes results (and leftover temp files) older than `max_age`; returns how many.
    pub fn prune(&self, max_age: Duration) -> Result<usize, TaskStoreError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(TaskStoreError::Read(self.dir.clone(), e)),
        };
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() || !meta.modified().is_ok_and(|m| expired(m, now, max_age)) {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(TaskStoreError::Write(path, e)),
            }
        }
        Ok(removed)
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
    fn task_store_prune_removes_only_old_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = TaskStore::new(dir.path());
        assert_eq!(store.prune(TASK_RECORD_MAX_AGE).unwrap(), 0);
        let (old, new) = (Uuid::new_v4(), Uuid::new_v4());
        let update = |id: Uuid| TaskUpdate {
            task_id: id.to_string(),
            ..Default::default()
        };
        store.save(old, &update(old)).unwrap();
        store.save(new, &update(new)).unwrap();
        let eight_days = SystemTime::now() - Duration::from_secs(8 * 24 * 3600);
        std::fs::File::options()
            .write(true)
            .open(store.path(old))
            .unwrap()
            .set_modified(eight_days)
            .unwrap();
        assert_eq!(store.prune(TASK_RECORD_MAX_AGE).unwrap(), 1);
        assert!(store.load(old).unwrap().is_none());
        assert!(store.load(new).unwrap().is_some());
    }

    #[test]
    fn expired_table() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86400);
        assert!(!expired(now, now, day));
        assert!(!expired(now - day, now, day));
        assert!(expired(now - day - Duration::from_secs(1), now, day));
        // A record from the future (clock moved back) is kept.
        assert!(!expired(now + day, now, day));
    }

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
