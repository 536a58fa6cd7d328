//! `otherix firmware list|get|create`: firmware VMs boot with; the built-ins (`seabios`,
//! `ovmf`, `aavmf`) are listed alongside registered ones.

use otherix_api::manifest::FirmwareSpec;
use otherix_api::validate::validate_name;
use otherix_api::CreateObjectRequest;

use super::{CommandError, Ctx};
use crate::cli::{FirmwareCommand, FirmwareCreateArgs, TableFormat, TextFormat};
use crate::output;

/// The `POST /v1/firmware` body of `firmware create` (paths are on the nodes, sent as
/// given).
pub fn create_request(
    a: FirmwareCreateArgs,
) -> Result<CreateObjectRequest<FirmwareSpec>, CommandError> {
    validate_name("name", &a.name)?;
    Ok(CreateObjectRequest {
        name: a.name,
        spec: FirmwareSpec {
            arch: a.arch,
            firmware_type: a.firmware_type.into(),
            code: a.code,
            vars_template: a.vars_template,
        },
        annotations: Default::default(),
    })
}

pub fn run(ctx: &mut Ctx<'_>, cmd: FirmwareCommand) -> Result<(), CommandError> {
    let text = match cmd {
        FirmwareCommand::List { output } => {
            let page = ctx.client.list_firmware()?;
            match output {
                TableFormat::Table => output::table::firmware(&page.value.items),
                TableFormat::Json => output::json::pretty(&page.raw),
            }
        }
        FirmwareCommand::Get { name, output } => {
            let fw = ctx.client.get_firmware(&name)?;
            match output {
                TextFormat::Text => output::view::firmware(&fw.value),
                TextFormat::Json => output::json::pretty(&fw.raw),
            }
        }
        FirmwareCommand::Create(args) => {
            let req = create_request(args)?;
            let fw = ctx.client.create_firmware(&req)?.value;
            output::object_line("firmware", &fw.name, "created") + "\n"
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
    use otherix_api::manifest::FirmwareType;
    use otherix_api::Arch;

    fn create(argv: &[&str]) -> Result<CreateObjectRequest<FirmwareSpec>, String> {
        let mut full = vec!["otherix", "firmware", "create"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::Firmware(FirmwareCommand::Create(a)) => {
                create_request(a).map_err(|e| e.to_string())
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_uefi_with_code_and_vars_maps_into_spec() {
        let req = create(&[
            "edk2",
            "--arch",
            "arm64",
            "--type",
            "uefi",
            "--code",
            "/opt/fw/code.fd",
            "--vars-template",
            "/opt/fw/vars.fd",
        ])
        .unwrap();
        assert_eq!(req.name, "edk2");
        assert_eq!(
            req.spec,
            FirmwareSpec {
                arch: Arch::Arm64,
                firmware_type: FirmwareType::Uefi,
                code: Some("/opt/fw/code.fd".into()),
                vars_template: Some("/opt/fw/vars.fd".into()),
            }
        );
    }

    #[test]
    fn create_flag_rules_table() {
        let table: &[(&[&str], Option<&str>)] = &[
            (&["sb", "--arch", "amd64", "--type", "bios"], None),
            (
                &["uefi", "--arch", "amd64", "--type", "uefi"],
                Some("--code"),
            ),
            (&["x", "--type", "bios"], Some("--arch")),
            (&["x", "--arch", "amd64"], Some("--type")),
            (
                &["x", "--arch", "riscv64", "--type", "bios"],
                Some("--arch"),
            ),
            (
                &["x", "--arch", "amd64", "--type", "coreboot"],
                Some("--type"),
            ),
            (
                &["Bad_Name", "--arch", "amd64", "--type", "bios"],
                Some("validation_failed: name:"),
            ),
        ];
        for (argv, want) in table {
            match (create(argv), want) {
                (Ok(_), None) => {}
                (Err(e), Some(w)) => assert!(e.contains(w), "{argv:?}: {e}"),
                (got, _) => panic!("{argv:?}: {got:?}"),
            }
        }
    }
}
