//! Real QEMU (TCG) boots of the busybox amd64 guest: the cloud-init NoCloud seed reaches
//! the guest byte for byte (and is absent with `no_cloud_init`), SLIRP port forwards
//! listen on 127.0.0.1, a busy host port fails the boot naming the port, and the serial
//! log reads back by offset through the driver.

mod common;

use std::time::Duration;

use common::{seed_section, test_image, wait_for_serial, Node, BOOT_TIMEOUT};
use otherix_agent::driver::VmDriver;
use otherix_api::{Arch, ErrorCode, PortForward, PortProtocol};

const USER_DATA: &str = "#cloud-config\nhostname: seeded\nwrite_files:\n  - path: /etc/x\n    content: |\n      hello: world\n";
const NETWORK_CONFIG: &str = "version: 2\nethernets:\n  eth0:\n    addresses: [10.0.2.50/24]\n";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_files_reach_guest_and_ports_forward() {
    let node = Node::new();
    let image = test_image("busybox-amd64.qcow2");
    let mut vm = node.target("seeded", &image, Arch::Amd64);
    let port = free_port();
    {
        let spec = vm.spec.as_mut().unwrap();
        spec.user_data = Some(USER_DATA.into());
        spec.network_config = Some(NETWORK_CONFIG.into());
        spec.ports = vec![PortForward {
            host: port,
            guest: 22,
            protocol: PortProtocol::Tcp,
        }];
    }
    node.driver.remember(&vm).unwrap();
    node.driver.prepare(&vm, &node.progress).await.unwrap();
    node.driver.start(&vm, &node.progress).await.unwrap();
    let run = node.run_dir(&vm);
    let serial = wait_for_serial(&run, "OTHERIX-TEST-GUEST-READY", BOOT_TIMEOUT).await;

    let meta = format!("instance-id: {}\nlocal-hostname: seeded\n", vm.vm_id);
    assert_eq!(
        seed_section(&serial, "meta-data").as_deref(),
        Some(meta.as_str())
    );
    assert_eq!(
        seed_section(&serial, "user-data").as_deref(),
        Some(USER_DATA)
    );
    assert_eq!(
        seed_section(&serial, "network-config").as_deref(),
        Some(NETWORK_CONFIG)
    );
    assert!(!serial.contains("OTHERIX-SEED-NONE"));
    let seed = node.pool.join(format!("vms/{}/seed.img", vm.vm_id));
    assert!(seed.is_file());

    // QEMU listens on the forwarded host port (127.0.0.1 only).
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))
        .expect("QEMU accepts on the forwarded port");

    // The serial log reads back through the driver, by offset, in small chunks.
    let on_disk = std::fs::read(run.serial_log()).unwrap();
    let mut read = Vec::new();
    let mut offset = 0;
    while read.len() < on_disk.len() {
        let chunk = node
            .driver
            .read_serial_log(vm.vm_id, offset, 1000)
            .await
            .unwrap();
        assert!(chunk.data.len() <= 1000);
        assert_eq!(chunk.next_offset, offset + chunk.data.len() as u64);
        read.extend(chunk.data);
        offset = chunk.next_offset;
    }
    assert_eq!(read[..on_disk.len()], on_disk[..]);

    node.driver.poweroff(&vm, &node.progress).await.unwrap();
    // The seed is rebuilt on every boot: changed user-data reaches the guest.
    let marker_count = |log: &str| log.matches("OTHERIX-TEST-GUEST-READY").count();
    vm.spec.as_mut().unwrap().user_data = Some("#cloud-config\nsecond: boot\n".into());
    vm.spec.as_mut().unwrap().ports.clear();
    vm.spec.as_mut().unwrap().network_config = None;
    node.driver.start(&vm, &node.progress).await.unwrap();
    let deadline = std::time::Instant::now() + BOOT_TIMEOUT;
    let serial = loop {
        let log = String::from_utf8_lossy(&std::fs::read(run.serial_log()).unwrap()).into_owned();
        if marker_count(&log) >= 2 {
            break log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "second boot never got READY:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let second_boot = &serial[serial.find("OTHERIX-TEST-GUEST-READY").unwrap() + 10..];
    assert_eq!(
        seed_section(second_boot, "user-data").as_deref(),
        Some("#cloud-config\nsecond: boot\n")
    );
    assert_eq!(seed_section(second_boot, "network-config"), None);
    node.driver.delete(&vm, &node.progress).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cloud_init_attaches_no_seed_and_busy_port_fails_boot() {
    let node = Node::new();
    let image = test_image("busybox-amd64.qcow2");

    // A host port in use: the boot fails before QEMU starts, naming the port.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let mut blocked = node.target("blocked", &image, Arch::Amd64);
    blocked.spec.as_mut().unwrap().ports = vec![PortForward {
        host: port,
        guest: 80,
        protocol: PortProtocol::Tcp,
    }];
    node.driver.remember(&blocked).unwrap();
    node.driver.prepare(&blocked, &node.progress).await.unwrap();
    let err = node
        .driver
        .start(&blocked, &node.progress)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::QemuFailed, "{err}");
    assert!(
        err.message.contains(&format!("host port {port}/tcp")) && err.message.contains("in use"),
        "{}",
        err.message
    );
    drop(busy);
    node.driver.delete(&blocked, &node.progress).await.unwrap();

    let mut vm = node.target("unseeded", &image, Arch::Amd64);
    vm.spec.as_mut().unwrap().no_cloud_init = true;
    node.driver.remember(&vm).unwrap();
    node.driver.prepare(&vm, &node.progress).await.unwrap();
    node.driver.start(&vm, &node.progress).await.unwrap();
    let serial =
        wait_for_serial(&node.run_dir(&vm), "OTHERIX-TEST-GUEST-READY", BOOT_TIMEOUT).await;
    assert!(serial.contains("OTHERIX-SEED-NONE"), "{serial}");
    assert!(!serial.contains("OTHERIX-SEED-BEGIN"));
    assert!(!node
        .pool
        .join(format!("vms/{}/seed.img", vm.vm_id))
        .exists());
    node.driver.delete(&vm, &node.progress).await.unwrap();
}
