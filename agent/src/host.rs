//! Facts about this node that the agent registers with: host arch, runnable guest arches,
//! accelerator choice (with a KVM probe), vCPU and memory capacity.

use std::path::{Path, PathBuf};
use std::time::Duration;

use otherix_api::Arch;

/// Accelerator QEMU runs guests with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What the operator asked for with `--accel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM only when a probe guest really runs under KVM, else TCG.
    Auto,
    Kvm,
    Tcg,
}

/// The host architecture in otherix terms, from the compile target.
pub fn host_arch() -> Option<Arch> {
    arch_from_rust(std::env::consts::ARCH)
}

/// Maps a Rust `target_arch` name to an otherix arch.
pub fn arch_from_rust(arch: &str) -> Option<Arch> {
    match arch {
        "x86_64" => Some(Arch::Amd64),
        "aarch64" => Some(Arch::Arm64),
        _ => None,
    }
}

/// The QEMU system emulator binary for a guest arch.
pub fn qemu_binary(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "qemu-system-x86_64",
        Arch::Arm64 => "qemu-system-aarch64",
    }
}

/// Finds an executable on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Guest arches this node can really launch: the QEMU system emulator is installed and
/// so is the arch's default firmware (amd64: SeaBIOS, arm64: AAVMF).
pub fn guest_arches() -> Vec<Arch> {
    [Arch::Amd64, Arch::Arm64]
        .into_iter()
        .filter(|a| find_on_path(qemu_binary(*a)).is_some())
        .filter(|a| crate::firmware::default_present(*a))
        .collect()
}

/// Usable vCPUs of this host.
pub fn vcpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// `MemTotal` from `/proc/meminfo`, in MiB (0 when unreadable).
pub fn memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| parse_meminfo_total_mb(&s))
        .unwrap_or(0)
}

fn parse_meminfo_total_mb(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Resolves `--accel`: `auto` picks KVM only if `/dev/kvm` opens read-write and a probe
/// guest executes code under KVM within a few seconds (on hosts where KVM hangs it does not).
pub async fn resolve_accel(choice: AccelChoice) -> Accel {
    match choice {
        AccelChoice::Kvm => Accel::Kvm,
        AccelChoice::Tcg => Accel::Tcg,
        AccelChoice::Auto => {
            if kvm_device_usable() && probe_kvm_runs_guest().await {
                Accel::Kvm
            } else {
                Accel::Tcg
            }
        }
    }
}

fn kvm_device_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// A 512-byte x86 boot sector that writes 1 to the isa-debug-exit port (QEMU exits 3).
fn probe_boot_sector() -> Vec<u8> {
    // mov al, 1; out 0xf4, al; hlt; jmp $-3
    let code = [0xB0, 0x01, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD];
    let mut sector = vec![0u8; 512];
    sector[..code.len()].copy_from_slice(&code);
    sector[510] = 0x55;
    sector[511] = 0xAA;
    sector
}

/// Boots [`probe_boot_sector`] with `-accel kvm`; true only if the guest ran it. Only
/// amd64 hosts are probed; elsewhere auto means TCG.
async fn probe_kvm_runs_guest() -> bool {
    const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
    if host_arch() != Some(Arch::Amd64) {
        return false;
    }
    let Some(qemu) = find_on_path(qemu_binary(Arch::Amd64)) else {
        return false;
    };
    let image = std::env::temp_dir().join(format!("otherix-kvm-probe-{}.img", std::process::id()));
    if std::fs::write(&image, probe_boot_sector()).is_err() {
        return false;
    }
    let mut drive = std::ffi::OsString::from("format=raw,if=ide,file=");
    drive.push(&image);
    let child = tokio::process::Command::new(qemu)
        .args([
            "-accel",
            "kvm",
            "-machine",
            "pc",
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-display", "none", "-m", "16"])
        .args([
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-drive",
        ])
        .arg(drive)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let ok = match child {
        Ok(mut child) => match tokio::time::timeout(PROBE_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) => status.code() == Some(3),
            _ => {
                let _ = child.kill().await;
                false
            }
        },
        Err(_) => false,
    };
    let _ = std::fs::remove_file(&image);
    tracing::info!(kvm_works = ok, "probed KVM with a boot-sector guest");
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_from_rust_known_names_map() {
        assert_eq!(arch_from_rust("x86_64"), Some(Arch::Amd64));
        assert_eq!(arch_from_rust("aarch64"), Some(Arch::Arm64));
        assert_eq!(arch_from_rust("riscv64"), None);
    }

    #[test]
    fn parse_meminfo_total_kib_gives_mib() {
        let meminfo = "MemTotal:       16384000 kB\nMemFree:  1 kB\n";
        assert_eq!(parse_meminfo_total_mb(meminfo), Some(16000));
        assert_eq!(parse_meminfo_total_mb("nothing"), None);
    }

    #[test]
    fn probe_boot_sector_has_signature() {
        let s = probe_boot_sector();
        assert_eq!(s.len(), 512);
        assert_eq!(&s[510..], &[0x55, 0xAA]);
    }
}
