//! The seam between the task executor and the machinery that runs VMs: the [`VmDriver`]
//! trait (one method per primitive the task kinds are built from) and [`VmTarget`], the VM
//! a task names. [`crate::local_driver::LocalDriver`] is the real implementation.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use otherix_api::proto::{CachedImageInfo, FirmwareRef, VmReport};
use otherix_api::{ApiError, VmSpec};
use uuid::Uuid;

use crate::outbox::Progress;
use crate::serial_log::LogChunk;

/// The VM a task or sync request is about, as the server described it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmTarget {
    pub vm_id: Uuid,
    pub name: String,
    pub pool: String,
    /// Path of the pool instance on this node (empty when unknown, e.g. delete of a VM
    /// that was never placed).
    pub pool_path: PathBuf,
    /// The desired spec; `None` when the task carried none and the agent has no record.
    pub spec: Option<VmSpec>,
    /// Host bridge the VM's tap NIC joins; empty: SLIRP user networking.
    pub bridge: String,
    /// The firmware the server resolved; `None`: `spec.firmware` as a built-in name, or
    /// the arch default.
    pub firmware: Option<FirmwareRef>,
}

/// Synchronous operations the server waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOp {
    Pause,
    Resume,
    Reset,
}

impl SyncOp {
    pub fn parse(op: &str) -> Option<SyncOp> {
        match op {
            "pause" => Some(SyncOp::Pause),
            "resume" => Some(SyncOp::Resume),
            "reset" => Some(SyncOp::Reset),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            SyncOp::Pause => "pause",
            SyncOp::Resume => "resume",
            SyncOp::Reset => "reset",
        }
    }
}

/// What the executor needs from the node to run tasks. Every method is idempotent:
/// starting a running VM, stopping a stopped one, deleting an absent one succeed.
/// Failures carry a task error code from `otherix_api::ErrorCode`.
pub trait VmDriver: Send + Sync + 'static {
    /// Persists what the agent knows about the VM (so it can be re-adopted).
    fn remember(&self, vm: &VmTarget) -> Result<(), ApiError>;

    /// Materializes the image and creates the VM's disk; does not boot.
    fn prepare(
        &self,
        vm: &VmTarget,
        progress: &Progress,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Boots the VM from its disk; success once QMP says running.
    fn start(
        &self,
        vm: &VmTarget,
        progress: &Progress,
    ) -> impl Future<Output = Result<VmReport, ApiError>> + Send;

    /// ACPI powerdown, then waits up to `timeout` for QEMU to exit (`stop_timeout` if not).
    fn stop(
        &self,
        vm: &VmTarget,
        timeout: Duration,
        progress: &Progress,
    ) -> impl Future<Output = Result<VmReport, ApiError>> + Send;

    /// QMP quit, SIGKILL if QEMU lingers.
    fn poweroff(
        &self,
        vm: &VmTarget,
        progress: &Progress,
    ) -> impl Future<Output = Result<VmReport, ApiError>> + Send;

    /// Powers off and removes the VM's run dir and disk (never the image cache).
    fn delete(
        &self,
        vm: &VmTarget,
        progress: &Progress,
    ) -> impl Future<Output = Result<VmReport, ApiError>> + Send;

    /// The VM's actual state right now.
    fn report(&self, vm_id: Uuid) -> impl Future<Output = VmReport> + Send;

    /// Reports for every VM the agent has a record of (re-adoption).
    fn report_all(&self) -> impl Future<Output = Vec<VmReport>> + Send;

    /// Serial console bytes from logical `offset` (see [`crate::serial_log`]).
    fn read_serial_log(
        &self,
        vm_id: Uuid,
        offset: u64,
        max_bytes: u64,
    ) -> impl Future<Output = Result<LogChunk, ApiError>> + Send;

    /// The pool's cached images; with `prune`, removes those no VM uses and returns them.
    fn pool_images(
        &self,
        pool: &str,
        prune: bool,
    ) -> impl Future<Output = Result<Vec<CachedImageInfo>, ApiError>> + Send;

    /// The unix socket of the VM's serial port (`vm console`); `conflict` when the VM is
    /// not running. Drivers without consoles (the simulated node) keep this default.
    fn console_socket(&self, vm_id: Uuid) -> Result<PathBuf, ApiError> {
        Err(ApiError::conflict(format!(
            "vm {vm_id}: this node has no serial consoles"
        )))
    }

    /// pause / resume / reset; `conflict` when the VM is not in a state for it.
    fn sync_op(
        &self,
        vm_id: Uuid,
        op: SyncOp,
    ) -> impl Future<Output = Result<VmReport, ApiError>> + Send;
}
