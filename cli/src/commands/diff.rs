//! `otherix diff -f PATH`: the unified diff between each live object (projected as a
//! manifest) and the file's object. Exit 0 when nothing differs, 1 when something does,
//! 2 on any error (`main` maps [`CommandError::Differences`] and [`CommandError::Diff`]).

use std::io::Read;
use std::path::Path;

use otherix_manifests::diff_objects;

use super::apply::load;
use super::{CommandError, Ctx};
use crate::http_target::HttpTarget;

pub fn run(ctx: &mut Ctx<'_>, path: &Path, stdin: &mut dyn Read) -> Result<(), CommandError> {
    match diff(ctx, path, stdin) {
        Ok(false) => Ok(()),
        Ok(true) => Err(CommandError::Differences),
        Err(e) => Err(CommandError::Diff(Box::new(e))),
    }
}

/// Prints the diffs; `true` when any object differs.
fn diff(ctx: &mut Ctx<'_>, path: &Path, stdin: &mut dyn Read) -> Result<bool, CommandError> {
    let loaded = load(path, stdin)?;
    let mut sink = std::io::sink();
    let mut target = HttpTarget::new(ctx.client, Default::default(), &mut sink);
    let diffs = diff_objects(&loaded.objects, &mut target, loaded.source.as_deref())?;
    let mut differ = false;
    for d in diffs.iter().filter(|d| !d.is_same()) {
        ctx.out.write_all(d.diff.as_bytes())?;
        differ = true;
    }
    ctx.out.flush()?;
    Ok(differ)
}
