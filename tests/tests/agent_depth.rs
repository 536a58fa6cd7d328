//! Agent depth through the whole stack: cloud-init seeds seen from inside the guest, qcow2
//! overlays vs raw copies, disk growth, SLIRP port forwards, UEFI on amd64, an arm64 boot,
//! and an agent killed with SIGKILL re-adopting the VMs it left running.

use std::process::Command;
use std::time::Duration;

use otherix_e2e::wait::{file_contains, pid_alive, until};
use otherix_e2e::{Cluster, ImageServer};
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(180);

fn qemu_img_info(path: &std::path::Path) -> Value {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(path)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "qemu-img info {}: {out:?}",
        path.display()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn seeds_disks_ports_uefi_and_arm64_with_real_guests() {
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let user_data = dir.path().join("user-data.yaml");
    std::fs::write(
        &user_data,
        "#cloud-config\nhostname: seeded\nruncmd: [echo hi]\n",
    )
    .unwrap();
    let net_cfg = dir.path().join("net.yaml");
    std::fs::write(
        &net_cfg,
        "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n",
    )
    .unwrap();
    let amd64 = server.url("busybox-amd64.qcow2");
    // A raw source image: its format is detected (qemu-img info) and the overlay backs onto it.
    let amd64_raw = server.url("busybox-amd64.img");
    let arm64 = server.url("busybox-arm64.qcow2");
    let port = free_port().to_string();
    let port_flag = format!("{port}:22");

    let creates: Vec<Vec<&str>> = vec![
        vec![
            "seeded",
            "--image-url",
            &amd64,
            "--arch",
            "amd64",
            "--disk-gib",
            "2",
            "--user-data",
            user_data.to_str().unwrap(),
            "--network-config",
            net_cfg.to_str().unwrap(),
        ],
        vec![
            "raw",
            "--image-url",
            &amd64,
            "--arch",
            "amd64",
            "--format",
            "raw",
            "--no-cloud-init",
            "--port",
            &port_flag,
        ],
        vec![
            "uefi",
            "--image-url",
            &amd64_raw,
            "--arch",
            "amd64",
            "--firmware",
            "ovmf",
        ],
        vec![
            "arm",
            "--image-url",
            &arm64,
            "--arch",
            "arm64",
            "--memory-mb",
            "512",
        ],
    ];
    let mut tasks = Vec::new();
    for args in &creates {
        let mut argv = vec!["vm", "create"];
        argv.extend(args.iter().copied());
        argv.extend(["--vcpus", "1"]);
        if !args.contains(&"--memory-mb") {
            argv.extend(["--memory-mb", "256"]);
        }
        let out = cluster.cli(&argv).ok();
        let id = out.stdout.trim().split("task=").nth(1).unwrap()[..36].to_owned();
        tasks.push(id);
    }
    for (task, args) in tasks.iter().zip(&creates) {
        let t = cluster.wait_task(task, BOOT);
        assert_eq!(t["status"], "success", "create {}: {t}", args[0]);
    }
    for name in ["seeded", "raw", "uefi", "arm"] {
        file_contains(&cluster.serial_log(name), "OTHERIX-TEST-GUEST-READY", BOOT);
    }

    // The seed, read by the guest's own init from the cidata disk.
    let seeded = cluster.vm("seeded");
    let id = seeded["id"].as_str().unwrap();
    let log = std::fs::read_to_string(cluster.serial_log("seeded")).unwrap();
    let log = log.replace('\r', "");
    let section = |file: &str| -> String {
        let begin = format!("OTHERIX-SEED-BEGIN {file}\n");
        let end = format!("OTHERIX-SEED-END {file}");
        let start = log
            .find(&begin)
            .unwrap_or_else(|| panic!("no {file} in seed: {log}"))
            + begin.len();
        let stop = log[start..].find(&end).unwrap() + start;
        log[start..stop].to_owned()
    };
    let meta = section("meta-data");
    assert!(meta.contains(&format!("instance-id: {id}")), "{meta}");
    assert!(meta.contains("local-hostname: seeded"), "{meta}");
    assert_eq!(
        section("user-data").trim_end(),
        "#cloud-config\nhostname: seeded\nruncmd: [echo hi]"
    );
    assert!(section("network-config").contains("dhcp4: true"));

    // qcow2 overlay on the cached base, grown to --disk-gib.
    let pool = cluster.pool_path("node-1", "default");
    let info = qemu_img_info(&pool.join("vms").join(id).join("disk.qcow2"));
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"].as_u64().unwrap(), 2 << 30);
    let backing = info["full-backing-filename"]
        .as_str()
        .or(info["backing-filename"].as_str())
        .expect("overlay has a backing file");
    assert!(backing.contains("/images/sha256-"), "{backing}");

    // --format raw: a full copy with no backing file; no seed attached.
    let raw = cluster.vm("raw");
    let raw_id = raw["id"].as_str().unwrap();
    let info = qemu_img_info(&pool.join("vms").join(raw_id).join("disk.raw"));
    assert_eq!(info["format"], "raw");
    assert!(info["backing-filename"].is_null(), "{info}");
    let raw_log = std::fs::read_to_string(cluster.serial_log("raw")).unwrap();
    assert!(raw_log.contains("OTHERIX-SEED-NONE"), "{raw_log}");
    // The port forward is on QEMU's SLIRP netdev, bound to the node's loopback.
    let raw_pid = raw["status"]["pid"].as_u64().unwrap() as u32;
    let cmd = cmdline(raw_pid);
    assert!(
        cmd.contains(&format!("hostfwd=tcp:127.0.0.1:{port}-:22")),
        "{cmd}"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).is_ok());

    // UEFI on amd64 (OVMF pflash with a per-VM vars copy) and arm64 under AAVMF.
    let uefi = cluster.vm("uefi");
    let info = qemu_img_info(
        &pool
            .join("vms")
            .join(uefi["id"].as_str().unwrap())
            .join("disk.qcow2"),
    );
    assert_eq!(info["backing-filename-format"], "raw", "{info}");
    let uefi_pid = uefi["status"]["pid"].as_u64().unwrap() as u32;
    let cmd = cmdline(uefi_pid);
    assert!(cmd.contains("OVMF_CODE"), "{cmd}");
    assert!(cmd.contains("if=pflash"), "{cmd}");
    let arm_pid = cluster.vm("arm")["status"]["pid"].as_u64().unwrap() as u32;
    let cmd = cmdline(arm_pid);
    assert!(
        cmd.starts_with("qemu-system-aarch64") || cmd.contains("qemu-system-aarch64"),
        "{cmd}"
    );
    assert!(cmd.contains("AAVMF_CODE"), "{cmd}");
    let out = cluster.cli(&["vm", "stop", "arm", "--wait"]).ok();
    assert!(out.stdout.starts_with("vm stopped"), "{}", out.stdout);
    assert_eq!(cluster.vm("arm")["spec"]["arch"], "arm64");
    let out = cluster.cli(&["vm", "list"]).ok();
    assert!(
        out.stdout
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["arm", "stopped", "arm64", "node-1", "default", "-"]),
        "{}",
        out.stdout
    );
    // One download per URL, however many VMs use it.
    assert_eq!(server.requests("busybox-amd64.qcow2"), 1);
}

#[test]
fn agent_kill9_leaves_vms_running_and_readopts_them() {
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    let mut cluster = Cluster::start();
    let pid = cluster.create_booted("keep", &server.url("busybox-amd64.qcow2"), &[]);

    cluster.kill_agent("node-1");
    std::thread::sleep(Duration::from_secs(1));
    assert!(pid_alive(pid), "QEMU died with the agent");
    // The node goes not-ready and the VM shows unknown, never re-created.
    until(
        "VM unknown while its agent is gone",
        Duration::from_secs(20),
        || (cluster.vm("keep")["status"]["phase"] == "unknown").then_some(()),
    );

    cluster.restart_agent("node-1");
    cluster.wait_node_ready("node-1");
    until("VM re-adopted as running", Duration::from_secs(30), || {
        let vm = cluster.vm("keep");
        (vm["status"]["phase"] == "running").then_some(vm)
    });
    let vm = cluster.vm("keep");
    assert_eq!(
        vm["status"]["pid"].as_u64().unwrap() as u32,
        pid,
        "same QEMU, same pid"
    );
    assert!(pid_alive(pid));
    // The re-adopted VM is fully controllable.
    let out = cluster.cli(&["vm", "stop", "keep", "--wait"]).ok();
    assert!(out.stdout.starts_with("vm stopped task="), "{}", out.stdout);
    until("QEMU exit", Duration::from_secs(15), || {
        (!pid_alive(pid)).then_some(())
    });
}
