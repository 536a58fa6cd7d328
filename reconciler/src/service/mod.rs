//! Services behind the HTTP API: VM lifecycle ([`VmService`]), task reads and long-polls
//! ([`TaskService`]), and cluster reads ([`ClusterService`]). Handlers pass typed commands
//! in; services return wire types or a [`ServiceError`].

pub mod apply;
pub mod apply_diff;
pub mod cluster;
pub mod console;
pub mod entities;
pub mod event_filter;
pub mod events;
pub mod identity;
pub mod ops;
pub mod precondition;
pub mod tasks;
pub mod vm_refs;
pub mod vms;

use otherix_api::{ApiError, ErrorCode};

use crate::gateway::GatewayError;
use crate::model::IdempotencyStamp;
use crate::reconcile::ReconcileError;
use crate::store::StoreError;

pub use apply::ApplyService;
pub use cluster::ClusterService;
pub use entities::EntityService;
pub use event_filter::EventFilter;
pub use events::EventService;
pub use identity::IdentityService;
pub use ops::OpsService;
pub use tasks::TaskService;
pub use vm_refs::{resolve_vm_refs, VmAttachments};
pub use vms::{ListVmsQuery, VmService};

/// Who asks, and in which project: resolved by the HTTP layer from the caller's token and
/// `?project=` (the manifests-dir watcher acts as `otherixd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub project: String,
    /// The API token's name, recorded as `requested_by` on the tasks the request emits.
    pub requested_by: String,
    /// The request's `If-Match`: the resource_version of the object (VM) the write is
    /// conditional on.
    /// Without it a write that loses a race is retried on a fresh read.
    pub if_match: Option<i64>,
    /// The request's Idempotency-Key: stored on the task the request creates, in the
    /// transaction that inserts it.
    pub idempotency: Option<IdempotencyStamp>,
}

impl Actor {
    pub fn new(project: impl Into<String>, requested_by: impl Into<String>) -> Self {
        Actor {
            project: project.into(),
            requested_by: requested_by.into(),
            if_match: None,
            idempotency: None,
        }
    }

    /// The actor with the request's `If-Match` precondition.
    pub fn with_if_match(mut self, if_match: Option<i64>) -> Self {
        self.if_match = if_match;
        self
    }
}

/// Default and maximum page sizes of list endpoints.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A user-facing error with a stable code.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// An internal failure: logged, never shown.
    #[error("store")]
    Store(#[source] StoreError),
    #[error("agent protocol")]
    Agent(#[source] GatewayError),
}

/// `err` about item `index` (named `name`) of a request that carries many: its message
/// says which ("vms[3] (web-4): spec.vcpus: ..."). Internal errors stay as they are.
pub fn in_item(index: usize, name: &str, err: ServiceError) -> ServiceError {
    match err {
        ServiceError::Api(e) => {
            ApiError::new(e.code, format!("vms[{index}] ({name}): {}", e.message)).into()
        }
        other => other,
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NameTaken(name) => {
                ApiError::conflict(format!("vm {name} already exists")).into()
            }
            StoreError::TaskInFlight(id) => {
                ApiError::conflict(format!("vm {id} already has a task in flight")).into()
            }
            StoreError::ProjectNotFound(p) => {
                ApiError::not_found(format!("project {p} not found")).into()
            }
            StoreError::QuotaExceeded(why) => {
                ApiError::new(ErrorCode::QuotaExceeded, format!("quota exceeded: {why}")).into()
            }
            StoreError::Conflict {
                kind,
                name,
                expected,
                actual,
            } => precondition::stale(kind, &name, expected, actual).into(),
            e @ StoreError::InsufficientCapacity { .. } => {
                ApiError::new(ErrorCode::InsufficientCapacity, e.to_string()).into()
            }
            e @ StoreError::IdempotencyKeyTaken(_) => ApiError::conflict(e.to_string()).into(),
            other => ServiceError::Store(other),
        }
    }
}

impl From<ReconcileError> for ServiceError {
    fn from(e: ReconcileError) -> Self {
        match e {
            ReconcileError::Unschedulable(api) => api.into(),
            ReconcileError::Store(s) => s.into(),
        }
    }
}

impl From<GatewayError> for ServiceError {
    fn from(e: GatewayError) -> Self {
        match e {
            GatewayError::NotAttached(_)
            | GatewayError::SessionClosed(_)
            | GatewayError::SyncTimeout { .. } => {
                ApiError::new(ErrorCode::AgentUnavailable, e.to_string()).into()
            }
            GatewayError::Store(s) => s.into(),
            other => ServiceError::Agent(other),
        }
    }
}

/// Checks a `limit` query parameter.
pub fn check_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(l) if (1..=MAX_LIMIT).contains(&l) => Ok(l),
        Some(l) => Err(ApiError::validation(format!(
            "limit: must be 1..{MAX_LIMIT} (got {l})"
        ))),
    }
}
