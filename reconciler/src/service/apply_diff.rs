//! Pure comparison of two VM specs for declarative apply: which immutable fields a change
//! touches (409 `immutable_field`). Whether the running QEMU's boot-time fields differ
//! (`status.restart_pending`) is `VmRecord::restart_pending` in `model.rs`.

use otherix_api::{ApiError, ErrorCode, VmSpec};

/// One immutable field whose value an apply tried to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    /// `spec.arch`.
    pub field: &'static str,
    pub old: String,
    pub new: String,
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "(unset)".to_owned(), ToString::to_string)
}

/// Every immutable field of `new` that differs from `old`, in spec order.
pub fn immutable_changes(old: &VmSpec, new: &VmSpec) -> Vec<FieldChange> {
    let fields: [(&'static str, String, String); 11] = [
        (
            "spec.image_url",
            old.image_url.clone(),
            new.image_url.clone(),
        ),
        ("spec.arch", old.arch.to_string(), new.arch.to_string()),
        (
            "spec.image_sha256",
            opt(&old.image_sha256),
            opt(&new.image_sha256),
        ),
        ("spec.firmware", opt(&old.firmware), opt(&new.firmware)),
        (
            "spec.firmware_id",
            opt(&old.firmware_id),
            opt(&new.firmware_id),
        ),
        (
            "spec.format",
            opt(&old.format.map(|f| f.as_str())),
            opt(&new.format.map(|f| f.as_str())),
        ),
        ("spec.disk_gib", opt(&old.disk_gib), opt(&new.disk_gib)),
        ("spec.pool", opt(&old.pool), opt(&new.pool)),
        ("spec.node", opt(&old.node), opt(&new.node)),
        ("spec.network", opt(&old.network), opt(&new.network)),
        (
            "spec.no_cloud_init",
            old.no_cloud_init.to_string(),
            new.no_cloud_init.to_string(),
        ),
    ];
    fields
        .into_iter()
        .filter(|(_, o, n)| o != n)
        .map(|(field, old, new)| FieldChange { field, old, new })
        .collect()
}

/// The 409 for a non-empty list of changes:
/// `immutable fields changed: spec.arch: amd64 -> arm64; spec.pool: (unset) -> fast`.
pub fn immutable_error(changes: &[FieldChange]) -> ApiError {
    let list: Vec<String> = changes
        .iter()
        .map(|c| format!("{}: {} -> {}", c.field, c.old, c.new))
        .collect();
    ApiError::new(
        ErrorCode::ImmutableField,
        format!("immutable fields changed: {}", list.join("; ")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use otherix_api::{Arch, DesiredPhase, DiskFormat, PortForward, PortProtocol, RestartPolicy};

    fn spec() -> VmSpec {
        VmSpec::new("http://x/a.img", Arch::Amd64)
    }

    #[test]
    fn immutable_changes_every_field() {
        type Change = fn(&mut VmSpec);
        let table: &[(&str, Change, &str)] = &[
            ("spec.image_url", |s| s.image_url = "http://x/b.img".into(), "spec.image_url: http://x/a.img -> http://x/b.img"),
            ("spec.arch", |s| s.arch = Arch::Arm64, "spec.arch: amd64 -> arm64"),
            ("spec.image_sha256", |s| s.image_sha256 = Some("ab".repeat(32)), "spec.image_sha256: (unset) -> abababababababababababababababababababababababababababababababab"),
            ("spec.firmware", |s| s.firmware = Some("ovmf".into()), "spec.firmware: (unset) -> ovmf"),
            ("spec.firmware_id", |s| s.firmware_id = Some("6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11".into()), "spec.firmware_id: (unset) -> 6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11"),
            ("spec.format", |s| s.format = Some(DiskFormat::Raw), "spec.format: (unset) -> raw"),
            ("spec.disk_gib", |s| s.disk_gib = Some(20), "spec.disk_gib: (unset) -> 20"),
            ("spec.pool", |s| s.pool = Some("fast".into()), "spec.pool: (unset) -> fast"),
            ("spec.node", |s| s.node = Some("n2".into()), "spec.node: (unset) -> n2"),
            ("spec.network", |s| s.network = Some("lan".into()), "spec.network: (unset) -> lan"),
            ("spec.no_cloud_init", |s| s.no_cloud_init = true, "spec.no_cloud_init: false -> true"),
        ];
        for (field, change, want) in table {
            let mut new = spec();
            change(&mut new);
            let changes = immutable_changes(&spec(), &new);
            assert_eq!(changes.len(), 1, "{field}");
            assert_eq!(changes[0].field, *field);
            assert_eq!(
                immutable_error(&changes).message,
                format!("immutable fields changed: {want}")
            );
        }
    }

    #[test]
    fn immutable_changes_mutable_fields_are_not_listed() {
        let mut new = spec();
        new.vcpus = 8;
        new.memory_mb = 4096;
        new.user_data = Some("#cloud-config\n".into());
        new.network_config = Some("version: 2\n".into());
        new.stop_timeout_secs = Some(5);
        new.desired_phase = DesiredPhase::Stopped;
        new.restart_policy = RestartPolicy::Always;
        new.ports = vec![PortForward {
            host: 2222,
            guest: 22,
            protocol: PortProtocol::Tcp,
        }];
        assert!(immutable_changes(&spec(), &new).is_empty());
    }

    #[test]
    fn immutable_error_lists_fields_in_order_with_old_and_new() {
        let mut old = spec();
        old.pool = Some("default".into());
        let mut new = spec();
        new.arch = Arch::Arm64;
        new.pool = Some("fast".into());
        let e = immutable_error(&immutable_changes(&old, &new));
        assert_eq!(e.code, ErrorCode::ImmutableField);
        assert_eq!(
            e.message,
            "immutable fields changed: spec.arch: amd64 -> arm64; spec.pool: default -> fast"
        );
        let mut unset = new.clone();
        unset.pool = None;
        assert_eq!(
            immutable_error(&immutable_changes(&new, &unset)).message,
            "immutable fields changed: spec.pool: fast -> (unset)"
        );
    }
}
