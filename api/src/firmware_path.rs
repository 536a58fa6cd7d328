//! Where firmware files may come from: the directories an agent serves (`--firmware-dir`,
//! default [`DEFAULT_FIRMWARE_DIRS`]). A pure, lexical check shared by otherixd (which
//! cannot see the nodes' files) and the agent (which additionally resolves symlinks before
//! checking, so a link cannot lead out of a served directory).

/// Firmware directories of a Debian/Ubuntu host: OVMF, AAVMF, SeaBIOS and QEMU's own.
pub const DEFAULT_FIRMWARE_DIRS: &[&str] = &[
    "/usr/share/OVMF",
    "/usr/share/AAVMF",
    "/usr/share/seabios",
    "/usr/share/qemu",
];

/// Why a firmware path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FirmwarePathError {
    #[error("{0:?} is not an absolute path")]
    NotAbsolute(String),
    #[error("{0:?} has a `.`, `..` or empty component")]
    NotNormal(String),
    #[error("{path:?} is outside the firmware directories ({})", dirs.join(", "))]
    Outside { path: String, dirs: Vec<String> },
}

/// The `/`-separated components of an absolute, normal path (no `.`, `..` or empty
/// component; one trailing `/` allowed).
fn normal_components(path: &str) -> Option<Vec<&str>> {
    let rest = path.strip_prefix('/')?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let parts: Vec<&str> = rest.split('/').collect();
    parts
        .iter()
        .all(|p| !p.is_empty() && *p != "." && *p != "..")
        .then_some(parts)
}

/// Checks that `path` is an absolute, normal path strictly inside one of `dirs` (compared
/// component by component, so `/usr/share/OVMF-evil/x` is not inside `/usr/share/OVMF`).
pub fn check_firmware_path(path: &str, dirs: &[String]) -> Result<(), FirmwarePathError> {
    if !path.starts_with('/') {
        return Err(FirmwarePathError::NotAbsolute(path.to_string()));
    }
    let parts =
        normal_components(path).ok_or_else(|| FirmwarePathError::NotNormal(path.to_string()))?;
    let inside = dirs.iter().any(|dir| {
        normal_components(dir).is_some_and(|d| parts.len() > d.len() && parts[..d.len()] == d[..])
    });
    if inside {
        Ok(())
    } else {
        Err(FirmwarePathError::Outside {
            path: path.to_string(),
            dirs: dirs.to_vec(),
        })
    }
}

/// [`DEFAULT_FIRMWARE_DIRS`] as owned strings.
pub fn default_firmware_dirs() -> Vec<String> {
    DEFAULT_FIRMWARE_DIRS
        .iter()
        .map(|d| d.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_firmware_path_table() {
        let dirs = default_firmware_dirs();
        let outside = |p: &str| {
            Err(FirmwarePathError::Outside {
                path: p.into(),
                dirs: dirs.clone(),
            })
        };
        let table: Vec<(&str, Result<(), FirmwarePathError>)> = vec![
            ("/usr/share/OVMF/OVMF_CODE_4M.fd", Ok(())),
            ("/usr/share/AAVMF/AAVMF_VARS.fd", Ok(())),
            ("/usr/share/qemu/sub/dir/x.fd", Ok(())),
            ("/etc/shadow", outside("/etc/shadow")),
            ("/usr/share/OVMF", outside("/usr/share/OVMF")),
            (
                "/usr/share/OVMF-evil/x.fd",
                outside("/usr/share/OVMF-evil/x.fd"),
            ),
            ("/usr/share/ovmf/x.fd", outside("/usr/share/ovmf/x.fd")),
            (
                "/usr/share/OVMF/../../../etc/shadow",
                Err(FirmwarePathError::NotNormal(
                    "/usr/share/OVMF/../../../etc/shadow".into(),
                )),
            ),
            (
                "/usr/share/OVMF/./x.fd",
                Err(FirmwarePathError::NotNormal(
                    "/usr/share/OVMF/./x.fd".into(),
                )),
            ),
            (
                "/usr/share//OVMF/x.fd",
                Err(FirmwarePathError::NotNormal("/usr/share//OVMF/x.fd".into())),
            ),
            (
                "usr/share/OVMF/x.fd",
                Err(FirmwarePathError::NotAbsolute("usr/share/OVMF/x.fd".into())),
            ),
        ];
        for (path, want) in table {
            assert_eq!(check_firmware_path(path, &dirs), want, "{path}");
        }
    }

    #[test]
    fn check_firmware_path_names_the_allowed_dirs() {
        let err =
            check_firmware_path("/etc/shadow", &["/srv/fw".into(), "/opt/fw/".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"/etc/shadow\" is outside the firmware directories (/srv/fw, /opt/fw/)"
        );
        assert_eq!(
            check_firmware_path("/opt/fw/a.fd", &["/opt/fw/".into()]),
            Ok(())
        );
        assert!(check_firmware_path("/x", &[]).is_err());
        // A root dir allows everything normal (an operator's explicit choice).
        assert_eq!(check_firmware_path("/etc/x", &["/".into()]), Ok(()));
    }
}
