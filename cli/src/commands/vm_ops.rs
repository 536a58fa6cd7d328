//! The VM lifecycle verbs: async `start`, `stop`, `poweroff`, `reboot`, `delete` (a task,
//! optionally waited for) and sync `pause`, `resume`, `reset` (the refreshed VM).

use std::io::{self, BufRead, IsTerminal, Write};
use std::time::Duration;

use super::{finish_async, wait_timeout, Announce, CommandError, Ctx};
use crate::cli::{AsyncOpArgs, DeleteArgs, StopArgs, SyncOpArgs, TextFormat};
use crate::{output, wire};

/// An async lifecycle operation and its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncOp {
    Start,
    Stop { timeout_secs: Option<u32> },
    Poweroff,
    Reboot,
    Delete,
}

impl AsyncOp {
    /// The word the `<op> task=...` line starts with.
    pub fn label(self) -> &'static str {
        match self {
            AsyncOp::Start => "start",
            AsyncOp::Stop { .. } => "stop",
            AsyncOp::Poweroff => "poweroff",
            AsyncOp::Reboot => "reboot",
            AsyncOp::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncOptions {
    pub name: String,
    pub op: AsyncOp,
    pub wait: Option<Duration>,
}

impl AsyncOptions {
    fn new(a: AsyncOpArgs, op: AsyncOp) -> Self {
        AsyncOptions {
            wait: wait_timeout(&a.wait),
            name: a.name,
            op,
        }
    }
    pub fn start(a: AsyncOpArgs) -> Self {
        Self::new(a, AsyncOp::Start)
    }
    pub fn poweroff(a: AsyncOpArgs) -> Self {
        Self::new(a, AsyncOp::Poweroff)
    }
    pub fn reboot(a: AsyncOpArgs) -> Self {
        Self::new(a, AsyncOp::Reboot)
    }
    /// `vm stop --force` is a poweroff.
    pub fn stop(a: StopArgs) -> Self {
        let op = if a.force {
            AsyncOp::Poweroff
        } else {
            AsyncOp::Stop {
                timeout_secs: a.timeout,
            }
        };
        AsyncOptions {
            wait: wait_timeout(&a.wait),
            name: a.name,
            op,
        }
    }
}

pub fn run_async(ctx: &mut Ctx<'_>, opts: AsyncOptions) -> Result<(), CommandError> {
    let c = ctx.client;
    let accepted = match opts.op {
        AsyncOp::Start => c.start_vm(&opts.name)?,
        AsyncOp::Stop { timeout_secs } => c.stop_vm(&opts.name, timeout_secs)?,
        AsyncOp::Poweroff => c.poweroff_vm(&opts.name)?,
        AsyncOp::Reboot => c.reboot_vm(&opts.name)?,
        AsyncOp::Delete => c.delete_vm(&opts.name)?,
    };
    finish_async(
        ctx,
        opts.op.label(),
        Announce::WithoutWait,
        &opts.name,
        accepted,
        opts.wait,
    )
}

/// Which VMs a `vm delete` is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteTarget {
    Name(String),
    /// `-l KEY=VALUE,...`: every VM of the project with those labels.
    Selector(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteOptions {
    pub target: DeleteTarget,
    pub force: bool,
    pub wait: Option<Duration>,
}

impl From<DeleteArgs> for DeleteOptions {
    fn from(a: DeleteArgs) -> Self {
        let target = match (a.name, a.selector) {
            (_, Some(selector)) => DeleteTarget::Selector(selector),
            (Some(name), None) => DeleteTarget::Name(name),
            // clap requires one of them.
            (None, None) => DeleteTarget::Name(String::new()),
        };
        DeleteOptions {
            wait: wait_timeout(&a.wait),
            target,
            force: a.force,
        }
    }
}

/// `vm delete`: asks `Delete VM <name>? [y/N] ` on a terminal unless --force; refuses
/// without a terminal. With a selector: the matching VMs, one prompt for all.
pub fn run_delete(ctx: &mut Ctx<'_>, opts: DeleteOptions) -> Result<(), CommandError> {
    let name = match opts.target {
        DeleteTarget::Name(name) => name,
        DeleteTarget::Selector(selector) => {
            return run_delete_selected(ctx, &selector, opts.force, opts.wait)
        }
    };
    let opts = NamedDelete {
        name,
        force: opts.force,
        wait: opts.wait,
    };
    if !opts.force {
        let stdin = io::stdin();
        if !stdin.is_terminal() {
            return Err(CommandError::NeedsForce { name: opts.name });
        }
        if !confirm_delete(&opts.name, &mut stdin.lock(), ctx.err)? {
            return Err(CommandError::Aborted { name: opts.name });
        }
    }
    run_async(
        ctx,
        AsyncOptions {
            name: opts.name,
            op: AsyncOp::Delete,
            wait: opts.wait,
        },
    )
}

struct NamedDelete {
    name: String,
    force: bool,
    wait: Option<Duration>,
}

/// Deletes every VM of the project whose labels match `selector` (one confirmation for
/// all, listing them), each as `vm delete NAME` would.
fn run_delete_selected(
    ctx: &mut Ctx<'_>,
    selector: &str,
    force: bool,
    wait: Option<Duration>,
) -> Result<(), CommandError> {
    otherix_api::labels::parse_selectors("--selector", selector)?;
    let mut names = Vec::new();
    let mut query = crate::client::VmListQuery {
        label: Some(selector.to_owned()),
        limit: Some(1000),
        ..Default::default()
    };
    loop {
        let page = ctx.client.list_vms(&query)?.value;
        names.extend(page.items.into_iter().map(|vm| vm.name));
        match page.next_cursor {
            Some(c) => query.cursor = Some(c),
            None => break,
        }
    }
    if names.is_empty() {
        writeln!(ctx.err, "no VMs match -l {selector}")?;
        return Ok(());
    }
    let all = names.join(", ");
    if !force {
        let stdin = io::stdin();
        if !stdin.is_terminal() {
            return Err(CommandError::NeedsForce { name: all });
        }
        if !confirm_delete(&all, &mut stdin.lock(), ctx.err)? {
            return Err(CommandError::Aborted { name: all });
        }
    }
    for name in names {
        run_async(
            ctx,
            AsyncOptions {
                name,
                op: AsyncOp::Delete,
                wait,
            },
        )?;
    }
    Ok(())
}

/// Prints the delete prompt to `prompt` and reads one answer; only `y`/`yes` (any case)
/// confirm.
pub fn confirm_delete(
    name: &str,
    input: &mut dyn BufRead,
    prompt: &mut dyn Write,
) -> io::Result<bool> {
    write!(prompt, "Delete VM {name}? [y/N] ")?;
    prompt.flush()?;
    let mut answer = String::new();
    input.read_line(&mut answer)?;
    let answer = answer.trim().to_ascii_lowercase();
    Ok(answer == "y" || answer == "yes")
}

/// A sync lifecycle operation: answered with the refreshed VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOp {
    Pause,
    Resume,
    Reset,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOptions {
    pub name: String,
    pub format: TextFormat,
}

impl From<SyncOpArgs> for SyncOptions {
    fn from(a: SyncOpArgs) -> Self {
        SyncOptions {
            name: a.name,
            format: a.output,
        }
    }
}

pub fn run_sync(ctx: &mut Ctx<'_>, op: SyncOp, opts: SyncOptions) -> Result<(), CommandError> {
    let c = ctx.client;
    let vm = match op {
        SyncOp::Pause => c.pause_vm(&opts.name)?,
        SyncOp::Resume => c.resume_vm(&opts.name)?,
        SyncOp::Reset => c.reset_vm(&opts.name)?,
    };
    let text = match opts.format {
        TextFormat::Text => output::view::vm(
            &vm.value,
            wire::restart_pending(&vm.raw),
            wire::field(&vm.raw, "project").as_deref(),
        ),
        TextFormat::Json => output::json::pretty(&vm.raw),
    };
    ctx.out.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command, VmCommand};
    use crate::client::Client;
    use crate::output::fixtures::{self as fx, TASK_ID};
    use crate::wait::fake::FakeServer;
    use clap::Parser;
    use otherix_api::{TaskAccepted, TaskKind, TaskStatus};

    fn stop_opts(argv: &[&str]) -> AsyncOptions {
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Vm(VmCommand::Stop(a)) => AsyncOptions::stop(a),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stop_force_dispatches_to_poweroff() {
        let o = stop_opts(&["otherix", "vm", "stop", "web-1", "--force", "--wait"]);
        assert_eq!(o.op, AsyncOp::Poweroff);
        assert_eq!(o.wait, Some(Duration::from_secs(300)));
        let o = stop_opts(&["otherix", "vm", "stop", "web-1", "--timeout", "2m"]);
        assert_eq!(
            o.op,
            AsyncOp::Stop {
                timeout_secs: Some(120)
            }
        );
        assert_eq!(o.wait, None);
    }

    #[test]
    fn confirm_delete_answers_table() {
        for (answer, want) in [
            ("y\n", true),
            ("yes\n", true),
            ("YES\n", true),
            ("\n", false),
            ("n\n", false),
            ("yep\n", false),
            ("", false),
        ] {
            let mut prompt = vec![];
            let got = confirm_delete("web-1", &mut answer.as_bytes(), &mut prompt).unwrap();
            assert_eq!(got, want, "{answer:?}");
            assert_eq!(
                String::from_utf8(prompt).unwrap(),
                "Delete VM web-1? [y/N] "
            );
        }
    }

    #[test]
    fn run_async_stop_with_timeout_sends_timeout_secs_and_prints_line() {
        let mut task = fx::task(TaskStatus::Pending);
        task.kind = TaskKind::VmStop;
        let body = serde_json::to_string(&TaskAccepted { task, vm: None }).unwrap();
        let server = FakeServer::start(vec![(202, body)]);
        let client = Client::new(&server.url).unwrap();
        let (mut out, mut err) = (vec![], vec![]);
        let mut ctx = Ctx {
            client: &client,
            out: &mut out,
            err: &mut err,
        };
        run_async(
            &mut ctx,
            AsyncOptions {
                name: "web-1".into(),
                op: AsyncOp::Stop {
                    timeout_secs: Some(30),
                },
                wait: None,
            },
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("stop task={TASK_ID} status=pending\n")
        );
        assert_eq!(
            server.requests(),
            vec!["POST /v1/vms/web-1/stop?timeout_secs=30"]
        );
    }

    #[test]
    fn run_async_conflict_surfaces_server_error() {
        let server = FakeServer::start(vec![(
            409,
            r#"{"error":{"code":"conflict","message":"vm web-1 is creating; stop needs running or paused"}}"#.into(),
        )]);
        let client = Client::new(&server.url).unwrap();
        let (mut out, mut err) = (vec![], vec![]);
        let mut ctx = Ctx {
            client: &client,
            out: &mut out,
            err: &mut err,
        };
        let e = run_async(
            &mut ctx,
            AsyncOptions {
                name: "web-1".into(),
                op: AsyncOp::Start,
                wait: None,
            },
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "conflict: vm web-1 is creating; stop needs running or paused"
        );
        assert!(out.is_empty());
    }
}
