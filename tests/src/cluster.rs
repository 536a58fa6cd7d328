//! A real single- or multi-node otherix cluster for one test: `otherixd` on an SQLite file
//! in a temp dir serving HTTPS and a TLS gateway (its own CA; plain HTTP only when a test
//! passes `--insecure-http` in `server_args`), one
//! `otherix-agent --accel tcg` per node enrolled with a join token, and the `otherix` CLI
//! pointed at it through a config file (`OTHERIX_CONFIG`). Requests trust only the
//! cluster's CA and carry the admin token (`DATA/server/admin.token`) when the server
//! wrote one. Dropping the cluster kills every process it started, QEMU guests included,
//! and on a failing test prints the tail of each process log.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;

use crate::paths::bin;
use crate::wait;

/// One node of the cluster: its name and the pools its agent serves.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub name: String,
    pub pools: Vec<String>,
    pub extra_args: Vec<String>,
}

impl NodeOptions {
    pub fn new(name: &str, pools: &[&str]) -> Self {
        NodeOptions {
            name: name.to_owned(),
            pools: pools.iter().map(|p| p.to_string()).collect(),
            extra_args: Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub nodes: Vec<NodeOptions>,
    pub database_url: Option<String>,
    /// Extra otherixd arguments, e.g. `--manifests-dir DIR`.
    pub server_args: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: vec![NodeOptions::new("node-1", &["default"])],
            database_url: None,
            server_args: Vec::new(),
        }
    }
}

struct AgentProc {
    name: String,
    child: Option<Child>,
    args: Vec<String>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub api_url: String,
    pub agent_url: String,
    api_addr: String,
    agent_addr: String,
    database_url: Option<String>,
    server_args: Vec<String>,
    server: Option<Child>,
    agents: Vec<AgentProc>,
}

/// A CLI process running in the background; killed when dropped.
pub struct BackgroundCli {
    child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl BackgroundCli {
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
    /// Waits until stdout has `needle` at least `count` times.
    pub fn wait_stdout(&self, needle: &str, count: usize, timeout: Duration) {
        wait::until(&format!("{count}x {needle:?} on stdout"), timeout, || {
            (self.stdout_text().matches(needle).count() >= count).then_some(())
        })
    }
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) {
        wait::until(&format!("{needle:?} on stderr"), timeout, || {
            self.stderr_text().contains(needle).then_some(())
        })
    }
}

impl Drop for BackgroundCli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one CLI run printed.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Panics with both streams unless the command exited 0.
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "command failed: {self:#?}");
        self
    }
    /// Panics unless the command failed with exit 1 and `error: <code>: ...` on stderr.
    pub fn expect_error(self, code: &str) -> Self {
        assert_eq!(self.code, 1, "expected error {code}: {self:#?}");
        assert!(
            self.stderr.starts_with(&format!("error: {code}: ")),
            "expected error {code}: {}",
            self.stderr
        );
        self
    }
    /// The task id of the first `task=<uuid>` on stdout.
    pub fn task_id(&self) -> String {
        crate::uuid_after(&self.stdout, "task=").to_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

/// A free `127.0.0.1:PORT` (bound then released).
pub fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().unwrap().to_string()
}

impl Cluster {
    pub fn start() -> Cluster {
        Self::start_with(ClusterOptions::default())
    }

    pub fn start_with(opts: ClusterOptions) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("otx-")
            .tempdir()
            .expect("tempdir");
        // Traversable (not listable) by others: QEMU runs as --qemu-user (otherix-qemu)
        // and must reach its VM's files under the pools and data dirs in here.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
                .expect("chmod tempdir");
        }
        let api_addr = free_addr();
        let agent_addr = free_addr();
        let scheme = if opts.server_args.iter().any(|a| a == "--insecure-http") {
            "http"
        } else {
            "https"
        };
        let mut cluster = Cluster {
            api_url: format!("{scheme}://{api_addr}"),
            agent_url: format!("{scheme}://{agent_addr}"),
            api_addr,
            agent_addr,
            database_url: opts.database_url.clone(),
            server_args: opts.server_args.clone(),
            dir,
            server: None,
            agents: Vec::new(),
        };
        cluster.start_server();
        for node in &opts.nodes {
            cluster.add_agent(node);
        }
        for node in &opts.nodes {
            cluster.wait_node_ready(&node.name);
        }
        cluster
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        open_log(self.dir.path(), name)
    }

    /// Starts (or restarts) otherixd on the same ports and data dir.
    pub fn start_server(&mut self) {
        let data = self.dir.path().join("server");
        let mut cmd = Command::new(bin("otherixd"));
        cmd.arg("--listen")
            .arg(&self.api_addr)
            .arg("--agent-listen")
            .arg(&self.agent_addr)
            .arg("--data-dir")
            .arg(&data);
        if let Some(url) = &self.database_url {
            cmd.arg("--database-url").arg(url);
        }
        cmd.args(&self.server_args);
        let child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(self.log_file("otherixd"))
            .stderr(self.log_file("otherixd"))
            .spawn()
            .expect("spawn otherixd");
        self.server = Some(child);
        wait_healthz(
            &self.api_url,
            self.is_tls().then(|| self.ca_cert_path()).as_deref(),
        );
        self.write_cli_config();
    }

    /// Whether the cluster runs over TLS (it does unless started with `--insecure-http`).
    pub fn is_tls(&self) -> bool {
        self.api_url.starts_with("https://")
    }

    /// `DATA/server`, otherixd's data dir.
    pub fn server_data_dir(&self) -> PathBuf {
        self.dir.path().join("server")
    }

    /// The cluster CA otherixd created (`DATA/server/tls/ca.crt`).
    pub fn ca_cert_path(&self) -> PathBuf {
        self.server_data_dir().join("tls").join("ca.crt")
    }

    /// The CA fingerprint otherixd printed at start (`otherixd: CA fingerprint <hex>`).
    pub fn ca_fingerprint(&self) -> String {
        logged_ca_fingerprint(&self.dir.path().join("otherixd.log"))
    }

    /// The admin token otherixd wrote at first start, if it writes one.
    pub fn admin_token(&self) -> Option<String> {
        std::fs::read_to_string(self.server_data_dir().join("admin.token"))
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
    }

    /// The CLI config file the harness writes (`OTHERIX_CONFIG`).
    pub fn cli_config_path(&self) -> PathBuf {
        self.dir.path().join("otherix-config.yaml")
    }

    /// Writes the CLI config: one remote `local` with the URL, the admin token when known,
    /// the CA and its fingerprint.
    fn write_cli_config(&self) {
        let mut yaml = String::from("current_remote: local\nremotes:\n  local:\n");
        yaml.push_str(&format!("    url: {}\n", self.api_url));
        if let Some(token) = self.admin_token() {
            yaml.push_str(&format!("    token: {token}\n"));
        }
        if !self.is_tls() {
            std::fs::write(self.cli_config_path(), yaml).expect("write the CLI config");
            return;
        }
        let ca = std::fs::read_to_string(self.ca_cert_path()).expect("ca.crt");
        yaml.push_str("    ca_cert: |\n");
        for line in ca.lines() {
            yaml.push_str(&format!("      {line}\n"));
        }
        yaml.push_str(&format!("    fingerprint: {}\n", self.ca_fingerprint()));
        std::fs::write(self.cli_config_path(), yaml).expect("write the CLI config");
    }

    /// `POST /v1/nodes/{node}/join-token`; the token.
    pub fn join_token(&self, node: &str, ttl_secs: Option<u64>) -> String {
        let body = match ttl_secs {
            Some(t) => serde_json::json!({ "ttl_secs": t }),
            None => serde_json::json!({}),
        };
        let (status, resp) = self.request(
            "POST",
            &format!("/v1/nodes/{node}/join-token"),
            Some(&body.to_string()),
        );
        assert_eq!(status, 201, "join token for {node}: {resp}");
        resp["token"].as_str().expect("token").to_owned()
    }

    /// Kills otherixd with SIGKILL (agents and VMs keep running).
    pub fn kill_server(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pool_path(&self, node: &str, pool: &str) -> PathBuf {
        self.dir.path().join(format!("{node}-pool-{pool}"))
    }

    pub fn agent_data_dir(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}-agent"))
    }

    /// Starts an agent for `node` (not waiting for it to be ready).
    pub fn add_agent(&mut self, node: &NodeOptions) {
        let mut args = vec![
            "--server".to_owned(),
            self.agent_url.clone(),
            "--node".to_owned(),
            node.name.clone(),
            "--data-dir".to_owned(),
            self.agent_data_dir(&node.name).display().to_string(),
            "--accel".to_owned(),
            "tcg".to_owned(),
        ];
        for pool in &node.pools {
            let path = self.pool_path(&node.name, pool);
            std::fs::create_dir_all(&path).expect("pool dir");
            args.push("--pool".into());
            args.push(format!("{pool}={}", path.display()));
        }
        args.extend(node.extra_args.iter().cloned());
        let mut proc = AgentProc {
            name: node.name.clone(),
            child: None,
            args,
        };
        // First start: enroll with a one-time join token; restarts reuse the certificate.
        let enrolled = self
            .agent_data_dir(&node.name)
            .join("tls")
            .join("node.crt")
            .exists();
        let token = (self.is_tls() && !enrolled).then(|| self.join_token(&node.name, None));
        let mut first_args = proc.args.clone();
        if let Some(t) = token {
            first_args.extend(["--join-token".to_owned(), t]);
        }
        proc.child = Some(self.spawn_agent_process(&proc.name, &first_args));
        self.agents.push(proc);
    }

    /// Runs `otherix-agent ARGS` with its output in `agent-<log_name>.log`, not managed by
    /// the cluster (the caller waits for or kills it; [`Drop`] kills what mentions the
    /// cluster dir).
    pub fn spawn_agent_process(&self, log_name: &str, args: &[String]) -> Child {
        spawn_agent(self.dir.path(), log_name, args)
    }

    /// Kills a node's agent with SIGKILL; its QEMU processes keep running.
    pub fn kill_agent(&mut self, node: &str) {
        let agent = self
            .agents
            .iter_mut()
            .find(|a| a.name == node)
            .expect("no such agent");
        if let Some(mut child) = agent.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed agent again with the same arguments.
    pub fn restart_agent(&mut self, node: &str) {
        let idx = self
            .agents
            .iter()
            .position(|a| a.name == node)
            .expect("no such agent");
        let (name, args) = (self.agents[idx].name.clone(), self.agents[idx].args.clone());
        let child = self.spawn_agent_process(&name, &args);
        self.agents[idx].child = Some(child);
    }

    pub fn wait_node_ready(&self, node: &str) {
        wait::until(
            &format!("node {node} ready"),
            Duration::from_secs(60),
            || {
                let (status, body) = self.get(&format!("/v1/nodes/{node}"));
                (status == 200 && body["status"] == "ready").then_some(())
            },
        );
    }

    /// Runs `otherix ARGS` against this cluster with no stdin (not a terminal).
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_with_stdin(args, None)
    }

    /// Runs `otherix ARGS` feeding `stdin`.
    pub fn cli_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> CliOutput {
        self.cli_env(args, stdin, &[])
    }

    /// Runs `otherix ARGS` with another API token (`OTHERIX_TOKEN`), same server and CA.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> CliOutput {
        self.cli_env(args, None, &[("OTHERIX_TOKEN", token)])
    }

    /// Runs `otherix ARGS` with extra environment variables (they win over the config).
    pub fn cli_env(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> CliOutput {
        run_cli(&self.cli_config_path(), args, stdin, env)
    }

    /// Starts `otherix ARGS` in the background (e.g. `create -f DIR --watch`), its stdout
    /// and stderr going to `<name>.out` / `<name>.err` in the cluster dir. Killed on drop.
    pub fn cli_background(&mut self, name: &str, args: &[&str]) -> BackgroundCli {
        self.cli_background_env(name, args, &[])
    }

    /// [`Cluster::cli_background`] with extra environment variables (they win over the
    /// config).
    pub fn cli_background_env(
        &self,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> BackgroundCli {
        let out = self.dir.path().join(format!("{name}.out"));
        let err = self.dir.path().join(format!("{name}.err"));
        let mut cmd = Command::new(bin("otherix"));
        cmd.args(args)
            .env("OTHERIX_CONFIG", self.cli_config_path())
            .env_remove("OTHERIX_SERVER")
            .env_remove("OTHERIX_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("spawn otherix");
        BackgroundCli {
            child,
            stdout: out,
            stderr: err,
        }
    }

    /// `GET path` over real HTTP; the status and the body parsed as JSON (Null if not JSON).
    pub fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, None)
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.request_with_headers(method, path, body, &[])
    }

    /// A request with extra headers; it carries the admin token unless `headers` has an
    /// `Authorization` of its own.
    pub fn request_with_headers(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let bearer = self.admin_token().map(|t| format!("Bearer {t}"));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(b) = &bearer {
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            {
                all.push(("Authorization", b));
            }
        }
        self.raw_request(method, path, body, &all)
    }

    /// A request with exactly `headers` (no token added), e.g. to see a 401.
    pub fn raw_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let (status, text) = http_request(&self.api_url, method, path, body, headers)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The VM as the server returns it.
    pub fn vm(&self, name: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/vms/{name}"));
        assert_eq!(status, 200, "GET vm {name}: {body}");
        body
    }

    /// `POST /v1/vms` with a raw spec; panics unless 202. Returns the task id.
    pub fn post_vm(&self, name: &str, spec: Value) -> String {
        let body = serde_json::json!({"name": name, "spec": spec}).to_string();
        let (status, resp) = self.request("POST", "/v1/vms", Some(&body));
        assert_eq!(status, 202, "POST /v1/vms {name}: {resp}");
        resp["task"]["id"].as_str().expect("task id").to_owned()
    }

    /// Long-polls a task until it is terminal; returns it.
    pub fn wait_task(&self, id: &str, timeout: Duration) -> Value {
        wait::until(&format!("task {id} terminal"), timeout, || {
            let (status, task) = self.get(&format!("/v1/tasks/{id}?wait_secs=2"));
            assert_eq!(status, 200, "GET task {id}: {task}");
            matches!(
                task["status"].as_str(),
                Some("success" | "failed" | "cancelled")
            )
            .then_some(task)
        })
    }

    /// `vm create NAME --image-url URL --arch amd64 --vcpus 1 --memory-mb 256 --wait` plus
    /// `extra` flags; panics unless it succeeds.
    pub fn create_running(&self, name: &str, url: &str, extra: &[&str]) -> CliOutput {
        let mut args = vec![
            "vm",
            "create",
            name,
            "--image-url",
            url,
            "--arch",
            "amd64",
            "--vcpus",
            "1",
            "--memory-mb",
            "256",
            "--wait",
        ];
        args.extend_from_slice(extra);
        self.cli(&args).ok()
    }

    /// [`Cluster::create_running`], then waits for the guest's READY marker. Returns the
    /// QEMU pid.
    pub fn create_booted(&self, name: &str, url: &str, extra: &[&str]) -> u32 {
        self.create_running(name, url, extra);
        wait::file_contains(
            &self.serial_log(name),
            "OTHERIX-TEST-GUEST-READY",
            Duration::from_secs(180),
        );
        self.vm(name)["status"]["pid"]
            .as_u64()
            .expect("a running VM has a pid") as u32
    }

    /// The serial console log path the server reports for a VM.
    pub fn serial_log(&self, name: &str) -> PathBuf {
        let vm = self.vm(name);
        PathBuf::from(
            vm["status"]["serial_log"]
                .as_str()
                .unwrap_or_else(|| panic!("vm {name} has no status.serial_log: {vm}")),
        )
    }

    fn print_logs(&self) {
        print_logs(self.dir.path());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        for agent in &mut self.agents {
            if let Some(mut child) = agent.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.kill_server();
        kill_processes_mentioning(self.dir.path());
    }
}

/// Appends to `DIR/<name>.log`.
pub fn open_log(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .expect("open log")
}

/// Waits until `url/healthz` answers 200; over https it trusts only the CA at `ca` (read
/// again on every try: otherixd writes it at start).
pub fn wait_healthz(url: &str, ca: Option<&Path>) {
    wait::until(
        &format!("otherixd /healthz at {url}"),
        Duration::from_secs(30),
        || {
            if let Some(ca) = ca {
                let pem = std::fs::read(ca).ok()?;
                register_ca(url, &pem);
            }
            let (status, _) = http_request(url, "GET", "/healthz", None, &[]).ok()?;
            (status == 200).then_some(())
        },
    );
}

/// The CA fingerprint otherixd printed at start in its log (`otherixd: CA fingerprint <hex>`).
pub fn logged_ca_fingerprint(log: &Path) -> String {
    wait::until("the CA fingerprint line", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(log).ok()?;
        text.lines()
            .rev()
            .find_map(|l| l.strip_prefix("otherixd: CA fingerprint "))
            .map(|fp| fp.trim().to_owned())
    })
}

/// Runs `otherix ARGS` with the config file `config` (`OTHERIX_CONFIG`), feeding `stdin`,
/// with extra environment variables (they win over the config).
pub fn run_cli(
    config: &Path,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> CliOutput {
    let mut cmd = Command::new(bin("otherix"));
    cmd.args(args)
        .env("OTHERIX_CONFIG", config)
        .env_remove("OTHERIX_SERVER")
        .env_remove("OTHERIX_TOKEN")
        .env_remove("OTHERIX_PROJECT")
        .env_remove("OTHERIX_CA_CERT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn otherix");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().expect("otherix output");
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `otherix-agent ARGS` with its output in `DIR/agent-<log_name>.log`.
pub fn spawn_agent(dir: &Path, log_name: &str, args: &[String]) -> Child {
    Command::new(bin("otherix-agent"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(open_log(dir, &format!("agent-{log_name}")))
        .stderr(open_log(dir, &format!("agent-{log_name}")))
        .spawn()
        .expect("spawn otherix-agent")
}

/// Prints the last 60 lines of every `*.log` in `dir` (on a failing test).
pub fn print_logs(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!("===== {} (last {} lines)", path.display(), tail.len());
            for l in tail {
                eprintln!("{l}");
            }
        }
    }
}

/// SIGKILLs every process whose command line mentions `dir` (the QEMU guests of a test).
pub fn kill_processes_mentioning(dir: &Path) {
    let needle = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// HTTPS clients per API base URL, each trusting only its cluster's CA.
fn clients() -> &'static Mutex<HashMap<String, reqwest::blocking::Client>> {
    static CLIENTS: OnceLock<Mutex<HashMap<String, reqwest::blocking::Client>>> = OnceLock::new();
    CLIENTS.get_or_init(Default::default)
}

fn client_builder() -> reqwest::blocking::ClientBuilder {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(90))
        .connect_timeout(Duration::from_secs(10))
}

/// Makes [`http_request`] to `base` trust `ca_pem` as its only root.
pub fn register_ca(base: &str, ca_pem: &[u8]) {
    let Ok(cert) = reqwest::Certificate::from_pem(ca_pem) else {
        return; // a half-written file: the caller retries
    };
    let client = client_builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert)
        .build()
        .expect("HTTPS client");
    clients()
        .lock()
        .expect("clients poisoned")
        .insert(base.to_owned(), client);
}

/// A blocking request to `base` + `path`: the status and the body text. Over https the
/// CA registered for `base` ([`register_ca`]) is the only trusted root. A body is sent as
/// `Content-Type: application/json` unless `headers` name another; `headers` are added
/// as given.
pub fn http_request(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let client = clients()
        .lock()
        .expect("clients poisoned")
        .get(base)
        .cloned();
    let client = match client {
        Some(c) => c,
        None => client_builder().build().map_err(std::io::Error::other)?,
    };
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(std::io::Error::other)?;
    let mut req = client.request(method, format!("{base}{path}"));
    if let Some(body) = body.filter(|b| !b.is_empty()) {
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            req = req.header("Content-Type", "application/json");
        }
        req = req.body(body.to_owned());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().map_err(std::io::Error::other)?;
    let status = resp.status().as_u16();
    let text = resp.text().map_err(std::io::Error::other)?;
    Ok((status, text))
}
