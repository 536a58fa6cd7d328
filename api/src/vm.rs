//! The VM kind: its desired spec (what users write), its observed status (what the
//! reconciler and agents report), and the create request.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ErrorBody;

pub const DEFAULT_VCPUS: u32 = 2;
pub const DEFAULT_MEMORY_MB: u32 = 2048;
pub const DEFAULT_STOP_TIMEOUT_SECS: u32 = 60;

/// Guest CPU architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
    pub fn parse(s: &str) -> Option<Arch> {
        match s {
            "amd64" => Some(Arch::Amd64),
            "arm64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// On-disk format of a VM's root disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiskFormat {
    /// An overlay backed by the cached image (the server default).
    Qcow2,
    /// A full copy of the image.
    Raw,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

/// Whether the user wants the VM running or stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DesiredPhase {
    #[default]
    Running,
    Stopped,
}

impl DesiredPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredPhase::Running => "running",
            DesiredPhase::Stopped => "stopped",
        }
    }
}

fn default_vcpus() -> u32 {
    DEFAULT_VCPUS
}
fn default_memory_mb() -> u32 {
    DEFAULT_MEMORY_MB
}
fn is_default_phase(p: &DesiredPhase) -> bool {
    *p == DesiredPhase::Running
}
fn is_false(b: &bool) -> bool {
    !*b
}

/// What the reconciler does when a VM stops without being asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Start it again whenever it stops on its own.
    Always,
    /// Start it again when QEMU crashed or was killed; a clean guest poweroff stays stopped.
    #[default]
    OnFailure,
    /// Never start it again on its own.
    Never,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }

    pub fn parse(s: &str) -> Option<RestartPolicy> {
        match s {
            "always" => Some(RestartPolicy::Always),
            "on-failure" => Some(RestartPolicy::OnFailure),
            "never" => Some(RestartPolicy::Never),
            _ => None,
        }
    }
}

fn is_default_restart(p: &RestartPolicy) -> bool {
    *p == RestartPolicy::OnFailure
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PortProtocol {
    #[default]
    Tcp,
    Udp,
}

fn is_tcp(p: &PortProtocol) -> bool {
    *p == PortProtocol::Tcp
}

/// A SLIRP port forward: connections to `host` on the node reach `guest` in the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    pub host: u16,
    pub guest: u16,
    #[serde(default, skip_serializing_if = "is_tcp")]
    pub protocol: PortProtocol,
}

/// The desired state of a VM: what `vm create` flags and `kind: VM` manifests set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// Source image URL to download and boot from.
    pub image_url: String,
    pub arch: Arch,
    /// Expected sha256 of the image (64 hex digits); verified after download.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_sha256: Option<String>,
    /// Firmware name. Mutually exclusive with `firmware_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// Firmware uuid. Mutually exclusive with `firmware`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_id: Option<String>,
    /// Root disk format; the server default is qcow2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    /// Root disk size in GiB; defaults to the image's virtual size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gib: Option<u32>,
    /// Storage pool name or uuid; defaults to the cluster default-pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Placement hint: node name or uuid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Bridge network name or uuid to attach one NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// vCPU count (1..128).
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Memory in MiB (128..524288).
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    /// cloud-init user-data (`#cloud-config` YAML or a `#!` script).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// cloud-init network-config (netplan v2 YAML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_config: Option<String>,
    /// SSH public keys (authorized_keys lines) cloud-init installs for the image's default
    /// user: written to the seed's meta-data `public-keys`, which cloud-init honours next
    /// to any user-data, a script included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    /// Attach no cloud-init seed at all.
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_cloud_init: bool,
    /// Seconds a graceful stop waits for the guest before failing with stop_timeout
    /// (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout_secs: Option<u32>,
    /// running (default) or stopped.
    #[serde(default, skip_serializing_if = "is_default_phase")]
    pub desired_phase: DesiredPhase,
    /// always | on-failure (default) | never.
    #[serde(default, skip_serializing_if = "is_default_restart")]
    pub restart_policy: RestartPolicy,
    /// SLIRP port forwards (only without `network`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortForward>,
}

impl VmSpec {
    /// A spec with the required fields and every default.
    pub fn new(image_url: impl Into<String>, arch: Arch) -> Self {
        VmSpec {
            image_url: image_url.into(),
            arch,
            image_sha256: None,
            firmware: None,
            firmware_id: None,
            format: None,
            disk_gib: None,
            pool: None,
            node: None,
            network: None,
            vcpus: DEFAULT_VCPUS,
            memory_mb: DEFAULT_MEMORY_MB,
            user_data: None,
            network_config: None,
            ssh_authorized_keys: Vec::new(),
            no_cloud_init: false,
            stop_timeout_secs: None,
            desired_phase: DesiredPhase::Running,
            restart_policy: RestartPolicy::OnFailure,
            ports: Vec::new(),
        }
    }

    pub fn stop_timeout_secs(&self) -> u32 {
        self.stop_timeout_secs.unwrap_or(DEFAULT_STOP_TIMEOUT_SECS)
    }
}

/// `POST /v1/vms` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    pub name: String,
    pub spec: VmSpec,
    /// `metadata.labels`: what `vm list -l key=value` selects on (Kubernetes' rules).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// What a VM is actually doing, as the control plane sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmPhase {
    /// Accepted, not yet placed or created.
    Pending,
    Creating,
    Starting,
    Running,
    Paused,
    Stopping,
    Stopped,
    Rebooting,
    Deleting,
    Deleted,
    /// The last task failed and the VM is not running.
    Failed,
    /// The VM's node is gone or not reporting.
    Unknown,
}

impl VmPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            VmPhase::Pending => "pending",
            VmPhase::Creating => "creating",
            VmPhase::Starting => "starting",
            VmPhase::Running => "running",
            VmPhase::Paused => "paused",
            VmPhase::Stopping => "stopping",
            VmPhase::Stopped => "stopped",
            VmPhase::Rebooting => "rebooting",
            VmPhase::Deleting => "deleting",
            VmPhase::Deleted => "deleted",
            VmPhase::Failed => "failed",
            VmPhase::Unknown => "unknown",
        }
    }
    /// Every phase, in lifecycle order.
    pub const ALL: [VmPhase; 12] = [
        VmPhase::Pending,
        VmPhase::Creating,
        VmPhase::Starting,
        VmPhase::Running,
        VmPhase::Paused,
        VmPhase::Stopping,
        VmPhase::Stopped,
        VmPhase::Rebooting,
        VmPhase::Deleting,
        VmPhase::Deleted,
        VmPhase::Failed,
        VmPhase::Unknown,
    ];

    pub fn parse(s: &str) -> Option<VmPhase> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }
}

impl std::fmt::Display for VmPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Observed state: written only by the reconciler and agent reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VmStatus {
    pub phase: VmPhase,
    /// Node the agent reports the VM on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Pool of the VM's pool instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// QEMU process id while running or paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Serial console log path on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_log: Option<String>,
    /// The in-flight task, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_task: Option<Uuid>,
    /// Error of the last failed task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ErrorBody>,
    /// The spec generation the running VM was started from.
    pub observed_generation: i64,
    /// A boot-time field changed while the VM ran; it takes effect at the next boot.
    #[serde(default, skip_serializing_if = "is_false")]
    pub restart_pending: bool,
    /// Whether the guest's qemu-guest-agent answers (polled by the node agent every few
    /// seconds until it does, then every 15 s). Absent while the VM is not running or
    /// paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_agent: Option<GuestAgentState>,
    /// The guest's addresses as CIDR, from the guest agent (loopback and IPv6 link-local
    /// left out). Omitted when none are known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// The guest OS as its guest agent names it (`guest-get-osinfo`'s pretty name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// True once the guest agent has answered during this boot: the guest is up. Absent
    /// means unknown (not running, or no answer yet: the guest may still be booting or may
    /// have no guest agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
}

/// Whether a VM's guest agent answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GuestAgentState {
    Connected,
    NotConnected,
}

impl GuestAgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            GuestAgentState::Connected => "connected",
            GuestAgentState::NotConnected => "not_connected",
        }
    }
}

/// A VM as `GET /v1/vms/{name}` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Vm {
    pub id: Uuid,
    pub name: String,
    /// The project the VM belongs to (names are unique per project).
    #[serde(default = "crate::identity::default_project_name")]
    pub project: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
    /// `metadata.labels`: what `vm list -l key=value` selects on.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Moves on every spec change, never on status changes.
    pub generation: i64,
    /// Moves on every write of the stored object (spec or status): the optimistic
    /// concurrency token that `If-Match` on `PUT /v1/vms/{name}` and the op routes names
    /// (Kubernetes' `metadata.resourceVersion`). 0 in JSON from servers that predate it.
    #[serde(default)]
    pub resource_version: i64,
    pub spec: VmSpec,
    pub status: VmStatus,
    /// RFC 3339 timestamps.
    pub created_at: String,
    pub updated_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_spec_minimal_json_gets_defaults() {
        let spec: VmSpec =
            serde_json::from_str(r#"{"image_url":"http://x/i.img","arch":"arm64"}"#).unwrap();
        assert_eq!(spec, VmSpec::new("http://x/i.img", Arch::Arm64));
        assert_eq!(spec.vcpus, 2);
        assert_eq!(spec.memory_mb, 2048);
        assert_eq!(spec.stop_timeout_secs(), 60);
    }

    #[test]
    fn vm_spec_unknown_field_rejected() {
        let err = serde_json::from_str::<VmSpec>(
            r#"{"image_url":"http://x/i.img","arch":"amd64","vcpu":4}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `vcpu`"), "{err}");
    }

    #[test]
    fn vm_spec_defaults_are_not_serialized() {
        let v = serde_json::to_value(VmSpec::new("http://x", Arch::Amd64)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"image_url":"http://x","arch":"amd64","vcpus":2,"memory_mb":2048})
        );
    }

    #[test]
    fn vm_phase_parse_round_trips() {
        for p in [VmPhase::Running, VmPhase::Stopped, VmPhase::Deleting] {
            assert_eq!(VmPhase::parse(p.as_str()), Some(p));
        }
        assert_eq!(VmPhase::parse("bogus"), None);
    }
}
