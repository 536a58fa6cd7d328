//! Telling a guest that powered itself off from a QEMU that crashed or was killed (what
//! `VmReport.guest_shutdown` carries and the restart policy acts on).
//!
//! QEMU runs with `-no-shutdown`: a guest poweroff (ACPI or `poweroff` inside the guest)
//! leaves the process alive in run state `shutdown` instead of exiting. Whoever notices
//! that state (the monitor, a `vm.stop`, a report at re-adoption) writes
//! [`GUEST_SHUTDOWN_MARKER`](crate::vm_registry::GUEST_SHUTDOWN_MARKER) into the VM's run
//! dir first, then quits QEMU ([`finish_guest_shutdown`]), so the fact survives an agent
//! that dies halfway. A QEMU that vanished without the marker crashed or was killed. The
//! marker is removed when the VM boots again.
//!
//! [`decide`] is the pure table from what was observed to the report.

use std::time::Duration;

use otherix_api::proto::VmPower;
use uuid::Uuid;

use crate::network::remove_vm_tap;
use crate::qemu::process::{kill_pid, wait_exit};
use crate::qemu::{Qmp, RunStatus};
use crate::vm_registry::RunDir;

/// Report detail of a QEMU that exited without a guest shutdown.
pub const CRASHED_DETAIL: &str = "QEMU exited unexpectedly (crashed or killed)";
/// Report detail of a guest that powered itself off.
pub const GUEST_OFF_DETAIL: &str = "guest powered off";

/// How long QEMU gets to exit after QMP quit, and again after SIGKILL.
pub const QUIT_GRACE: Duration = Duration::from_secs(5);

/// What the agent sees of a VM's QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QemuSeen {
    /// No live QEMU process. `was_running`: the agent saw it running (monitor), or it
    /// left its pidfile behind (QEMU removes it on an orderly exit, not on SIGKILL).
    Gone { was_running: bool },
    /// The process lives and QMP answered `query-status`.
    Status(RunStatus),
    /// The process lives but QMP did not answer (the message says why).
    NoQmp(String),
}

/// The report fields (and the one action) that follow from an observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub power: VmPower,
    pub guest_shutdown: bool,
    /// The guest is off but QEMU still holds it: record the marker and quit QEMU.
    pub finish_shutdown: bool,
    pub detail: String,
}

/// The pure decision: QEMU process and QMP state plus the marker file -> report.
pub fn decide(seen: &QemuSeen, marker: bool) -> Decision {
    let alive = |power, detail: String| Decision {
        power,
        guest_shutdown: false,
        finish_shutdown: false,
        detail,
    };
    let stopped = |guest_shutdown, finish_shutdown, detail: &str| Decision {
        power: VmPower::Stopped,
        guest_shutdown,
        finish_shutdown,
        detail: detail.to_string(),
    };
    match seen {
        QemuSeen::Status(RunStatus::Running) => alive(VmPower::Running, String::new()),
        QemuSeen::Status(RunStatus::Paused) => alive(VmPower::Paused, String::new()),
        QemuSeen::Status(RunStatus::Shutdown) => stopped(true, true, GUEST_OFF_DETAIL),
        QemuSeen::Status(RunStatus::Other(state)) => {
            alive(VmPower::Running, format!("qemu state {state}"))
        }
        QemuSeen::NoQmp(e) => alive(VmPower::Running, format!("QMP unavailable: {e}")),
        QemuSeen::Gone { .. } if marker => stopped(true, false, GUEST_OFF_DETAIL),
        QemuSeen::Gone { was_running: true } => stopped(false, false, CRASHED_DETAIL),
        QemuSeen::Gone { was_running: false } => stopped(false, false, ""),
    }
}

/// `query-status` over a fresh connection, bounded by `within`.
pub async fn query_status(run: &RunDir, within: Duration) -> Result<RunStatus, String> {
    let query = async {
        let qmp = Qmp::connect(&run.qmp_socket()).await?;
        qmp.query_status().await
    };
    match tokio::time::timeout(within, query).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => Err(crate::error_chain::error_chain(&e)),
        Err(_) => Err(format!("no answer within {}s", within.as_secs_f64())),
    }
}

/// Records the marker (before anything else, so an agent dying halfway still knows),
/// quits QEMU (SIGKILL if it lingers), and clears its socket, pidfile and tap. True when
/// QEMU is gone.
pub async fn finish_guest_shutdown(run: &RunDir, vm_id: Uuid, pid: u32) -> bool {
    if let Err(e) = std::fs::write(run.guest_shutdown_marker(), b"") {
        tracing::warn!(%vm_id, error = %e, "cannot record guest shutdown marker");
    }
    tracing::info!(%vm_id, pid, "guest powered off; quitting its QEMU");
    let gone = quit_qemu(run, vm_id, pid).await;
    if gone {
        clear_dead_qemu(run, vm_id);
    }
    gone
}

/// QMP quit, then SIGKILL after [`QUIT_GRACE`]. True when the process is gone.
pub async fn quit_qemu(run: &RunDir, vm_id: Uuid, pid: u32) -> bool {
    match Qmp::connect(&run.qmp_socket()).await {
        Ok(qmp) => {
            if let Err(e) = qmp.quit().await {
                tracing::warn!(%vm_id, error = %e, "QMP quit failed");
            }
        }
        Err(e) => tracing::warn!(%vm_id, error = %e, "QMP unavailable for quit"),
    }
    if wait_exit(pid, &run.path, QUIT_GRACE).await {
        return true;
    }
    tracing::warn!(%vm_id, pid, "QEMU still running after quit; sending SIGKILL");
    kill_pid(pid);
    wait_exit(pid, &run.path, QUIT_GRACE).await
}

/// Removes what a dead QEMU leaves behind: QMP and QGA sockets, pidfile, tap device.
pub fn clear_dead_qemu(run: &RunDir, vm_id: Uuid) {
    let _ = std::fs::remove_file(run.qmp_socket());
    let _ = std::fs::remove_file(run.qga_socket());
    let _ = std::fs::remove_file(run.pidfile());
    remove_vm_tap(vm_id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decide_table() {
        use QemuSeen::*;
        let status = |s: RunStatus| Status(s);
        // (seen, marker, power, guest_shutdown, finish_shutdown, detail)
        let table = [
            (
                status(RunStatus::Running),
                false,
                VmPower::Running,
                false,
                false,
                "",
            ),
            // A marker left from an earlier boot means nothing while QEMU runs.
            (
                status(RunStatus::Running),
                true,
                VmPower::Running,
                false,
                false,
                "",
            ),
            (
                status(RunStatus::Paused),
                false,
                VmPower::Paused,
                false,
                false,
                "",
            ),
            (
                status(RunStatus::Shutdown),
                false,
                VmPower::Stopped,
                true,
                true,
                GUEST_OFF_DETAIL,
            ),
            (
                status(RunStatus::Shutdown),
                true,
                VmPower::Stopped,
                true,
                true,
                GUEST_OFF_DETAIL,
            ),
            (
                status(RunStatus::Other("internal-error".into())),
                false,
                VmPower::Running,
                false,
                false,
                "qemu state internal-error",
            ),
            (
                NoQmp("refused".into()),
                false,
                VmPower::Running,
                false,
                false,
                "QMP unavailable: refused",
            ),
            (
                Gone { was_running: true },
                true,
                VmPower::Stopped,
                true,
                false,
                GUEST_OFF_DETAIL,
            ),
            (
                Gone { was_running: false },
                true,
                VmPower::Stopped,
                true,
                false,
                GUEST_OFF_DETAIL,
            ),
            (
                Gone { was_running: true },
                false,
                VmPower::Stopped,
                false,
                false,
                CRASHED_DETAIL,
            ),
            (
                Gone { was_running: false },
                false,
                VmPower::Stopped,
                false,
                false,
                "",
            ),
        ];
        for (seen, marker, power, guest_shutdown, finish_shutdown, detail) in table {
            let name = format!("{seen:?} marker={marker}");
            let d = decide(&seen, marker);
            assert_eq!(d.power, power, "{name}");
            assert_eq!(d.guest_shutdown, guest_shutdown, "{name}");
            assert_eq!(d.finish_shutdown, finish_shutdown, "{name}");
            assert_eq!(d.detail, detail, "{name}");
        }
    }

    #[tokio::test]
    async fn finish_guest_shutdown_without_qemu_records_marker_and_clears_files() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir {
            path: dir.path().to_path_buf(),
        };
        std::fs::write(run.pidfile(), "4294967294").unwrap();
        assert!(finish_guest_shutdown(&run, Uuid::new_v4(), u32::MAX - 1).await);
        assert!(run.guest_shutdown_marker().is_file());
        assert!(!run.pidfile().exists());
    }
}
