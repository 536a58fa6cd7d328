//! What the figures share: a cluster of simulated nodes ([`SimNodes`]), timed API calls and
//! CLI runs, VM manifests on disk, per-VM create-to-running times from the task records,
//! and a process's RSS and CPU time read from /proc.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use otherix_e2e::cluster::{http_request, open_log};
use otherix_e2e::{CliOutput, Cluster, ClusterOptions};
use serde_json::Value;

/// Runs `f` and returns how long it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let out = f();
    (t.elapsed(), out)
}

/// An `otherix` CLI run, timed.
pub fn cli_timed(cluster: &Cluster, args: &[&str]) -> (Duration, CliOutput) {
    timed(|| cluster.cli(args))
}

/// A request with the admin token, timed; status and body text. Panics if unreachable.
pub fn api_timed(
    cluster: &Cluster,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (Duration, u16, String) {
    let bearer = cluster.admin_token().map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("Authorization", b)])
        .unwrap_or_default();
    let (d, res) = timed(|| http_request(&cluster.api_url, method, path, body, &headers));
    let (status, text) = res.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (d, status, text)
}

/// A VM manifest document.
pub fn vm_manifest(name: &str, url: &str, extra: &str) -> String {
    format!(
        "apiVersion: otherix.dev/v1\nkind: VM\nmetadata:\n  name: {name}\nspec:\n  image_url: {url}\n  arch: amd64\n  vcpus: 1\n  memory_mb: 128\n{extra}"
    )
}

/// Writes `names` as one manifest file each into a new directory under `parent`.
pub fn manifest_dir(parent: &Path, dir: &str, names: &[String], url: &str) -> PathBuf {
    let path = parent.join(dir);
    std::fs::create_dir_all(&path).expect("manifest dir");
    for name in names {
        std::fs::write(
            path.join(format!("{name}.yaml")),
            vm_manifest(name, url, ""),
        )
        .expect("write manifest");
    }
    path
}

/// `PREFIX-00001` ... for `range`.
pub fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i:05}")).collect()
}

/// Every task of the cluster, paged through `/v1/tasks`.
pub fn all_tasks(cluster: &Cluster) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/tasks?limit=1000&cursor={c}"),
            None => "/v1/tasks?limit=1000".to_owned(),
        };
        let (status, body) = cluster.get(&path);
        assert_eq!(status, 200, "GET {path}: {body}");
        out.extend(body["items"].as_array().cloned().unwrap_or_default());
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

fn parse_ts(v: &Value) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok()
}

/// Create-to-running of the successful `vm.create` tasks of VMs named `prefix-*`, from
/// their records: whole (created -> finished), until the server recorded the agent's first
/// update (created -> started: dispatch, the agent picking it up, the update written) and
/// the rest (started -> finished).
#[derive(Debug, Default)]
pub struct CreateTimes {
    pub whole: Vec<Duration>,
    pub queued: Vec<Duration>,
    pub on_agent: Vec<Duration>,
    /// The latest finish, as a wall-clock time.
    pub last: Option<std::time::SystemTime>,
}

pub fn create_to_running(cluster: &Cluster, prefix: &str) -> CreateTimes {
    let mut out = CreateTimes::default();
    let mut last: Option<chrono::DateTime<chrono::FixedOffset>> = None;
    let span = |a: chrono::DateTime<chrono::FixedOffset>,
                b: chrono::DateTime<chrono::FixedOffset>| {
        (b - a).to_std().unwrap_or_default()
    };
    for t in all_tasks(cluster) {
        let is_ours = t["kind"] == "vm.create"
            && t["status"] == "success"
            && t["vm_name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&format!("{prefix}-")));
        if !is_ours {
            continue;
        }
        let (c, s, f) = (
            parse_ts(&t["created_at"]),
            parse_ts(&t["started_at"]),
            parse_ts(&t["finished_at"]),
        );
        if let (Some(c), Some(f)) = (c, f) {
            out.whole.push(span(c, f));
            if let Some(s) = s {
                out.queued.push(span(c, s));
                out.on_agent.push(span(s, f));
            }
            last = Some(last.map_or(f, |l| l.max(f)));
        }
    }
    out.last = last.map(std::time::SystemTime::from);
    out
}

/// VMs by phase, counted over every page of `/v1/vms`.
pub fn phase_counts(cluster: &Cluster) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/vms?limit=1000&cursor={c}"),
            None => "/v1/vms?limit=1000".to_owned(),
        };
        let (status, body) = cluster.get(&path);
        assert_eq!(status, 200, "GET {path}: {body}");
        for vm in body["items"].as_array().into_iter().flatten() {
            let phase = vm["status"]["phase"].as_str().unwrap_or("?").to_owned();
            *counts.entry(phase).or_default() += 1;
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return counts,
        }
    }
}

/// Node name -> status, from `/v1/nodes`.
pub fn node_statuses(cluster: &Cluster) -> Vec<(String, String)> {
    let (status, body) = cluster.get("/v1/nodes?limit=1000");
    assert_eq!(status, 200, "GET /v1/nodes: {body}");
    body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or("?").to_owned(),
                n["status"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

/// Polls until `f` is true or `timeout` passes; whether it became true.
pub fn wait_for(timeout: Duration, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// The simulated nodes of a cluster: one `otherix-simnode` process (its state on tmpfs),
/// enrolled with real join tokens over TLS. Killed when dropped.
pub struct SimNodes {
    child: Child,
    _state: tempfile::TempDir,
}

impl SimNodes {
    pub fn start(cluster: &Cluster, count: usize) -> anyhow::Result<SimNodes> {
        let shm = Path::new("/dev/shm");
        let state = if shm.is_dir() {
            tempfile::Builder::new().prefix("otx-sim-").tempdir_in(shm)
        } else {
            tempfile::Builder::new().prefix("otx-sim-").tempdir()
        }?;
        let names: Vec<String> = (1..=count).map(|i| format!("sim-{i:03}")).collect();
        let mut tokens = String::new();
        if cluster.is_tls() {
            for n in &names {
                tokens.push_str(&format!("{n} {}\n", cluster.join_token(n, None)));
            }
        }
        let token_file = state.path().join("join-tokens");
        std::fs::write(&token_file, tokens)?;
        let child = Command::new(otherix_e2e::paths::bin("otherix-simnode"))
            .arg("--server")
            .arg(&cluster.agent_url)
            .arg("--nodes")
            .arg(count.to_string())
            .arg("--data-dir")
            .arg(state.path())
            .arg("--join-tokens")
            .arg(&token_file)
            .stdin(Stdio::null())
            .stdout(open_log(cluster.dir.path(), "simnode"))
            .stderr(open_log(cluster.dir.path(), "simnode"))
            .spawn()
            .context("spawn otherix-simnode (build it: cargo build --release -p otherix-agent)")?;
        let sim = SimNodes {
            child,
            _state: state,
        };
        let ready = wait_for(Duration::from_secs(120), Duration::from_millis(500), || {
            node_statuses(cluster)
                .iter()
                .filter(|(n, s)| n.starts_with("sim-") && s == "ready")
                .count()
                == count
        });
        if !ready {
            bail!("{count} simulated nodes not ready within 120 s");
        }
        Ok(sim)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SimNodes {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cluster with no real agent (TLS, temp SQLite data dir), as the quick start runs it.
pub fn bare_cluster() -> Cluster {
    Cluster::start_with(ClusterOptions {
        nodes: Vec::new(),
        ..ClusterOptions::default()
    })
}

/// The pid of the process named `comm` whose command line mentions `needle`.
pub fn find_pid(comm: &str, needle: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        let prog = cmdline.split('\0').next().unwrap_or("");
        if prog.rsplit('/').next() == Some(comm) && cmdline.contains(needle) {
            return Some(pid);
        }
    }
    None
}

/// Resident set size in MiB (`VmRSS` of /proc/PID/status).
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    parse_cpu_ticks(&stat).unwrap_or(0)
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // Fields after the `(comm)` (which may hold spaces): state is field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Percent of one core `pid` used over `window`.
pub fn cpu_percent(pid: u32, window: Duration) -> f64 {
    let hz: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    let before = cpu_ticks(pid);
    std::thread::sleep(window);
    let after = cpu_ticks(pid);
    (after.saturating_sub(before)) as f64 / hz / window.as_secs_f64() * 100.0
}

/// A `perf record` of one process over one measurement window (with `--perf DIR`).
pub struct Perf {
    child: Child,
    data: PathBuf,
    report: PathBuf,
}

impl Perf {
    /// Starts sampling `pid` into `DIR/NAME.data`; `None` without a dir or without perf.
    pub fn start(dir: Option<&Path>, pid: u32, name: &str) -> Option<Perf> {
        let dir = dir?;
        std::fs::create_dir_all(dir).ok()?;
        let data = dir.join(format!("{name}.data"));
        let child = Command::new("perf")
            .args(["record", "-q", "-F", "199", "--call-graph", "dwarf,16384"])
            .args(["-p", &pid.to_string(), "-o"])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        std::thread::sleep(Duration::from_millis(300));
        Some(Perf {
            child,
            data,
            report: dir.join(format!("{name}.txt")),
        })
    }

    /// Stops the recording (SIGINT), if any, and writes the profile next to it (inclusive
    /// time per function, from DWARF call graphs).
    pub fn stop(perf: Option<Perf>) {
        if let Some(p) = perf {
            p.finish();
        }
    }

    fn finish(mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let out = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--children",
                "--sort",
                "sym",
                "-g",
                "none",
            ])
            .args(["--percent-limit", "1", "-i"])
            .arg(&self.data)
            .stderr(Stdio::null())
            .output();
        if let Ok(out) = out {
            let _ = std::fs::write(&self.report, &out.stdout);
            eprintln!("[perf] {}", self.report.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_and_names() {
        let stat = "1234 (otherix d) S 1 2 3 4 5 6 7 8 9 10 250 40 0 0 20 0 9 0";
        assert_eq!(parse_cpu_ticks(stat), Some(290));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert_eq!(names("b", 1..3), vec!["b-00001", "b-00002"]);
        assert!(vm_manifest("a", "http://x/y", "").contains("name: a\n"));
    }
}
