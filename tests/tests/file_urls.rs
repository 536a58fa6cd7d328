//! `file://` image URLs read the agent host's files, so otherix takes them only for nodes
//! whose agent was started with `--allow-file-urls`: without such a node the create is
//! refused up front (400 `validation_failed`), with one the VM is placed there and boots.

use otherix_e2e::cluster::NodeOptions;
use otherix_e2e::{Cluster, ClusterOptions};

fn busybox_file_url() -> String {
    let image = otherix_e2e::paths::test_images().join("busybox-amd64.qcow2");
    assert!(image.is_file(), "{} missing", image.display());
    format!("file://{}", image.display())
}

fn create_args<'a>(name: &'a str, url: &'a str) -> Vec<&'a str> {
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
        "256",
    ]
}

#[test]
fn file_url_without_allowing_agent_is_validation_failed() {
    let cluster = Cluster::start();
    let url = busybox_file_url();
    let out = cluster.cli(&create_args("x", &url));
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr.starts_with(
            "error: validation_failed: spec.image_url: file:// URLs need an agent started with --allow-file-urls"
        ),
        "{out:#?}"
    );
    assert!(
        out.stderr.contains(
            "node-1: file:// image URLs are not allowed on this node (start its agent with --allow-file-urls)"
        ),
        "{out:#?}"
    );
    // Nothing was created.
    let (status, _) = cluster.get("/v1/vms/x");
    assert_eq!(status, 404);
    let (_, node) = cluster.get("/v1/nodes/node-1");
    assert_eq!(node["allow_file_urls"], false, "{node}");
}

#[test]
fn file_url_with_allow_file_urls_agent_boots() {
    let mut node = NodeOptions::new("node-1", &["default"]);
    node.extra_args.push("--allow-file-urls".into());
    let cluster = Cluster::start_with(ClusterOptions {
        nodes: vec![node],
        ..ClusterOptions::default()
    });
    let (_, n) = cluster.get("/v1/nodes/node-1");
    assert_eq!(n["allow_file_urls"], true, "{n}");
    let url = busybox_file_url();
    let mut args = create_args("x", &url);
    args.push("--wait");
    let out = cluster.cli(&args).ok();
    assert!(out.stdout.contains("vm running task="), "{out:#?}");
    let vm = cluster.vm("x");
    assert_eq!(vm["status"]["phase"], "running", "{vm}");
    assert_eq!(vm["status"]["node"], "node-1", "{vm}");
    cluster
        .cli(&["vm", "delete", "x", "--wait", "--force"])
        .ok();
}
