//! Store-level concurrency safety through the API: optimistic concurrency on VMs
//! (`resource_version`, `If-Match`, 409 on a stale write), placement claims in the VM's
//! transaction (no overcommit under concurrent creates) and Idempotency-Key races. Writers
//! are spread over two in-process replicas on one database (each with its own per-process
//! VM locks), so only the database can keep them apart. SQLite by default; PostgreSQL when
//! `OTHERIXD_TEST_POSTGRES_URL` is set.

use axum::http::{Method, StatusCode};
use axum::Router;
use otherix_api::proto::{TaskState, VmPower};
use otherixd::daemon::Daemon;
use serde_json::{json, Value};

mod common;
use common::TestServer;

/// Two replicas on one fresh database: the test server and a second daemon (opened before
/// the node registers: a starting replica marks every node not ready).
struct Replicas {
    s: TestServer,
    _b: Daemon,
    apps: [Router; 2],
}

async fn replicas(node_vcpus: u32, node_memory_mb: u64) -> Replicas {
    let s = common::open(tempfile::tempdir().unwrap()).await;
    let b = Daemon::open(&s.database_url).await.unwrap();
    let b_app = common::with_token(b.app(), &s.admin_token);
    register(&s, "node-1", node_vcpus, node_memory_mb).await;
    let apps = [s.app.clone(), b_app];
    Replicas { s, _b: b, apps }
}

async fn register(s: &TestServer, node: &str, vcpus: u32, memory_mb: u64) {
    common::register_node(&s.daemon, node, vcpus, memory_mb).await;
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    headers: &[(&str, String)],
    body: Option<&Value>,
) -> (StatusCode, Value) {
    common::call_json_with(app, method, uri, headers, body).await
}

fn spec() -> Value {
    json!({"image_url": "http://127.0.0.1:9/img.qcow2", "arch": "amd64", "vcpus": 1, "memory_mb": 1024})
}

async fn get_vm(app: &Router, name: &str) -> Value {
    let (status, v) = call(app, Method::GET, &format!("/v1/vms/{name}"), &[], None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v
}

fn if_match(v: i64) -> Vec<(&'static str, String)> {
    vec![("if-match", v.to_string())]
}

#[tokio::test]
async fn put_vm_if_match_current_is_configured_stale_is_409_naming_both_versions() {
    let r = replicas(64, 262_144).await;
    let app = &r.apps[0];
    let (status, v) = call(
        app,
        Method::PUT,
        "/v1/vms/web-1",
        &[],
        Some(&json!({"spec": spec()})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let create_task = v["task"].clone();
    let v0 = get_vm(app, "web-1").await["resource_version"]
        .as_i64()
        .unwrap();
    assert!(v0 >= 1);

    let mut changed = spec();
    changed["vcpus"] = json!(2);
    let (status, v) = call(
        app,
        Method::PUT,
        "/v1/vms/web-1",
        &if_match(v0),
        Some(&json!({"spec": changed})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["outcome"], "configured");
    let v1 = v["object"]["resource_version"].as_i64().unwrap();
    assert!(v1 > v0, "{v}");

    // The same (now stale) version again, even for an unchanged body: 409.
    let (status, v) = call(
        app,
        Method::PUT,
        "/v1/vms/web-1",
        &if_match(v0),
        Some(&json!({"spec": changed})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "conflict");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("expected resource_version {v0}, it is {v1}")),
        "{msg}"
    );
    // A quoted entity tag of the current version is fine.
    let (status, v) = call(
        app,
        Method::PUT,
        "/v1/vms/web-1",
        &[("if-match", format!("\"{v1}\""))],
        Some(&json!({"spec": changed})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["outcome"], "unchanged");

    // Not a version: 400. A precondition on a VM that does not exist: 409.
    let (status, v) = call(
        app,
        Method::PUT,
        "/v1/vms/web-1",
        &[("if-match", "*".to_owned())],
        Some(&json!({"spec": changed})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "validation_failed");
    let (status, v) = call(
        app,
        Method::PUT,
        "/v1/vms/web-2",
        &if_match(1),
        Some(&json!({"spec": spec()})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert!(get_vm_status(app, "web-2").await == StatusCode::NOT_FOUND);

    // The op routes honour it too: a stale delete is 409 and deletes nothing, a current
    // one is accepted.
    let (status, v) = call(app, Method::DELETE, "/v1/vms/web-1", &if_match(v0), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("expected resource_version {v0}")),
        "{v}"
    );
    let (status, v) = call(app, Method::POST, "/v1/vms/web-1/stop", &if_match(v0), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let now = get_vm(app, "web-1").await["resource_version"]
        .as_i64()
        .unwrap();
    assert_eq!(now, v1, "a refused write changes nothing");
    // The agent finishes the create (a write that moves the version), then a stop naming
    // the version the client read before that is stale, the current one is accepted.
    agent_finishes(&r.s, &create_task).await;
    let (status, v) = call(
        app,
        Method::POST,
        "/v1/vms/web-1/stop",
        &if_match(now),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let running = get_vm(app, "web-1").await;
    assert_eq!(running["status"]["phase"], "running", "{running}");
    let current = running["resource_version"].as_i64().unwrap();
    assert!(current > now);
    let (status, v) = call(
        &r.apps[1],
        Method::POST,
        "/v1/vms/web-1/stop",
        &if_match(current),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["task"]["kind"], "vm.stop", "{v}");
}

/// Finishes a task the way the agent would, leaving the VM running.
async fn agent_finishes(s: &TestServer, task: &Value) {
    agent_reports(&s.daemon, task, TaskState::Succeeded, VmPower::Running).await;
}

/// The agent of the task's node reports it ended in `state`, its VM in `power`.
async fn agent_reports(daemon: &Daemon, task: &Value, state: TaskState, power: VmPower) {
    let node = task["node"].as_str().unwrap_or("node-1");
    let (task_id, vm_id) = (
        task["id"].as_str().unwrap(),
        task["vm_id"].as_str().unwrap(),
    );
    common::report_task(daemon, node, task_id, vm_id, state, power).await;
}

async fn get_vm_status(app: &Router, name: &str) -> StatusCode {
    call(app, Method::GET, &format!("/v1/vms/{name}"), &[], None)
        .await
        .0
}

// Several worker threads: the writers really run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_vm_concurrent_writers_with_same_stale_if_match_exactly_one_wins() {
    let r = replicas(64, 262_144).await;
    let (status, v) = call(
        &r.apps[0],
        Method::PUT,
        "/v1/vms/web-1",
        &[],
        Some(&json!({"spec": spec()})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let version = get_vm(&r.apps[0], "web-1").await["resource_version"]
        .as_i64()
        .unwrap();

    const WRITERS: usize = 10;
    let mut joins = Vec::new();
    for i in 0..WRITERS {
        let app = r.apps[i % 2].clone();
        joins.push(tokio::spawn(async move {
            let body = json!({"spec": spec(), "annotations": {"writer": i.to_string()}});
            call(
                &app,
                Method::PUT,
                "/v1/vms/web-1",
                &if_match(version),
                Some(&body),
            )
            .await
        }));
    }
    let mut won = Vec::new();
    let mut lost = 0;
    for j in joins {
        let (status, v) = j.await.unwrap();
        match status {
            StatusCode::OK => {
                assert_eq!(v["outcome"], "configured", "{v}");
                won.push(v["object"]["annotations"]["writer"].clone());
            }
            StatusCode::CONFLICT => {
                assert_eq!(v["error"]["code"], "conflict", "{v}");
                assert!(
                    v["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains(&format!("expected resource_version {version}, it is ")),
                    "{v}"
                );
                lost += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one writer wins: {won:?}");
    assert_eq!(lost, WRITERS - 1);
    // What is stored is the winner's write.
    let vm = get_vm(&r.apps[1], "web-1").await;
    assert_eq!(vm["annotations"]["writer"], won[0]);
    assert!(vm["resource_version"].as_i64().unwrap() > version);
}

#[tokio::test]
async fn create_vm_twenty_concurrent_on_room_for_ten_places_exactly_ten() {
    // Memory for exactly ten 1 GiB VMs; vCPUs plenty.
    let r = replicas(64, 10 * 1024).await;
    let mut joins = Vec::new();
    for i in 0..20 {
        let app = r.apps[i % 2].clone();
        joins.push(tokio::spawn(async move {
            let body = json!({"name": format!("vm-{i}"), "spec": spec()});
            call(&app, Method::POST, "/v1/vms", &[], Some(&body)).await
        }));
    }
    let (mut placed, mut full) = (0, 0);
    for j in joins {
        let (status, v) = j.await.unwrap();
        match status {
            StatusCode::ACCEPTED => {
                assert_eq!(v["task"]["node"], "node-1", "{v}");
                placed += 1;
            }
            StatusCode::CONFLICT => {
                assert_eq!(v["error"]["code"], "insufficient_capacity", "{v}");
                full += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!((placed, full), (10, 10));
    // Nothing was written for the refused ones.
    let (status, v) = call(&r.apps[0], Method::GET, "/v1/vms?limit=100", &[], None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 10, "{v}");
    let (status, v) = call(&r.apps[1], Method::GET, "/v1/tasks?limit=100", &[], None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 10, "{v}");
    let (_, node) = call(&r.apps[0], Method::GET, "/v1/nodes/node-1", &[], None).await;
    let _ = &r.s;
    assert!(node.is_object(), "{node}");
}

#[tokio::test]
async fn create_vm_ten_concurrent_posts_with_one_key_make_one_vm_and_ten_identical_answers() {
    let r = replicas(64, 262_144).await;
    let mut joins = Vec::new();
    for i in 0..10 {
        let app = r.apps[i % 2].clone();
        joins.push(tokio::spawn(async move {
            let body = json!({"name": "web-1", "spec": spec()});
            call(
                &app,
                Method::POST,
                "/v1/vms",
                &[("idempotency-key", "create-web-1".to_owned())],
                Some(&body),
            )
            .await
        }));
    }
    let mut answers = Vec::new();
    for j in joins {
        let (status, v) = j.await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
        answers.push(v);
    }
    for a in &answers[1..] {
        assert_eq!(
            a, &answers[0],
            "every duplicate gets the first request's answer"
        );
    }
    assert_eq!(answers[0]["task"]["kind"], "vm.create");
    let (_, vms) = call(&r.apps[0], Method::GET, "/v1/vms", &[], None).await;
    assert_eq!(vms["items"].as_array().unwrap().len(), 1, "{vms}");
    let (_, tasks) = call(&r.apps[1], Method::GET, "/v1/tasks", &[], None).await;
    assert_eq!(tasks["items"].as_array().unwrap().len(), 1, "{tasks}");

    // The same key on another request is still 409.
    let (status, v) = call(
        &r.apps[1],
        Method::POST,
        "/v1/vms",
        &[("idempotency-key", "create-web-1".to_owned())],
        Some(&json!({"name": "web-2", "spec": spec()})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
}

#[tokio::test]
async fn op_concurrent_posts_with_one_key_make_one_task() {
    let r = replicas(64, 262_144).await;
    let (status, v) = call(
        &r.apps[0],
        Method::POST,
        "/v1/vms",
        &[],
        Some(&json!({"name": "web-1", "spec": spec()})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    agent_finishes(&r.s, &v["task"]).await;
    let mut joins = Vec::new();
    for i in 0..6 {
        let app = r.apps[i % 2].clone();
        joins.push(tokio::spawn(async move {
            call(
                &app,
                Method::POST,
                "/v1/vms/web-1/stop",
                &[("idempotency-key", "stop-1".to_owned())],
                None,
            )
            .await
        }));
    }
    let mut ids = Vec::new();
    for j in joins {
        let (status, v) = j.await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
        assert_eq!(v["task"]["kind"], "vm.stop", "{v}");
        ids.push(v["task"]["id"].clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one stop task: {ids:?}");
}

/// Per node: (name, allocated vms/vcpus/memory as counted, the same summed over the live,
/// placed, not-failed VM rows), read by ONE statement, so on both databases it is one
/// snapshot: the counters must equal the sums in every committed state.
async fn node_allocations(daemon: &Daemon) -> Vec<(String, [i64; 3], [i64; 3])> {
    let live = "FROM vms v WHERE v.node = n.name AND v.deleted_at IS NULL AND v.phase <> 'failed'";
    let sql = format!(
        "SELECT n.name, n.allocated_vms, n.allocated_vcpus, n.allocated_memory_mb, \
         (SELECT COUNT(*) {live}), \
         (SELECT CAST(COALESCE(SUM(v.vcpus), 0) AS BIGINT) {live}), \
         (SELECT CAST(COALESCE(SUM(v.memory_mb), 0) AS BIGINT) {live}) \
         FROM nodes n ORDER BY n.name"
    );
    let rows: Vec<(String, i64, i64, i64, i64, i64, i64)> = sqlx::query_as(&sql)
        .fetch_all(daemon.store.pool())
        .await
        .unwrap();
    rows.into_iter()
        .map(|(n, a, b, c, x, y, z)| (n, [a, b, c], [x, y, z]))
        .collect()
}

// Several worker threads: creates, failures and deletes really overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_allocations_always_equal_the_sum_over_live_placed_vms() {
    // Room for a dozen or so of the VMs below on each of two nodes, so some creates are
    // refused for capacity too.
    let r = replicas(4, 3 * 1024).await;
    register(&r.s, "node-2", 4, 3 * 1024).await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checker = {
        let daemon = Daemon::open(&r.s.database_url).await.unwrap();
        let done = done.clone();
        tokio::spawn(async move {
            let mut checks = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                for (node, counted, summed) in node_allocations(&daemon).await {
                    assert_eq!(
                        counted, summed,
                        "{node}: counters vs live VMs after {checks} checks"
                    );
                }
                checks += 1;
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            checks
        })
    };

    let mut workers = Vec::new();
    for w in 0..4usize {
        let app = r.apps[w % 2].clone();
        let daemon = Daemon::open(&r.s.database_url).await.unwrap();
        workers.push(tokio::spawn(async move {
            let (mut placed, mut refused) = (0, 0);
            for i in 0..10usize {
                let name = format!("vm-{w}-{i}");
                let size = json!({"image_url": "http://127.0.0.1:9/img.qcow2", "arch": "amd64",
                    "vcpus": 1 + (i % 3), "memory_mb": 128 * (1 + (i % 4) as u64)});
                let (status, v) = call(
                    &app,
                    Method::POST,
                    "/v1/vms",
                    &[],
                    Some(&json!({"name": name, "spec": size})),
                )
                .await;
                if status == StatusCode::CONFLICT {
                    assert_eq!(v["error"]["code"], "insufficient_capacity", "{v}");
                    refused += 1;
                    continue;
                }
                assert_eq!(status, StatusCode::ACCEPTED, "{v}");
                placed += 1;
                let task = &v["task"];
                // Some creates fail (the VM then holds nothing), the rest run.
                if i % 4 == 3 {
                    agent_reports(&daemon, task, TaskState::Failed, VmPower::Absent).await;
                } else {
                    agent_reports(&daemon, task, TaskState::Succeeded, VmPower::Running).await;
                }
                // Every other VM is deleted again, by the agent's report of the delete task.
                if i % 2 == 0 {
                    let (status, v) =
                        call(&app, Method::DELETE, &format!("/v1/vms/{name}"), &[], None).await;
                    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
                    agent_reports(&daemon, &v["task"], TaskState::Succeeded, VmPower::Absent).await;
                }
            }
            (placed, refused)
        }));
    }
    let mut placed = 0;
    for j in workers {
        placed += j.await.unwrap().0;
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let checks = checker.await.unwrap();
    assert!(placed > 10, "the run placed VMs ({placed})");
    assert!(
        checks > 5,
        "the checker ran while the writers did ({checks} checks)"
    );

    // At rest: the counters hold VMs, and `GET /v1/nodes` shows exactly them.
    let at_rest = node_allocations(&r.s.daemon).await;
    assert!(at_rest.iter().any(|(_, c, _)| c[0] > 0), "{at_rest:?}");
    for (node, counted, summed) in at_rest {
        assert_eq!(counted, summed, "{node}");
        let (_, n) = call(
            &r.apps[1],
            Method::GET,
            &format!("/v1/nodes/{node}"),
            &[],
            None,
        )
        .await;
        let shown = [
            n["allocated_vcpus"].as_i64().unwrap_or(-1),
            n["allocated_memory_mb"].as_i64().unwrap_or(-1),
        ];
        assert_eq!(shown, [counted[1], counted[2]], "{node}: {n}");
    }
}
