//! Everything a boot needs besides the disk, set up right before QEMU starts: the
//! firmware (with the VM's UEFI variable store), the cloud-init seed rebuilt from the
//! task's spec, and the NIC (a tap in the task's bridge, or SLIRP with free host ports).
//! Errors carry the task error code they fail with.

use std::path::Path;

use otherix_api::{ApiError, ErrorCode, VmSpec};

use crate::cloud_init;
use crate::driver::VmTarget;
use crate::error_chain::error_chain;
use crate::firmware::{self, Firmware, FirmwareError};
use crate::network;
use crate::qemu::{BootFirmware, Nic};

/// What [`prepare_boot`] set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSetup {
    pub firmware: BootFirmware,
    pub seed: Option<std::path::PathBuf>,
    pub nic: Nic,
}

impl BootSetup {
    /// The tap device this boot created, if any (to remove when the launch fails).
    pub fn tap(&self) -> Option<&str> {
        match &self.nic {
            Nic::Tap { ifname } => Some(ifname),
            Nic::User { .. } => None,
        }
    }
}

fn firmware_error(e: FirmwareError) -> ApiError {
    let code = match e {
        FirmwareError::Unknown { .. }
        | FirmwareError::WrongArch { .. }
        | FirmwareError::UnknownType { .. }
        | FirmwareError::MissingPath { .. } => ErrorCode::ValidationFailed,
        FirmwareError::FileMissing { .. } => ErrorCode::QemuFailed,
        FirmwareError::Refused { .. } => ErrorCode::FirmwareRefused,
        FirmwareError::CopyVars(..) => ErrorCode::DiskFailed,
    };
    ApiError::new(code, error_chain(&e))
}

/// Resolves and checks the firmware (its files only from `firmware_dirs`); UEFI gets the
/// VM's variable store in `disk_dir`.
pub fn boot_firmware(
    vm: &VmTarget,
    spec: &VmSpec,
    disk_dir: &Path,
    firmware_dirs: &[String],
) -> Result<BootFirmware, ApiError> {
    let firmware = firmware::resolve(spec.arch, vm.firmware.as_ref(), spec.firmware.as_deref())
        .map_err(firmware_error)?;
    let firmware = firmware::confine(firmware, firmware_dirs).map_err(firmware_error)?;
    firmware::check_present(&firmware).map_err(firmware_error)?;
    match firmware {
        Firmware::Bios => Ok(BootFirmware::Bios),
        Firmware::Uefi {
            code,
            vars_template,
            ..
        } => {
            let vars = firmware::ensure_vars(disk_dir, &vars_template).map_err(firmware_error)?;
            Ok(BootFirmware::Pflash { code, vars })
        }
    }
}

/// Sets up firmware, seed and NIC for one boot of `vm` whose disk lives in `disk_dir`.
pub fn prepare_boot(
    vm: &VmTarget,
    spec: &VmSpec,
    disk_dir: &Path,
    firmware_dirs: &[String],
    tap_owner: Option<u32>,
) -> Result<BootSetup, ApiError> {
    let firmware = boot_firmware(vm, spec, disk_dir, firmware_dirs)?;
    let seed = cloud_init::write_seed(disk_dir, vm.vm_id, &vm.name, spec).map_err(|e| {
        ApiError::new(
            ErrorCode::DiskFailed,
            format!("cloud-init seed: {}", error_chain(&e)),
        )
    })?;
    let nic = if vm.bridge.is_empty() {
        network::check_ports_free(&spec.ports)
            .map_err(|e| ApiError::new(ErrorCode::QemuFailed, error_chain(&e)))?;
        Nic::User {
            ports: spec.ports.clone(),
        }
    } else {
        let tap = network::tap_name(vm.vm_id);
        network::create_tap(&tap, &vm.bridge, tap_owner).map_err(|e| {
            ApiError::new(
                ErrorCode::QemuFailed,
                format!(
                    "cannot attach vm {} to bridge {}: {}",
                    vm.name,
                    vm.bridge,
                    error_chain(&e)
                ),
            )
        })?;
        Nic::Tap { ifname: tap }
    };
    Ok(BootSetup {
        firmware,
        seed,
        nic,
    })
}
