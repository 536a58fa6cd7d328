//! The VM surface of the product page, end to end with the real binaries: scheduler and
//! validation errors over the CLI and raw HTTP, list pagination/filters/output formats,
//! task durability across a server restart, and the lifecycle rows that need a booted
//! guest (reboot, pause, resume, reset, stop timeout, forced stop, --wait-timeout).

use std::path::Path;
use std::time::Duration;

use otherix_e2e::cluster::NodeOptions;
use otherix_e2e::wait::{file_contains, pid_alive, until};
use otherix_e2e::{uuid_after, Cluster, ClusterOptions, ImageServer};
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(150);
const TASK: Duration = Duration::from_secs(120);

/// Data rows (without the header) a table command prints.
fn rows(cluster: &Cluster, args: &[&str]) -> usize {
    cluster.cli(args).ok().stdout.lines().count() - 1
}

fn stopped_spec(url: &str) -> Value {
    json!({"image_url": url, "arch": "amd64", "vcpus": 1, "memory_mb": 128,
           "desired_phase": "stopped"})
}

#[test]
fn scheduler_and_validation_errors_surface_their_codes() {
    let cluster = Cluster::start_with(ClusterOptions {
        nodes: vec![
            NodeOptions::new("node-1", &["default"]),
            NodeOptions::new("node-2", &["fast"]),
        ],
        database_url: None,
        server_args: Vec::new(),
    });
    let url = "http://127.0.0.1:9/never-downloaded.qcow2";
    let uuid = "6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11";

    // Raw HTTP: the server is the authority for every rule.
    let (status, body) = cluster.request(
        "POST",
        "/v1/vms",
        Some(&json!({"name": uuid, "spec": {"image_url": url, "arch": "amd64"}}).to_string()),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed");
    let (status, body) = cluster.get(&format!("/v1/vms/{uuid}"));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("validation_failed"))
    );
    let (status, body) = cluster.request(
        "POST",
        "/v1/vms",
        Some(
            &json!({"name": "a", "spec": {"image_url": url, "arch": "amd64", "vcpus": 0}})
                .to_string(),
        ),
    );
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("spec.vcpus: must be 1..128"),
        "{body}"
    );
    let (status, body) = cluster.request(
        "POST",
        "/v1/vms",
        Some(
            &json!({"name": "a", "spec": {"image_url": url, "arch": "amd64", "cpus": 2}})
                .to_string(),
        ),
    );
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("cpus"),
        "{body}"
    );

    // CLI flag mistakes are caught before sending (clap: exit 2, naming the flag).
    let out = cluster.cli(&[
        "vm",
        "create",
        "a",
        "--image-url",
        url,
        "--arch",
        "amd64",
        "--vcpus",
        "0",
    ]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--vcpus"), "{}", out.stderr);
    let out = cluster.cli(&[
        "vm",
        "create",
        "a",
        "--image-url",
        url,
        "--arch",
        "amd64",
        "--firmware",
        "ovmf",
        "--firmware-id",
        uuid,
    ]);
    assert_eq!(out.code, 2, "{out:?}");
    let out = cluster.cli(&["vm", "create", "a", "--image-url", url, "--arch", "riscv"]);
    assert_eq!(out.code, 2, "{out:?}");

    // Scheduler errors.
    let out = cluster.cli(&[
        "vm",
        "create",
        "a",
        "--image-url",
        url,
        "--arch",
        "amd64",
        "--pool",
        "fast",
        "--node",
        "node-1",
    ]);
    out.expect_error("pool_not_on_node");
    let out = cluster.cli(&[
        "vm",
        "create",
        "a",
        "--image-url",
        url,
        "--arch",
        "amd64",
        "--memory-mb",
        "524288",
    ]);
    let out = out.expect_error("insufficient_capacity");
    assert!(out.stderr.contains("MiB memory"), "{}", out.stderr);
    let out = cluster.cli(&["vm", "get", "nope"]);
    out.expect_error("not_found");
    // Nothing above left a VM behind.
    let (_, list) = cluster.get("/v1/vms");
    assert_eq!(list["items"].as_array().unwrap().len(), 0, "{list}");

    // A cluster whose only pool is not `default` has no default pool.
    let other = Cluster::start_with(ClusterOptions {
        nodes: vec![NodeOptions::new("solo", &["fast"])],
        database_url: None,
        server_args: Vec::new(),
    });
    let out = other.cli(&["vm", "create", "a", "--image-url", url, "--arch", "amd64"]);
    out.expect_error("default_pool_not_set");
}

#[test]
fn vm_list_paginates_filters_formats_and_tasks_survive_restart() {
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    let mut cluster = Cluster::start();
    let url = server.url("busybox-amd64.qcow2");

    // Five VMs created (image downloaded once, disks made) but left stopped.
    let names: Vec<String> = (1..=5).map(|i| format!("vm-{i}")).collect();
    let tasks: Vec<String> = names
        .iter()
        .map(|n| cluster.post_vm(n, stopped_spec(&url)))
        .collect();
    for t in &tasks {
        let task = cluster.wait_task(t, TASK);
        assert_eq!(task["status"], "success", "{task}");
    }
    assert_eq!(
        server.requests("busybox-amd64.qcow2"),
        1,
        "concurrent creates share one download"
    );

    // Cursor pagination: pages of 2, the next cursor printed on stderr, stable order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _page in 0..5 {
        let mut args = vec!["vm", "list", "--limit", "2"];
        if let Some(c) = &cursor {
            args.extend(["--cursor", c.as_str()]);
        }
        let out = cluster.cli(&args).ok();
        let mut lines = out.stdout.lines();
        assert!(lines.next().unwrap().starts_with("NAME"), "{}", out.stdout);
        for line in lines {
            seen.push(line.split_whitespace().next().unwrap().to_owned());
        }
        cursor = out
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("more results: --cursor "))
            .map(|c| c.trim().to_owned());
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(
        seen, names,
        "pages must cover every VM once, in creation order"
    );

    // Server-side filters and the output formats.
    assert_eq!(rows(&cluster, &["vm", "list", "--status", "stopped"]), 5);
    assert_eq!(rows(&cluster, &["vm", "list", "--status", "running"]), 0);
    assert_eq!(rows(&cluster, &["vm", "list", "--node", "node-1"]), 5);
    assert_eq!(rows(&cluster, &["vm", "list", "--pool", "default"]), 5);
    let out = cluster.cli(&["vm", "list", "--show-ids"]).ok();
    let header: Vec<&str> = out
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["ID", "NAME", "STATUS", "ARCH", "NODE", "POOL", "NETWORK"]
    );
    let json = cluster.cli(&["vm", "list", "-o", "json"]).ok().json();
    assert_eq!(json["items"].as_array().unwrap().len(), 5);
    let yaml = cluster.cli(&["vm", "list", "-o", "yaml"]).ok().stdout;
    assert!(
        yaml.contains("items:") && yaml.contains("name: vm-3"),
        "{yaml}"
    );
    let manifest = cluster
        .cli(&["vm", "get", "vm-1", "-o", "yaml"])
        .ok()
        .stdout;
    for needle in [
        "apiVersion: otherix.dev/v1",
        "kind: VM",
        "name: vm-1",
        "desired_phase: stopped",
    ] {
        assert!(manifest.contains(needle), "{needle} not in {manifest}");
    }
    let raw = cluster
        .cli(&["vm", "get", "vm-1", "-o", "json"])
        .ok()
        .json();
    assert_eq!(raw["status"]["phase"], "stopped");

    // Conflicts: a live name, and an op that does not fit the phase.
    let out = cluster.cli(&[
        "vm",
        "create",
        "vm-1",
        "--image-url",
        &url,
        "--arch",
        "amd64",
    ]);
    out.expect_error("conflict");
    let out = cluster.cli(&["vm", "pause", "vm-1"]);
    let out = out.expect_error("conflict");
    assert!(
        out.stderr.contains("stopped"),
        "message names the phase: {}",
        out.stderr
    );

    // delete refuses without a terminal unless --force.
    let out = cluster.cli(&["vm", "delete", "vm-5"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("--force"), "{}", out.stderr);

    // The placement decision is on the create task.
    let task = cluster
        .cli(&["task", "get", &tasks[0], "-o", "json"])
        .ok()
        .json();
    assert_eq!(task["placement"]["node"], "node-1");
    assert_eq!(task["placement"]["pool"], "default");
    let listed = cluster.cli(&["task", "list", "--vm", "vm-1"]).ok().stdout;
    assert!(
        listed.contains("vm.create") && listed.contains(&tasks[0]),
        "{listed}"
    );

    // Tasks and VMs are durable: kill -9 the server, start it again.
    let before = cluster.get(&format!("/v1/tasks/{}", tasks[2])).1;
    cluster.kill_server();
    cluster.start_server();
    let after = cluster.get(&format!("/v1/tasks/{}", tasks[2])).1;
    assert_eq!(before, after, "task changed across a restart");
    assert_eq!(rows(&cluster, &["vm", "list"]), 5);
}

#[test]
fn vm_lifecycle_rows_with_booted_guests() {
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    let cluster = Cluster::start();
    let create = |name: &str, image: &str| {
        cluster.create_running(name, &server.url(image), &[]);
    };
    create("a", "busybox-amd64.qcow2");
    create("b", "busybox-amd64-nopowerdown.qcow2");
    let serial_a = cluster.serial_log("a");
    let serial_b = cluster.serial_log("b");
    file_contains(&serial_a, "OTHERIX-TEST-GUEST-READY", BOOT);
    file_contains(&serial_b, "OTHERIX-TEST-GUEST-READY", BOOT);
    let pid = |name: &str| cluster.vm(name)["status"]["pid"].as_u64().unwrap() as u32;
    let pid_a = pid("a");

    // pause / resume / reset are sync and return the refreshed VM.
    let out = cluster.cli(&["vm", "pause", "a"]).ok();
    assert!(out.stdout.contains("paused"), "{}", out.stdout);
    let out = cluster.cli(&["vm", "pause", "a"]);
    out.expect_error("conflict");
    let vm = cluster
        .cli(&["vm", "resume", "a", "-o", "json"])
        .ok()
        .json();
    assert_eq!(vm["status"]["phase"], "running");
    let out = cluster.cli(&["vm", "resume", "a"]);
    assert!(
        out.stderr.starts_with("error: conflict: "),
        "{}",
        out.stderr
    );
    let vm = cluster.cli(&["vm", "reset", "a", "-o", "json"]).ok().json();
    assert_eq!(
        vm["status"]["pid"].as_u64().unwrap() as u32,
        pid_a,
        "reset keeps the QEMU pid"
    );
    assert_eq!(vm["status"]["phase"], "running");
    // The reset guest boots again from the top.
    until("second boot after reset", BOOT, || {
        let log = std::fs::read_to_string(&serial_a).ok()?;
        (log.matches("OTHERIX-TEST-GUEST-READY").count() >= 2).then_some(())
    });

    // reboot: graceful stop + start, the QEMU pid changes.
    let out = cluster.cli(&["vm", "reboot", "a", "--wait"]).ok();
    assert!(out.stdout.starts_with("vm running task="), "{}", out.stdout);
    let pid_a2 = pid("a");
    assert_ne!(pid_a, pid_a2);
    assert!(!pid_alive(pid_a));

    // A guest that ignores the power button: stop fails with stop_timeout, VM keeps running.
    let pid_b = pid("b");
    let out = cluster.cli(&["vm", "stop", "b", "--timeout", "5s", "--wait"]);
    assert_eq!(out.code, 1, "{out:?}");
    // With --wait only the outcome is printed: the failure line on stderr.
    let task = uuid_after(&out.stderr, "task ");
    assert!(
        out.stderr
            .contains(&format!("task {task} failed: stop_timeout: ")),
        "{}",
        out.stderr
    );
    let vm = cluster.vm("b");
    assert_eq!(vm["status"]["phase"], "running", "{vm}");
    assert!(pid_alive(pid_b));
    let (_, t) = cluster.get(&format!("/v1/tasks/{task}"));
    assert_eq!(t["error"]["code"], "stop_timeout");
    // stop --force is a poweroff: hard, not graceful.
    let out = cluster.cli(&["vm", "stop", "b", "--force", "--wait"]).ok();
    assert!(out.stdout.starts_with("vm stopped task="), "{}", out.stdout);
    until("QEMU of b gone", Duration::from_secs(15), || {
        (!pid_alive(pid_b)).then_some(())
    });
    // start is idempotent on a running VM.
    let out = cluster.cli(&["vm", "start", "a", "--wait"]).ok();
    assert!(out.stdout.starts_with("vm running task="), "{}", out.stdout);
    assert_eq!(pid("a"), pid_a2);

    // --wait-timeout: a slow download outlives the wait; the task keeps running.
    let slow_dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        images.join("busybox-amd64.qcow2"),
        slow_dir.path().join("slow.qcow2"),
    )
    .unwrap();
    let slow = ImageServer::start(slow_dir.path());
    slow.set_throttle(256 * 1024);
    let out = cluster.cli(&[
        "vm",
        "create",
        "c",
        "--image-url",
        &slow.url("slow.qcow2"),
        "--arch",
        "amd64",
        "--vcpus",
        "1",
        "--memory-mb",
        "128",
        "--wait",
        "--wait-timeout",
        "2s",
    ]);
    assert_eq!(out.code, 124, "{out:?}");
    let task = uuid_after(&out.stdout, "task=").to_owned();
    assert!(
        out.stderr.contains("timed out after 2s waiting for task"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("the task keeps running"),
        "{}",
        out.stderr
    );
    let (_, t) = cluster.get(&format!("/v1/tasks/{task}"));
    assert!(
        matches!(t["status"].as_str(), Some("pending" | "running")),
        "{t}"
    );
    drop_logs_dir(slow_dir.path());
}

fn drop_logs_dir(_p: &Path) {}
