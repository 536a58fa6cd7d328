//! Runs `TaskAssignment`s: idempotent by task id (a running task is ignored, a finished one
//! has its final update re-sent from the [`TaskStore`]), serialized per VM, cancellable,
//! and mapped onto [`VmDriver`] primitives exactly as ARCHITECTURE.md's task kinds table
//! says. Also answers `SyncRequest`s.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use otherix_api::proto::{
    SyncReply, SyncRequest, TaskAssignment, TaskState, TaskUpdate, VmPower, VmReport,
};
use otherix_api::{ApiError, DesiredPhase, ErrorCode, TaskKind, VmSpec};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::driver::{SyncOp, VmDriver, VmTarget};
use crate::outbox::{Outbox, Progress};
use crate::task_store::TaskStore;
use crate::vm_registry::VmRegistry;

/// How a task ended.
enum Outcome {
    Succeeded(VmReport),
    Failed(ApiError),
    Cancelled,
}

/// Runs tasks on a driver; cheap to clone.
pub struct Executor<D> {
    inner: Arc<Inner<D>>,
}

impl<D> Clone for Executor<D> {
    fn clone(&self) -> Self {
        Executor {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<D> {
    driver: Arc<D>,
    registry: Arc<VmRegistry>,
    store: TaskStore,
    outbox: Outbox,
    /// The pools this node serves (`--pool NAME=PATH`): a task's pool name maps to its
    /// path here; a `pool_path` sent by the server is never used.
    pools: Vec<(String, PathBuf)>,
    /// Tasks in progress, with the trigger that cancels them (taken once cancelled).
    running: Mutex<HashMap<Uuid, Option<oneshot::Sender<()>>>>,
}

fn parse_uuid(field: &str, value: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(value)
        .map_err(|_| ApiError::validation(format!("{field}: {value:?} is not a uuid")))
}

impl<D: VmDriver> Executor<D> {
    pub fn new(
        driver: Arc<D>,
        registry: Arc<VmRegistry>,
        data_dir: &Path,
        outbox: Outbox,
        pools: Vec<(String, PathBuf)>,
    ) -> Executor<D> {
        Executor {
            inner: Arc::new(Inner {
                driver,
                registry,
                store: TaskStore::new(data_dir),
                outbox,
                pools,
                running: Mutex::default(),
            }),
        }
    }

    /// Removes task results older than [`crate::task_store::TASK_RECORD_MAX_AGE`].
    pub fn prune_task_records(&self) {
        match self
            .inner
            .store
            .prune(crate::task_store::TASK_RECORD_MAX_AGE)
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "pruned old task results"),
            Err(e) => tracing::warn!(error = %e, "cannot prune task results"),
        }
    }

    /// Starts `task` unless it is already running; re-sends the final update of a task
    /// that already finished.
    pub fn assign(&self, task: TaskAssignment) {
        let inner = &self.inner;
        let task_id = match parse_uuid("task_id", &task.task_id) {
            Ok(id) => id,
            Err(e) => {
                let update = terminal_update(&task.task_id, &Outcome::Failed(e), None, "");
                let outbox = inner.outbox.clone();
                tokio::spawn(async move { outbox.final_update(update).await });
                return;
            }
        };
        let cancel_rx = {
            let mut running = inner.running.lock().expect("running table poisoned");
            if running.contains_key(&task_id) {
                tracing::info!(%task_id, kind = task.kind, "task already running; ignoring redelivery");
                return;
            }
            match inner.store.load(task_id) {
                Ok(Some(update)) => {
                    tracing::info!(%task_id, kind = task.kind, "task already finished; re-sending its result");
                    let outbox = inner.outbox.clone();
                    tokio::spawn(async move { outbox.final_update(update).await });
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(%task_id, error = %e, "unreadable task result; running the task again")
                }
            }
            let (tx, rx) = oneshot::channel();
            running.insert(task_id, Some(tx));
            rx
        };
        tokio::spawn(inner.clone().run(task_id, task, cancel_rx));
    }

    /// Aborts a running task; it reports `CANCELLED`.
    pub fn cancel(&self, task_id: &str) {
        let Ok(task_id) = Uuid::parse_str(task_id) else {
            return;
        };
        let trigger = self
            .inner
            .running
            .lock()
            .expect("running table poisoned")
            .get_mut(&task_id)
            .and_then(Option::take);
        match trigger {
            Some(tx) => {
                tracing::info!(%task_id, "cancelling task");
                let _ = tx.send(());
            }
            None => tracing::info!(%task_id, "cancel for a task that is not running; ignored"),
        }
    }

    /// Answers a sync request: pause/resume/reset (vm_id), logs (vm_id, offset,
    /// max_bytes), images and prune-images (pool).
    pub async fn sync(&self, request: SyncRequest) -> SyncReply {
        let failed = |e: ApiError| SyncReply {
            request_id: request.request_id.clone(),
            ok: false,
            error_code: e.code.as_str().into(),
            error_message: e.message,
            ..Default::default()
        };
        let ok = SyncReply {
            request_id: request.request_id.clone(),
            ok: true,
            ..Default::default()
        };
        let driver = &self.inner.driver;
        match request.op.as_str() {
            "images" | "prune-images" => {
                let prune = request.op == "prune-images";
                tracing::info!(pool = request.pool, op = request.op, "sync op");
                match driver.pool_images(&request.pool, prune).await {
                    Ok(images) => SyncReply { images, ..ok },
                    Err(e) => failed(e),
                }
            }
            "logs" => {
                let vm_id = match parse_uuid("vm_id", &request.vm_id) {
                    Ok(id) => id,
                    Err(e) => return failed(e),
                };
                match driver
                    .read_serial_log(vm_id, request.offset, request.max_bytes)
                    .await
                {
                    Ok(chunk) => SyncReply {
                        data: chunk.data,
                        next_offset: chunk.next_offset,
                        eof: chunk.eof,
                        ..ok
                    },
                    Err(e) => failed(e),
                }
            }
            op => {
                let vm_id = match parse_uuid("vm_id", &request.vm_id) {
                    Ok(id) => id,
                    Err(e) => return failed(e),
                };
                let Some(op) = SyncOp::parse(op) else {
                    return failed(ApiError::validation(format!("op: unknown sync op {op:?}")));
                };
                tracing::info!(%vm_id, op = op.as_str(), "sync op");
                match driver.sync_op(vm_id, op).await {
                    Ok(report) => SyncReply {
                        vm: Some(report),
                        ..ok
                    },
                    Err(e) => SyncReply {
                        vm: Some(driver.report(vm_id).await),
                        ..failed(e)
                    },
                }
            }
        }
    }
}

impl<D: VmDriver> Inner<D> {
    async fn run(
        self: Arc<Self>,
        task_id: Uuid,
        task: TaskAssignment,
        cancel_rx: oneshot::Receiver<()>,
    ) {
        tracing::info!(%task_id, kind = task.kind, vm = task.vm_name, "task started");
        let progress = Progress::new(&task.task_id, self.outbox.clone());
        let outcome = tokio::select! {
            Ok(()) = cancel_rx => Outcome::Cancelled,
            result = self.execute(&task, &progress) => match result {
                Ok(report) => Outcome::Succeeded(report),
                Err(e) => Outcome::Failed(e),
            },
        };
        let report = match (&outcome, Uuid::parse_str(&task.vm_id)) {
            (Outcome::Succeeded(report), _) => Some(report.clone()),
            (_, Ok(vm_id)) => Some(self.driver.report(vm_id).await),
            (_, Err(_)) => None,
        };
        let update = terminal_update(&task.task_id, &outcome, report, &progress.last_phase());
        match &outcome {
            Outcome::Succeeded(_) => tracing::info!(%task_id, kind = task.kind, "task succeeded"),
            Outcome::Failed(e) => {
                tracing::warn!(%task_id, kind = task.kind, code = %e.code, message = e.message, "task failed")
            }
            Outcome::Cancelled => tracing::info!(%task_id, kind = task.kind, "task cancelled"),
        }
        if let Err(e) = self.store.save(task_id, &update) {
            tracing::error!(%task_id, error = %e, "cannot persist task result");
        }
        self.outbox.final_update(update).await;
        self.running
            .lock()
            .expect("running table poisoned")
            .remove(&task_id);
    }

    /// The VM a task names, with its spec from the task or else the agent's record.
    fn target(&self, task: &TaskAssignment) -> Result<VmTarget, ApiError> {
        let vm_id = parse_uuid("vm_id", &task.vm_id)?;
        let record = self.registry.load(vm_id).ok().flatten();
        let spec = if task.spec_json.trim().is_empty() {
            record.as_ref().map(|r| r.spec.clone())
        } else {
            Some(
                serde_json::from_str::<VmSpec>(&task.spec_json).map_err(|e| {
                    ApiError::validation(format!("spec_json: not a valid VM spec: {e}"))
                })?,
            )
        };
        let pick = |given: &str, recorded: Option<&String>| {
            if given.is_empty() {
                recorded.cloned().unwrap_or_default()
            } else {
                given.to_string()
            }
        };
        let pool = pick(&task.pool, record.as_ref().map(|r| &r.pool));
        let pool_path = self.pool_path(&pool)?;
        if !task.pool_path.is_empty() && Path::new(&task.pool_path) != pool_path {
            tracing::debug!(pool, server_path = task.pool_path, own_path = %pool_path.display(),
                "ignoring the server's pool path");
        }
        Ok(VmTarget {
            vm_id,
            name: pick(&task.vm_name, record.as_ref().map(|r| &r.name)),
            pool,
            pool_path,
            spec,
            bridge: task.bridge.clone(),
            firmware: task.firmware.clone(),
        })
    }

    /// The path of a pool this node serves (empty for no pool: a VM never placed).
    fn pool_path(&self, pool: &str) -> Result<PathBuf, ApiError> {
        if pool.is_empty() {
            return Ok(PathBuf::new());
        }
        match self.pools.iter().find(|(name, _)| name == pool) {
            Some((_, path)) => Ok(path.clone()),
            None => {
                let served: Vec<&str> = self.pools.iter().map(|(n, _)| n.as_str()).collect();
                Err(ApiError::validation(format!(
                    "pool: this node does not serve pool {pool:?} (its --pool flags serve: {})",
                    if served.is_empty() {
                        "none".to_string()
                    } else {
                        served.join(", ")
                    }
                )))
            }
        }
    }

    fn stop_timeout(task: &TaskAssignment, vm: &VmTarget) -> Duration {
        if task.stop_timeout_ms > 0 {
            return Duration::from_millis(task.stop_timeout_ms);
        }
        let secs = vm
            .spec
            .as_ref()
            .map(VmSpec::stop_timeout_secs)
            .unwrap_or(otherix_api::vm::DEFAULT_STOP_TIMEOUT_SECS);
        Duration::from_secs(secs.into())
    }

    async fn execute(
        &self,
        task: &TaskAssignment,
        progress: &Progress,
    ) -> Result<VmReport, ApiError> {
        let kind = TaskKind::parse(&task.kind).ok_or_else(|| {
            ApiError::validation(format!("kind: unknown task kind {:?}", task.kind))
        })?;
        let vm = self.target(task)?;
        let lock = self.registry.vm_lock(vm.vm_id);
        let _one_task_per_vm = match lock.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => {
                progress.phase("waiting for another task on this vm");
                lock.lock_owned().await
            }
        };
        if kind != TaskKind::VmDelete {
            self.driver.remember(&vm)?;
        }
        let driver = &self.driver;
        match kind {
            TaskKind::VmCreate => {
                driver.prepare(&vm, progress).await?;
                let desired = vm.spec.as_ref().map(|s| s.desired_phase);
                if desired == Some(DesiredPhase::Stopped) {
                    Ok(driver.report(vm.vm_id).await)
                } else {
                    driver.start(&vm, progress).await
                }
            }
            TaskKind::VmStart => driver.start(&vm, progress).await,
            TaskKind::VmStop => {
                driver
                    .stop(&vm, Self::stop_timeout(task, &vm), progress)
                    .await
            }
            TaskKind::VmPoweroff => driver.poweroff(&vm, progress).await,
            TaskKind::VmReboot => {
                driver
                    .stop(&vm, Self::stop_timeout(task, &vm), progress)
                    .await?;
                driver.start(&vm, progress).await
            }
            TaskKind::VmDelete => driver.delete(&vm, progress).await,
        }
    }
}

/// Phase of a task's terminal update: how it ended, so a finished task keeps a meaningful
/// phase. Success names the state the VM was left in (`running`, `paused`, `stopped`,
/// `deleted`); a graceful stop or reboot that ran out of time is `timed out` (after
/// `powerdown sent` and `waiting for guest`); any other failure keeps the phase it failed
/// in (e.g. `downloading image`); a cancelled task is `cancelled`.
fn terminal_phase(outcome: &Outcome, vm: Option<&VmReport>, last_phase: &str) -> String {
    let phase = match outcome {
        Outcome::Succeeded(_) => match vm.map(VmReport::power) {
            Some(VmPower::Running) => "running",
            Some(VmPower::Paused) => "paused",
            Some(VmPower::Stopped) => "stopped",
            Some(VmPower::Absent) => "deleted",
            Some(VmPower::Unspecified) | None => "done",
        },
        Outcome::Failed(e) if e.code == ErrorCode::StopTimeout => "timed out",
        Outcome::Failed(_) if !last_phase.is_empty() => last_phase,
        Outcome::Failed(_) => "failed",
        Outcome::Cancelled => "cancelled",
    };
    phase.to_string()
}

fn terminal_update(
    task_id: &str,
    outcome: &Outcome,
    vm: Option<VmReport>,
    last_phase: &str,
) -> TaskUpdate {
    let (state, error_code, error_message) = match outcome {
        Outcome::Succeeded(_) => (TaskState::Succeeded, String::new(), String::new()),
        Outcome::Failed(e) => (
            TaskState::Failed,
            e.code.as_str().to_string(),
            e.message.clone(),
        ),
        Outcome::Cancelled => (
            TaskState::Cancelled,
            ErrorCode::Cancelled.as_str().to_string(),
            "task cancelled by the server".to_string(),
        ),
    };
    TaskUpdate {
        task_id: task_id.to_string(),
        state: state as i32,
        phase: terminal_phase(outcome, vm.as_ref(), last_phase),
        error_code,
        error_message,
        vm,
        ..Default::default()
    }
}

#[cfg(test)]
#[path = "executor_tests.rs"]
mod tests;
