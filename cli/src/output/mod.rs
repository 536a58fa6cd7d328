//! Everything the CLI prints, as pure functions returning Strings: tables ([`table`]),
//! key/value views ([`view`]), JSON ([`json`]), YAML ([`yaml`]), event lines ([`event`])
//! and the one-line
//! task messages below.

pub mod event;
pub mod json;
pub mod table;
pub mod view;
pub mod yaml;

use std::time::Duration;

use otherix_api::duration::format_duration;
use otherix_api::manifest::{FirmwareType, NetworkType};
use otherix_api::{CachedImage, ErrorBody, PortForward, PortProtocol, Task, TaskStatus};
use uuid::Uuid;

/// Shown for an absent value in tables and views.
pub const NONE: &str = "-";

/// What an optional value looks like in a table or view.
pub fn or_none<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| NONE.to_owned(), |v| v.to_string())
}

/// `<op> task=<id> status=<status>`: an accepted async operation (`op` is `created` for
/// `vm create`).
pub fn accepted_line(op: &str, task: &Task) -> String {
    format!("{op} task={} status={}", task.id, task.status)
}

/// `vm <phase> task=<id>`: an async operation finished successfully.
pub fn done_line(phase: &str, task_id: Uuid) -> String {
    format!("vm {phase} task={task_id}")
}

/// `task <id> failed: <code>: <message>` (or `cancelled`): an async operation did not
/// succeed.
pub fn task_failed_line(task_id: Uuid, status: TaskStatus, error: Option<&ErrorBody>) -> String {
    let verb = match status {
        TaskStatus::Cancelled => "cancelled",
        _ => "failed",
    };
    match error {
        Some(e) => format!("task {task_id} {verb}: {}: {}", e.code, e.message),
        None => format!("task {task_id} {verb}"),
    }
}

/// The message (after `error: `) when --wait-timeout runs out.
pub fn timed_out_message(after: Duration, task_id: Uuid, status: TaskStatus) -> String {
    format!(
        "timed out after {} waiting for task {task_id} (status {status}); the task keeps running",
        format_duration(after)
    )
}

/// The stderr hint when a list has more pages.
pub fn more_results_line(cursor: &str) -> String {
    format!("more results: --cursor {cursor}")
}

/// `<kind>/<name> <verb>`, as `create -f` reports objects: `pool/fast created`.
pub fn object_line(kind: &str, name: &str, verb: &str) -> String {
    format!("{kind}/{name} {verb}")
}

/// `prune-images`: one `removed <node> <sha12> <size> <url>` line per image, then
/// `pruned <n> image(s) (<size>) from pool <pool>`.
pub fn pruned_text(pool: &str, removed: &[CachedImage]) -> String {
    let mut out = String::new();
    for i in removed {
        out.push_str(&format!(
            "removed {} {} {} {}\n",
            i.node,
            short_sha(&i.sha256),
            human_size(i.size),
            i.url
        ));
    }
    let total: u64 = removed.iter().map(|i| i.size).sum();
    let noun = if removed.len() == 1 {
        "image"
    } else {
        "images"
    };
    out.push_str(&format!(
        "pruned {} {noun} ({}) from pool {pool}\n",
        removed.len(),
        human_size(total)
    ));
    out
}

/// `token <name> created; secret (shown once): <secret>`.
pub fn token_created_line(name: &str, secret: &str) -> String {
    format!("token {name} created; secret (shown once): {secret}")
}

/// The stderr note of `node join-token` (stdout carries only the token).
pub fn join_token_note(node: &str, expires_at: Option<&str>) -> String {
    match expires_at {
        Some(at) => format!("join token for node {node} expires at {at} (one use)"),
        None => format!("join token for node {node} created (one use)"),
    }
}

/// `Certificate fingerprint: <hex>`, what `remote add` shows before asking.
pub fn fingerprint_line(fingerprint: &str) -> String {
    format!("Certificate fingerprint: {fingerprint}")
}

/// The first 12 hex digits of a sha256, as image tools print it.
pub fn short_sha(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

/// A byte count in binary units with one decimal: `512B`, `1.5KiB`, `333.2MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// `8080:80/tcp`.
pub fn port_text(p: &PortForward) -> String {
    let proto = match p.protocol {
        PortProtocol::Tcp => "tcp",
        PortProtocol::Udp => "udp",
    };
    format!("{}:{}/{proto}", p.host, p.guest)
}

pub fn network_type(t: NetworkType) -> &'static str {
    match t {
        NetworkType::Bridge => "bridge",
        NetworkType::Nat => "nat",
        NetworkType::Isolated => "isolated",
    }
}

pub fn firmware_type(t: FirmwareType) -> &'static str {
    match t {
        FirmwareType::Bios => "bios",
        FirmwareType::Uefi => "uefi",
    }
}

pub fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Builder fixtures shared by the output tests.
    use otherix_api::{
        Arch, ErrorBody, ErrorCode, Task, TaskKind, TaskStatus, Vm, VmPhase, VmSpec, VmStatus,
    };
    use uuid::Uuid;

    pub const VM_ID: &str = "6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11";
    pub const VM2_ID: &str = "0b8e5a52-7a4e-4f0e-8d0c-2f6f3d9b1a20";
    pub const TASK_ID: &str = "3d7b2a10-93c5-4c1e-b1f4-6a8d0e2c5b77";

    pub fn vm() -> Vm {
        let mut spec = VmSpec::new(
            "https://cloud-images.ubuntu.com/minimal/releases/noble/release/ubuntu-24.04-minimal-cloudimg-arm64.img",
            Arch::Arm64,
        );
        spec.user_data = Some("#cloud-config\npassword: x\n".into());
        Vm {
            id: Uuid::parse_str(VM_ID).unwrap(),
            name: "web-1".into(),
            project: "default".into(),
            annotations: Default::default(),
            labels: Default::default(),
            generation: 1,
            resource_version: 3,
            spec,
            status: VmStatus {
                phase: VmPhase::Running,
                node: Some("node-1".into()),
                pool: Some("default".into()),
                pid: Some(4242),
                serial_log: Some("/var/lib/otherix/vms/x/serial.log".into()),
                current_task: None,
                last_error: None,
                observed_generation: 1,
                restart_pending: false,
                guest_agent: None,
                addresses: Vec::new(),
                os: None,
                ready: None,
            },
            created_at: "2026-05-01T10:00:00Z".into(),
            updated_at: "2026-05-01T10:01:00Z".into(),
        }
    }

    /// A second VM: pending, unplaced, with a network and a failed last task.
    pub fn vm2() -> Vm {
        let mut spec = VmSpec::new("http://images.local/debian-12.qcow2", Arch::Amd64);
        spec.network = Some("br-lan".into());
        spec.vcpus = 4;
        Vm {
            id: Uuid::parse_str(VM2_ID).unwrap(),
            name: "database-primary".into(),
            project: "default".into(),
            annotations: Default::default(),
            labels: Default::default(),
            generation: 2,
            resource_version: 7,
            spec,
            status: VmStatus {
                phase: VmPhase::Pending,
                node: None,
                pool: None,
                pid: None,
                serial_log: None,
                current_task: None,
                last_error: Some(ErrorBody {
                    code: ErrorCode::NoNodeAvailable,
                    message: "no ready node runs amd64 guests".into(),
                }),
                observed_generation: 0,
                restart_pending: false,
                guest_agent: None,
                addresses: Vec::new(),
                os: None,
                ready: None,
            },
            created_at: "2026-05-01T11:00:00Z".into(),
            updated_at: "2026-05-01T11:00:00Z".into(),
        }
    }

    pub fn task(status: TaskStatus) -> Task {
        Task {
            id: Uuid::parse_str(TASK_ID).unwrap(),
            kind: TaskKind::VmCreate,
            status,
            vm_id: Some(Uuid::parse_str(VM_ID).unwrap()),
            vm_name: Some("web-1".into()),
            project: "default".into(),
            requested_by: None,
            node: None,
            progress: None,
            error: None,
            placement: None,
            created_at: "2026-05-01T10:00:00Z".into(),
            started_at: None,
            finished_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use otherix_api::ErrorCode;

    #[test]
    fn accepted_line_pending_create_prints_created_task_status() {
        let t = task(TaskStatus::Pending);
        assert_eq!(
            accepted_line("created", &t),
            format!("created task={TASK_ID} status=pending")
        );
        assert_eq!(
            accepted_line("stop", &task(TaskStatus::Running)),
            format!("stop task={TASK_ID} status=running")
        );
    }

    #[test]
    fn done_line_running_prints_vm_phase_task() {
        let id = Uuid::parse_str(TASK_ID).unwrap();
        assert_eq!(
            done_line("running", id),
            format!("vm running task={TASK_ID}")
        );
        assert_eq!(
            done_line("deleted", id),
            format!("vm deleted task={TASK_ID}")
        );
    }

    #[test]
    fn task_failed_line_with_error_prints_code_and_message() {
        let id = Uuid::parse_str(TASK_ID).unwrap();
        let e = ErrorBody {
            code: ErrorCode::StopTimeout,
            message: "guest did not power off within 60s".into(),
        };
        assert_eq!(
            task_failed_line(id, TaskStatus::Failed, Some(&e)),
            format!("task {TASK_ID} failed: stop_timeout: guest did not power off within 60s")
        );
        assert_eq!(
            task_failed_line(id, TaskStatus::Cancelled, None),
            format!("task {TASK_ID} cancelled")
        );
    }

    #[test]
    fn timed_out_message_formats_duration_and_status() {
        let id = Uuid::parse_str(TASK_ID).unwrap();
        assert_eq!(
            timed_out_message(Duration::from_secs(300), id, TaskStatus::Running),
            format!("timed out after 5m waiting for task {TASK_ID} (status running); the task keeps running")
        );
    }

    #[test]
    fn human_size_table() {
        for (bytes, want) in [
            (0, "0B"),
            (1023, "1023B"),
            (1024, "1.0KiB"),
            (1536, "1.5KiB"),
            (349_372_416, "333.2MiB"),
            (2 * 1024 * 1024 * 1024, "2.0GiB"),
        ] {
            assert_eq!(human_size(bytes), want, "{bytes}");
        }
    }

    #[test]
    fn short_sha_keeps_twelve_digits_or_whole_short_value() {
        assert_eq!(short_sha(&"ab".repeat(32)), "abababababab");
        assert_eq!(short_sha("abc"), "abc");
    }

    #[test]
    fn port_text_always_names_protocol() {
        let p = PortForward {
            host: 5353,
            guest: 53,
            protocol: PortProtocol::Udp,
        };
        assert_eq!(port_text(&p), "5353:53/udp");
    }

    #[test]
    fn pruned_text_lists_removed_and_total() {
        let img = |node: &str, size| CachedImage {
            node: node.into(),
            sha256: "c".repeat(64),
            url: "http://x/a.img".into(),
            size,
            last_used: None,
            used_by: 0,
        };
        assert_eq!(
            pruned_text("default", &[img("node-1", 1024), img("node-2", 2048)]),
            "removed node-1 cccccccccccc 1.0KiB http://x/a.img\n\
             removed node-2 cccccccccccc 2.0KiB http://x/a.img\n\
             pruned 2 images (3.0KiB) from pool default\n"
        );
        assert_eq!(
            pruned_text("fast", &[]),
            "pruned 0 images (0B) from pool fast\n"
        );
    }

    #[test]
    fn more_results_line_names_cursor_flag() {
        assert_eq!(more_results_line("abc"), "more results: --cursor abc");
    }
}
