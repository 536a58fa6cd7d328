//! The guest agent watcher: asks each running VM's qemu-ga (over its QGA socket, see
//! [`crate::qemu::qga`]) whether it answers, which addresses the guest has and which OS it
//! runs; keeps the last answer per VM in the [`VmRegistry`] (attached to every running
//! VM's report) and sends an unsolicited `VmReport` (power unspecified, `guest` set) only
//! when the answer changes. Polls every [`POLL_UNTIL_CONNECTED`] until the guest agent
//! answers, then every [`POLL_CONNECTED`]. Like [`crate::monitor`], it leaves VMs a task
//! holds alone and never holds a VM's lock itself; a paused VM keeps what its guest agent
//! said before the pause. Also the guest-shutdown step of
//! `vm.stop` ([`request_shutdown`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use otherix_api::proto::{GuestInfo, VmPower};
use tokio::time::Instant;
use uuid::Uuid;

use crate::guest_power;
use crate::outbox::{power_report, Outbox};
use crate::qemu::qga::{Interface, OsInfo, Qga, QgaError};
use crate::qemu::RunStatus;
use crate::vm_registry::{RunDir, VmRegistry};

/// How often the watcher looks for VMs due a poll.
const TICK: Duration = Duration::from_secs(1);
/// Poll interval while a VM's guest agent has not answered yet (a booting guest).
pub const POLL_UNTIL_CONNECTED: Duration = Duration::from_secs(3);
/// Poll interval once it answers (addresses change rarely).
pub const POLL_CONNECTED: Duration = Duration::from_secs(15);
/// Bound on each step of one poll (connect, sync, each command). A guest without qemu-ga
/// never answers the sync, so this is also how long such a VM's socket is held per poll.
const POLL_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long `vm.stop` gives the guest agent to answer before pressing ACPI instead.
pub const SHUTDOWN_SYNC_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `guest-shutdown` may take to report a failure (it answers only on failure).
const SHUTDOWN_ERROR_GRACE: Duration = Duration::from_millis(500);

/// Runs forever: polls running VMs' guest agents and reports changes.
pub async fn run(registry: Arc<VmRegistry>, outbox: Outbox) {
    let mut due: HashMap<Uuid, (u32, Instant)> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        poll_due(&registry, &outbox, &mut due).await;
    }
}

/// One pass over the running VMs: polls those due (per VM and QEMU pid).
async fn poll_due(registry: &VmRegistry, outbox: &Outbox, due: &mut HashMap<Uuid, (u32, Instant)>) {
    let running = registry.observed_pids();
    due.retain(|vm_id, (pid, _)| running.contains(&(*vm_id, *pid)));
    for (vm_id, pid) in running {
        let now = Instant::now();
        if due.get(&vm_id).is_some_and(|(_, at)| *at > now) {
            continue;
        }
        // A task on the VM owns its QEMU meanwhile (a stop may be talking to qemu-ga).
        if registry.vm_lock(vm_id).try_lock().is_err() {
            continue;
        }
        let run = registry.run_dir(vm_id);
        let info = probe(&run, POLL_TIMEOUT).await;
        let next = if info.connected {
            POLL_CONNECTED
        } else {
            POLL_UNTIL_CONNECTED
        };
        due.insert(vm_id, (pid, Instant::now() + next));
        // The VM may have stopped (or restarted) while we asked.
        if !registry.observed_pids().contains(&(vm_id, pid)) {
            continue;
        }
        // A paused guest cannot answer; what it said before still holds.
        let was_connected = registry.guest_info(vm_id, pid).is_some_and(|g| g.connected);
        if !info.connected
            && was_connected
            && guest_power::query_status(&run, POLL_TIMEOUT).await == Ok(RunStatus::Paused)
        {
            continue;
        }
        if !registry.set_guest_info(vm_id, pid, info.clone()) {
            continue;
        }
        tracing::info!(
            %vm_id,
            connected = info.connected,
            addresses = ?info.addresses,
            os = info.os_name,
            "guest agent info changed"
        );
        let mut report = power_report(&vm_id.to_string(), VmPower::Unspecified);
        report.pool = registry.pool_of(vm_id);
        report.guest = Some(info);
        outbox.vm_report(report).await;
    }
}

/// Asks the VM's guest agent what it knows; `connected: false` when it does not answer.
pub async fn probe(run: &RunDir, timeout: Duration) -> GuestInfo {
    let mut qga = match Qga::connect(&run.qga_socket(), timeout).await {
        Ok(qga) => qga,
        Err(e) => {
            tracing::debug!(run = %run.path.display(), error = %e, "guest agent not answering");
            return GuestInfo::default();
        }
    };
    let interfaces = match qga.network_get_interfaces().await {
        Ok(interfaces) => interfaces,
        Err(e) => {
            tracing::debug!(error = %e, "guest-network-get-interfaces failed");
            if matches!(e, QgaError::Timeout { .. } | QgaError::Io { .. }) {
                return GuestInfo::default();
            }
            Vec::new()
        }
    };
    // qemu-ga fails guest-get-osinfo without /etc/os-release: then the OS is unknown.
    let os = qga.get_osinfo().await.ok();
    guest_info(&interfaces, os.as_ref())
}

/// At most this many addresses are reported (the guest writes the list: it is untrusted).
pub const MAX_ADDRESSES: usize = 16;
/// OS name and version are cut to this many characters.
pub const MAX_OS_TEXT: usize = 128;

/// The report of a guest agent that answered: its addresses and OS, capped
/// ([`MAX_ADDRESSES`], [`MAX_OS_TEXT`]) since the guest controls them.
pub fn guest_info(interfaces: &[Interface], os: Option<&OsInfo>) -> GuestInfo {
    let (os_name, os_version) = os.map(os_fields).unwrap_or_default();
    let cut = |s: String| {
        s.chars()
            .filter(|c| !c.is_control())
            .take(MAX_OS_TEXT)
            .collect()
    };
    let mut addresses = addresses(interfaces);
    addresses.truncate(MAX_ADDRESSES);
    GuestInfo {
        connected: true,
        addresses,
        os_name: cut(os_name),
        os_version: cut(os_version),
    }
}

/// Every address of every interface as CIDR, in the guest's order, without loopback and
/// IPv6 link-local (fe80::/10) addresses and without unparsable ones.
pub fn addresses(interfaces: &[Interface]) -> Vec<String> {
    let mut out = Vec::new();
    for address in interfaces.iter().flat_map(|i| &i.ip_addresses) {
        let Ok(ip) = address.address.parse::<IpAddr>() else {
            continue;
        };
        let skip = match ip {
            IpAddr::V4(v4) => v4.is_loopback(),
            IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xffc0) == 0xfe80,
        };
        let max_prefix = if ip.is_ipv4() { 32 } else { 128 };
        if !skip && address.prefix <= max_prefix {
            out.push(format!("{ip}/{}", address.prefix));
        }
    }
    out
}

/// (name, version) from `guest-get-osinfo`: the pretty name (else name, else id) and the
/// version (else version id).
pub fn os_fields(os: &OsInfo) -> (String, String) {
    let name = [&os.pretty_name, &os.name, &os.id]
        .into_iter()
        .flatten()
        .find(|s| !s.is_empty())
        .cloned()
        .unwrap_or_default();
    let version = [&os.version, &os.version_id]
        .into_iter()
        .flatten()
        .find(|s| !s.is_empty())
        .cloned()
        .unwrap_or_default();
    (name, version)
}

/// The guest-shutdown step of `vm.stop`: if the VM's guest agent answers a sync within
/// [`SHUTDOWN_SYNC_TIMEOUT`], sends `guest-shutdown` (mode powerdown). True when sent.
pub async fn request_shutdown(run: &RunDir, vm_name: &str) -> bool {
    let mut qga = match Qga::connect(&run.qga_socket(), SHUTDOWN_SYNC_TIMEOUT).await {
        Ok(qga) => qga,
        Err(e) => {
            tracing::info!(vm = vm_name, error = %e, "guest agent not answering; using ACPI");
            return false;
        }
    };
    match qga.shutdown_powerdown(SHUTDOWN_ERROR_GRACE).await {
        Ok(()) => {
            tracing::info!(vm = vm_name, "guest-shutdown sent through the guest agent");
            true
        }
        Err(e) => {
            tracing::warn!(vm = vm_name, error = %e, "guest-shutdown failed; using ACPI");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::qga::IpAddress;

    fn iface(name: &str, addrs: &[(&str, &str, u8)]) -> Interface {
        Interface {
            name: name.into(),
            ip_addresses: addrs
                .iter()
                .map(|(kind, address, prefix)| IpAddress {
                    kind: kind.to_string(),
                    address: address.to_string(),
                    prefix: *prefix,
                })
                .collect(),
        }
    }

    #[test]
    fn addresses_table() {
        let table: Vec<(&str, Vec<Interface>, Vec<&str>)> = vec![
            ("no interfaces", vec![], vec![]),
            (
                "loopback only",
                vec![iface(
                    "lo",
                    &[("ipv4", "127.0.0.1", 8), ("ipv6", "::1", 128)],
                )],
                vec![],
            ),
            (
                "busybox guest on SLIRP",
                vec![
                    iface("lo", &[("ipv4", "127.0.0.1", 8)]),
                    iface(
                        "eth0",
                        &[
                            ("ipv4", "10.0.2.15", 24),
                            ("ipv6", "fe80::5054:ff:fe12:3456", 64),
                        ],
                    ),
                ],
                vec!["10.0.2.15/24"],
            ),
            (
                "global v6 kept, febf:: is link-local too, fec0:: is not",
                vec![iface(
                    "eth0",
                    &[
                        ("ipv6", "2001:db8::5", 64),
                        ("ipv6", "febf::1", 64),
                        ("ipv6", "fec0::1", 64),
                    ],
                )],
                vec!["2001:db8::5/64", "fec0::1/64"],
            ),
            (
                "interface order kept, no addresses skipped",
                vec![
                    iface("eth1", &[("ipv4", "192.168.1.7", 24)]),
                    iface("eth0", &[]),
                    iface("eth2", &[("ipv4", "10.1.0.2", 16)]),
                ],
                vec!["192.168.1.7/24", "10.1.0.2/16"],
            ),
            (
                "garbage and impossible prefixes dropped",
                vec![iface(
                    "eth0",
                    &[("ipv4", "not-an-ip", 24), ("ipv4", "10.0.0.1", 33)],
                )],
                vec![],
            ),
        ];
        for (name, interfaces, want) in table {
            assert_eq!(addresses(&interfaces), want, "{name}");
        }
    }

    #[test]
    fn os_fields_table() {
        let os = |pretty: Option<&str>, name: Option<&str>, version_id: Option<&str>| OsInfo {
            pretty_name: pretty.map(str::to_string),
            name: name.map(str::to_string),
            version_id: version_id.map(str::to_string),
            ..Default::default()
        };
        let table = [
            (os(None, None, None), ("", "")),
            (
                os(
                    Some("Debian GNU/Linux 12 (bookworm)"),
                    Some("Debian"),
                    Some("12"),
                ),
                ("Debian GNU/Linux 12 (bookworm)", "12"),
            ),
            (os(Some(""), Some("Alpine"), None), ("Alpine", "")),
        ];
        for (info, (name, version)) in table {
            assert_eq!(os_fields(&info), (name.to_string(), version.to_string()));
        }
    }

    #[test]
    fn guest_info_caps_what_the_guest_controls() {
        let many: Vec<(&str, String, u8)> = (0..40)
            .map(|i| ("ipv4", format!("10.0.0.{i}"), 24))
            .collect();
        let many: Vec<(&str, &str, u8)> =
            many.iter().map(|(k, a, p)| (*k, a.as_str(), *p)).collect();
        let os = OsInfo {
            pretty_name: Some(format!("evil\n\x1b[31m{}", "x".repeat(1000))),
            ..Default::default()
        };
        let info = guest_info(&[iface("eth0", &many)], Some(&os));
        assert_eq!(info.addresses.len(), MAX_ADDRESSES);
        assert_eq!(info.addresses[0], "10.0.0.0/24");
        assert_eq!(info.os_name.chars().count(), MAX_OS_TEXT);
        assert!(info.os_name.starts_with("evil[31mxxx"), "{}", info.os_name);
    }

    #[test]
    fn guest_info_connected_without_osinfo() {
        let info = guest_info(&[iface("eth0", &[("ipv4", "10.0.2.15", 24)])], None);
        assert!(info.connected);
        assert_eq!(info.addresses, vec!["10.0.2.15/24"]);
        assert_eq!(info.os_name, "");
    }
}
