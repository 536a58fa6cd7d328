//! End to end, as a user would: real otherixd + otherix-agent (TCG) + the otherix CLI boot
//! the busybox test guest from a local HTTP server and drive its whole basic lifecycle.
//! One booted guest serves many checks, to keep the suite fast under TCG.

use std::time::Duration;

use otherix_e2e::paths::files_in;
use otherix_e2e::wait::{file_contains, pid_alive, until};
use otherix_e2e::{uuid_after, Cluster, ImageServer};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const MARKER: &str = "OTHERIX-TEST-GUEST-READY";

#[test]
fn vm_lifecycle_create_stop_start_delete_with_real_qemu() {
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    let cluster = Cluster::start();
    let url = server.url("busybox-amd64.qcow2");

    // create --wait: the product page's exact lines, dots on stderr.
    let out = cluster.create_running("web-1", &url, &[]);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "stdout: {:?}", out.stdout);
    assert!(lines[0].starts_with("created task="), "{}", lines[0]);
    assert!(lines[0].ends_with(" status=pending"), "{}", lines[0]);
    let task = uuid_after(lines[0], "task=");
    assert_eq!(lines[1], format!("vm running task={task}"));
    assert!(
        out.stderr.contains('.'),
        "no poll dots on stderr: {:?}",
        out.stderr
    );

    // The guest really booted: its init printed the marker on the serial console.
    let serial = cluster.serial_log("web-1");
    file_contains(&serial, MARKER, BOOT_TIMEOUT);

    // list and get show it on its node and pool.
    let out = cluster.cli(&["vm", "list"]).ok();
    let mut rows = out.stdout.lines();
    let header: Vec<&str> = rows.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "STATUS", "ARCH", "NODE", "POOL", "NETWORK"]
    );
    let row: Vec<&str> = rows.next().unwrap().split_whitespace().collect();
    assert_eq!(row, ["web-1", "running", "amd64", "node-1", "default", "-"]);

    let out = cluster.cli(&["vm", "get", "web-1"]).ok();
    for needle in ["web-1", "running", "node-1", "default", "amd64"] {
        assert!(
            out.stdout.contains(needle),
            "{needle} not in vm get: {}",
            out.stdout
        );
    }
    let vm = cluster
        .cli(&["vm", "get", "web-1", "-o", "json"])
        .ok()
        .json();
    let vm_id = vm["id"].as_str().unwrap().to_owned();
    let pid1 = vm["status"]["pid"].as_u64().expect("running VM has a pid") as u32;
    assert!(pid_alive(pid1), "QEMU pid {pid1} not alive");
    assert_eq!(vm["status"]["node"], "node-1");
    assert_eq!(vm["status"]["pool"], "default");

    // stop --wait: graceful ACPI powerdown, the guest powers off, QEMU is gone.
    let out = cluster.cli(&["vm", "stop", "web-1", "--wait"]).ok();
    let task = uuid_after(&out.stdout, "task=");
    assert_eq!(out.stdout.trim(), format!("vm stopped task={task}"));
    until("QEMU exit after stop", Duration::from_secs(10), || {
        (!pid_alive(pid1)).then_some(())
    });
    file_contains(
        &serial,
        "OTHERIX-TEST-GUEST-POWERDOWN",
        Duration::from_secs(5),
    );
    let vm = cluster.vm("web-1");
    assert_eq!(vm["status"]["phase"], "stopped");
    assert!(
        vm["status"]["pid"].is_null(),
        "stopped VM still has a pid: {vm}"
    );

    // start --wait boots it again, with a new QEMU process.
    let out = cluster.cli(&["vm", "start", "web-1", "--wait"]).ok();
    assert!(out.stdout.starts_with("vm running task="), "{}", out.stdout);
    let vm = cluster.vm("web-1");
    let pid2 = vm["status"]["pid"].as_u64().unwrap() as u32;
    assert_ne!(pid1, pid2);
    assert!(pid_alive(pid2));

    // Without --wait an async op prints `<op> task=<id> status=<status>`.
    let out = cluster.cli(&["vm", "poweroff", "web-1"]).ok();
    let line = out.stdout.trim();
    assert!(line.starts_with("poweroff task="), "{line}");
    let task = uuid_after(line, "task=").to_owned();
    let out = cluster.cli(&["task", "wait", &task]).ok();
    assert!(
        out.stdout.contains("stopped") || out.stdout.contains("success"),
        "{out:?}"
    );
    until("QEMU exit after poweroff", Duration::from_secs(15), || {
        (!pid_alive(pid2)).then_some(())
    });

    // delete --wait --force: the VM's disk is gone, the cached image is kept.
    let pool = cluster.pool_path("node-1", "default");
    assert!(
        pool.join("vms").join(&vm_id).exists(),
        "VM disk dir missing before delete"
    );
    let out = cluster
        .cli(&["vm", "delete", "web-1", "--wait", "--force"])
        .ok();
    assert!(out.stdout.starts_with("vm deleted task="), "{}", out.stdout);
    assert!(
        !pool.join("vms").join(&vm_id).exists(),
        "VM disk dir left after delete"
    );
    let cached: Vec<String> = files_in(&pool.join("images"))
        .into_iter()
        .filter(|n| n.starts_with("sha256-"))
        .collect();
    assert_eq!(cached.len(), 1, "cached image not kept: {cached:?}");
    let out = cluster.cli(&["vm", "get", "web-1"]);
    out.expect_error("not_found");
    assert_eq!(server.requests("busybox-amd64.qcow2"), 1);
}

#[test]
fn vm_create_wrong_image_sha256_fails_task_with_checksum_code() {
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    let cluster = Cluster::start();
    let url = server.url("busybox-amd64.qcow2");
    let wrong = "0".repeat(64);
    let out = cluster.cli(&[
        "vm",
        "create",
        "bad-1",
        "--image-url",
        &url,
        "--arch",
        "amd64",
        "--image-sha256",
        &wrong,
        "--memory-mb",
        "256",
        "--wait",
    ]);
    assert_eq!(out.code, 1, "{out:#?}");
    let task = uuid_after(&out.stdout, "task=");
    assert!(
        out.stderr
            .contains(&format!("task {task} failed: image_checksum_mismatch: ")),
        "{}",
        out.stderr
    );
    // Nothing was cached from the bad download.
    let pool = cluster.pool_path("node-1", "default");
    let cached: Vec<String> = files_in(&pool.join("images"))
        .into_iter()
        .filter(|n| n.starts_with("sha256-"))
        .collect();
    assert!(
        cached.is_empty(),
        "mismatching image was cached: {cached:?}"
    );
    let (status, task_json) = cluster.get(&format!("/v1/tasks/{task}"));
    assert_eq!(status, 200);
    assert_eq!(task_json["status"], "failed");
    assert_eq!(task_json["error"]["code"], "image_checksum_mismatch");

    // A 404 from the image server fails with image_download_failed naming the status.
    let out = cluster.cli(&[
        "vm",
        "create",
        "bad-2",
        "--image-url",
        &server.url("no-such-image.qcow2"),
        "--arch",
        "amd64",
        "--memory-mb",
        "256",
        "--wait",
    ]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr.contains("failed: image_download_failed: "),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("404"), "{}", out.stderr);
}
