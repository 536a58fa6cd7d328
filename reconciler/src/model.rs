//! Domain records the store persists and the service, reconciler and gateway read and
//! mutate: a VM row (desired spec + observed status + intents), a task row, a node row.
//! Pure data plus their conversions to the `otherix-api` wire types.

use otherix_api::manifest::AllocationRatio;
use otherix_api::{
    ErrorBody, GuestAgentState, Node, NodeStatus, Placement, Task, TaskKind, TaskProgress,
    TaskStatus, Vm, VmPhase, VmSpec, VmStatus,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Renders epoch milliseconds as an RFC 3339 UTC timestamp.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A one-shot operation the user asked for that `desired_phase` alone cannot express.
/// The reconciler turns it into a task and clears it in the same transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RequestedOp {
    Stop { timeout_ms: u64 },
    Poweroff,
    Reboot { timeout_ms: u64 },
}

impl RequestedOp {
    pub fn task_kind(self) -> TaskKind {
        match self {
            RequestedOp::Stop { .. } => TaskKind::VmStop,
            RequestedOp::Poweroff => TaskKind::VmPoweroff,
            RequestedOp::Reboot { .. } => TaskKind::VmReboot,
        }
    }
    pub fn timeout_ms(self) -> Option<u64> {
        match self {
            RequestedOp::Stop { timeout_ms } | RequestedOp::Reboot { timeout_ms } => {
                Some(timeout_ms)
            }
            RequestedOp::Poweroff => None,
        }
    }
}

/// The Idempotency-Key of a task-creating request, scoped to the caller's token
/// (`{token}/{key}`), and the fingerprint of the request (method, path, query, body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyStamp {
    pub key: String,
    pub request: String,
}

/// Whether a field QEMU reads at boot differs: vcpus, memory, cloud-init, port forwards.
/// (desired_phase, restart_policy and stop_timeout_secs act without a reboot.)
pub fn boot_fields_differ(booted: &VmSpec, spec: &VmSpec) -> bool {
    booted.vcpus != spec.vcpus
        || booted.memory_mb != spec.memory_mb
        || booted.user_data != spec.user_data
        || booted.network_config != spec.network_config
        || booted.ssh_authorized_keys != spec.ssh_authorized_keys
        || booted.ports != spec.ports
}

/// One row of `vms`.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRecord {
    pub id: Uuid,
    pub name: String,
    /// The project the VM belongs to; names are unique per project.
    pub project: String,
    pub spec: VmSpec,
    pub generation: i64,
    pub observed_generation: i64,
    /// The phase as last written by the reconciler or an agent report.
    pub phase: VmPhase,
    pub node: Option<String>,
    pub pool: Option<String>,
    pub pool_path: Option<String>,
    pub pid: Option<u32>,
    pub serial_log: Option<String>,
    pub requested_op: Option<RequestedOp>,
    pub last_error: Option<ErrorBody>,
    pub deletion_requested: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub deleted_at_ms: Option<i64>,
    /// Read-only (filled by queries): false when the VM's node is not ready.
    pub node_ready: bool,
    /// Read-only (filled by queries): the in-flight task, if any.
    pub current_task: Option<Uuid>,
    /// The host bridge `spec.network` resolved to at create time.
    pub bridge: Option<String>,
    /// The firmware `spec.firmware` / `spec.firmware_id` resolved to at create time.
    pub firmware: Option<ResolvedFirmware>,
    /// `metadata.annotations` (user-written, like the spec).
    pub annotations: std::collections::BTreeMap<String, String>,
    /// `metadata.labels` (user-written, like the spec; `vm list -l` selects on them).
    pub labels: std::collections::BTreeMap<String, String>,
    /// The spec the running QEMU booted with (set when create/start/reboot succeeds).
    pub booted_spec: Option<VmSpec>,
    pub booted_at_ms: Option<i64>,
    /// A retry the reconciler owes the VM (see `reconcile::retry`): the task kind, the
    /// consecutive attempt number, and when it is due.
    pub retry_kind: Option<TaskKind>,
    pub retry_attempts: u32,
    pub retry_at_ms: Option<i64>,
    /// The API token whose request last changed the desired state; the next task the
    /// reconciler emits carries it (`Task.requested_by`) and it is cleared.
    pub requested_by: Option<String>,
    /// Bumped on every write of the row; writes are compare-and-swap on it.
    pub resource_version: i64,
    /// What the VM's guest agent last told the node agent during this boot (`None`:
    /// nothing yet; cleared when the VM stops).
    pub guest: Option<GuestState>,
}

/// A VM's guest as its guest agent describes it (the agent's `GuestInfo`), stored as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestState {
    pub connected: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os_version: String,
    /// The guest agent has answered at least once during this boot (`status.ready`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub answered: bool,
}

impl From<&otherix_api::proto::GuestInfo> for GuestState {
    fn from(g: &otherix_api::proto::GuestInfo) -> Self {
        GuestState {
            connected: g.connected,
            addresses: g.addresses.clone(),
            os_name: g.os_name.clone(),
            os_version: g.os_version.clone(),
            answered: g.connected,
        }
    }
}

/// A firmware as a VM boots with it (the agent's `FirmwareRef`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedFirmware {
    pub name: String,
    /// `bios` or `uefi`.
    #[serde(rename = "type")]
    pub firmware_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vars_template: Option<String>,
}

impl VmRecord {
    /// A freshly accepted VM: pending, not placed.
    pub fn new(name: String, spec: VmSpec, now_ms: i64) -> Self {
        VmRecord {
            id: Uuid::new_v4(),
            name,
            project: otherix_api::DEFAULT_PROJECT.to_owned(),
            spec,
            generation: 1,
            observed_generation: 0,
            phase: VmPhase::Pending,
            node: None,
            pool: None,
            pool_path: None,
            pid: None,
            serial_log: None,
            requested_op: None,
            last_error: None,
            deletion_requested: false,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            deleted_at_ms: None,
            node_ready: true,
            current_task: None,
            bridge: None,
            firmware: None,
            annotations: Default::default(),
            labels: Default::default(),
            booted_spec: None,
            booted_at_ms: None,
            retry_kind: None,
            retry_attempts: 0,
            retry_at_ms: None,
            requested_by: None,
            resource_version: 1,
            guest: None,
        }
    }

    /// `status.last_error` as users see it: while a retry is pending, the message says
    /// which attempt comes when, e.g.
    /// `qemu exited (retry 3: vm.start at 2025-01-01T00:00:08.000Z)`.
    pub fn last_error_with_retry(&self) -> Option<ErrorBody> {
        let mut error = self.last_error.clone()?;
        if let (Some(kind), Some(at)) = (self.retry_kind, self.retry_at_ms) {
            error.message = format!(
                "{} (retry {}: {kind} at {})",
                error.message,
                self.retry_attempts,
                rfc3339(at)
            );
        }
        Some(error)
    }

    /// `status.restart_pending`: QEMU is up and was booted from a spec whose boot-time
    /// fields have changed since; cleared by the next boot (create, start, reboot).
    pub fn restart_pending(&self) -> bool {
        let qemu_up = matches!(
            self.phase,
            VmPhase::Running | VmPhase::Paused | VmPhase::Stopping | VmPhase::Rebooting
        );
        qemu_up
            && self.observed_generation < self.generation
            && self
                .booted_spec
                .as_ref()
                .is_some_and(|b| boot_fields_differ(b, &self.spec))
    }

    /// The phase users see: `unknown` while the VM's node is not ready.
    pub fn effective_phase(&self) -> VmPhase {
        effective_phase(self.phase, self.node.is_some(), self.node_ready)
    }

    pub fn to_api(&self) -> Vm {
        // Guest agent fields only while QEMU runs (and the node is known to be up).
        let qemu_up = matches!(
            self.effective_phase(),
            VmPhase::Running | VmPhase::Paused | VmPhase::Stopping | VmPhase::Rebooting
        );
        let no_guest = GuestState::default();
        let guest = self.guest.as_ref().filter(|_| qemu_up).unwrap_or(&no_guest);
        Vm {
            id: self.id,
            name: self.name.clone(),
            project: self.project.clone(),
            annotations: self.annotations.clone(),
            labels: self.labels.clone(),
            generation: self.generation,
            resource_version: self.resource_version,
            spec: self.spec.clone(),
            status: VmStatus {
                phase: self.effective_phase(),
                node: self.node.clone(),
                pool: self.pool.clone(),
                pid: self.pid,
                serial_log: self.serial_log.clone(),
                current_task: self.current_task,
                last_error: self.last_error_with_retry(),
                observed_generation: self.observed_generation,
                restart_pending: self.restart_pending(),
                guest_agent: qemu_up.then_some(if guest.connected {
                    GuestAgentState::Connected
                } else {
                    GuestAgentState::NotConnected
                }),
                addresses: guest.addresses.clone(),
                os: (!guest.os_name.is_empty()).then(|| guest.os_name.clone()),
                ready: (guest.connected || guest.answered).then_some(true),
            },
            created_at: rfc3339(self.created_at_ms),
            updated_at: rfc3339(self.updated_at_ms),
        }
    }
}

/// Phases that do not depend on a live QEMU and so stay as they are when the node is gone.
pub const PHASES_WITHOUT_QEMU: [VmPhase; 3] = [VmPhase::Pending, VmPhase::Deleted, VmPhase::Failed];

/// The phase users see for a stored phase on a node that may be not ready. The store's
/// SQL filter mirrors this rule (`store::vms::EFFECTIVE_PHASE_SQL`).
pub fn effective_phase(stored: VmPhase, placed: bool, node_ready: bool) -> VmPhase {
    if placed && !node_ready && !PHASES_WITHOUT_QEMU.contains(&stored) {
        VmPhase::Unknown
    } else {
        stored
    }
}

/// One row of `tasks`.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub id: Uuid,
    pub kind: TaskKind,
    pub vm_id: Option<Uuid>,
    pub vm_name: Option<String>,
    pub project: String,
    pub requested_by: Option<String>,
    pub node: Option<String>,
    pub status: TaskStatus,
    pub progress: Option<TaskProgress>,
    pub error: Option<ErrorBody>,
    pub placement: Option<Placement>,
    pub idempotency_key: Option<String>,
    /// The fingerprint of the request that carried the key (see `IdempotencyStamp`).
    pub idempotency_request: Option<String>,
    /// For vm.stop and vm.reboot: how long the agent waits for the guest.
    pub stop_timeout_ms: Option<u64>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    /// The leader epoch of the reconcile loop that emitted it (fencing token); `None`
    /// for tasks emitted on the HTTP path and on SQLite.
    pub epoch: Option<i64>,
}

impl TaskRecord {
    /// A new pending task for `vm` on `node`.
    pub fn pending(kind: TaskKind, vm: &VmRecord, node: Option<String>, now_ms: i64) -> Self {
        TaskRecord {
            id: Uuid::new_v4(),
            kind,
            vm_id: Some(vm.id),
            vm_name: Some(vm.name.clone()),
            project: vm.project.clone(),
            requested_by: vm.requested_by.clone(),
            node,
            status: TaskStatus::Pending,
            progress: None,
            error: None,
            placement: None,
            idempotency_key: None,
            idempotency_request: None,
            stop_timeout_ms: None,
            created_at_ms: now_ms,
            started_at_ms: None,
            finished_at_ms: None,
            epoch: None,
        }
    }

    /// Records the Idempotency-Key of the request that creates this task (stored with the
    /// task in its transaction; the unique index refuses a second task with it).
    pub fn stamp(&mut self, stamp: Option<&IdempotencyStamp>) {
        if let Some(s) = stamp {
            self.idempotency_key = Some(s.key.clone());
            self.idempotency_request = Some(s.request.clone());
        }
    }

    pub fn to_api(&self) -> Task {
        Task {
            id: self.id,
            kind: self.kind,
            status: self.status,
            vm_id: self.vm_id,
            vm_name: self.vm_name.clone(),
            project: self.project.clone(),
            requested_by: self.requested_by.clone(),
            node: self.node.clone(),
            progress: self.progress.clone(),
            error: self.error.clone(),
            placement: self.placement.clone(),
            created_at: rfc3339(self.created_at_ms),
            started_at: self.started_at_ms.map(rfc3339),
            finished_at: self.finished_at_ms.map(rfc3339),
        }
    }
}

/// A pool served by a node, at the node's own path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePool {
    pub pool_id: Uuid,
    pub pool: String,
    pub path: String,
}

/// One row of `nodes` with its pool instances and what is committed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: Uuid,
    pub name: String,
    pub status: NodeStatus,
    pub arch: String,
    pub guest_arches: Vec<String>,
    pub accel: String,
    pub vcpus: u32,
    pub memory_mb: u64,
    pub last_heartbeat_ms: Option<i64>,
    pub pools: Vec<NodePool>,
    /// Live VMs placed on this node and the vCPUs and memory they commit.
    pub allocated_vms: u32,
    pub allocated_vcpus: u32,
    pub allocated_memory_mb: u64,
    /// The agent accepts `file://` image URLs (`--allow-file-urls`).
    pub allow_file_urls: bool,
}

impl NodeRecord {
    /// The API view; `ratios` are the cluster's (cpu, memory) allocation ratios.
    pub fn to_api(&self, (cpu, memory): (AllocationRatio, AllocationRatio)) -> Node {
        Node {
            id: self.id,
            name: self.name.clone(),
            status: self.status,
            arch: self.arch.clone(),
            guest_arches: self.guest_arches.clone(),
            accel: self.accel.clone(),
            vcpus: self.vcpus,
            memory_mb: self.memory_mb,
            allocated_vcpus: self.allocated_vcpus,
            allocated_memory_mb: self.allocated_memory_mb,
            schedulable_vcpus: u32::try_from(cpu.apply(u64::from(self.vcpus))).unwrap_or(u32::MAX),
            schedulable_memory_mb: memory.apply(self.memory_mb),
            pools: self.pools.iter().map(|p| p.pool.clone()).collect(),
            last_heartbeat: self.last_heartbeat_ms.map(rfc3339),
            allow_file_urls: self.allow_file_urls,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_phase_not_ready_node_running_is_unknown() {
        assert_eq!(
            effective_phase(VmPhase::Running, true, false),
            VmPhase::Unknown
        );
        assert_eq!(
            effective_phase(VmPhase::Running, true, true),
            VmPhase::Running
        );
        assert_eq!(
            effective_phase(VmPhase::Failed, true, false),
            VmPhase::Failed
        );
        assert_eq!(
            effective_phase(VmPhase::Pending, false, false),
            VmPhase::Pending
        );
    }

    #[test]
    fn requested_op_json_round_trips() {
        let op = RequestedOp::Stop { timeout_ms: 5000 };
        let json = serde_json::to_string(&op).unwrap();
        assert_eq!(json, r#"{"op":"stop","timeout_ms":5000}"#);
        assert_eq!(serde_json::from_str::<RequestedOp>(&json).unwrap(), op);
    }

    #[test]
    fn rfc3339_epoch_ms_renders_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }

    fn spec() -> VmSpec {
        VmSpec::new("http://x/a.img", otherix_api::Arch::Amd64)
    }

    #[test]
    fn last_error_with_retry_names_the_pending_attempt() {
        let mut vm = VmRecord::new("web-1".into(), spec(), 1);
        assert_eq!(vm.last_error_with_retry(), None);
        vm.last_error = Some(ErrorBody {
            code: otherix_api::ErrorCode::Internal,
            message: "qemu exited".into(),
        });
        assert_eq!(vm.last_error_with_retry().unwrap().message, "qemu exited");
        vm.retry_kind = Some(TaskKind::VmStart);
        vm.retry_attempts = 3;
        vm.retry_at_ms = Some(8000);
        assert_eq!(
            vm.last_error_with_retry().unwrap().message,
            "qemu exited (retry 3: vm.start at 1970-01-01T00:00:08.000Z)"
        );
    }

    #[test]
    fn restart_pending_only_while_qemu_runs_an_older_boot_spec() {
        use otherix_api::DesiredPhase;
        let mut vm = VmRecord::new("web-1".into(), spec(), 1);
        vm.phase = VmPhase::Running;
        vm.booted_spec = Some(spec());
        vm.observed_generation = 1;
        assert!(!vm.restart_pending(), "booted with the current spec");
        vm.spec.vcpus = 4;
        vm.generation = 2;
        assert!(vm.restart_pending(), "vcpus changed while running");
        vm.phase = VmPhase::Stopped;
        assert!(
            !vm.restart_pending(),
            "a stopped vm boots with the new spec"
        );
        vm.phase = VmPhase::Running;
        vm.spec.vcpus = 2;
        vm.spec.desired_phase = DesiredPhase::Stopped;
        vm.generation = 3;
        assert!(!vm.restart_pending(), "desired_phase is not boot-time");
        vm.booted_spec = None;
        vm.spec.vcpus = 4;
        assert!(!vm.restart_pending(), "unknown boot spec");
    }
}
