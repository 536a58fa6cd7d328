//! Firmware choice per VM: the server's resolved `FirmwareRef`, else a built-in name from
//! `spec.firmware` (`seabios`, `ovmf`, `aavmf`), else the arch default (amd64: SeaBIOS, arm64:
//! AAVMF). UEFI firmware boots from two pflash drives: the read-only code image and a per-VM
//! copy of the variable-store template (`POOL_PATH/vms/<vm_id>/efivars.fd`), created once
//! and kept across boots so the guest's boot entries survive; deleting the VM removes it.
//! Firmware files are taken only from the directories the agent serves (`--firmware-dir`):
//! [`confine`] refuses a path outside them, before and after resolving symlinks.

use std::path::{Path, PathBuf};

use otherix_api::firmware_path::{check_firmware_path, FirmwarePathError};
use otherix_api::proto::FirmwareRef;
use otherix_api::Arch;

/// The per-VM UEFI variable store in the VM's disk dir.
pub const EFI_VARS: &str = "efivars.fd";

/// Built-in firmware files on Debian/Ubuntu hosts.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
pub const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";
/// Where QEMU's SeaBIOS may live (QEMU finds it itself; the agent only checks presence).
pub const SEABIOS_CANDIDATES: &[&str] = &[
    "/usr/share/seabios/bios-256k.bin",
    "/usr/share/qemu/bios-256k.bin",
];

#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error("firmware {name:?} is not a built-in (seabios, ovmf, aavmf) and the server sent no firmware details")]
    Unknown { name: String },
    #[error("firmware {name} is {kind} firmware, which cannot boot an {arch} guest")]
    WrongArch {
        name: String,
        kind: &'static str,
        arch: Arch,
    },
    #[error("firmware {name} has type {kind:?}; expected bios or uefi")]
    UnknownType { name: String, kind: String },
    #[error("firmware {name} names no {what} file")]
    MissingPath { name: String, what: &'static str },
    #[error("firmware {name}: {what} {path} does not exist on this node")]
    FileMissing {
        name: String,
        what: &'static str,
        path: PathBuf,
    },
    #[error("firmware {name}: {what} refused")]
    Refused {
        name: String,
        what: &'static str,
        #[source]
        source: FirmwarePathError,
    },
    #[error("cannot create the UEFI variable store {0} from its template")]
    CopyVars(PathBuf, #[source] std::io::Error),
}

/// What a VM boots with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// QEMU's built-in SeaBIOS (amd64 only): no pflash drives.
    Bios,
    Uefi {
        name: String,
        code: PathBuf,
        vars_template: PathBuf,
    },
}

fn builtin(name: &str, arch: Arch) -> Result<Firmware, FirmwareError> {
    let uefi = |code: &str, vars: &str| Firmware::Uefi {
        name: name.to_string(),
        code: code.into(),
        vars_template: vars.into(),
    };
    let (firmware, for_arch) = match name {
        "seabios" => (Firmware::Bios, Arch::Amd64),
        "ovmf" => (uefi(OVMF_CODE, OVMF_VARS), Arch::Amd64),
        "aavmf" => (uefi(AAVMF_CODE, AAVMF_VARS), Arch::Arm64),
        _ => {
            return Err(FirmwareError::Unknown {
                name: name.to_string(),
            })
        }
    };
    if for_arch != arch {
        let kind = if for_arch == Arch::Amd64 {
            "amd64"
        } else {
            "arm64"
        };
        return Err(FirmwareError::WrongArch {
            name: name.to_string(),
            kind,
            arch,
        });
    }
    Ok(firmware)
}

fn from_ref(fw: &FirmwareRef, arch: Arch) -> Result<Firmware, FirmwareError> {
    match fw.r#type.as_str() {
        "bios" if arch == Arch::Amd64 => Ok(Firmware::Bios),
        "bios" => Err(FirmwareError::WrongArch {
            name: fw.name.clone(),
            kind: "bios",
            arch,
        }),
        "uefi" => {
            let path = |value: &str, what| {
                if value.is_empty() {
                    Err(FirmwareError::MissingPath {
                        name: fw.name.clone(),
                        what,
                    })
                } else {
                    Ok(PathBuf::from(value))
                }
            };
            Ok(Firmware::Uefi {
                name: fw.name.clone(),
                code: path(&fw.code, "code")?,
                vars_template: path(&fw.vars_template, "vars template")?,
            })
        }
        // A reference with no type but a built-in name: resolve it locally.
        "" => builtin(&fw.name, arch),
        other => Err(FirmwareError::UnknownType {
            name: fw.name.clone(),
            kind: other.to_string(),
        }),
    }
}

/// The firmware a VM boots with: the server's reference wins, then `spec.firmware` as a
/// built-in name, then the arch default.
pub fn resolve(
    arch: Arch,
    server_ref: Option<&FirmwareRef>,
    spec_name: Option<&str>,
) -> Result<Firmware, FirmwareError> {
    match (server_ref, spec_name) {
        (Some(fw), _) => from_ref(fw, arch),
        (None, Some(name)) => builtin(name, arch),
        (None, None) => Ok(default_for(arch)),
    }
}

/// amd64: SeaBIOS; arm64: AAVMF.
pub fn default_for(arch: Arch) -> Firmware {
    match arch {
        Arch::Amd64 => Firmware::Bios,
        Arch::Arm64 => builtin("aavmf", Arch::Arm64).expect("aavmf is arm64"),
    }
}

/// True when the arch's default firmware files are on this node.
pub fn default_present(arch: Arch) -> bool {
    match default_for(arch) {
        Firmware::Bios => SEABIOS_CANDIDATES.iter().any(|p| Path::new(p).is_file()),
        Firmware::Uefi {
            code,
            vars_template,
            ..
        } => code.is_file() && vars_template.is_file(),
    }
}

/// Checks the firmware's files exist, so a missing one fails the task with its path.
pub fn check_present(firmware: &Firmware) -> Result<(), FirmwareError> {
    let Firmware::Uefi {
        name,
        code,
        vars_template,
    } = firmware
    else {
        return Ok(());
    };
    for (what, path) in [("code", code), ("vars template", vars_template)] {
        if !path.is_file() {
            return Err(FirmwareError::FileMissing {
                name: name.clone(),
                what,
                path: path.clone(),
            });
        }
    }
    Ok(())
}

/// Confines a UEFI firmware's files to `dirs` (canonical directories): each path must lie
/// inside one of them as given and again after symlinks are resolved. Returns the firmware
/// with canonical paths; BIOS (QEMU's own SeaBIOS) needs no files.
pub fn confine(firmware: Firmware, dirs: &[String]) -> Result<Firmware, FirmwareError> {
    let Firmware::Uefi {
        name,
        code,
        vars_template,
    } = firmware
    else {
        return Ok(firmware);
    };
    let one = |what: &'static str, path: &Path| -> Result<PathBuf, FirmwareError> {
        let refused = |source| FirmwareError::Refused {
            name: name.clone(),
            what,
            source,
        };
        let text = path.to_string_lossy();
        check_firmware_path(&text, dirs).map_err(refused)?;
        let canonical = path
            .canonicalize()
            .map_err(|_| FirmwareError::FileMissing {
                name: name.clone(),
                what,
                path: path.to_path_buf(),
            })?;
        check_firmware_path(&canonical.to_string_lossy(), dirs).map_err(refused)?;
        Ok(canonical)
    };
    let code = one("code", &code)?;
    let vars_template = one("vars template", &vars_template)?;
    Ok(Firmware::Uefi {
        name,
        code,
        vars_template,
    })
}

/// The firmware dirs as the agent serves them: canonical when they exist (a dir that does
/// not exist is kept as given; nothing can be inside it).
pub fn canonical_dirs(dirs: &[PathBuf]) -> Vec<String> {
    dirs.iter()
        .map(|d| {
            d.canonicalize()
                .unwrap_or_else(|_| d.clone())
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// The VM's UEFI variable store, copied from `template` on first use and kept afterwards.
pub fn ensure_vars(disk_dir: &Path, template: &Path) -> Result<PathBuf, FirmwareError> {
    let vars = disk_dir.join(EFI_VARS);
    if vars.is_file() {
        return Ok(vars);
    }
    let partial = disk_dir.join(format!(".{EFI_VARS}.partial"));
    let copy = || -> std::io::Result<()> {
        std::fs::create_dir_all(disk_dir)?;
        std::fs::copy(template, &partial)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&partial, &vars)
    };
    copy().map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        FirmwareError::CopyVars(vars.clone(), e)
    })?;
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Case<'a> = (
        Arch,
        Option<&'a FirmwareRef>,
        Option<&'a str>,
        Result<Firmware, &'a str>,
    );

    fn uefi_ref(name: &str, code: &str, vars: &str) -> FirmwareRef {
        FirmwareRef {
            name: name.into(),
            r#type: "uefi".into(),
            code: code.into(),
            vars_template: vars.into(),
        }
    }

    fn uefi(name: &str, code: &str, vars: &str) -> Firmware {
        Firmware::Uefi {
            name: name.into(),
            code: code.into(),
            vars_template: vars.into(),
        }
    }

    #[test]
    fn resolve_table() {
        let custom = uefi_ref("mine", "/fw/code.fd", "/fw/vars.fd");
        let bios_ref = FirmwareRef {
            name: "seabios".into(),
            r#type: "bios".into(),
            ..Default::default()
        };
        let half = uefi_ref("half", "/c.fd", "");
        let untyped_ovmf = FirmwareRef {
            name: "ovmf".into(),
            ..Default::default()
        };
        let table: Vec<Case> = vec![
            (Arch::Amd64, None, None, Ok(Firmware::Bios)),
            (
                Arch::Arm64,
                None,
                None,
                Ok(uefi("aavmf", AAVMF_CODE, AAVMF_VARS)),
            ),
            (Arch::Amd64, None, Some("seabios"), Ok(Firmware::Bios)),
            (
                Arch::Amd64,
                None,
                Some("ovmf"),
                Ok(uefi("ovmf", OVMF_CODE, OVMF_VARS)),
            ),
            (
                Arch::Arm64,
                None,
                Some("aavmf"),
                Ok(uefi("aavmf", AAVMF_CODE, AAVMF_VARS)),
            ),
            (
                Arch::Arm64,
                Some(&custom),
                Some("ovmf"),
                Ok(uefi("mine", "/fw/code.fd", "/fw/vars.fd")),
            ),
            (Arch::Amd64, Some(&bios_ref), None, Ok(Firmware::Bios)),
            (
                Arch::Amd64,
                Some(&untyped_ovmf),
                None,
                Ok(uefi("ovmf", OVMF_CODE, OVMF_VARS)),
            ),
            (
                Arch::Arm64,
                Some(&bios_ref),
                None,
                Err("firmware seabios is bios firmware, which cannot boot an arm64 guest"),
            ),
            (
                Arch::Arm64,
                None,
                Some("ovmf"),
                Err("firmware ovmf is amd64 firmware, which cannot boot an arm64 guest"),
            ),
            (
                Arch::Amd64,
                None,
                Some("edk2"),
                Err("firmware \"edk2\" is not a built-in (seabios, ovmf, aavmf) and the server sent no firmware details"),
            ),
            (
                Arch::Amd64,
                Some(&half),
                None,
                Err("firmware half names no vars template file"),
            ),
        ];
        for (arch, server_ref, name, want) in table {
            let got = resolve(arch, server_ref, name).map_err(|e| e.to_string());
            assert_eq!(
                got,
                want.map_err(str::to_string),
                "{arch} {server_ref:?} {name:?}"
            );
        }
    }

    #[test]
    fn confine_refuses_outside_dotdot_and_escaping_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let fw = dir.path().join("fw");
        std::fs::create_dir(&fw).unwrap();
        std::fs::write(fw.join("code.fd"), b"c").unwrap();
        std::fs::write(fw.join("vars.fd"), b"v").unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), fw.join("link.fd")).unwrap();
        let dirs = canonical_dirs(std::slice::from_ref(&fw));
        let p = |name: &str| fw.join(name).display().to_string();
        let ok = confine(uefi("mine", &p("code.fd"), &p("vars.fd")), &dirs).unwrap();
        assert_eq!(
            ok,
            uefi(
                "mine",
                &format!("{}/code.fd", dirs[0]),
                &format!("{}/vars.fd", dirs[0])
            )
        );
        let refused = |code: &str| {
            confine(uefi("mine", code, &p("vars.fd")), &dirs)
                .map_err(|e| crate::error_chain::error_chain(&e))
                .unwrap_err()
        };
        assert!(refused("/etc/shadow").contains("outside the firmware directories"));
        assert!(refused(&p("../secret")).contains("`..`"));
        let escaped = refused(&p("link.fd"));
        assert!(
            escaped.contains("firmware mine: code refused") && escaped.contains("secret"),
            "{escaped}"
        );
        assert_eq!(confine(Firmware::Bios, &[]).unwrap(), Firmware::Bios);
    }

    #[test]
    fn check_present_names_missing_file() {
        assert!(check_present(&Firmware::Bios).is_ok());
        let err = check_present(&uefi("x", "/no/code.fd", "/no/vars.fd")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "firmware x: code /no/code.fd does not exist on this node"
        );
    }

    #[test]
    fn ensure_vars_copies_once_and_keeps_guest_changes() {
        let dir = tempfile::tempdir().unwrap();
        let template = dir.path().join("VARS.fd");
        std::fs::write(&template, b"template").unwrap();
        let disk_dir = dir.path().join("vms/x");
        let vars = ensure_vars(&disk_dir, &template).unwrap();
        assert_eq!(vars, disk_dir.join(EFI_VARS));
        assert_eq!(std::fs::read(&vars).unwrap(), b"template");
        std::fs::write(&vars, b"guest wrote boot entries").unwrap();
        ensure_vars(&disk_dir, &template).unwrap();
        assert_eq!(std::fs::read(&vars).unwrap(), b"guest wrote boot entries");
        let missing = ensure_vars(&dir.path().join("vms/y"), &dir.path().join("none"));
        assert!(matches!(missing, Err(FirmwareError::CopyVars(..))));
    }
}
