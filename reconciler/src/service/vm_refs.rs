//! What a VM spec points at: [`resolve_vm_refs`] checks a VM spec's `network` and
//! `firmware`/`firmware_id` and resolves them for dispatch; the firmware spec checks the
//! firmware routes share.

use otherix_api::firmware_path::check_firmware_path;
use otherix_api::manifest::{FirmwareSpec, FirmwareType, NetworkSpec, NetworkType};
use otherix_api::{ApiError, Arch, VmSpec};

use super::ServiceError;
use crate::model::{ResolvedFirmware, VmRecord};
use crate::store::{ObjectTable, Store, StoredObject};

/// What a VM spec's `network` and `firmware`/`firmware_id` resolved to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmAttachments {
    pub bridge: Option<String>,
    pub firmware: Option<ResolvedFirmware>,
}

impl VmAttachments {
    /// Stores the resolution on a VM about to be created (both fields are immutable).
    pub fn apply_to(self, vm: &mut VmRecord) {
        vm.bridge = self.bridge;
        vm.firmware = self.firmware;
    }
}

/// Checks that `spec.network` names an existing bridge network and that `spec.firmware`
/// (name) or `spec.firmware_id` (uuid) names an existing firmware for the VM's arch.
/// 400 `validation_failed` naming the field otherwise. Call before creating a VM.
pub async fn resolve_vm_refs(store: &Store, spec: &VmSpec) -> Result<VmAttachments, ServiceError> {
    let mut out = VmAttachments::default();
    if let Some(net_ref) = &spec.network {
        let net: StoredObject<NetworkSpec> = store
            .object(ObjectTable::Networks, net_ref)
            .await?
            .ok_or_else(|| {
                ApiError::validation(format!("spec.network: no network named {net_ref}"))
            })?;
        if net.spec.network_type != NetworkType::Bridge {
            return Err(ApiError::validation(format!(
                "spec.network: network {} is type {}; only bridge networks can be attached",
                net.name,
                network_type_str(net.spec.network_type)
            ))
            .into());
        }
        out.bridge = Some(net.spec.bridge.clone().ok_or_else(|| {
            ApiError::validation(format!(
                "spec.network: network {} has no bridge interface",
                net.name
            ))
        })?);
    }
    let firmware = match (&spec.firmware, &spec.firmware_id) {
        (Some(name), _) => Some(("spec.firmware", name, "named")),
        (None, Some(id)) => Some(("spec.firmware_id", id, "with id")),
        (None, None) => None,
    };
    if let Some((field, wanted, how)) = firmware {
        let fw = store
            .object::<FirmwareSpec>(ObjectTable::Firmware, wanted)
            .await?
            .filter(|f| {
                if field == "spec.firmware" {
                    f.name == *wanted
                } else {
                    f.id.to_string() == wanted.to_lowercase()
                }
            })
            .ok_or_else(|| ApiError::validation(format!("{field}: no firmware {how} {wanted}")))?;
        if fw.spec.arch != spec.arch {
            return Err(ApiError::validation(format!(
                "{field}: firmware {} is for {}, the VM is {}",
                fw.name, fw.spec.arch, spec.arch
            ))
            .into());
        }
        out.firmware = Some(ResolvedFirmware {
            name: fw.name,
            firmware_type: firmware_type_str(fw.spec.firmware_type).to_owned(),
            code: fw.spec.code,
            vars_template: fw.spec.vars_template,
        });
    }
    Ok(out)
}

fn network_type_str(t: NetworkType) -> &'static str {
    match t {
        NetworkType::Bridge => "bridge",
        NetworkType::Nat => "nat",
        NetworkType::Isolated => "isolated",
    }
}

fn firmware_type_str(t: FirmwareType) -> &'static str {
    match t {
        FirmwareType::Bios => "bios",
        FirmwareType::Uefi => "uefi",
    }
}

/// A firmware spec the server accepts: UEFI names its code and vars template, BIOS
/// (SeaBIOS) is amd64 only.
pub fn validate_firmware_spec(spec: &FirmwareSpec) -> Result<(), ApiError> {
    match spec.firmware_type {
        FirmwareType::Uefi => {
            for (field, value) in [("code", &spec.code), ("vars_template", &spec.vars_template)] {
                match value {
                    None => {
                        return Err(ApiError::validation(format!(
                            "spec.{field}: required for type uefi"
                        )))
                    }
                    Some(p) if !p.starts_with('/') => {
                        return Err(ApiError::validation(format!(
                            "spec.{field}: must be an absolute path on the nodes (got {p:?})"
                        )))
                    }
                    Some(_) => {}
                }
            }
            Ok(())
        }
        FirmwareType::Bios if spec.arch != Arch::Amd64 => Err(ApiError::validation(format!(
            "spec.type: bios firmware boots amd64 guests only (spec.arch is {})",
            spec.arch
        ))),
        FirmwareType::Bios => Ok(()),
    }
}

/// A UEFI firmware's files must lie inside `allowed` (the nodes' firmware dirs): a
/// Firmware entity must not make a host file (a key, another VM's disk) a guest's flash.
pub fn validate_firmware_paths(spec: &FirmwareSpec, allowed: &[String]) -> Result<(), ApiError> {
    for (field, value) in [("code", &spec.code), ("vars_template", &spec.vars_template)] {
        if let Some(path) = value {
            check_firmware_path(path, allowed)
                .map_err(|e| ApiError::validation(format!("spec.{field}: {e}")))?;
        }
    }
    Ok(())
}
