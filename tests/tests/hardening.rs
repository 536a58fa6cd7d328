//! Node hardening end to end: hostile image URLs (cloud metadata, redirects there),
//! hostile image formats (qcow2 with a data file or a backing file, vmdk), oversized
//! images, a download interrupted by SIGKILL, firmware outside the firmware dirs, QEMU as
//! an unprivileged user, and the server's retention job.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use otherix_e2e::cluster::NodeOptions;
use otherix_e2e::paths::files_in;
use otherix_e2e::wait::until;
use otherix_e2e::{Cluster, ClusterOptions, ImageServer};
use serde_json::{json, Value};

const TASK: Duration = Duration::from_secs(120);

fn stopped_spec(url: &str) -> Value {
    json!({"image_url": url, "arch": "amd64", "vcpus": 1, "memory_mb": 128,
           "desired_phase": "stopped"})
}

/// Creates a VM and waits for its first vm.create task; returns the task.
fn create_task(cluster: &Cluster, name: &str, spec: Value) -> Value {
    let id = cluster.post_vm(name, spec);
    cluster.wait_task(&id, TASK)
}

fn assert_failed_with(task: &Value, code: &str, needle: &str) {
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["code"], code, "{task}");
    let message = task["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
}

/// The cache's blobs (`sha256-*`) in a pool.
fn cached_blobs(pool: &Path) -> Vec<String> {
    files_in(&pool.join("images"))
        .into_iter()
        .filter(|n| n.starts_with("sha256-"))
        .collect()
}

fn cache_index(pool: &Path) -> Value {
    std::fs::read(pool.join("images/index.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img");
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
}

#[test]
fn image_urls_to_metadata_and_redirects_there_are_refused_loopback_works() {
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    server.redirect_path("to-metadata", "http://169.254.169.254/latest/meta-data/");
    server.redirect_path("hop-1", &server.url("to-metadata"));
    let cluster = Cluster::start();
    let pool = cluster.pool_path("node-1", "default");

    let direct = create_task(
        &cluster,
        "meta-direct",
        stopped_spec("http://169.254.169.254/latest/meta-data/"),
    );
    assert_failed_with(&direct, "image_url_refused", "cloud metadata");
    let redirected = create_task(
        &cluster,
        "meta-redirect",
        stopped_spec(&server.url("hop-1")),
    );
    assert_failed_with(
        &redirected,
        "image_url_refused",
        &format!(
            "image URL {} refused: redirected to http://169.254.169.254/latest/meta-data/",
            server.url("hop-1")
        ),
    );
    assert_eq!(server.requests("hop-1"), 1);
    assert_eq!(server.requests("to-metadata"), 1);
    let link_local = create_task(
        &cluster,
        "link-local",
        stopped_spec("http://[fe80::1]:8080/x.img"),
    );
    assert_failed_with(&link_local, "image_url_refused", "link-local");
    // Nothing was downloaded or cached.
    assert!(files_in(&pool.join("images/tmp")).is_empty());
    assert!(cached_blobs(&pool).is_empty());
    assert_eq!(
        cache_index(&pool)["urls"]
            .as_object()
            .map_or(0, |m| m.len()),
        0
    );

    // A loopback mirror is a private address: allowed by default.
    let ok = create_task(
        &cluster,
        "mirror",
        stopped_spec(&server.url("busybox-amd64.qcow2")),
    );
    assert_eq!(ok["status"], "success", "{ok}");
    assert_eq!(cached_blobs(&pool).len(), 1);
}

#[test]
fn deny_image_cidr_refuses_loopback_naming_the_rule() {
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    let mut node = NodeOptions::new("node-1", &["default"]);
    node.extra_args = vec!["--deny-image-cidr".into(), "127.0.0.0/8".into()];
    let cluster = Cluster::start_with(ClusterOptions {
        nodes: vec![node],
        ..ClusterOptions::default()
    });
    let task = create_task(
        &cluster,
        "denied",
        stopped_spec(&server.url("busybox-amd64.qcow2")),
    );
    assert_failed_with(&task, "image_url_refused", "--deny-image-cidr 127.0.0.0/8");
    assert_eq!(server.requests("busybox-amd64.qcow2"), 0);
}

#[test]
fn data_file_backing_file_and_vmdk_images_are_refused_and_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).display().to_string();
    // A "host file" the data-file image points at.
    std::fs::write(dir.path().join("host-secret.raw"), vec![0x5a; 1 << 20]).unwrap();
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={},data_file_raw=on", d("host-secret.raw")),
        &d("data-file.qcow2"),
        "1M",
    ]);
    qemu_img(&["create", "-f", "raw", &d("base.raw"), "1M"]);
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        &d("base.raw"),
        "-F",
        "raw",
        &d("backed.qcow2"),
    ]);
    qemu_img(&["create", "-f", "vmdk", &d("disk.vmdk"), "1M"]);
    // The data file must not have been rewritten by qemu-img create (data_file_raw keeps it).
    let server = ImageServer::start(dir.path());
    let cluster = Cluster::start();
    let pool = cluster.pool_path("node-1", "default");
    for (name, image, needle) in [
        ("data-file", "data-file.qcow2", "external data file"),
        ("backed", "backed.qcow2", "backing file"),
        ("vmdk", "disk.vmdk", "\"vmdk\" is not accepted"),
    ] {
        let task = create_task(&cluster, name, stopped_spec(&server.url(image)));
        assert_failed_with(&task, "image_format_refused", needle);
        assert_eq!(server.requests(image), 1, "{image} downloaded once");
    }
    assert!(cached_blobs(&pool).is_empty(), "{:?}", cached_blobs(&pool));
    assert!(files_in(&pool.join("images/tmp")).is_empty());
    assert_eq!(
        cache_index(&pool)["urls"]
            .as_object()
            .map_or(0, |m| m.len()),
        0
    );
}

#[test]
fn image_over_max_size_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A sparse 256 MiB raw image: cheap on disk, large on the wire.
    let big = std::fs::File::create(dir.path().join("big.img")).unwrap();
    big.set_len(256 << 20).unwrap();
    drop(big);
    let server = ImageServer::start(dir.path());
    let mut node = NodeOptions::new("node-1", &["default"]);
    node.extra_args = vec!["--max-image-gib".into(), "0.0625".into()];
    let cluster = Cluster::start_with(ClusterOptions {
        nodes: vec![node],
        ..ClusterOptions::default()
    });
    let pool = cluster.pool_path("node-1", "default");
    let task = create_task(&cluster, "big", stopped_spec(&server.url("big.img")));
    assert_failed_with(&task, "image_too_large", "--max-image-gib");
    assert!(files_in(&pool.join("images/tmp")).is_empty());
    assert!(cached_blobs(&pool).is_empty());
    assert!(files_in(&pool.join("vms"))
        .iter()
        .all(|vm| { files_in(&pool.join("vms").join(vm)).is_empty() }));
}

#[test]
fn agent_killed_during_download_sweeps_images_tmp_at_restart() {
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    server.set_throttle(64 * 1024);
    let mut cluster = Cluster::start();
    let pool = cluster.pool_path("node-1", "default");
    let tmp = pool.join("images/tmp");
    let task = cluster.post_vm("slow", stopped_spec(&server.url("busybox-amd64.qcow2")));
    until("a download in images/tmp", Duration::from_secs(60), || {
        (!files_in(&tmp).is_empty()).then_some(())
    });
    cluster.kill_agent("node-1");
    assert!(
        !files_in(&tmp).is_empty(),
        "SIGKILL leaves the partial file"
    );
    // Without a server the restarted agent cannot be handed the task again, so what
    // images/tmp holds after the restart is what the start-up sweep left.
    cluster.kill_server();
    cluster.restart_agent("node-1");
    let log = cluster.dir.path().join("agent-node-1.log");
    until("the start-up sweep", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("swept leftover image downloads")
            .then_some(())
    });
    assert!(files_in(&tmp).is_empty(), "{:?}", files_in(&tmp));
    // With the server back the task is redelivered and the download completes.
    server.set_throttle(0);
    cluster.start_server();
    let done = cluster.wait_task(&task, TASK);
    assert_eq!(done["status"], "success", "{done}");
    assert!(files_in(&tmp).is_empty());
}

#[test]
fn firmware_outside_the_nodes_firmware_dirs_is_refused_at_create() {
    let cluster = Cluster::start();
    let firmware = |name: &str, code: &str| {
        json!({"name": name, "spec": {"arch": "amd64", "type": "uefi", "code": code,
               "vars_template": "/usr/share/OVMF/OVMF_VARS_4M.fd"}})
        .to_string()
    };
    for (name, code) in [
        ("shadow", "/etc/shadow"),
        ("dotdot", "/usr/share/OVMF/../../../etc/shadow"),
        ("pool-disk", "/var/lib/otherix/pool/vms/x/disk.raw"),
    ] {
        let (status, body) = cluster.request("POST", "/v1/firmware", Some(&firmware(name, code)));
        assert_eq!(status, 400, "{code}: {body}");
        assert_eq!(body["error"]["code"], "validation_failed");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("spec.code: "), "{message}");
        if name != "dotdot" {
            assert!(
                message.contains("/usr/share/OVMF"),
                "names the dirs: {message}"
            );
        }
    }
    let (status, _) = cluster.get("/v1/firmware/shadow");
    assert_eq!(status, 404);
    let (status, body) = cluster.request(
        "POST",
        "/v1/firmware",
        Some(&firmware("fine", "/usr/share/OVMF/OVMF_CODE_4M.fd")),
    );
    assert_eq!(status, 201, "{body}");
}

fn ps_user(pid: u32) -> String {
    let out = Command::new("ps")
        .args(["-o", "user=", "-p", &pid.to_string()])
        .output()
        .expect("ps");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn qemu_runs_unprivileged_in_the_strict_sandbox_and_vms_still_work() {
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    let cluster = Cluster::start();
    let pid = cluster.create_booted("jailed", &server.url("busybox-amd64.qcow2"), &[]);
    assert_eq!(ps_user(pid), "otherix-qemu");
    let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
        .replace('\0', " ");
    assert!(
        cmdline.contains(
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        ),
        "{cmdline}"
    );
    // The VM's own files belong to the QEMU user and are private to it.
    let vm = cluster.vm("jailed");
    let id = vm["id"].as_str().unwrap();
    let disk_dir = cluster
        .pool_path("node-1", "default")
        .join(format!("vms/{id}"));
    let meta = std::fs::metadata(&disk_dir).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    let qemu_uid = meta.uid();
    assert_ne!(qemu_uid, 0);
    assert_eq!(
        std::fs::metadata(disk_dir.join("disk.qcow2"))
            .unwrap()
            .uid(),
        qemu_uid
    );
    // Stop, start again (still unprivileged), delete.
    cluster.cli(&["vm", "stop", "jailed", "--wait"]).ok();
    assert_eq!(cluster.vm("jailed")["status"]["phase"], "stopped");
    cluster.cli(&["vm", "start", "jailed", "--wait"]).ok();
    let pid2 = cluster.vm("jailed")["status"]["pid"].as_u64().unwrap() as u32;
    assert_ne!(pid2, pid);
    assert_eq!(ps_user(pid2), "otherix-qemu");
    cluster
        .cli(&["vm", "delete", "jailed", "--force", "--wait"])
        .ok();
    assert!(!disk_dir.exists());
}

/// Runs `otherix-agent ARGS` that must refuse to start: its stderr once it exited
/// unsuccessfully (killed, and the test failed, if it is still up after 30 s).
fn agent_start_failure(args: &[String]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let err_path = dir.path().join("stderr");
    let mut child = Command::new(otherix_e2e::paths::bin("otherix-agent"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("run otherix-agent");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("otherix-agent {args:?} did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    std::fs::read_to_string(err_path).unwrap()
}

#[test]
fn agent_refuses_to_start_with_an_unknown_qemu_user_or_untraversable_pool() {
    let dir = tempfile::tempdir().unwrap();
    let base = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "--server",
            "http://127.0.0.1:9",
            "--node",
            "n1",
            "--accel",
            "tcg",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("--data-dir".into());
        args.push(dir.path().join("data").display().to_string());
        args.push("--pool".into());
        args.push(format!("default={}", dir.path().join("pool").display()));
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let stderr = agent_start_failure(&base(&["--qemu-user", "otherix-no-such-user"]));
    assert!(
        stderr.contains("--qemu-user otherix-no-such-user: no such user"),
        "{stderr}"
    );
    // A pool under a directory the QEMU user cannot traverse.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let stderr = agent_start_failure(&base(&[]));
    assert!(
        stderr.contains(&format!(
            "--qemu-user otherix-qemu cannot traverse {}",
            dir.path().display()
        )),
        "{stderr}"
    );
}

fn sqlite_count(db: &Path, sql: &str) -> u64 {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3");
    assert!(out.status.success(), "sqlite3 {sql}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn retention_purges_old_tasks_and_deleted_vms_but_keeps_live_vms_latest_task() {
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    let cluster = Cluster::start_with(ClusterOptions {
        server_args: vec![
            "--retention".into(),
            "1s".into(),
            "--retention-interval".into(),
            "300ms".into(),
        ],
        ..ClusterOptions::default()
    });
    let url = server.url("busybox-amd64.qcow2");
    let created = create_task(&cluster, "keep", stopped_spec(&url));
    assert_eq!(created["status"], "success", "{created}");
    let (status, accepted) = cluster.request("POST", "/v1/vms/keep/start", None);
    assert_eq!(status, 202, "{accepted}");
    let started_id = accepted["task"]["id"].as_str().unwrap().to_owned();
    let started = cluster.wait_task(&started_id, TASK);
    assert_eq!(started["status"], "success", "{started}");

    let gone_create = create_task(&cluster, "gone", stopped_spec(&url));
    assert_eq!(gone_create["status"], "success", "{gone_create}");
    cluster
        .cli(&["vm", "delete", "gone", "--force", "--wait"])
        .ok();
    let db = cluster.dir.path().join("server/otherix.db");
    assert_eq!(
        sqlite_count(&db, "SELECT count(*) FROM vms WHERE name = 'gone'"),
        1,
        "soft-deleted first"
    );

    let created_id = created["id"].as_str().unwrap().to_owned();
    until(
        "old tasks and the deleted VM purged",
        Duration::from_secs(30),
        || {
            let (status, _) = cluster.get(&format!("/v1/tasks/{created_id}"));
            let vms = sqlite_count(&db, "SELECT count(*) FROM vms WHERE name = 'gone'");
            (status == 404 && vms == 0).then_some(())
        },
    );
    // The live VM's newest task stays, whatever its age; nothing of `gone` is left.
    std::thread::sleep(Duration::from_secs(2));
    let (status, latest) = cluster.get(&format!("/v1/tasks/{started_id}"));
    assert_eq!(status, 200, "{latest}");
    let (_, listed) = cluster.get("/v1/tasks?vm=keep");
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [started_id.as_str()]);
    assert_eq!(
        sqlite_count(&db, "SELECT count(*) FROM tasks WHERE vm_name = 'gone'"),
        0
    );
    assert_eq!(cluster.vm("keep")["status"]["phase"], "running");
    let log = std::fs::read_to_string(cluster.dir.path().join("otherixd.log")).unwrap();
    assert!(log.contains("retention purged old rows"), "{log}");
}
