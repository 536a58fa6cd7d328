//! API tests: the real app on a temp SQLite file, requests through `Router::oneshot` and
//! over a real TCP socket. Agent results are fed through the gateway's own entry points
//! (`register`, `apply_task_update`), the code path a real agent stream takes.
//!
//! With `OTHERIXD_TEST_POSTGRES_URL=postgres://USER@HOST:PORT/postgres` set, every test
//! runs against a fresh PostgreSQL database instead.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use otherix_api::proto::{Register, TaskState, TaskUpdate, VmPower, VmReport};
use serde_json::{json, Value};
use tower::ServiceExt;

mod common;
use common::agent_finishes;
use common::{open, reopen, TestServer};

const UUID: &str = "6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11";

/// What an agent on `node` sends when it attaches, serving the `default` pool.
fn registration(node: &str, allow_file_urls: bool) -> Register {
    Register {
        allow_file_urls,
        ..common::registration(node, 64, 262_144)
    }
}

/// A server with one ready node serving the `default` pool (so it is the default pool).
async fn server_with_node() -> TestServer {
    let s = open(tempfile::tempdir().unwrap()).await;
    s.daemon
        .gateway
        .register(&registration("node-1", false))
        .await
        .unwrap();
    s
}

async fn call(app: &Router, method: Method, uri: &str, body: Option<&str>) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.unwrap_or("").to_owned()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

fn vm_body(name: &str) -> String {
    json!({"name": name, "spec": {"image_url": "http://127.0.0.1:9/img.qcow2", "arch": "amd64"}})
        .to_string()
}

async fn create(app: &Router, name: &str) -> Value {
    let (status, v) = call(app, Method::POST, "/v1/vms", Some(&vm_body(name))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    v
}

fn assert_error(
    status: StatusCode,
    v: &Value,
    want_status: StatusCode,
    code: &str,
    fragment: &str,
) {
    assert_eq!(status, want_status, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(fragment), "message {msg:?} lacks {fragment:?}");
}

#[tokio::test]
async fn create_vm_valid_body_returns_202_pending_task_and_creating_vm() {
    let s = server_with_node().await;
    let v = create(&s.app, "web-1").await;
    assert_eq!(v["task"]["kind"], "vm.create");
    assert_eq!(v["task"]["status"], "pending");
    assert_eq!(v["task"]["node"], "node-1");
    assert_eq!(v["task"]["placement"]["pool_path"], "/srv/default");
    assert_eq!(v["vm"]["name"], "web-1");
    assert_eq!(v["vm"]["status"]["phase"], "creating");
    assert_eq!(v["vm"]["status"]["current_task"], v["task"]["id"]);

    let (status, got) = call(&s.app, Method::GET, "/v1/vms/web-1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["id"], v["vm"]["id"]);
    assert_eq!(got["spec"]["vcpus"], 2);

    let task_uri = format!("/v1/tasks/{}", v["task"]["id"].as_str().unwrap());
    let (status, task) = call(&s.app, Method::GET, &task_uri, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(task["vm_name"], "web-1");
}

#[tokio::test]
async fn list_vms_five_vms_limit_two_walks_all_pages_in_order() {
    let s = server_with_node().await;
    let names = ["a1", "a2", "a3", "a4", "a5"];
    for n in names {
        create(&s.app, n).await;
    }
    let mut seen = Vec::new();
    let mut uri = "/v1/vms?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let (status, v) = call(&s.app, Method::GET, &uri, None).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        pages += 1;
        let items = v["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|i| i["name"].as_str().unwrap().to_owned()));
        match v["next_cursor"].as_str() {
            Some(c) => uri = format!("/v1/vms?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, names);

    let (_, v) = call(
        &s.app,
        Method::GET,
        "/v1/vms?status=creating&node=node-1&pool=default",
        None,
    )
    .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 5);
    let (_, v) = call(&s.app, Method::GET, "/v1/vms?status=running", None).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 0);
    let (_, v) = call(&s.app, Method::GET, "/v1/vms?node=node-2", None).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 0);

    // On a node that stopped reporting the filter matches the phase the list shows.
    s.daemon.store.mark_node_not_ready("node-1").await.unwrap();
    for (status, count) in [("creating", 0), ("unknown", 5)] {
        let (_, v) = call(
            &s.app,
            Method::GET,
            &format!("/v1/vms?status={status}"),
            None,
        )
        .await;
        let items = v["items"].as_array().unwrap();
        assert_eq!(items.len(), count, "status={status}: {v}");
        assert!(items.iter().all(|i| i["status"]["phase"] == status), "{v}");
    }
}

#[tokio::test]
async fn list_vms_bad_params_are_validation_failed() {
    let s = server_with_node().await;
    for (uri, fragment) in [
        ("/v1/vms?limit=0", "limit"),
        ("/v1/vms?limit=1001", "limit"),
        ("/v1/vms?limit=abc", "limit"),
        ("/v1/vms?cursor=zzzz", "cursor"),
        ("/v1/vms?status=bogus", "status"),
        ("/v1/tasks?cursor=00", "cursor"),
    ] {
        let (status, v) = call(&s.app, Method::GET, uri, None).await;
        assert_error(
            status,
            &v,
            StatusCode::BAD_REQUEST,
            "validation_failed",
            fragment,
        );
    }
}

#[tokio::test]
async fn create_vm_invalid_bodies_are_validation_failed_naming_the_field() {
    let s = server_with_node().await;
    let spec = |extra: Value| {
        let mut spec = json!({"image_url": "http://127.0.0.1:9/img.qcow2", "arch": "amd64"});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        json!({"name": "web-1", "spec": spec}).to_string()
    };
    let sha = "a".repeat(64);
    let table: Vec<(String, &str)> = vec![
        (spec(json!({"vcpus": 0})), "spec.vcpus"),
        (spec(json!({"vcpus": 129})), "spec.vcpus"),
        (spec(json!({"memory_mb": 127})), "spec.memory_mb"),
        (spec(json!({"image_sha256": "abc"})), "spec.image_sha256"),
        (
            spec(json!({"image_sha256": format!("{sha}zz")})),
            "spec.image_sha256",
        ),
        (
            spec(json!({"firmware": "ovmf", "firmware_id": UUID})),
            "spec.firmware",
        ),
        (
            spec(json!({"no_cloud_init": true, "user_data": "#cloud-config\n"})),
            "spec.no_cloud_init",
        ),
        (spec(json!({"vcpu": 2})), "unknown field `vcpu`"),
        (spec(json!({"vcpus": "two"})), "spec.vcpus: invalid type"),
        (
            json!({"name": "Web_1", "spec": {"image_url": "http://x/i", "arch": "amd64"}})
                .to_string(),
            "name",
        ),
        (
            json!({"name": UUID, "spec": {"image_url": "http://x/i", "arch": "amd64"}}).to_string(),
            "UUID",
        ),
        (
            json!({"name": "web-1", "spec": {"image_url": "http://x/i"}}).to_string(),
            "missing field `arch`",
        ),
        (
            json!({"name": "web-1", "spec": {"image_url": "http://x/i", "arch": "amd64"}, "x": 1})
                .to_string(),
            "unknown field `x`",
        ),
        ("{not json".to_owned(), "request body"),
        (String::new(), "request body"),
    ];
    for (body, fragment) in table {
        let (status, v) = call(&s.app, Method::POST, "/v1/vms", Some(&body)).await;
        assert_error(
            status,
            &v,
            StatusCode::BAD_REQUEST,
            "validation_failed",
            fragment,
        );
    }
    let (_, v) = call(&s.app, Method::GET, "/v1/vms", None).await;
    assert_eq!(
        v["items"].as_array().unwrap().len(),
        0,
        "nothing was created"
    );
}

#[tokio::test]
async fn vm_routes_uuid_name_in_path_is_validation_failed() {
    let s = server_with_node().await;
    for (method, suffix) in [
        (Method::GET, ""),
        (Method::DELETE, ""),
        (Method::POST, "/start"),
        (Method::POST, "/stop"),
        (Method::POST, "/pause"),
    ] {
        let (status, v) = call(&s.app, method, &format!("/v1/vms/{UUID}{suffix}"), None).await;
        assert_error(
            status,
            &v,
            StatusCode::BAD_REQUEST,
            "validation_failed",
            "UUID",
        );
    }
}

#[tokio::test]
async fn missing_vm_task_and_route_are_not_found() {
    let s = server_with_node().await;
    let (status, v) = call(&s.app, Method::GET, "/v1/vms/nope", None).await;
    assert_error(status, &v, StatusCode::NOT_FOUND, "not_found", "vm nope");
    let (status, v) = call(&s.app, Method::POST, "/v1/vms/nope/stop", None).await;
    assert_error(status, &v, StatusCode::NOT_FOUND, "not_found", "vm nope");
    let (status, v) = call(&s.app, Method::GET, &format!("/v1/tasks/{UUID}"), None).await;
    assert_error(status, &v, StatusCode::NOT_FOUND, "not_found", UUID);
    let (status, v) = call(&s.app, Method::GET, "/v1/tasks/not-a-uuid", None).await;
    assert_error(
        status,
        &v,
        StatusCode::BAD_REQUEST,
        "validation_failed",
        "uuid",
    );
    let (status, v) = call(&s.app, Method::GET, "/v1/nope", None).await;
    assert_error(status, &v, StatusCode::NOT_FOUND, "not_found", "route");
    let (status, v) = call(&s.app, Method::GET, "/v1/nodes/zz", None).await;
    assert_error(status, &v, StatusCode::NOT_FOUND, "not_found", "node zz");
    let (status, v) = call(&s.app, Method::GET, "/v1/pools/zz", None).await;
    assert_error(status, &v, StatusCode::NOT_FOUND, "not_found", "pool zz");
}

#[tokio::test]
async fn duplicate_live_name_and_misfit_op_are_conflict() {
    let s = server_with_node().await;
    create(&s.app, "web-1").await;
    let (status, v) = call(&s.app, Method::POST, "/v1/vms", Some(&vm_body("web-1"))).await;
    assert_error(
        status,
        &v,
        StatusCode::CONFLICT,
        "conflict",
        "web-1 already exists",
    );
    let (status, v) = call(&s.app, Method::POST, "/v1/vms/web-1/stop", None).await;
    assert_error(
        status,
        &v,
        StatusCode::CONFLICT,
        "conflict",
        "vm web-1 is creating; stop needs running or paused",
    );
    let (status, v) = call(&s.app, Method::POST, "/v1/vms/web-1/resume", None).await;
    assert_error(
        status,
        &v,
        StatusCode::CONFLICT,
        "conflict",
        "resume needs paused",
    );
    let (status, v) = call(
        &s.app,
        Method::POST,
        "/v1/vms/web-1/stop?timeout_secs=0",
        None,
    )
    .await;
    assert_error(
        status,
        &v,
        StatusCode::BAD_REQUEST,
        "validation_failed",
        "timeout_secs",
    );
}

#[tokio::test]
async fn deleted_vm_name_can_be_reused() {
    let s = server_with_node().await;
    let v = create(&s.app, "web-1").await;
    let vm_id = v["vm"]["id"].as_str().unwrap().to_owned();
    agent_finishes(
        &s,
        v["task"]["id"].as_str().unwrap(),
        &vm_id,
        VmPower::Running,
    )
    .await;
    let (_, got) = call(&s.app, Method::GET, "/v1/vms/web-1", None).await;
    assert_eq!(got["status"]["phase"], "running");
    assert_eq!(got["status"]["pid"], 4242);

    let (status, del) = call(&s.app, Method::DELETE, "/v1/vms/web-1", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{del}");
    assert_eq!(del["task"]["kind"], "vm.delete");
    assert_eq!(del["vm"]["status"]["phase"], "deleting");
    // Still there (deleting) until the agent confirms.
    let (status, v2) = call(&s.app, Method::POST, "/v1/vms", Some(&vm_body("web-1"))).await;
    assert_error(
        status,
        &v2,
        StatusCode::CONFLICT,
        "conflict",
        "already exists",
    );
    agent_finishes(
        &s,
        del["task"]["id"].as_str().unwrap(),
        &vm_id,
        VmPower::Absent,
    )
    .await;

    let (status, v) = call(&s.app, Method::GET, "/v1/vms/web-1", None).await;
    assert_error(status, &v, StatusCode::NOT_FOUND, "not_found", "web-1");
    let again = create(&s.app, "web-1").await;
    assert_ne!(again["vm"]["id"], vm_id.as_str());

    // Task history spans both VMs of that name, newest first.
    let (_, tasks) = call(&s.app, Method::GET, "/v1/tasks?vm=web-1", None).await;
    let kinds: Vec<&str> = tasks["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["vm.create", "vm.delete", "vm.create"]);
    let (_, page) = call(&s.app, Method::GET, "/v1/tasks?vm=web-1&limit=2", None).await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = call(
        &s.app,
        Method::GET,
        &format!("/v1/tasks?vm=web-1&limit=2&cursor={cursor}"),
        None,
    )
    .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest["items"][0]["status"], "success");
}

#[tokio::test]
async fn lifecycle_ops_running_vm_emit_tasks_and_start_is_idempotent() {
    let s = server_with_node().await;
    let v = create(&s.app, "web-1").await;
    let vm_id = v["vm"]["id"].as_str().unwrap().to_owned();
    agent_finishes(
        &s,
        v["task"]["id"].as_str().unwrap(),
        &vm_id,
        VmPower::Running,
    )
    .await;

    let (status, start) = call(&s.app, Method::POST, "/v1/vms/web-1/start", None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(start["task"]["kind"], "vm.start");
    assert_eq!(start["task"]["status"], "success");

    let (status, reboot) = call(&s.app, Method::POST, "/v1/vms/web-1/reboot", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reboot}");
    assert_eq!(reboot["task"]["kind"], "vm.reboot");
    assert_eq!(reboot["vm"]["status"]["phase"], "rebooting");
    agent_finishes(
        &s,
        reboot["task"]["id"].as_str().unwrap(),
        &vm_id,
        VmPower::Running,
    )
    .await;

    let (status, off) = call(&s.app, Method::POST, "/v1/vms/web-1/poweroff", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{off}");
    assert_eq!(off["task"]["kind"], "vm.poweroff");
    assert_eq!(off["vm"]["spec"]["desired_phase"], "stopped");
    agent_finishes(
        &s,
        off["task"]["id"].as_str().unwrap(),
        &vm_id,
        VmPower::Stopped,
    )
    .await;

    let (status, start) = call(&s.app, Method::POST, "/v1/vms/web-1/start", None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(start["task"]["status"], "pending");
    assert_eq!(start["vm"]["status"]["phase"], "starting");
    assert!(
        start["vm"]["spec"].get("desired_phase").is_none(),
        "running is the default"
    );
}

#[tokio::test]
async fn create_vm_without_default_pool_is_default_pool_not_set() {
    let s = open(tempfile::tempdir().unwrap()).await;
    let (status, v) = call(&s.app, Method::POST, "/v1/vms", Some(&vm_body("web-1"))).await;
    assert_error(
        status,
        &v,
        StatusCode::BAD_REQUEST,
        "default_pool_not_set",
        "default pool",
    );
    let (_, v) = call(&s.app, Method::GET, "/v1/vms", None).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn create_vm_pinned_to_node_without_pool_is_pool_not_on_node() {
    let s = server_with_node().await;
    let body = json!({"name": "web-1", "spec": {"image_url": "http://x/i", "arch": "amd64", "node": "node-1", "pool": "fast"}});
    let (status, v) = call(&s.app, Method::POST, "/v1/vms", Some(&body.to_string())).await;
    assert_error(
        status,
        &v,
        StatusCode::CONFLICT,
        "pool_not_on_node",
        "pool fast",
    );
    let body = json!({"name": "web-1", "spec": {"image_url": "http://x/i", "arch": "amd64", "memory_mb": 524288}});
    let (status, v) = call(&s.app, Method::POST, "/v1/vms", Some(&body.to_string())).await;
    assert_error(
        status,
        &v,
        StatusCode::CONFLICT,
        "insufficient_capacity",
        "MiB",
    );
}

#[tokio::test]
async fn create_vm_file_url_needs_a_node_that_allows_file_urls() {
    let s = server_with_node().await;
    let body = json!({"name": "web-1", "spec": {"image_url": "file:///srv/images/busybox.qcow2", "arch": "amd64"}});
    let (status, v) = call(&s.app, Method::POST, "/v1/vms", Some(&body.to_string())).await;
    assert_error(
        status,
        &v,
        StatusCode::BAD_REQUEST,
        "validation_failed",
        "spec.image_url: file:// URLs need an agent started with --allow-file-urls",
    );
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with(
            "spec.image_url: file:// URLs need an agent started with --allow-file-urls"
        ),
        "{msg}"
    );
    assert!(
        msg.contains("node-1: file:// image URLs are not allowed on this node (start its agent with --allow-file-urls)"),
        "{msg}"
    );
    let (_, vms) = call(&s.app, Method::GET, "/v1/vms", None).await;
    assert_eq!(vms["items"].as_array().unwrap().len(), 0, "{vms}");
    // http URLs are unaffected by the flag.
    create(&s.app, "web-http").await;
    let (_, node) = call(&s.app, Method::GET, "/v1/nodes/node-1", None).await;
    assert_eq!(node["allow_file_urls"], false, "{node}");

    // A second agent that allows file:// URLs takes the VM, though node-1 is emptier.
    s.daemon
        .gateway
        .register(&registration("node-2", true))
        .await
        .unwrap();
    let (_, node) = call(&s.app, Method::GET, "/v1/nodes/node-2", None).await;
    assert_eq!(node["allow_file_urls"], true, "{node}");
    let (status, v) = call(&s.app, Method::POST, "/v1/vms", Some(&body.to_string())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["task"]["node"], "node-2", "{v}");
    assert_eq!(
        v["task"]["placement"]["rejected"][0]["node"], "node-1",
        "{v}"
    );

    // Re-registering without the flag clears it.
    s.daemon
        .gateway
        .register(&registration("node-2", false))
        .await
        .unwrap();
    let (_, node) = call(&s.app, Method::GET, "/v1/nodes/node-2", None).await;
    assert_eq!(node["allow_file_urls"], false, "{node}");
}

#[tokio::test]
async fn stop_timeout_task_keeps_its_last_phase_across_reopen() {
    let s = server_with_node().await;
    let v = create(&s.app, "web-1").await;
    let vm_id = v["vm"]["id"].as_str().unwrap().to_owned();
    agent_finishes(
        &s,
        v["task"]["id"].as_str().unwrap(),
        &vm_id,
        VmPower::Running,
    )
    .await;
    let (status, stop) = call(&s.app, Method::POST, "/v1/vms/web-1/stop", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{stop}");
    let task_id = stop["task"]["id"].as_str().unwrap().to_owned();
    let task_uri = format!("/v1/tasks/{task_id}");
    // What the agent streams for a guest that ignores the power button.
    for phase in ["powerdown sent", "waiting for guest"] {
        s.daemon
            .gateway
            .apply_task_update(
                "node-1",
                &TaskUpdate {
                    task_id: task_id.clone(),
                    state: TaskState::Running as i32,
                    phase: phase.into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let (_, task) = call(&s.app, Method::GET, &task_uri, None).await;
        assert_eq!(task["status"], "running", "{task}");
        assert_eq!(task["progress"]["phase"], phase, "{task}");
    }
    s.daemon
        .gateway
        .apply_task_update(
            "node-1",
            &TaskUpdate {
                task_id: task_id.clone(),
                state: TaskState::Failed as i32,
                phase: "timed out".into(),
                error_code: "stop_timeout".into(),
                error_message: "guest of vm web-1 did not power off within 60s".into(),
                vm: Some(VmReport {
                    vm_id: vm_id.clone(),
                    power: VmPower::Running as i32,
                    pid: 4242,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (_, task) = call(&s.app, Method::GET, &task_uri, None).await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["code"], "stop_timeout", "{task}");
    assert_eq!(task["progress"]["phase"], "timed out", "{task}");

    // The phase is durable (tasks.phase), not just in memory.
    let TestServer {
        daemon,
        app,
        dir,
        database_url,
        ..
    } = s;
    drop(app);
    daemon.store.close().await;
    drop(daemon);
    let s = reopen(dir, database_url).await;
    let (_, task) = call(&s.app, Method::GET, &task_uri, None).await;
    assert_eq!(task["progress"]["phase"], "timed out", "{task}");
}

#[tokio::test]
async fn tasks_survive_reopening_the_database() {
    let s = server_with_node().await;
    let v = create(&s.app, "web-1").await;
    let task_id = v["task"]["id"].as_str().unwrap().to_owned();
    let TestServer {
        daemon,
        app,
        dir,
        database_url,
        ..
    } = s;
    drop(app);
    daemon.store.close().await;
    drop(daemon);

    let s = reopen(dir, database_url).await;
    let (status, task) = call(&s.app, Method::GET, &format!("/v1/tasks/{task_id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(task["status"], "pending");
    assert_eq!(task["kind"], "vm.create");
    // Opening changes no node's status (another replica may hold its agent's stream):
    // the leader's liveness sweep marks it not ready once its heartbeats are overdue.
    let (_, nodes) = call(&s.app, Method::GET, "/v1/nodes", None).await;
    assert_eq!(nodes["items"][0]["status"], "ready");
    assert_eq!(nodes["items"][0]["allocated_vcpus"], 2);
}

#[tokio::test]
async fn task_long_poll_answers_on_change_or_after_wait() {
    let s = server_with_node().await;
    let v = create(&s.app, "web-1").await;
    let task_id = v["task"]["id"].as_str().unwrap().to_owned();
    let vm_id = v["vm"]["id"].as_str().unwrap().to_owned();

    // Nothing happens: answers after ~1 s with the current task.
    let t0 = Instant::now();
    let (status, task) = call(
        &s.app,
        Method::GET,
        &format!("/v1/tasks/{task_id}?wait_secs=1"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(task["status"], "pending");
    assert!(t0.elapsed() >= Duration::from_millis(900));

    // Status differs from S already: immediate.
    let t0 = Instant::now();
    let (_, task) = call(
        &s.app,
        Method::GET,
        &format!("/v1/tasks/{task_id}?wait_secs=30&status=running"),
        None,
    )
    .await;
    assert_eq!(task["status"], "pending");
    assert!(t0.elapsed() < Duration::from_secs(5));

    // Woken by the agent's update.
    let app = s.app.clone();
    let uri = format!("/v1/tasks/{task_id}?wait_secs=30&status=pending");
    let poll = tokio::spawn(async move { call(&app, Method::GET, &uri, None).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    agent_finishes(&s, &task_id, &vm_id, VmPower::Running).await;
    let (status, task) = poll.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(task["status"], "success");
    assert!(t0.elapsed() < Duration::from_secs(5));

    let (status, v) = call(
        &s.app,
        Method::GET,
        &format!("/v1/tasks/{task_id}?wait_secs=1&status=bogus"),
        None,
    )
    .await;
    assert_error(
        status,
        &v,
        StatusCode::BAD_REQUEST,
        "validation_failed",
        "status",
    );
}

/// With several replicas (`OTHERIXD_TEST_REPLICAS`), a long-poll on each of them wakes
/// when the agent's update lands on replica 0 (through the relay's notifications).
#[tokio::test]
async fn task_long_poll_wakes_on_every_replica() {
    let s = server_with_node().await;
    let v = create(&s.app, "web-1").await;
    let task_id = v["task"]["id"].as_str().unwrap().to_owned();
    let vm_id = v["vm"]["id"].as_str().unwrap().to_owned();
    let apps: Vec<Router> = std::iter::once(s.daemon.app())
        .chain(s.replicas.iter().map(|r| r.daemon.app()))
        .map(|app| common::with_token(app, &s.admin_token))
        .collect();
    let uri = format!("/v1/tasks/{task_id}?wait_secs=30&status=pending");
    let polls: Vec<_> = apps
        .into_iter()
        .map(|app| {
            let uri = uri.clone();
            tokio::spawn(async move { call(&app, Method::GET, &uri, None).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    agent_finishes(&s, &task_id, &vm_id, VmPower::Running).await;
    for (replica, poll) in polls.into_iter().enumerate() {
        let (status, task) = poll.await.unwrap();
        assert_eq!(status, StatusCode::OK, "replica {replica}");
        assert_eq!(task["status"], "success", "replica {replica}: {task}");
    }
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "woken after {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn cluster_reads_show_node_and_default_pool() {
    let s = server_with_node().await;
    create(&s.app, "web-1").await;
    let (status, nodes) = call(&s.app, Method::GET, "/v1/nodes", None).await;
    assert_eq!(status, StatusCode::OK);
    let node = &nodes["items"][0];
    assert_eq!(node["name"], "node-1");
    assert_eq!(node["status"], "ready");
    assert_eq!(node["pools"], json!(["default"]));
    assert_eq!(node["allocated_memory_mb"], 2048);
    let (status, node) = call(&s.app, Method::GET, "/v1/nodes/node-1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(node["vcpus"], 64);
    let (_, pools) = call(&s.app, Method::GET, "/v1/pools", None).await;
    assert_eq!(pools["items"][0]["name"], "default");
    let (status, pool) = call(&s.app, Method::GET, "/v1/pools/default", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pool["instances"][0]["node"], "node-1");
    assert_eq!(pool["instances"][0]["path"], "/srv/default");
    let (status, body) = call(&s.app, Method::GET, "/healthz", None).await;
    assert_eq!((status, body), (StatusCode::OK, Value::String("ok".into())));
}

#[tokio::test]
async fn real_socket_create_get_and_error_envelope_over_tcp() {
    let s = server_with_node().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = s.raw_app.clone();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();

    // A body that is not declared JSON is refused before it is read (no form posts).
    let resp = client
        .post(format!("{base}/v1/vms"))
        .bearer_auth(&s.admin_token)
        .header("content-type", "text/plain")
        .body(vm_body("web-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unsupported_media_type");

    let resp = client
        .post(format!("{base}/v1/vms"))
        .bearer_auth(&s.admin_token)
        .header("content-type", "application/json")
        .body(vm_body("web-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["task"]["status"], "pending");

    let vm: Value = client
        .get(format!("{base}/v1/vms/web-1"))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(vm["status"]["phase"], "creating");

    let resp = client
        .post(format!("{base}/v1/vms"))
        .bearer_auth(&s.admin_token)
        .header("content-type", "application/json")
        .body(r#"{"name":"web-2","spec":{"image_url":"http://x/i","arch":"amd64","vcpus":0}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "validation_failed");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("spec.vcpus"));

    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.text().await.unwrap(), "ok");
}

/// A deterministic fuzz pass over request bodies: truncated and byte-mangled versions of a
/// full create body, sent to every JSON route, must answer a 2xx or a 4xx JSON error
/// envelope — never a 5xx, never a panic, never a non-JSON error.
#[tokio::test]
async fn request_bodies_mangled_never_5xx_and_always_enveloped() {
    let s = server_with_node().await;
    let full = json!({"name": "fz", "spec": {
        "image_url": "http://127.0.0.1:9/img.qcow2", "arch": "amd64", "vcpus": 2,
        "memory_mb": 512, "disk_gib": 4, "user_data": "#cloud-config\nhostname: x\n",
        "network_config": "version: 2\n", "ports": [{"host": 2222, "guest": 22}],
        "restart_policy": "always", "desired_phase": "stopped", "stop_timeout_secs": 30}})
    .to_string();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let specials = [
        b'"', b'{', b'}', b'[', b']', b',', b':', b'0', b'-', b'\\', b'e', b'n',
    ];
    let mut bodies: Vec<String> = (0..full.len())
        .step_by(5)
        .map(|i| full[..i].to_owned())
        .collect();
    for _ in 0..300 {
        let mut b = full.clone().into_bytes();
        for _ in 0..(1 + next() % 3) {
            let i = (next() as usize) % b.len();
            b[i] = specials[(next() as usize) % specials.len()];
        }
        bodies.push(String::from_utf8_lossy(&b).into_owned());
    }
    let routes = [
        (Method::POST, "/v1/vms"),
        (Method::PUT, "/v1/vms/fz"),
        (Method::POST, "/v1/pools"),
        (Method::POST, "/v1/networks"),
        (Method::PUT, "/v1/cluster"),
    ];
    let (mut ok, mut rejected) = (0, 0);
    for body in &bodies {
        for (method, uri) in &routes {
            let (status, v) = call(&s.app, method.clone(), uri, Some(body)).await;
            if status.is_success() {
                ok += 1;
            } else {
                rejected += 1;
            }
            assert!(
                !status.is_server_error(),
                "{method} {uri} answered {status} to {body:?}: {v}"
            );
            if status.is_client_error() {
                assert!(
                    v["error"]["code"].is_string() && v["error"]["message"].is_string(),
                    "{method} {uri} {status} without an error envelope for {body:?}: {v}"
                );
            }
        }
    }
    // The pass exercised both sides: some mangled bodies are still valid, most are not.
    assert!(ok > 0 && rejected > 1000, "ok {ok}, rejected {rejected}");
}
