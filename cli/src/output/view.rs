//! Multi-line `key: value` views of single objects (`vm get`, sync ops, `task get`,
//! `node get`, `pool get`), values aligned, `-` for none.

use otherix_api::{ErrorBody, Node, Pool, Task, Vm, VmSpec};

use super::table::join_or_none;
use super::{or_none, NONE};

/// Renders `key:` rows with the values aligned one column past the longest key.
fn render(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (key, value) in rows {
        let label = format!("{key}:");
        out.push_str(&format!("{label:<width$} {value}\n", width = width));
    }
    out
}

fn error_text(e: Option<&ErrorBody>) -> String {
    e.map_or_else(|| NONE.to_owned(), |e| format!("{}: {}", e.code, e.message))
}

/// What cloud-init gets: `disabled`, `default`, or the parts the spec carries.
fn cloud_init_text(spec: &VmSpec) -> String {
    if spec.no_cloud_init {
        return "disabled".into();
    }
    let parts: Vec<String> = [
        ("user_data", &spec.user_data),
        ("network_config", &spec.network_config),
    ]
    .into_iter()
    .filter_map(|(name, v)| v.as_ref().map(|v| format!("{name} ({} bytes)", v.len())))
    .collect();
    if parts.is_empty() {
        "default".into()
    } else {
        parts.join(", ")
    }
}

/// The `vm get` / `vm pause|resume|reset` text view.
pub fn vm(vm: &Vm) -> String {
    let s = &vm.spec;
    let st = &vm.status;
    let firmware = s.firmware.as_deref().or(s.firmware_id.as_deref());
    render(&[
        ("name", vm.name.clone()),
        ("id", vm.id.to_string()),
        ("status", st.phase.to_string()),
        ("arch", s.arch.to_string()),
        ("node", or_none(st.node.as_deref())),
        ("pool", or_none(st.pool.as_deref())),
        ("network", or_none(s.network.as_deref())),
        ("vcpus", s.vcpus.to_string()),
        ("memory_mb", s.memory_mb.to_string()),
        ("disk_gib", or_none(s.disk_gib)),
        ("format", or_none(s.format.map(|f| f.as_str()))),
        ("image_url", s.image_url.clone()),
        ("image_sha256", or_none(s.image_sha256.as_deref())),
        ("firmware", or_none(firmware)),
        ("cloud_init", cloud_init_text(s)),
        ("stop_timeout", format!("{}s", s.stop_timeout_secs())),
        ("pid", or_none(st.pid)),
        ("serial_log", or_none(st.serial_log.as_deref())),
        ("desired_phase", s.desired_phase.as_str().to_owned()),
        ("current_task", or_none(st.current_task)),
        ("last_error", error_text(st.last_error.as_ref())),
        ("generation", vm.generation.to_string()),
        ("observed_generation", st.observed_generation.to_string()),
        ("created_at", vm.created_at.clone()),
        ("updated_at", vm.updated_at.clone()),
    ])
}

/// The `task get` text view.
pub fn task(t: &Task) -> String {
    let progress = t
        .progress
        .as_ref()
        .map(|p| match (p.bytes_done, p.bytes_total) {
            (Some(done), Some(total)) => format!("{} ({done}/{total} bytes)", p.phase),
            (Some(done), None) => format!("{} ({done} bytes)", p.phase),
            _ => p.phase.clone(),
        });
    let placement = t
        .placement
        .as_ref()
        .map(|p| format!("node={} pool={} path={}", p.node, p.pool, p.pool_path));
    let mut rows = vec![
        ("id", t.id.to_string()),
        ("kind", t.kind.to_string()),
        ("status", t.status.to_string()),
        ("vm", or_none(t.vm_name.as_deref())),
        ("vm_id", or_none(t.vm_id)),
        ("node", or_none(t.node.as_deref())),
        ("progress", or_none(progress)),
        ("error", error_text(t.error.as_ref())),
        ("placement", or_none(placement)),
    ];
    if let Some(p) = &t.placement {
        for r in &p.rejected {
            rows.push(("rejected", format!("{}: {}", r.node, r.reason)));
        }
    }
    rows.extend([
        ("created_at", t.created_at.clone()),
        ("started_at", or_none(t.started_at.as_deref())),
        ("finished_at", or_none(t.finished_at.as_deref())),
    ]);
    render(&rows)
}

/// The `node get` text view.
pub fn node(n: &Node) -> String {
    render(&[
        ("name", n.name.clone()),
        ("id", n.id.to_string()),
        ("status", n.status.as_str().to_owned()),
        ("arch", n.arch.clone()),
        ("guest_arches", join_or_none(&n.guest_arches)),
        ("accel", n.accel.clone()),
        (
            "vcpus",
            format!("{}/{} allocated", n.allocated_vcpus, n.vcpus),
        ),
        (
            "memory_mb",
            format!("{}/{} allocated", n.allocated_memory_mb, n.memory_mb),
        ),
        ("pools", join_or_none(&n.pools)),
        ("last_heartbeat", or_none(n.last_heartbeat.as_deref())),
    ])
}

/// The `pool get` text view: one `instance` row per node serving the pool.
pub fn pool(p: &Pool) -> String {
    let mut rows = vec![("name", p.name.clone()), ("id", p.id.to_string())];
    if p.instances.is_empty() {
        rows.push(("instance", NONE.to_owned()));
    }
    for i in &p.instances {
        rows.push(("instance", format!("{} {}", i.node, i.path)));
    }
    render(&rows)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{self as fx, TASK_ID, VM_ID};
    use super::*;
    use otherix_api::{Placement, TaskProgress, TaskStatus};

    #[test]
    fn vm_running_prints_exact_key_value_view() {
        let want = format!(
            "\
name:                web-1
id:                  {VM_ID}
status:              running
arch:                arm64
node:                node-1
pool:                default
network:             -
vcpus:               2
memory_mb:           2048
disk_gib:            -
format:              -
image_url:           https://cloud-images.ubuntu.com/minimal/releases/noble/release/ubuntu-24.04-minimal-cloudimg-arm64.img
image_sha256:        -
firmware:            -
cloud_init:          user_data (26 bytes)
stop_timeout:        60s
pid:                 4242
serial_log:          /var/lib/otherix/vms/x/serial.log
desired_phase:       running
current_task:        -
last_error:          -
generation:          1
observed_generation: 1
created_at:          2026-05-01T10:00:00Z
updated_at:          2026-05-01T10:01:00Z
"
        );
        assert_eq!(vm(&fx::vm()), want);
    }

    #[test]
    fn vm_failed_last_error_prints_code_and_message() {
        let text = vm(&fx::vm2());
        assert!(
            text.contains(
                "\nlast_error:          no_node_available: no ready node runs amd64 guests\n"
            ),
            "{text}"
        );
        assert!(text.contains("\nnode:                -\n"), "{text}");
        assert!(text.contains("\ncloud_init:          default\n"), "{text}");
    }

    #[test]
    fn task_with_progress_and_placement_prints_exact_view() {
        let mut t = fx::task(TaskStatus::Running);
        t.node = Some("node-1".into());
        t.progress = Some(TaskProgress {
            phase: "downloading image".into(),
            bytes_done: Some(10),
            bytes_total: Some(100),
        });
        t.placement = Some(Placement {
            node: "node-1".into(),
            pool: "default".into(),
            pool_path: "/srv/pool".into(),
            rejected: vec![otherix_api::RejectedNode {
                node: "node-2".into(),
                reason: "not_ready".into(),
            }],
        });
        t.started_at = Some("2026-05-01T10:00:01Z".into());
        assert_eq!(
            task(&t),
            format!(
                "\
id:          {TASK_ID}
kind:        vm.create
status:      running
vm:          web-1
vm_id:       {VM_ID}
node:        node-1
progress:    downloading image (10/100 bytes)
error:       -
placement:   node=node-1 pool=default path=/srv/pool
rejected:    node-2: not_ready
created_at:  2026-05-01T10:00:00Z
started_at:  2026-05-01T10:00:01Z
finished_at: -
"
            )
        );
    }
}
