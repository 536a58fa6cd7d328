//! Figures 1, 2, 5, 6 and the agent half of 7, on a real one-node cluster (otherixd +
//! `otherix-agent --accel tcg`): `vm create --wait` vs a raw qemu-img + `qemu-system
//! -daemonize` launch; 100 VMs paced 100 ms apart and from one `create -f` directory, with
//! a halting guest and with busybox booting; first-use download vs curl + sha256sum and 10
//! concurrent creates of one URL; watch-mode save -> new generation; agent RSS.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use otherix_e2e::{Cluster, ImageServer};

use crate::env::{
    api_timed, cli_timed, create_to_running, find_pid, manifest_dir, names, node_statuses,
    phase_counts, rss_mib, timed, vm_manifest, wait_for,
};
use crate::report::{fmt_dur, Row, Stats};
use crate::Opts;

/// A fresh one-node cluster whose node takes many small VMs (allocation ratios raised).
fn qemu_cluster() -> anyhow::Result<Cluster> {
    let cluster = Cluster::start();
    cluster
        .cli(&["cluster", "set", "cpu-allocation-ratio", "64"])
        .ok();
    cluster
        .cli(&["cluster", "set", "memory-allocation-ratio", "4"])
        .ok();
    Ok(cluster)
}

fn agent_pid(cluster: &Cluster) -> u32 {
    find_pid("otherix-agent", &cluster.dir.path().display().to_string()).expect("agent pid")
}

pub fn run(opts: &Opts, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let images = otherix_e2e::paths::test_images();
    let busybox = ImageServer::start(&images);
    let (_halt_dir, halt) = ImageServer::with_halt_disk();
    if [1, 5, 6, 7].iter().any(|&f| opts.wants(f)) {
        let cluster = qemu_cluster()?;
        let agent0 = rss_mib(agent_pid(&cluster));
        if opts.wants(1) {
            fig1(opts, &cluster, &busybox, &images, rows)?;
        }
        if opts.wants(7) {
            fig7_agent(opts, &cluster, &halt, agent0, rows)?;
        }
        if opts.wants(6) {
            fig6(&cluster, &halt, rows)?;
        }
        if opts.wants(5) {
            fig5(opts, &cluster, rows)?;
        }
    }
    if opts.wants(2) {
        for (guest, url, src, format) in [
            (
                "halting guest",
                halt.url("halt.img"),
                _halt_dir.path().join("halt.img"),
                "raw",
            ),
            (
                "busybox booting",
                busybox.url("busybox-amd64.qcow2"),
                images.join("busybox-amd64.qcow2"),
                "qcow2",
            ),
        ] {
            let memory = if guest.starts_with("busybox") {
                256
            } else {
                128
            };
            let scratch = tempfile::Builder::new().prefix("otx-raw-").tempdir()?;
            let base = raw_storm(opts.storm, scratch.path(), &src, format, memory)?;
            let storm = Storm {
                guest,
                url,
                memory,
                baseline: base,
            };
            for paced in [true, false] {
                let cluster = qemu_cluster()?;
                fig2(opts, &cluster, &storm, paced, rows)?;
            }
        }
    }
    Ok(())
}

fn create_args<'a>(name: &'a str, url: &'a str, memory: &'a str) -> Vec<&'a str> {
    vec![
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
        memory,
        "--wait",
    ]
}

/// Figure 1: `vm create --wait` from a cached image vs the same QEMU command line
/// (built by the agent's own `build_argv`) launched by hand after a qemu-img overlay.
fn fig1(
    opts: &Opts,
    cluster: &Cluster,
    server: &ImageServer,
    images: &Path,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let url = server.url("busybox-amd64.qcow2");
    eprintln!("[1] warming the image cache");
    cluster.cli(&create_args("f1-warm", &url, "128")).ok();
    cluster
        .cli(&["vm", "delete", "f1-warm", "--force", "--wait"])
        .ok();
    let raw_dir = cluster.dir.path().join("fig1-raw");
    std::fs::create_dir_all(&raw_dir)?;
    let src = images.join("busybox-amd64.qcow2");
    let ours = |name: &str, extra: &[&str]| {
        let mut args = create_args(name, &url, "128");
        args.extend_from_slice(extra);
        let (d, out) = cli_timed(cluster, &args);
        out.ok();
        cluster
            .cli(&["vm", "delete", name, "--force", "--wait"])
            .ok();
        d
    };
    // Interleaved, so load from elsewhere on the host hits all three alike.
    let (mut plain, mut seeded, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..opts.runs {
        plain.push(ours(&format!("f1-n-{i}"), &["--no-cloud-init"]));
        seeded.push(ours(&format!("f1-c-{i}"), &[]));
        let (d, pid) = timed(|| raw_launch(&raw_dir, &src, "qcow2", 128, i));
        raw.push(d);
        let _ = Command::new("kill")
            .arg("-9")
            .arg(pid?.to_string())
            .status();
    }
    let (plain, seeded) = (Stats::new(plain), Stats::new(seeded));
    let raw = Stats::new(raw);
    let ratio = |s: &Stats| s.median().as_secs_f64() / raw.median().as_secs_f64();
    let base = format!(
        "{} qemu-img + the same `qemu-system-x86_64 -daemonize`",
        fmt_dur(raw.median())
    );
    rows.push(
        Row::new(
            "1",
            &format!(
                "`vm create --wait --no-cloud-init`, cached image, median of {}",
                opts.runs
            ),
            format!("{} ({:.2}x)", fmt_dur(plain.median()), ratio(&plain)),
        )
        .baseline(base.clone())
        .target("<= 1.15x", ratio(&plain) <= 1.15),
    );
    rows.push(
        Row::new(
            "1",
            "(info) the same with a cloud-init seed (the default)",
            format!("{} ({:.2}x)", fmt_dur(seeded.median()), ratio(&seeded)),
        )
        .baseline(base),
    );
    Ok(())
}

/// Whether the agent runs QEMU as `otherix-qemu` (it does when it is root and the user
/// exists), so the raw launch does the same.
fn qemu_user() -> Option<String> {
    let root = Command::new("id").arg("-u").output().ok()?.stdout == b"0\n";
    let exists = Command::new("id")
        .arg("otherix-qemu")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?
        .success();
    (root && exists).then(|| "otherix-qemu".to_owned())
}

/// qemu-img overlay + the agent's QEMU command line with `-daemonize` (returns once QEMU
/// runs); the QEMU pid.
fn raw_launch(
    dir: &Path,
    src: &Path,
    src_format: &str,
    memory_mb: u32,
    i: usize,
) -> anyhow::Result<u32> {
    use otherix_agent::host::Accel;
    use otherix_agent::qemu::{build_argv, BootFirmware, DiskImageFormat, LaunchConfig, Nic};
    let disk = dir.join(format!("disk-{i}.qcow2"));
    let pidfile = dir.join(format!("qemu-{i}.pid"));
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", src_format, "-b"])
        .arg(src)
        .arg(&disk)
        .status()?;
    if !st.success() {
        bail!("qemu-img create failed");
    }
    // QEMU may run as otherix-qemu (as under the agent): let it write the disk and dir.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))?;
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o666))?;
    let cfg = LaunchConfig {
        vm_id: uuid::Uuid::new_v4(),
        vm_name: format!("raw-{i}"),
        arch: otherix_api::Arch::Amd64,
        accel: Accel::Tcg,
        vcpus: 1,
        memory_mb,
        disk_path: disk,
        disk_format: DiskImageFormat::Qcow2,
        pidfile: pidfile.clone(),
        qmp_socket: dir.join(format!("qmp-{i}.sock")),
        console_socket: dir.join(format!("console-{i}.sock")),
        qga_socket: dir.join(format!("qga-{i}.sock")),
        serial_log: dir.join(format!("serial-{i}.log")),
        seed: None,
        firmware: BootFirmware::Bios,
        nic: Nic::User { ports: Vec::new() },
        run_with_user: qemu_user(),
    };
    let (program, args) = build_argv(&cfg)?;
    // -daemonize forks, which the agent's sandbox (spawn=deny) forbids.
    let args = args.into_iter().map(|a| match a.to_str() {
        Some(s) if s.contains("spawn=deny") => s.replace("spawn=deny", "spawn=allow").into(),
        _ => a,
    });
    let st = Command::new(program)
        .args(args)
        .arg("-daemonize")
        .status()?;
    if !st.success() {
        bail!("qemu-system-x86_64 -daemonize failed");
    }
    let pid = std::fs::read_to_string(&pidfile)?.trim().parse()?;
    Ok(pid)
}

/// Figure 7 (agent): RSS of the agent with `agent_vms` running VMs.
fn fig7_agent(
    opts: &Opts,
    cluster: &Cluster,
    halt: &ImageServer,
    rss0: f64,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let n = opts.agent_vms;
    eprintln!("[7] agent RSS with {n} running VMs");
    let vm_names = names("a", 0..n);
    let dir = manifest_dir(cluster.dir.path(), "fig7", &vm_names, &halt.url("halt.img"));
    cluster
        .cli(&["create", "-f", &dir.display().to_string()])
        .ok();
    let ok = wait_for(Duration::from_secs(300), Duration::from_millis(500), || {
        phase_counts(cluster).get("running").copied().unwrap_or(0) >= n
    });
    if !ok {
        bail!("{n} VMs not running: {:?}", phase_counts(cluster));
    }
    std::thread::sleep(Duration::from_secs(3));
    let rss = rss_mib(agent_pid(cluster));
    rows.push(
        Row::new(
            "7",
            &format!("otherix-agent RSS, {n} running VMs"),
            format!("{rss:.0} MiB"),
        )
        .baseline(format!("{rss0:.0} MiB with 0 VMs"))
        .target("<= 30 MiB", rss <= 30.0),
    );
    for name in &vm_names {
        api_timed(cluster, "DELETE", &format!("/v1/vms/{name}"), None);
    }
    Ok(())
}

/// Figure 6: watch mode, file saved -> the server has the new generation.
fn fig6(cluster: &Cluster, halt: &ImageServer, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let url = halt.url("halt.img");
    let dir = cluster.dir.path().join("fig6");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("w.yaml");
    let doc = |mem: u32| {
        vm_manifest("w", &url, "  desired_phase: stopped\n")
            .replace("memory_mb: 128", &format!("memory_mb: {mem}"))
    };
    std::fs::write(&file, doc(128))?;
    let generation = || {
        let (_, status, text) = api_timed(cluster, "GET", "/v1/vms/w", None);
        (status == 200)
            .then(|| serde_json::from_str::<serde_json::Value>(&text).ok())
            .flatten()
            .and_then(|v| v["generation"].as_u64())
            .unwrap_or(0)
    };
    // Baseline: the same edit applied by a one-shot `create -f FILE`.
    let path = file.display().to_string();
    cluster.cli(&["create", "-f", &path]).ok();
    let mut once = Vec::new();
    for i in 0..5u32 {
        std::fs::write(&file, doc(129 + i))?;
        let want = generation() + 1;
        let t = Instant::now();
        cluster.cli(&["create", "-f", &path]).ok();
        wait_for(Duration::from_secs(10), Duration::from_millis(1), || {
            generation() >= want
        });
        once.push(t.elapsed());
    }
    eprintln!("[6] watch mode");
    let dir_s = dir.display().to_string();
    let watch = spawn_watch(cluster, &dir_s)?;
    std::thread::sleep(Duration::from_secs(2));
    let mut samples = Vec::new();
    for i in 0..10u32 {
        let want = generation() + 1;
        let t = Instant::now();
        std::fs::write(&file, doc(200 + i))?;
        let ok = wait_for(Duration::from_secs(10), Duration::from_millis(1), || {
            generation() >= want
        });
        if !ok {
            bail!("watch did not apply edit {i}");
        }
        samples.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(watch);
    let (s, o) = (Stats::new(samples), Stats::new(once));
    rows.push(
        Row::new(
            "6",
            "watch: file saved -> new generation, p50 / max of 10",
            format!("{} / {}", fmt_dur(s.median()), fmt_dur(s.max())),
        )
        .baseline(format!(
            "{} one-shot `create -f FILE` (median of 5)",
            fmt_dur(o.median())
        ))
        .target("p50 <= 150 ms", s.median() <= Duration::from_millis(150)),
    );
    Ok(())
}

/// `otherix create -f DIR --watch` in the background; killed when dropped.
struct Watch(std::process::Child);
impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
fn spawn_watch(cluster: &Cluster, dir: &str) -> anyhow::Result<Watch> {
    let child = Command::new(otherix_e2e::paths::bin("otherix"))
        .args(["create", "-f", dir, "--watch"])
        .env("OTHERIX_CONFIG", cluster.cli_config_path())
        .env_remove("OTHERIX_SERVER")
        .env_remove("OTHERIX_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("spawn otherix create --watch")?;
    Ok(Watch(child))
}

/// Writes `mib` MiB that do not compress (xorshift).
fn write_payload(path: &Path, mib: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut block = vec![0u8; 1 << 20];
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..mib {
        for c in block.chunks_mut(8) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            c.copy_from_slice(&s.to_le_bytes());
        }
        f.write_all(&block)?;
    }
    f.flush()
}

/// Figure 5: first-use download vs curl + sha256sum; 10 concurrent creates of one URL.
fn fig5(opts: &Opts, cluster: &Cluster, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let dir = cluster.dir.path().join("fig5-images");
    std::fs::create_dir_all(&dir)?;
    let big = dir.join("big.img");
    eprintln!("[5] writing a {} MiB image", opts.image_mib);
    write_payload(&big, opts.image_mib)?;
    std::fs::hard_link(&big, dir.join("shared.img"))?;
    let server = ImageServer::start(&dir);
    let url = server.url("big.img");
    let out = cluster.dir.path().join("curl.out");
    let script = format!(
        "curl -sSf -o {0} {url} && sha256sum {0} >/dev/null",
        out.display()
    );
    let _ = Command::new("cat")
        .arg(&big)
        .stdout(std::process::Stdio::null())
        .status();
    let (curl, st) = timed(|| Command::new("bash").args(["-c", &script]).status());
    if !st?.success() {
        bail!("curl + sha256sum failed");
    }
    std::fs::remove_file(&out)?;
    let (ours, res) = cli_timed(cluster, &create_args("f5", &url, "128"));
    res.ok();
    let ratio = curl.as_secs_f64() / ours.as_secs_f64();
    let mib = opts.image_mib as f64;
    rows.push(
        Row::new(
            "5",
            &format!(
                "first use of a {} MiB image (`vm create --wait`)",
                opts.image_mib
            ),
            format!(
                "{} ({:.0} MiB/s, {ratio:.2}x)",
                fmt_dur(ours),
                mib / ours.as_secs_f64()
            ),
        )
        .baseline(format!(
            "{} `curl -o F && sha256sum F` ({:.0} MiB/s)",
            fmt_dur(curl),
            mib / curl.as_secs_f64()
        ))
        .target(">= 1.0x", ratio >= 1.0),
    );
    let shared = server.url("shared.img");
    let failed = AtomicUsize::new(0);
    let go = AtomicBool::new(false);
    let (d, ()) = timed(|| {
        std::thread::scope(|s| {
            for i in 0..10 {
                let (shared, failed, go) = (&shared, &failed, &go);
                s.spawn(move || {
                    while !go.load(Ordering::Relaxed) {
                        std::thread::yield_now();
                    }
                    let name = format!("f5-shared-{i}");
                    if cluster.cli(&create_args(&name, shared, "128")).code != 0 {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            go.store(true, Ordering::Relaxed);
        })
    });
    let requests = server.requests("shared.img");
    let failed = failed.load(Ordering::Relaxed);
    rows.push(
        Row::new(
            "5",
            "10 concurrent `vm create --wait` of one new URL: HTTP requests",
            format!("{requests} ({} for all, {failed} failed)", fmt_dur(d)),
        )
        .target("exactly 1", requests == 1 && failed == 0),
    );
    Ok(())
}

/// One guest kind of figure 2 and its raw-launch baseline.
struct Storm {
    guest: &'static str,
    url: String,
    memory: u32,
    baseline: String,
}

/// Figure 2's baseline: `n` raw launches (qemu-img overlay + the agent's QEMU argv with
/// -daemonize) started 100 ms apart: until all are up, and p50 / p99 of each launch.
fn raw_storm(
    n: usize,
    dir: &Path,
    src: &Path,
    format: &str,
    memory: u32,
) -> anyhow::Result<String> {
    eprintln!(
        "[2] baseline: {n} raw QEMU launches 100 ms apart ({})",
        src.display()
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))?;
    let start = Instant::now();
    let results: Vec<(Duration, anyhow::Result<u32>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let due = start + Duration::from_millis(100 * i as u64);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                s.spawn(move || timed(|| raw_launch(dir, src, format, memory, i)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("launch thread"))
            .collect()
    });
    let all = start.elapsed();
    let mut durs = Vec::new();
    for (d, pid) in results {
        durs.push(d);
        match pid {
            Ok(pid) => {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
            Err(e) => eprintln!("raw launch failed: {e:#}"),
        }
    }
    let s = Stats::new(durs);
    Ok(format!(
        "raw QEMU 100 ms apart: all up {}; each p50 {} / p99 {}",
        fmt_dur(all),
        fmt_dur(s.median()),
        fmt_dur(s.pct(99.0))
    ))
}

/// Figure 2: `storm` VMs paced 100 ms apart (POST /v1/vms) or from one `create -f`
/// directory; until all running, create->running percentiles, node flaps and `unknown`.
fn fig2(
    opts: &Opts,
    cluster: &Cluster,
    storm: &Storm,
    paced: bool,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let Storm {
        guest,
        url,
        memory,
        baseline,
    } = storm;
    let (url, memory) = (url.as_str(), *memory);
    let n = opts.storm;
    let how = if paced {
        "100 ms apart"
    } else {
        "one `create -f` dir"
    };
    eprintln!("[2] {n} VMs {how}, {guest}");
    let prefix = if paced { "p" } else { "d" };
    let vm_names = names(prefix, 0..n);
    let stop = AtomicBool::new(false);
    let (mut not_ready, mut max_unknown) = (0usize, 0usize);
    let t0 = SystemTime::now();
    let start = Instant::now();
    let mut apply_time = None;
    std::thread::scope(|s| {
        let monitor = s.spawn(|| {
            let (mut nr, mut unk) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                nr += node_statuses(cluster)
                    .iter()
                    .filter(|(_, st)| st != "ready")
                    .count();
                unk = unk.max(phase_counts(cluster).get("unknown").copied().unwrap_or(0));
                std::thread::sleep(Duration::from_millis(500));
            }
            (nr, unk)
        });
        if paced {
            for (i, name) in vm_names.iter().enumerate() {
                let due = start + Duration::from_millis(100 * i as u64);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                let body = serde_json::json!({"name": name, "spec": {"image_url": url, "arch": "amd64", "vcpus": 1, "memory_mb": memory}}).to_string();
                s.spawn(move || {
                    let (_, status, text) = api_timed(cluster, "POST", "/v1/vms", Some(&body));
                    if status != 202 {
                        eprintln!("POST /v1/vms: {status} {text}");
                    }
                });
            }
        } else {
            let dir = manifest_dir(cluster.dir.path(), "fig2", &vm_names, url);
            let dir = dir.display().to_string();
            for f in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let text = std::fs::read_to_string(f.path()).unwrap_or_default();
                let _ = std::fs::write(
                    f.path(),
                    text.replace("memory_mb: 128", &format!("memory_mb: {memory}")),
                );
            }
            let (d, out) = cli_timed(cluster, &["create", "-f", &dir]);
            if out.code != 0 {
                eprintln!("create -f failed: {}", out.stderr);
            }
            apply_time = Some(d);
        }
        wait_for(Duration::from_secs(900), Duration::from_millis(500), || {
            phase_counts(cluster).get("running").copied().unwrap_or(0) >= n
        });
        stop.store(true, Ordering::Relaxed);
        (not_ready, max_unknown) = monitor.join().expect("monitor");
    });
    let times = create_to_running(cluster, prefix);
    let all = times
        .last
        .and_then(|l| l.duration_since(t0).ok())
        .unwrap_or_else(|| start.elapsed());
    let s = Stats::new(times.whole);
    let (queued, on_agent) = (Stats::new(times.queued), Stats::new(times.on_agent));
    let counted = s.count();
    let pass = counted == n
        && all <= Duration::from_secs(15)
        && s.pct(99.0) <= Duration::from_secs(2)
        && not_ready == 0
        && max_unknown == 0;
    let apply = apply_time
        .map(|d| format!(", apply {}", fmt_dur(d)))
        .unwrap_or_default();
    rows.push(
        Row::new(
            "2",
            &format!("{n} VMs {how}, {guest}: all running; create->running p50/p95/p99"),
            format!(
                "{} ({counted}/{n}{apply}); {} / {} / {} (p50: {} to the first agent update, then {}); not_ready seen {not_ready}x, max unknown {max_unknown}",
                fmt_dur(all),
                fmt_dur(s.median()),
                fmt_dur(s.pct(95.0)),
                fmt_dur(s.pct(99.0)),
                fmt_dur(queued.median()),
                fmt_dur(on_agent.median()),
            ),
        )
        .baseline(format!("{baseline} (KubeVirt CI: p50 15-19 s, p95 27-30 s)"))
        .target("all <= 15 s, p99 <= 2 s, no flap/unknown", pass),
    );
    Ok(())
}
