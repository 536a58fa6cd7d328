//! Bridge networks end to end, inside a network namespace the test creates: the whole
//! cluster runs there, a VM on a `bridge` network gets a tap on the namespace's bridge,
//! takes its static address from network-config and pings the bridge's address.

use std::process::Command;
use std::time::Duration;

use otherix_e2e::netns::NetNs;
use otherix_e2e::wait::{file_contains, until};
use otherix_e2e::{Cluster, ImageServer};

const BOOT: Duration = Duration::from_secs(180);

fn taps_on(bridge: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap().to_owned())
        })
        .collect()
}

#[test]
fn bridge_network_vm_gets_a_tap_and_reaches_the_bridge() {
    // Declared first so it is dropped last, after the cluster killed its processes.
    let ns = NetNs::with_bridge("br-otx", "10.77.0.1/24");
    ns.enter_current_thread();
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    let cluster = Cluster::start();
    let url = server.url("busybox-amd64.qcow2");

    cluster
        .cli(&[
            "network", "create", "lan", "--type", "bridge", "--bridge", "br-otx",
        ])
        .ok();
    cluster
        .cli(&["network", "create", "natnet", "--type", "nat"])
        .ok();
    // Only bridge networks can be attached.
    let out = cluster.cli(&[
        "vm",
        "create",
        "x",
        "--image-url",
        &url,
        "--arch",
        "amd64",
        "--network",
        "natnet",
    ]);
    out.expect_error("validation_failed");
    let out = cluster.cli(&[
        "vm",
        "create",
        "x",
        "--image-url",
        &url,
        "--arch",
        "amd64",
        "--network",
        "nope",
    ]);
    assert!(
        out.stderr.starts_with("error: validation_failed: "),
        "{}",
        out.stderr
    );

    let dir = tempfile::tempdir().unwrap();
    let user_data = dir.path().join("user-data");
    std::fs::write(&user_data, "#cloud-config\n# otherix.ping=10.77.0.1\n").unwrap();
    let net_cfg = dir.path().join("network-config");
    std::fs::write(
        &net_cfg,
        "version: 2\nethernets:\n  eth0:\n    addresses: [10.77.0.2/24]\n",
    )
    .unwrap();
    cluster
        .cli(&[
            "vm",
            "create",
            "nic",
            "--image-url",
            &url,
            "--arch",
            "amd64",
            "--vcpus",
            "1",
            "--memory-mb",
            "256",
            "--network",
            "lan",
            "--user-data",
            user_data.to_str().unwrap(),
            "--network-config",
            net_cfg.to_str().unwrap(),
            "--wait",
        ])
        .ok();
    let serial = cluster.serial_log("nic");
    file_contains(&serial, "OTHERIX-TEST-GUEST-READY", BOOT);
    let log = std::fs::read_to_string(&serial).unwrap();
    assert!(log.contains("OTHERIX-NIC eth0 52:54:00:"), "{log}");
    assert!(log.contains("OTHERIX-NIC-ADDR eth0 10.77.0.2/24"), "{log}");
    assert!(
        log.contains("OTHERIX-PING-OK"),
        "guest could not reach the bridge: {log}"
    );

    let taps = taps_on("br-otx");
    assert_eq!(taps.len(), 1, "{taps:?}");
    assert!(taps[0].starts_with("otx"), "{taps:?}");
    let out = cluster.cli(&["vm", "list"]).ok();
    let row: Vec<&str> = out
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row, ["nic", "running", "amd64", "node-1", "default", "lan"]);

    // The tap goes away with the VM.
    cluster
        .cli(&["vm", "delete", "nic", "--wait", "--force"])
        .ok();
    until("tap removed", Duration::from_secs(10), || {
        taps_on("br-otx").is_empty().then_some(())
    });
}
