//! VM lifecycle: create, read, and the ops. Async ops write desired state (spec
//! `desired_phase`, a requested op, or the deletion mark) under the VM's lock and run the
//! reconciler, returning the task it emitted. Sync ops (pause, resume, reset) ask the
//! node's agent directly and return the refreshed VM.

use std::sync::Arc;
use std::time::Duration;

use otherix_api::validate::{validate_create_vm, validate_name, STOP_TIMEOUT_RANGE};
use otherix_api::{
    ApiError, CreateVmRequest, DesiredPhase, ErrorCode, ListResponse, TaskAccepted, TaskKind,
    TaskStatus, Vm, VmPhase,
};
use uuid::Uuid;

use super::precondition::{check_resource_version, retry_on_conflict};
use super::{check_limit, Actor, ServiceError};
use crate::cursor::{decode_cursor, encode_cursor};
use crate::gateway::Gateway;
use crate::lifecycle::{valid_transition, VmOp};
use crate::model::{RequestedOp, TaskRecord, VmRecord};
use crate::reconcile::Reconciler;
use crate::relay::Relay;
use crate::store::{Store, StoreError, VmFilter, CAS_ATTEMPTS};

/// How long a sync op waits for the agent's reply.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET /v1/vms` parameters.
#[derive(Debug, Clone, Default)]
pub struct ListVmsQuery {
    /// Only this project's VMs; `None` = every project.
    pub project: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    pub pool: Option<String>,
    pub node: Option<String>,
    pub status: Option<String>,
    /// `label=key=value,...` (all must match).
    pub label: Option<String>,
}

pub struct VmService {
    store: Store,
    reconciler: Arc<Reconciler>,
    gateway: Gateway,
    relay: Arc<Relay>,
}

impl VmService {
    pub fn new(
        store: Store,
        reconciler: Arc<Reconciler>,
        gateway: Gateway,
        relay: Arc<Relay>,
    ) -> Self {
        VmService {
            store,
            reconciler,
            gateway,
            relay,
        }
    }

    pub async fn create(
        &self,
        actor: &Actor,
        req: CreateVmRequest,
    ) -> Result<TaskAccepted, ServiceError> {
        self.create_annotated(actor, req, Default::default()).await
    }

    /// [`VmService::create`] storing `metadata.annotations` too (declarative apply).
    pub async fn create_annotated(
        &self,
        actor: &Actor,
        req: CreateVmRequest,
        annotations: std::collections::BTreeMap<String, String>,
    ) -> Result<TaskAccepted, ServiceError> {
        validate_create_vm(&req)?;
        if self.store.project(&actor.project).await?.is_none() {
            return Err(ApiError::not_found(format!("project {} not found", actor.project)).into());
        }
        if self
            .store
            .vm_by_name(&actor.project, &req.name)
            .await?
            .is_some()
        {
            return Err(ApiError::conflict(format!("vm {} already exists", req.name)).into());
        }
        let attachments = super::resolve_vm_refs(&self.store, &req.spec).await?;
        let mut vm = VmRecord::new(req.name, req.spec, self.store.now_ms());
        attachments.apply_to(&mut vm);
        vm.annotations = annotations;
        vm.labels = req.labels;
        vm.project = actor.project.clone();
        vm.requested_by = Some(actor.requested_by.clone());
        let id = vm.id;
        let task = self
            .reconciler
            .create_vm(vm, actor.idempotency.as_ref())
            .await?;
        self.accepted(task, id).await
    }

    /// Several new VMs of the actor's project, validated by the caller, created in one
    /// transaction (all or none; see [`Reconciler::create_vms`]). The answers are in
    /// `items`' order; a VM's spec reference error names its index and name.
    pub async fn create_many(
        &self,
        actor: &Actor,
        items: Vec<(
            usize,
            CreateVmRequest,
            std::collections::BTreeMap<String, String>,
        )>,
    ) -> Result<Vec<TaskAccepted>, ServiceError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        if self.store.project(&actor.project).await?.is_none() {
            return Err(ApiError::not_found(format!("project {} not found", actor.project)).into());
        }
        let mut vms = Vec::with_capacity(items.len());
        for (index, req, annotations) in items {
            let attachments = super::resolve_vm_refs(&self.store, &req.spec)
                .await
                .map_err(|e| super::in_item(index, &req.name, e))?;
            let mut vm = VmRecord::new(req.name, req.spec, self.store.now_ms());
            attachments.apply_to(&mut vm);
            vm.annotations = annotations;
            vm.labels = req.labels;
            vm.project = actor.project.clone();
            vm.requested_by = Some(actor.requested_by.clone());
            vms.push(vm);
        }
        let created = self.reconciler.create_vms(vms, None).await?;
        Ok(created
            .into_iter()
            .map(|(vm, task)| TaskAccepted {
                task: task.to_api(),
                vm: Some(vm.to_api()),
            })
            .collect())
    }

    pub async fn get(&self, project: &str, name: &str) -> Result<Vm, ServiceError> {
        Ok(self.live_vm(project, name).await?.to_api())
    }

    pub async fn list(&self, q: ListVmsQuery) -> Result<ListResponse<Vm>, ServiceError> {
        let limit = check_limit(q.limit)?;
        let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
        let phase =
            match q.status.as_deref() {
                None => None,
                Some(s) => Some(VmPhase::parse(s).ok_or_else(|| {
                    ApiError::validation(format!("status: {s:?} is not a vm phase"))
                })?),
            };
        let labels = match q.label.as_deref() {
            None | Some("") => Vec::new(),
            Some(text) => otherix_api::labels::parse_selectors("label", text)?,
        };
        let filter = VmFilter {
            project: q.project,
            pool: q.pool,
            node: q.node,
            phase,
            labels,
        };
        let page = self.store.list_vms(&filter, after, limit).await?;
        Ok(ListResponse {
            items: page.items.iter().map(VmRecord::to_api).collect(),
            next_cursor: page.next.map(encode_cursor),
        })
    }

    /// Boots a stopped VM; a running VM gets an already-succeeded task.
    pub async fn start(&self, actor: &Actor, name: &str) -> Result<TaskAccepted, ServiceError> {
        let id = self.live_vm(&actor.project, name).await?.id;
        let guard = self.reconciler.locks().lock(id).await;
        let mut attempt = 1;
        loop {
            let mut vm = self.live_vm_by_id(id, name).await?;
            check_resource_version("vm", &vm.name, actor.if_match, vm.resource_version)?;
            valid_transition(&vm.name, vm.effective_phase(), VmOp::Start)?;
            vm.requested_by = Some(actor.requested_by.clone());
            if vm.phase == VmPhase::Running {
                let now = self.store.now_ms();
                let mut task = TaskRecord::pending(TaskKind::VmStart, &vm, vm.node.clone(), now);
                task.status = TaskStatus::Success;
                task.started_at_ms = Some(now);
                task.finished_at_ms = Some(now);
                task.stamp(actor.idempotency.as_ref());
                self.store.insert_task(&task).await?;
                drop(guard);
                return self.accepted(task, id).await;
            }
            set_desired(&mut vm, DesiredPhase::Running);
            // An explicit start does not wait out a pending retry's backoff.
            vm.retry_at_ms = None;
            match self.store.save_vm(&mut vm).await {
                Err(e) if retry_write(&e, actor, &mut attempt) => continue,
                r => r?,
            }
            return self.reconcile_written(vm, guard, actor).await;
        }
    }

    /// Graceful stop; `timeout_secs` overrides `spec.stop_timeout_secs` for this call.
    pub async fn stop(
        &self,
        actor: &Actor,
        name: &str,
        timeout_secs: Option<u32>,
    ) -> Result<TaskAccepted, ServiceError> {
        if let Some(t) = timeout_secs {
            let (lo, hi) = STOP_TIMEOUT_RANGE;
            if !(lo..=hi).contains(&t) {
                return Err(ApiError::validation(format!(
                    "timeout_secs: must be {lo}..{hi} (got {t})"
                ))
                .into());
            }
        }
        self.async_op(actor, name, VmOp::Stop, |vm| {
            let secs = timeout_secs.unwrap_or(vm.spec.stop_timeout_secs());
            set_desired(vm, DesiredPhase::Stopped);
            vm.requested_op = Some(RequestedOp::Stop {
                timeout_ms: u64::from(secs) * 1000,
            });
        })
        .await
    }

    pub async fn poweroff(&self, actor: &Actor, name: &str) -> Result<TaskAccepted, ServiceError> {
        self.async_op(actor, name, VmOp::Poweroff, |vm| {
            set_desired(vm, DesiredPhase::Stopped);
            vm.requested_op = Some(RequestedOp::Poweroff);
        })
        .await
    }

    pub async fn reboot(&self, actor: &Actor, name: &str) -> Result<TaskAccepted, ServiceError> {
        self.async_op(actor, name, VmOp::Reboot, |vm| {
            vm.requested_op = Some(RequestedOp::Reboot {
                timeout_ms: u64::from(vm.spec.stop_timeout_secs()) * 1000,
            });
        })
        .await
    }

    pub async fn delete(&self, actor: &Actor, name: &str) -> Result<TaskAccepted, ServiceError> {
        self.async_op(actor, name, VmOp::Delete, |vm| vm.deletion_requested = true)
            .await
    }

    pub async fn pause(&self, project: &str, name: &str) -> Result<Vm, ServiceError> {
        self.sync_op(project, name, VmOp::Pause, Some(VmPhase::Paused))
            .await
    }

    pub async fn resume(&self, project: &str, name: &str) -> Result<Vm, ServiceError> {
        self.sync_op(project, name, VmOp::Resume, Some(VmPhase::Running))
            .await
    }

    pub async fn reset(&self, project: &str, name: &str) -> Result<Vm, ServiceError> {
        self.sync_op(project, name, VmOp::Reset, None).await
    }

    /// Writes the op's desired state (compare-and-swap on the VM, checked against the
    /// actor's `If-Match`) and runs the reconciler under the VM's lock.
    async fn async_op(
        &self,
        actor: &Actor,
        name: &str,
        op: VmOp,
        change: impl Fn(&mut VmRecord),
    ) -> Result<TaskAccepted, ServiceError> {
        let id = self.live_vm(&actor.project, name).await?.id;
        let guard = self.reconciler.locks().lock(id).await;
        let mut attempt = 1;
        loop {
            let mut vm = self.live_vm_by_id(id, name).await?;
            check_resource_version("vm", &vm.name, actor.if_match, vm.resource_version)?;
            valid_transition(&vm.name, vm.effective_phase(), op)?;
            change(&mut vm);
            vm.requested_by = Some(actor.requested_by.clone());
            match self.store.save_vm(&mut vm).await {
                Err(e) if retry_write(&e, actor, &mut attempt) => continue,
                r => r?,
            }
            return self.reconcile_written(vm, guard, actor).await;
        }
    }

    /// Reconciles the VM whose desired state was just written, under the held lock; the
    /// task it emits carries the actor's Idempotency-Key.
    async fn reconcile_written(
        &self,
        vm: VmRecord,
        guard: crate::locks::VmGuard,
        actor: &Actor,
    ) -> Result<TaskAccepted, ServiceError> {
        let task = self
            .reconciler
            .reconcile_locked(vm.id, &guard, actor.idempotency.as_ref())
            .await?;
        drop(guard);
        match task {
            Some(task) => self.accepted(task, vm.id).await,
            None => Err(ApiError::conflict(format!(
                "vm {} cannot act on this now (its node may be not ready or a task is in flight)",
                vm.name
            ))
            .into()),
        }
    }

    async fn sync_op(
        &self,
        project: &str,
        name: &str,
        op: VmOp,
        phase_after: Option<VmPhase>,
    ) -> Result<Vm, ServiceError> {
        let vm = self.live_vm(project, name).await?;
        valid_transition(&vm.name, vm.effective_phase(), op)?;
        let node = vm
            .node
            .clone()
            .ok_or_else(|| ApiError::conflict(format!("vm {} is not placed on a node", vm.name)))?;
        let reply = self
            .relay
            .sync(&node, op.as_str(), vm.id, SYNC_TIMEOUT)
            .await?;
        if !reply.ok {
            let code = ErrorCode::from_wire(&reply.error_code);
            let message = if reply.error_message.is_empty() {
                format!("the agent refused to {} vm {}", op.as_str(), vm.name)
            } else {
                reply.error_message.clone()
            };
            return Err(ApiError::new(code, message).into());
        }
        match &reply.vm {
            Some(report) => self.gateway.apply_vm_report(&node, report).await?,
            None => {
                if let Some(phase) = phase_after {
                    let _guard = self.reconciler.locks().lock(vm.id).await;
                    let mut attempt = 1;
                    loop {
                        let mut fresh = self.live_vm_by_id(vm.id, name).await?;
                        fresh.phase = phase;
                        match self.store.save_vm(&mut fresh).await {
                            Err(e) if e.is_conflict() && attempt < CAS_ATTEMPTS => attempt += 1,
                            r => break r?,
                        }
                    }
                }
            }
        }
        self.get(project, name).await
    }

    async fn accepted(&self, task: TaskRecord, vm_id: Uuid) -> Result<TaskAccepted, ServiceError> {
        let vm = self.store.vm_by_id(vm_id).await?;
        Ok(TaskAccepted {
            task: task.to_api(),
            vm: vm.map(|v| v.to_api()),
        })
    }

    /// The live VM named by a path segment (a UUID literal is 400).
    async fn live_vm(&self, project: &str, name: &str) -> Result<VmRecord, ServiceError> {
        validate_name("name", name)?;
        self.store
            .vm_by_name(project, name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("vm {name} not found")).into())
    }

    async fn live_vm_by_id(&self, id: Uuid, name: &str) -> Result<VmRecord, ServiceError> {
        match self.store.vm_by_id(id).await? {
            Some(vm) if vm.deleted_at_ms.is_none() => Ok(vm),
            _ => Err(ApiError::not_found(format!("vm {name} not found")).into()),
        }
    }
}

/// [`retry_on_conflict`] with the actor's `If-Match`.
pub(super) fn retry_write(e: &StoreError, actor: &Actor, attempt: &mut u32) -> bool {
    retry_on_conflict(e, actor.if_match, attempt)
}

/// Sets the desired phase, bumping the generation when the spec changes.
fn set_desired(vm: &mut VmRecord, desired: DesiredPhase) {
    if vm.spec.desired_phase != desired {
        vm.spec.desired_phase = desired;
        vm.generation += 1;
    }
}
