//! Bridge NICs for real, inside a throwaway network namespace: the test creates
//! `otx-<random>` with a bridge in it, then re-runs itself inside the namespace
//! (`ip netns exec NS <this test binary> --exact ...`) where the driver creates the VM's
//! tap, enslaves it to the bridge and boots the busybox guest, which sets its static
//! address from network-config and pings the bridge. The tap is gone after poweroff and
//! after QEMU dies outside a task (monitor) and after it died while the agent was down
//! (re-adoption). Nothing touches the host's namespace; a Drop
//! guard deletes the namespace.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{test_image, wait_for_serial, Node, BOOT_TIMEOUT};
use otherix_agent::driver::VmDriver;
use otherix_agent::host::Accel;
use otherix_agent::local_driver::LocalDriver;
use otherix_agent::monitor;
use otherix_agent::network::tap_name;
use otherix_agent::outbox::Outbox;
use otherix_agent::qemu::mac_for_vm;
use otherix_agent::qemu::process::{kill_pid, wait_exit};
use otherix_agent::vm_registry::VmRegistry;
use otherix_api::proto::VmPower;
use otherix_api::{Arch, ErrorCode};

const INNER_ENV: &str = "OTHERIX_TEST_INSIDE_NETNS";
const BRIDGE: &str = "otxbr0";
const BRIDGE_ADDR: &str = "10.99.0.1/24";
const GUEST_ADDR: &str = "10.99.0.2/24";

/// Deletes the namespace (and with it the bridge and any tap) when dropped.
struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(status.success(), "{args:?} failed: {status}");
}

#[test]
fn bridge_tap_in_netns() {
    if std::env::var_os(INNER_ENV).is_some() {
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(inside_netns());
    }
    let ns = format!("otx-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    run(&["ip", "netns", "add", &ns]);
    let _guard = NetnsGuard(ns.clone());
    for cmd in [
        vec!["ip", "link", "set", "lo", "up"],
        vec!["ip", "link", "add", BRIDGE, "type", "bridge"],
        vec!["ip", "addr", "add", BRIDGE_ADDR, "dev", BRIDGE],
        vec!["ip", "link", "set", BRIDGE, "up"],
    ] {
        let mut full = vec!["ip", "netns", "exec", &ns];
        full.extend(cmd);
        run(&full);
    }
    let exe = std::env::current_exe().unwrap();
    let output = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(exe)
        .args([
            "--exact",
            "bridge_tap_in_netns",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(INNER_ENV, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("--- inside {ns} ---\n{text}");
    assert!(output.status.success(), "test inside the namespace failed");
    assert!(text.contains("1 passed"), "inner test did not run");
}

fn tap_exists(tap: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(tap).exists()
}

async fn inside_netns() {
    let node = Node::new();
    let image = test_image("busybox-amd64.qcow2");

    // A bridge that does not exist: the boot fails naming it.
    let mut lost = node.target("lost", &image, Arch::Amd64);
    lost.bridge = "otxnobr0".into();
    node.driver.remember(&lost).unwrap();
    node.driver.prepare(&lost, &node.progress).await.unwrap();
    let err = node.driver.start(&lost, &node.progress).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::QemuFailed, "{err}");
    assert!(
        err.message.contains("bridge otxnobr0 does not exist"),
        "{}",
        err.message
    );
    assert!(!tap_exists(&tap_name(lost.vm_id)));

    let mut vm = node.target("bridged", &image, Arch::Amd64);
    vm.bridge = BRIDGE.into();
    {
        let spec = vm.spec.as_mut().unwrap();
        spec.network_config = Some(format!(
            "version: 2\nethernets:\n  eth0:\n    addresses: [{GUEST_ADDR}]\n"
        ));
        spec.user_data = Some("#cloud-config\n# otherix.ping=10.99.0.1\n".into());
    }
    let tap = tap_name(vm.vm_id);
    node.driver.remember(&vm).unwrap();
    node.driver.prepare(&vm, &node.progress).await.unwrap();
    node.driver.start(&vm, &node.progress).await.unwrap();
    let master = std::fs::read_link(format!("/sys/class/net/{tap}/master")).unwrap();
    assert!(master.ends_with(BRIDGE), "{master:?}");
    let run_dir = node.run_dir(&vm);
    let serial = wait_for_serial(&run_dir, "OTHERIX-TEST-GUEST-READY", BOOT_TIMEOUT).await;
    assert!(
        serial.contains(&format!("OTHERIX-NIC eth0 {}", mac_for_vm(vm.vm_id))),
        "{serial}"
    );
    assert!(
        serial.contains(&format!("OTHERIX-NIC-ADDR eth0 {GUEST_ADDR}")),
        "{serial}"
    );
    assert!(
        serial.contains("OTHERIX-PING-OK"),
        "guest could not ping the bridge:\n{serial}"
    );

    node.driver.poweroff(&vm, &node.progress).await.unwrap();
    assert!(!tap_exists(&tap), "tap left after poweroff");

    // QEMU killed outside a task: the monitor reports it and removes the tap.
    let again = node.driver.start(&vm, &node.progress).await.unwrap();
    assert!(tap_exists(&tap));
    kill_pid(again.pid);
    assert!(wait_exit(again.pid, &run_dir.path, Duration::from_secs(10)).await);
    let (outbox, _rx) = Outbox::new();
    monitor::check_once(&node.registry, &outbox).await;
    assert!(!tap_exists(&tap), "tap left after QEMU died");

    // QEMU killed while the agent is down: re-adoption by a restarted agent removes the tap.
    let third = node.driver.start(&vm, &node.progress).await.unwrap();
    assert!(tap_exists(&tap));
    kill_pid(third.pid);
    assert!(wait_exit(third.pid, &run_dir.path, Duration::from_secs(10)).await);
    let restarted = LocalDriver::new(
        Arc::new(VmRegistry::new(&node.dir.path().join("data"))),
        Accel::Tcg,
        true,
    );
    let readopted = restarted.report_all().await;
    let report = readopted
        .iter()
        .find(|r| r.vm_id == vm.vm_id.to_string())
        .unwrap();
    assert_eq!(report.power, VmPower::Stopped as i32, "{report:?}");
    assert!(!report.guest_shutdown, "{report:?}");
    assert!(
        !tap_exists(&tap),
        "tap left after re-adoption of a dead QEMU"
    );

    node.driver.delete(&vm, &node.progress).await.unwrap();
    node.driver.delete(&lost, &node.progress).await.unwrap();
}
