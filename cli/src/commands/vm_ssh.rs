//! `otherix vm ssh NAME [-l USER] [-i FILE] [-- CMD...]`: runs the system's `ssh` against
//! the VM. [`ssh_route`] (pure, table-tested) picks where port 22 is: on a bridge network,
//! the guest's first IPv4 address as its guest agent reports it; else a `--port HOST:22`
//! forward, which QEMU listens for on the node's 127.0.0.1 (so that route works on the
//! node itself). Each VM gets its own known_hosts entry (`HostKeyAlias=otherix-<id>`, new
//! keys accepted on first use), so re-created VMs reusing a port do not trip over each
//! other's host keys. The `ssh` process replaces this one: its exit status is the result.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

use otherix_api::{PortProtocol, Vm, VmPhase};

use super::{CommandError, Ctx};
use crate::cli::VmSshArgs;

/// Where to reach a VM's SSH server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshRoute {
    pub host: String,
    pub port: u16,
}

/// Port 22 of `vm`: its bridge address (the first IPv4 the guest agent reported, else the
/// first address), else its TCP forward of guest port 22. The error says what to change.
pub fn ssh_route(vm: &Vm) -> Result<SshRoute, String> {
    if vm.status.phase != VmPhase::Running {
        return Err(format!(
            "vm {} is {}; ssh needs it running",
            vm.name, vm.status.phase
        ));
    }
    if vm.spec.network.is_some() {
        let addresses: Vec<&str> = vm
            .status
            .addresses
            .iter()
            .map(|a| a.split('/').next().unwrap_or(a))
            .collect();
        let pick = addresses
            .iter()
            .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
            .or(addresses.first());
        if let Some(address) = pick {
            return Ok(SshRoute {
                host: (*address).to_owned(),
                port: 22,
            });
        }
    }
    if let Some(fwd) = vm
        .spec
        .ports
        .iter()
        .find(|p| p.guest == 22 && p.protocol == PortProtocol::Tcp)
    {
        return Ok(SshRoute {
            host: "127.0.0.1".to_owned(),
            port: fwd.host,
        });
    }
    if vm.spec.network.is_some() {
        return Err(format!(
            "vm {} has no address yet: its guest agent has not reported one (is qemu-guest-agent running in the guest?)",
            vm.name
        ));
    }
    Err(format!(
        "vm {} has no SSH route: attach it to a bridge network (--network) or forward port 22 (--port 2222:22)",
        vm.name
    ))
}

/// The `ssh` arguments for `route`.
pub fn ssh_argv(vm: &Vm, route: &SshRoute, args: &VmSshArgs) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec![
        "-p".into(),
        route.port.to_string().into(),
        "-o".into(),
        format!("HostKeyAlias=otherix-{}", vm.id).into(),
        "-o".into(),
        "StrictHostKeyChecking=accept-new".into(),
    ];
    if let Some(user) = &args.user {
        argv.extend(["-l".into(), user.into()]);
    }
    if let Some(identity) = &args.identity {
        argv.extend(["-i".into(), identity.clone().into_os_string()]);
    }
    argv.push(route.host.clone().into());
    if !args.command.is_empty() {
        argv.push("--".into());
        argv.extend(args.command.iter().map(OsString::from));
    }
    argv
}

pub fn run(ctx: &mut Ctx<'_>, args: VmSshArgs) -> Result<(), CommandError> {
    let vm = ctx.client.get_vm(&args.name)?.value;
    let route = ssh_route(&vm).map_err(CommandError::Ssh)?;
    let argv = ssh_argv(&vm, &route, &args);
    ctx.err.flush()?;
    // Only returns if ssh could not be started.
    let e = Command::new("ssh").args(&argv).exec();
    Err(CommandError::Ssh(format!("cannot run ssh: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use otherix_api::PortForward;

    fn vm(network: Option<&str>, addresses: &[&str], ports: &[(u16, u16, PortProtocol)]) -> Vm {
        let mut vm = crate::output::fixtures::vm();
        vm.status.phase = VmPhase::Running;
        vm.spec.network = network.map(str::to_owned);
        vm.status.addresses = addresses.iter().map(|a| a.to_string()).collect();
        vm.spec.ports = ports
            .iter()
            .map(|&(host, guest, protocol)| PortForward {
                host,
                guest,
                protocol,
            })
            .collect();
        vm
    }

    #[test]
    fn ssh_route_table() {
        use PortProtocol::{Tcp, Udp};
        let route = |h: &str, p: u16| {
            Ok(SshRoute {
                host: h.to_owned(),
                port: p,
            })
        };
        let table: Vec<(Vm, Result<SshRoute, &str>)> = vec![
            (
                vm(Some("br0"), &["fd00::5/64", "192.168.1.7/24"], &[]),
                route("192.168.1.7", 22),
            ),
            (vm(Some("br0"), &["fd00::5/64"], &[]), route("fd00::5", 22)),
            (
                vm(Some("br0"), &[], &[(2222, 22, Tcp)]),
                route("127.0.0.1", 2222),
            ),
            (vm(Some("br0"), &[], &[]), Err("has no address yet")),
            (
                vm(None, &["10.0.2.15/24"], &[(2222, 22, Tcp)]),
                route("127.0.0.1", 2222),
            ),
            (
                vm(None, &[], &[(2222, 22, Udp), (8080, 80, Tcp)]),
                Err("has no SSH route"),
            ),
            (vm(None, &[], &[]), Err("--port 2222:22")),
        ];
        for (vm, want) in table {
            let got = ssh_route(&vm);
            match want {
                Ok(r) => assert_eq!(
                    got,
                    Ok(r),
                    "{:?} {:?}",
                    vm.spec.network,
                    vm.status.addresses
                ),
                Err(text) => assert!(got.as_ref().unwrap_err().contains(text), "{got:?}"),
            }
        }
        let mut stopped = vm(None, &[], &[(2222, 22, Tcp)]);
        stopped.status.phase = VmPhase::Stopped;
        assert!(ssh_route(&stopped).unwrap_err().contains("is stopped"));
    }

    #[test]
    fn ssh_argv_has_port_alias_user_identity_and_command() {
        let vm = vm(None, &[], &[(2222, 22, PortProtocol::Tcp)]);
        let route = ssh_route(&vm).unwrap();
        let args = VmSshArgs {
            name: vm.name.clone(),
            user: Some("debian".into()),
            identity: Some("/k/id".into()),
            command: vec!["uname".into(), "-a".into()],
        };
        let argv: Vec<String> = ssh_argv(&vm, &route, &args)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let alias = format!("HostKeyAlias=otherix-{}", vm.id);
        assert_eq!(
            argv,
            [
                "-p",
                "2222",
                "-o",
                &alias,
                "-o",
                "StrictHostKeyChecking=accept-new",
                "-l",
                "debian",
                "-i",
                "/k/id",
                "127.0.0.1",
                "--",
                "uname",
                "-a",
            ]
        );
    }
}
