//! Per-VM resource counters for otherixd's `/metrics`: CPU seconds and resident memory of
//! each running VM's QEMU process (`/proc/PID/stat`, `/proc/PID/statm`), its guest block
//! bytes (QMP `query-blockstats`) and its tap's bytes (sysfs; none with SLIRP). Sent as
//! one `NodeStats` message every [`STATS_INTERVAL`]. The parsers are pure.

use std::path::Path;
use std::time::Duration;

use otherix_api::proto::{agent_message, NodeStats, VmStats};
use uuid::Uuid;

use crate::network::tap_name;
use crate::outbox::Outbox;
use crate::qemu::Qmp;
use crate::vm_registry::VmRegistry;

/// How often the counters are sent.
pub const STATS_INTERVAL: Duration = Duration::from_secs(10);
/// How long one VM's QMP `query-blockstats` may take before its disk counters are skipped.
const QMP_STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// User + system clock ticks of a `/proc/PID/stat` line (fields 14 and 15; the command
/// name in parentheses may hold spaces, so fields are counted after its last `)`).
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident pages of a `/proc/PID/statm` line (its second field).
pub fn resident_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

fn sysconf(name: nix::unistd::SysconfVar, fallback: u64) -> u64 {
    match nix::unistd::sysconf(name) {
        Ok(Some(n)) if n > 0 => n as u64,
        _ => fallback,
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The counters of one VM whose QEMU runs as `pid`; `None` when its /proc entry is gone.
pub async fn collect_one(registry: &VmRegistry, vm_id: Uuid, pid: u32) -> Option<VmStats> {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let ticks = cpu_ticks(&std::fs::read_to_string(proc_dir.join("stat")).ok()?)?;
    let pages = resident_pages(&std::fs::read_to_string(proc_dir.join("statm")).ok()?)?;
    let mut stats = VmStats {
        vm_id: vm_id.to_string(),
        cpu_seconds: ticks as f64 / sysconf(nix::unistd::SysconfVar::CLK_TCK, 100) as f64,
        memory_bytes: pages * sysconf(nix::unistd::SysconfVar::PAGE_SIZE, 4096),
        ..Default::default()
    };
    let socket = registry.run_dir(vm_id).qmp_socket();
    let disk = tokio::time::timeout(QMP_STATS_TIMEOUT, async {
        Qmp::connect(&socket).await?.block_bytes().await
    })
    .await;
    if let Ok(Ok((read, written))) = disk {
        stats.disk_read_bytes = Some(read);
        stats.disk_write_bytes = Some(written);
    }
    // The host's receive is the guest's transmit.
    let tap = Path::new("/sys/class/net")
        .join(tap_name(vm_id))
        .join("statistics");
    stats.net_rx_bytes = read_u64(&tap.join("tx_bytes"));
    stats.net_tx_bytes = read_u64(&tap.join("rx_bytes"));
    Some(stats)
}

/// Sends the counters of every running VM every [`STATS_INTERVAL`], forever.
pub async fn run(registry: std::sync::Arc<VmRegistry>, outbox: Outbox) {
    let mut tick = tokio::time::interval(STATS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut vms = Vec::new();
        for (vm_id, pid) in registry.observed_pids() {
            if let Some(stats) = collect_one(&registry, vm_id, pid).await {
                vms.push(stats);
            }
        }
        if !vms.is_empty() {
            // Best effort: a full queue drops one round of counters.
            outbox.send(agent_message::Body::NodeStats(NodeStats { vms }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_table() {
        let line = |comm: &str| {
            format!("4242 ({comm}) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 3 0 100 1000000 500 18446744073709551615")
        };
        let table = [
            (line("qemu-system-x86"), Some(325)),
            // A command name with spaces and parentheses.
            (line("qemu (vm) x"), Some(325)),
            ("4242 (qemu) S 1".to_owned(), None),
            ("garbage".to_owned(), None),
        ];
        for (stat, want) in table {
            assert_eq!(cpu_ticks(&stat), want, "{stat}");
        }
    }

    #[test]
    fn resident_pages_table() {
        assert_eq!(resident_pages("70000 1234 500 1 0 9000 0\n"), Some(1234));
        assert_eq!(resident_pages("70000"), None);
        assert_eq!(resident_pages("70000 x"), None);
    }

    #[tokio::test]
    async fn collect_one_reads_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let registry = VmRegistry::new(dir.path());
        let stats = collect_one(&registry, Uuid::new_v4(), std::process::id())
            .await
            .expect("this process has a /proc entry");
        assert!(stats.memory_bytes > 0);
        assert!(stats.cpu_seconds >= 0.0);
        // No QMP socket and no tap for a made-up VM.
        assert_eq!(stats.disk_read_bytes, None);
        assert_eq!(stats.net_rx_bytes, None);
    }
}
