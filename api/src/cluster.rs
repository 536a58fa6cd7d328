//! Cluster entities the VM spec points at: nodes (registered by agents) and storage pools
//! with their per-node instances.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Ready,
    NotReady,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Ready => "ready",
            NodeStatus::NotReady => "not_ready",
        }
    }
}

/// A node as its agent registered it, with what the control plane has committed to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Node {
    pub id: Uuid,
    pub name: String,
    pub status: NodeStatus,
    /// Host architecture (`amd64`, `arm64`).
    pub arch: String,
    /// Guest architectures the node can run.
    pub guest_arches: Vec<String>,
    /// `kvm` or `tcg`.
    pub accel: String,
    pub vcpus: u32,
    pub memory_mb: u64,
    pub allocated_vcpus: u32,
    pub allocated_memory_mb: u64,
    /// Names of the pools this node serves.
    pub pools: Vec<String>,
    /// RFC 3339 time of the last heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
}

/// One pool's presence on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PoolInstance {
    pub id: Uuid,
    pub node: String,
    pub path: String,
}

/// A storage pool: a name that nodes serve at their own paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Pool {
    pub id: Uuid,
    pub name: String,
    pub instances: Vec<PoolInstance>,
}
