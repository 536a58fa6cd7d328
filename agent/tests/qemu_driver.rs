//! The QEMU driver against real QEMU (TCG) and the project's busybox test guests: image
//! cache + overlay disk, launch, QMP, serial console, graceful stop, relaunch, poweroff,
//! re-adoption by a fresh driver, stop_timeout on a guest that ignores the power button,
//! delete. Needs `target/test-images/` from `tests/images/build.sh`; fails (never skips)
//! without it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use otherix_agent::driver::{VmDriver, VmTarget};
use otherix_agent::executor::Executor;
use otherix_agent::host::Accel;
use otherix_agent::local_driver::LocalDriver;
use otherix_agent::outbox::{Outbox, Progress};
use otherix_agent::qemu::{pid_alive, Qmp, RunStatus};
use otherix_agent::vm_registry::VmRegistry;
use otherix_api::proto::agent_message::Body;
use otherix_api::proto::{TaskAssignment, TaskState, VmPower};
use otherix_api::{Arch, ErrorCode, VmSpec};
use uuid::Uuid;

mod common;
use common::{test_image, wait_for_serial, KillQemuOnDrop};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(90);

fn target(pool_path: &Path, name: &str, image: &Path) -> VmTarget {
    let mut spec = VmSpec::new(format!("file://{}", image.display()), Arch::Amd64);
    spec.vcpus = 1;
    spec.memory_mb = 256;
    VmTarget {
        vm_id: Uuid::new_v4(),
        name: name.into(),
        pool: "default".into(),
        pool_path: pool_path.to_path_buf(),
        spec: Some(spec),
        bridge: String::new(),
        firmware: None,
    }
}

fn phases(rx: &mut tokio::sync::mpsc::Receiver<otherix_api::proto::AgentMessage>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        if let Some(Body::TaskUpdate(u)) = msg.body {
            if out.last() != Some(&u.phase) {
                out.push(u.phase);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_driver_real_guest_lifecycle() {
    let image = test_image("busybox-amd64.qcow2");
    let nopowerdown = test_image("busybox-amd64-nopowerdown.qcow2");
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let pool = dir.path().join("pool");
    let registry = Arc::new(VmRegistry::new(&data_dir));
    let driver = LocalDriver::new(registry.clone(), Accel::Tcg, true);
    let guard = KillQemuOnDrop::default();
    let (outbox, mut rx) = Outbox::new();
    let progress = Progress::new("test-task", outbox);

    // Create: image cache + qcow2 overlay on the cached base.
    let a = target(&pool, "guest-a", &image);
    let run_a = registry.run_dir(a.vm_id);
    guard.watch(run_a.clone());
    driver.remember(&a).unwrap();
    driver.prepare(&a, &progress).await.unwrap();
    let disk = pool.join(format!("vms/{}/disk.qcow2", a.vm_id));
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(&disk)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let backing = info["backing-filename"].as_str().unwrap();
    assert!(
        backing.starts_with(&format!("{}/images/sha256-", pool.display())),
        "{backing}"
    );
    assert_eq!(phases(&mut rx)[..2], ["downloading image", "creating disk"]);

    // Launch: QMP says running, the guest boots.
    let started = driver.start(&a, &progress).await.unwrap();
    assert_eq!(started.power, VmPower::Running as i32, "{started:?}");
    assert!(started.pid > 0);
    assert_eq!(started.serial_log, run_a.serial_log().display().to_string());
    {
        let qmp = Qmp::connect(&run_a.qmp_socket()).await.unwrap();
        assert_eq!(qmp.query_status().await.unwrap(), RunStatus::Running);
    }
    // Starting a running VM is a no-op success with the same pid.
    assert_eq!(driver.start(&a, &progress).await.unwrap().pid, started.pid);
    wait_for_serial(&run_a, "OTHERIX-TEST-GUEST-READY", BOOT_TIMEOUT).await;

    // A fresh driver on the same data dir (agent restart) re-adopts the running VM.
    let readopted = LocalDriver::new(Arc::new(VmRegistry::new(&data_dir)), Accel::Tcg, true)
        .report_all()
        .await;
    assert_eq!(readopted.len(), 1);
    assert_eq!(readopted[0].power, VmPower::Running as i32);
    assert_eq!(readopted[0].pid, started.pid);

    // Graceful stop: system_powerdown, the guest powers off, QEMU exits.
    phases(&mut rx);
    let stopped = driver.stop(&a, STOP_TIMEOUT, &progress).await.unwrap();
    assert_eq!(stopped.power, VmPower::Stopped as i32);
    // QEMU runs with -no-shutdown: stop saw the guest off (run state `shutdown`), then
    // quit QEMU itself.
    assert!(!pid_alive(started.pid, &run_a.path));
    assert!(stopped.guest_shutdown, "{stopped:?}");
    assert!(run_a.guest_shutdown_marker().is_file());
    assert!(!run_a.pidfile().exists() && !run_a.qmp_socket().exists());
    assert_eq!(phases(&mut rx), ["powerdown sent", "waiting for guest"]);
    let serial = std::fs::read_to_string(run_a.serial_log()).unwrap();
    assert!(serial.contains("OTHERIX-TEST-GUEST-POWERDOWN"), "{serial}");
    // Stopping a stopped VM succeeds.
    assert_eq!(
        driver
            .stop(&a, STOP_TIMEOUT, &progress)
            .await
            .unwrap()
            .power,
        VmPower::Stopped as i32
    );

    // Relaunch gets a new pid; poweroff ends it.
    let relaunched = driver.start(&a, &progress).await.unwrap();
    assert_eq!(relaunched.power, VmPower::Running as i32);
    assert!(
        !run_a.guest_shutdown_marker().exists(),
        "marker survived a boot"
    );
    assert_ne!(relaunched.pid, started.pid);
    // Stopped at once, while the guest still boots: the first ACPI press comes before the
    // guest listens; a repeated one (every 10 s) stops it well within the timeout.
    let t0 = Instant::now();
    let stopped = driver.stop(&a, STOP_TIMEOUT, &progress).await.unwrap();
    assert_eq!(stopped.power, VmPower::Stopped as i32, "{stopped:?}");
    assert!(stopped.guest_shutdown, "{stopped:?}");
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    eprintln!("stop right after launch took {:?}", t0.elapsed());
    let relaunched = driver.start(&a, &progress).await.unwrap();
    assert_eq!(relaunched.power, VmPower::Running as i32);
    let off = driver.poweroff(&a, &progress).await.unwrap();
    assert_eq!(off.power, VmPower::Stopped as i32);
    assert!(!pid_alive(relaunched.pid, &run_a.path));
    assert_eq!(
        driver.poweroff(&a, &progress).await.unwrap().power,
        VmPower::Stopped as i32
    );

    // A guest that ignores the power button: stop times out, QEMU keeps running.
    let b = target(&pool, "guest-b", &nopowerdown);
    let run_b = registry.run_dir(b.vm_id);
    guard.watch(run_b.clone());
    driver.remember(&b).unwrap();
    driver.prepare(&b, &progress).await.unwrap();
    let b_started = driver.start(&b, &progress).await.unwrap();
    wait_for_serial(&run_b, "OTHERIX-TEST-GUEST-READY", BOOT_TIMEOUT).await;
    let err = driver
        .stop(&b, Duration::from_secs(5), &progress)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::StopTimeout, "{err}");
    assert!(err.message.contains("still running"), "{}", err.message);
    assert!(pid_alive(b_started.pid, &run_b.path));
    // The same as a vm.stop task through the executor: the task's phases run
    // powerdown sent -> waiting for guest -> timed out, and the VM keeps running.
    let (task_outbox, mut task_rx) = Outbox::new();
    let executor = Executor::new(
        Arc::new(LocalDriver::new(registry.clone(), Accel::Tcg, true)),
        registry.clone(),
        &data_dir,
        task_outbox,
        vec![("default".into(), pool.clone())],
    );
    executor.assign(TaskAssignment {
        task_id: Uuid::new_v4().to_string(),
        kind: "vm.stop".into(),
        vm_id: b.vm_id.to_string(),
        stop_timeout_ms: 3000,
        ..Default::default()
    });
    let mut task_phases: Vec<String> = Vec::new();
    let done = tokio::time::timeout(STOP_TIMEOUT, async {
        loop {
            if let Some(Body::TaskUpdate(u)) = task_rx.recv().await.unwrap().body {
                task_phases.push(u.phase.clone());
                if u.state != TaskState::Running as i32 {
                    return u;
                }
            }
        }
    })
    .await
    .expect("vm.stop task did not finish");
    assert_eq!(done.state, TaskState::Failed as i32, "{done:?}");
    assert_eq!(done.error_code, "stop_timeout", "{done:?}");
    assert_eq!(
        task_phases,
        ["powerdown sent", "waiting for guest", "timed out"]
    );
    assert_eq!(done.vm.unwrap().power, VmPower::Running as i32);
    assert!(pid_alive(b_started.pid, &run_b.path));
    assert_eq!(driver.report(b.vm_id).await.power, VmPower::Running as i32);
    let b_off = driver.poweroff(&b, &progress).await.unwrap();
    assert_eq!(b_off.power, VmPower::Stopped as i32);
    assert!(!pid_alive(b_started.pid, &run_b.path));

    // Delete removes run dir and disk, keeps the image cache; repeating it is fine.
    for vm in [&a, &b] {
        let gone = driver.delete(vm, &progress).await.unwrap();
        assert_eq!(gone.power, VmPower::Absent as i32);
        assert!(!registry.run_dir(vm.vm_id).path.exists());
        assert!(!pool.join(format!("vms/{}", vm.vm_id)).exists());
        driver.delete(vm, &progress).await.unwrap();
        assert_eq!(driver.report(vm.vm_id).await.power, VmPower::Absent as i32);
    }
    assert!(pool.join("images/index.json").is_file());
}
