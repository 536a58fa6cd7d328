//! A real multi-replica otherix control plane for one test: N `otherixd` replicas on one
//! fresh PostgreSQL database ([`TestDatabase`]), each with its own data dir, HTTPS API and
//! TLS agent gateway on loopback; M `otherix-agent --accel tcg`, each given every replica's
//! gateway (`--server` once per replica, the list rotated per agent so agents spread over
//! the replicas); the CLI with one remote per replica (`r0`, `r1`, ...). Replica 0 starts
//! first and bootstraps the admin token, which every request and remote carries.
//!
//! The failover controls: which replica leads (the `leases` row's holder, matched to the
//! `leading holder=<id>` line its replica logs), SIGKILL / SIGSTOP / SIGCONT / restart a
//! replica, and the QEMU processes of a VM. Dropping the cluster kills every process it
//! started (QEMU included), then drops the database (or stops the throwaway server).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::cluster::{
    free_addr, http_request, kill_processes_mentioning, logged_ca_fingerprint, open_log,
    print_logs, run_cli, spawn_agent, wait_healthz, CliOutput, NodeOptions,
};
use crate::paths::bin;
use crate::postgres::TestDatabase;
use crate::procs::{qemu_pids_mentioning, strip_ansi};
use crate::wait;

#[derive(Clone, Debug)]
pub struct HaOptions {
    pub replicas: usize,
    pub nodes: Vec<NodeOptions>,
    /// Extra arguments for every otherixd.
    pub server_args: Vec<String>,
}

impl Default for HaOptions {
    fn default() -> Self {
        HaOptions {
            replicas: 3,
            nodes: vec![NodeOptions::new("node-1", &["default"])],
            server_args: Vec::new(),
        }
    }
}

struct Replica {
    api_addr: String,
    agent_addr: String,
    child: Option<Child>,
}

struct HaAgent {
    name: String,
    args: Vec<String>,
    child: Option<Child>,
}

pub struct HaCluster {
    pub dir: tempfile::TempDir,
    pub db: TestDatabase,
    server_args: Vec<String>,
    replicas: Vec<Replica>,
    agents: Vec<HaAgent>,
}

/// Milliseconds since the Unix epoch (the clock the lease rows use).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

impl HaCluster {
    pub fn start(opts: HaOptions) -> HaCluster {
        assert!(opts.replicas >= 1, "at least one replica");
        let dir = tempfile::Builder::new()
            .prefix("otx-ha-")
            .tempdir()
            .expect("tempdir");
        // Traversable by QEMU, which runs as --qemu-user (otherix-qemu).
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
                .expect("chmod tempdir");
        }
        let mut cluster = HaCluster {
            dir,
            db: TestDatabase::fresh(),
            server_args: opts.server_args.clone(),
            replicas: (0..opts.replicas)
                .map(|_| Replica {
                    api_addr: free_addr(),
                    agent_addr: free_addr(),
                    child: None,
                })
                .collect(),
            agents: Vec::new(),
        };
        // Replica 0 first: it bootstraps the admin token the others' requests use.
        for i in 0..opts.replicas {
            cluster.start_replica(i);
        }
        for (k, node) in opts.nodes.iter().enumerate() {
            cluster.add_agent(node, k % opts.replicas);
        }
        for node in &opts.nodes {
            cluster.wait_node_ready(0, &node.name);
        }
        cluster
    }

    pub fn replica_count(&self) -> usize {
        self.replicas.len()
    }

    pub fn api_url(&self, i: usize) -> String {
        format!("https://{}", self.replicas[i].api_addr)
    }

    pub fn agent_url(&self, i: usize) -> String {
        format!("https://{}", self.replicas[i].agent_addr)
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("replica-{i}"))
    }

    pub fn ca_cert_path(&self, i: usize) -> PathBuf {
        self.data_dir(i).join("tls").join("ca.crt")
    }

    pub fn replica_log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("otherixd-{i}.log"))
    }

    pub fn replica_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.replica_log_path(i)).unwrap_or_default()
    }

    /// The agent's log without its colour codes (the agent writes ANSI escapes even to a
    /// file).
    pub fn agent_log(&self, node: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("agent-{node}.log")))
            .unwrap_or_default();
        strip_ansi(&text)
    }

    /// Whether replica `i` has a running (or stopped, not killed) process.
    pub fn is_up(&self, i: usize) -> bool {
        self.replicas[i].child.is_some()
    }

    /// Indices of the replicas with a process.
    pub fn live_replicas(&self) -> Vec<usize> {
        (0..self.replicas.len())
            .filter(|&i| self.is_up(i))
            .collect()
    }

    /// Starts (or restarts) replica `i` on its ports and data dir; waits for /healthz.
    pub fn start_replica(&mut self, i: usize) {
        assert!(self.replicas[i].child.is_none(), "replica {i} is running");
        let child = Command::new(bin("otherixd"))
            .arg("--listen")
            .arg(&self.replicas[i].api_addr)
            .arg("--agent-listen")
            .arg(&self.replicas[i].agent_addr)
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .arg("--database-url")
            .arg(&self.db.url)
            .args(&self.server_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(open_log(self.dir.path(), &format!("otherixd-{i}")))
            .stderr(open_log(self.dir.path(), &format!("otherixd-{i}")))
            .spawn()
            .expect("spawn otherixd");
        self.replicas[i].child = Some(child);
        wait_healthz(&self.api_url(i), Some(&self.ca_cert_path(i)));
        self.write_cli_config();
    }

    fn signal(&self, i: usize, sig: Signal) {
        let child = self.replicas[i]
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("replica {i} is not running"));
        kill(Pid::from_raw(child.id() as i32), sig).expect("signal otherixd");
    }

    /// SIGKILL: no resign, the lease runs out.
    pub fn kill_replica(&mut self, i: usize) {
        if let Some(mut child) = self.replicas[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL without reaping (callable while other threads use the cluster); reap with
    /// [`HaCluster::kill_replica`].
    pub fn sigkill_replica(&self, i: usize) {
        self.signal(i, Signal::SIGKILL);
    }

    /// SIGTERM: a graceful stop (a leader resigns at once); returns without waiting.
    pub fn term_replica(&self, i: usize) {
        self.signal(i, Signal::SIGTERM);
    }

    /// Waits (up to `timeout`) until replica `i` exited, reaps it; its exit status.
    pub fn wait_replica_exit(&mut self, i: usize, timeout: Duration) -> std::process::ExitStatus {
        let child = self.replicas[i].child.as_mut().expect("running");
        let status = wait::until(&format!("replica {i} exits"), timeout, || {
            child.try_wait().ok().flatten()
        });
        self.replicas[i].child = None;
        status
    }

    /// SIGSTOP: the process is frozen with its connections open.
    pub fn freeze_replica(&self, i: usize) {
        self.signal(i, Signal::SIGSTOP);
    }

    /// SIGCONT after [`HaCluster::freeze_replica`].
    pub fn thaw_replica(&self, i: usize) {
        self.signal(i, Signal::SIGCONT);
    }

    pub fn restart_replica(&mut self, i: usize) {
        self.kill_replica(i);
        self.start_replica(i);
    }

    /// The admin token replica 0 bootstrapped.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir(0).join("admin.token"))
            .expect("replica 0 wrote admin.token")
            .trim()
            .to_owned()
    }

    pub fn cli_config_path(&self) -> PathBuf {
        self.dir.path().join("otherix-config.yaml")
    }

    /// One remote per replica that has started (`r0`, `r1`, ...), each pinning the CA that
    /// replica presents, all with the admin token; `r0` is current.
    fn write_cli_config(&self) {
        let token = self.admin_token();
        let mut yaml = String::from("current_remote: r0\nremotes:\n");
        for i in 0..self.replicas.len() {
            let Ok(ca) = std::fs::read_to_string(self.ca_cert_path(i)) else {
                continue;
            };
            yaml.push_str(&format!("  r{i}:\n    url: {}\n", self.api_url(i)));
            yaml.push_str(&format!("    token: {token}\n    ca_cert: |\n"));
            for line in ca.lines() {
                yaml.push_str(&format!("      {line}\n"));
            }
            let fp = logged_ca_fingerprint(&self.replica_log_path(i));
            yaml.push_str(&format!("    fingerprint: {fp}\n"));
        }
        std::fs::write(self.cli_config_path(), yaml).expect("write the CLI config");
    }

    /// `otherix --remote r<i> ARGS`.
    pub fn cli(&self, i: usize, args: &[&str]) -> CliOutput {
        let remote = format!("r{i}");
        let mut all = vec!["--remote", remote.as_str()];
        all.extend_from_slice(args);
        run_cli(&self.cli_config_path(), &all, None, &[])
    }

    /// A request to replica `i` with the admin token: the status and the body as JSON
    /// (Null if not JSON), or the transport error (a dead replica).
    pub fn try_request(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, Value)> {
        let auth = format!("Bearer {}", self.admin_token());
        let (status, text) = http_request(
            &self.api_url(i),
            method,
            path,
            body,
            &[("Authorization", &auth)],
        )?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    pub fn request(&self, i: usize, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.try_request(i, method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path} on replica {i}: {e}"))
    }

    pub fn get(&self, i: usize, path: &str) -> (u16, Value) {
        self.request(i, "GET", path, None)
    }

    /// `POST /v1/nodes/{node}/join-token` on replica `i`.
    pub fn join_token(&self, i: usize, node: &str) -> String {
        let (status, resp) = self.request(
            i,
            "POST",
            &format!("/v1/nodes/{node}/join-token"),
            Some("{}"),
        );
        assert_eq!(status, 201, "join token for {node}: {resp}");
        resp["token"].as_str().expect("token").to_owned()
    }

    pub fn pool_path(&self, node: &str, pool: &str) -> PathBuf {
        self.dir.path().join(format!("{node}-pool-{pool}"))
    }

    /// Starts an agent for `node` with `--server` for every replica, starting at replica
    /// `first` (it enrolls there, with a join token from that replica).
    pub fn add_agent(&mut self, node: &NodeOptions, first: usize) {
        let n = self.replicas.len();
        let mut args = Vec::new();
        for k in 0..n {
            args.push("--server".to_owned());
            args.push(self.agent_url((first + k) % n));
        }
        let data = self.dir.path().join(format!("{}-agent", node.name));
        args.extend([
            "--node".to_owned(),
            node.name.clone(),
            "--data-dir".to_owned(),
            data.display().to_string(),
            "--accel".to_owned(),
            "tcg".to_owned(),
        ]);
        for pool in &node.pools {
            let path = self.pool_path(&node.name, pool);
            std::fs::create_dir_all(&path).expect("pool dir");
            args.push("--pool".into());
            args.push(format!("{pool}={}", path.display()));
        }
        args.extend(node.extra_args.iter().cloned());
        let mut first_args = args.clone();
        first_args.extend([
            "--join-token".to_owned(),
            self.join_token(first, &node.name),
        ]);
        let child = spawn_agent(self.dir.path(), &node.name, &first_args);
        self.agents.push(HaAgent {
            name: node.name.clone(),
            args,
            child: Some(child),
        });
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

    /// Starts a killed agent again with its certificate (no join token).
    pub fn restart_agent(&mut self, node: &str) {
        let idx = self
            .agents
            .iter()
            .position(|a| a.name == node)
            .expect("no such agent");
        let child = spawn_agent(self.dir.path(), node, &self.agents[idx].args);
        self.agents[idx].child = Some(child);
    }

    /// Waits until replica `i` reports the node `ready`.
    pub fn wait_node_ready(&self, i: usize, node: &str) {
        wait::until(
            &format!("node {node} ready on replica {i}"),
            Duration::from_secs(60),
            || {
                let (status, body) = self
                    .try_request(i, "GET", &format!("/v1/nodes/{node}"), None)
                    .ok()?;
                (status == 200 && body["status"] == "ready").then_some(())
            },
        );
    }

    /// How many times replica `i` logged `node registered` for `node` (agent attaches).
    pub fn registrations(&self, i: usize, node: &str) -> usize {
        let needle = format!("node registered node={node} ");
        self.replica_log(i).matches(&needle).count()
    }

    /// The live replica that `node` registered with last (by the timestamps of the
    /// replicas' `node registered` log lines: RFC 3339 UTC, so they sort as text).
    pub fn attached_replica(&self, node: &str) -> Option<usize> {
        let needle = format!("node registered node={node} ");
        self.live_replicas()
            .into_iter()
            .filter_map(|i| {
                let log = self.replica_log(i);
                let line = log.lines().rev().find(|l| l.contains(&needle))?;
                Some((line.split_whitespace().next()?.to_owned(), i))
            })
            .max()
            .map(|(_, i)| i)
    }

    /// The live lease row: (holder, epoch), `None` while no one holds an unexpired lease.
    pub fn lease(&self) -> Option<(String, i64)> {
        let rows = self
            .db
            .query("SELECT holder, epoch, expires_at_ms FROM leases WHERE name = 'leader'");
        let row = rows.first()?;
        let holder = row.first().filter(|h| !h.is_empty())?.clone();
        let epoch = row.get(1)?.parse().ok()?;
        let expires: i64 = row.get(2)?.parse().ok()?;
        (expires > now_ms()).then_some((holder, epoch))
    }

    /// The replica whose log says it leads as `holder`.
    pub fn replica_of_holder(&self, holder: &str) -> Option<usize> {
        let needle = format!("leading holder={holder} ");
        (0..self.replicas.len()).find(|&i| self.replica_log(i).contains(&needle))
    }

    /// Who leads now: (replica, holder, epoch), once the lease row and the log agree.
    pub fn leader(&self) -> Option<(usize, String, i64)> {
        let (holder, epoch) = self.lease()?;
        let i = self.replica_of_holder(&holder)?;
        Some((i, holder, epoch))
    }

    pub fn wait_leader(&self, timeout: Duration) -> (usize, String, i64) {
        wait::until("a leader", timeout, || self.leader())
    }

    /// Polls (every 50 ms) until a lease holder other than `old_holder` leads; returns it
    /// and the time from `since`.
    pub fn wait_new_leader(
        &self,
        old_holder: &str,
        since: Instant,
        timeout: Duration,
    ) -> ((usize, String, i64), Duration) {
        let deadline = since + timeout;
        loop {
            if let Some(l) = self.leader().filter(|(_, h, _)| h != old_holder) {
                return (l, since.elapsed());
            }
            assert!(
                Instant::now() < deadline,
                "no new leader {timeout:?} after the old one ({old_holder}) went away"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pids of the QEMU processes whose command line mentions `needle` (a VM id: its
    /// files live under `vms/<id>/`).
    pub fn qemu_pids(&self, needle: &str) -> Vec<u32> {
        qemu_pids_mentioning(needle)
    }

    /// `vm create NAME` (1 vCPU, 128 MiB, no cloud-init, image `url`) through replica
    /// `first`, or the next one when that fails (a client retrying elsewhere while its
    /// replica is down). A retry that finds the VM already there (a dying replica committed
    /// it but never answered) counts as done. Returns the replica that answered.
    pub fn create_vm(&self, first: usize, name: &str, url: &str) -> usize {
        let n = self.replica_count();
        let mut errors = Vec::new();
        for attempt in 0..2 * n {
            let i = (first + attempt) % n;
            let out = self.cli(
                i,
                &[
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
                    "128",
                    "--no-cloud-init",
                ],
            );
            if out.code == 0 || (attempt > 0 && out.stderr.contains("already exists")) {
                return i;
            }
            errors.push(format!("replica {i}: {}", out.stderr.trim()));
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("vm create {name}: no replica answered: {errors:#?}");
    }

    /// Every VM, through replica `i` (all pages).
    pub fn list_vms(&self, i: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/vms?limit=100&cursor={c}"),
                None => "/v1/vms?limit=100".to_owned(),
            };
            let (status, body) = self.get(i, &path);
            assert_eq!(status, 200, "GET {path}: {body}");
            out.extend(body["items"].as_array().cloned().unwrap_or_default());
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return out,
            }
        }
    }

    /// [`HaCluster::registrations`] of `node` on every live replica.
    pub fn registrations_by_replica(&self, node: &str) -> HashMap<usize, usize> {
        self.live_replicas()
            .into_iter()
            .map(|i| (i, self.registrations(i, node)))
            .collect()
    }

    /// Polls (30 s at most) until a live replica logged `node registered` for `node` more
    /// often than in `before` (from [`HaCluster::registrations_by_replica`]): the agent
    /// attached again. The time from `since`.
    pub fn wait_reattached(
        &self,
        node: &str,
        before: &HashMap<usize, usize>,
        since: Instant,
    ) -> Duration {
        wait::until(
            &format!("{node} attached to another replica"),
            Duration::from_secs(30),
            || {
                self.live_replicas()
                    .into_iter()
                    .any(|i| self.registrations(i, node) > before.get(&i).copied().unwrap_or(0))
                    .then(|| since.elapsed())
            },
        )
    }
}

impl Drop for HaCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_logs(self.dir.path());
        }
        for agent in &mut self.agents {
            if let Some(mut child) = agent.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for i in 0..self.replicas.len() {
            self.kill_replica(i);
        }
        kill_processes_mentioning(self.dir.path());
    }
}
