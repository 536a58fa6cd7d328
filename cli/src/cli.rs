//! The command line grammar: clap-derive definitions of every command, flag, default,
//! range and exclusion, plus the value parsers they use.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::error::ErrorKind;
use clap::{ArgMatches, Args, FromArgMatches, Parser, Subcommand, ValueEnum};
use otherix_api::duration::parse_duration;
use otherix_api::manifest::{FirmwareType, NetworkType};
use otherix_api::validate::{DISK_GIB_RANGE, MEMORY_MB_RANGE, STOP_TIMEOUT_RANGE, VCPUS_RANGE};
use otherix_api::vm::{DEFAULT_MEMORY_MB, DEFAULT_VCPUS};
use otherix_api::{Arch, DiskFormat, EventKind, PortForward, PortProtocol, RestartPolicy, VmPhase};
use uuid::Uuid;

/// The default of every --wait-timeout.
pub const DEFAULT_WAIT_TIMEOUT: &str = "5m";

/// otherix: create and manage VMs on an otherix control plane.
#[derive(Debug, Parser)]
#[command(name = "otherix", version, about, propagate_version = true)]
pub struct Cli {
    /// otherix server URL [default: the remote's URL, else https://127.0.0.1:7080].
    #[arg(
        long,
        global = true,
        env = "OTHERIX_SERVER",
        value_name = "URL",
        help_heading = "Global Options"
    )]
    pub server: Option<String>,

    /// Remote of the config file to use [default: its current remote].
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        help_heading = "Global Options"
    )]
    pub remote: Option<String>,

    /// Project of VM and task commands (env OTHERIX_PROJECT) [default: the remote's
    /// project, else the token's].
    #[arg(
        long,
        global = true,
        value_name = "PROJECT",
        help_heading = "Global Options"
    )]
    pub project: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create and manage VMs.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Inspect, wait for and cancel async tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Inspect nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage storage pools and their image caches.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Manage networks VMs attach to.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Manage firmware VMs boot with.
    #[command(subcommand)]
    Firmware(FirmwareCommand),
    /// Show and change cluster-wide settings.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Manage projects and their quotas (admin).
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Manage API tokens (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Follow changes to VMs, tasks, nodes, pools, networks, firmware, projects and the
    /// cluster settings, one line each (until interrupted).
    Events(EventsArgs),
    /// Show who the server takes this CLI for.
    Whoami {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: TextFormat,
    },
    /// Manage the servers this CLI knows (the config file).
    #[command(subcommand)]
    Remote(RemoteCommand),
    /// Apply manifests: create or update the objects they declare (kubectl apply).
    Create(ApplyArgs),
    /// Diff manifests against the live objects (exit 0 same, 1 different, 2 error).
    Diff(DiffArgs),
    /// Delete the objects manifests declare.
    Delete(DeleteFilesArgs),
    /// Print a shell completion script on stdout (e.g. `source <(otherix completion bash)`).
    Completion {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: ShellArg,
    },
}

/// The shells `otherix completion` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShellArg {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create a VM from an image URL (async).
    Create(Box<CreateArgs>),
    /// List VMs.
    List(VmListArgs),
    /// Show one VM.
    Get(VmGetArgs),
    /// Print a VM's serial console log.
    Logs(VmLogsArgs),
    /// Attach the terminal to a VM's serial console (detach with Ctrl-]).
    Console(VmConsoleArgs),
    /// SSH into a VM (its bridge address from the guest agent, or its port 22 forward).
    Ssh(VmSshArgs),
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
    /// An SSH public key file (authorized_keys format, e.g. ~/.ssh/id_ed25519.pub): every
    /// key in it is installed by cloud-init for the image's default user (repeatable).
    #[arg(
        long = "ssh-key",
        value_name = "FILE",
        conflicts_with = "no_cloud_init"
    )]
    pub ssh_keys: Vec<PathBuf>,
    /// A label KEY=VALUE (repeatable): what `vm list -l` and `vm delete -l` select on.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Explicitly disable cloud-init.
    #[arg(long)]
    pub no_cloud_init: bool,
    /// How long a graceful stop waits for the guest (1s..1h) [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_stop_timeout)]
    pub stop_timeout: Option<u32>,
    /// Forward a node port to the guest, e.g. 8080:80 or 5353:53/udp (repeatable; not with
    /// --network).
    #[arg(
        long = "port",
        value_name = "HOST:GUEST[/tcp|udp]",
        value_parser = parse_port,
        conflicts_with = "network"
    )]
    pub ports: Vec<PortForward>,
    /// When to start the VM again after it stops on its own (on-failure: QEMU crashed or
    /// was killed, not a clean guest poweroff).
    #[arg(
        long,
        value_name = "POLICY",
        value_parser = restart_policy_parser(),
        default_value = "on-failure"
    )]
    pub restart_policy: RestartPolicy,
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

/// Output formats of `vm list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ListFormat {
    #[default]
    Table,
    /// The table plus IP (the guest's first address, from its guest agent).
    Wide,
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
    /// Only VMs with these labels: KEY=VALUE[,KEY=VALUE...] (all must match).
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// VMs of every project (admin); adds a PROJECT column.
    #[arg(long)]
    pub all_projects: bool,
    /// After the list, print a line per change of a VM (like `otherix events --kind vm`)
    /// until interrupted.
    #[arg(short, long)]
    pub watch: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: ListFormat,
}

#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// Only events about this VM (the VM and its tasks).
    #[arg(long, value_name = "NAME")]
    pub vm: Option<String>,
    /// Only events of these kinds (vm, task, node, pool, network, firmware, project,
    /// cluster); repeat or separate with commas.
    #[arg(long, value_name = "KIND", value_delimiter = ',', value_parser = event_kind_parser())]
    pub kind: Vec<EventKind>,
    /// Resume after this cursor (the first column, or `cursor` of -o json) instead of
    /// starting with the next change.
    #[arg(long, value_name = "CURSOR")]
    pub since: Option<String>,
    /// Events of every project (admin).
    #[arg(long)]
    pub all_projects: bool,
    /// Output format: one line per event, or the server's JSON lines.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: TextFormat,
}

fn event_kind_parser() -> impl TypedValueParser<Value = EventKind> {
    PossibleValuesParser::new(EventKind::ALL.map(|k| k.as_str()))
        .map(|s| EventKind::parse(&s).expect("a possible value"))
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
pub struct VmLogsArgs {
    /// VM name.
    pub name: String,
    /// Keep printing new output until interrupted.
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Debug, Clone, Args)]
pub struct VmSshArgs {
    /// VM name.
    pub name: String,
    /// User to log in as (default: ssh's, i.e. your user name or ~/.ssh/config).
    #[arg(short = 'l', long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// Identity file (ssh -i).
    #[arg(short = 'i', long = "identity", value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// The command to run instead of a login shell (after --).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct VmConsoleArgs {
    /// VM name.
    pub name: String,
    /// Only watch: typed keys (but Ctrl-]) are not sent. Any number of readers may attach
    /// besides the one writer; a viewer token can only attach read-only.
    #[arg(long, conflicts_with = "force")]
    pub read_only: bool,
    /// Become the writer even if someone else is (they are disconnected).
    #[arg(long)]
    pub force: bool,
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
    /// VM name (or -l SELECTOR for every VM with those labels).
    #[arg(required_unless_present = "selector", conflicts_with = "selector")]
    pub name: Option<String>,
    /// Delete every VM of the project with these labels: KEY=VALUE[,KEY=VALUE...].
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,
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
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: TextFormat,
    },
    /// List tasks, newest first.
    List {
        /// Only tasks of this VM.
        #[arg(long, value_name = "NAME")]
        vm: Option<String>,
        /// Tasks of every project (admin); adds a PROJECT column.
        #[arg(long)]
        all_projects: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: TableFormat,
    },
    /// Cancel a pending or running task.
    Cancel {
        /// Task id.
        id: Uuid,
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
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: TableFormat,
    },
    /// Show one node.
    Get {
        /// Node name.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: TextFormat,
    },
    /// Create a one-time token an agent joins as NODE with (admin); prints the token.
    JoinToken {
        /// Node name the token is bound to.
        node: String,
        /// How long the token stays valid [default: server default (1h)].
        #[arg(long, value_name = "DURATION", value_parser = parse_whole_secs)]
        ttl: Option<u64>,
    },
    /// Revoke a node's certificate: its agent is cut off (admin).
    Revoke {
        /// Node name.
        node: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project, optionally with quotas.
    Create(ProjectCreateArgs),
    /// List projects with usage/limit.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: TableFormat,
    },
    /// Show one project.
    Get {
        /// Project name.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: TextFormat,
    },
    /// Delete a project that has no VMs.
    Delete {
        /// Project name.
        name: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ProjectCreateArgs {
    /// Project name.
    pub name: String,
    /// Most VMs the project may hold [default: unlimited].
    #[arg(long, value_name = "N")]
    pub max_vms: Option<u64>,
    /// Most vCPUs its VMs may have in total [default: unlimited].
    #[arg(long, value_name = "N")]
    pub max_vcpus: Option<u64>,
    /// Most memory (MiB) its VMs may have in total [default: unlimited].
    #[arg(long, value_name = "N")]
    pub max_memory_mb: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token; prints its secret once.
    Create(TokenCreateArgs),
    /// List API tokens (never their secrets).
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: TableFormat,
    },
    /// Revoke an API token; effective on its next request.
    Revoke {
        /// Token name.
        name: String,
    },
}

/// `token create`; the token's project is the global `--project` (or the context's).
#[derive(Debug, Clone, Args)]
pub struct TokenCreateArgs {
    /// Token name.
    pub name: String,
    /// What the token may do.
    #[arg(long, value_enum, value_name = "ROLE")]
    pub role: RoleArg,
    /// Lifetime, e.g. 12h or 30d [default: never expires].
    #[arg(long, value_name = "DURATION", value_parser = parse_expires)]
    pub expires: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Admin,
    Member,
    Viewer,
}

impl RoleArg {
    pub fn as_str(self) -> &'static str {
        match self {
            RoleArg::Admin => "admin",
            RoleArg::Member => "member",
            RoleArg::Viewer => "viewer",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Add a server: shows its CA fingerprint and asks to trust it (the first remote
    /// becomes the current one; the global --project becomes its default project).
    Add(RemoteAddArgs),
    /// List remotes; * marks the current one.
    List,
    /// Make a remote the current one.
    Switch {
        /// Remote name.
        name: String,
    },
    /// Forget a remote.
    Remove {
        /// Remote name.
        name: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct RemoteAddArgs {
    /// Remote name.
    pub name: String,
    /// Server URL, e.g. https://otherix.example:7080.
    pub url: String,
    /// File holding the API token (e.g. the server's DATA_DIR/admin.token).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Trust the presented certificate without asking (scripts).
    #[arg(long)]
    pub accept_certificate: bool,
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create a storage pool; agents serve it at their own paths (--pool NAME=PATH).
    Create {
        /// Pool name.
        name: String,
        /// Free-form description.
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
    },
    /// List storage pools.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: TableFormat,
    },
    /// Show one storage pool and the nodes serving it.
    Get {
        /// Pool name.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: TextFormat,
    },
    /// Delete a storage pool no VM uses.
    Delete {
        /// Pool name.
        name: String,
    },
    /// List the base images cached in a pool, per node.
    Images {
        /// Pool name.
        pool: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: TableFormat,
    },
    /// Remove the cached images no VM uses, on every node of a pool.
    PruneImages {
        /// Pool name.
        pool: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: TextFormat,
    },
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a network; only bridge networks can be attached to VMs.
    Create(NetworkCreateArgs),
    /// List networks.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: TableFormat,
    },
    /// Show one network.
    Get {
        /// Network name.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: TextFormat,
    },
    /// Delete a network no VM uses.
    Delete {
        /// Network name.
        name: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct NetworkCreateArgs {
    /// Network name.
    pub name: String,
    /// Network type.
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub network_type: NetworkTypeArg,
    /// Host bridge interface (required for --type bridge, only valid with it).
    #[arg(long, value_name = "IFNAME", required_if_eq("network_type", "bridge"))]
    pub bridge: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkTypeArg {
    Bridge,
    Nat,
    Isolated,
}

impl From<NetworkTypeArg> for NetworkType {
    fn from(t: NetworkTypeArg) -> Self {
        match t {
            NetworkTypeArg::Bridge => NetworkType::Bridge,
            NetworkTypeArg::Nat => NetworkType::Nat,
            NetworkTypeArg::Isolated => NetworkType::Isolated,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum FirmwareCommand {
    /// List firmware, built-ins included.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: TableFormat,
    },
    /// Show one firmware.
    Get {
        /// Firmware name.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: TextFormat,
    },
    /// Register a firmware whose files exist on the nodes.
    Create(FirmwareCreateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct FirmwareCreateArgs {
    /// Firmware name.
    pub name: String,
    /// Guest architecture it boots.
    #[arg(long, value_name = "ARCH", value_parser = arch_parser())]
    pub arch: Arch,
    /// Firmware type.
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub firmware_type: FirmwareTypeArg,
    /// Path of the code image on the nodes (required for --type uefi).
    #[arg(long, value_name = "PATH", required_if_eq("firmware_type", "uefi"))]
    pub code: Option<String>,
    /// Path on the nodes of the UEFI variable store template copied per VM.
    #[arg(long, value_name = "PATH")]
    pub vars_template: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FirmwareTypeArg {
    Bios,
    Uefi,
}

impl From<FirmwareTypeArg> for FirmwareType {
    fn from(t: FirmwareTypeArg) -> Self {
        match t {
            FirmwareTypeArg::Bios => FirmwareType::Bios,
            FirmwareTypeArg::Uefi => FirmwareType::Uefi,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show the cluster settings.
    Get {
        /// Output format: key/value text, the server's JSON, or a re-appliable manifest.
        #[arg(short, long, value_enum, default_value_t)]
        output: GetFormat,
    },
    /// Change one cluster setting.
    #[command(subcommand)]
    Set(ClusterSetCommand),
}

#[derive(Debug, Subcommand)]
pub enum ClusterSetCommand {
    /// The pool VMs are created in when they name none.
    DefaultPool {
        /// Pool name.
        name: String,
    },
    /// vCPUs the scheduler commits per host core (0.1..64; unset: 4).
    #[command(alias = "cpu_allocation_ratio")]
    CpuAllocationRatio {
        /// A number, e.g. 8 or 2.5.
        ratio: f64,
    },
    /// Guest memory the scheduler commits per MiB of host memory (0.1..4; unset: 1).
    #[command(alias = "memory_allocation_ratio")]
    MemoryAllocationRatio {
        /// A number, e.g. 1.5.
        ratio: f64,
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

fn restart_policy_parser() -> impl TypedValueParser<Value = RestartPolicy> {
    const ALL: [RestartPolicy; 3] = [
        RestartPolicy::Always,
        RestartPolicy::OnFailure,
        RestartPolicy::Never,
    ];
    PossibleValuesParser::new(ALL.map(RestartPolicy::as_str)).map(|s| {
        ALL.into_iter()
            .find(|p| p.as_str() == s)
            .expect("possible values are policies")
    })
}

/// A `--port HOST:GUEST[/tcp|udp]` port forward; both ports 1..65535, tcp by default.
pub fn parse_port(s: &str) -> Result<PortForward, String> {
    const SHAPE: &str = "expected HOST:GUEST[/tcp|udp], e.g. 8080:80";
    let (ports, protocol) = match s.split_once('/') {
        None => (s, PortProtocol::Tcp),
        Some((ports, proto)) => match proto.to_ascii_lowercase().as_str() {
            "tcp" => (ports, PortProtocol::Tcp),
            "udp" => (ports, PortProtocol::Udp),
            _ => return Err(format!("unknown protocol {proto:?}; {SHAPE}")),
        },
    };
    let (host, guest) = ports.split_once(':').ok_or_else(|| SHAPE.to_owned())?;
    let port = |which: &str, v: &str| -> Result<u16, String> {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{which} port {v:?} is not a number; {SHAPE}"));
        }
        match v.parse::<u16>() {
            Ok(p) if p >= 1 => Ok(p),
            _ => Err(format!(
                "{which} port {v} is out of range; ports must be 1..65535"
            )),
        }
    };
    Ok(PortForward {
        host: port("host", host)?,
        guest: port("guest", guest)?,
        protocol,
    })
}

fn arch_parser() -> impl TypedValueParser<Value = Arch> {
    PossibleValuesParser::new([Arch::Amd64.as_str(), Arch::Arm64.as_str()])
        .map(|s| Arch::parse(&s).expect("possible values are arches"))
}

/// Phases a VM list can filter on: all but `deleted` (deleted VMs are not listed).
fn phase_parser() -> impl TypedValueParser<Value = VmPhase> {
    PossibleValuesParser::new(
        VmPhase::ALL
            .into_iter()
            .filter(|p| *p != VmPhase::Deleted)
            .map(VmPhase::as_str),
    )
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

/// A positive duration in whole seconds, returned as seconds (`--ttl`).
pub fn parse_whole_secs(s: &str) -> Result<u64, String> {
    let d = parse_duration(s)?;
    if d.subsec_nanos() != 0 {
        return Err("must be whole seconds".into());
    }
    if d.is_zero() {
        return Err("must be greater than 0".into());
    }
    Ok(d.as_secs())
}

/// A token lifetime: a duration, or whole days like `30d`, returned as seconds.
pub fn parse_expires(s: &str) -> Result<u64, String> {
    const DAY: u64 = 24 * 3600;
    match s.trim().strip_suffix('d') {
        Some(days) if !days.is_empty() && days.bytes().all(|b| b.is_ascii_digit()) => {
            match days.parse::<u64>().ok().and_then(|d| d.checked_mul(DAY)) {
                Some(0) => Err("must be greater than 0".into()),
                Some(secs) => Ok(secs),
                None => Err(format!("invalid duration {s:?}: number too large")),
            }
        }
        _ => parse_whole_secs(s),
    }
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
        assert_eq!(cli.server.as_deref(), Some("http://h:1"));
    }

    #[test]
    fn global_remote_and_project_flags_parse_anywhere() {
        let cli = parse(&[
            "otherix",
            "--remote",
            "lab",
            "vm",
            "list",
            "--project",
            "dev",
        ])
        .unwrap();
        assert_eq!(cli.remote.as_deref(), Some("lab"));
        assert_eq!(cli.project.as_deref(), Some("dev"));
        match cli.command {
            Command::Vm(VmCommand::List(a)) => assert!(!a.all_projects),
            other => panic!("{other:?}"),
        }
        let cli = parse(&["otherix", "task", "list", "--all-projects"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Task(TaskCommand::List {
                all_projects: true,
                ..
            })
        ));
    }

    #[test]
    fn identity_commands_parse() {
        let cli = parse(&[
            "otherix",
            "token",
            "create",
            "ci",
            "--project",
            "dev",
            "--role",
            "member",
            "--expires",
            "30d",
        ])
        .unwrap();
        assert_eq!(cli.project.as_deref(), Some("dev"));
        match cli.command {
            Command::Token(TokenCommand::Create(a)) => {
                assert_eq!((a.name.as_str(), a.role), ("ci", RoleArg::Member));
                assert_eq!(a.expires, Some(30 * 86400));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["otherix", "token", "create", "ci", "--role", "root"]).is_err());
        let cli = parse(&[
            "otherix",
            "remote",
            "add",
            "lab",
            "https://lab:7080",
            "--token-file",
            "t",
            "--project",
            "dev",
            "--accept-certificate",
        ])
        .unwrap();
        assert_eq!(cli.project.as_deref(), Some("dev"));
        match cli.command {
            Command::Remote(RemoteCommand::Add(a)) => {
                assert_eq!(
                    (a.name.as_str(), a.url.as_str()),
                    ("lab", "https://lab:7080")
                );
                assert!(a.accept_certificate);
                assert_eq!(a.token_file, Some(PathBuf::from("t")));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["otherix", "node", "join-token", "node-2", "--ttl", "30m"])
            .unwrap()
            .command
        {
            Command::Node(NodeCommand::JoinToken { node, ttl }) => {
                assert_eq!((node.as_str(), ttl), ("node-2", Some(1800)))
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["otherix", "node", "join-token", "n", "--ttl", "0s"]).is_err());
        assert!(parse(&[
            "otherix",
            "project",
            "create",
            "dev",
            "--max-vms",
            "10",
            "--max-vcpus",
            "16",
            "--max-memory-mb",
            "32768"
        ])
        .is_ok());
        assert!(parse(&["otherix", "project", "create", "dev", "--max-vms", "-1"]).is_err());
        assert!(parse(&["otherix", "whoami", "-o", "json"]).is_ok());
        assert!(parse(&["otherix", "remote", "list"]).is_ok());
    }

    #[test]
    fn parse_expires_table() {
        let table: &[(&str, Result<u64, &str>)] = &[
            ("30d", Ok(30 * 86400)),
            ("1d", Ok(86400)),
            ("12h", Ok(43200)),
            ("90", Ok(90)),
            ("1h30m", Ok(5400)),
            ("0d", Err("greater than 0")),
            ("0s", Err("greater than 0")),
            ("1500ms", Err("whole seconds")),
            ("d", Err("invalid duration")),
            ("3w", Err("unknown unit")),
            ("99999999999999999999d", Err("number too large")),
        ];
        for (input, want) in table {
            match (parse_expires(input), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, *w, "{input}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{input}: {e}"),
                (got, _) => panic!("{input}: {got:?}"),
            }
        }
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
mod entity_tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        let mut argv = vec!["otherix"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|c| c.command)
    }

    fn create_with(extra: &[&str]) -> Result<CreateArgsRaw, clap::Error> {
        let mut argv = vec![
            "vm",
            "create",
            "web-1",
            "--image-url",
            "http://x/i.img",
            "--arch",
            "amd64",
        ];
        argv.extend_from_slice(extra);
        match parse(&argv)? {
            Command::Vm(VmCommand::Create(a)) => Ok(a.0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn help_lists_every_command_group_in_order() {
        use clap::CommandFactory;
        let names: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "vm",
                "task",
                "node",
                "pool",
                "network",
                "firmware",
                "cluster",
                "project",
                "token",
                "events",
                "whoami",
                "remote",
                "create",
                "diff",
                "delete",
                "completion"
            ]
        );
    }

    #[test]
    fn events_flags_parse_kinds_and_since() {
        match parse(&[
            "events", "--kind", "vm,task", "--kind", "node", "--since", "42", "-o", "json",
        ])
        .unwrap()
        {
            Command::Events(a) => {
                assert_eq!(a.kind, [EventKind::Vm, EventKind::Task, EventKind::Node]);
                assert_eq!(a.since.as_deref(), Some("42"));
                assert_eq!(a.output, TextFormat::Json);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["events", "--kind", "vms"]).is_err());
        match parse(&["vm", "list", "--watch"]).unwrap() {
            Command::Vm(VmCommand::List(a)) => assert!(a.watch),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parse_port_table() {
        let ok = |host, guest, protocol| {
            Ok(PortForward {
                host,
                guest,
                protocol,
            })
        };
        let table: &[(&str, Result<PortForward, &str>)] = &[
            ("8080:80", ok(8080, 80, PortProtocol::Tcp)),
            ("8080:80/tcp", ok(8080, 80, PortProtocol::Tcp)),
            ("5353:53/udp", ok(5353, 53, PortProtocol::Udp)),
            ("5353:53/UDP", ok(5353, 53, PortProtocol::Udp)),
            ("1:65535", ok(1, 65535, PortProtocol::Tcp)),
            (
                "0:80",
                Err("host port 0 is out of range; ports must be 1..65535"),
            ),
            (
                "80:0",
                Err("guest port 0 is out of range; ports must be 1..65535"),
            ),
            (
                "65536:80",
                Err("host port 65536 is out of range; ports must be 1..65535"),
            ),
            ("99999999999999999999:80", Err("out of range")),
            ("8080", Err("expected HOST:GUEST[/tcp|udp], e.g. 8080:80")),
            ("8080:80/sctp", Err("unknown protocol \"sctp\"")),
            (":80", Err("host port \"\" is not a number")),
            ("http:80", Err("host port \"http\" is not a number")),
            ("-1:80", Err("is not a number")),
            ("80:+22", Err("guest port \"+22\" is not a number")),
            ("8080:80:90", Err("guest port \"80:90\" is not a number")),
            ("", Err("expected HOST:GUEST")),
        ];
        for (input, want) in table {
            match (parse_port(input), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, *w, "{input}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{input}: {e}"),
                (got, _) => panic!("{input}: {got:?}"),
            }
        }
    }

    #[test]
    fn vm_create_port_is_repeatable_and_errors_name_the_flag() {
        let a = create_with(&["--port", "2222:22", "--port", "5353:53/udp"]).unwrap();
        assert_eq!(a.ports.len(), 2);
        assert_eq!(a.ports[1].protocol, PortProtocol::Udp);
        assert!(create_with(&[]).unwrap().ports.is_empty());
        for bad in ["0:22", "22", "22:22/icmp"] {
            let err = create_with(&["--port", bad]).unwrap_err().to_string();
            assert!(err.contains("--port"), "{bad}: {err}");
        }
    }

    #[test]
    fn vm_create_port_conflicts_with_network() {
        let err = create_with(&["--port", "2222:22", "--network", "lan"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--port") && err.contains("--network"), "{err}");
    }

    #[test]
    fn vm_create_restart_policy_values_and_default() {
        assert_eq!(
            create_with(&[]).unwrap().restart_policy,
            RestartPolicy::OnFailure
        );
        for (v, want) in [
            ("always", RestartPolicy::Always),
            ("on-failure", RestartPolicy::OnFailure),
            ("never", RestartPolicy::Never),
        ] {
            assert_eq!(
                create_with(&["--restart-policy", v])
                    .unwrap()
                    .restart_policy,
                want
            );
        }
        let err = create_with(&["--restart-policy", "unless-stopped"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--restart-policy"), "{err}");
    }

    #[test]
    fn vm_list_status_accepts_every_phase_but_deleted() {
        for phase in [
            "pending",
            "creating",
            "starting",
            "running",
            "paused",
            "stopping",
            "stopped",
            "rebooting",
            "deleting",
            "failed",
            "unknown",
        ] {
            match parse(&["vm", "list", "--status", phase]).unwrap() {
                Command::Vm(VmCommand::List(a)) => {
                    assert_eq!(a.status.map(VmPhase::as_str), Some(phase))
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(parse(&["vm", "list", "--status", "deleted"]).is_err());
    }

    #[test]
    fn vm_logs_parses_follow() {
        match parse(&["vm", "logs", "web-1"]).unwrap() {
            Command::Vm(VmCommand::Logs(a)) => assert!(a.name == "web-1" && !a.follow),
            other => panic!("{other:?}"),
        }
        match parse(&["vm", "logs", "web-1", "-f"]).unwrap() {
            Command::Vm(VmCommand::Logs(a)) => assert!(a.follow),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["vm", "logs"]).is_err());
    }

    #[test]
    fn task_cancel_requires_uuid() {
        assert!(parse(&["task", "cancel", "nope"]).is_err());
        assert!(parse(&["task", "cancel"]).is_err());
        match parse(&["task", "cancel", "6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11"]).unwrap() {
            Command::Task(TaskCommand::Cancel { id }) => {
                assert_eq!(id.to_string(), "6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pool_commands_parse() {
        match parse(&["pool", "create", "fast", "--description", "NVMe"]).unwrap() {
            Command::Pool(PoolCommand::Create { name, description }) => {
                assert_eq!(
                    (name.as_str(), description.as_deref()),
                    ("fast", Some("NVMe"))
                )
            }
            other => panic!("{other:?}"),
        }
        match parse(&["pool", "images", "default", "-o", "json"]).unwrap() {
            Command::Pool(PoolCommand::Images { pool, output }) => {
                assert_eq!((pool.as_str(), output), ("default", TableFormat::Json))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["pool", "prune-images", "default"]).unwrap(),
            Command::Pool(PoolCommand::PruneImages { .. })
        ));
        assert!(matches!(
            parse(&["pool", "delete", "fast"]).unwrap(),
            Command::Pool(PoolCommand::Delete { .. })
        ));
        assert!(parse(&["pool", "create"]).is_err());
        assert!(parse(&["pool", "images"]).is_err());
        assert!(parse(&["pool", "images", "default", "-o", "yaml"]).is_err());
    }

    #[test]
    fn network_create_bridge_requires_bridge_flag() {
        let err = parse(&["network", "create", "lan", "--type", "bridge"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        assert!(err.to_string().contains("--bridge"), "{err}");
        assert!(parse(&["network", "create", "lan", "--type", "nat"]).is_ok());
        assert!(parse(&["network", "create", "lan"]).is_err());
        assert!(parse(&["network", "delete", "lan"]).is_ok());
        assert!(parse(&["network", "get", "lan", "-o", "json"]).is_ok());
    }

    #[test]
    fn firmware_create_uefi_requires_code() {
        let err = parse(&[
            "firmware", "create", "fw", "--arch", "amd64", "--type", "uefi",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        assert!(err.to_string().contains("--code"), "{err}");
        assert!(parse(&["firmware", "create", "fw", "--arch", "amd64", "--type", "bios"]).is_ok());
        assert!(parse(&["firmware", "delete", "fw"]).is_err());
    }

    #[test]
    fn cluster_get_and_set_default_pool_parse() {
        match parse(&["cluster", "get", "-o", "yaml"]).unwrap() {
            Command::Cluster(ClusterCommand::Get { output }) => assert_eq!(output, GetFormat::Yaml),
            other => panic!("{other:?}"),
        }
        match parse(&["cluster", "set", "default-pool", "fast"]).unwrap() {
            Command::Cluster(ClusterCommand::Set(ClusterSetCommand::DefaultPool { name })) => {
                assert_eq!(name, "fast")
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["cluster", "set", "default-pool"]).is_err());
        for spelling in ["cpu-allocation-ratio", "cpu_allocation_ratio"] {
            match parse(&["cluster", "set", spelling, "8"]).unwrap() {
                Command::Cluster(ClusterCommand::Set(ClusterSetCommand::CpuAllocationRatio {
                    ratio,
                })) => assert_eq!(ratio, 8.0),
                other => panic!("{other:?}"),
            }
        }
        assert!(parse(&["cluster", "set", "memory-allocation-ratio", "lots"]).is_err());
        assert!(parse(&["cluster", "set", "nonsense", "x"]).is_err());
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
