//! Builds the QEMU command line from a [`LaunchConfig`]: a pure function, table-tested.
//!
//! Nothing user-typed reaches the command line unvalidated: the VM name is a validated DNS
//! label (checked again here), paths are the agent's own, numbers are numbers.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use otherix_api::Arch;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::host::{qemu_binary, Accel};

/// Format of the disk QEMU opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskImageFormat {
    Qcow2,
    Raw,
}

impl DiskImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskImageFormat::Qcow2 => "qcow2",
            DiskImageFormat::Raw => "raw",
        }
    }
}

/// Everything one QEMU launch needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchConfig {
    pub vm_id: Uuid,
    /// A validated DNS label; used in `-name guest=`.
    pub vm_name: String,
    pub arch: Arch,
    pub accel: Accel,
    pub vcpus: u32,
    pub memory_mb: u32,
    pub disk_path: PathBuf,
    pub disk_format: DiskImageFormat,
    pub pidfile: PathBuf,
    pub qmp_socket: PathBuf,
    pub serial_log: PathBuf,
}

/// Why a [`LaunchConfig`] cannot be turned into a command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgvError {
    #[error("vm name {0:?} is not a DNS label")]
    InvalidName(String),
    #[error("path {0:?} contains a comma, which QEMU option syntax cannot carry")]
    CommaInPath(PathBuf),
    #[error("arch {0} is not supported by this agent yet")]
    UnsupportedArch(Arch),
}

/// A stable locally administered MAC for a VM: `52:54:00` plus 3 bytes of sha256(uuid).
pub fn mac_for_vm(vm_id: Uuid) -> String {
    let digest = Sha256::digest(vm_id.as_bytes());
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        digest[0], digest[1], digest[2]
    )
}

fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && !name.ends_with('-')
}

fn path_opt(prefix: &str, path: &Path, suffix: &str) -> Result<OsString, ArgvError> {
    if path.as_os_str().as_encoded_bytes().contains(&b',') {
        return Err(ArgvError::CommaInPath(path.to_path_buf()));
    }
    let mut s = OsString::from(prefix);
    s.push(path);
    s.push(suffix);
    Ok(s)
}

/// The program and arguments that launch `cfg` detached (`-daemonize`).
pub fn build_argv(cfg: &LaunchConfig) -> Result<(String, Vec<OsString>), ArgvError> {
    if !is_dns_label(&cfg.vm_name) {
        return Err(ArgvError::InvalidName(cfg.vm_name.clone()));
    }
    let (machine, cpu) = match (cfg.arch, cfg.accel) {
        (Arch::Amd64, Accel::Tcg) => ("q35", "max"),
        (Arch::Amd64, Accel::Kvm) => ("q35", "host"),
        (Arch::Arm64, _) => return Err(ArgvError::UnsupportedArch(cfg.arch)),
    };
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    push(&["-name", &format!("guest={},debug-threads=on", cfg.vm_name)]);
    push(&[
        "-machine",
        machine,
        "-accel",
        cfg.accel.as_str(),
        "-cpu",
        cpu,
    ]);
    push(&[
        "-smp",
        &cfg.vcpus.to_string(),
        "-m",
        &cfg.memory_mb.to_string(),
    ]);
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    push(&["-sandbox", "on", "-daemonize", "-pidfile"]);
    args.push(cfg.pidfile.clone().into_os_string());
    args.push("-qmp".into());
    args.push(path_opt("unix:", &cfg.qmp_socket, ",server=on,wait=off")?);
    args.push("-chardev".into());
    args.push(path_opt("file,id=serial0,path=", &cfg.serial_log, "")?);
    args.extend(["-serial", "chardev:serial0", "-drive"].map(OsString::from));
    let drive_suffix = format!(",if=none,id=disk0,format={}", cfg.disk_format.as_str());
    args.push(path_opt("file=", &cfg.disk_path, &drive_suffix)?);
    let mac = mac_for_vm(cfg.vm_id);
    args.extend(
        [
            "-device",
            "virtio-blk-pci,drive=disk0,bootindex=0",
            "-netdev",
            "user,id=net0",
            "-device",
            &format!("virtio-net-pci,netdev=net0,mac={mac}"),
        ]
        .map(OsString::from),
    );
    Ok((qemu_binary(cfg.arch).to_string(), args))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LaunchConfig {
        LaunchConfig {
            vm_id: Uuid::parse_str("6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11").unwrap(),
            vm_name: "web-1".into(),
            arch: Arch::Amd64,
            accel: Accel::Tcg,
            vcpus: 2,
            memory_mb: 512,
            disk_path: "/pool/vms/x/disk.qcow2".into(),
            disk_format: DiskImageFormat::Qcow2,
            pidfile: "/data/vms/x/qemu.pid".into(),
            qmp_socket: "/data/vms/x/qmp.sock".into(),
            serial_log: "/data/vms/x/serial.log".into(),
        }
    }

    fn argv_string(cfg: &LaunchConfig) -> String {
        let (_, args) = build_argv(cfg).unwrap();
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn build_argv_amd64_tcg_full_command_line() {
        let (program, _) = build_argv(&config()).unwrap();
        assert_eq!(program, "qemu-system-x86_64");
        let mac = mac_for_vm(config().vm_id);
        assert_eq!(
            argv_string(&config()),
            format!(
                "-name guest=web-1,debug-threads=on -machine q35 -accel tcg -cpu max -smp 2 -m 512 \
                 -nodefaults -no-user-config -display none -sandbox on -daemonize \
                 -pidfile /data/vms/x/qemu.pid -qmp unix:/data/vms/x/qmp.sock,server=on,wait=off \
                 -chardev file,id=serial0,path=/data/vms/x/serial.log -serial chardev:serial0 \
                 -drive file=/pool/vms/x/disk.qcow2,if=none,id=disk0,format=qcow2 \
                 -device virtio-blk-pci,drive=disk0,bootindex=0 -netdev user,id=net0 \
                 -device virtio-net-pci,netdev=net0,mac={mac}"
            )
        );
    }

    #[test]
    fn build_argv_variants_table() {
        type Mutate = fn(&mut LaunchConfig);
        let table: &[(Mutate, &str)] = &[
            (|c| c.accel = Accel::Kvm, "-accel kvm -cpu host"),
            (|c| c.accel = Accel::Tcg, "-accel tcg -cpu max"),
            (
                |c| {
                    c.disk_format = DiskImageFormat::Raw;
                    c.disk_path = "/p/disk.raw".into();
                },
                "-drive file=/p/disk.raw,if=none,id=disk0,format=raw",
            ),
            (|c| c.vcpus = 1, "-smp 1 -m 512"),
            (|c| c.memory_mb = 4096, "-smp 2 -m 4096"),
        ];
        for (mutate, want) in table {
            let mut cfg = config();
            mutate(&mut cfg);
            let got = argv_string(&cfg);
            assert!(got.contains(want), "{want:?} not in {got:?}");
        }
    }

    #[test]
    fn build_argv_bad_inputs_rejected() {
        type Mutate = fn(&mut LaunchConfig);
        let table: &[(Mutate, ArgvError)] = &[
            (
                |c| c.vm_name = "web,1".into(),
                ArgvError::InvalidName("web,1".into()),
            ),
            (
                |c| c.vm_name = "Web".into(),
                ArgvError::InvalidName("Web".into()),
            ),
            (
                |c| c.disk_path = "/a,b/disk.qcow2".into(),
                ArgvError::CommaInPath("/a,b/disk.qcow2".into()),
            ),
            (
                |c| c.arch = Arch::Arm64,
                ArgvError::UnsupportedArch(Arch::Arm64),
            ),
        ];
        for (mutate, want) in table {
            let mut cfg = config();
            mutate(&mut cfg);
            assert_eq!(build_argv(&cfg).unwrap_err(), *want);
        }
    }

    #[test]
    fn mac_for_vm_same_uuid_is_stable_and_local() {
        let id = Uuid::new_v4();
        let mac = mac_for_vm(id);
        assert_eq!(mac, mac_for_vm(id));
        assert!(mac.starts_with("52:54:00:"), "{mac}");
        assert_eq!(mac.len(), 17);
        assert_ne!(mac, mac_for_vm(Uuid::new_v4()));
    }
}
