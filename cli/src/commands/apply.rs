//! `otherix create -f PATH [--wait] [--watch [--prune]]`: applies manifests (a file, a
//! directory's `*.yaml`/`*.yml`, or `-` for stdin) as server-side upserts, dependencies
//! first (projects before the VMs in them), one `<kind>/<name> created|configured|
//! unchanged [task=<id>]` line per object (`vm/<project>/<name>` for a VM whose document
//! names its `metadata.project`; it is sent to that project). Nothing is sent unless every document loads. Objects from a directory carry its
//! source annotation (its canonical path), so `--watch --prune` can tell what it owns.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use otherix_api::manifest::Kind;
use otherix_api::Object;
use otherix_manifests::{
    apply_all, load_path, load_stdin, run_watch, source_id, Error as ManifestsError, StopSignal,
    WatchEvent, WatchOptions,
};

use super::{wait_timeout, CommandError, Ctx};
use crate::cli::{ApplyArgs, DEFAULT_WAIT_TIMEOUT};
use crate::http_target::HttpTarget;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub path: PathBuf,
    pub wait: Option<Duration>,
    pub watch: bool,
    pub prune: bool,
}

impl From<ApplyArgs> for Options {
    fn from(a: ApplyArgs) -> Self {
        Options {
            wait: wait_timeout(&a.wait),
            path: a.filename,
            watch: a.watch,
            prune: a.prune,
        }
    }
}

/// What `-f PATH` declares, and the source annotation its objects get (directories only).
pub struct Loaded {
    pub objects: Vec<Object>,
    pub source: Option<String>,
}

/// Loads `-f PATH` (`-` reads `stdin`); an empty result is an error.
pub fn load(path: &Path, stdin: &mut dyn Read) -> Result<Loaded, CommandError> {
    let (parsed, source) = if path.as_os_str() == "-" {
        let mut text = String::new();
        stdin
            .read_to_string(&mut text)
            .map_err(|source| ManifestsError::Read {
                path: "stdin".into(),
                source,
            })?;
        (load_stdin(&text)?, None)
    } else {
        let parsed = load_path(path)?;
        let source = if path.is_dir() {
            Some(source_id(path)?)
        } else {
            None
        };
        (parsed, source)
    };
    if parsed.is_empty() {
        return Err(ManifestsError::NoObjects {
            path: path.display().to_string(),
        }
        .into());
    }
    Ok(Loaded {
        objects: parsed.into_iter().map(|p| p.object).collect(),
        source,
    })
}

fn default_wait() -> Duration {
    crate::cli::parse_wait_timeout(DEFAULT_WAIT_TIMEOUT).expect("valid default")
}

pub fn run(ctx: &mut Ctx<'_>, opts: Options, stdin: &mut dyn Read) -> Result<(), CommandError> {
    if opts.watch {
        return watch(ctx, &opts);
    }
    let loaded = load(&opts.path, stdin)?;
    let timeout = opts.wait.unwrap_or_else(default_wait);
    let mut target = HttpTarget::new(ctx.client, timeout, &mut *ctx.err);
    let report = apply_all(&loaded.objects, &mut target, loaded.source.as_deref());
    for line in &report.lines {
        writeln!(ctx.out, "{line}")?;
    }
    ctx.out.flush()?;
    if let Some(failure) = report.failure {
        return Err(failure.error.into());
    }
    if opts.wait.is_some() {
        for line in report.lines.iter().filter(|l| l.task_id.is_some()) {
            let task = target.wait(line.task_id.expect("filtered"))?;
            let phase = match line.kind {
                Kind::Vm => match &line.project {
                    Some(p) => ctx.client.in_project(p).get_vm(&line.name)?,
                    None => ctx.client.get_vm(&line.name)?,
                }
                .value
                .status
                .phase
                .to_string(),
                _ => task.status.to_string(),
            };
            writeln!(ctx.out, "{} {phase} task={}", line.reference(), task.id)?;
            ctx.out.flush()?;
        }
    }
    Ok(())
}

/// `--watch`: applies the directory now and on every change until killed.
fn watch(ctx: &mut Ctx<'_>, opts: &Options) -> Result<(), CommandError> {
    let dir = &opts.path;
    if dir.as_os_str() == "-" || !dir.is_dir() {
        return Err(CommandError::Usage(format!(
            "--watch needs a directory; {} is not one",
            dir.display()
        )));
    }
    writeln!(ctx.err, "watching {} (Ctrl-C to stop)", dir.display())?;
    // Prune waits (a VM's delete before its pool's) print no dots in watch mode.
    let mut quiet = std::io::sink();
    let mut target = HttpTarget::new(ctx.client, default_wait(), &mut quiet);
    let watch_opts = WatchOptions {
        prune: opts.prune,
        ..WatchOptions::default()
    };
    let (out, err) = (&mut *ctx.out, &mut *ctx.err);
    let stop = StopSignal::new();
    let mut write_err = None;
    let mut print = |event: WatchEvent| {
        // A closed stdout (e.g. `| head`) ends the watch.
        if let Err(e) = print_event(out, err, event) {
            write_err.get_or_insert(e);
            stop.stop();
        }
    };
    run_watch(dir, &mut target, &watch_opts, &mut print, &stop)?;
    match write_err {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Prints a watch event: results and diffs on `out`, problems on `err`.
pub fn print_event(
    out: &mut dyn Write,
    err: &mut dyn Write,
    event: WatchEvent,
) -> std::io::Result<()> {
    match event {
        WatchEvent::Applied(line) => writeln!(out, "{line}")?,
        WatchEvent::Pruned(line) => writeln!(out, "{line}")?,
        WatchEvent::Diff { diff, .. } => write!(out, "{diff}")?,
        WatchEvent::Invalid(errors) => {
            for e in errors {
                writeln!(err, "error: {e}")?;
            }
        }
        WatchEvent::Failed(f) => writeln!(err, "error: {}", chain(&CommandError::from(f.error)))?,
        WatchEvent::Error(e) => writeln!(err, "error: {}", chain(&CommandError::from(e)))?,
        WatchEvent::Synced { .. } => {}
    }
    out.flush()?;
    err.flush()
}

/// `e: source: ...` like `main` prints errors.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
#[path = "manifest_cmd_tests.rs"]
mod tests;
