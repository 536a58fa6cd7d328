//! The async task model: durable tasks, their progress, and placement records.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ErrorBody;
use crate::vm::Vm;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TaskKind {
    #[serde(rename = "vm.create")]
    VmCreate,
    #[serde(rename = "vm.start")]
    VmStart,
    #[serde(rename = "vm.stop")]
    VmStop,
    #[serde(rename = "vm.poweroff")]
    VmPoweroff,
    #[serde(rename = "vm.reboot")]
    VmReboot,
    #[serde(rename = "vm.delete")]
    VmDelete,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::VmCreate => "vm.create",
            TaskKind::VmStart => "vm.start",
            TaskKind::VmStop => "vm.stop",
            TaskKind::VmPoweroff => "vm.poweroff",
            TaskKind::VmReboot => "vm.reboot",
            TaskKind::VmDelete => "vm.delete",
        }
    }
    pub fn parse(s: &str) -> Option<TaskKind> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }
    /// The verb the CLI prints for it: `create`, `stop`, ...
    pub fn op(self) -> &'static str {
        &self.as_str()[3..]
    }
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Pending,
    Running,
    Success,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Success => "success",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<TaskStatus> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Success | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the agent is doing right now for a task.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct TaskProgress {
    /// e.g. "downloading image", "powerdown sent", "waiting for guest".
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
}

/// A node the scheduler passed over, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RejectedNode {
    pub node: String,
    pub reason: String,
}

/// The scheduler's decision for a vm.create task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Placement {
    pub node: String,
    pub pool: String,
    /// Path of the pool instance on the chosen node.
    pub pool_path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<RejectedNode>,
}

/// A durable task row as `GET /v1/tasks/{id}` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Task {
    pub id: Uuid,
    pub kind: TaskKind,
    pub status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_name: Option<String>,
    /// The project of the task's VM.
    #[serde(default = "crate::identity::default_project_name")]
    pub project: String,
    /// The API token whose request emitted the task (absent for the reconciler's own
    /// retries and restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<TaskProgress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// RFC 3339 timestamps.
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// The 202 body of every async operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskAccepted {
    pub task: Task,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<Vm>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_kind_wire_names_and_ops() {
        assert_eq!(
            serde_json::to_value(TaskKind::VmCreate).unwrap(),
            serde_json::json!("vm.create")
        );
        assert_eq!(TaskKind::parse("vm.poweroff"), Some(TaskKind::VmPoweroff));
        assert_eq!(TaskKind::VmDelete.op(), "delete");
        assert_eq!(TaskKind::VmStop.op(), "stop");
    }

    #[test]
    fn task_status_terminality() {
        assert!(!TaskStatus::Pending.is_terminal());
        assert!(!TaskStatus::Running.is_terminal());
        assert!(TaskStatus::Success.is_terminal());
        assert!(TaskStatus::Failed.is_terminal());
        assert!(TaskStatus::Cancelled.is_terminal());
    }
}
