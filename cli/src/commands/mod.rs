//! Command dispatch, the error every command returns, and the async-op epilogue shared by
//! create/start/stop/poweroff/reboot/delete (`<op> task=...`, then `--wait`).

pub mod apply;
pub mod cluster;
pub mod completion;
pub mod delete_files;
pub mod diff;
pub mod events;
pub mod firmware;
pub mod network;
pub mod node;
pub mod pool;
pub mod project;
pub mod remote;
pub mod task;
pub mod token;
pub mod vm_console;
pub mod vm_create;
pub mod vm_get;
pub mod vm_list;
pub mod vm_logs;
pub mod vm_ops;
pub mod vm_ssh;
pub mod whoami;

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use otherix_api::{ApiError, Task, TaskAccepted, TaskKind};

use crate::cli::{Cli, Command, TaskCommand, VmCommand, WaitArgs};
use crate::client::{Client, ClientError, ClientOptions};
use crate::config::{self, Config, ConfigError, Env, Flags, Resolved, Trust};
use crate::output;
use crate::tls::{Pin, TlsError};
use crate::wait::{self, WaitError};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Wait(#[from] WaitError),
    /// Local validation with the server's rules, reported the way the server would.
    #[error(transparent)]
    Invalid(#[from] ApiError),
    #[error("cannot read {flag} from {}", path.display())]
    ReadInput {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "refusing to delete VM {name} without confirmation: stdin is not a terminal; pass --force"
    )]
    NeedsForce { name: String },
    #[error("delete of VM {name} aborted")]
    Aborted { name: String },
    #[error("cannot render YAML")]
    Yaml(#[from] serde_yaml::Error),
    /// Writing to stdout failed (a closed pipe is not an error; `main` decides).
    #[error("cannot write output")]
    Output(#[from] io::Error),
    /// Manifests that do not load, or a manifest operation that failed (server errors
    /// arrive as `Client`/`Wait`, see `http_target`).
    #[error(transparent)]
    Manifests(otherix_manifests::Error),
    /// `diff -f` found differences (already printed): exit 1.
    #[error("manifests differ from the live objects")]
    Differences,
    /// Any error of `diff -f`: exit 2, as 1 means "different".
    #[error(transparent)]
    Diff(Box<CommandError>),
    /// A flag combination clap cannot check (exit 2).
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "refusing to trust the certificate of {url} (fingerprint {fingerprint}) without confirmation: stdin is not a terminal; re-run with --accept-certificate to trust it non-interactively"
    )]
    NeedsAcceptCertificate { url: String, fingerprint: String },
    #[error("certificate of {url} not trusted; nothing saved")]
    CertificateNotTrusted { url: String },
    /// `vm ssh`: no way to reach the VM's port 22, or `ssh` could not be started.
    #[error("{0}")]
    Ssh(String),
    /// The console was closed by the other side (not detached by the user).
    #[error("the console of vm {name} ended: {reason}")]
    ConsoleEnded { name: String, reason: String },
}

/// What every command gets: the client and where to print.
pub struct Ctx<'a> {
    pub client: &'a Client,
    /// Results (stdout).
    pub out: &'a mut dyn Write,
    /// Progress and hints (stderr).
    pub err: &'a mut dyn Write,
}

/// Runs the parsed command line: `remote` commands edit the config file; the others
/// resolve a server, token, trust and project from flags, environment and config file.
pub fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), CommandError> {
    let env = Env::from_process();
    if let Command::Remote(cmd) = cli.command {
        return remote::run(cmd, &config::path(&env)?, cli.project, out, err);
    }
    // Needs no server, token or config file.
    if let Command::Completion { shell } = cli.command {
        return completion::run(shell, out);
    }
    // Without a config location (no HOME), flags and environment still work.
    let config = match config::path(&env) {
        Ok(path) => config::load(&path)?,
        Err(_) => Config::default(),
    };
    check_all_projects(&cli)?;
    let flags = Flags {
        server: cli.server.clone(),
        remote: cli.remote.clone(),
        project: cli.project.clone(),
    };
    let resolved = config::resolve(&config, &flags, &env)?;
    let client = Client::connect(client_options(&resolved)?)?;
    let mut ctx = Ctx {
        client: &client,
        out,
        err,
    };
    match cli.command {
        Command::Vm(cmd) => match cmd {
            VmCommand::Create(args) => {
                let opts = vm_create::Options::from_args(args.0, &mut io::stdin().lock())?;
                vm_create::run(&mut ctx, opts)
            }
            VmCommand::List(args) => vm_list::run(&mut ctx, args.into()),
            VmCommand::Get(args) => vm_get::run(&mut ctx, args.into()),
            VmCommand::Logs(args) => vm_logs::run(&mut ctx, args.into()),
            VmCommand::Console(args) => vm_console::run(&mut ctx, args),
            VmCommand::Ssh(args) => vm_ssh::run(&mut ctx, args),
            VmCommand::Start(a) => vm_ops::run_async(&mut ctx, vm_ops::AsyncOptions::start(a)),
            VmCommand::Stop(a) => vm_ops::run_async(&mut ctx, vm_ops::AsyncOptions::stop(a)),
            VmCommand::Poweroff(a) => {
                vm_ops::run_async(&mut ctx, vm_ops::AsyncOptions::poweroff(a))
            }
            VmCommand::Reboot(a) => vm_ops::run_async(&mut ctx, vm_ops::AsyncOptions::reboot(a)),
            VmCommand::Delete(a) => vm_ops::run_delete(&mut ctx, a.into()),
            VmCommand::Pause(a) => vm_ops::run_sync(&mut ctx, vm_ops::SyncOp::Pause, a.into()),
            VmCommand::Resume(a) => vm_ops::run_sync(&mut ctx, vm_ops::SyncOp::Resume, a.into()),
            VmCommand::Reset(a) => vm_ops::run_sync(&mut ctx, vm_ops::SyncOp::Reset, a.into()),
        },
        Command::Task(cmd) => task::run(&mut ctx, cmd),
        Command::Node(cmd) => node::run(&mut ctx, cmd),
        Command::Project(cmd) => project::run(&mut ctx, cmd),
        Command::Token(cmd) => token::run(&mut ctx, cmd, resolved.project.as_deref()),
        Command::Whoami { output } => whoami::run(&mut ctx, output),
        Command::Events(a) => events::run(&mut ctx, a.into()),
        Command::Remote(_) => unreachable_remote(),
        Command::Completion { shell } => completion::run(shell, out),
        Command::Pool(cmd) => pool::run(&mut ctx, cmd),
        Command::Network(cmd) => network::run(&mut ctx, cmd),
        Command::Firmware(cmd) => firmware::run(&mut ctx, cmd),
        Command::Cluster(cmd) => cluster::run(&mut ctx, cmd),
        Command::Create(a) => apply::run(&mut ctx, a.into(), &mut io::stdin()),
        Command::Diff(a) => diff::run(&mut ctx, &a.filename, &mut io::stdin()),
        Command::Delete(a) => delete_files::run(&mut ctx, a.into(), &mut io::stdin()),
    }
}

/// `remote` commands return before a client exists.
fn unreachable_remote() -> Result<(), CommandError> {
    Err(CommandError::Usage(
        "remote commands do not talk to a server".into(),
    ))
}

/// `--all-projects` and an explicit `--project` contradict each other (a project from
/// `OTHERIX_PROJECT` or the remote yields to `--all-projects`).
fn check_all_projects(cli: &Cli) -> Result<(), CommandError> {
    let all = match &cli.command {
        Command::Vm(VmCommand::List(a)) => a.all_projects,
        Command::Task(TaskCommand::List { all_projects, .. }) => *all_projects,
        Command::Events(a) => a.all_projects,
        _ => false,
    };
    match (&cli.project, all) {
        (Some(p), true) => Err(CommandError::Usage(format!(
            "--all-projects lists every project; it cannot be combined with --project {p}"
        ))),
        _ => Ok(()),
    }
}

/// The client settings of a resolved context; reads the `OTHERIX_CA_CERT` file.
pub fn client_options(r: &Resolved) -> Result<ClientOptions, CommandError> {
    let pin = match &r.trust {
        Trust::System => None,
        Trust::CaFile(path) => {
            let pem = std::fs::read_to_string(path).map_err(|source| CommandError::ReadInput {
                flag: "OTHERIX_CA_CERT",
                path: path.clone(),
                source,
            })?;
            Some(Pin::from_ca_file(&path.display().to_string(), &pem)?)
        }
        Trust::Pinned {
            remote,
            fingerprint,
            ca_cert,
        } => Some(Pin::from_remote(
            remote,
            fingerprint.as_deref(),
            ca_cert.as_deref(),
        )?),
    };
    Ok(ClientOptions {
        server: r.url.clone(),
        token: r.token.clone(),
        pin,
        project: r.project.clone(),
    })
}

/// `Some(timeout)` when `--wait` was given.
pub fn wait_timeout(args: &WaitArgs) -> Option<Duration> {
    args.wait.then_some(args.wait_timeout)
}

/// How an accepted async operation is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// `created task=... status=...` first, even with --wait (the product page's create).
    Always,
    /// `<op> task=... status=...` only without --wait; with it, only the final line.
    WithoutWait,
}

/// Prints `<op> task=<id> status=<status>` (see [`Announce`]); with `wait`, waits for the
/// task and prints `vm <phase> task=<id>`.
pub fn finish_async(
    ctx: &mut Ctx<'_>,
    op: &str,
    announce: Announce,
    vm_name: &str,
    accepted: TaskAccepted,
    wait: Option<Duration>,
) -> Result<(), CommandError> {
    if wait.is_none() || announce == Announce::Always {
        writeln!(ctx.out, "{}", output::accepted_line(op, &accepted.task))?;
        ctx.out.flush()?;
    }
    match wait {
        None => Ok(()),
        Some(timeout) => wait_and_report(ctx, accepted.task, Some(vm_name), timeout),
    }
}

/// Waits for `task` and prints `vm <phase> task=<id>` with the VM's phase afterwards
/// (`deleted` for a delete, without asking).
pub fn wait_and_report(
    ctx: &mut Ctx<'_>,
    task: Task,
    vm_name: Option<&str>,
    timeout: Duration,
) -> Result<(), CommandError> {
    let task = wait::wait_for_task(ctx.client, task, timeout, ctx.err)?;
    let phase = match (task.kind, vm_name.or(task.vm_name.as_deref())) {
        (TaskKind::VmDelete, _) => "deleted".to_owned(),
        (_, Some(name)) => ctx.client.get_vm(name)?.value.status.phase.to_string(),
        (_, None) => task.status.to_string(),
    };
    writeln!(ctx.out, "{}", output::done_line(&phase, task.id))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::fixtures::{self as fx, TASK_ID};
    use crate::wait::fake::FakeServer;
    use otherix_api::TaskStatus;

    fn accepted(status: TaskStatus, kind: TaskKind) -> TaskAccepted {
        let mut task = fx::task(status);
        task.kind = kind;
        TaskAccepted { task, vm: None }
    }

    fn run_finish(
        server: &FakeServer,
        op: &str,
        announce: Announce,
        acc: TaskAccepted,
        wait: Option<Duration>,
    ) -> (Result<(), CommandError>, String, String) {
        let client = Client::new(&server.url).unwrap();
        let (mut out, mut err) = (vec![], vec![]);
        let mut ctx = Ctx {
            client: &client,
            out: &mut out,
            err: &mut err,
        };
        let r = finish_async(&mut ctx, op, announce, "web-1", acc, wait);
        (
            r,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn finish_async_without_wait_prints_accepted_line_only() {
        let server = FakeServer::start(vec![]);
        let (r, out, err) = run_finish(
            &server,
            "stop",
            Announce::WithoutWait,
            accepted(TaskStatus::Pending, TaskKind::VmStop),
            None,
        );
        r.unwrap();
        assert_eq!(out, format!("stop task={TASK_ID} status=pending\n"));
        assert_eq!(err, "");
        assert!(server.requests().is_empty());
    }

    #[test]
    fn finish_async_create_with_wait_prints_created_dots_and_phase() {
        let mut done = fx::task(TaskStatus::Success);
        done.kind = TaskKind::VmCreate;
        let server = FakeServer::start(vec![
            (200, serde_json::to_string(&done).unwrap()),
            (200, serde_json::to_string(&fx::vm()).unwrap()),
        ]);
        let (r, out, err) = run_finish(
            &server,
            "created",
            Announce::Always,
            accepted(TaskStatus::Pending, TaskKind::VmCreate),
            Some(Duration::from_secs(10)),
        );
        r.unwrap();
        assert_eq!(
            out,
            format!("created task={TASK_ID} status=pending\nvm running task={TASK_ID}\n")
        );
        assert_eq!(err, ".\n");
        assert_eq!(server.requests()[1], "GET /v1/vms/web-1");
    }

    #[test]
    fn finish_async_stop_with_wait_prints_final_line_only() {
        let mut done = fx::task(TaskStatus::Success);
        done.kind = TaskKind::VmStop;
        let mut stopped = fx::vm();
        stopped.status.phase = otherix_api::VmPhase::Stopped;
        let server = FakeServer::start(vec![
            (200, serde_json::to_string(&done).unwrap()),
            (200, serde_json::to_string(&stopped).unwrap()),
        ]);
        let (r, out, err) = run_finish(
            &server,
            "stop",
            Announce::WithoutWait,
            accepted(TaskStatus::Pending, TaskKind::VmStop),
            Some(Duration::from_secs(10)),
        );
        r.unwrap();
        assert_eq!(out, format!("vm stopped task={TASK_ID}\n"));
        assert_eq!(err, ".\n");
    }

    #[test]
    fn finish_async_delete_with_wait_prints_deleted_without_fetching_vm() {
        let mut done = fx::task(TaskStatus::Success);
        done.kind = TaskKind::VmDelete;
        let server = FakeServer::start(vec![(200, serde_json::to_string(&done).unwrap())]);
        let (r, out, _) = run_finish(
            &server,
            "delete",
            Announce::WithoutWait,
            accepted(TaskStatus::Pending, TaskKind::VmDelete),
            Some(Duration::from_secs(10)),
        );
        r.unwrap();
        assert_eq!(out, format!("vm deleted task={TASK_ID}\n"));
        assert_eq!(server.requests().len(), 1);
    }
}

#[cfg(test)]
mod remote_tls_tests;
