//! The manifest kinds users write: `Project`, `VM`, `Pool`, `Network`, `Firmware`,
//! `ClusterSettings`, each a kubectl-like envelope (`apiVersion`, `kind`, `metadata`, `spec`) whose spec field
//! names are the same as the HTTP API's.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::identity::{ProjectSpec, DEFAULT_PROJECT};
use crate::vm::{Arch, Vm, VmSpec};

/// The one API version manifests carry today.
pub const API_VERSION: &str = "otherix.dev/v1";

/// Object metadata users write.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectMeta {
    pub name: String,
    /// The project a `kind: VM` belongs to; absent = the client's project (the CLI's
    /// `--project`/remote, else the token's; `default` for `otherixd --manifests-dir`).
    /// Every other kind is cluster-wide and refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Labels (`kind: VM` only; `vm list -l key=value` selects on them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A `kind: VM` manifest document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VmManifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: VmSpec,
}

impl VmManifest {
    /// Projects a live VM back into the manifest that would re-create it.
    ///
    /// `metadata.project` is written for every project but `default` and left out for
    /// `default`: the manifest then re-creates the VM in the same project when applied
    /// as the project's own documents were (a VM of `team-a` names `team-a`, whoever
    /// applies it), while VMs of `default` print exactly as before projects existed, so
    /// older manifests and `vm get -o yaml` outputs stay byte-for-byte the same.
    pub fn from_vm(vm: &Vm) -> Self {
        VmManifest {
            api_version: API_VERSION.to_owned(),
            kind: "VM".to_owned(),
            metadata: ObjectMeta {
                name: vm.name.clone(),
                project: (vm.project != DEFAULT_PROJECT).then(|| vm.project.clone()),
                annotations: vm.annotations.clone(),
                labels: vm.labels.clone(),
            },
            spec: vm.spec.clone(),
        }
    }
}

/// A storage pool: a name that agents serve at their own paths (`--pool NAME=PATH`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Network types. Only `bridge` networks can be attached to VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NetworkType {
    Bridge,
    Nat,
    Isolated,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    #[serde(rename = "type")]
    pub network_type: NetworkType,
    /// Host bridge interface name, for `type: bridge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FirmwareType {
    Bios,
    Uefi,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FirmwareSpec {
    pub arch: Arch,
    #[serde(rename = "type")]
    pub firmware_type: FirmwareType,
    /// Path of the firmware code image on the nodes (UEFI), e.g. OVMF_CODE_4M.fd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Path of the UEFI variable store template copied per VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vars_template: Option<String>,
}

/// Cluster-wide settings; there is one, named `cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettingsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_pool: Option<String>,
    /// vCPUs the scheduler commits per host core (KubeVirt's cpuAllocationRatio,
    /// OpenStack's cpu_allocation_ratio). Unset: 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_allocation_ratio: Option<AllocationRatio>,
    /// Guest memory the scheduler commits per MiB of host memory. Unset: 1 (never
    /// overcommitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_allocation_ratio: Option<AllocationRatio>,
}

/// How much of a node's capacity the scheduler commits per unit of it: a finite number
/// greater than 0 (checked by `validate::validate_cluster_settings_spec`).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct AllocationRatio(pub f64);

// Validated ratios are finite (never NaN), so equality is total.
impl Eq for AllocationRatio {}

impl AllocationRatio {
    /// `cpu_allocation_ratio` when unset.
    pub const DEFAULT_CPU: AllocationRatio = AllocationRatio(4.0);
    /// `memory_allocation_ratio` when unset.
    pub const DEFAULT_MEMORY: AllocationRatio = AllocationRatio(1.0);
    /// Accepted range of `cpu_allocation_ratio`.
    pub const CPU_RANGE: (f64, f64) = (0.1, 64.0);
    /// Accepted range of `memory_allocation_ratio`.
    pub const MEMORY_RANGE: (f64, f64) = (0.1, 4.0);

    /// `capacity` x ratio, rounded down: what the scheduler may commit on a node.
    pub fn apply(self, capacity: u64) -> u64 {
        // f64 holds every capacity a node reports exactly; the product is floored.
        (capacity as f64 * self.0).floor() as u64
    }
}

impl std::fmt::Display for AllocationRatio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl ClusterSettingsSpec {
    /// The ratio the scheduler uses for vCPUs (the default when unset).
    pub fn cpu_ratio(&self) -> AllocationRatio {
        self.cpu_allocation_ratio
            .unwrap_or(AllocationRatio::DEFAULT_CPU)
    }

    /// The ratio the scheduler uses for memory (the default when unset).
    pub fn memory_ratio(&self) -> AllocationRatio {
        self.memory_allocation_ratio
            .unwrap_or(AllocationRatio::DEFAULT_MEMORY)
    }
}

/// A generic manifest envelope around a typed spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Manifest<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: S,
}

pub type ProjectManifest = Manifest<ProjectSpec>;
pub type PoolManifest = Manifest<PoolSpec>;
pub type NetworkManifest = Manifest<NetworkSpec>;
pub type FirmwareManifest = Manifest<FirmwareSpec>;
pub type ClusterSettingsManifest = Manifest<ClusterSettingsSpec>;

/// The kinds, in the order `create -f` applies them (dependencies first: a project
/// before the VMs in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Project,
    Pool,
    Network,
    Firmware,
    ClusterSettings,
    Vm,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Project,
        Kind::Pool,
        Kind::Network,
        Kind::Firmware,
        Kind::ClusterSettings,
        Kind::Vm,
    ];

    /// The `kind:` value in a manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Project => "Project",
            Kind::Pool => "Pool",
            Kind::Network => "Network",
            Kind::Firmware => "Firmware",
            Kind::ClusterSettings => "ClusterSettings",
            Kind::Vm => "VM",
        }
    }

    /// The lowercase name used in `vm/web-1 created` lines and schema file names.
    pub fn short(self) -> &'static str {
        match self {
            Kind::Project => "project",
            Kind::Pool => "pool",
            Kind::Network => "network",
            Kind::Firmware => "firmware",
            Kind::ClusterSettings => "cluster",
            Kind::Vm => "vm",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether objects of this kind live in a project (only VMs); every other kind is
    /// cluster-wide.
    pub fn in_project(self) -> bool {
        self == Kind::Vm
    }
}

/// One parsed, typed manifest object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Project(ProjectManifest),
    Vm(Box<VmManifest>),
    Pool(PoolManifest),
    Network(NetworkManifest),
    Firmware(FirmwareManifest),
    ClusterSettings(ClusterSettingsManifest),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Project(_) => Kind::Project,
            Object::Vm(_) => Kind::Vm,
            Object::Pool(_) => Kind::Pool,
            Object::Network(_) => Kind::Network,
            Object::Firmware(_) => Kind::Firmware,
            Object::ClusterSettings(_) => Kind::ClusterSettings,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Project(m) => &m.metadata,
            Object::Vm(m) => &m.metadata,
            Object::Pool(m) => &m.metadata,
            Object::Network(m) => &m.metadata,
            Object::Firmware(m) => &m.metadata,
            Object::ClusterSettings(m) => &m.metadata,
        }
    }

    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    /// `metadata.project`, as written (`None`: the client's project).
    pub fn project(&self) -> Option<&str> {
        self.metadata().project.as_deref()
    }

    /// `vm/web-1`, as apply and diff print it; `vm/team-a/web-1` for a document that
    /// names its project (see [`object_reference`]).
    pub fn reference(&self) -> String {
        object_reference(self.kind(), self.project(), self.name())
    }
}

/// How output lines name an object: `kind/name`, or `kind/project/name` when a project
/// is named (names cannot contain `/`, so the two forms never collide).
pub fn object_reference(kind: Kind, project: Option<&str>, name: &str) -> String {
    match project {
        Some(p) => format!("{}/{p}/{name}", kind.short()),
        None => format!("{}/{name}", kind.short()),
    }
}
