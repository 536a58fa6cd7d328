//! Table tests of the QEMU command line for each arch, accel, firmware, disk and NIC.

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
        console_socket: "/data/vms/x/console.sock".into(),
        serial_log: "/data/vms/x/serial.log".into(),
        seed: None,
        firmware: BootFirmware::Bios,
        nic: Nic::User { ports: Vec::new() },
        run_with_user: None,
        qga_socket: "/data/vms/x/qga.sock".into(),
    }
}

#[test]
fn run_with_user_relaxes_only_elevateprivileges() {
    let mut cfg = config();
    cfg.run_with_user = Some("otherix-qemu".into());
    let argv = argv_string(&cfg);
    assert!(
        argv.contains("-sandbox on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny -run-with user=otherix-qemu -pidfile"),
        "{argv}"
    );
    cfg.run_with_user = Some("bad,user".into());
    assert_eq!(
        build_argv(&cfg).unwrap_err(),
        ArgvError::InvalidUser("bad,user".into())
    );
}

fn argv_string(cfg: &LaunchConfig) -> String {
    let (_, args) = build_argv(cfg).unwrap();
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

const COMMON: &str =
    "-smp 2 -m 512 -nodefaults -no-user-config -display none -no-shutdown -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny \
     -pidfile /data/vms/x/qemu.pid -qmp unix:/data/vms/x/qmp.sock,server=on,wait=off \
     -chardev socket,id=serial0,path=/data/vms/x/console.sock,server=on,wait=off,logfile=/data/vms/x/serial.log,logappend=on \
     -serial chardev:serial0";

const DISK: &str = "-drive file=/pool/vms/x/disk.qcow2,if=none,id=disk0,format=qcow2 \
     -device virtio-blk-pci,drive=disk0,bootindex=0";

const SEED: &str = "-drive file=/pool/vms/x/seed.img,if=none,id=seed0,format=raw,readonly=on \
     -device virtio-blk-pci,drive=seed0";

const QGA: &str = "-chardev socket,id=qga0,path=/data/vms/x/qga.sock,server=on,wait=off \
     -device virtio-serial -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0";

fn uefi(code: &str) -> BootFirmware {
    BootFirmware::Pflash {
        code: code.into(),
        vars: "/pool/vms/x/efivars.fd".into(),
    }
}

#[test]
fn build_argv_full_command_line_per_arch_and_firmware() {
    let mac = mac_for_vm(config().vm_id);
    // Every VM, both arches, ends with the guest agent channel.
    let nic = format!("-netdev user,id=net0 -device virtio-net-pci,netdev=net0,mac={mac} {QGA}");
    let ovmf =
        "-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
                -drive if=pflash,format=raw,unit=1,file=/pool/vms/x/efivars.fd";
    let aavmf =
        "-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd \
                 -drive if=pflash,format=raw,unit=1,file=/pool/vms/x/efivars.fd";
    let head = "-name guest=web-1,debug-threads=on";
    type Mutate = fn(&mut LaunchConfig);
    let table: Vec<(Mutate, &str, String)> = vec![
        (
            |_| {},
            "qemu-system-x86_64",
            format!("{head} -machine q35 -accel tcg -cpu max {COMMON} {DISK} {nic}"),
        ),
        (
            |c| c.accel = Accel::Kvm,
            "qemu-system-x86_64",
            format!("{head} -machine q35 -accel kvm -cpu host {COMMON} {DISK} {nic}"),
        ),
        (
            |c| c.seed = Some("/pool/vms/x/seed.img".into()),
            "qemu-system-x86_64",
            format!("{head} -machine q35 -accel tcg -cpu max {COMMON} {DISK} {SEED} {nic}"),
        ),
        (
            |c| {
                c.firmware = uefi("/usr/share/OVMF/OVMF_CODE_4M.fd");
                c.seed = Some("/pool/vms/x/seed.img".into());
            },
            "qemu-system-x86_64",
            format!(
                "{head} -machine q35 -accel tcg -cpu max {COMMON} {ovmf} {DISK} {SEED} {nic}"
            ),
        ),
        (
            |c| {
                c.arch = Arch::Arm64;
                c.firmware = uefi("/usr/share/AAVMF/AAVMF_CODE.fd");
            },
            "qemu-system-aarch64",
            format!(
                "{head} -machine virt,gic-version=max -accel tcg -cpu max {COMMON} {aavmf} {DISK} {nic}"
            ),
        ),
        (
            |c| {
                c.arch = Arch::Arm64;
                c.accel = Accel::Kvm;
                c.firmware = uefi("/usr/share/AAVMF/AAVMF_CODE.fd");
                c.seed = Some("/pool/vms/x/seed.img".into());
            },
            "qemu-system-aarch64",
            format!(
                "{head} -machine virt,gic-version=max -accel kvm -cpu host {COMMON} {aavmf} {DISK} {SEED} {nic}"
            ),
        ),
    ];
    for (mutate, want_program, want) in table {
        let mut cfg = config();
        mutate(&mut cfg);
        let (program, _) = build_argv(&cfg).unwrap();
        assert_eq!(program, want_program);
        let want = want.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(argv_string(&cfg), want);
    }
}

#[test]
fn build_argv_variants_table() {
    type Mutate = fn(&mut LaunchConfig);
    let table: &[(Mutate, &str)] = &[
        (
            |c| {
                c.disk_format = DiskImageFormat::Raw;
                c.disk_path = "/p/disk.raw".into();
            },
            "-drive file=/p/disk.raw,if=none,id=disk0,format=raw",
        ),
        (|c| c.vcpus = 1, "-smp 1 -m 512"),
        (|c| c.memory_mb = 4096, "-smp 2 -m 4096"),
        (
            |c| {
                c.nic = Nic::User {
                    ports: vec![
                        PortForward {
                            host: 8080,
                            guest: 80,
                            protocol: PortProtocol::Tcp,
                        },
                        PortForward {
                            host: 5353,
                            guest: 53,
                            protocol: PortProtocol::Udp,
                        },
                    ],
                }
            },
            "-netdev user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:127.0.0.1:5353-:53 -device",
        ),
        (
            |c| {
                c.nic = Nic::Tap {
                    ifname: "otx0123456789a".into(),
                }
            },
            "-netdev tap,id=net0,ifname=otx0123456789a,script=no,downscript=no -device virtio-net-pci,netdev=net0,mac=52:54:00:",
        ),
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
            |c| c.console_socket = "/a,b/console.sock".into(),
            ArgvError::CommaInPath("/a,b/console.sock".into()),
        ),
        (
            |c| c.serial_log = "/a,b/serial.log".into(),
            ArgvError::CommaInPath("/a,b/serial.log".into()),
        ),
        (
            |c| c.seed = Some("/a,b/seed.img".into()),
            ArgvError::CommaInPath("/a,b/seed.img".into()),
        ),
        (
            |c| c.qga_socket = "/a,b/qga.sock".into(),
            ArgvError::CommaInPath("/a,b/qga.sock".into()),
        ),
        (
            |c| {
                c.firmware = BootFirmware::Pflash {
                    code: "/fw,x/code.fd".into(),
                    vars: "/v.fd".into(),
                }
            },
            ArgvError::CommaInPath("/fw,x/code.fd".into()),
        ),
        (|c| c.arch = Arch::Arm64, ArgvError::Arm64NeedsUefi),
        (
            |c| {
                c.nic = Nic::Tap {
                    ifname: "tap,x".into(),
                }
            },
            ArgvError::InvalidTapName("tap,x".into()),
        ),
        (
            |c| {
                c.nic = Nic::Tap {
                    ifname: "a-very-long-tap-name".into(),
                }
            },
            ArgvError::InvalidTapName("a-very-long-tap-name".into()),
        ),
    ];
    for (mutate, want) in table {
        let mut cfg = config();
        mutate(&mut cfg);
        assert_eq!(build_argv(&cfg).unwrap_err(), *want);
    }
}

#[test]
fn hostfwd_tcp_and_udp() {
    let tcp = PortForward {
        host: 2222,
        guest: 22,
        protocol: PortProtocol::Tcp,
    };
    assert_eq!(hostfwd(&tcp), "hostfwd=tcp:127.0.0.1:2222-:22");
    let udp = PortForward {
        protocol: PortProtocol::Udp,
        ..tcp
    };
    assert_eq!(hostfwd(&udp), "hostfwd=udp:127.0.0.1:2222-:22");
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
