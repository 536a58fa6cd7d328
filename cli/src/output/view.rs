//! Multi-line `key: value` views of single objects (`vm get`, sync ops, `task get`,
//! `node get`, `pool get`, `network get`, `firmware get`, `cluster get`), values aligned,
//! `-` for none.

use std::collections::BTreeMap;

use otherix_api::{
    ClusterSettings, ErrorBody, Firmware, Network, Node, Pool, Task, TaskProgress, Vm, VmSpec,
};

use super::table::{join_or_none, usage_of};
use super::{firmware_type, network_type, or_none, port_text, yes_no, NONE};
use crate::wire::{Project, Whoami};

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

/// One `annotation: key=value` row per annotation (none when there are none).
fn annotation_rows(annotations: &BTreeMap<String, String>) -> Vec<(&'static str, String)> {
    annotations
        .iter()
        .map(|(k, v)| ("annotation", format!("{k}={v}")))
        .collect()
}

/// The `vm get` / `vm pause|resume|reset` text view; `restart_pending` is the server's
/// `status.restart_pending` and `project` the VM's project, each shown only when the
/// server sent one.
pub fn vm(vm: &Vm, restart_pending: Option<bool>, project: Option<&str>) -> String {
    let s = &vm.spec;
    let st = &vm.status;
    let firmware = s.firmware.as_deref().or(s.firmware_id.as_deref());
    let ports: Vec<String> = s.ports.iter().map(port_text).collect();
    let mut rows = vec![("name", vm.name.clone()), ("id", vm.id.to_string())];
    if let Some(p) = project {
        rows.push(("project", p.to_owned()));
    }
    rows.extend(vm.labels.iter().map(|(k, v)| ("label", format!("{k}={v}"))));
    rows.extend([
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
        ("restart_policy", s.restart_policy.as_str().to_owned()),
        ("ports", join_or_none(&ports)),
        ("pid", or_none(st.pid)),
        ("serial_log", or_none(st.serial_log.as_deref())),
    ]);
    // The guest agent's view, while the VM runs.
    if let Some(agent) = st.guest_agent {
        rows.extend([
            ("guest_agent", agent.as_str().to_owned()),
            ("addresses", join_or_none(&st.addresses)),
            ("os", or_none(st.os.as_deref())),
            ("ready", or_none(st.ready)),
        ]);
    }
    rows.push(("desired_phase", s.desired_phase.as_str().to_owned()));
    if let Some(pending) = restart_pending {
        rows.push(("restart_pending", pending.to_string()));
    }
    rows.extend([
        ("current_task", or_none(st.current_task)),
        ("last_error", error_text(st.last_error.as_ref())),
        ("generation", vm.generation.to_string()),
        ("observed_generation", st.observed_generation.to_string()),
        ("created_at", vm.created_at.clone()),
        ("updated_at", vm.updated_at.clone()),
    ]);
    render(&rows)
}

/// `<phase>`, `<phase> <done> bytes`, or `<phase> <done>/<total> bytes (<pct>%)`.
fn progress_text(p: &TaskProgress) -> String {
    match (p.bytes_done, p.bytes_total) {
        (Some(done), Some(total)) if total > 0 => {
            let pct = (u128::from(done) * 100 / u128::from(total)).min(100);
            format!("{} {done}/{total} bytes ({pct}%)", p.phase)
        }
        (Some(done), Some(total)) => format!("{} {done}/{total} bytes", p.phase),
        (Some(done), None) => format!("{} {done} bytes", p.phase),
        _ => p.phase.clone(),
    }
}

/// The `task get` text view: progress while it runs, and for a vm.create the placement
/// (chosen node, pool, path) with one `rejected` row per node the scheduler passed over.
/// `project:` and `requested_by:` follow `status` when the server sent them.
pub fn task(t: &Task, project: Option<&str>, requested_by: Option<&str>) -> String {
    let progress = t.progress.as_ref().map(progress_text);
    let placement = t
        .placement
        .as_ref()
        .map(|p| format!("node={} pool={} path={}", p.node, p.pool, p.pool_path));
    let mut rows = vec![
        ("id", t.id.to_string()),
        ("kind", t.kind.to_string()),
        ("status", t.status.to_string()),
    ];
    if let Some(p) = project {
        rows.push(("project", p.to_owned()));
    }
    if let Some(r) = requested_by {
        rows.push(("requested_by", r.to_owned()));
    }
    rows.extend([
        ("vm", or_none(t.vm_name.as_deref())),
        ("vm_id", or_none(t.vm_id)),
        ("node", or_none(t.node.as_deref())),
        ("progress", or_none(progress)),
        ("error", error_text(t.error.as_ref())),
        ("placement", or_none(placement)),
    ]);
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
            format!(
                "{}/{} allocated ({} cores)",
                n.allocated_vcpus, n.schedulable_vcpus, n.vcpus
            ),
        ),
        (
            "memory_mb",
            format!(
                "{}/{} allocated ({} on the node)",
                n.allocated_memory_mb, n.schedulable_memory_mb, n.memory_mb
            ),
        ),
        ("pools", join_or_none(&n.pools)),
        ("last_heartbeat", or_none(n.last_heartbeat.as_deref())),
    ])
}

/// The `pool get` text view: one `instance: <node> <path>` row per node serving the pool.
pub fn pool(p: &Pool) -> String {
    let mut rows = vec![
        ("name", p.name.clone()),
        ("id", p.id.to_string()),
        ("description", or_none(p.spec.description.as_deref())),
    ];
    rows.extend(annotation_rows(&p.annotations));
    if p.instances.is_empty() {
        rows.push(("instance", NONE.to_owned()));
    }
    for i in &p.instances {
        rows.push(("instance", format!("{} {}", i.node, i.path)));
    }
    render(&rows)
}

/// The `network get` text view.
pub fn network(n: &Network) -> String {
    let mut rows = vec![
        ("name", n.name.clone()),
        ("id", n.id.to_string()),
        ("type", network_type(n.spec.network_type).to_owned()),
        ("bridge", or_none(n.spec.bridge.as_deref())),
    ];
    rows.extend(annotation_rows(&n.annotations));
    render(&rows)
}

/// The `firmware get` text view.
pub fn firmware(f: &Firmware) -> String {
    let mut rows = vec![
        ("name", f.name.clone()),
        ("id", f.id.to_string()),
        ("arch", f.spec.arch.to_string()),
        ("type", firmware_type(f.spec.firmware_type).to_owned()),
        ("builtin", yes_no(f.builtin).to_owned()),
        ("code", or_none(f.spec.code.as_deref())),
        ("vars_template", or_none(f.spec.vars_template.as_deref())),
    ];
    rows.extend(annotation_rows(&f.annotations));
    render(&rows)
}

/// The `project get` text view: quotas as `usage/limit` (`-`: unlimited).
pub fn project(p: &Project) -> String {
    let mut rows = vec![
        ("name", p.name.clone()),
        ("id", or_none(p.id.as_deref())),
        ("vms", usage_of(p.usage.vms, p.spec.max_vms)),
        ("vcpus", usage_of(p.usage.vcpus, p.spec.max_vcpus)),
        (
            "memory_mb",
            usage_of(p.usage.memory_mb, p.spec.max_memory_mb),
        ),
    ];
    rows.extend(annotation_rows(&p.annotations));
    render(&rows)
}

/// The `whoami` text view: the token's name, role and project, and the server asked.
pub fn whoami(w: &Whoami, server: &str) -> String {
    render(&[
        ("name", w.name.clone()),
        ("role", w.role.clone()),
        ("project", w.project.clone()),
        ("server", server.to_owned()),
    ])
}

/// The `cluster get` text view.
/// A set ratio as is; an unset one as its default, marked.
fn ratio_or_default(
    set: Option<otherix_api::manifest::AllocationRatio>,
    effective: otherix_api::manifest::AllocationRatio,
) -> String {
    match set {
        Some(r) => r.to_string(),
        None => format!("{effective} (default)"),
    }
}

pub fn cluster(c: &ClusterSettings) -> String {
    let mut rows = vec![
        ("name", c.name.clone()),
        ("default_pool", or_none(c.spec.default_pool.as_deref())),
        (
            "cpu_allocation_ratio",
            ratio_or_default(c.spec.cpu_allocation_ratio, c.spec.cpu_ratio()),
        ),
        (
            "memory_allocation_ratio",
            ratio_or_default(c.spec.memory_allocation_ratio, c.spec.memory_ratio()),
        ),
    ];
    rows.extend(annotation_rows(&c.annotations));
    render(&rows)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{self as fx, TASK_ID, VM_ID};
    use super::*;
    use otherix_api::manifest::{
        ClusterSettingsSpec, FirmwareSpec, FirmwareType, NetworkSpec, NetworkType, PoolSpec,
    };
    use otherix_api::{
        Arch, Placement, PoolInstance, PortForward, PortProtocol, RestartPolicy, TaskStatus,
    };
    use uuid::Uuid;

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
restart_policy:      on-failure
ports:               -
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
        assert_eq!(vm(&fx::vm(), None, None), want);
    }

    #[test]
    fn vm_with_guest_agent_prints_its_rows_after_serial_log() {
        let mut v = fx::vm();
        v.status.guest_agent = Some(otherix_api::GuestAgentState::Connected);
        v.status.addresses = vec!["10.0.2.15/24".into(), "2001:db8::5/64".into()];
        v.status.os = Some("Debian GNU/Linux 12 (bookworm)".into());
        v.status.ready = Some(true);
        assert!(
            vm(&v, None, None).contains(
                "serial_log:          /var/lib/otherix/vms/x/serial.log\n\
                 guest_agent:         connected\n\
                 addresses:           10.0.2.15/24,2001:db8::5/64\n\
                 os:                  Debian GNU/Linux 12 (bookworm)\n\
                 ready:               true\n\
                 desired_phase:       running\n"
            ),
            "{}",
            vm(&v, None, None)
        );
        v.status.guest_agent = Some(otherix_api::GuestAgentState::NotConnected);
        v.status.addresses.clear();
        v.status.os = None;
        v.status.ready = None;
        let text = vm(&v, None, None);
        assert!(text.contains("guest_agent:         not_connected\naddresses:           -\nos:                  -\nready:               -\n"), "{text}");
    }

    #[test]
    fn vm_with_ports_policy_and_restart_pending_prints_them() {
        let mut v = fx::vm();
        v.spec.restart_policy = RestartPolicy::Always;
        v.spec.ports = vec![
            PortForward {
                host: 2222,
                guest: 22,
                protocol: PortProtocol::Tcp,
            },
            PortForward {
                host: 5353,
                guest: 53,
                protocol: PortProtocol::Udp,
            },
        ];
        let text = vm(&v, Some(true), None);
        assert!(
            text.contains(
                "\nstop_timeout:        60s\n\
                 restart_policy:      always\n\
                 ports:               2222:22/tcp,5353:53/udp\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "\ndesired_phase:       running\n\
                 restart_pending:     true\n\
                 current_task:        -\n"
            ),
            "{text}"
        );
        assert!(vm(&v, Some(false), None).contains("\nrestart_pending:     false\n"));
        assert!(!vm(&v, None, None).contains("restart_pending"));
    }

    #[test]
    fn vm_with_project_prints_it_after_id() {
        let text = vm(&fx::vm(), None, Some("dev"));
        assert!(
            text.starts_with(&format!(
                "name:                web-1\n\
                 id:                  {VM_ID}\n\
                 project:             dev\n\
                 status:              running\n"
            )),
            "{text}"
        );
        assert!(!vm(&fx::vm(), None, None).contains("project"));
    }

    #[test]
    fn task_with_project_and_requested_by_prints_them_after_status() {
        let text = task(&fx::task(TaskStatus::Pending), Some("dev"), Some("alice"));
        assert!(
            text.starts_with(&format!(
                "id:           {TASK_ID}\n\
                 kind:         vm.create\n\
                 status:       pending\n\
                 project:      dev\n\
                 requested_by: alice\n\
                 vm:           web-1\n"
            )),
            "{text}"
        );
    }

    #[test]
    fn whoami_and_project_views() {
        let me = Whoami {
            name: "ci".into(),
            role: "viewer".into(),
            project: "dev".into(),
        };
        assert_eq!(
            whoami(&me, "https://h:7080"),
            "name:    ci\nrole:    viewer\nproject: dev\nserver:  https://h:7080\n"
        );
        let p = Project {
            id: None,
            name: "default".into(),
            annotations: [("team".to_owned(), "infra".to_owned())].into(),
            spec: Default::default(),
            usage: Default::default(),
        };
        assert_eq!(
            project(&p),
            "name:       default\n\
             id:         -\n\
             vms:        0/-\n\
             vcpus:      0/-\n\
             memory_mb:  0/-\n\
             annotation: team=infra\n"
        );
    }

    #[test]
    fn vm_failed_last_error_prints_code_and_message() {
        let text = vm(&fx::vm2(), None, None);
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
            rejected: vec![
                otherix_api::RejectedNode {
                    node: "node-2".into(),
                    reason: "not_ready".into(),
                },
                otherix_api::RejectedNode {
                    node: "node-3".into(),
                    reason: "insufficient memory (needs 2048 MiB, 512 free)".into(),
                },
            ],
        });
        t.started_at = Some("2026-05-01T10:00:01Z".into());
        assert_eq!(
            task(&t, None, None),
            format!(
                "\
id:          {TASK_ID}
kind:        vm.create
status:      running
vm:          web-1
vm_id:       {VM_ID}
node:        node-1
progress:    downloading image 10/100 bytes (10%)
error:       -
placement:   node=node-1 pool=default path=/srv/pool
rejected:    node-2: not_ready
rejected:    node-3: insufficient memory (needs 2048 MiB, 512 free)
created_at:  2026-05-01T10:00:00Z
started_at:  2026-05-01T10:00:01Z
finished_at: -
"
            )
        );
    }

    #[test]
    fn task_progress_formats_table() {
        let p = |done, total| TaskProgress {
            phase: "downloading image".into(),
            bytes_done: done,
            bytes_total: total,
        };
        for (progress, want) in [
            (p(None, None), "downloading image"),
            (p(Some(5), None), "downloading image 5 bytes"),
            (p(Some(0), Some(0)), "downloading image 0/0 bytes"),
            (p(Some(1), Some(3)), "downloading image 1/3 bytes (33%)"),
            (
                p(Some(209_715_200), Some(209_715_200)),
                "downloading image 209715200/209715200 bytes (100%)",
            ),
            (
                p(Some(u64::MAX), Some(u64::MAX)),
                "downloading image 18446744073709551615/18446744073709551615 bytes (100%)",
            ),
        ] {
            assert_eq!(progress_text(&progress), want);
        }
    }

    #[test]
    fn task_pending_without_progress_or_placement_prints_dashes() {
        let text = task(&fx::task(TaskStatus::Pending), None, None);
        assert!(text.contains("\nprogress:    -\n"), "{text}");
        assert!(text.contains("\nplacement:   -\n"), "{text}");
        assert!(!text.contains("rejected"), "{text}");
    }

    #[test]
    fn pool_with_description_annotation_and_instances_prints_exact_view() {
        let p = Pool {
            resource_version: 1,
            id: Uuid::nil(),
            name: "fast".into(),
            annotations: [("otherix.dev/source".to_owned(), "/m".to_owned())].into(),
            spec: PoolSpec {
                description: Some("NVMe".into()),
            },
            instances: vec![
                PoolInstance {
                    id: Uuid::nil(),
                    node: "node-1".into(),
                    path: "/srv/fast".into(),
                },
                PoolInstance {
                    id: Uuid::nil(),
                    node: "node-2".into(),
                    path: "/mnt/nvme/otherix".into(),
                },
            ],
        };
        assert_eq!(
            pool(&p),
            "\
name:        fast
id:          00000000-0000-0000-0000-000000000000
description: NVMe
annotation:  otherix.dev/source=/m
instance:    node-1 /srv/fast
instance:    node-2 /mnt/nvme/otherix
"
        );
    }

    #[test]
    fn pool_without_instances_prints_dash() {
        let p = Pool {
            resource_version: 1,
            id: Uuid::nil(),
            name: "empty".into(),
            annotations: Default::default(),
            spec: PoolSpec::default(),
            instances: vec![],
        };
        assert_eq!(
            pool(&p),
            "\
name:        empty
id:          00000000-0000-0000-0000-000000000000
description: -
instance:    -
"
        );
    }

    #[test]
    fn network_bridge_prints_exact_view() {
        let n = Network {
            resource_version: 1,
            id: Uuid::nil(),
            name: "lan".into(),
            annotations: Default::default(),
            spec: NetworkSpec {
                network_type: NetworkType::Bridge,
                bridge: Some("br0".into()),
            },
        };
        assert_eq!(
            network(&n),
            "\
name:   lan
id:     00000000-0000-0000-0000-000000000000
type:   bridge
bridge: br0
"
        );
    }

    #[test]
    fn firmware_uefi_prints_exact_view() {
        let f = Firmware {
            resource_version: 1,
            id: Uuid::nil(),
            name: "ovmf".into(),
            annotations: Default::default(),
            spec: FirmwareSpec {
                arch: Arch::Amd64,
                firmware_type: FirmwareType::Uefi,
                code: Some("/usr/share/OVMF/OVMF_CODE_4M.fd".into()),
                vars_template: Some("/usr/share/OVMF/OVMF_VARS_4M.fd".into()),
            },
            builtin: true,
        };
        assert_eq!(
            firmware(&f),
            "\
name:          ovmf
id:            00000000-0000-0000-0000-000000000000
arch:          amd64
type:          uefi
builtin:       yes
code:          /usr/share/OVMF/OVMF_CODE_4M.fd
vars_template: /usr/share/OVMF/OVMF_VARS_4M.fd
"
        );
    }

    #[test]
    fn cluster_with_and_without_default_pool_prints_exact_view() {
        let mut c = ClusterSettings {
            resource_version: 1,
            name: "cluster".into(),
            annotations: Default::default(),
            spec: ClusterSettingsSpec {
                default_pool: Some("default".into()),
                ..Default::default()
            },
        };
        assert_eq!(
            cluster(&c),
            "name:                    cluster\n\
             default_pool:            default\n\
             cpu_allocation_ratio:    4 (default)\n\
             memory_allocation_ratio: 1 (default)\n"
        );
        c.spec.default_pool = None;
        c.spec.cpu_allocation_ratio = Some(otherix_api::manifest::AllocationRatio(8.0));
        c.spec.memory_allocation_ratio = Some(otherix_api::manifest::AllocationRatio(1.5));
        c.annotations.insert("team".into(), "infra".into());
        assert_eq!(
            cluster(&c),
            "name:                    cluster\n\
             default_pool:            -\n\
             cpu_allocation_ratio:    8\n\
             memory_allocation_ratio: 1.5\n\
             annotation:              team=infra\n"
        );
    }
}
