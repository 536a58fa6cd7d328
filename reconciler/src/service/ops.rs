//! Operations that reach past the VM row: task cancellation (in the store, and on the agent
//! with `CancelTask`), Idempotency-Key replays of task-creating requests, serial console
//! logs and per-pool image caches read from the agents with `SyncRequest`s.

use std::sync::Arc;
use std::time::Duration;

use otherix_api::proto::{SyncReply, SyncRequest};
use otherix_api::validate::validate_name;
use otherix_api::{
    ApiError, CachedImage, DesiredPhase, ErrorBody, ErrorCode, ListResponse, LogChunk, NodeStatus,
    Task, TaskAccepted, TaskKind, TaskStatus, VmPhase,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::ServiceError;
use crate::auth::policy::may_see;
use crate::auth::Caller;
use crate::error_chain;
use crate::events::TaskEvents;
use crate::model::{rfc3339, IdempotencyStamp, VmRecord};
use crate::reconcile::Reconciler;
use crate::relay::Relay;
use crate::store::{Store, CAS_ATTEMPTS};

/// Idempotency keys are per API token: another caller's request never replays (or
/// reveals) a task someone else created with the same key.
fn scoped_idempotency_key(caller: &str, key: &str) -> String {
    format!("{caller}/{key}")
}

/// What a request with an Idempotency-Key stamps on the task it creates.
pub fn idempotency_stamp(caller: &str, key: &str, fingerprint: &str) -> IdempotencyStamp {
    IdempotencyStamp {
        key: scoped_idempotency_key(caller, key),
        request: fingerprint.to_owned(),
    }
}

/// How long a logs request waits for the agent.
pub const LOGS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an images / prune-images request waits for each agent.
pub const IMAGES_TIMEOUT: Duration = Duration::from_secs(30);
/// `max_bytes` of a logs request: default and maximum.
pub const DEFAULT_LOG_BYTES: u64 = 64 * 1024;
pub const MAX_LOG_BYTES: u64 = 1024 * 1024;
/// The longest Idempotency-Key accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

pub struct OpsService {
    store: Store,
    relay: Arc<Relay>,
    reconciler: Arc<Reconciler>,
    events: TaskEvents,
}

impl OpsService {
    pub fn new(
        store: Store,
        relay: Arc<Relay>,
        reconciler: Arc<Reconciler>,
        events: TaskEvents,
    ) -> Self {
        OpsService {
            store,
            relay,
            reconciler,
            events,
        }
    }

    // ---- task cancel ----

    /// Cancels a task. Pending: cancelled at once (the VM settles back to the phase it had,
    /// `failed` for a VM never created) and, if the agent may have it, `CancelTask` is sent.
    /// Running: `CancelTask` is sent and the agent reports `CANCELLED`. Terminal: 409.
    pub async fn cancel_task(&self, caller: &Caller, id: Uuid) -> Result<Task, ServiceError> {
        let peek = self.task(id).await?;
        if !may_see(caller, &peek.project) {
            return Err(ApiError::not_found(format!("task {id} not found")).into());
        }
        let _guard = match peek.vm_id {
            Some(vm_id) => Some(self.reconciler.locks().lock(vm_id).await),
            None => None,
        };
        let mut task = self.task(id).await?;
        match task.status {
            TaskStatus::Success | TaskStatus::Failed | TaskStatus::Cancelled => {
                Err(ApiError::conflict(format!("task {id} is already {}", task.status)).into())
            }
            TaskStatus::Running => {
                let node = task.node.clone().unwrap_or_default();
                if !self.send_cancel(&node, id).await? {
                    return Err(ApiError::new(
                        ErrorCode::AgentUnavailable,
                        format!(
                            "node {node} has no agent attached; task {id} cannot be cancelled now"
                        ),
                    )
                    .into());
                }
                tracing::info!(task = %id, node, "cancel sent to the agent");
                Ok(task.to_api())
            }
            TaskStatus::Pending => {
                let now = self.store.now_ms();
                let error = ErrorBody {
                    code: ErrorCode::Cancelled,
                    message: "cancelled by request".to_owned(),
                };
                task.status = TaskStatus::Cancelled;
                task.started_at_ms.get_or_insert(now);
                task.finished_at_ms = Some(now);
                task.error = Some(error.clone());
                let mut attempt = 1;
                loop {
                    let vm = match task.vm_id {
                        Some(vm_id) => self.store.vm_by_id(vm_id).await?,
                        None => None,
                    };
                    let Some(mut vm) = vm else {
                        self.store.save_task(&task).await?;
                        break;
                    };
                    settle_cancelled(&mut vm, task.kind, error.clone());
                    match self.store.save_vm_and_task(&mut vm, &task).await {
                        // Another replica wrote the VM since the read: settle that.
                        Err(e) if e.is_conflict() && attempt < CAS_ATTEMPTS => attempt += 1,
                        r => break r?,
                    }
                }
                self.events.task_changed(id);
                if let Some(node) = &task.node {
                    // The agent may already hold it (dispatched, no update yet).
                    self.send_cancel(node, id).await?;
                }
                tracing::info!(task = %id, kind = %task.kind, "pending task cancelled");
                Ok(task.to_api())
            }
        }
    }

    async fn send_cancel(&self, node: &str, task_id: Uuid) -> Result<bool, ServiceError> {
        Ok(self.relay.cancel_task(node, task_id).await?)
    }

    async fn task(&self, id: Uuid) -> Result<crate::model::TaskRecord, ServiceError> {
        self.store
            .task(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("task {id} not found")).into())
    }

    // ---- idempotency ----

    /// The answer a request with this Idempotency-Key got before, if any; 409 when the key
    /// was used for a different request (`fingerprint` from [`request_fingerprint`]).
    pub async fn idempotent_replay(
        &self,
        caller: &str,
        key: &str,
        fingerprint: &str,
    ) -> Result<Option<TaskAccepted>, ServiceError> {
        let stored = scoped_idempotency_key(caller, key);
        let Some((task, used_for)) = self.store.task_by_idempotency_key(&stored).await? else {
            return Ok(None);
        };
        if used_for.as_deref() != Some(fingerprint) {
            return Err(ApiError::conflict(format!(
                "Idempotency-Key {key:?} was already used for a different request (task {} of vm {})",
                task.id,
                task.vm_name.as_deref().unwrap_or("-")
            ))
            .into());
        }
        let vm = match task.vm_id {
            Some(id) => self.store.vm_by_id(id).await?,
            None => None,
        };
        Ok(Some(TaskAccepted {
            task: task.to_api(),
            vm: vm.map(|v| v.to_api()),
        }))
    }

    /// Remembers that the request with this key and fingerprint created `task_id`.
    pub async fn record_idempotency(
        &self,
        task_id: Uuid,
        caller: &str,
        key: &str,
        fingerprint: &str,
    ) -> Result<(), ServiceError> {
        self.store
            .set_task_idempotency(task_id, &scoped_idempotency_key(caller, key), fingerprint)
            .await?;
        Ok(())
    }

    // ---- logs ----

    /// A slice of the VM's serial console log from its node's agent.
    pub async fn vm_logs(
        &self,
        project: &str,
        name: &str,
        offset: Option<u64>,
        max_bytes: Option<u64>,
    ) -> Result<LogChunk, ServiceError> {
        validate_name("name", name)?;
        let max_bytes = match max_bytes {
            None => DEFAULT_LOG_BYTES,
            Some(m) if (1..=MAX_LOG_BYTES).contains(&m) => m,
            Some(m) => {
                return Err(ApiError::validation(format!(
                    "max_bytes: must be 1..{MAX_LOG_BYTES} (got {m})"
                ))
                .into())
            }
        };
        let offset = offset.unwrap_or(0);
        let vm = self
            .store
            .vm_by_name(project, name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("vm {name} not found")))?;
        let node = vm.node.clone().ok_or_else(|| {
            ApiError::conflict(format!(
                "vm {name} is not placed on a node; it has no log yet"
            ))
        })?;
        let reply = self
            .relay
            .sync_request(
                &node,
                SyncRequest {
                    op: "logs".to_owned(),
                    vm_id: vm.id.to_string(),
                    offset,
                    max_bytes,
                    ..Default::default()
                },
                LOGS_TIMEOUT,
            )
            .await?;
        check_reply(&reply, &format!("read the log of vm {name}"))?;
        Ok(log_chunk(offset, reply))
    }

    // ---- pool images ----

    /// The cached images of a pool on every ready node serving it (`prune`: removes the
    /// ones no VM uses and lists what was removed). Nodes that do not answer are skipped.
    pub async fn pool_images(
        &self,
        pool_ref: &str,
        prune: bool,
    ) -> Result<ListResponse<CachedImage>, ServiceError> {
        let pool = self
            .store
            .list_pools()
            .await?
            .into_iter()
            .find(|p| p.name == pool_ref || p.id.to_string() == pool_ref)
            .ok_or_else(|| ApiError::not_found(format!("pool {pool_ref} not found")))?;
        let nodes: Vec<String> = self
            .store
            .list_nodes()
            .await?
            .into_iter()
            .filter(|n| {
                n.status == NodeStatus::Ready && n.pools.iter().any(|p| p.pool_id == pool.id)
            })
            .map(|n| n.name)
            .collect();
        let op = if prune { "prune-images" } else { "images" };
        let requests = nodes.iter().map(|node| {
            let request = SyncRequest {
                op: op.to_owned(),
                pool: pool.name.clone(),
                ..Default::default()
            };
            async move {
                (
                    node,
                    self.relay.sync_request(node, request, IMAGES_TIMEOUT).await,
                )
            }
        });
        let mut items = Vec::new();
        for (node, result) in futures::future::join_all(requests).await {
            match result {
                Ok(reply) if reply.ok => {
                    items.extend(reply.images.into_iter().map(|i| CachedImage {
                        node: node.clone(),
                        sha256: i.sha256,
                        url: i.url,
                        size: i.size,
                        last_used: (i.last_used_ms > 0).then(|| rfc3339(i.last_used_ms as i64)),
                        used_by: i.used_by,
                    }));
                }
                Ok(reply) => tracing::warn!(
                    node = %node, pool = %pool.name, op,
                    code = %reply.error_code, error = %reply.error_message,
                    "agent refused the images request; skipping the node"
                ),
                Err(e) => tracing::warn!(
                    node = %node, pool = %pool.name, op, error = %error_chain(&e),
                    "agent did not answer the images request; skipping the node"
                ),
            }
        }
        items.sort_by(|a, b| (&a.node, &a.sha256).cmp(&(&b.node, &b.sha256)));
        if prune {
            tracing::info!(pool = %pool.name, removed = items.len(), "pool images pruned");
        }
        Ok(ListResponse {
            items,
            next_cursor: None,
        })
    }
}

/// A refused sync request as the error the agent named.
fn check_reply(reply: &SyncReply, what: &str) -> Result<(), ApiError> {
    if reply.ok {
        return Ok(());
    }
    let message = if reply.error_message.is_empty() {
        format!("the agent could not {what}")
    } else {
        reply.error_message.clone()
    };
    Err(ApiError::new(
        ErrorCode::from_wire(&reply.error_code),
        message,
    ))
}

/// The reply's bytes as text. A UTF-8 sequence cut at the end of the chunk is left for the
/// next read (`next_offset` moves back to its start) unless the log ends there.
fn log_chunk(offset: u64, reply: SyncReply) -> LogChunk {
    let mut data = reply.data;
    let mut next_offset = reply.next_offset.max(offset);
    let mut eof = reply.eof;
    if let Err(e) = std::str::from_utf8(&data) {
        let cut = e.valid_up_to();
        let tail = data.len() - cut;
        if e.error_len().is_none() && tail < 4 && cut > 0 && !eof {
            data.truncate(cut);
            next_offset -= tail as u64;
            eof = false;
        }
    }
    LogChunk {
        data: String::from_utf8_lossy(&data).into_owned(),
        next_offset,
        eof,
    }
}

/// A stable fingerprint of a request: method, path, query and body (JSON bodies in a
/// canonical form, so key order and whitespace do not matter).
pub fn request_fingerprint(method: &str, path_and_query: &str, body: &[u8]) -> String {
    let body_text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => v.to_string(),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update(b" ");
    h.update(path_and_query.as_bytes());
    h.update(b"\n");
    h.update(body_text.as_bytes());
    hex::encode(h.finalize())
}

/// Checks an Idempotency-Key header value.
pub fn validate_idempotency_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::validation(format!(
            "Idempotency-Key: must be 1..{MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
        )));
    }
    Ok(())
}

/// Puts a VM whose pending task of `kind` was cancelled back where it was, with a desired
/// phase that matches, so the reconciler does not emit the same task again.
fn settle_cancelled(vm: &mut VmRecord, kind: TaskKind, error: ErrorBody) {
    vm.requested_op = None;
    let (phase, desired) = match kind {
        TaskKind::VmCreate => {
            vm.pid = None;
            vm.last_error = Some(error);
            (VmPhase::Failed, vm.spec.desired_phase)
        }
        TaskKind::VmStart => (VmPhase::Stopped, DesiredPhase::Stopped),
        TaskKind::VmStop | TaskKind::VmPoweroff | TaskKind::VmReboot => {
            (VmPhase::Running, DesiredPhase::Running)
        }
        TaskKind::VmDelete => {
            vm.deletion_requested = false;
            if vm.pid.is_some() {
                (VmPhase::Running, DesiredPhase::Running)
            } else if vm.observed_generation == 0 {
                (VmPhase::Failed, vm.spec.desired_phase)
            } else {
                (VmPhase::Stopped, DesiredPhase::Stopped)
            }
        }
    };
    vm.phase = phase;
    if vm.spec.desired_phase != desired {
        vm.spec.desired_phase = desired;
        vm.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otherix_api::{Arch, VmSpec};

    #[test]
    fn log_chunk_cut_utf8_sequence_is_left_for_next_read() {
        let text = "ok é".as_bytes();
        let cut = &text[..text.len() - 1];
        let chunk = log_chunk(
            100,
            SyncReply {
                ok: true,
                data: cut.to_vec(),
                next_offset: 100 + cut.len() as u64,
                ..Default::default()
            },
        );
        assert_eq!(chunk.data, "ok ");
        assert_eq!(chunk.next_offset, 103);
        assert!(!chunk.eof);
    }

    #[test]
    fn log_chunk_invalid_bytes_are_replaced() {
        let chunk = log_chunk(
            0,
            SyncReply {
                ok: true,
                data: vec![b'a', 0xff, b'b'],
                next_offset: 3,
                eof: true,
                ..Default::default()
            },
        );
        assert_eq!(chunk.data, "a\u{fffd}b");
        assert_eq!((chunk.next_offset, chunk.eof), (3, true));
    }

    #[test]
    fn request_fingerprint_json_key_order_is_ignored() {
        let a = request_fingerprint("POST", "/v1/vms", br#"{"name":"a","spec":{"x":1}}"#);
        let b = request_fingerprint("POST", "/v1/vms", br#"{ "spec":{"x":1}, "name":"a" }"#);
        let c = request_fingerprint("POST", "/v1/vms", br#"{"name":"b","spec":{"x":1}}"#);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn settle_cancelled_table() {
        let table = [
            (TaskKind::VmCreate, VmPhase::Failed, DesiredPhase::Running),
            (TaskKind::VmStart, VmPhase::Stopped, DesiredPhase::Stopped),
            (TaskKind::VmStop, VmPhase::Running, DesiredPhase::Running),
            (TaskKind::VmReboot, VmPhase::Running, DesiredPhase::Running),
        ];
        for (kind, phase, desired) in table {
            let mut vm = VmRecord::new("a".into(), VmSpec::new("http://x/i", Arch::Amd64), 1);
            let err = ErrorBody {
                code: ErrorCode::Cancelled,
                message: "x".into(),
            };
            settle_cancelled(&mut vm, kind, err);
            assert_eq!(
                (vm.phase, vm.spec.desired_phase),
                (phase, desired),
                "{kind}"
            );
            assert_eq!(
                vm.last_error.is_some(),
                kind == TaskKind::VmCreate,
                "{kind}"
            );
        }
    }
}
