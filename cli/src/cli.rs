//! The command line grammar: clap-derive definitions of every command, flag, default,
//! range and exclusion, plus the value parsers they use.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::error::ErrorKind;
use clap::{ArgMatches, Args, FromArgMatches, Parser, Subcommand, ValueEnum};
use otherix_api::duration::parse_duration;
use otherix_api::validate::{DISK_GIB_RANGE, MEMORY_MB_RANGE, STOP_TIMEOUT_RANGE, VCPUS_RANGE};
use otherix_api::vm::{DEFAULT_MEMORY_MB, DEFAULT_VCPUS};
use otherix_api::{Arch, DiskFormat, VmPhase};
use uuid::Uuid;

/// Where the CLI talks to when neither --server nor OTHERIX_SERVER is set.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7080";

/// The default of every --wait-timeout.
pub const DEFAULT_WAIT_TIMEOUT: &str = "5m";

/// otherix: create and manage VMs on an otherix control plane.
#[derive(Debug, Parser)]
#[command(name = "otherix", version, about, propagate_version = true)]
pub struct Cli {
    /// otherix server URL.
    #[arg(
        long,
        global = true,
        env = "OTHERIX_SERVER",
        default_value = DEFAULT_SERVER,
        value_name = "URL",
        help_heading = "Global Options"
    )]
    pub server: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create and manage VMs.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Inspect and wait for async tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Inspect nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Inspect storage pools.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Apply manifests: create or update the objects they declare (kubectl apply).
    Create(ApplyArgs),
    /// Delete the objects manifests declare.
    Delete(DeleteFilesArgs),
    /// Diff manifests against the live objects (exit 0 same, 1 different, 2 error).
    Diff(DiffArgs),
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create a VM from an image URL (async).
    Create(Box<CreateArgs>),
    /// List VMs.
    List(VmListArgs),
    /// Show one VM.
    Get(VmGetArgs),
    /// Boot a stopped VM (async).
    Start(AsyncOpArgs),
    /// Gracefully shut a VM down via ACPI (async); --force powers it off.
    Stop(StopArgs),
    /// Hard power-off, guest not notified (async).
    Poweroff(AsyncOpArgs),
    /// Graceful stop+start cycle (async).
    Reboot(AsyncOpArgs),
    /// Tear a VM down and delete it (async); prompts unless --force.
    Delete(DeleteArgs),
    /// Freeze a VM's vCPUs (sync).
    Pause(SyncOpArgs),
    /// Continue a paused VM (sync).
    Resume(SyncOpArgs),
    /// Press the VM's reset button (sync).
    Reset(SyncOpArgs),
}

/// `--wait` and `--wait-timeout`, shared by every async command.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Block until the task reaches a terminal status.
    #[arg(long)]
    pub wait: bool,
    /// Max wait when --wait is set (e.g. 30s, 5m, 1h).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = DEFAULT_WAIT_TIMEOUT,
        value_parser = parse_wait_timeout,
        requires = "wait"
    )]
    pub wait_timeout: Duration,
}

/// Arguments of `vm create`, as clap parses them (before the cross-flag checks).
#[derive(Debug, Clone, Args)]
pub struct CreateArgsRaw {
    /// VM name.
    pub name: String,
    /// Source image URL to download and boot from.
    #[arg(long, value_name = "URL")]
    pub image_url: String,
    /// Guest architecture.
    #[arg(long, value_name = "ARCH", value_parser = arch_parser())]
    pub arch: Arch,
    /// Expected sha256 of the image; verified after download.
    #[arg(long, value_name = "HEX")]
    pub image_sha256: Option<String>,
    /// Firmware name.
    #[arg(long, value_name = "NAME", conflicts_with = "firmware_id")]
    pub firmware: Option<String>,
    /// Firmware uuid.
    #[arg(long, value_name = "UUID")]
    pub firmware_id: Option<String>,
    /// Root disk format [default: server default (qcow2)].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<FormatArg>,
    /// Root disk size in GiB [default: the image's virtual size].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(DISK_GIB_RANGE.0 as i64..=DISK_GIB_RANGE.1 as i64))]
    pub disk_gib: Option<u32>,
    /// Storage pool name or uuid [default: the cluster default-pool].
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,
    /// Placement hint: node name or uuid [default: the scheduler picks].
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// Bridge network name or uuid to attach one NIC.
    #[arg(long, value_name = "NETWORK")]
    pub network: Option<String>,
    /// vCPU count (1..128).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_VCPUS, value_parser = clap::value_parser!(u32).range(VCPUS_RANGE.0 as i64..=VCPUS_RANGE.1 as i64))]
    pub vcpus: u32,
    /// Memory in MiB (128..524288).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MEMORY_MB, value_parser = clap::value_parser!(u32).range(MEMORY_MB_RANGE.0 as i64..=MEMORY_MB_RANGE.1 as i64))]
    pub memory_mb: u32,
    /// Path to a #cloud-config user-data YAML, or - for stdin.
    #[arg(long, value_name = "PATH|-", conflicts_with = "no_cloud_init")]
    pub user_data: Option<PathBuf>,
    /// Path to a cloud-init network-config YAML (netplan v2), or - for stdin.
    #[arg(long, value_name = "PATH|-", conflicts_with = "no_cloud_init")]
    pub network_config: Option<PathBuf>,
    /// Explicitly disable cloud-init.
    #[arg(long)]
    pub no_cloud_init: bool,
    /// How long a graceful stop waits for the guest (1s..1h) [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_stop_timeout)]
    pub stop_timeout: Option<u32>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// Arguments of `vm create`: [`CreateArgsRaw`] plus the exclusions clap cannot express
/// (--user-data and --network-config cannot both read stdin).
#[derive(Debug, Clone)]
pub struct CreateArgs(pub CreateArgsRaw);

impl CreateArgsRaw {
    fn check(&self) -> Result<(), clap::Error> {
        let is_stdin = |p: &Option<PathBuf>| p.as_deref().is_some_and(|p| p.as_os_str() == "-");
        if is_stdin(&self.user_data) && is_stdin(&self.network_config) {
            return Err(clap::Error::raw(
                ErrorKind::ArgumentConflict,
                "the argument '--user-data -' cannot be used with '--network-config -': only one of them can read stdin",
            ));
        }
        Ok(())
    }
}

impl FromArgMatches for CreateArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let raw = CreateArgsRaw::from_arg_matches(matches)?;
        raw.check()?;
        Ok(CreateArgs(raw))
    }
    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(matches)?;
        self.0.check()
    }
}

impl Args for CreateArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        CreateArgsRaw::augment_args(cmd)
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        CreateArgsRaw::augment_args_for_update(cmd)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Qcow2,
    Raw,
}

impl From<FormatArg> for DiskFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Qcow2 => DiskFormat::Qcow2,
            FormatArg::Raw => DiskFormat::Raw,
        }
    }
}

/// Output formats of list commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ListFormat {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Output formats of `vm get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum GetFormat {
    #[default]
    Text,
    Json,
    Yaml,
}

/// Output formats of single-object views without a manifest (sync ops, task, node, pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum TextFormat {
    #[default]
    Text,
    Json,
}

/// Output formats of list commands without yaml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum TableFormat {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct VmListArgs {
    /// Show the ID column.
    #[arg(long)]
    pub show_ids: bool,
    /// Page size (1..1000) [default: server default (100)].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// Continue from a previous page's cursor.
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
    /// Only VMs in this pool.
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,
    /// Only VMs the agents report on this node.
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// Only VMs in this phase.
    #[arg(long, value_name = "STATUS", value_parser = phase_parser())]
    pub status: Option<VmPhase>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: ListFormat,
}

#[derive(Debug, Clone, Args)]
pub struct VmGetArgs {
    /// VM name.
    pub name: String,
    /// Output format: key/value text, the server's JSON, or a re-appliable YAML manifest.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: GetFormat,
}

#[derive(Debug, Clone, Args)]
pub struct AsyncOpArgs {
    /// VM name.
    pub name: String,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct StopArgs {
    /// VM name.
    pub name: String,
    /// Hard power-off instead (same as `vm poweroff`).
    #[arg(long)]
    pub force: bool,
    /// How long the guest gets to shut down before the stop fails [default: the VM's stop timeout].
    #[arg(long, value_name = "DURATION", value_parser = parse_stop_timeout, conflicts_with = "force")]
    pub timeout: Option<u32>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    /// VM name.
    pub name: String,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SyncOpArgs {
    /// VM name.
    pub name: String,
    /// Output format of the refreshed VM.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: TextFormat,
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Show one task.
    Get {
        /// Task id.
        id: Uuid,
        #[arg(short, long, value_enum, default_value_t)]
        output: TextFormat,
    },
    /// List tasks, newest first.
    List {
        /// Only tasks of this VM.
        #[arg(long, value_name = "NAME")]
        vm: Option<String>,
        #[arg(short, long, value_enum, default_value_t)]
        output: TableFormat,
    },
    /// Wait for a task to reach a terminal status.
    Wait {
        /// Task id.
        id: Uuid,
        /// Max wait (e.g. 30s, 5m, 1h).
        #[arg(long, value_name = "DURATION", default_value = DEFAULT_WAIT_TIMEOUT, value_parser = parse_wait_timeout)]
        wait_timeout: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: TableFormat,
    },
    /// Show one node.
    Get {
        /// Node name.
        name: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: TextFormat,
    },
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// List storage pools.
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: TableFormat,
    },
    /// Show one storage pool.
    Get {
        /// Pool name.
        name: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: TextFormat,
    },
}

/// `create -f PATH`.
#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// Manifest file, directory (its *.yaml/*.yml files, sorted) or - for stdin.
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub filename: PathBuf,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Keep running and re-apply the directory on every change.
    #[arg(long, conflicts_with = "wait")]
    pub watch: bool,
    /// With --watch: delete objects this directory applied whose documents are gone.
    #[arg(long, requires = "watch")]
    pub prune: bool,
}

/// `delete -f PATH`.
#[derive(Debug, Clone, Args)]
pub struct DeleteFilesArgs {
    /// Manifest file, directory (its *.yaml/*.yml files, sorted) or - for stdin.
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub filename: PathBuf,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `diff -f PATH`.
#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    /// Manifest file, directory (its *.yaml/*.yml files, sorted) or - for stdin.
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub filename: PathBuf,
}

fn arch_parser() -> impl TypedValueParser<Value = Arch> {
    PossibleValuesParser::new([Arch::Amd64.as_str(), Arch::Arm64.as_str()])
        .map(|s| Arch::parse(&s).expect("possible values are arches"))
}

/// Phases a VM list can filter on (`deleted` VMs are not listed).
const LISTABLE_PHASES: [VmPhase; 11] = [
    VmPhase::Pending,
    VmPhase::Creating,
    VmPhase::Starting,
    VmPhase::Running,
    VmPhase::Paused,
    VmPhase::Stopping,
    VmPhase::Stopped,
    VmPhase::Rebooting,
    VmPhase::Deleting,
    VmPhase::Failed,
    VmPhase::Unknown,
];

fn phase_parser() -> impl TypedValueParser<Value = VmPhase> {
    PossibleValuesParser::new(LISTABLE_PHASES.map(VmPhase::as_str))
        .map(|s| VmPhase::parse(&s).expect("possible values are phases"))
}

/// A --wait-timeout: any positive duration.
pub fn parse_wait_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be greater than 0".into());
    }
    Ok(d)
}

/// A stop timeout: whole seconds within the API's range, returned as seconds.
pub fn parse_stop_timeout(s: &str) -> Result<u32, String> {
    let d = parse_duration(s)?;
    let (lo, hi) = STOP_TIMEOUT_RANGE;
    if d.subsec_nanos() != 0 {
        return Err("must be whole seconds".into());
    }
    match u32::try_from(d.as_secs()) {
        Ok(secs) if (lo..=hi).contains(&secs) => Ok(secs),
        _ => Err(format!("must be between {lo}s and {hi}s")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(args)
    }

    fn create(extra: &[&str]) -> Result<CreateArgsRaw, clap::Error> {
        let mut args = vec![
            "otherix",
            "vm",
            "create",
            "web-1",
            "--image-url",
            "http://x/i.img",
            "--arch",
            "arm64",
        ];
        args.extend_from_slice(extra);
        match parse(&args)?.command {
            Command::Vm(VmCommand::Create(args)) => Ok(args.0),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn create_err(extra: &[&str]) -> String {
        create(extra).expect_err("should be rejected").to_string()
    }

    #[test]
    fn cli_definition_debug_asserts_pass() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn vm_create_minimal_gets_defaults() {
        let a = create(&[]).unwrap();
        assert_eq!(a.name, "web-1");
        assert_eq!(a.image_url, "http://x/i.img");
        assert_eq!(a.arch, Arch::Arm64);
        assert_eq!(a.vcpus, 2);
        assert_eq!(a.memory_mb, 2048);
        assert!(!a.wait.wait);
        assert_eq!(a.wait.wait_timeout, Duration::from_secs(300));
        assert!(!a.no_cloud_init);
        assert_eq!(a.stop_timeout, None);
    }

    #[test]
    fn vm_create_without_image_url_is_rejected() {
        let err = parse(&["otherix", "vm", "create", "web-1", "--arch", "amd64"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        assert!(err.to_string().contains("--image-url"), "{err}");
    }

    #[test]
    fn vm_create_without_arch_is_rejected() {
        let err = parse(&[
            "otherix",
            "vm",
            "create",
            "web-1",
            "--image-url",
            "http://x",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        assert!(err.to_string().contains("--arch"), "{err}");
    }

    #[test]
    fn vm_create_bad_arch_is_rejected() {
        let err = parse(&[
            "otherix",
            "vm",
            "create",
            "web-1",
            "--image-url",
            "http://x",
            "--arch",
            "x86",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("--arch"), "{err}");
    }

    #[test]
    fn vm_create_firmware_and_firmware_id_conflict() {
        let err = create_err(&[
            "--firmware",
            "ovmf",
            "--firmware-id",
            "6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11",
        ]);
        assert!(
            err.contains("--firmware") && err.contains("--firmware-id"),
            "{err}"
        );
    }

    #[test]
    fn vm_create_no_cloud_init_with_user_data_conflicts() {
        let err = create_err(&["--no-cloud-init", "--user-data", "ud.yaml"]);
        assert!(
            err.contains("--no-cloud-init") && err.contains("--user-data"),
            "{err}"
        );
    }

    #[test]
    fn vm_create_no_cloud_init_with_network_config_conflicts() {
        let err = create_err(&["--network-config", "nc.yaml", "--no-cloud-init"]);
        assert!(
            err.contains("--no-cloud-init") && err.contains("--network-config"),
            "{err}"
        );
    }

    #[test]
    fn vm_create_both_inputs_from_stdin_conflict() {
        let err = create(&["--user-data", "-", "--network-config", "-"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        let msg = err.to_string();
        assert!(
            msg.contains("--user-data") && msg.contains("--network-config"),
            "{msg}"
        );
    }

    #[test]
    fn vm_create_one_input_from_stdin_is_accepted() {
        let a = create(&["--user-data", "-", "--network-config", "nc.yaml"]).unwrap();
        assert_eq!(a.user_data.unwrap(), PathBuf::from("-"));
        assert_eq!(a.network_config.unwrap(), PathBuf::from("nc.yaml"));
    }

    #[test]
    fn vm_create_vcpus_out_of_range_names_flag() {
        for bad in ["0", "129"] {
            let err = create_err(&["--vcpus", bad]);
            assert!(err.contains("--vcpus"), "{err}");
            assert!(err.contains("1..=128"), "{err}");
        }
        assert_eq!(create(&["--vcpus", "128"]).unwrap().vcpus, 128);
    }

    #[test]
    fn vm_create_memory_out_of_range_names_flag() {
        for bad in ["127", "524289"] {
            let err = create_err(&["--memory-mb", bad]);
            assert!(err.contains("--memory-mb"), "{err}");
        }
        assert_eq!(create(&["--memory-mb", "128"]).unwrap().memory_mb, 128);
    }

    #[test]
    fn vm_create_disk_gib_zero_names_flag() {
        let err = create_err(&["--disk-gib", "0"]);
        assert!(err.contains("--disk-gib"), "{err}");
    }

    #[test]
    fn vm_create_wait_timeout_parses_units() {
        for (input, secs) in [("30s", 30), ("5m", 300), ("1h", 3600)] {
            let a = create(&["--wait", "--wait-timeout", input]).unwrap();
            assert!(a.wait.wait);
            assert_eq!(a.wait.wait_timeout, Duration::from_secs(secs), "{input}");
        }
    }

    #[test]
    fn vm_create_wait_timeout_garbage_names_flag() {
        let err = create_err(&["--wait", "--wait-timeout", "5x"]);
        assert!(err.contains("--wait-timeout"), "{err}");
    }

    #[test]
    fn vm_create_wait_timeout_without_wait_is_rejected() {
        let err = create_err(&["--wait-timeout", "30s"]);
        assert!(err.contains("--wait"), "{err}");
    }

    #[test]
    fn vm_create_stop_timeout_parses_to_seconds() {
        assert_eq!(
            create(&["--stop-timeout", "2m"]).unwrap().stop_timeout,
            Some(120)
        );
        let err = create_err(&["--stop-timeout", "2h"]);
        assert!(err.contains("--stop-timeout"), "{err}");
        let err = create_err(&["--stop-timeout", "1500ms"]);
        assert!(err.contains("whole seconds"), "{err}");
    }

    #[test]
    fn vm_create_format_parses_values() {
        assert_eq!(
            create(&["--format", "raw"]).unwrap().format,
            Some(FormatArg::Raw)
        );
        assert!(create_err(&["--format", "vmdk"]).contains("--format"));
    }

    #[test]
    fn global_server_flag_after_subcommand_is_accepted() {
        let cli = parse(&["otherix", "vm", "list", "--server", "http://h:1"]).unwrap();
        assert_eq!(cli.server, "http://h:1");
    }

    #[test]
    fn vm_list_defaults_and_filters_parse() {
        let cli = parse(&[
            "otherix",
            "vm",
            "list",
            "--show-ids",
            "--limit",
            "10",
            "--status",
            "running",
            "-o",
            "yaml",
        ])
        .unwrap();
        match cli.command {
            Command::Vm(VmCommand::List(a)) => {
                assert!(a.show_ids);
                assert_eq!(a.limit, Some(10));
                assert_eq!(a.status, Some(VmPhase::Running));
                assert_eq!(a.output, ListFormat::Yaml);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["otherix", "vm", "list", "--status", "bogus"]).is_err());
        assert!(parse(&["otherix", "vm", "list", "--limit", "0"]).is_err());
    }

    #[test]
    fn vm_stop_force_and_timeout_conflict() {
        assert!(parse(&[
            "otherix",
            "vm",
            "stop",
            "web-1",
            "--force",
            "--timeout",
            "30s"
        ])
        .is_err());
        let cli = parse(&[
            "otherix",
            "vm",
            "stop",
            "web-1",
            "--timeout",
            "30s",
            "--wait",
        ])
        .unwrap();
        match cli.command {
            Command::Vm(VmCommand::Stop(a)) => {
                assert_eq!(a.timeout, Some(30));
                assert!(a.wait.wait);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn vm_sync_op_rejects_yaml_output() {
        assert!(parse(&["otherix", "vm", "pause", "web-1", "-o", "yaml"]).is_err());
        assert!(parse(&["otherix", "vm", "pause", "web-1", "-o", "json"]).is_ok());
    }

    #[test]
    fn task_wait_requires_uuid_and_defaults_timeout() {
        assert!(parse(&["otherix", "task", "wait", "nope"]).is_err());
        let cli = parse(&[
            "otherix",
            "task",
            "wait",
            "6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11",
        ])
        .unwrap();
        match cli.command {
            Command::Task(TaskCommand::Wait { wait_timeout, .. }) => {
                assert_eq!(wait_timeout, Duration::from_secs(300))
            }
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod manifest_tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(args).map(|c| c.command)
    }

    #[test]
    fn create_f_parses_flags() {
        match parse(&["otherix", "create", "-f", "m/", "--watch", "--prune"]).unwrap() {
            Command::Create(a) => {
                assert_eq!(a.filename, PathBuf::from("m/"));
                assert!(a.watch && a.prune && !a.wait.wait);
            }
            other => panic!("{other:?}"),
        }
        match parse(&[
            "otherix",
            "create",
            "--filename",
            "-",
            "--wait",
            "--wait-timeout",
            "1m",
        ])
        .unwrap()
        {
            Command::Create(a) => {
                assert_eq!(a.filename, PathBuf::from("-"));
                assert_eq!(a.wait.wait_timeout, Duration::from_secs(60));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_f_flag_rules_table() {
        let table: &[(&[&str], Option<&str>)] = &[
            (&["otherix", "create"], Some("--filename")),
            (
                &["otherix", "create", "-f", "m", "--prune"],
                Some("--watch"),
            ),
            (
                &["otherix", "create", "-f", "m", "--watch", "--wait"],
                Some("--wait"),
            ),
            (
                &["otherix", "create", "-f", "m", "--wait-timeout", "1m"],
                Some("--wait"),
            ),
            (&["otherix", "create", "-f", "m", "--watch"], None),
        ];
        for (args, want) in table {
            match (parse(args), want) {
                (Ok(_), None) => {}
                (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{args:?}: {e}"),
                (r, _) => panic!("{args:?}: {r:?}"),
            }
        }
    }

    #[test]
    fn delete_and_diff_f_parse() {
        match parse(&["otherix", "delete", "-f", "web.yaml", "--wait"]).unwrap() {
            Command::Delete(a) => {
                assert_eq!(a.filename, PathBuf::from("web.yaml"));
                assert!(a.wait.wait);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["otherix", "diff", "-f", "web.yaml"]).unwrap() {
            Command::Diff(a) => assert_eq!(a.filename, PathBuf::from("web.yaml")),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["otherix", "diff", "-f", "x", "--wait"]).is_err());
    }
}
