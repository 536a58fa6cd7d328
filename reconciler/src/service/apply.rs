//! Declarative apply of VMs (`PUT /v1/vms/{name}`): a server-side upsert of desired state
//! answering `created` (the same path as `POST /v1/vms`), `unchanged` (spec and
//! annotations equal what is stored: nothing written, no task) or `configured` (spec and
//! annotations stored, generation + 1 on a spec change, the reconciler run for the VM and
//! the task it emitted returned). Immutable fields cannot change (409 `immutable_field`).

use std::sync::Arc;

use otherix_api::validate::{validate_name, validate_vm_spec};
use otherix_api::{
    ApiError, ApplyOutcome, ApplyRequest, ApplyResponse, ApplyVm, CreateVmRequest, Vm, VmPhase,
    VmSpec, APPLY_BATCH_MAX,
};

use super::apply_diff::{immutable_changes, immutable_error};
use super::precondition::{check_resource_version, stale};
use super::vms::retry_write;
use super::{in_item, Actor, ServiceError, VmService};
use crate::reconcile::Reconciler;
use crate::store::Store;

pub struct ApplyService {
    store: Store,
    reconciler: Arc<Reconciler>,
    vms: Arc<VmService>,
}

impl ApplyService {
    pub fn new(store: Store, reconciler: Arc<Reconciler>, vms: Arc<VmService>) -> Self {
        ApplyService {
            store,
            reconciler,
            vms,
        }
    }

    /// `POST /v1/apply`: many VMs of the actor's project in one request. Every item is
    /// validated first (nothing is written if one is invalid; the error names it); the new
    /// ones are created in ONE transaction (all or none), then the existing ones are
    /// applied one by one as `PUT /v1/vms/{name}` would (`unchanged` writes nothing).
    /// Answers are in the request's order.
    pub async fn apply_vms(
        &self,
        actor: &Actor,
        items: Vec<ApplyVm>,
    ) -> Result<Vec<ApplyResponse<Vm>>, ServiceError> {
        if items.len() > APPLY_BATCH_MAX {
            return Err(ApiError::validation(format!(
                "vms: at most {APPLY_BATCH_MAX} per request (got {})",
                items.len()
            ))
            .into());
        }
        let mut seen = std::collections::HashMap::new();
        for (i, item) in items.iter().enumerate() {
            validate_apply(&item.name, &item.spec, &item.annotations, &item.labels)
                .map_err(|e| in_item(i, &item.name, e.into()))?;
            if let Some(first) = seen.insert(item.name.as_str(), i) {
                let why = format!("name: appears twice in this request (also vms[{first}])");
                return Err(in_item(i, &item.name, ApiError::validation(why).into()));
            }
        }
        let mut answers: Vec<Option<ApplyResponse<Vm>>> = vec![None; items.len()];
        let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
        let mut stored = self.store.vms_by_names(&actor.project, &names).await?;
        let (mut new, mut existing) = (Vec::new(), Vec::new());
        for (i, item) in items.into_iter().enumerate() {
            match stored.remove(&item.name) {
                None => new.push((i, item)),
                // What a re-apply mostly is: answered from the one read, nothing written.
                Some(vm) if is_unchanged(&vm, &item) => {
                    answers[i] = Some(ApplyResponse {
                        outcome: ApplyOutcome::Unchanged,
                        object: vm.to_api(),
                        task: None,
                    });
                }
                Some(_) => existing.push((i, item)),
            }
        }
        if !new.is_empty() {
            let indexes: Vec<usize> = new.iter().map(|(i, _)| *i).collect();
            let creates = new
                .into_iter()
                .map(|(i, item)| {
                    let req = CreateVmRequest {
                        name: item.name,
                        spec: item.spec,
                        labels: item.labels,
                    };
                    (i, req, item.annotations)
                })
                .collect();
            let accepted = self.vms.create_many(actor, creates).await?;
            for (i, accepted) in indexes.into_iter().zip(accepted) {
                let object = accepted
                    .vm
                    .ok_or_else(|| ApiError::internal("created vm missing from its answer"))?;
                answers[i] = Some(ApplyResponse {
                    outcome: ApplyOutcome::Created,
                    object,
                    task: Some(accepted.task),
                });
            }
        }
        for (i, item) in existing {
            let req = ApplyRequest {
                spec: item.spec,
                annotations: item.annotations,
                labels: item.labels,
            };
            let answer = self
                .apply_vm(actor, &item.name, req)
                .await
                .map_err(|e| in_item(i, &item.name, e))?;
            answers[i] = Some(answer);
        }
        Ok(answers.into_iter().flatten().collect())
    }

    /// `PUT /v1/vms/{name}`.
    pub async fn apply_vm(
        &self,
        actor: &Actor,
        name: &str,
        req: ApplyRequest<VmSpec>,
    ) -> Result<ApplyResponse<Vm>, ServiceError> {
        validate_apply(name, &req.spec, &req.annotations, &req.labels)?;
        let Some(existing) = self.store.vm_by_name(&actor.project, name).await? else {
            if let Some(expected) = actor.if_match {
                return Err(stale("vm", name, expected, None).into());
            }
            let create = CreateVmRequest {
                name: name.to_owned(),
                spec: req.spec,
                labels: req.labels,
            };
            let accepted = self
                .vms
                .create_annotated(actor, create, req.annotations)
                .await?;
            let object = accepted
                .vm
                .ok_or_else(|| ApiError::internal(format!("vm {name} vanished after create")))?;
            return Ok(ApplyResponse {
                outcome: ApplyOutcome::Created,
                object,
                task: Some(accepted.task),
            });
        };

        let guard = self.reconciler.locks().lock(existing.id).await;
        let mut attempt = 1;
        let vm = loop {
            let mut vm = match self.store.vm_by_id(existing.id).await? {
                Some(vm) if vm.deleted_at_ms.is_none() => vm,
                _ => {
                    return Err(ApiError::conflict(format!(
                        "vm {name} was deleted while this apply ran; apply again"
                    ))
                    .into())
                }
            };
            check_resource_version("vm", name, actor.if_match, vm.resource_version)?;
            if vm.deletion_requested || vm.phase == VmPhase::Deleting {
                return Err(ApiError::conflict(format!(
                    "vm {name} is deleting; apply again once it is gone"
                ))
                .into());
            }
            let changes = immutable_changes(&vm.spec, &req.spec);
            if !changes.is_empty() {
                return Err(immutable_error(&changes).into());
            }
            if vm.spec == req.spec && vm.annotations == req.annotations && vm.labels == req.labels {
                return Ok(ApplyResponse {
                    outcome: ApplyOutcome::Unchanged,
                    object: vm.to_api(),
                    task: None,
                });
            }
            if vm.spec != req.spec {
                vm.generation += 1;
                // A user change is worth trying at once rather than after a retry's backoff.
                vm.retry_at_ms = None;
            }
            vm.spec = req.spec.clone();
            vm.annotations = req.annotations.clone();
            vm.labels = req.labels.clone();
            vm.requested_by = Some(actor.requested_by.clone());
            // A spec that grows vcpus or memory_mb must still fit the project's quota; the
            // write is compare-and-swap on the version just read (and checked).
            match self.store.save_vm_in_quota(&mut vm).await {
                Err(e) if retry_write(&e, actor, &mut attempt) => continue,
                r => r?,
            }
            break vm;
        };
        let task = self
            .reconciler
            .reconcile_locked(vm.id, &guard, None)
            .await?;
        drop(guard);
        let object = self
            .store
            .vm_by_id(vm.id)
            .await?
            .map(|v| v.to_api())
            .ok_or_else(|| ApiError::not_found(format!("vm {name} not found")))?;
        Ok(ApplyResponse {
            outcome: ApplyOutcome::Configured,
            object,
            task: task.map(|t| t.to_api()),
        })
    }
}

/// The rules of one VM apply: its name, its spec, non-empty annotation keys, labels.
fn validate_apply(
    name: &str,
    spec: &VmSpec,
    annotations: &std::collections::BTreeMap<String, String>,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(), ApiError> {
    validate_name("name", name)?;
    validate_vm_spec("spec", spec)?;
    if annotations.keys().any(String::is_empty) {
        return Err(ApiError::validation("annotations: keys must not be empty"));
    }
    otherix_api::labels::validate_labels("labels", labels)
}

/// A stored VM an apply of `item` would leave alone (as [`ApplyService::apply_vm`] decides:
/// same spec and annotations, not being deleted; an immutable-field change is not
/// unchanged, so it goes the long way and gets its 409).
fn is_unchanged(vm: &crate::model::VmRecord, item: &ApplyVm) -> bool {
    !vm.deletion_requested
        && vm.phase != VmPhase::Deleting
        && vm.spec == item.spec
        && vm.annotations == item.annotations
        && vm.labels == item.labels
}
