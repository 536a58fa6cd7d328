//! `otherix network create|list|get|delete`: networks VMs attach to (bridge only).

use otherix_api::manifest::parse::valid_ifname;
use otherix_api::manifest::{NetworkSpec, NetworkType};
use otherix_api::validate::validate_name;
use otherix_api::CreateObjectRequest;

use super::{CommandError, Ctx};
use crate::cli::{NetworkCommand, NetworkCreateArgs, TableFormat, TextFormat};
use crate::output;

/// `network create`, checked: `--bridge` only with `--type bridge`, a valid name and
/// interface name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    pub request: CreateObjectRequest<NetworkSpec>,
}

impl TryFrom<NetworkCreateArgs> for CreateOptions {
    type Error = CommandError;
    fn try_from(a: NetworkCreateArgs) -> Result<Self, CommandError> {
        let network_type = NetworkType::from(a.network_type);
        if network_type != NetworkType::Bridge && a.bridge.is_some() {
            return Err(CommandError::Usage(format!(
                "--bridge only applies to --type bridge (got --type {})",
                output::network_type(network_type)
            )));
        }
        validate_name("name", &a.name)?;
        if let Some(b) = a.bridge.as_deref().filter(|b| !valid_ifname(b)) {
            return Err(CommandError::Usage(format!(
                "--bridge {b:?} is not a valid interface name (1..15 of a-z A-Z 0-9 - _ .)"
            )));
        }
        Ok(CreateOptions {
            request: CreateObjectRequest {
                name: a.name,
                spec: NetworkSpec {
                    network_type,
                    bridge: a.bridge,
                },
                annotations: Default::default(),
            },
        })
    }
}

pub fn run(ctx: &mut Ctx<'_>, cmd: NetworkCommand) -> Result<(), CommandError> {
    let text = match cmd {
        NetworkCommand::Create(args) => {
            let opts = CreateOptions::try_from(args)?;
            let net = ctx.client.create_network(&opts.request)?.value;
            output::object_line("network", &net.name, "created") + "\n"
        }
        NetworkCommand::List { output } => {
            let page = ctx.client.list_networks()?;
            match output {
                TableFormat::Table => output::table::networks(&page.value.items),
                TableFormat::Json => output::json::pretty(&page.raw),
            }
        }
        NetworkCommand::Get { name, output } => {
            let net = ctx.client.get_network(&name)?;
            match output {
                TextFormat::Text => output::view::network(&net.value),
                TextFormat::Json => output::json::pretty(&net.raw),
            }
        }
        NetworkCommand::Delete { name } => {
            ctx.client.delete_network(&name)?;
            output::object_line("network", &name, "deleted") + "\n"
        }
    };
    ctx.out.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn create(argv: &[&str]) -> Result<CreateOptions, String> {
        let mut full = vec!["otherix", "network", "create"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::Network(NetworkCommand::Create(a)) => {
                CreateOptions::try_from(a).map_err(|e| e.to_string())
            }
            other => panic!("{other:?}"),
        }
    }

    /// The spec a command line gives, or a fragment of its error.
    type Want = Result<(NetworkType, Option<&'static str>), &'static str>;

    #[test]
    fn create_flag_rules_table() {
        let table: &[(&[&str], Want)] = &[
            (
                &["lan", "--type", "bridge", "--bridge", "br0"],
                Ok((NetworkType::Bridge, Some("br0"))),
            ),
            (&["out", "--type", "nat"], Ok((NetworkType::Nat, None))),
            (
                &["lab", "--type", "isolated"],
                Ok((NetworkType::Isolated, None)),
            ),
            (&["lan", "--type", "bridge"], Err("--bridge")),
            (&["lan"], Err("--type")),
            (&["lan", "--type", "vlan"], Err("--type")),
            (
                &["out", "--type", "nat", "--bridge", "br0"],
                Err("--bridge only applies to --type bridge (got --type nat)"),
            ),
            (
                &[
                    "lan",
                    "--type",
                    "bridge",
                    "--bridge",
                    "a-very-long-bridge-name",
                ],
                Err("not a valid interface name"),
            ),
            (&["LAN", "--type", "nat"], Err("validation_failed: name:")),
        ];
        for (argv, want) in table {
            match (create(argv), want) {
                (Ok(o), Ok((t, b))) => {
                    assert_eq!(o.request.spec.network_type, *t, "{argv:?}");
                    assert_eq!(o.request.spec.bridge.as_deref(), *b, "{argv:?}");
                    assert_eq!(o.request.name, argv[0]);
                }
                (Err(e), Err(w)) => assert!(e.contains(w), "{argv:?}: {e}"),
                (got, _) => panic!("{argv:?}: {got:?}"),
            }
        }
    }
}
