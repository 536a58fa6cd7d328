//! VM networking on the host: a tap device per bridged VM (named from the VM's uuid,
//! created with `ip tuntap`, enslaved to the bridge, removed when QEMU is gone), and the
//! check that SLIRP host ports are free before QEMU is asked to forward them.

use otherix_api::manifest::parse::valid_ifname;
use otherix_api::{PortForward, PortProtocol};
use sha2::{Digest, Sha256};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("bridge {0:?} is not a valid interface name")]
    InvalidBridgeName(String),
    #[error(
        "bridge {bridge} does not exist on this node (`ip link show type bridge` does not list it)"
    )]
    BridgeMissing { bridge: String },
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("host port {port}/{proto} on 127.0.0.1 is already in use; spec.ports forwards it to guest port {guest}")]
    PortInUse {
        port: u16,
        proto: &'static str,
        guest: u16,
    },
    #[error("cannot check host port {port}/{proto}")]
    PortCheck {
        port: u16,
        proto: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The VM's tap device: `otx` + 11 hex digits of sha256(uuid) (14 bytes).
pub fn tap_name(vm_id: Uuid) -> String {
    let digest = hex::encode(Sha256::digest(vm_id.as_bytes()));
    format!("otx{}", &digest[..11])
}

/// Asks the kernel over netlink (`ip`), not sysfs: /sys shows the network namespace of
/// whoever mounted it, which is not ours when the agent runs in another namespace.
fn interface_exists(name: &str) -> bool {
    std::process::Command::new("ip")
        .args(["-o", "link", "show", "dev", name])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Names of the bridges in the agent's network namespace.
fn bridge_names() -> Vec<String> {
    let Ok(out) = std::process::Command::new("ip")
        .args(["-o", "link", "show", "type", "bridge"])
        .stdin(std::process::Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    parse_link_names(&String::from_utf8_lossy(&out.stdout))
}

/// Interface names from `ip -o link show` lines (`3: br0: <BROADCAST,...> ...`).
fn parse_link_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
}

fn ip(args: &[&str]) -> Result<(), NetError> {
    let output = std::process::Command::new("ip")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| NetError::Ip {
            args: args.join(" "),
            stderr: format!("cannot run ip: {e}"),
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NetError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Creates (or reuses, after a crash) the VM's tap device and puts it up in `bridge`.
pub fn create_tap(tap: &str, bridge: &str, owner: Option<u32>) -> Result<(), NetError> {
    if !valid_ifname(bridge) {
        return Err(NetError::InvalidBridgeName(bridge.to_string()));
    }
    if !bridge_names().iter().any(|b| b == bridge) {
        return Err(NetError::BridgeMissing {
            bridge: bridge.to_string(),
        });
    }
    if !interface_exists(tap) {
        match owner {
            // QEMU running unprivileged may open only a tap its user owns.
            Some(uid) => ip(&[
                "tuntap",
                "add",
                "dev",
                tap,
                "mode",
                "tap",
                "user",
                &uid.to_string(),
            ])?,
            None => ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?,
        }
    }
    let enslaved = ip(&["link", "set", tap, "master", bridge, "up"]);
    if enslaved.is_err() {
        let _ = remove_tap(tap);
    }
    enslaved
}

/// The TUN/TAP clone device QEMU opens for a tap NIC.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// True when a process of `uid`/`gid` may open a device with this owner and mode for
/// reading and writing (no supplementary groups: QEMU runs without them).
pub fn device_rw_for(mode: u32, owner: (u32, u32), uid: u32, gid: u32) -> bool {
    let rw = |shift: u32| (mode >> shift) & 0o6 == 0o6;
    if owner.0 == uid {
        rw(6)
    } else if owner.1 == gid {
        rw(3)
    } else {
        rw(0)
    }
}

/// Whether `uid`/`gid` can open [`TUN_DEVICE`] (Debian makes it 0666; containers often
/// leave it 0600).
pub fn tun_usable_by(uid: u32, gid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(TUN_DEVICE)
        .is_ok_and(|m| device_rw_for(m.mode(), (m.uid(), m.gid()), uid, gid))
}

/// Removes the tap device if it exists.
pub fn remove_tap(tap: &str) -> Result<(), NetError> {
    if !interface_exists(tap) {
        return Ok(());
    }
    tracing::info!(tap, "removing tap device");
    ip(&["link", "del", tap])
}

/// Removes the VM's tap device if it has one, logging a failure.
pub fn remove_vm_tap(vm_id: Uuid) {
    let tap = tap_name(vm_id);
    if let Err(e) = remove_tap(&tap) {
        tracing::warn!(%vm_id, tap, error = %e, "cannot remove tap device");
    }
}

/// Fails with the first forward whose host port cannot be bound on 127.0.0.1.
pub fn check_ports_free(ports: &[PortForward]) -> Result<(), NetError> {
    for port in ports {
        let (proto, bound) = match port.protocol {
            PortProtocol::Tcp => (
                "tcp",
                std::net::TcpListener::bind(("127.0.0.1", port.host)).map(drop),
            ),
            PortProtocol::Udp => (
                "udp",
                std::net::UdpSocket::bind(("127.0.0.1", port.host)).map(drop),
            ),
        };
        match bound {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(NetError::PortInUse {
                    port: port.host,
                    proto,
                    guest: port.guest,
                })
            }
            Err(source) => {
                return Err(NetError::PortCheck {
                    port: port.host,
                    proto,
                    source,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_rw_for_table() {
        let table = [
            (0o666, (0, 0), 999, 995, true),
            (0o600, (0, 0), 999, 995, false),
            (0o660, (0, 995), 999, 995, true),
            (0o640, (0, 995), 999, 995, false),
            (0o600, (999, 0), 999, 995, true),
            // Owner bits decide for the owner even when others may.
            (0o066, (999, 0), 999, 995, false),
        ];
        for (mode, owner, uid, gid, want) in table {
            assert_eq!(
                device_rw_for(mode, owner, uid, gid),
                want,
                "{mode:o} {owner:?}"
            );
        }
    }

    #[test]
    fn parse_link_names_reads_ip_oneline_output() {
        let text = "3: br0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue\n\
                    7: veth1@if6: <BROADCAST> mtu 1500\n";
        assert_eq!(parse_link_names(text), ["br0", "veth1"]);
    }

    #[test]
    fn tap_name_is_stable_short_and_distinct() {
        let id = Uuid::parse_str("6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11").unwrap();
        let name = tap_name(id);
        assert_eq!(name, tap_name(id));
        assert_eq!(name.len(), 14);
        assert!(name.starts_with("otx"), "{name}");
        assert!(valid_ifname(&name));
        assert_ne!(name, tap_name(Uuid::new_v4()));
    }

    #[test]
    fn create_tap_missing_bridge_names_it() {
        let err = create_tap("otxtest", "otx-no-such-br", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bridge otx-no-such-br does not exist on this node (`ip link show type bridge` does not list it)"
        );
        assert!(matches!(
            create_tap("otxtest", "bad/name", None),
            Err(NetError::InvalidBridgeName(_))
        ));
    }

    #[test]
    fn check_ports_free_reports_the_busy_port() {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = busy.local_addr().unwrap().port();
        let forward = |host, protocol| PortForward {
            host,
            guest: 80,
            protocol,
        };
        let err = check_ports_free(&[forward(port, PortProtocol::Tcp)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("host port {port}/tcp on 127.0.0.1 is already in use; spec.ports forwards it to guest port 80")
        );
        // The same number over UDP is a different port.
        check_ports_free(&[forward(port, PortProtocol::Udp)]).unwrap();
        drop(busy);
        check_ports_free(&[forward(port, PortProtocol::Tcp)]).unwrap();
    }
}
