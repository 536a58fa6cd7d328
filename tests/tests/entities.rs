//! The entities VM flags point at, and task control, end to end: pools, cluster settings,
//! firmware, networks through the CLI; Idempotency-Key over raw HTTP; cancelling a running
//! image download (no partial file left); `vm logs`; pool images and prune-images.

use std::time::Duration;

use otherix_e2e::paths::files_in;
use otherix_e2e::wait::until;
use otherix_e2e::{Cluster, ImageServer};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(180);

#[test]
fn pools_cluster_firmware_networks_and_idempotency_over_cli_and_http() {
    let cluster = Cluster::start();
    let url = "http://127.0.0.1:9/unused.qcow2";

    // Pools.
    let out = cluster
        .cli(&["pool", "create", "fast", "--description", "NVMe"])
        .ok();
    assert_eq!(out.stdout.trim(), "pool/fast created");
    let out = cluster.cli(&["pool", "list"]).ok();
    assert!(
        out.stdout.lines().any(|l| l.starts_with("fast")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.lines().any(|l| l.starts_with("default")),
        "{}",
        out.stdout
    );
    let out = cluster.cli(&["pool", "get", "default"]).ok();
    assert!(
        out.stdout.contains("node-1"),
        "instances listed: {}",
        out.stdout
    );
    let out = cluster.cli(&["pool", "delete", "default"]);
    out.expect_error("conflict");

    // Cluster settings: the default pool.
    let settings = cluster.cli(&["cluster", "get", "-o", "json"]).ok().json();
    assert_eq!(settings["spec"]["default_pool"], "default");
    let out = cluster.cli(&["cluster", "set", "default-pool", "nope"]);
    out.expect_error("validation_failed");
    cluster
        .cli(&["cluster", "set", "default-pool", "fast"])
        .ok();
    let settings = cluster.cli(&["cluster", "get", "-o", "json"]).ok().json();
    assert_eq!(settings["spec"]["default_pool"], "fast");
    // No node serves `fast`, so a VM without --pool cannot be placed now.
    let out = cluster.cli(&["vm", "create", "a", "--image-url", url, "--arch", "amd64"]);
    assert_eq!(out.code, 1);
    assert!(
        !out.stderr.contains("default_pool_not_set"),
        "{}",
        out.stderr
    );
    cluster
        .cli(&["cluster", "set", "default-pool", "default"])
        .ok();
    cluster.cli(&["pool", "delete", "fast"]).ok();

    // Firmware: built-ins, a custom one, and arch checks on VMs.
    let out = cluster.cli(&["firmware", "list"]).ok();
    for fw in ["seabios", "ovmf", "aavmf"] {
        assert!(out.stdout.contains(fw), "{fw} not in {}", out.stdout);
    }
    cluster
        .cli(&[
            "firmware",
            "create",
            "ovmf-copy",
            "--arch",
            "amd64",
            "--type",
            "uefi",
            "--code",
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "--vars-template",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ])
        .ok();
    let out = cluster.cli(&[
        "vm",
        "create",
        "a",
        "--image-url",
        url,
        "--arch",
        "arm64",
        "--firmware",
        "ovmf",
    ]);
    out.expect_error("validation_failed");

    // Networks.
    cluster
        .cli(&[
            "network", "create", "lan", "--type", "bridge", "--bridge", "br-lan",
        ])
        .ok();
    let out = cluster.cli(&["network", "list"]).ok();
    assert!(
        out.stdout.contains("lan") && out.stdout.contains("br-lan"),
        "{}",
        out.stdout
    );
    let net = cluster
        .cli(&["network", "get", "lan", "-o", "json"])
        .ok()
        .json();
    assert_eq!(net["spec"]["type"], "bridge");
    cluster.cli(&["network", "delete", "lan"]).ok();
    assert_eq!(cluster.get("/v1/networks/lan").0, 404);

    // Idempotency-Key: a retried create returns the same task, not a conflict or a 2nd VM.
    let body = json!({"name": "idem", "spec": {"image_url": url, "arch": "amd64", "vcpus": 1,
                      "memory_mb": 128, "desired_phase": "stopped"}})
    .to_string();
    let key = [("Idempotency-Key", "create-idem-1")];
    let (s1, r1) = cluster.request_with_headers("POST", "/v1/vms", Some(&body), &key);
    let (s2, r2) = cluster.request_with_headers("POST", "/v1/vms", Some(&body), &key);
    assert_eq!((s1, s2), (202, 202), "{r1} {r2}");
    assert_eq!(r1["task"]["id"], r2["task"]["id"]);
    let (_, list) = cluster.get("/v1/vms");
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    let (s3, r3) = cluster.request("POST", "/v1/vms", Some(&body));
    assert_eq!(s3, 409, "without the key it is a conflict: {r3}");
}

#[test]
fn cancel_download_logs_and_pool_images() {
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    let cluster = Cluster::start();
    let pool = cluster.pool_path("node-1", "default");

    // A running, slow download is cancelled and leaves no partial file.
    let slow_dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        images.join("busybox-amd64.qcow2"),
        slow_dir.path().join("slow.qcow2"),
    )
    .unwrap();
    let slow = ImageServer::start(slow_dir.path());
    slow.set_throttle(128 * 1024);
    let out = cluster
        .cli(&[
            "vm",
            "create",
            "slow",
            "--image-url",
            &slow.url("slow.qcow2"),
            "--arch",
            "amd64",
            "--vcpus",
            "1",
            "--memory-mb",
            "128",
        ])
        .ok();
    let task = out.stdout.trim().split("task=").nth(1).unwrap()[..36].to_owned();
    until("download progress on the task", BOOT, || {
        let t = cluster
            .cli(&["task", "get", &task, "-o", "json"])
            .ok()
            .json();
        (t["status"] == "running" && t["progress"]["bytes_done"].as_u64().unwrap_or(0) > 0)
            .then_some(())
    });
    let text = cluster.cli(&["task", "get", &task]).ok().stdout;
    assert!(text.contains("downloading image"), "{text}");
    cluster.cli(&["task", "cancel", &task]).ok();
    let t = cluster.wait_task(&task, BOOT);
    assert_eq!(t["status"], "cancelled", "{t}");
    let leftovers: Vec<String> = files_in(&pool.join("images"))
        .into_iter()
        .chain(files_in(&pool.join("images/tmp")))
        .filter(|n| n != "tmp" && n != "index.json" && !n.ends_with(".lock"))
        .collect();
    assert!(leftovers.is_empty(), "partial download left: {leftovers:?}");
    let out = cluster.cli(&["task", "cancel", &task]);
    assert_eq!(out.code, 1, "cancelling a finished task is a conflict");
    cluster
        .cli(&["vm", "delete", "slow", "--force", "--wait"])
        .ok();

    // vm logs: the serial console through the API.
    cluster.create_booted("logged", &server.url("busybox-amd64.qcow2"), &[]);
    let out = cluster.cli(&["vm", "logs", "logged"]).ok();
    assert!(
        out.stdout.contains("OTHERIX-TEST-GUEST-BOOTED"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("OTHERIX-TEST-GUEST-READY"),
        "{}",
        out.stdout
    );

    // Pool images: listed per node with size and users; prune keeps what is used.
    let list = cluster
        .cli(&["pool", "images", "default", "-o", "json"])
        .ok()
        .json();
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["node"], "node-1");
    assert_eq!(items[0]["used_by"], 1);
    assert!(items[0]["size"].as_u64().unwrap() > 1_000_000);
    let out = cluster.cli(&["pool", "prune-images", "default"]).ok();
    assert!(out.stdout.contains("pruned 0"), "{}", out.stdout);
    cluster
        .cli(&["vm", "delete", "logged", "--force", "--wait"])
        .ok();
    let out = cluster.cli(&["pool", "prune-images", "default"]).ok();
    assert!(out.stdout.contains("pruned 1"), "{}", out.stdout);
    let cached: Vec<String> = files_in(&pool.join("images"))
        .into_iter()
        .filter(|n| n.starts_with("sha256-"))
        .collect();
    assert!(cached.is_empty(), "{cached:?}");
}
