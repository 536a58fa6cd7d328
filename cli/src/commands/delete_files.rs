//! `otherix delete -f PATH [--wait]`: deletes what the manifests declare, VMs first (and
//! their delete tasks finished before the pools, networks and projects they used), then
//! firmware, networks, pools, projects (a VM in the project its document names): `vm/web-1 deleted task=<id>`, `vm/web-1 not found` (not an error).
//! Cluster settings cannot be deleted: `cluster/cluster skipped`.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use otherix_api::manifest::Kind;
use otherix_manifests::{delete_all, DeleteVerb, ObjectRef};

use super::apply::load;
use super::{wait_timeout, CommandError, Ctx};
use crate::cli::{DeleteFilesArgs, DEFAULT_WAIT_TIMEOUT};
use crate::http_target::HttpTarget;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub path: PathBuf,
    pub wait: Option<Duration>,
}

impl From<DeleteFilesArgs> for Options {
    fn from(a: DeleteFilesArgs) -> Self {
        Options {
            wait: wait_timeout(&a.wait),
            path: a.filename,
        }
    }
}

pub fn run(ctx: &mut Ctx<'_>, opts: Options, stdin: &mut dyn Read) -> Result<(), CommandError> {
    let loaded = load(&opts.path, stdin)?;
    let refs: Vec<ObjectRef> = loaded.objects.iter().map(ObjectRef::of).collect();
    for r in refs.iter().filter(|r| r.kind == Kind::ClusterSettings) {
        writeln!(ctx.out, "{r} skipped")?;
    }
    let timeout = opts.wait.unwrap_or_else(|| {
        crate::cli::parse_wait_timeout(DEFAULT_WAIT_TIMEOUT).expect("valid default")
    });
    let out = &mut *ctx.out;
    let mut target = HttpTarget::new(ctx.client, timeout, &mut *ctx.err);
    let mut write_err = None;
    let report = delete_all(&refs, &mut target, DeleteVerb::Deleted, &mut |line| {
        if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            write_err.get_or_insert(e);
        }
    });
    if let Some(e) = write_err {
        return Err(e.into());
    }
    if let Some(failure) = report.failure {
        return Err(failure.error.into());
    }
    if opts.wait.is_some() {
        for id in report.lines.iter().filter_map(|l| l.task_id()) {
            if !report.waited.contains(&id) {
                target.wait(id)?;
            }
        }
    }
    Ok(())
}
