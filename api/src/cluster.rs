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
    /// What the scheduler may commit here: `vcpus` x the cluster's `cpu_allocation_ratio`.
    #[serde(default)]
    pub schedulable_vcpus: u32,
    /// `memory_mb` x the cluster's `memory_allocation_ratio`.
    #[serde(default)]
    pub schedulable_memory_mb: u64,
    /// Names of the pools this node serves.
    pub pools: Vec<String>,
    /// RFC 3339 time of the last heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
    /// The node's agent accepts `file://` image URLs (started with `--allow-file-urls`).
    #[serde(default)]
    pub allow_file_urls: bool,
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
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub spec: crate::manifest::PoolSpec,
    /// The nodes' instances of the pool are their own rows: registering one does not
    /// move the pool's `resource_version`.
    pub instances: Vec<PoolInstance>,
    /// Moves on every write of the stored object: the optimistic concurrency token that
    /// `If-Match` on its `PUT` and `DELETE` names (Kubernetes' `resourceVersion`). 0 in
    /// JSON from servers that predate it.
    #[serde(default)]
    pub resource_version: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_without_spec_and_annotations_gets_defaults() {
        let p: Pool = serde_json::from_value(serde_json::json!({
            "id": Uuid::nil(), "name": "default",
            "instances": [{"id": Uuid::nil(), "node": "node-1", "path": "/srv/p"}]
        }))
        .unwrap();
        assert_eq!(p.spec, crate::manifest::PoolSpec::default());
        assert!(p.annotations.is_empty());
        assert_eq!(p.instances[0].node, "node-1");
    }
}

/// A network VMs can attach to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Network {
    pub id: Uuid,
    pub name: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
    pub spec: crate::manifest::NetworkSpec,
    /// Moves on every write of the stored object: the optimistic concurrency token that
    /// `If-Match` on its `PUT` and `DELETE` names (Kubernetes' `resourceVersion`). 0 in
    /// JSON from servers that predate it.
    #[serde(default)]
    pub resource_version: i64,
}

/// A firmware VMs can boot with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Firmware {
    pub id: Uuid,
    pub name: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
    pub spec: crate::manifest::FirmwareSpec,
    /// Shipped with otherix (seabios, ovmf, aavmf); cannot be changed or deleted.
    pub builtin: bool,
    /// Moves on every write of the stored object: the optimistic concurrency token that
    /// `If-Match` on its `PUT` and `DELETE` names (Kubernetes' `resourceVersion`). 0 in
    /// JSON from servers that predate it.
    #[serde(default)]
    pub resource_version: i64,
}

/// The cluster-wide settings object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClusterSettings {
    pub name: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
    pub spec: crate::manifest::ClusterSettingsSpec,
    /// Moves on every write of the stored object: the optimistic concurrency token that
    /// `If-Match` on its `PUT` and `DELETE` names (Kubernetes' `resourceVersion`). 0 in
    /// JSON from servers that predate it.
    #[serde(default)]
    pub resource_version: i64,
}

/// One cached base image on one node's pool instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CachedImage {
    pub node: String,
    pub sha256: String,
    pub url: String,
    pub size: u64,
    /// RFC 3339 time a VM was last created from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
    /// How many VMs on that node use it.
    pub used_by: u32,
}

/// A slice of a VM's serial console log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogChunk {
    pub data: String,
    pub next_offset: u64,
    /// True when `next_offset` is the current end of the log.
    pub eof: bool,
}
