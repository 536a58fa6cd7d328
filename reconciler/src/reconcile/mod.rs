//! The reconcile loop: under a VM's lock, reads desired and observed state, asks the pure
//! [`plan::plan`] what to do, persists the emitted task together with the VM's
//! transitional phase in one transaction, and dispatches the task to the node's agent.
//! Triggers: API writes (direct calls), agent reports (the trigger channel), and a
//! periodic read-only resync that queues only the VMs with something to do
//! ([`resync`]); the last two go through the [`queue::WorkQueue`]
//! (deduplicated per VM, bounded concurrency, backoff on errors). Failed tasks are retried
//! after the backoff recorded on the VM ([`retry`]).

mod due;
pub mod plan;
pub mod queue;
mod resync;
pub mod retry;

use std::sync::Arc;
use std::time::Duration;

use otherix_api::{ApiError, Placement, TaskKind, TaskStatus, VmPhase};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::error_chain;
use crate::events::TaskEvents;
use crate::gateway::Sessions;
use crate::lifecycle::transitional_phase;
use crate::locks::{VmGuard, VmLocks};
use crate::model::{IdempotencyStamp, NodeRecord, TaskRecord, VmRecord};
use crate::scheduler::{schedule, Ratios};
use crate::store::{Fence, Store, StoreError, CAS_ATTEMPTS};
use plan::{plan, Action, PlanInput};
pub use queue::QueueMetrics;
use queue::{RunResult, WorkQueue};
use retry::{clear_retry, schedule_retry, Backoff};

/// How many VMs the loop reconciles at once.
pub const CONCURRENCY: usize = 4;

/// Asks the loop to reconcile one VM soon.
pub type ReconcileTrigger = mpsc::UnboundedSender<Uuid>;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("store")]
    Store(#[from] StoreError),
    #[error("cannot place the vm")]
    Unschedulable(#[source] ApiError),
}

pub struct Reconciler {
    store: Store,
    sessions: Arc<Sessions>,
    locks: Arc<VmLocks>,
    events: TaskEvents,
    /// Retry delays of failed tasks (recorded on VMs) and of failed reconcile runs.
    backoff: Backoff,
    /// Depth of the leader's work queue and the duration of its runs, for `/metrics`.
    queue_metrics: QueueMetrics,
}

/// What one reconcile run did.
/// The nodes and settings placements are decided on, with what earlier placements of the
/// same batch took counted on their nodes.
struct PlacementView {
    nodes: Vec<NodeRecord>,
    default_pool: Option<String>,
    ratios: Ratios,
}

impl PlacementView {
    /// Schedules `vm` (a retried create prefers the node it was placed on before) and
    /// counts it on the chosen node.
    fn place(&mut self, vm: &VmRecord) -> Result<Placement, ReconcileError> {
        let default_pool = self.default_pool.as_deref();
        let previous = match (&vm.node, &vm.spec.node) {
            (Some(prev), None) => {
                let mut pinned = vm.spec.clone();
                pinned.node = Some(prev.clone());
                schedule(&pinned, &self.nodes, default_pool, self.ratios).ok()
            }
            _ => None,
        };
        let p = match previous {
            Some(p) => p,
            None => schedule(&vm.spec, &self.nodes, default_pool, self.ratios)
                .map_err(ReconcileError::Unschedulable)?,
        };
        if let Some(node) = self.nodes.iter_mut().find(|n| n.name == p.node) {
            node.allocated_vms += 1;
            node.allocated_vcpus += vm.spec.vcpus;
            node.allocated_memory_mb += u64::from(vm.spec.memory_mb);
        }
        Ok(p)
    }
}

#[derive(Debug, Default)]
pub struct Reconciled {
    /// The task it emitted.
    pub task: Option<TaskRecord>,
    /// When to look again without a trigger (a retry's backoff elapses).
    pub requeue_after: Option<Duration>,
}

impl Reconciler {
    pub fn new(
        store: Store,
        sessions: Arc<Sessions>,
        locks: Arc<VmLocks>,
        events: TaskEvents,
    ) -> Self {
        Reconciler {
            store,
            sessions,
            locks,
            events,
            backoff: Backoff::default(),
            queue_metrics: QueueMetrics::default(),
        }
    }

    /// Retries wait `backoff` (short in tests); set before the loops start.
    /// Reports the work queue's depth and run durations into `metrics`.
    pub fn with_queue_metrics(mut self, metrics: QueueMetrics) -> Self {
        self.queue_metrics = metrics;
        self
    }

    pub fn with_retry_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn retry_backoff(&self) -> Backoff {
        self.backoff
    }

    pub fn locks(&self) -> &VmLocks {
        &self.locks
    }

    /// Accepts a new VM: schedules it, inserts the VM and its vm.create task in one
    /// transaction (with the request's Idempotency-Key, if any), dispatches the task. A
    /// taken name is `StoreError::NameTaken`, a taken key `IdempotencyKeyTaken`.
    pub async fn create_vm(
        &self,
        vm: VmRecord,
        stamp: Option<&IdempotencyStamp>,
    ) -> Result<TaskRecord, ReconcileError> {
        let mut created = self.create_vms(vec![vm], stamp).await?;
        Ok(created.pop().expect("one vm in, one task out").1)
    }

    /// Reconciles one VM; returns the task it emitted, if any.
    pub async fn reconcile_vm(&self, vm_id: Uuid) -> Result<Option<TaskRecord>, ReconcileError> {
        let guard = self.locks.lock(vm_id).await;
        self.reconcile_locked(vm_id, &guard, None).await
    }

    /// [`Reconciler::reconcile_vm`] for a caller that already holds the VM's lock; the
    /// task it emits carries the request's Idempotency-Key (`stamp`), stored with it.
    pub async fn reconcile_locked(
        &self,
        vm_id: Uuid,
        guard: &VmGuard,
        stamp: Option<&IdempotencyStamp>,
    ) -> Result<Option<TaskRecord>, ReconcileError> {
        Ok(self.reconcile_run(vm_id, guard, stamp, None).await?.task)
    }

    /// One reconcile run under the held lock. A write that lost a compare-and-swap race
    /// (another replica changed the VM) or a placement claim that found the node full
    /// starts the run again from a fresh read, at most [`CAS_ATTEMPTS`] times.
    async fn reconcile_run(
        &self,
        vm_id: Uuid,
        guard: &VmGuard,
        stamp: Option<&IdempotencyStamp>,
        fence: Option<&Fence>,
    ) -> Result<Reconciled, ReconcileError> {
        let mut attempt = 1;
        loop {
            match self.reconcile_once(vm_id, guard, stamp, fence).await {
                Err(ReconcileError::Store(e))
                    if attempt < CAS_ATTEMPTS
                        && (e.is_conflict()
                            || matches!(e, StoreError::InsufficientCapacity { .. })) =>
                {
                    tracing::info!(vm = %vm_id, error = %e, attempt, "reconcile write lost a race; reading again");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn reconcile_once(
        &self,
        vm_id: Uuid,
        _guard: &VmGuard,
        stamp: Option<&IdempotencyStamp>,
        fence: Option<&Fence>,
    ) -> Result<Reconciled, ReconcileError> {
        let Some(mut vm) = self.store.vm_by_id(vm_id).await? else {
            return Ok(Reconciled::default());
        };
        if vm.deleted_at_ms.is_some() {
            return Ok(Reconciled::default());
        }
        // A start retry is moot once the user wants the VM stopped.
        if vm.retry_kind == Some(TaskKind::VmStart)
            && vm.spec.desired_phase == otherix_api::DesiredPhase::Stopped
        {
            clear_retry(&mut vm);
            self.store.save_vm_fenced(&mut vm, fence).await?;
        }
        let now = self.store.now_ms();
        let in_flight = self.store.in_flight_task(vm_id).await?;
        let input = PlanInput::from_vm(&vm, in_flight.map(|t| t.kind), now);
        let action = plan(&input);
        let requeue_after = match (action, vm.retry_at_ms) {
            (Action::Nothing, Some(at)) if input.retry_waiting => {
                Some(Duration::from_millis(u64::try_from(at - now).unwrap_or(0)))
            }
            _ => None,
        };
        let task = match action {
            Action::Nothing => None,
            Action::MarkDeleted => {
                // Nothing to clean up on any node: the delete is done here, recorded as
                // an already-succeeded vm.delete task.
                let now = self.store.now_ms();
                let mut task = TaskRecord::pending(TaskKind::VmDelete, &vm, None, now);
                task.status = TaskStatus::Success;
                task.started_at_ms = Some(now);
                task.finished_at_ms = Some(now);
                task.stamp(stamp);
                task.epoch = fence.map(|f| f.epoch);
                vm.phase = VmPhase::Deleted;
                vm.deleted_at_ms = Some(now);
                vm.requested_by = None;
                self.store
                    .save_vm_with_new_task(&mut vm, &task, fence)
                    .await?;
                self.events.task_changed(task.id);
                tracing::info!(vm = %vm.name, "vm never reached a node; deleted");
                Some(task)
            }
            Action::Emit(kind) => {
                let retrying = vm.retry_kind == Some(kind);
                if retrying {
                    tracing::info!(vm = %vm.name, kind = %kind, attempt = vm.retry_attempts, "retrying");
                    // Still owed until it succeeds, but no longer waiting.
                    vm.retry_at_ms = None;
                }
                let (mut vm, mut task) = match self.prepare_task(vm.clone(), kind).await {
                    Ok(prepared) => prepared,
                    Err(ReconcileError::Unschedulable(e)) if retrying => {
                        // Placement of a retried create failed: visible, and retried later.
                        vm.last_error = Some(e.body());
                        schedule_retry(&mut vm, kind, now, &self.backoff);
                        self.store.save_vm_fenced(&mut vm, fence).await?;
                        tracing::warn!(vm = %vm.name, error = %e, attempt = vm.retry_attempts, "retry cannot be placed");
                        let wait = self.backoff.delay(vm.retry_attempts);
                        return Ok(Reconciled {
                            task: None,
                            requeue_after: Some(wait),
                        });
                    }
                    Err(e) => return Err(e),
                };
                task.stamp(stamp);
                task.epoch = fence.map(|f| f.epoch);
                self.store
                    .save_vm_with_new_task(&mut vm, &task, fence)
                    .await?;
                self.publish(&task, &vm);
                Some(task)
            }
        };
        Ok(Reconciled {
            task,
            requeue_after,
        })
    }

    /// Builds the task for `kind` and the VM as it looks with that task in flight.
    async fn prepare_task(
        &self,
        vm: VmRecord,
        kind: TaskKind,
    ) -> Result<(VmRecord, TaskRecord), ReconcileError> {
        let mut view = match kind {
            TaskKind::VmCreate => Some(self.placement_view().await?),
            _ => None,
        };
        self.task_for(vm, kind, view.as_mut())
    }

    /// What placement decisions read: the nodes with their allocations, the default pool
    /// and the allocation ratios.
    async fn placement_view(&self) -> Result<PlacementView, ReconcileError> {
        let nodes = self.store.list_nodes().await?;
        let settings = self.store.cluster_settings().await?;
        Ok(PlacementView {
            nodes,
            default_pool: settings.default_pool.clone(),
            ratios: settings.ratios(),
        })
    }

    /// The task of `kind` for `vm` and the VM as it is written with it; a vm.create is
    /// placed on `view` (which then counts the VM on its node).
    fn task_for(
        &self,
        mut vm: VmRecord,
        kind: TaskKind,
        view: Option<&mut PlacementView>,
    ) -> Result<(VmRecord, TaskRecord), ReconcileError> {
        let now = self.store.now_ms();
        let mut placement = None;
        if let (TaskKind::VmCreate, Some(view)) = (kind, view) {
            let p = view.place(&vm)?;
            vm.node = Some(p.node.clone());
            vm.pool = Some(p.pool.clone());
            vm.pool_path = Some(p.pool_path.clone());
            placement = Some(p);
        }
        let mut task = TaskRecord::pending(kind, &vm, vm.node.clone(), now);
        task.placement = placement;
        if matches!(kind, TaskKind::VmStop | TaskKind::VmReboot) {
            let default_ms = u64::from(vm.spec.stop_timeout_secs()) * 1000;
            task.stop_timeout_ms = Some(
                vm.requested_op
                    .and_then(|op| op.timeout_ms())
                    .unwrap_or(default_ms),
            );
        }
        vm.requested_op = None;
        vm.requested_by = None;
        vm.phase = transitional_phase(kind);
        vm.current_task = Some(task.id);
        Ok((vm, task))
    }

    /// Accepts several new VMs of one project at once: places them one after the other on
    /// one read of the nodes (each placement counted before the next), then inserts every
    /// VM and its vm.create task (with the request's Idempotency-Key, if any) in ONE
    /// transaction (all or none: a full node, the quota, a taken name, a taken key), and
    /// dispatches the tasks. A lost placement claim schedules the whole
    /// batch again on fresh allocations, at most [`CAS_ATTEMPTS`] times.
    pub async fn create_vms(
        &self,
        vms: Vec<VmRecord>,
        stamp: Option<&IdempotencyStamp>,
    ) -> Result<Vec<(VmRecord, TaskRecord)>, ReconcileError> {
        let mut ids: Vec<Uuid> = vms.iter().map(|vm| vm.id).collect();
        // Lock in id order: two batches never wait on each other's locks crosswise.
        ids.sort();
        let mut guards = Vec::with_capacity(ids.len());
        for id in ids {
            guards.push(self.locks.lock(id).await);
        }
        let mut attempt = 1;
        loop {
            let mut view = self.placement_view().await?;
            let mut placed = Vec::with_capacity(vms.len());
            let mut tasks = Vec::with_capacity(vms.len());
            for vm in &vms {
                let (vm, mut task) =
                    self.task_for(vm.clone(), TaskKind::VmCreate, Some(&mut view))?;
                task.stamp(stamp);
                placed.push(vm);
                tasks.push(task);
            }
            match self
                .store
                .insert_vms_with_tasks_in_quota(&placed, &tasks)
                .await
            {
                Ok(()) => {
                    for (task, vm) in tasks.iter().zip(&placed) {
                        self.publish(task, vm);
                    }
                    return Ok(placed.into_iter().zip(tasks).collect());
                }
                Err(StoreError::InsufficientCapacity { node, detail })
                    if attempt < CAS_ATTEMPTS =>
                {
                    tracing::info!(
                        vms = vms.len(),
                        node,
                        detail,
                        attempt,
                        "batch placement claim lost; scheduling again"
                    );
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Wakes local long-polls and sends the task to its agent. On PostgreSQL the insert's
    /// announcement does both, on the replica holding the node's stream (crate::relay).
    fn publish(&self, task: &TaskRecord, vm: &VmRecord) {
        self.events.task_changed(task.id);
        if self.store.is_postgres() {
            tracing::info!(task = %task.id, kind = %task.kind, vm = %vm.name, node = ?task.node, "task announced");
        } else if self.sessions.dispatch(task, vm) {
            tracing::info!(task = %task.id, kind = %task.kind, vm = %vm.name, node = ?task.node, "task dispatched");
        } else {
            tracing::info!(task = %task.id, kind = %task.kind, vm = %vm.name, node = ?task.node, "task queued; node not attached");
        }
    }

    /// One run from the work queue: errors are logged and retried with backoff. Its
    /// tasks are fenced with the leader's epoch (`fence`; `None` on SQLite).
    async fn reconcile_queued(&self, vm_id: Uuid, fence: Option<&Fence>) -> RunResult {
        let guard = self.locks.lock(vm_id).await;
        match self.reconcile_run(vm_id, &guard, None, fence).await {
            Err(ReconcileError::Store(StoreError::Fenced { epoch })) => {
                tracing::error!(vm = %vm_id, epoch, "deposed leader: task insert refused by the lease fence");
                RunResult::Failed
            }
            Ok(Reconciled {
                requeue_after: Some(d),
                ..
            }) => RunResult::RequeueAfter(d),
            Ok(_) => RunResult::Done,
            Err(e) => {
                tracing::warn!(vm = %vm_id, error = %error_chain(&e), "reconcile failed; retrying with backoff");
                RunResult::Failed
            }
        }
    }

    /// Runs the work queue, its trigger consumer and the periodic resync until aborted
    /// (leadership lost). Tasks the queue emits are fenced with `fence`, this leader's
    /// epoch (`None`: no lease, SQLite).
    pub fn spawn_loops(
        self: Arc<Self>,
        triggers: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Uuid>>>,
        resync_every: Duration,
        fence: Option<Fence>,
    ) -> Vec<JoinHandle<()>> {
        let queue = Arc::new(WorkQueue::default());
        let me = self.clone();
        let fence = Arc::new(fence);
        let q = queue.clone();
        let runner = tokio::spawn(queue.clone().run(CONCURRENCY, self.backoff, move |id| {
            let me = me.clone();
            let fence = fence.clone();
            let q = q.clone();
            async move {
                let started = std::time::Instant::now();
                let result = me.reconcile_queued(id, fence.as_ref().as_ref()).await;
                let metrics = &me.queue_metrics;
                if let Some(h) = &metrics.run_seconds {
                    h.observe(started.elapsed().as_secs_f64());
                }
                metrics.set_depth(q.len());
                result
            }
        }));
        let q = queue.clone();
        let metrics = self.queue_metrics.clone();
        let on_trigger = tokio::spawn(async move {
            // Aborting this task (leadership lost) releases the receiver for the next term.
            let mut triggers = triggers.lock().await;
            while let Some(id) = triggers.recv().await {
                q.add(id);
                metrics.set_depth(q.len());
            }
        });
        let me = self;
        let resync = tokio::spawn(async move {
            let mut tick = tokio::time::interval(resync_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match me.store.live_vms_with_in_flight().await {
                    Ok(vms) => {
                        let now = me.store.now_ms();
                        for (vm, in_flight) in vms {
                            let input = PlanInput::from_vm(&vm, in_flight, now);
                            match resync::resync_due(&input, vm.retry_at_ms, now) {
                                Some(d) if d.is_zero() => queue.add(vm.id),
                                Some(d) => queue.add_after(vm.id, d),
                                None => {}
                            }
                        }
                        me.queue_metrics.set_depth(queue.len());
                    }
                    Err(e) => {
                        tracing::warn!(error = %error_chain(&e), "resync: listing vms failed")
                    }
                }
            }
        });
        vec![runner, on_trigger, resync]
    }
}
