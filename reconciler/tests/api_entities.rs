//! API tests of the entities VMs point at (pools, networks, firmware, cluster settings),
//! task cancel, Idempotency-Key, and the agent-backed reads without an agent attached:
//! the real app on a temp SQLite file through `Router::oneshot`.
//!
//! With `OTHERIXD_TEST_POSTGRES_URL=postgres://USER@HOST:PORT/postgres` set, every test
//! runs against a fresh PostgreSQL database instead.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use otherix_api::proto::{PoolPath, Register, TaskState, TaskUpdate, VmPower, VmReport};
use serde_json::{json, Value};
use tower::ServiceExt;

mod common;
use common::TestServer;

async fn open() -> TestServer {
    common::open(tempfile::tempdir().unwrap()).await
}

fn registration(pools: &[(&str, &str)]) -> Register {
    Register {
        guest_arches: vec!["amd64".into(), "arm64".into()],
        pools: pools
            .iter()
            .map(|(n, p)| PoolPath {
                name: (*n).into(),
                path: (*p).into(),
            })
            .collect(),
        ..common::registration("node-1", 64, 262_144)
    }
}

/// One ready node (no agent stream attached) serving `default`, the default pool.
async fn server_with_node() -> TestServer {
    let s = open().await;
    s.daemon
        .gateway
        .register(&registration(&[("default", "/srv/default")]))
        .await
        .unwrap();
    s
}

async fn call_with(
    app: &Router,
    method: Method,
    uri: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Body::from(body.unwrap_or("").to_owned())).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

async fn call(app: &Router, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let body = body.map(|b| b.to_string());
    call_with(app, method, uri, body.as_deref(), &[]).await
}

fn assert_error(
    (status, v): (StatusCode, Value),
    want_status: StatusCode,
    code: &str,
    fragment: &str,
) {
    assert_eq!(status, want_status, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(fragment), "message {msg:?} lacks {fragment:?}");
}

fn vm(name: &str, extra: Value) -> Value {
    let mut spec = json!({"image_url": "http://127.0.0.1:9/img.qcow2", "arch": "amd64"});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({"name": name, "spec": spec})
}

async fn create_vm(app: &Router, name: &str, extra: Value) -> (StatusCode, Value) {
    call(app, Method::POST, "/v1/vms", Some(vm(name, extra))).await
}

fn names(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn pools_create_apply_get_delete_report_outcomes() {
    let s = server_with_node().await;
    let app = &s.app;
    let body =
        json!({"name": "fast", "spec": {"description": "NVMe"}, "annotations": {"team": "infra"}});
    let (status, p) = call(app, Method::POST, "/v1/pools", Some(body.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    assert_eq!(p["spec"]["description"], "NVMe");
    assert_eq!(p["annotations"]["team"], "infra");
    assert_eq!(p["instances"], json!([]));
    assert_error(
        call(app, Method::POST, "/v1/pools", Some(body)).await,
        StatusCode::CONFLICT,
        "conflict",
        "pool fast already exists",
    );

    let apply = |spec: Value| json!({"spec": spec, "annotations": {"team": "infra"}});
    let (status, r) = call(
        app,
        Method::PUT,
        "/v1/pools/fast",
        Some(apply(json!({"description": "NVMe"}))),
    )
    .await;
    assert_eq!(
        (status, r["outcome"].as_str()),
        (StatusCode::OK, Some("unchanged"))
    );
    assert!(r.get("task").is_none());
    let (_, r) = call(
        app,
        Method::PUT,
        "/v1/pools/fast",
        Some(apply(json!({"description": "SATA"}))),
    )
    .await;
    assert_eq!(r["outcome"], "configured", "{r}");
    assert_eq!(r["object"]["spec"]["description"], "SATA");
    let (_, r) = call(app, Method::PUT, "/v1/pools/slow", Some(apply(json!({})))).await;
    assert_eq!(r["outcome"], "created", "{r}");

    // The agent-registered pool is listed with its instance and an empty spec.
    let (status, list) = call(app, Method::GET, "/v1/pools?limit=1000", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(names(&list), ["default", "fast", "slow"]);
    assert_eq!(list["items"][0]["instances"][0]["node"], "node-1");
    let id = list["items"][1]["id"].as_str().unwrap();
    let (_, by_id) = call(app, Method::GET, &format!("/v1/pools/{id}"), None).await;
    assert_eq!(by_id["name"], "fast");

    let (status, _) = call(app, Method::DELETE, "/v1/pools/slow", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_error(
        call(app, Method::GET, "/v1/pools/slow", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "pool slow",
    );
    // Unknown fields are refused.
    assert_error(
        call(
            app,
            Method::PUT,
            "/v1/pools/x",
            Some(json!({"spec": {"size": 1}})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
        "unknown field `size`",
    );
}

#[tokio::test]
async fn pool_delete_in_use_or_default_is_conflict() {
    let s = server_with_node().await;
    let app = &s.app;
    let (status, v) = create_vm(app, "web-1", json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_error(
        call(app, Method::DELETE, "/v1/pools/default", None).await,
        StatusCode::CONFLICT,
        "conflict",
        "pool default is in use by vms: web-1",
    );
    call(
        app,
        Method::POST,
        "/v1/pools",
        Some(json!({"name": "spare", "spec": {}})),
    )
    .await;
    let (_, r) = call(
        app,
        Method::PUT,
        "/v1/cluster",
        Some(json!({"spec": {"default_pool": "spare"}})),
    )
    .await;
    assert_eq!(r["outcome"], "configured", "{r}");
    assert_error(
        call(app, Method::DELETE, "/v1/pools/spare", None).await,
        StatusCode::CONFLICT,
        "conflict",
        "cluster default pool",
    );
}

#[tokio::test]
async fn networks_crud_and_validation() {
    let s = server_with_node().await;
    let app = &s.app;
    let (status, n) = call(
        app,
        Method::POST,
        "/v1/networks",
        Some(json!({"name": "lan", "spec": {"type": "bridge", "bridge": "br0"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{n}");
    assert_eq!(n["spec"], json!({"type": "bridge", "bridge": "br0"}));
    for (spec, fragment) in [
        (
            json!({"type": "bridge"}),
            "spec.bridge: required for type bridge",
        ),
        (
            json!({"type": "bridge", "bridge": "way-too-long-ifname"}),
            "not a valid interface name",
        ),
        (json!({"type": "vxlan"}), "unknown variant `vxlan`"),
    ] {
        assert_error(
            call(
                app,
                Method::POST,
                "/v1/networks",
                Some(json!({"name": "bad", "spec": spec})),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "validation_failed",
            fragment,
        );
    }
    let (_, r) = call(
        app,
        Method::PUT,
        "/v1/networks/lan",
        Some(json!({"spec": {"type": "bridge", "bridge": "br0"}})),
    )
    .await;
    assert_eq!(r["outcome"], "unchanged", "{r}");
    let (_, r) = call(
        app,
        Method::PUT,
        "/v1/networks/lan",
        Some(json!({"spec": {"type": "bridge", "bridge": "br1"}})),
    )
    .await;
    assert_eq!(r["outcome"], "configured", "{r}");
    let (_, r) = call(
        app,
        Method::PUT,
        "/v1/networks/outside",
        Some(json!({"spec": {"type": "nat"}})),
    )
    .await;
    assert_eq!(r["outcome"], "created", "{r}");
    let (_, list) = call(app, Method::GET, "/v1/networks", None).await;
    assert_eq!(names(&list), ["lan", "outside"]);
    let (status, _) = call(app, Method::DELETE, "/v1/networks/outside", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_error(
        call(app, Method::GET, "/v1/networks/outside", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "network outside",
    );
}

#[tokio::test]
async fn vm_network_attach_rules_and_delete_in_use_conflict() {
    let s = server_with_node().await;
    let app = &s.app;
    call(
        app,
        Method::POST,
        "/v1/networks",
        Some(json!({"name": "lan", "spec": {"type": "bridge", "bridge": "br0"}})),
    )
    .await;
    call(
        app,
        Method::POST,
        "/v1/networks",
        Some(json!({"name": "outside", "spec": {"type": "nat"}})),
    )
    .await;
    assert_error(
        create_vm(app, "a", json!({"network": "nope"})).await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
        "spec.network: no network named nope",
    );
    assert_error(
        create_vm(app, "a", json!({"network": "outside"})).await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
        "spec.network: network outside is type nat; only bridge networks can be attached",
    );
    let (status, v) = create_vm(app, "a", json!({"network": "lan"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["vm"]["spec"]["network"], "lan");
    assert_error(
        call(app, Method::DELETE, "/v1/networks/lan", None).await,
        StatusCode::CONFLICT,
        "conflict",
        "network lan is in use by vms: a",
    );
    // By uuid too.
    let (_, lan) = call(app, Method::GET, "/v1/networks/lan", None).await;
    let id = lan["id"].as_str().unwrap();
    let (status, v) = create_vm(app, "b", json!({"network": id})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
}

#[tokio::test]
async fn firmware_builtins_listed_and_immutable() {
    let s = server_with_node().await;
    let app = &s.app;
    let (_, list) = call(app, Method::GET, "/v1/firmware", None).await;
    assert_eq!(names(&list), ["aavmf", "ovmf", "seabios"]);
    assert!(list["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["builtin"] == true));
    let (_, ovmf) = call(app, Method::GET, "/v1/firmware/ovmf", None).await;
    assert_eq!(
        ovmf["spec"],
        json!({"arch": "amd64", "type": "uefi", "code": "/usr/share/OVMF/OVMF_CODE_4M.fd",
               "vars_template": "/usr/share/OVMF/OVMF_VARS_4M.fd"})
    );
    let (_, seabios) = call(app, Method::GET, "/v1/firmware/seabios", None).await;
    assert_eq!(seabios["spec"], json!({"arch": "amd64", "type": "bios"}));
    // Re-applying a built-in as it is: unchanged; changing it: 409.
    let (_, r) = call(
        app,
        Method::PUT,
        "/v1/firmware/ovmf",
        Some(json!({"spec": ovmf["spec"].clone()})),
    )
    .await;
    assert_eq!(r["outcome"], "unchanged", "{r}");
    assert_error(
        call(
            app,
            Method::PUT,
            "/v1/firmware/ovmf",
            Some(json!({"spec": {"arch": "amd64", "type": "bios"}})),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        "firmware ovmf is built in and cannot be changed",
    );
    assert_error(
        call(app, Method::DELETE, "/v1/firmware/ovmf", None).await,
        StatusCode::CONFLICT,
        "conflict",
        "built in and cannot be deleted",
    );
    assert_error(
        call(
            app,
            Method::POST,
            "/v1/firmware",
            Some(json!({"name": "ovmf", "spec": {"arch": "amd64", "type": "bios"}})),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        "firmware ovmf already exists",
    );
    assert_error(
        call(
            app,
            Method::POST,
            "/v1/firmware",
            Some(json!({"name": "edk", "spec": {"arch": "amd64", "type": "uefi"}})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
        "spec.code: required for type uefi",
    );
}

#[tokio::test]
async fn vm_firmware_refs_checked_and_custom_firmware_delete_in_use_conflict() {
    let s = server_with_node().await;
    let app = &s.app;
    let arm = |fw: Value| {
        let mut extra = fw;
        extra["arch"] = json!("arm64");
        extra
    };
    assert_error(
        create_vm(app, "a", arm(json!({"firmware": "ovmf"}))).await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
        "spec.firmware: firmware ovmf is for amd64, the VM is arm64",
    );
    assert_error(
        create_vm(app, "a", json!({"firmware": "nosuch"})).await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
        "spec.firmware: no firmware named nosuch",
    );
    assert_error(
        create_vm(
            app,
            "a",
            json!({"firmware_id": "6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
        "spec.firmware_id: no firmware with id 6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11",
    );
    let (status, v) = create_vm(app, "a", arm(json!({"firmware": "aavmf"}))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");

    let (status, fw) = call(
        app,
        Method::POST,
        "/v1/firmware",
        Some(
            json!({"name": "edk2", "spec": {"arch": "amd64", "type": "uefi",
            "code": "/usr/share/OVMF/edk2-code.fd", "vars_template": "/usr/share/OVMF/edk2-vars.fd"}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{fw}");
    assert_eq!(fw["builtin"], false);
    let id = fw["id"].as_str().unwrap();
    let (status, v) = create_vm(app, "b", json!({"firmware_id": id})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_error(
        call(app, Method::DELETE, "/v1/firmware/edk2", None).await,
        StatusCode::CONFLICT,
        "conflict",
        "firmware edk2 is in use by vms: b",
    );
    let (_, r) = call(
        app,
        Method::PUT,
        "/v1/firmware/edk2",
        Some(json!({"spec": {"arch": "amd64", "type": "uefi",
            "code": "/usr/share/OVMF/edk2-code2.fd", "vars_template": "/usr/share/OVMF/edk2-vars.fd"}})),
    )
    .await;
    assert_eq!(r["outcome"], "configured", "{r}");
    call(
        app,
        Method::POST,
        "/v1/firmware",
        Some(json!({"name": "old", "spec": {"arch": "amd64", "type": "bios"}})),
    )
    .await;
    let (status, _) = call(app, Method::DELETE, "/v1/firmware/old", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn firmware_files_outside_the_nodes_firmware_dirs_are_refused() {
    let firmware = |name: &str, code: &str, vars: &str| {
        json!({"name": name, "spec": {"arch": "amd64", "type": "uefi",
            "code": code, "vars_template": vars}})
    };
    // No node yet: the default dirs.
    let s = open().await;
    let app = &s.app;
    assert_error(
        call(
            app,
            Method::POST,
            "/v1/firmware",
            Some(firmware("shadow", "/etc/shadow", "/usr/share/OVMF/OVMF_VARS_4M.fd")),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
        "spec.code: \"/etc/shadow\" is outside the firmware directories (/usr/share/AAVMF, /usr/share/OVMF, /usr/share/qemu, /usr/share/seabios)",
    );
    assert_error(
        call(
            app,
            Method::POST,
            "/v1/firmware",
            Some(firmware(
                "dotdot",
                "/usr/share/OVMF/OVMF_CODE_4M.fd",
                "/usr/share/OVMF/../../../var/lib/otherix/pool/vms/x/disk.raw",
            )),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
        "spec.vars_template: ",
    );
    assert_error(
        call(
            app,
            Method::PUT,
            "/v1/firmware/shadow",
            Some(
                json!({"spec": {"arch": "amd64", "type": "uefi", "code": "/root/.ssh/id_ed25519",
                "vars_template": "/usr/share/OVMF/OVMF_VARS_4M.fd"}}),
            ),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
        "spec.code: \"/root/.ssh/id_ed25519\" is outside",
    );
    let (status, v) = call(
        app,
        Method::POST,
        "/v1/firmware",
        Some(firmware(
            "ok",
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        )),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");

    // A ready node with its own firmware dirs: only those count.
    let mut reg = registration(&[("default", "/srv/default")]);
    reg.firmware_dirs = vec!["/srv/fw".into()];
    s.daemon.gateway.register(&reg).await.unwrap();
    let (status, v) = call(
        app,
        Method::POST,
        "/v1/firmware",
        Some(firmware("srv", "/srv/fw/code.fd", "/srv/fw/vars.fd")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_error(
        call(
            app,
            Method::POST,
            "/v1/firmware",
            Some(firmware(
                "ovmf2",
                "/usr/share/OVMF/OVMF_CODE_4M.fd",
                "/srv/fw/vars.fd",
            )),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
        "(/srv/fw)",
    );
}

#[tokio::test]
async fn cluster_get_put_and_cleared_default_pool_stays_cleared() {
    let s = server_with_node().await;
    let app = &s.app;
    let (status, c) = call(app, Method::GET, "/v1/cluster", None).await;
    assert_eq!(status, StatusCode::OK);
    // Version 1 from the migration, 2 once the first agent's `default` pool became the
    // default.
    assert_eq!(
        c,
        json!({"name": "cluster", "spec": {"default_pool": "default"}, "resource_version": 2})
    );
    assert_error(
        call(
            app,
            Method::PUT,
            "/v1/cluster",
            Some(json!({"spec": {"default_pool": "nope"}})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
        "spec.default_pool: no pool named nope",
    );
    let put = json!({"spec": {"default_pool": "default"}, "annotations": {"team": "infra"}});
    let (_, r) = call(app, Method::PUT, "/v1/cluster", Some(put.clone())).await;
    assert_eq!(r["outcome"], "configured", "{r}");
    assert_eq!(r["object"]["annotations"]["team"], "infra");
    let (_, r) = call(app, Method::PUT, "/v1/cluster", Some(put)).await;
    assert_eq!(r["outcome"], "unchanged", "{r}");

    let (_, r) = call(app, Method::PUT, "/v1/cluster", Some(json!({"spec": {}}))).await;
    assert_eq!(r["outcome"], "configured", "{r}");
    assert_eq!(
        r["object"],
        json!({"name": "cluster", "spec": {}, "resource_version": 4})
    );
    assert_error(
        create_vm(app, "a", json!({})).await,
        StatusCode::BAD_REQUEST,
        "default_pool_not_set",
        "no default pool",
    );
    // An agent registering `default` again does not bring the default back.
    s.daemon
        .gateway
        .register(&registration(&[("default", "/srv/default")]))
        .await
        .unwrap();
    let (_, c) = call(app, Method::GET, "/v1/cluster", None).await;
    assert_eq!(c["spec"], json!({}));
    assert_eq!(c["resource_version"], 4, "nothing was written: {c}");
    let (status, v) = create_vm(app, "a", json!({"pool": "default"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
}

/// `cluster set cpu-allocation-ratio 8`: a node takes twice the vCPUs it takes at the
/// default 4; `node get` shows what is schedulable; out-of-range ratios are refused.
#[tokio::test]
async fn cpu_allocation_ratio_8_lets_a_node_take_twice_the_vcpus() {
    let s = server_with_node().await;
    let app = &s.app;
    // Creates three VMs of 128 vCPUs named PREFIX0..2: the first two fit, the third is
    // refused naming the ratio; then node-1 has `committed` of `committed` schedulable.
    let fill = |prefix: &'static str, ratio: &'static str, committed: u64| async move {
        let mut placed = 0;
        for i in 0..3 {
            let big = json!({"vcpus": 128, "memory_mb": 256});
            let (status, v) = create_vm(app, &format!("{prefix}{i}"), big).await;
            if status == StatusCode::ACCEPTED {
                placed += 1;
            } else {
                let why = format!("allocation ratio {ratio}");
                assert_error(
                    (status, v),
                    StatusCode::CONFLICT,
                    "insufficient_capacity",
                    &why,
                );
            }
        }
        assert_eq!(placed, 2, "{prefix}");
        let (_, n) = call(app, Method::GET, "/v1/nodes/node-1", None).await;
        let got = (
            n["allocated_vcpus"].as_u64(),
            n["schedulable_vcpus"].as_u64(),
        );
        assert_eq!(got, (Some(committed), Some(committed)), "{n}");
    };
    // 64 cores x 4 = 256 schedulable vCPUs: two VMs of 128.
    fill("a", "4", 256).await;

    let (_, c) = call(app, Method::GET, "/v1/cluster", None).await;
    let mut spec = c["spec"].clone();
    spec["cpu_allocation_ratio"] = json!(100);
    let body = Some(json!({"spec": spec.clone()}));
    assert_error(
        call(app, Method::PUT, "/v1/cluster", body).await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
        "spec.cpu_allocation_ratio: must be a number from 0.1 to 64 (got 100)",
    );
    spec["cpu_allocation_ratio"] = json!(8);
    let (status, r) = call(app, Method::PUT, "/v1/cluster", Some(json!({"spec": spec}))).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(
        r["object"]["spec"]["cpu_allocation_ratio"],
        json!(8.0),
        "{r}"
    );

    // 64 x 8 = 512: two more, then full again.
    fill("b", "8", 512).await;
}

#[tokio::test]
async fn task_cancel_pending_create_is_cancelled_and_second_cancel_conflicts() {
    let s = server_with_node().await;
    let app = &s.app;
    let (_, v) = create_vm(app, "web-1", json!({})).await;
    let task_id = v["task"]["id"].as_str().unwrap().to_owned();
    let uri = format!("/v1/tasks/{task_id}/cancel");
    let (status, t) = call(app, Method::POST, &uri, None).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(t["status"], "cancelled");
    assert_eq!(t["error"]["code"], "cancelled");
    let (_, got) = call(app, Method::GET, "/v1/vms/web-1", None).await;
    assert_eq!(got["status"]["phase"], "failed");
    assert!(got["status"].get("current_task").is_none(), "{got}");
    assert_error(
        call(app, Method::POST, &uri, None).await,
        StatusCode::CONFLICT,
        "conflict",
        &format!("task {task_id} is already cancelled"),
    );
    // The slot is free: delete emits the next task.
    let (status, d) = call(app, Method::DELETE, "/v1/vms/web-1", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{d}");
    assert_error(
        call(app, Method::POST, "/v1/tasks/nope/cancel", None).await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
        "not a task id",
    );
}

#[tokio::test]
async fn task_cancel_pending_start_puts_vm_back_to_stopped() {
    let s = server_with_node().await;
    let app = &s.app;
    let (_, v) = create_vm(app, "web-1", json!({"desired_phase": "stopped"})).await;
    s.daemon
        .gateway
        .apply_task_update(
            "node-1",
            &TaskUpdate {
                task_id: v["task"]["id"].as_str().unwrap().into(),
                state: TaskState::Succeeded as i32,
                vm: Some(VmReport {
                    vm_id: v["vm"]["id"].as_str().unwrap().into(),
                    power: VmPower::Stopped as i32,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (status, started) = call(app, Method::POST, "/v1/vms/web-1/start", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["vm"]["status"]["phase"], "starting");
    let uri = format!(
        "/v1/tasks/{}/cancel",
        started["task"]["id"].as_str().unwrap()
    );
    let (status, t) = call(app, Method::POST, &uri, None).await;
    assert_eq!(
        (status, t["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    let (_, got) = call(app, Method::GET, "/v1/vms/web-1", None).await;
    assert_eq!(got["status"]["phase"], "stopped");
    assert_eq!(got["spec"]["desired_phase"], "stopped");
    // Nothing re-emits the start.
    s.daemon
        .reconciler
        .reconcile_vm(got["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap();
    let (_, got) = call(app, Method::GET, "/v1/vms/web-1", None).await;
    assert!(got["status"].get("current_task").is_none(), "{got}");
}

#[tokio::test]
async fn idempotency_key_same_request_returns_same_task_and_reuse_conflicts() {
    let s = server_with_node().await;
    let app = &s.app;
    let body = vm("web-1", json!({})).to_string();
    let key = [("idempotency-key", "create-web-1")];
    let (status, first) = call_with(app, Method::POST, "/v1/vms", Some(&body), &key).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (status, again) = call_with(app, Method::POST, "/v1/vms", Some(&body), &key).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["task"]["id"], first["task"]["id"]);
    assert_eq!(again["vm"]["id"], first["vm"]["id"]);
    let (_, list) = call(app, Method::GET, "/v1/vms", None).await;
    assert_eq!(names(&list), ["web-1"]);

    let other = vm("web-2", json!({})).to_string();
    assert_error(
        call_with(app, Method::POST, "/v1/vms", Some(&other), &key).await,
        StatusCode::CONFLICT,
        "conflict",
        "Idempotency-Key \"create-web-1\" was already used for a different request",
    );
    assert_error(
        call_with(app, Method::DELETE, "/v1/vms/web-1", None, &key).await,
        StatusCode::CONFLICT,
        "conflict",
        "already used",
    );
    // Without a key a retried create is still a conflict.
    assert_error(
        call_with(app, Method::POST, "/v1/vms", Some(&body), &[]).await,
        StatusCode::CONFLICT,
        "conflict",
        "vm web-1 already exists",
    );
    // Async op routes take keys too.
    let cancel = format!("/v1/tasks/{}/cancel", first["task"]["id"].as_str().unwrap());
    assert_eq!(
        call(app, Method::POST, &cancel, None).await.0,
        StatusCode::OK
    );
    let del_key = [("idempotency-key", "del-1")];
    let (status, d1) = call_with(app, Method::DELETE, "/v1/vms/web-1", None, &del_key).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{d1}");
    let (status, d2) = call_with(app, Method::DELETE, "/v1/vms/web-1", None, &del_key).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{d2}");
    assert_eq!(d1["task"]["id"], d2["task"]["id"]);
    assert_error(
        call_with(
            app,
            Method::POST,
            "/v1/vms",
            Some(&body),
            &[("idempotency-key", "")],
        )
        .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
        "Idempotency-Key",
    );
}

#[tokio::test]
async fn agent_reads_without_attached_agent_are_unavailable_or_empty() {
    let s = server_with_node().await;
    let app = &s.app;
    create_vm(app, "web-1", json!({})).await;
    assert_error(
        call(
            app,
            Method::GET,
            "/v1/vms/web-1/logs?offset=0&max_bytes=100",
            None,
        )
        .await,
        StatusCode::SERVICE_UNAVAILABLE,
        "agent_unavailable",
        "node-1",
    );
    assert_error(
        call(app, Method::GET, "/v1/vms/web-1/logs?max_bytes=0", None).await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
        "max_bytes",
    );
    assert_error(
        call(app, Method::GET, "/v1/vms/nope/logs", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "vm nope",
    );
    let (status, images) = call(app, Method::GET, "/v1/pools/default/images", None).await;
    assert_eq!(status, StatusCode::OK, "{images}");
    assert_eq!(images["items"], json!([]));
    let (status, pruned) = call(app, Method::POST, "/v1/pools/default/prune-images", None).await;
    assert_eq!((status, &pruned["items"]), (StatusCode::OK, &json!([])));
    assert_error(
        call(app, Method::GET, "/v1/pools/nope/images", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "pool nope",
    );
}

#[tokio::test]
async fn nodes_show_allocations_and_pools_served() {
    let s = server_with_node().await;
    let app = &s.app;
    create_vm(app, "web-1", json!({"vcpus": 4, "memory_mb": 4096})).await;
    let (_, n) = call(app, Method::GET, "/v1/nodes/node-1", None).await;
    assert_eq!(n["allocated_vcpus"], 4, "{n}");
    assert_eq!(n["allocated_memory_mb"], 4096);
    assert_eq!(n["pools"], json!(["default"]));
    assert_eq!(n["status"], "ready");
}
