//! Guest poweroff vs. QEMU crash against real QEMU (TCG) and the busybox test guests:
//! the monitor's unsolicited STOPPED reports carry `guest_shutdown` (true when the guest
//! powered itself off, false when QEMU was killed), and so do the reports of a fresh
//! driver on the same data dir (agent restart / re-adoption). A guest "powers itself off"
//! here through QMP `system_powerdown` sent straight to its socket outside any task: the
//! ACPI path a guest-initiated poweroff takes.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{test_image, wait_for_serial, Node, BOOT_TIMEOUT};
use otherix_agent::driver::VmDriver;
use otherix_agent::guest_power::{CRASHED_DETAIL, GUEST_OFF_DETAIL};
use otherix_agent::host::Accel;
use otherix_agent::local_driver::LocalDriver;
use otherix_agent::monitor;
use otherix_agent::outbox::Outbox;
use otherix_agent::qemu::process::{kill_pid, wait_exit};
use otherix_agent::qemu::{pid_alive, Qmp, RunStatus};
use otherix_agent::vm_registry::{RunDir, VmRegistry};
use otherix_api::proto::agent_message::Body;
use otherix_api::proto::{AgentMessage, VmPower, VmReport};
use otherix_api::Arch;
use tokio::sync::mpsc::Receiver;

const REPORT_TIMEOUT: Duration = Duration::from_secs(60);

/// Aborts the spawned monitor when the test ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn spawn_monitor(node: &Node) -> (AbortOnDrop, Receiver<AgentMessage>) {
    let (outbox, rx) = Outbox::new();
    let handle = tokio::spawn(monitor::run(node.registry.clone(), outbox));
    (AbortOnDrop(handle), rx)
}

/// The next unsolicited VmReport the monitor sends.
async fn next_report(rx: &mut Receiver<AgentMessage>) -> VmReport {
    let started = Instant::now();
    loop {
        let msg = tokio::time::timeout(REPORT_TIMEOUT, rx.recv())
            .await
            .expect("no monitor report in time")
            .expect("monitor outbox closed");
        if let Some(Body::VmReport(report)) = msg.body {
            eprintln!("monitor report after {:?}: {report:?}", started.elapsed());
            return report;
        }
    }
}

/// Presses the ACPI power button over the VM's QMP socket, outside any task.
async fn guest_powers_itself_off(run: &RunDir) {
    let qmp = Qmp::connect(&run.qmp_socket()).await.unwrap();
    qmp.system_powerdown().await.unwrap();
}

/// Waits for the second READY line (the serial log is appended across boots).
async fn wait_for_second_boot(run: &RunDir) {
    let started = Instant::now();
    loop {
        let log = std::fs::read_to_string(run.serial_log()).unwrap_or_default();
        if log.matches("OTHERIX-TEST-GUEST-READY").count() >= 2 {
            return;
        }
        assert!(
            started.elapsed() < BOOT_TIMEOUT,
            "no second boot; log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A fresh driver on the node's data dir: what the agent sees after a restart.
fn restarted_agent(node: &Node) -> LocalDriver {
    LocalDriver::new(
        Arc::new(VmRegistry::new(&node.dir.path().join("data"))),
        Accel::Tcg,
        true,
    )
    .with_systemd_scope(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_poweroff_reports_guest_shutdown() {
    let node = Node::new();
    let image = test_image("busybox-amd64.qcow2");
    let vm = node.target("self-off", &image, Arch::Amd64);
    let run = node.run_dir(&vm);
    node.driver.remember(&vm).unwrap();
    node.driver.prepare(&vm, &node.progress).await.unwrap();

    // Monitor: the guest powers off, QEMU (-no-shutdown) waits in `shutdown`; the
    // monitor records the marker, quits QEMU and reports guest_shutdown = true.
    let (monitor, mut rx) = spawn_monitor(&node);
    let first = node.driver.start(&vm, &node.progress).await.unwrap();
    wait_for_serial(&run, "OTHERIX-TEST-GUEST-READY", BOOT_TIMEOUT).await;
    guest_powers_itself_off(&run).await;
    let report = next_report(&mut rx).await;
    assert_eq!(report.vm_id, vm.vm_id.to_string());
    assert_eq!(report.power, VmPower::Stopped as i32, "{report:?}");
    assert!(report.guest_shutdown, "{report:?}");
    assert_eq!(report.detail, GUEST_OFF_DETAIL);
    assert_eq!(report.pool, "default");
    assert!(!pid_alive(first.pid, &run.path), "QEMU left running");
    assert!(run.guest_shutdown_marker().is_file());
    assert!(!run.pidfile().exists() && !run.qmp_socket().exists());
    drop(monitor);
    let serial = std::fs::read_to_string(run.serial_log()).unwrap();
    assert!(serial.contains("OTHERIX-TEST-GUEST-POWERDOWN"), "{serial}");

    // After an agent restart the marker still says how the VM stopped.
    let readopted = restarted_agent(&node).report(vm.vm_id).await;
    assert_eq!(readopted.power, VmPower::Stopped as i32);
    assert!(readopted.guest_shutdown, "{readopted:?}");

    // The next boot clears the marker.
    let second = node.driver.start(&vm, &node.progress).await.unwrap();
    assert_eq!(second.power, VmPower::Running as i32);
    assert!(!run.guest_shutdown_marker().exists());
    assert!(!second.guest_shutdown);

    // Re-adoption: the guest powered off while the agent was down (no monitor), so QEMU
    // still waits in `shutdown`; the restarted agent quits it and reports a guest shutdown.
    wait_for_second_boot(&run).await;
    guest_powers_itself_off(&run).await;
    let deadline = Instant::now() + REPORT_TIMEOUT;
    loop {
        let qmp = Qmp::connect(&run.qmp_socket()).await.unwrap();
        if qmp.query_status().await.unwrap() == RunStatus::Shutdown {
            break;
        }
        assert!(Instant::now() < deadline, "guest did not power off");
        drop(qmp);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(pid_alive(second.pid, &run.path), "-no-shutdown kept QEMU");
    let reports = restarted_agent(&node).report_all().await;
    assert_eq!(reports.len(), 1);
    assert_eq!(
        reports[0].power,
        VmPower::Stopped as i32,
        "{:?}",
        reports[0]
    );
    assert!(reports[0].guest_shutdown, "{:?}", reports[0]);
    assert_eq!(reports[0].pid, 0);
    assert!(!pid_alive(second.pid, &run.path), "QEMU left running");
    assert!(run.guest_shutdown_marker().is_file());

    node.driver.delete(&vm, &node.progress).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_qemu_reports_no_guest_shutdown() {
    let node = Node::new();
    let image = test_image("busybox-amd64.qcow2");
    let vm = node.target("killed", &image, Arch::Amd64);
    let run = node.run_dir(&vm);
    node.driver.remember(&vm).unwrap();
    node.driver.prepare(&vm, &node.progress).await.unwrap();

    // Monitor: kill -9 QEMU -> STOPPED, guest_shutdown = false.
    let (monitor, mut rx) = spawn_monitor(&node);
    let first = node.driver.start(&vm, &node.progress).await.unwrap();
    kill_pid(first.pid);
    let report = next_report(&mut rx).await;
    assert_eq!(report.power, VmPower::Stopped as i32, "{report:?}");
    assert!(!report.guest_shutdown, "{report:?}");
    assert_eq!(report.detail, CRASHED_DETAIL);
    assert!(!run.guest_shutdown_marker().exists());
    assert!(!run.pidfile().exists(), "stale pidfile left");
    drop(monitor);

    // Re-adoption: QEMU killed while the agent was down (no monitor).
    let second = node.driver.start(&vm, &node.progress).await.unwrap();
    kill_pid(second.pid);
    assert!(wait_exit(second.pid, &run.path, Duration::from_secs(10)).await);
    assert!(run.pidfile().exists(), "SIGKILL leaves QEMU's pidfile");
    let reports = restarted_agent(&node).report_all().await;
    assert_eq!(reports.len(), 1);
    assert_eq!(
        reports[0].power,
        VmPower::Stopped as i32,
        "{:?}",
        reports[0]
    );
    assert!(!reports[0].guest_shutdown, "{:?}", reports[0]);
    assert_eq!(reports[0].detail, CRASHED_DETAIL);
    assert!(!run.pidfile().exists(), "stale pidfile left at re-adoption");

    // A marker from an earlier guest poweroff does not survive the next boot: a later
    // crash is a crash.
    std::fs::write(run.guest_shutdown_marker(), b"").unwrap();
    let third = node.driver.start(&vm, &node.progress).await.unwrap();
    kill_pid(third.pid);
    assert!(wait_exit(third.pid, &run.path, Duration::from_secs(10)).await);
    let report = restarted_agent(&node).report(vm.vm_id).await;
    assert!(!report.guest_shutdown, "{report:?}");

    node.driver.delete(&vm, &node.progress).await.unwrap();
}
