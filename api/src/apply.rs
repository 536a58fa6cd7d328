//! Declarative apply over HTTP: `PUT /v1/<kind>/{name}` is a server-side upsert of desired
//! state that reports whether it created, changed or left the object alone.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::task::Task;
use crate::vm::{Vm, VmSpec};

/// What an apply did, as kubectl prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApplyOutcome {
    Created,
    Configured,
    Unchanged,
}

impl ApplyOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyOutcome::Created => "created",
            ApplyOutcome::Configured => "configured",
            ApplyOutcome::Unchanged => "unchanged",
        }
    }
}

impl std::fmt::Display for ApplyOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `PUT /v1/<kind>/{name}` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest<S> {
    pub spec: S,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// `metadata.labels` (VMs only; other kinds refuse them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl<S> ApplyRequest<S> {
    /// Refuses `labels` for a `kind` that does not carry them (every kind but VMs).
    pub fn refuse_labels(&self, kind: &str) -> Result<(), crate::ApiError> {
        if self.labels.is_empty() {
            Ok(())
        } else {
            Err(crate::ApiError::validation(format!(
                "labels: only VMs carry labels (this is a {kind})"
            )))
        }
    }
}

/// `PUT /v1/<kind>/{name}` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ApplyResponse<T> {
    pub outcome: ApplyOutcome,
    pub object: T,
    /// The task the reconciler emitted for this change, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
}

/// `POST /v1/<kind>` body for pools, networks and firmware.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateObjectRequest<S> {
    pub name: String,
    pub spec: S,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The annotation that marks objects applied from a manifest directory (for `--prune`).
pub const SOURCE_ANNOTATION: &str = "otherix.dev/source";

/// The most VMs one `POST /v1/apply` may carry.
pub const APPLY_BATCH_MAX: usize = 1000;

/// One VM of a `POST /v1/apply`: what `PUT /v1/vms/{name}` takes, with the name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyVm {
    pub name: String,
    pub spec: VmSpec,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `POST /v1/apply` body: many VMs of one project applied in one request (the new ones
/// created in one transaction: all or none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyBatchRequest {
    pub vms: Vec<ApplyVm>,
}

/// `POST /v1/apply` answer: one [`ApplyResponse`] per VM, in the request's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ApplyBatchResponse {
    pub vms: Vec<ApplyResponse<Vm>>,
}
