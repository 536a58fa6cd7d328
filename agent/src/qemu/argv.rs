//! Builds the QEMU command line from a [`LaunchConfig`]: a pure function, table-tested.
//!
//! Nothing user-typed reaches the command line unvalidated: the VM name is a validated DNS
//! label (checked again here), paths are the agent's own, numbers are numbers.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use otherix_api::{Arch, PortForward, PortProtocol};
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
    /// The serial port's unix socket (`otherix vm console`); QEMU listens on it and
    /// records everything the guest writes in `serial_log` too.
    pub console_socket: PathBuf,
    pub serial_log: PathBuf,
    /// The cloud-init seed image, attached read-only as a second virtio disk.
    pub seed: Option<PathBuf>,
    pub firmware: BootFirmware,
    pub nic: Nic,
    /// QEMU starts as root and switches to this user itself (`-run-with user=`), which
    /// needs `elevateprivileges=allow`: only for a tap NIC on a host whose `/dev/net/tun`
    /// the QEMU user cannot open. `None`: the agent starts QEMU as the user already (or
    /// QEMU runs as the agent's user) under the full [`SANDBOX`].
    pub run_with_user: Option<String>,
    /// The guest agent's unix socket (a virtio-serial port `org.qemu.guest_agent.0`).
    pub qga_socket: PathBuf,
}

/// Firmware as QEMU sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootFirmware {
    /// QEMU's built-in SeaBIOS (amd64).
    Bios,
    /// UEFI from two pflash drives: read-only code and the VM's own variable store.
    Pflash { code: PathBuf, vars: PathBuf },
}

/// The VM's one NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nic {
    /// QEMU user-mode networking (SLIRP) with host port forwards on 127.0.0.1.
    User { ports: Vec<PortForward> },
    /// A tap device the agent created and enslaved to a bridge.
    Tap { ifname: String },
}

/// Why a [`LaunchConfig`] cannot be turned into a command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgvError {
    #[error("vm name {0:?} is not a DNS label")]
    InvalidName(String),
    #[error("path {0:?} contains a comma, which QEMU option syntax cannot carry")]
    CommaInPath(PathBuf),
    #[error("arm64 guests boot only with UEFI firmware")]
    Arm64NeedsUefi,
    #[error("user name {0:?} cannot be passed to QEMU")]
    InvalidUser(String),
    #[error("tap device name {0:?} is not a valid interface name")]
    InvalidTapName(String),
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

fn is_user_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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

/// The seccomp sandbox QEMU runs in: no obsolete syscalls, no setuid/setgid, no
/// fork/exec, no scheduler or CPU affinity changes.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// [`SANDBOX`] minus `elevateprivileges=deny`, for QEMU that drops root itself.
pub const SANDBOX_RUN_WITH: &str =
    "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny";

/// The program and arguments that launch `cfg` (see [`crate::qemu::process::launch`]).
pub fn build_argv(cfg: &LaunchConfig) -> Result<(String, Vec<OsString>), ArgvError> {
    if !is_dns_label(&cfg.vm_name) {
        return Err(ArgvError::InvalidName(cfg.vm_name.clone()));
    }
    let (machine, cpu) = match (cfg.arch, cfg.accel) {
        (Arch::Amd64, Accel::Tcg) => ("q35", "max"),
        (Arch::Amd64, Accel::Kvm) => ("q35", "host"),
        (Arch::Arm64, Accel::Tcg) => ("virt,gic-version=max", "max"),
        (Arch::Arm64, Accel::Kvm) => ("virt,gic-version=max", "host"),
    };
    if cfg.arch == Arch::Arm64 && cfg.firmware == BootFirmware::Bios {
        return Err(ArgvError::Arm64NeedsUefi);
    }
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
    // A guest poweroff leaves QEMU alive in run state `shutdown` instead of exiting, so
    // the agent can tell it from a crash (see `crate::guest_power`).
    push(&["-no-shutdown"]);
    match &cfg.run_with_user {
        None => push(&["-sandbox", SANDBOX]),
        Some(user) => {
            if !is_user_name(user) {
                return Err(ArgvError::InvalidUser(user.clone()));
            }
            push(&[
                "-sandbox",
                SANDBOX_RUN_WITH,
                "-run-with",
                &format!("user={user}"),
            ])
        }
    }
    push(&["-pidfile"]);
    args.push(cfg.pidfile.clone().into_os_string());
    args.push("-qmp".into());
    args.push(path_opt("unix:", &cfg.qmp_socket, ",server=on,wait=off")?);
    // The serial port is a listening socket (one client at a time: the agent's console
    // hub) whose log file records the guest's output whether or not anyone is attached.
    args.push("-chardev".into());
    let mut serial = path_opt(
        "socket,id=serial0,path=",
        &cfg.console_socket,
        ",server=on,wait=off",
    )?;
    serial.push(path_opt(",logfile=", &cfg.serial_log, ",logappend=on")?);
    args.push(serial);
    args.extend(["-serial", "chardev:serial0"].map(OsString::from));
    if let BootFirmware::Pflash { code, vars } = &cfg.firmware {
        args.push("-drive".into());
        args.push(path_opt(
            "if=pflash,format=raw,unit=0,readonly=on,file=",
            code,
            "",
        )?);
        args.push("-drive".into());
        args.push(path_opt("if=pflash,format=raw,unit=1,file=", vars, "")?);
    }
    args.push("-drive".into());
    let drive_suffix = format!(",if=none,id=disk0,format={}", cfg.disk_format.as_str());
    args.push(path_opt("file=", &cfg.disk_path, &drive_suffix)?);
    args.extend(["-device", "virtio-blk-pci,drive=disk0,bootindex=0"].map(OsString::from));
    if let Some(seed) = &cfg.seed {
        args.push("-drive".into());
        args.push(path_opt(
            "file=",
            seed,
            ",if=none,id=seed0,format=raw,readonly=on",
        )?);
        args.extend(["-device", "virtio-blk-pci,drive=seed0"].map(OsString::from));
    }
    args.push("-netdev".into());
    args.push(netdev_arg(&cfg.nic)?.into());
    let mac = mac_for_vm(cfg.vm_id);
    args.extend(["-device", &format!("virtio-net-pci,netdev=net0,mac={mac}")].map(OsString::from));
    // The guest agent channel: a virtio-serial port qemu-ga finds by name.
    args.push("-chardev".into());
    args.push(path_opt(
        "socket,id=qga0,path=",
        &cfg.qga_socket,
        ",server=on,wait=off",
    )?);
    args.extend(
        [
            "-device",
            "virtio-serial",
            "-device",
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ]
        .map(OsString::from),
    );
    Ok((qemu_binary(cfg.arch).to_string(), args))
}

/// `hostfwd=tcp:127.0.0.1:HOST-:GUEST` for one port forward.
pub fn hostfwd(port: &PortForward) -> String {
    let proto = match port.protocol {
        PortProtocol::Tcp => "tcp",
        PortProtocol::Udp => "udp",
    };
    format!("hostfwd={proto}:127.0.0.1:{}-:{}", port.host, port.guest)
}

fn netdev_arg(nic: &Nic) -> Result<String, ArgvError> {
    match nic {
        Nic::User { ports } => {
            let mut arg = "user,id=net0".to_string();
            for port in ports {
                arg.push(',');
                arg.push_str(&hostfwd(port));
            }
            Ok(arg)
        }
        Nic::Tap { ifname } => {
            let valid = (1..=15).contains(&ifname.len())
                && ifname
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err(ArgvError::InvalidTapName(ifname.clone()));
            }
            Ok(format!(
                "tap,id=net0,ifname={ifname},script=no,downscript=no"
            ))
        }
    }
}

#[cfg(test)]
#[path = "argv_tests.rs"]
mod tests;
