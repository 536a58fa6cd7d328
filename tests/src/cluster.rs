//! A real single- or multi-node otherix cluster for one test: `otherixd` on an SQLite file
//! in a temp dir, one `otherix-agent --accel tcg` per node, and the `otherix` CLI pointed at
//! it. Dropping the cluster kills every process it started, QEMU guests included, and on a
//! failing test prints the tail of each process log.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

fn free_addr() -> String {
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
        let mut cluster = Cluster {
            api_url: format!("http://{api_addr}"),
            agent_url: format!("http://{agent_addr}"),
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
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("open log")
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
        let url = self.api_url.clone();
        wait::until("otherixd /healthz", Duration::from_secs(30), || {
            let (status, _) = http_request(&url, "GET", "/healthz", None, &[]).ok()?;
            (status == 200).then_some(())
        });
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
        proc.child = Some(self.spawn_agent_process(&proc.name, &proc.args));
        self.agents.push(proc);
    }

    fn spawn_agent_process(&self, name: &str, args: &[String]) -> Child {
        Command::new(bin("otherix-agent"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(self.log_file(&format!("agent-{name}")))
            .stderr(self.log_file(&format!("agent-{name}")))
            .spawn()
            .expect("spawn otherix-agent")
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
        let mut child = Command::new(bin("otherix"))
            .args(args)
            .env("OTHERIX_SERVER", &self.api_url)
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

    /// Starts `otherix ARGS` in the background (e.g. `create -f DIR --watch`), its stdout
    /// and stderr going to `<name>.out` / `<name>.err` in the cluster dir. Killed on drop.
    pub fn cli_background(&mut self, name: &str, args: &[&str]) -> BackgroundCli {
        let out = self.dir.path().join(format!("{name}.out"));
        let err = self.dir.path().join(format!("{name}.err"));
        let child = Command::new(bin("otherix"))
            .args(args)
            .env("OTHERIX_SERVER", &self.api_url)
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

    pub fn request_with_headers(
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
    /// `extra` flags, then waits for the guest's READY marker. Returns the QEMU pid.
    pub fn create_booted(&self, name: &str, url: &str, extra: &[&str]) -> u32 {
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
        self.cli(&args).ok();
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
        for entry in std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
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

/// A minimal blocking HTTP/1.1 client (Connection: close), enough for JSON APIs.
pub fn http_request(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let hostport = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(hostport)?;
    stream.set_read_timeout(Some(Duration::from_secs(90)))?;
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("malformed response: {text:?}")))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        decode_chunked(rest)
    } else {
        rest.to_owned()
    };
    Ok((status, body))
}

fn decode_chunked(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size_line, rest)) = s.split_once("\r\n") {
        let size = usize::from_str_radix(size_line.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        s = rest[size..].trim_start_matches("\r\n");
    }
    out
}
