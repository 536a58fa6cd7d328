//! `otherix vm get`: one VM as a key/value view, the server's JSON, or a YAML manifest.

use super::{CommandError, Ctx};
use crate::cli::{GetFormat, VmGetArgs};
use crate::{output, wire};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub name: String,
    pub format: GetFormat,
}

impl From<VmGetArgs> for Options {
    fn from(a: VmGetArgs) -> Self {
        Options {
            name: a.name,
            format: a.output,
        }
    }
}

pub fn run(ctx: &mut Ctx<'_>, opts: Options) -> Result<(), CommandError> {
    let vm = ctx.client.get_vm(&opts.name)?;
    let text = match opts.format {
        GetFormat::Text => output::view::vm(
            &vm.value,
            wire::restart_pending(&vm.raw),
            wire::field(&vm.raw, "project").as_deref(),
        ),
        GetFormat::Json => output::json::pretty(&vm.raw),
        GetFormat::Yaml => output::yaml::vm_manifest(&vm.value)?,
    };
    ctx.out.write_all(text.as_bytes())?;
    Ok(())
}
