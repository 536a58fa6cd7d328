//! [`LocalDriver`]: the real [`VmDriver`] for this node. Composes the image cache, disks,
//! the QEMU launcher/QMP client and the VM registry; each method climbs the steps of one
//! primitive (e.g. poweroff: QMP quit -> wait -> SIGKILL), logging each.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use otherix_api::proto::{CachedImageInfo, VmPower, VmReport};
use otherix_api::{ApiError, DiskFormat, ErrorCode, VmSpec};
use uuid::Uuid;

use crate::boot_setup::prepare_boot;
use crate::disk;
use crate::driver::{SyncOp, VmDriver, VmTarget};
use crate::error_chain::error_chain;
use crate::guest_agent;
use crate::guest_power::{
    self, clear_dead_qemu, decide, finish_guest_shutdown, QemuSeen, GUEST_OFF_DETAIL, QUIT_GRACE,
};
use crate::host::Accel;
use crate::image_cache::ImageCache;
use crate::image_fetch::FetchPolicy;
use crate::network::{remove_tap, remove_vm_tap};
use crate::outbox::{power_report, Progress};
use crate::pool_images;
use crate::qemu::process::{in_scope, kill_pid, log_tail, scope_unit, wait_exit, RunAs};
use crate::qemu::{self, build_argv, LaunchConfig, Nic, Qmp, RunStatus};
use crate::serial_log::{self, LogChunk};
use crate::vm_registry::{RunDir, VmRecord, VmRegistry, MAX_SOCKET_PATH};

/// How long a freshly launched QEMU may take to answer QMP and report `running`.
const BOOT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);
/// How often `vm.stop` looks whether the guest is off (QEMU gone or in `shutdown`).
const STOP_POLL: Duration = Duration::from_millis(250);
/// Bound on one `query-status` while `vm.stop` waits for the guest.
const STOP_QMP_TIMEOUT: Duration = Duration::from_secs(2);
/// A stop presses the ACPI power button again this often until `stop_timeout`: a guest
/// that was still booting at the first press (no ACPI handler yet) sees a later one.
const ACPI_REPEAT: Duration = Duration::from_secs(10);

/// Bound on the `query-status` behind a report.
const REPORT_QMP_TIMEOUT: Duration = Duration::from_secs(10);

/// How a guest turned out to be off after a powerdown.
enum GuestOff {
    /// QEMU holds the powered-off guest in run state `shutdown`.
    Held,
    /// QEMU exited.
    Exited,
}

/// Runs VMs on this node with QEMU.
pub struct LocalDriver {
    registry: Arc<VmRegistry>,
    accel: Accel,
    fetch_policy: FetchPolicy,
    caches: Mutex<HashMap<PathBuf, Arc<ImageCache>>>,
    /// The pools this node serves (name, path), for pool image requests.
    pools: Vec<(String, PathBuf)>,
    /// Materializing takes it shared, pruning exclusively, so a prune never removes an
    /// image between its download and the disk (and record) that come to use it.
    images_gate: tokio::sync::RwLock<()>,
    /// The unprivileged user QEMU runs as (`--qemu-user`); `None`: as the agent's user.
    run_as: Option<RunAs>,
    /// Canonical directories firmware files may come from (`--firmware-dir`).
    firmware_dirs: Vec<String>,
    /// Launch QEMU in its own systemd scope (see [`crate::qemu::process::in_scope`]).
    systemd_scope: bool,
}

fn api_err(code: ErrorCode, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(code, e.to_string())
}

impl LocalDriver {
    pub fn new(registry: Arc<VmRegistry>, accel: Accel, allow_file_urls: bool) -> LocalDriver {
        LocalDriver {
            registry,
            accel,
            fetch_policy: FetchPolicy::new(allow_file_urls),
            caches: Mutex::default(),
            pools: Vec::new(),
            images_gate: tokio::sync::RwLock::new(()),
            run_as: None,
            firmware_dirs: crate::firmware::canonical_dirs(
                &otherix_api::firmware_path::DEFAULT_FIRMWARE_DIRS
                    .iter()
                    .map(PathBuf::from)
                    .collect::<Vec<_>>(),
            ),
            systemd_scope: qemu::process::systemd_scope_available(),
        }
    }

    /// Names the pools this node serves (for `images` / `prune-images`).
    pub fn with_pools(mut self, pools: Vec<(String, PathBuf)>) -> LocalDriver {
        self.pools = pools;
        self
    }

    /// What image downloads may reach and how large they may be.
    pub fn with_fetch_policy(mut self, policy: FetchPolicy) -> LocalDriver {
        self.fetch_policy = policy;
        self
    }

    /// Runs QEMU as `user` (the agent must be root); the VM's files are handed to it.
    pub fn with_run_as(mut self, user: Option<RunAs>) -> LocalDriver {
        self.run_as = user;
        self
    }

    /// Gives the QEMU user what one VM's QEMU opens: its run dir and disk dir (0700, owned
    /// by that user) and the files in them. Nothing else of the agent's changes hands.
    fn hand_to_qemu_user(&self, run: &RunDir, disk_dir: &Path) -> Result<(), ApiError> {
        let Some(user) = &self.run_as else {
            return Ok(());
        };
        use std::os::unix::fs::PermissionsExt;
        let owner = (
            Some(nix::unistd::Uid::from_raw(user.uid)),
            Some(nix::unistd::Gid::from_raw(user.gid)),
        );
        let chown = |path: &Path| -> Result<(), ApiError> {
            match nix::unistd::chown(path, owner.0, owner.1) {
                Ok(()) => Ok(()),
                Err(nix::errno::Errno::ENOENT) => Ok(()),
                Err(e) => Err(api_err(
                    ErrorCode::QemuFailed,
                    format!(
                        "cannot hand {} to --qemu-user {}: {e}",
                        path.display(),
                        user.name
                    ),
                )),
            }
        };
        for dir in [run.path.as_path(), disk_dir] {
            chown(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
                api_err(
                    ErrorCode::QemuFailed,
                    format!("cannot restrict {}: {e}", dir.display()),
                )
            })?;
            let entries = std::fs::read_dir(dir).map_err(|e| {
                api_err(
                    ErrorCode::QemuFailed,
                    format!("cannot list {}: {e}", dir.display()),
                )
            })?;
            for entry in entries.flatten() {
                // Regular files only: a symlink planted in a VM dir is never followed.
                // The agent's VM record stays the agent's.
                if entry.file_type().is_ok_and(|t| t.is_file())
                    && entry.file_name() != crate::vm_registry::VM_RECORD
                {
                    chown(&entry.path())?;
                }
            }
        }
        Ok(())
    }

    /// The directories firmware files may come from (canonicalized here).
    pub fn with_firmware_dirs(mut self, dirs: &[PathBuf]) -> LocalDriver {
        self.firmware_dirs = crate::firmware::canonical_dirs(dirs);
        self
    }

    pub fn firmware_dirs(&self) -> &[String] {
        &self.firmware_dirs
    }

    /// Sweeps every served pool's `images/tmp/` (downloads a crashed agent left behind).
    pub fn sweep_image_tmp(&self) {
        for (name, path) in &self.pools {
            match self.image_cache(path).sweep_tmp() {
                Ok(0) => {}
                Ok(n) => tracing::info!(pool = name, removed = n, "swept leftover image downloads"),
                Err(e) => {
                    tracing::warn!(pool = name, error = %error_chain(&e), "cannot sweep images/tmp")
                }
            }
        }
    }

    /// Whether QEMU is launched via `systemd-run --scope` (default: when under systemd).
    pub fn with_systemd_scope(mut self, enabled: bool) -> LocalDriver {
        self.systemd_scope = enabled;
        self
    }

    pub fn registry(&self) -> &Arc<VmRegistry> {
        &self.registry
    }

    fn image_cache(&self, pool_path: &Path) -> Arc<ImageCache> {
        self.caches
            .lock()
            .expect("cache table poisoned")
            .entry(pool_path.to_path_buf())
            .or_insert_with(|| {
                Arc::new(ImageCache::with_policy(
                    pool_path,
                    self.fetch_policy.clone(),
                ))
            })
            .clone()
    }

    /// The live QEMU pid of a VM, if its pidfile names a process that is really its QEMU.
    fn live_pid(&self, run: &RunDir) -> Option<u32> {
        qemu::read_pid(&run.pidfile()).filter(|pid| qemu::pid_alive(*pid, &run.path))
    }

    fn base_report(&self, vm_id: Uuid, power: VmPower, pool: &str, run: &RunDir) -> VmReport {
        let mut report = power_report(&vm_id.to_string(), power);
        report.pool = pool.to_string();
        report.serial_log = run.serial_log().display().to_string();
        report
    }

    fn stopped_report(&self, vm: &VmTarget, detail: &str, guest_shutdown: bool) -> VmReport {
        remove_vm_tap(vm.vm_id);
        let run = self.registry.run_dir(vm.vm_id);
        self.registry.set_observed_pid(vm.vm_id, None);
        let mut report = self.base_report(vm.vm_id, VmPower::Stopped, &vm.pool, &run);
        report.detail = detail.to_string();
        report.guest_shutdown = guest_shutdown;
        report
    }

    /// Waits up to `timeout` for the guest to be off after a powerdown: QEMU in run state
    /// `shutdown` (it runs with `-no-shutdown`) or gone (a QEMU launched without it).
    /// `None` on timeout.
    async fn wait_guest_off(run: &RunDir, pid: u32, timeout: Duration) -> Option<GuestOff> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if !qemu::pid_alive(pid, &run.path) {
                return Some(GuestOff::Exited);
            }
            if guest_power::query_status(run, STOP_QMP_TIMEOUT).await == Ok(RunStatus::Shutdown) {
                return Some(GuestOff::Held);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(STOP_POLL).await;
        }
    }

    /// Removes files a dead QEMU may leave behind.
    fn clear_stale_runtime_files(run: &RunDir) {
        let _ = std::fs::remove_file(run.qmp_socket());
        let _ = std::fs::remove_file(run.console_socket());
        let _ = std::fs::remove_file(run.qga_socket());
        let _ = std::fs::remove_file(run.pidfile());
    }

    fn require_spec(vm: &VmTarget) -> Result<&VmSpec, ApiError> {
        vm.spec.as_ref().ok_or_else(|| {
            ApiError::validation(format!(
                "task for vm {} carries no spec and the agent has no record of it",
                vm.name
            ))
        })
    }

    async fn launch(&self, vm: &VmTarget, spec: &VmSpec, run: &RunDir) -> Result<u32, ApiError> {
        let disk = disk::existing_disk(&vm.pool_path, vm.vm_id).ok_or_else(|| {
            ApiError::new(
                ErrorCode::DiskFailed,
                format!(
                    "vm {} has no disk under {}; create it first",
                    vm.name,
                    disk::disk_dir(&vm.pool_path, vm.vm_id).display()
                ),
            )
        })?;
        std::fs::create_dir_all(&run.path).map_err(|e| {
            api_err(
                ErrorCode::QemuFailed,
                format!("cannot create run dir {}: {e}", run.path.display()),
            )
        })?;
        // The console socket has the longest name of the VM's sockets.
        let socket_len = run.console_socket().as_os_str().len();
        if socket_len > MAX_SOCKET_PATH {
            return Err(ApiError::new(
                ErrorCode::QemuFailed,
                format!(
                    "console socket path {} is {socket_len} bytes, over the {MAX_SOCKET_PATH}-byte unix socket limit; use a shorter --data-dir",
                    run.console_socket().display()
                ),
            ));
        }
        Self::clear_stale_runtime_files(run);
        // The marker describes how the previous boot ended; this boot starts clean.
        if let Err(e) = std::fs::remove_file(run.guest_shutdown_marker()) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(api_err(
                    ErrorCode::QemuFailed,
                    format!(
                        "cannot remove {}: {e}",
                        run.guest_shutdown_marker().display()
                    ),
                ));
            }
        }
        if let Err(e) = serial_log::rotate_if_over(&run.serial_log(), serial_log::SERIAL_LOG_CAP) {
            tracing::warn!(vm = %vm.name, error = %e, "cannot rotate serial log");
        }
        let disk_dir = disk::disk_dir(&vm.pool_path, vm.vm_id);
        let tap_owner = self.run_as.as_ref().map(|u| u.uid);
        let boot = prepare_boot(vm, spec, &disk_dir, &self.firmware_dirs, tap_owner)?;
        let mut config = LaunchConfig {
            vm_id: vm.vm_id,
            vm_name: vm.name.clone(),
            arch: spec.arch,
            accel: self.accel,
            vcpus: spec.vcpus,
            memory_mb: spec.memory_mb,
            disk_path: disk.path,
            disk_format: disk.format,
            pidfile: run.pidfile(),
            qmp_socket: run.qmp_socket(),
            console_socket: run.console_socket(),
            serial_log: run.serial_log(),
            qga_socket: run.qga_socket(),
            seed: boot.seed.clone(),
            firmware: boot.firmware.clone(),
            nic: boot.nic.clone(),
            run_with_user: None,
        };
        let mut run_as = self.run_as.clone();
        if let (Some(user), Nic::Tap { .. }) = (&self.run_as, &boot.nic) {
            if !crate::network::tun_usable_by(user.uid, user.gid) {
                // QEMU must open the tap while still root, then switch users itself.
                tracing::info!(vm = %vm.name, user = user.name,
                    "{} is not usable by the QEMU user; QEMU drops root itself (-run-with)",
                    crate::network::TUN_DEVICE);
                config.run_with_user = Some(user.name.clone());
                run_as = None;
            }
        }
        let remove_boot_tap = || {
            if let Some(tap) = boot.tap() {
                let _ = remove_tap(tap);
            }
        };
        let (program, args) = build_argv(&config).map_err(|e| {
            remove_boot_tap();
            api_err(ErrorCode::QemuFailed, e)
        })?;
        if let Err(e) = self.hand_to_qemu_user(run, &disk_dir) {
            remove_boot_tap();
            return Err(e);
        }
        let unit = self.systemd_scope.then(|| scope_unit(vm.vm_id));
        let (program, args) = in_scope(&program, &args, unit.as_deref(), run_as.as_ref());
        // Under systemd-run, systemd-run drops privileges itself (after making the scope).
        let run_as = if unit.is_some() {
            None
        } else {
            run_as.as_ref()
        };
        let pid = qemu::launch(
            &program,
            &args,
            &run.pidfile(),
            &run.qmp_socket(),
            &run.qemu_log(),
            run_as,
        )
        .await
        .map_err(|e| {
            remove_boot_tap();
            api_err(ErrorCode::QemuFailed, error_chain(&e))
        })?;
        self.registry.set_observed_pid(vm.vm_id, Some(pid));
        tracing::info!(vm = %vm.name, pid, "QEMU launched");
        Ok(pid)
    }

    /// Waits until QMP answers and says running.
    async fn confirm_running(run: &RunDir) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + BOOT_CONFIRM_TIMEOUT;
        let qmp = Qmp::connect_retrying(&run.qmp_socket(), BOOT_CONFIRM_TIMEOUT)
            .await
            .map_err(|e| error_chain(&e))?;
        loop {
            let status = qmp.query_status().await.map_err(|e| error_chain(&e))?;
            if status == RunStatus::Running {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("QEMU reports {status:?} instead of running"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The guest is off and QEMU waits in `shutdown`: record the marker, quit QEMU.
    async fn finish_stop(
        &self,
        vm: &VmTarget,
        run: &RunDir,
        pid: u32,
    ) -> Result<VmReport, ApiError> {
        if !finish_guest_shutdown(run, vm.vm_id, pid).await {
            return Err(ApiError::new(
                ErrorCode::QemuFailed,
                format!(
                    "guest of vm {} powered off but its QEMU (pid {pid}) survived SIGKILL",
                    vm.name
                ),
            ));
        }
        Ok(self.stopped_report(vm, GUEST_OFF_DETAIL, true))
    }

    async fn kill_and_wait(run: &RunDir, pid: u32) -> bool {
        kill_pid(pid);
        wait_exit(pid, &run.path, QUIT_GRACE).await
    }

    /// Notes in the VM's record which cached image its disk is built from.
    fn record_base_image(&self, vm: &VmTarget, sha256: &str) -> Result<(), ApiError> {
        let Ok(Some(mut record)) = self.registry.load(vm.vm_id) else {
            return Ok(());
        };
        if record.base_image_sha256.as_deref() == Some(sha256) {
            return Ok(());
        }
        record.base_image_sha256 = Some(sha256.to_string());
        self.registry
            .save(&record)
            .map_err(|e| api_err(ErrorCode::Internal, error_chain(&e)))
    }

    fn not_running_conflict(name: &str, op: SyncOp, state: &str) -> ApiError {
        ApiError::conflict(format!(
            "vm {name} is {state}; {} needs {}",
            op.as_str(),
            match op {
                SyncOp::Pause => "running",
                SyncOp::Resume => "paused",
                SyncOp::Reset => "running or paused",
            }
        ))
    }
}

impl VmDriver for LocalDriver {
    fn remember(&self, vm: &VmTarget) -> Result<(), ApiError> {
        let Some(spec) = &vm.spec else {
            return Ok(());
        };
        if vm.pool_path.as_os_str().is_empty() {
            return Ok(());
        }
        let record = VmRecord {
            vm_id: vm.vm_id,
            name: vm.name.clone(),
            pool: vm.pool.clone(),
            pool_path: vm.pool_path.clone(),
            spec: spec.clone(),
            base_image_sha256: self
                .registry
                .load(vm.vm_id)
                .ok()
                .flatten()
                .and_then(|r| r.base_image_sha256),
        };
        self.registry
            .save(&record)
            .map_err(|e| api_err(ErrorCode::Internal, error_chain(&e)))
    }

    async fn prepare(&self, vm: &VmTarget, progress: &Progress) -> Result<(), ApiError> {
        let spec = Self::require_spec(vm)?;
        if disk::existing_disk(&vm.pool_path, vm.vm_id).is_some() {
            progress.phase("disk exists");
            return Ok(());
        }
        progress.phase("downloading image");
        let _no_prune = self.images_gate.read().await;
        let cache = self.image_cache(&vm.pool_path);
        let report_bytes =
            |done: u64, total: Option<u64>| progress.bytes("downloading image", done, total);
        let image = cache
            .materialize(&spec.image_url, spec.image_sha256.as_deref(), &report_bytes)
            .await
            .map_err(|e| ApiError::new(e.code(), error_chain(&e)))?;
        self.record_base_image(vm, &image.sha256)?;
        progress.phase("creating disk");
        let format = spec.format.unwrap_or(DiskFormat::Qcow2);
        disk::ensure_disk(&vm.pool_path, vm.vm_id, &image, format, spec.disk_gib)
            .await
            .map_err(|e| ApiError::new(e.code(), error_chain(&e)))?;
        Ok(())
    }

    async fn start(&self, vm: &VmTarget, progress: &Progress) -> Result<VmReport, ApiError> {
        let run = self.registry.run_dir(vm.vm_id);
        if let Some(pid) = self.live_pid(&run) {
            let status = guest_power::query_status(&run, STOP_QMP_TIMEOUT).await;
            if status != Ok(RunStatus::Shutdown) {
                tracing::info!(vm = %vm.name, "already running");
                return Ok(self.report(vm.vm_id).await);
            }
            // The guest powered off and QEMU waits (-no-shutdown): end it, boot anew.
            progress.phase("quitting powered-off qemu");
            if !finish_guest_shutdown(&run, vm.vm_id, pid).await {
                return Err(ApiError::new(
                    ErrorCode::QemuFailed,
                    format!("QEMU (pid {pid}) of vm {} survived SIGKILL", vm.name),
                ));
            }
            self.registry.set_observed_pid(vm.vm_id, None);
        }
        let spec = Self::require_spec(vm)?;
        progress.phase("starting qemu");
        let pid = self.launch(vm, spec, &run).await?;
        progress.phase("waiting for qmp");
        if let Err(cause) = Self::confirm_running(&run).await {
            Self::kill_and_wait(&run, pid).await;
            self.registry.set_observed_pid(vm.vm_id, None);
            remove_vm_tap(vm.vm_id);
            return Err(ApiError::new(
                ErrorCode::QemuFailed,
                format!(
                    "QEMU (pid {pid}) did not reach running: {cause}; qemu log: {}",
                    log_tail(&run.qemu_log())
                ),
            ));
        }
        Ok(self.report(vm.vm_id).await)
    }

    async fn stop(
        &self,
        vm: &VmTarget,
        timeout: Duration,
        progress: &Progress,
    ) -> Result<VmReport, ApiError> {
        let run = self.registry.run_dir(vm.vm_id);
        let Some(pid) = self.live_pid(&run) else {
            let guest_shutdown = run.guest_shutdown_marker().exists();
            return Ok(self.stopped_report(vm, "already stopped", guest_shutdown));
        };
        let qmp = Qmp::connect(&run.qmp_socket())
            .await
            .map_err(|e| api_err(ErrorCode::QemuFailed, error_chain(&e)))?;
        let status = qmp.query_status().await.ok();
        if status == Some(RunStatus::Shutdown) {
            drop(qmp);
            tracing::info!(vm = %vm.name, "guest is already off; quitting its QEMU");
            return self.finish_stop(vm, &run, pid).await;
        }
        if status == Some(RunStatus::Paused) {
            tracing::info!(vm = %vm.name, "resuming paused VM so the guest sees the power button");
            qmp.cont()
                .await
                .map_err(|e| api_err(ErrorCode::QemuFailed, error_chain(&e)))?;
        }
        drop(qmp);
        // The guest agent first (it works before the guest's ACPI handler is up), else ACPI.
        if guest_agent::request_shutdown(&run, &vm.name).await {
            progress.phase("guest-shutdown sent");
        } else {
            Qmp::connect(&run.qmp_socket())
                .await
                .map_err(|e| api_err(ErrorCode::QemuFailed, error_chain(&e)))?
                .system_powerdown()
                .await
                .map_err(|e| api_err(ErrorCode::QemuFailed, error_chain(&e)))?;
            progress.phase("powerdown sent");
        }
        progress.phase("waiting for guest");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match Self::wait_guest_off(&run, pid, left.min(ACPI_REPEAT)).await {
                Some(GuestOff::Held) => return self.finish_stop(vm, &run, pid).await,
                Some(GuestOff::Exited) => {
                    // Only a QEMU launched without -no-shutdown exits on guest poweroff.
                    let _ = std::fs::write(run.guest_shutdown_marker(), b"");
                    clear_dead_qemu(&run, vm.vm_id);
                    return Ok(self.stopped_report(vm, GUEST_OFF_DETAIL, true));
                }
                None => {}
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            // Still running: ask the guest agent (up by now?) or press again (a failed
            // press is retried at the next round).
            if guest_agent::request_shutdown(&run, &vm.name).await {
                progress.phase("guest-shutdown sent");
                continue;
            }
            tracing::info!(vm = %vm.name, "guest still running; pressing the power button again");
            match Qmp::connect(&run.qmp_socket()).await {
                Ok(qmp) => {
                    if let Err(e) = qmp.system_powerdown().await {
                        tracing::warn!(vm = %vm.name, error = %e, "repeated ACPI powerdown failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(vm = %vm.name, error = %e, "QMP unavailable for a repeated powerdown")
                }
            }
        }
        Err(ApiError::new(
            ErrorCode::StopTimeout,
            format!(
                "guest of vm {} did not power off within {}s after guest-shutdown/ACPI powerdown; it is still running (pid {pid}); use poweroff to force it",
                vm.name,
                timeout.as_secs_f64()
            ),
        ))
    }

    async fn poweroff(&self, vm: &VmTarget, progress: &Progress) -> Result<VmReport, ApiError> {
        let run = self.registry.run_dir(vm.vm_id);
        let Some(pid) = self.live_pid(&run) else {
            let guest_shutdown = run.guest_shutdown_marker().exists();
            return Ok(self.stopped_report(vm, "already stopped", guest_shutdown));
        };
        progress.phase("quitting qemu");
        match Qmp::connect(&run.qmp_socket()).await {
            Ok(qmp) => {
                if let Err(e) = qmp.quit().await {
                    tracing::warn!(vm = %vm.name, error = %e, "QMP quit failed");
                }
            }
            Err(e) => tracing::warn!(vm = %vm.name, error = %e, "QMP unavailable for quit"),
        }
        if !wait_exit(pid, &run.path, QUIT_GRACE).await {
            progress.phase("killing qemu");
            tracing::warn!(vm = %vm.name, pid, "QEMU still running after quit; sending SIGKILL");
            if !Self::kill_and_wait(&run, pid).await {
                return Err(ApiError::new(
                    ErrorCode::QemuFailed,
                    format!("QEMU (pid {pid}) of vm {} survived SIGKILL", vm.name),
                ));
            }
        }
        Self::clear_stale_runtime_files(&run);
        Ok(self.stopped_report(vm, "powered off", false))
    }

    async fn delete(&self, vm: &VmTarget, progress: &Progress) -> Result<VmReport, ApiError> {
        self.poweroff(vm, progress).await?;
        progress.phase("removing disk");
        // The pool path comes from the agent's own --pool map (the executor resolves the
        // task's or the record's pool name); the record's path is never trusted: QEMU's
        // user can write the run dir that holds it.
        if !vm.pool_path.as_os_str().is_empty() {
            disk::remove_disk_dir(&vm.pool_path, vm.vm_id)
                .map_err(|e| ApiError::new(e.code(), error_chain(&e)))?;
        }
        self.registry
            .remove(vm.vm_id)
            .map_err(|e| api_err(ErrorCode::Internal, error_chain(&e)))?;
        let mut report = power_report(&vm.vm_id.to_string(), VmPower::Absent);
        report.pool = vm.pool.clone();
        report.detail = "deleted".into();
        Ok(report)
    }

    async fn report(&self, vm_id: Uuid) -> VmReport {
        let run = self.registry.run_dir(vm_id);
        let record = self.registry.load(vm_id).ok().flatten();
        let pool = record.as_ref().map(|r| r.pool.clone()).unwrap_or_default();
        let pidfile_pid = qemu::read_pid(&run.pidfile());
        let live = pidfile_pid.filter(|pid| qemu::pid_alive(*pid, &run.path));
        let seen = match live {
            // A pidfile whose process is dead: QEMU did not exit in order (SIGKILL, crash).
            None => QemuSeen::Gone {
                was_running: pidfile_pid.is_some(),
            },
            Some(_) => match guest_power::query_status(&run, REPORT_QMP_TIMEOUT).await {
                Ok(status) => QemuSeen::Status(status),
                Err(e) => QemuSeen::NoQmp(e),
            },
        };
        if live.is_none() && record.is_none() && !run.path.exists() {
            self.registry.set_observed_pid(vm_id, None);
            return self.base_report(vm_id, VmPower::Absent, &pool, &run);
        }
        let decision = decide(&seen, run.guest_shutdown_marker().exists());
        let mut live = live;
        if decision.power == VmPower::Stopped {
            // Clean up only when no task holds the VM: a task cleans up after itself, and
            // a start in progress may already have made the tap of its new QEMU.
            let lock = self.registry.vm_lock(vm_id);
            let no_task = lock.try_lock();
            if no_task.is_ok() {
                match live {
                    Some(pid) if decision.finish_shutdown => {
                        if finish_guest_shutdown(&run, vm_id, pid).await {
                            live = None;
                        }
                    }
                    Some(_) => {}
                    // E.g. QEMU died while the agent was down: its socket, pidfile and tap.
                    None => clear_dead_qemu(&run, vm_id),
                }
            }
        }
        self.registry.set_observed_pid(vm_id, live);
        let mut report = self.base_report(vm_id, decision.power, &pool, &run);
        if decision.power != VmPower::Stopped {
            report.pid = live.unwrap_or_default();
        }
        report.guest_shutdown = decision.guest_shutdown;
        report.detail = decision.detail;
        // What the guest agent watcher last learned from this QEMU (absent: no news).
        if let Some(pid) = live.filter(|_| decision.power != VmPower::Stopped) {
            report.guest = self.registry.guest_info(vm_id, pid);
        }
        report
    }

    async fn report_all(&self) -> Vec<VmReport> {
        let mut reports = Vec::new();
        for record in self.registry.load_all() {
            reports.push(self.report(record.vm_id).await);
        }
        reports
    }

    async fn read_serial_log(
        &self,
        vm_id: Uuid,
        offset: u64,
        max_bytes: u64,
    ) -> Result<LogChunk, ApiError> {
        let run = self.registry.run_dir(vm_id);
        if !run.path.exists() {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("vm {vm_id} has no serial log on this node"),
            ));
        }
        let log = run.serial_log();
        tokio::task::spawn_blocking(move || serial_log::read(&log, offset, max_bytes))
            .await
            .map_err(|e| api_err(ErrorCode::Internal, e))?
            .map_err(|e| api_err(ErrorCode::Internal, error_chain(&e)))
    }

    fn console_socket(&self, vm_id: Uuid) -> Result<std::path::PathBuf, ApiError> {
        let run = self.registry.run_dir(vm_id);
        match self.live_pid(&run) {
            Some(_) => Ok(run.console_socket()),
            None => Err(ApiError::conflict(format!(
                "vm {vm_id} is not running on this node; its console opens when it runs"
            ))),
        }
    }

    async fn pool_images(&self, pool: &str, prune: bool) -> Result<Vec<CachedImageInfo>, ApiError> {
        let Some((_, pool_path)) = self.pools.iter().find(|(name, _)| name == pool) else {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("pool {pool} is not on this node"),
            ));
        };
        let cache = self.image_cache(pool_path);
        let records = self.registry.load_all();
        if prune {
            let _no_materialize = self.images_gate.write().await;
            pool_images::prune(&cache, pool_path, &records).await
        } else {
            pool_images::list(&cache, pool_path, &records).await
        }
    }

    async fn sync_op(&self, vm_id: Uuid, op: SyncOp) -> Result<VmReport, ApiError> {
        let run = self.registry.run_dir(vm_id);
        let name = self
            .registry
            .load(vm_id)
            .ok()
            .flatten()
            .map(|r| r.name)
            .unwrap_or_else(|| vm_id.to_string());
        if self.live_pid(&run).is_none() {
            return Err(Self::not_running_conflict(&name, op, "stopped"));
        }
        let qmp = Qmp::connect(&run.qmp_socket())
            .await
            .map_err(|e| api_err(ErrorCode::QemuFailed, error_chain(&e)))?;
        let status = qmp
            .query_status()
            .await
            .map_err(|e| api_err(ErrorCode::QemuFailed, error_chain(&e)))?;
        let result = match (op, &status) {
            (SyncOp::Pause, RunStatus::Running) => qmp.stop().await,
            (SyncOp::Resume, RunStatus::Paused) => qmp.cont().await,
            (SyncOp::Reset, RunStatus::Running | RunStatus::Paused) => qmp.system_reset().await,
            (_, RunStatus::Running) => {
                return Err(Self::not_running_conflict(&name, op, "running"))
            }
            (_, RunStatus::Paused) => return Err(Self::not_running_conflict(&name, op, "paused")),
            (_, RunStatus::Shutdown) => {
                return Err(Self::not_running_conflict(&name, op, "stopped"))
            }
            (_, RunStatus::Other(state)) => {
                return Err(Self::not_running_conflict(&name, op, state))
            }
        };
        result.map_err(|e| api_err(ErrorCode::QemuFailed, error_chain(&e)))?;
        drop(qmp);
        Ok(self.report(vm_id).await)
    }
}
