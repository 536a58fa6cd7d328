//! Request validation: pure functions that name the field and the rule they break.
//!
//! The server is the authority; the CLI calls the same functions to catch flag mistakes
//! before sending.

use crate::error::ApiError;
use crate::manifest::{AllocationRatio, ClusterSettingsSpec, NetworkSpec, NetworkType};
use crate::vm::{CreateVmRequest, VmSpec};

pub const VCPUS_RANGE: (u32, u32) = (1, 128);
pub const MEMORY_MB_RANGE: (u32, u32) = (128, 524_288);
pub const DISK_GIB_RANGE: (u32, u32) = (1, 65_536);
pub const STOP_TIMEOUT_RANGE: (u32, u32) = (1, 3600);
pub const MAX_CLOUD_INIT_BYTES: usize = 64 * 1024;

/// True for a UUID literal in any of its usual spellings.
pub fn is_uuid_literal(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

/// A resource name: one DNS label (RFC 1123, starting with a letter), not a UUID literal.
pub fn validate_name(field: &str, name: &str) -> Result<(), ApiError> {
    if is_uuid_literal(name) {
        return Err(ApiError::validation(format!(
            "{field}: UUID literals are not accepted as names; VMs are addressed by name"
        )));
    }
    let ok_len = (1..=63).contains(&name.len());
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_start = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
    let ok_end = !name.ends_with('-');
    if ok_len && ok_chars && ok_start && ok_end {
        Ok(())
    } else {
        Err(ApiError::validation(format!(
            "{field}: {name:?} is not a valid name: use 1..63 lowercase letters, digits and '-', starting with a letter and not ending with '-'"
        )))
    }
}

fn check_range(field: &str, value: u32, (lo, hi): (u32, u32)) -> Result<(), ApiError> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(ApiError::validation(format!(
            "{field}: must be {lo}..{hi} (got {value})"
        )))
    }
}

/// Checks an image URL: http(s) or file, with a host for http(s).
pub fn validate_image_url(field: &str, url: &str) -> Result<(), ApiError> {
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if let Some(r) = url.strip_prefix("https://") {
        r
    } else if let Some(r) = url.strip_prefix("file://") {
        if r.starts_with('/') {
            return Ok(());
        }
        return Err(ApiError::validation(format!(
            "{field}: file URLs need an absolute path (file:///path)"
        )));
    } else {
        return Err(ApiError::validation(format!(
            "{field}: must be an http://, https:// or file:// URL (got {url:?})"
        )));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::validation(format!(
            "{field}: {url:?} is not a valid URL"
        )));
    }
    Ok(())
}

/// Validates a VM spec; `prefix` is the path of the spec, e.g. `spec`.
pub fn validate_vm_spec(prefix: &str, spec: &VmSpec) -> Result<(), ApiError> {
    validate_image_url(&format!("{prefix}.image_url"), &spec.image_url)?;
    if let Some(sha) = &spec.image_sha256 {
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::validation(format!(
                "{prefix}.image_sha256: must be 64 hex digits"
            )));
        }
    }
    if spec.firmware.is_some() && spec.firmware_id.is_some() {
        return Err(ApiError::validation(format!(
            "{prefix}.firmware: mutually exclusive with {prefix}.firmware_id"
        )));
    }
    if let Some(id) = &spec.firmware_id {
        if !is_uuid_literal(id) {
            return Err(ApiError::validation(format!(
                "{prefix}.firmware_id: must be a uuid"
            )));
        }
    }
    check_range(&format!("{prefix}.vcpus"), spec.vcpus, VCPUS_RANGE)?;
    check_range(
        &format!("{prefix}.memory_mb"),
        spec.memory_mb,
        MEMORY_MB_RANGE,
    )?;
    if let Some(gib) = spec.disk_gib {
        check_range(&format!("{prefix}.disk_gib"), gib, DISK_GIB_RANGE)?;
    }
    if let Some(t) = spec.stop_timeout_secs {
        check_range(
            &format!("{prefix}.stop_timeout_secs"),
            t,
            STOP_TIMEOUT_RANGE,
        )?;
    }
    for (field, value) in [
        ("pool", &spec.pool),
        ("node", &spec.node),
        ("network", &spec.network),
        ("firmware", &spec.firmware),
    ] {
        if let Some(v) = value {
            if !is_uuid_literal(v) {
                validate_name(&format!("{prefix}.{field}"), v)?;
            }
        }
    }
    if spec.no_cloud_init
        && (spec.user_data.is_some()
            || spec.network_config.is_some()
            || !spec.ssh_authorized_keys.is_empty())
    {
        return Err(ApiError::validation(format!(
            "{prefix}.no_cloud_init: mutually exclusive with {prefix}.user_data, {prefix}.network_config and {prefix}.ssh_authorized_keys"
        )));
    }
    validate_ssh_keys(
        &format!("{prefix}.ssh_authorized_keys"),
        &spec.ssh_authorized_keys,
    )?;
    for (field, value) in [
        ("user_data", &spec.user_data),
        ("network_config", &spec.network_config),
    ] {
        if let Some(v) = value {
            if v.len() > MAX_CLOUD_INIT_BYTES {
                return Err(ApiError::validation(format!(
                    "{prefix}.{field}: must be at most {MAX_CLOUD_INIT_BYTES} bytes (got {})",
                    v.len()
                )));
            }
        }
    }
    if let Some(ud) = &spec.user_data {
        validate_user_data(&format!("{prefix}.user_data"), ud)?;
    }
    if let Some(nc) = &spec.network_config {
        validate_network_config(&format!("{prefix}.network_config"), nc)?;
    }
    validate_ports(prefix, spec)?;
    Ok(())
}

/// The most SSH keys one VM takes.
pub const MAX_SSH_KEYS: usize = 32;
const MAX_SSH_KEY_BYTES: usize = 16 * 1024;
const SSH_KEY_TYPES: [&str; 8] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
];

/// SSH public keys: each one authorized_keys line `TYPE BASE64 [comment]` of a known type,
/// printable, at most 16 KiB; at most 32 keys.
pub fn validate_ssh_keys(field: &str, keys: &[String]) -> Result<(), ApiError> {
    if keys.len() > MAX_SSH_KEYS {
        return Err(ApiError::validation(format!(
            "{field}: at most {MAX_SSH_KEYS} keys (got {})",
            keys.len()
        )));
    }
    for (i, key) in keys.iter().enumerate() {
        let bad = |why: &str| ApiError::validation(format!("{field}[{i}]: {why}"));
        if key.len() > MAX_SSH_KEY_BYTES {
            return Err(bad("must be at most 16384 bytes"));
        }
        if key.chars().any(|c| c.is_control()) {
            return Err(bad("must be one line of printable text"));
        }
        let mut parts = key.split_whitespace();
        let kind = parts.next().unwrap_or("");
        if !SSH_KEY_TYPES.contains(&kind) {
            return Err(bad(&format!(
                "must start with a key type ({}), got {kind:?}",
                SSH_KEY_TYPES.join(", ")
            )));
        }
        let blob = parts.next().unwrap_or("");
        let base64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=');
        if blob.len() < 16 || !blob.chars().all(base64) {
            return Err(bad("the key type must be followed by the base64 key"));
        }
    }
    Ok(())
}

/// cloud-init user-data: `#cloud-config` followed by valid YAML, or a `#!` script.
pub fn validate_user_data(field: &str, text: &str) -> Result<(), ApiError> {
    if text.starts_with("#!") {
        return Ok(());
    }
    let Some(body) = text.strip_prefix("#cloud-config") else {
        return Err(ApiError::validation(format!(
            "{field}: must start with #cloud-config (YAML) or #! (a script)"
        )));
    };
    if !(body.is_empty() || body.starts_with('\n') || body.starts_with("\r\n")) {
        return Err(ApiError::validation(format!(
            "{field}: #cloud-config must be alone on the first line"
        )));
    }
    match serde_yaml::from_str::<serde_yaml::Value>(body) {
        Ok(serde_yaml::Value::Mapping(_)) | Ok(serde_yaml::Value::Null) => Ok(()),
        Ok(_) => Err(ApiError::validation(format!(
            "{field}: #cloud-config must be a YAML mapping"
        ))),
        Err(e) => Err(ApiError::validation(format!(
            "{field}: invalid #cloud-config YAML: {e}"
        ))),
    }
}

/// cloud-init network-config: netplan v2 YAML (`version: 2` at the top).
pub fn validate_network_config(field: &str, text: &str) -> Result<(), ApiError> {
    let value: serde_yaml::Value = serde_yaml::from_str(text)
        .map_err(|e| ApiError::validation(format!("{field}: invalid YAML: {e}")))?;
    // Accept both the bare v2 document and one wrapped in `network:`.
    let doc = value.get("network").unwrap_or(&value);
    match doc.get("version").and_then(|v| v.as_u64()) {
        Some(2) => Ok(()),
        _ => Err(ApiError::validation(format!(
            "{field}: must be netplan v2 YAML with `version: 2`"
        ))),
    }
}

fn validate_ports(prefix: &str, spec: &VmSpec) -> Result<(), ApiError> {
    if spec.ports.is_empty() {
        return Ok(());
    }
    if spec.network.is_some() {
        return Err(ApiError::validation(format!(
            "{prefix}.ports: port forwards need SLIRP networking; remove {prefix}.network or the ports"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        if p.host == 0 || p.guest == 0 {
            return Err(ApiError::validation(format!(
                "{prefix}.ports[{i}]: ports must be 1..65535"
            )));
        }
        if !seen.insert((p.host, p.protocol)) {
            return Err(ApiError::validation(format!(
                "{prefix}.ports[{i}].host: port {} is forwarded twice",
                p.host
            )));
        }
    }
    Ok(())
}

/// A name `ip` and the Linux kernel accept as a network interface name.
pub fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A network spec: a bridge network names a valid host interface. `prefix` is the path
/// of the spec, e.g. `spec`.
pub fn validate_network_spec(prefix: &str, spec: &NetworkSpec) -> Result<(), ApiError> {
    match (spec.network_type, &spec.bridge) {
        (NetworkType::Bridge, None) => Err(ApiError::validation(format!(
            "{prefix}.bridge: required for type bridge"
        ))),
        (_, Some(b)) if !valid_ifname(b) => Err(ApiError::validation(format!(
            "{prefix}.bridge: {b:?} is not a valid interface name (1..15 of a-z A-Z 0-9 - _ .)"
        ))),
        _ => Ok(()),
    }
}

/// The cluster settings' field rules: a valid default pool name, allocation ratios in
/// their ranges. `prefix` is the path of the spec, e.g. `spec`.
pub fn validate_cluster_settings_spec(
    prefix: &str,
    spec: &ClusterSettingsSpec,
) -> Result<(), ApiError> {
    if let Some(p) = &spec.default_pool {
        validate_name(&format!("{prefix}.default_pool"), p)?;
    }
    let ratios = [
        (
            "cpu_allocation_ratio",
            spec.cpu_allocation_ratio,
            AllocationRatio::CPU_RANGE,
        ),
        (
            "memory_allocation_ratio",
            spec.memory_allocation_ratio,
            AllocationRatio::MEMORY_RANGE,
        ),
    ];
    for (field, ratio, (min, max)) in ratios {
        if let Some(AllocationRatio(r)) = ratio {
            if !(r.is_finite() && (min..=max).contains(&r)) {
                return Err(ApiError::validation(format!(
                    "{prefix}.{field}: must be a number from {min} to {max} (got {r})"
                )));
            }
        }
    }
    Ok(())
}

/// Validates a `POST /v1/vms` body.
pub fn validate_create_vm(req: &CreateVmRequest) -> Result<(), ApiError> {
    validate_name("name", &req.name)?;
    validate_vm_spec("spec", &req.spec)?;
    crate::labels::validate_labels("labels", &req.labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::Arch;

    fn spec() -> VmSpec {
        VmSpec::new("http://127.0.0.1:8080/img.qcow2", Arch::Amd64)
    }

    #[test]
    fn validate_cluster_settings_spec_table() {
        let ratios = |cpu: Option<f64>, mem: Option<f64>| ClusterSettingsSpec {
            default_pool: None,
            cpu_allocation_ratio: cpu.map(AllocationRatio),
            memory_allocation_ratio: mem.map(AllocationRatio),
        };
        let cases = [
            (ratios(None, None), None),
            (ratios(Some(8.0), Some(1.5)), None),
            (ratios(Some(0.1), Some(4.0)), None),
            (ratios(Some(64.0), Some(0.1)), None),
            (
                ratios(Some(0.0), None),
                Some("spec.cpu_allocation_ratio: must be a number from 0.1 to 64 (got 0)"),
            ),
            (
                ratios(Some(65.0), None),
                Some("spec.cpu_allocation_ratio: must be a number from 0.1 to 64 (got 65)"),
            ),
            (
                ratios(Some(-1.0), None),
                Some("spec.cpu_allocation_ratio: must be a number from 0.1 to 64 (got -1)"),
            ),
            (
                ratios(None, Some(f64::NAN)),
                Some("spec.memory_allocation_ratio: must be a number from 0.1 to 4 (got NaN)"),
            ),
            (
                ratios(None, Some(4.5)),
                Some("spec.memory_allocation_ratio: must be a number from 0.1 to 4 (got 4.5)"),
            ),
        ];
        for (spec, want) in cases {
            let got = validate_cluster_settings_spec("spec", &spec)
                .err()
                .map(|e| e.message);
            assert_eq!(got.as_deref(), want, "{spec:?}");
        }
        let bad_pool = ClusterSettingsSpec {
            default_pool: Some("Bad Name".into()),
            ..Default::default()
        };
        let err = validate_cluster_settings_spec("spec", &bad_pool).unwrap_err();
        assert!(
            err.message.starts_with("spec.default_pool:"),
            "{}",
            err.message
        );
    }

    #[test]
    fn allocation_ratio_applies_rounding_down() {
        assert_eq!(AllocationRatio(4.0).apply(2), 8);
        assert_eq!(AllocationRatio(1.5).apply(3), 4);
        assert_eq!(AllocationRatio(0.5).apply(8192), 4096);
        assert_eq!(AllocationRatio::DEFAULT_MEMORY.apply(24_000), 24_000);
    }

    #[test]
    fn validate_name_table() {
        let table = [
            ("web-1", true),
            ("a", true),
            ("a-b-c-0", true),
            ("", false),
            ("1web", false),
            ("Web", false),
            ("web_1", false),
            ("web-", false),
            ("-web", false),
            ("web.1", false),
            (&"a".repeat(63), true),
            (&"a".repeat(64), false),
            ("6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11", false),
        ];
        for (name, ok) in table {
            assert_eq!(validate_name("name", name).is_ok(), ok, "{name:?}");
        }
    }

    #[test]
    fn validate_name_uuid_message_says_uuid() {
        let err = validate_name("name", "6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11").unwrap_err();
        assert!(err.message.contains("UUID"), "{}", err.message);
    }

    #[test]
    fn validate_vm_spec_rules_name_field_and_rule() {
        type Mutate = fn(&mut VmSpec);
        let table: &[(Mutate, &str)] = &[
            (|s| s.vcpus = 0, "spec.vcpus: must be 1..128 (got 0)"),
            (|s| s.vcpus = 129, "spec.vcpus: must be 1..128 (got 129)"),
            (
                |s| s.memory_mb = 127,
                "spec.memory_mb: must be 128..524288 (got 127)",
            ),
            (
                |s| s.memory_mb = 524_289,
                "spec.memory_mb: must be 128..524288",
            ),
            (
                |s| s.image_sha256 = Some("abc".into()),
                "spec.image_sha256: must be 64 hex digits",
            ),
            (
                |s| s.image_url = "ftp://x/y".into(),
                "spec.image_url: must be an http://",
            ),
            (
                |s| s.image_url = "http:///y".into(),
                "spec.image_url: \"http:///y\" is not a valid URL",
            ),
            (
                |s| {
                    s.firmware = Some("ovmf".into());
                    s.firmware_id = Some("6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11".into());
                },
                "spec.firmware: mutually exclusive with spec.firmware_id",
            ),
            (
                |s| s.firmware_id = Some("nope".into()),
                "spec.firmware_id: must be a uuid",
            ),
            (
                |s| {
                    s.no_cloud_init = true;
                    s.user_data = Some("#cloud-config\n".into());
                },
                "spec.no_cloud_init: mutually exclusive",
            ),
            (|s| s.disk_gib = Some(0), "spec.disk_gib: must be 1..65536"),
            (
                |s| s.pool = Some("Bad Pool".into()),
                "spec.pool: \"Bad Pool\" is not a valid name",
            ),
            (
                |s| s.stop_timeout_secs = Some(0),
                "spec.stop_timeout_secs: must be 1..3600",
            ),
        ];
        for (mutate, want) in table {
            let mut s = spec();
            mutate(&mut s);
            let err = validate_vm_spec("spec", &s).expect_err(want);
            assert!(
                err.message.starts_with(want),
                "got {:?}, want {want:?}",
                err.message
            );
            assert_eq!(err.code, crate::ErrorCode::ValidationFailed);
        }
    }

    #[test]
    fn validate_vm_spec_accepts_defaults_and_uuid_refs() {
        let mut s = spec();
        assert!(validate_vm_spec("spec", &s).is_ok());
        s.pool = Some("6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11".into());
        s.image_sha256 = Some("a".repeat(64));
        s.user_data = Some("#cloud-config\nhostname: a\n".into());
        s.network_config = Some("network:\n  version: 2\n".into());
        assert!(validate_vm_spec("spec", &s).is_ok());
        s.user_data = Some("#!/bin/sh\necho hi\n".into());
        s.network_config = Some("version: 2\nethernets: {}\n".into());
        assert!(validate_vm_spec("spec", &s).is_ok());
    }

    #[test]
    fn validate_ssh_keys_table() {
        let ed = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB5q alice@laptop".to_owned();
        let many: Vec<String> = (0..33).map(|_| ed.clone()).collect();
        let table: Vec<(Vec<String>, Option<&str>)> = vec![
            (vec![], None),
            (vec![ed.clone()], None),
            (vec!["ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB".into()], None),
            (
                vec!["ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY= x y z".into()],
                None,
            ),
            (many, Some("k: at most 32 keys (got 33)")),
            (
                vec!["rsa AAAAB3NzaC1yc2EAAAADAQAB".into()],
                Some("k[0]: must start with a key type"),
            ),
            (
                vec![ed.clone(), "ssh-ed25519".into()],
                Some("k[1]: the key type must be followed by the base64 key"),
            ),
            (
                vec!["ssh-ed25519 AAAA!!!!AAAAAAAAAAAA".into()],
                Some("k[0]: the key type must be followed"),
            ),
            (
                vec![format!("{ed}\nssh-rsa AAAAB3NzaC1yc2EAAAADAQAB")],
                Some("k[0]: must be one line of printable text"),
            ),
            (
                vec![format!("ssh-ed25519 {}", "A".repeat(17000))],
                Some("k[0]: must be at most 16384 bytes"),
            ),
        ];
        for (keys, want) in table {
            let got = validate_ssh_keys("k", &keys).err().map(|e| e.message);
            match (want, got) {
                (None, None) => {}
                (Some(w), Some(g)) => assert!(g.starts_with(w), "{w:?} vs {g:?}"),
                (w, g) => panic!("{keys:?}: want {w:?}, got {g:?}"),
            }
        }
        let mut spec = spec();
        spec.no_cloud_init = true;
        spec.ssh_authorized_keys = vec![ed];
        let err = validate_vm_spec("spec", &spec).unwrap_err().message;
        assert!(err.contains("spec.ssh_authorized_keys"), "{err}");
    }
}
