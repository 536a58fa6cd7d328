//! End to end, as a user would: real otherixd + otherix-agent (TCG) + the otherix CLI boot
//! the qemu-guest-agent test guest (busybox-qga-amd64) and see what its guest agent says
//! (`vm get`, `vm list -o wide`), and stop it through the guest agent: once it answers,
//! and right after create, while the guest still boots.

use std::time::Duration;

use otherix_e2e::wait::{file_contains, pid_alive, until};
use otherix_e2e::{uuid_after, Cluster, ImageServer};

const IMAGE: &str = "busybox-qga-amd64.qcow2";
/// The guest's static SLIRP address (tests/images/qga-init.sh).
const GUEST_ADDRESS: &str = "10.0.2.15/24";
/// qemu-ga answers ~10 s after QEMU starts under TCG; the watcher polls every 3 s.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(90);

fn create(cluster: &Cluster, url: &str, name: &str) {
    let out = cluster.create_running(name, url, &[]);
    assert!(
        out.stdout
            .lines()
            .last()
            .unwrap_or("")
            .starts_with("vm running task="),
        "{out:?}"
    );
}

fn agent_log(cluster: &Cluster) -> String {
    std::fs::read_to_string(cluster.dir.path().join("agent-node-1.log")).unwrap_or_default()
}

#[test]
fn guest_agent_reports_address_and_stops_the_guest() {
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    let cluster = Cluster::start();
    let url = server.url(IMAGE);

    create(&cluster, &url, "qga-1");
    let pid = cluster.vm("qga-1")["status"]["pid"].as_u64().unwrap() as u32;
    // Until the guest agent answers, a running VM says so (and nothing more).
    let early = cluster
        .cli(&["vm", "get", "qga-1", "-o", "json"])
        .ok()
        .json();
    assert!(
        matches!(
            early["status"]["guest_agent"].as_str(),
            Some("not_connected" | "connected") | None
        ),
        "{early}"
    );

    // The node agent's watcher finds qemu-ga and reports the guest's address and OS.
    let vm = until("guest_agent connected", CONNECT_TIMEOUT, || {
        let vm = cluster
            .cli(&["vm", "get", "qga-1", "-o", "json"])
            .ok()
            .json();
        (vm["status"]["guest_agent"] == "connected").then_some(vm)
    });
    let status = &vm["status"];
    // eth0's static IPv4 address, plus whatever IPv6 address SLIRP's router advertisement
    // gave it by then (fec0::/64); never loopback or link-local.
    let addresses: Vec<&str> = status["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(addresses.contains(&GUEST_ADDRESS), "{vm}");
    for a in &addresses {
        let ip: std::net::IpAddr = a.split('/').next().unwrap().parse().unwrap();
        assert!(!ip.is_loopback(), "{vm}");
        assert!(*a == GUEST_ADDRESS || a.starts_with("fec0:"), "{vm}");
    }
    assert_eq!(status["ready"], true, "{vm}");
    assert_eq!(
        status["os"], "otherix busybox test guest with qemu-guest-agent",
        "{vm}"
    );
    let serial = cluster.serial_log("qga-1");
    file_contains(&serial, "OTHERIX-QGA-START", Duration::from_secs(5));

    // vm get (text) shows them; vm list -o yaml carries them (vm get -o yaml is the
    // re-appliable manifest, without status).
    let out = cluster.cli(&["vm", "get", "qga-1"]).ok();
    eprintln!("vm get qga-1:\n{}", out.stdout);
    let address_row = out
        .stdout
        .lines()
        .find(|l| l.starts_with("addresses:"))
        .unwrap_or_default();
    assert!(address_row.contains(GUEST_ADDRESS), "{}", out.stdout);
    for line in [
        "guest_agent:         connected".to_string(),
        "os:                  otherix busybox test guest with qemu-guest-agent".to_string(),
        "ready:               true".to_string(),
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "{line:?} not in:\n{}",
            out.stdout
        );
    }
    let yaml = cluster.cli(&["vm", "list", "-o", "yaml"]).ok().stdout;
    assert!(yaml.contains("guest_agent: connected"), "{yaml}");
    assert!(yaml.contains(&format!("- {GUEST_ADDRESS}")), "{yaml}");

    // vm list -o wide: the IP column; the plain table keeps its columns.
    let out = cluster.cli(&["vm", "list", "-o", "wide"]).ok();
    eprintln!("vm list -o wide:\n{}", out.stdout);
    let mut rows = out.stdout.lines();
    let header: Vec<&str> = rows.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "STATUS", "ARCH", "NODE", "POOL", "NETWORK", "IP"]
    );
    let row: Vec<&str> = rows.next().unwrap().split_whitespace().collect();
    assert_eq!(
        row,
        [
            "qga-1",
            "running",
            "amd64",
            "node-1",
            "default",
            "-",
            GUEST_ADDRESS
        ]
    );
    let plain = cluster.cli(&["vm", "list"]).ok().stdout;
    assert!(!plain.contains(GUEST_ADDRESS), "{plain}");

    // stop --wait goes through the guest agent: qemu-ga runs /sbin/shutdown in the guest.
    let out = cluster.cli(&["vm", "stop", "qga-1", "--wait"]).ok();
    let task = uuid_after(&out.stdout, "task=");
    assert_eq!(out.stdout.trim(), format!("vm stopped task={task}"));
    file_contains(
        &serial,
        "OTHERIX-QGA-SHUTDOWN poweroff",
        Duration::from_secs(5),
    );
    assert!(
        agent_log(&cluster).contains("guest-shutdown sent through the guest agent"),
        "agent log does not show guest-shutdown"
    );
    until("QEMU exit after stop", Duration::from_secs(10), || {
        (!pid_alive(pid)).then_some(())
    });
    // A stopped VM has no guest agent state.
    let vm = cluster.vm("qga-1");
    assert_eq!(vm["status"]["phase"], "stopped");
    for field in ["guest_agent", "addresses", "os", "ready"] {
        assert!(
            vm["status"][field].is_null(),
            "{field} left on a stopped VM: {vm}"
        );
    }

    // The boot storm: stop right after create, while the guest still boots (no ACPI
    // handler and no qemu-ga yet). The stop retries guest agent / ACPI until one lands.
    create(&cluster, &url, "qga-2");
    let pid2 = cluster.vm("qga-2")["status"]["pid"].as_u64().unwrap() as u32;
    let started = std::time::Instant::now();
    let out = cluster.cli(&["vm", "stop", "qga-2", "--wait"]);
    assert_eq!(out.code, 0, "stop right after create: {out:?}");
    let task = uuid_after(&out.stdout, "task=");
    assert_eq!(out.stdout.trim(), format!("vm stopped task={task}"));
    until(
        "QEMU exit after early stop",
        Duration::from_secs(10),
        || (!pid_alive(pid2)).then_some(()),
    );
    assert_eq!(cluster.vm("qga-2")["status"]["phase"], "stopped");
    let serial2 = std::fs::read_to_string(cluster.serial_log("qga-2")).unwrap_or_default();
    eprintln!(
        "early stop took {:?}: guest-shutdown used: {}, ACPI used: {}",
        started.elapsed(),
        serial2.contains("OTHERIX-QGA-SHUTDOWN"),
        serial2.contains("OTHERIX-TEST-GUEST-POWERDOWN")
    );
}
