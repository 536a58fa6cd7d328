//! Real QEMU (TCG) boots under UEFI: the busybox amd64 guest with the built-in `ovmf`
//! firmware, and the busybox arm64 guest (`-M virt`, AAVMF by default) through READY and
//! a graceful stop. Each VM gets its own UEFI variable store, kept across boots and
//! removed with the VM.

mod common;

use common::{test_image, wait_for_serial, Node, BOOT_TIMEOUT, STOP_TIMEOUT};
use otherix_agent::driver::VmDriver;
use otherix_agent::firmware::EFI_VARS;
use otherix_api::proto::{FirmwareRef, VmPower};
use otherix_api::Arch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amd64_uefi_with_ovmf_reaches_ready() {
    let node = Node::new();
    let image = test_image("busybox-amd64.qcow2");
    let mut vm = node.target("uefi-amd64", &image, Arch::Amd64);
    vm.spec.as_mut().unwrap().firmware = Some("ovmf".into());
    node.driver.remember(&vm).unwrap();
    node.driver.prepare(&vm, &node.progress).await.unwrap();
    let started = node.driver.start(&vm, &node.progress).await.unwrap();
    assert_eq!(started.power, VmPower::Running as i32);
    let run = node.run_dir(&vm);
    wait_for_serial(&run, "OTHERIX-TEST-GUEST-READY", BOOT_TIMEOUT).await;
    let vars = node.pool.join(format!("vms/{}/{EFI_VARS}", vm.vm_id));
    assert!(vars.is_file());
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", started.pid)).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains(
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
        ),
        "{cmdline}"
    );

    node.driver
        .stop(&vm, STOP_TIMEOUT, &node.progress)
        .await
        .unwrap();
    node.driver.delete(&vm, &node.progress).await.unwrap();
    assert!(!vars.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm64_default_aavmf_boots_and_stops_gracefully() {
    let node = Node::new();
    let image = test_image("busybox-arm64.qcow2");
    let mut vm = node.target("arm", &image, Arch::Arm64);
    // The server's resolved reference, as otherixd sends it for the built-in aavmf.
    vm.firmware = Some(FirmwareRef {
        name: "aavmf".into(),
        r#type: "uefi".into(),
        code: "/usr/share/AAVMF/AAVMF_CODE.fd".into(),
        vars_template: "/usr/share/AAVMF/AAVMF_VARS.fd".into(),
    });
    node.driver.remember(&vm).unwrap();
    node.driver.prepare(&vm, &node.progress).await.unwrap();
    let started = node.driver.start(&vm, &node.progress).await.unwrap();
    assert_eq!(started.power, VmPower::Running as i32);
    let run = node.run_dir(&vm);
    let serial = wait_for_serial(&run, "OTHERIX-TEST-GUEST-READY", BOOT_TIMEOUT).await;
    assert!(serial.contains("OTHERIX-SEED-BEGIN meta-data"), "{serial}");
    let vars = node.pool.join(format!("vms/{}/{EFI_VARS}", vm.vm_id));
    let vars_before = std::fs::metadata(&vars).unwrap().modified().unwrap();

    let stopped = node
        .driver
        .stop(&vm, STOP_TIMEOUT, &node.progress)
        .await
        .unwrap();
    assert_eq!(stopped.power, VmPower::Stopped as i32);
    let serial = std::fs::read_to_string(run.serial_log()).unwrap_or_default();
    assert!(serial.contains("OTHERIX-TEST-GUEST-POWERDOWN"), "{serial}");

    // Without a server reference the arm64 default is AAVMF too; the vars file is kept.
    vm.firmware = None;
    let again = node.driver.start(&vm, &node.progress).await.unwrap();
    assert_eq!(again.power, VmPower::Running as i32);
    assert!(std::fs::metadata(&vars).unwrap().modified().unwrap() >= vars_before);
    node.driver.poweroff(&vm, &node.progress).await.unwrap();
    node.driver.delete(&vm, &node.progress).await.unwrap();
    assert!(!vars.exists());
}
