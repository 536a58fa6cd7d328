//! otherix-api: the wire types every otherix process shares.
//!
//! Pure data and validation, no I/O: the manifest/HTTP kinds ([`vm`], [`task`],
//! [`cluster`]), change events ([`event`]), the error codes and their HTTP statuses ([`error`]), request validation
//! ([`validate`]), label rules and selectors ([`labels`]), human durations ([`duration`])
//! and the agent gRPC protocol ([`proto`]).

pub mod apply;
pub mod cluster;
pub mod console;
pub mod duration;
pub mod enrollment;
pub mod error;
pub mod event;
pub mod firmware_path;
pub mod identity;
pub mod labels;
pub mod list;
pub mod manifest;
pub mod openapi;
pub mod proto;
pub mod schema;
pub mod task;
pub mod validate;
pub mod vm;

pub use apply::{
    ApplyBatchRequest, ApplyBatchResponse, ApplyOutcome, ApplyRequest, ApplyResponse, ApplyVm,
    CreateObjectRequest, APPLY_BATCH_MAX, SOURCE_ANNOTATION,
};
pub use cluster::{
    CachedImage, ClusterSettings, Firmware, LogChunk, Network, Node, NodeStatus, Pool, PoolInstance,
};
pub use error::{ApiError, ErrorBody, ErrorCode, ErrorEnvelope};
pub use event::{Event, EventCursor, EventKind, EventType};
pub use identity::{
    CreateTokenRequest, CreatedToken, Project, ProjectSpec, ProjectUsage, Role, Token, WhoAmI,
    DEFAULT_PROJECT,
};
pub use list::ListResponse;
pub use manifest::{ManifestError, Object, ObjectMeta, ParsedObject, VmManifest, API_VERSION};
pub use task::{Placement, RejectedNode, Task, TaskAccepted, TaskKind, TaskProgress, TaskStatus};
pub use vm::{
    Arch, CreateVmRequest, DesiredPhase, DiskFormat, GuestAgentState, PortForward, PortProtocol,
    RestartPolicy, Vm, VmPhase, VmSpec, VmStatus,
};
