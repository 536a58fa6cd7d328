//! Declarative apply API tests (`PUT /v1/vms/{name}`): the real app on a temp SQLite
//! file through `Router::oneshot`; agent results are fed through the gateway's own entry
//! point (`apply_task_update`).

use axum::http::{Method, StatusCode};
use axum::Router;
use otherix_api::proto::{TaskState, VmPower};
use otherixd::daemon::Daemon;
use serde_json::{json, Value};

mod common;
use common::TestServer;

/// A server with one ready node serving the `default` pool (so it is the default pool).
async fn server_with_node() -> TestServer {
    let s = server().await;
    register_node(&s.daemon).await;
    s
}

async fn server() -> TestServer {
    common::open(tempfile::tempdir().unwrap()).await
}

async fn register_node(daemon: &Daemon) {
    common::register_node(daemon, "node-1", 64, 262_144).await;
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    common::call_json(app, method, uri, body).await
}

async fn put(app: &Router, name: &str, body: &Value) -> (StatusCode, Value) {
    call(app, Method::PUT, &format!("/v1/vms/{name}"), Some(body)).await
}

async fn put_ok(app: &Router, name: &str, body: &Value, outcome: &str) -> Value {
    let (status, v) = put(app, name, body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["outcome"], outcome, "{v}");
    v
}

async fn get_vm(app: &Router, name: &str) -> Value {
    let (status, v) = call(app, Method::GET, &format!("/v1/vms/{name}"), None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v
}

async fn task_count(app: &Router, name: &str) -> usize {
    let (status, v) = call(app, Method::GET, &format!("/v1/tasks?vm={name}"), None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v["items"].as_array().unwrap().len()
}

fn spec() -> Value {
    json!({"image_url": "http://127.0.0.1:9/img.qcow2", "arch": "amd64"})
}

/// The `PUT` body that re-applies a live VM as `GET` shows it (what `vm get -o yaml |
/// create -f -` sends).
fn reapply_body(vm: &Value) -> Value {
    let mut body = json!({"spec": vm["spec"]});
    if let Some(a) = vm.get("annotations") {
        body["annotations"] = a.clone();
    }
    body
}

/// Finishes a task the way the agent would.
async fn agent_finishes(s: &TestServer, task: &Value, power: VmPower) {
    let (task_id, vm_id) = (
        task["id"].as_str().unwrap(),
        task["vm_id"].as_str().unwrap(),
    );
    common::report_task(
        &s.daemon,
        "node-1",
        task_id,
        vm_id,
        TaskState::Succeeded,
        power,
    )
    .await;
}

#[tokio::test]
async fn put_vm_new_is_created_with_task_and_same_again_is_unchanged_without_task() {
    let s = server_with_node().await;
    let body = json!({"spec": spec(), "annotations": {"team": "web"}});
    let v = put_ok(&s.app, "web-1", &body, "created").await;
    assert_eq!(v["task"]["kind"], "vm.create");
    assert_eq!(v["task"]["status"], "pending");
    assert_eq!(v["object"]["name"], "web-1");
    assert_eq!(v["object"]["generation"], 1);
    assert_eq!(v["object"]["annotations"], json!({"team": "web"}));
    assert_eq!(v["object"]["status"]["phase"], "creating");

    let again = put_ok(&s.app, "web-1", &body, "unchanged").await;
    assert!(again.get("task").is_none(), "{again}");
    assert_eq!(again["object"]["generation"], 1);
    assert_eq!(again["object"]["updated_at"], v["object"]["updated_at"]);
    assert_eq!(task_count(&s.app, "web-1").await, 1);
}

#[tokio::test]
async fn put_vm_vcpus_change_before_running_is_configured_generation_plus_one() {
    let s = server_with_node().await;
    put_ok(&s.app, "web-1", &json!({"spec": spec()}), "created").await;
    let mut changed = spec();
    changed["vcpus"] = json!(4);
    let v = put_ok(&s.app, "web-1", &json!({"spec": changed}), "configured").await;
    assert!(
        v.get("task").is_none(),
        "the create is still in flight: {v}"
    );
    assert_eq!(v["object"]["generation"], 2);
    assert_eq!(v["object"]["spec"]["vcpus"], 4);
    assert!(
        v["object"]["status"].get("restart_pending").is_none(),
        "{v}"
    );
    assert_eq!(get_vm(&s.app, "web-1").await["spec"]["vcpus"], 4);
    assert_eq!(task_count(&s.app, "web-1").await, 1);
}

#[tokio::test]
async fn put_vm_immutable_change_is_409_listing_old_and_new_values() {
    let s = server_with_node().await;
    put_ok(&s.app, "web-1", &json!({"spec": spec()}), "created").await;
    let mut changed = spec();
    changed["arch"] = json!("arm64");
    let (status, v) = put(&s.app, "web-1", &json!({"spec": changed})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "immutable_field");
    assert_eq!(
        v["error"]["message"],
        "immutable fields changed: spec.arch: amd64 -> arm64"
    );
    changed["pool"] = json!("fast");
    changed["vcpus"] = json!(8);
    let (status, v) = put(&s.app, "web-1", &json!({"spec": changed})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(
        v["error"]["message"],
        "immutable fields changed: spec.arch: amd64 -> arm64; spec.pool: (unset) -> fast"
    );
    // Nothing was written.
    let vm = get_vm(&s.app, "web-1").await;
    assert_eq!(
        (vm["generation"].clone(), vm["spec"]["vcpus"].clone()),
        (json!(1), json!(2))
    );
}

#[tokio::test]
async fn put_vm_bad_bodies_are_validation_failed() {
    let s = server_with_node().await;
    let table = [
        (
            json!({"spec": {"image_url": "http://x/i", "arch": "amd64", "vcpus": 0}}),
            "spec.vcpus",
        ),
        (json!({"spec": spec(), "bogus": 1}), "unknown field `bogus`"),
        (json!({"annotations": {}}), "missing field `spec`"),
    ];
    for (body, fragment) in table {
        let (status, v) = put(&s.app, "web-1", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["error"]["code"], "validation_failed");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(fragment), "{msg:?} lacks {fragment:?}");
    }
    let (status, _) = put(
        &s.app,
        "6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11",
        &json!({"spec": spec()}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn put_vm_annotations_round_trip_and_annotation_change_keeps_generation() {
    let s = server_with_node().await;
    let ann = json!({"otherix.dev/source": "/srv/manifests", "team": "web"});
    put_ok(
        &s.app,
        "web-1",
        &json!({"spec": spec(), "annotations": ann}),
        "created",
    )
    .await;
    let vm = get_vm(&s.app, "web-1").await;
    assert_eq!(vm["annotations"], ann);
    let (_, list) = call(&s.app, Method::GET, "/v1/vms", None).await;
    assert_eq!(list["items"][0]["annotations"], ann);

    let v = put_ok(
        &s.app,
        "web-1",
        &json!({"spec": spec(), "annotations": {"team": "db"}}),
        "configured",
    )
    .await;
    assert_eq!(v["object"]["annotations"], json!({"team": "db"}));
    assert_eq!(v["object"]["generation"], 1, "annotations are not spec");
    // Dropping every annotation is a change too.
    let v = put_ok(&s.app, "web-1", &json!({"spec": spec()}), "configured").await;
    assert!(v["object"].get("annotations").is_none(), "{v}");
    put_ok(&s.app, "web-1", &json!({"spec": spec()}), "unchanged").await;
}

#[tokio::test]
async fn post_every_field_then_get_then_put_back_is_unchanged_without_task() {
    let s = server_with_node().await;
    let (status, net) = call(
        &s.app,
        Method::POST,
        "/v1/networks",
        Some(&json!({"name": "lan", "spec": {"type": "bridge", "bridge": "br0"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{net}");
    let (status, fw) = call(&s.app, Method::GET, "/v1/firmware/ovmf", None).await;
    assert_eq!(status, StatusCode::OK, "{fw}");
    let specs = [
        json!({
            "image_url": "http://127.0.0.1:9/img.qcow2",
            "arch": "amd64",
            "image_sha256": "ab".repeat(32),
            "firmware": "seabios",
            "format": "raw",
            "disk_gib": 20,
            "pool": "default",
            "node": "node-1",
            "vcpus": 4,
            "memory_mb": 1024,
            "user_data": "#cloud-config\npackages: [nginx]\n",
            "network_config": "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n",
            "stop_timeout_secs": 30,
            "desired_phase": "stopped",
            "restart_policy": "always",
            "ports": [{"host": 2222, "guest": 22}, {"host": 5353, "guest": 53, "protocol": "udp"}],
        }),
        json!({
            "image_url": "http://127.0.0.1:9/img.qcow2",
            "arch": "amd64",
            "firmware_id": fw["id"],
            "format": "qcow2",
            "network": "lan",
            "vcpus": 1,
            "memory_mb": 512,
            "no_cloud_init": true,
            "restart_policy": "never",
        }),
    ];
    for (i, spec) in specs.into_iter().enumerate() {
        let name = format!("full-{i}");
        let (status, created) = call(
            &s.app,
            Method::POST,
            "/v1/vms",
            Some(&json!({"name": name, "spec": spec})),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{created}");
        let vm = get_vm(&s.app, &name).await;
        assert_eq!(vm["spec"], spec, "GET shows exactly the spec that was sent");
        let v = put_ok(&s.app, &name, &reapply_body(&vm), "unchanged").await;
        assert!(v.get("task").is_none(), "{v}");
        assert_eq!(v["object"]["generation"], 1);
        assert_eq!(task_count(&s.app, &name).await, 1);
    }
}

#[tokio::test]
async fn put_vm_running_boot_field_change_marks_restart_pending_and_desired_stop_emits_stop() {
    let s = server_with_node().await;
    let created = put_ok(&s.app, "web-1", &json!({"spec": spec()}), "created").await;
    agent_finishes(&s, &created["task"], VmPower::Running).await;
    let vm = get_vm(&s.app, "web-1").await;
    assert_eq!(vm["status"]["phase"], "running");
    put_ok(&s.app, "web-1", &reapply_body(&vm), "unchanged").await;

    // A mutable non-boot field: no restart needed.
    let mut changed = spec();
    changed["stop_timeout_secs"] = json!(10);
    let v = put_ok(&s.app, "web-1", &json!({"spec": changed}), "configured").await;
    assert!(
        v["object"]["status"].get("restart_pending").is_none(),
        "{v}"
    );

    // A boot-time field while running: pending until the next boot.
    changed["memory_mb"] = json!(4096);
    let v = put_ok(&s.app, "web-1", &json!({"spec": changed}), "configured").await;
    assert!(v.get("task").is_none(), "{v}");
    assert_eq!(v["object"]["status"]["restart_pending"], true, "{v}");
    assert_eq!(v["object"]["generation"], 3);
    assert_eq!(v["object"]["status"]["observed_generation"], 1);

    // desired_phase stopped: the reconciler emits vm.stop with the spec's timeout.
    changed["desired_phase"] = json!("stopped");
    let v = put_ok(&s.app, "web-1", &json!({"spec": changed}), "configured").await;
    assert_eq!(v["task"]["kind"], "vm.stop", "{v}");
    assert_eq!(v["object"]["status"]["phase"], "stopping");
    agent_finishes(&s, &v["task"], VmPower::Stopped).await;
    let vm = get_vm(&s.app, "web-1").await;
    assert_eq!(vm["status"]["phase"], "stopped");
    assert!(vm["status"].get("restart_pending").is_none(), "{vm}");

    // desired_phase running again: vm.start, and the boot clears restart_pending.
    changed["desired_phase"] = json!("running");
    let v = put_ok(&s.app, "web-1", &json!({"spec": changed}), "configured").await;
    assert_eq!(v["task"]["kind"], "vm.start", "{v}");
    agent_finishes(&s, &v["task"], VmPower::Running).await;
    let vm = get_vm(&s.app, "web-1").await;
    assert_eq!(vm["status"]["phase"], "running");
    assert_eq!(vm["status"]["observed_generation"], vm["generation"]);
    assert!(vm["status"].get("restart_pending").is_none(), "{vm}");
    put_ok(&s.app, "web-1", &reapply_body(&vm), "unchanged").await;
}

#[tokio::test]
async fn put_vm_being_deleted_is_conflict() {
    let s = server_with_node().await;
    let created = put_ok(&s.app, "web-1", &json!({"spec": spec()}), "created").await;
    agent_finishes(&s, &created["task"], VmPower::Running).await;
    let (status, v) = call(&s.app, Method::DELETE, "/v1/vms/web-1", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let (status, v) = put(&s.app, "web-1", &json!({"spec": spec()})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is deleting"),
        "{v}"
    );
}

fn vm_manifest(name: &str, vcpus: u32) -> String {
    format!(
        "apiVersion: otherix.dev/v1\nkind: VM\nmetadata:\n  name: {name}\n  annotations:\n    team: web\nspec:\n  image_url: http://127.0.0.1:9/img.qcow2\n  arch: amd64\n  vcpus: {vcpus}\n"
    )
}

/// Polls `GET /v1/vms/{name}` until `ok` holds (20 s at most).
async fn eventually(
    app: &Router,
    name: &str,
    what: &str,
    ok: impl Fn(StatusCode, &Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, v) = call(app, Method::GET, &format!("/v1/vms/{name}"), None).await;
        if ok(status, &v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never {what}: {status} {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_dir_applies_at_start_reapplies_on_change_and_prunes_removed() {
    let s = server_with_node().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::write(dir.join("web.yaml"), vm_manifest("web", 1)).unwrap();
    // A VM the directory does not own is never pruned.
    put_ok(&s.app, "manual", &json!({"spec": spec()}), "created").await;

    let watcher =
        otherixd::manifests_dir::ManifestsWatcher::spawn(dir.clone(), s.daemon.state.clone())
            .unwrap();
    let vm = eventually(&s.app, "web", "created", |st, _| st == StatusCode::OK).await;
    let source = otherix_manifests::source_id(&dir).unwrap();
    assert_eq!(
        vm["annotations"],
        json!({"otherix.dev/source": source, "team": "web"})
    );
    assert_eq!(
        (vm["spec"]["vcpus"].clone(), vm["generation"].clone()),
        (json!(1), json!(1))
    );

    std::fs::write(dir.join("web.yaml"), vm_manifest("web", 2)).unwrap();
    let vm = eventually(&s.app, "web", "configured", |_, v| v["spec"]["vcpus"] == 2).await;
    assert_eq!(vm["generation"], 2);
    assert_eq!(
        task_count(&s.app, "web").await,
        1,
        "a vcpus change emits no task"
    );

    // Deleting needs a settled VM: the agent finishes the create first.
    let create = json!({"id": vm["status"]["current_task"], "vm_id": vm["id"]});
    agent_finishes(&s, &create, VmPower::Running).await;
    std::fs::remove_file(dir.join("web.yaml")).unwrap();
    eventually(&s.app, "web", "pruned", |_, v| {
        v["status"]["phase"] == "deleting"
    })
    .await;
    assert_eq!(
        get_vm(&s.app, "manual").await["status"]["phase"],
        "creating"
    );

    tokio::task::spawn_blocking(move || watcher.stop())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_dir_apply_that_fails_before_any_node_attached_is_retried() {
    let s = server().await;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("web.yaml"), vm_manifest("web", 1)).unwrap();
    let watcher = otherixd::manifests_dir::ManifestsWatcher::spawn(
        tmp.path().to_path_buf(),
        s.daemon.state.clone(),
    )
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (status, _) = call(&s.app, Method::GET, "/v1/vms/web", None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no node yet: the create cannot be placed"
    );
    register_node(&s.daemon).await;
    eventually(&s.app, "web", "created once a node attached", |st, _| {
        st == StatusCode::OK
    })
    .await;
    tokio::task::spawn_blocking(move || watcher.stop())
        .await
        .unwrap();
}

#[tokio::test]
async fn put_project_then_vm_in_it_and_get_both_back() {
    let s = server_with_node().await;
    let project = json!({"spec": {"max_vms": 2, "max_vcpus": 4}, "annotations": {"team": "a"}});
    let (status, v) = call(&s.app, Method::PUT, "/v1/projects/team-a", Some(&project)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["outcome"], "created", "{v}");
    assert_eq!(v["object"]["spec"], json!({"max_vms": 2, "max_vcpus": 4}));
    let (_, v) = call(&s.app, Method::PUT, "/v1/projects/team-a", Some(&project)).await;
    assert_eq!(v["outcome"], "unchanged", "{v}");

    // The VM goes to the project its query names (what a document's metadata.project
    // becomes), not the token's.
    let body = json!({"spec": spec(), "annotations": {"otherix.dev/source": "/srv/m"}});
    let (status, v) = call(
        &s.app,
        Method::PUT,
        "/v1/vms/web?project=team-a",
        Some(&body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["outcome"], "created", "{v}");
    assert_eq!(v["task"]["project"], "team-a", "{v}");
    let (status, vm) = call(&s.app, Method::GET, "/v1/vms/web?project=team-a", None).await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    assert_eq!(vm["project"], "team-a");
    assert_eq!(vm["annotations"], body["annotations"]);
    let (status, _) = call(&s.app, Method::GET, "/v1/vms/web", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not in the token's project");

    // Re-applying what GET shows is unchanged; the project counts the VM.
    let (_, v) = call(
        &s.app,
        Method::PUT,
        "/v1/vms/web?project=team-a",
        Some(&reapply_body(&vm)),
    )
    .await;
    assert_eq!(v["outcome"], "unchanged", "{v}");
    let (status, p) = call(&s.app, Method::GET, "/v1/projects/team-a", None).await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["annotations"], json!({"team": "a"}));
    assert_eq!(p["usage"]["vms"], 1, "{p}");

    // The same manifest text the CLI would send parses to these bodies.
    let text = "apiVersion: otherix.dev/v1\nkind: Project\nmetadata: {name: team-a, annotations: {team: a}}\nspec: {max_vms: 2, max_vcpus: 4}\n";
    let parsed = otherix_api::manifest::parse_manifests("p.yaml", text).unwrap();
    let otherix_api::Object::Project(m) = &parsed[0].object else {
        panic!("not a project")
    };
    assert_eq!(serde_json::to_value(m.spec).unwrap(), project["spec"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_dir_applies_project_and_vms_in_named_projects_and_prunes_there() {
    let s = server_with_node().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let project =
        "apiVersion: otherix.dev/v1\nkind: Project\nmetadata: {name: team-a}\nspec: {max_vms: 3}\n";
    let in_team =
        vm_manifest("web", 1).replace("  name: web\n", "  name: web\n  project: team-a\n");
    // The project's document comes after its VM's: projects are applied first anyway.
    std::fs::write(dir.join("a-vm.yaml"), &in_team).unwrap();
    std::fs::write(dir.join("b-project.yaml"), project).unwrap();
    std::fs::write(dir.join("c-web.yaml"), vm_manifest("web", 1)).unwrap();

    let watcher =
        otherixd::manifests_dir::ManifestsWatcher::spawn(dir.clone(), s.daemon.state.clone())
            .unwrap();
    let source = otherix_manifests::source_id(&dir).unwrap();
    let team_vm = eventually(
        &s.app,
        "web?project=team-a",
        "created in team-a",
        |st, _| st == StatusCode::OK,
    )
    .await;
    assert_eq!(team_vm["project"], "team-a");
    assert_eq!(
        team_vm["annotations"]["otherix.dev/source"],
        source.as_str()
    );
    let default_vm = eventually(&s.app, "web", "created in default", |st, _| {
        st == StatusCode::OK
    })
    .await;
    assert_eq!(default_vm["project"], "default");
    assert_ne!(default_vm["id"], team_vm["id"]);
    let (_, p) = call(&s.app, Method::GET, "/v1/projects/team-a", None).await;
    assert_eq!(p["spec"], json!({"max_vms": 3}), "{p}");
    assert_eq!(
        p["annotations"]["otherix.dev/source"],
        source.as_str(),
        "{p}"
    );

    // Removing team-a's VM document prunes that VM only, not default's web.
    let create = json!({"id": team_vm["status"]["current_task"], "vm_id": team_vm["id"]});
    agent_finishes(&s, &create, VmPower::Running).await;
    std::fs::remove_file(dir.join("a-vm.yaml")).unwrap();
    eventually(&s.app, "web?project=team-a", "pruned", |_, v| {
        v["status"]["phase"] == "deleting"
    })
    .await;
    assert_eq!(get_vm(&s.app, "web").await["status"]["phase"], "creating");

    tokio::task::spawn_blocking(move || watcher.stop())
        .await
        .unwrap();
}

#[tokio::test]
async fn labels_are_stored_selected_on_with_paging_and_refused_where_they_do_not_belong() {
    let s = server_with_node().await;
    let labelled = |labels: Value| json!({"spec": spec(), "labels": labels});
    // Created by PUT, by POST /v1/vms and by POST /v1/apply.
    put_ok(
        &s.app,
        "web-1",
        &labelled(json!({"app": "web", "tier": "front"})),
        "created",
    )
    .await;
    let (status, v) = call(
        &s.app,
        Method::POST,
        "/v1/vms",
        Some(&json!({"name": "web-2", "spec": spec(), "labels": {"app": "web"}})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["vm"]["labels"], json!({"app": "web"}));
    let (status, v) = call(
        &s.app,
        Method::POST,
        "/v1/apply",
        Some(&json!({"vms": [
            {"name": "db-1", "spec": spec(), "labels": {"app": "db", "tier": "back"}},
            {"name": "plain", "spec": spec()},
        ]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        get_vm(&s.app, "db-1").await["labels"],
        json!({"app": "db", "tier": "back"})
    );
    assert!(get_vm(&s.app, "plain").await.get("labels").is_none());

    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|vm| vm["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let list = |q: &'static str| {
        let app = s.app.clone();
        async move {
            let (status, v) = call(&app, Method::GET, &format!("/v1/vms?{q}"), None).await;
            assert_eq!(status, StatusCode::OK, "{q}: {v}");
            v
        }
    };
    assert_eq!(names(&list("label=app=web").await), ["web-1", "web-2"]);
    assert_eq!(names(&list("label=app=web,tier=front").await), ["web-1"]);
    assert_eq!(names(&list("label=app=we").await), Vec::<String>::new());
    assert_eq!(names(&list("label=tier=back").await), ["db-1"]);
    // Paged: the filter holds across pages.
    let first = list("label=app=web&limit=1").await;
    assert_eq!(names(&first), ["web-1"]);
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let (_, second) = call(
        &s.app,
        Method::GET,
        &format!("/v1/vms?label=app=web&limit=1&cursor={cursor}"),
        None,
    )
    .await;
    assert_eq!(names(&second), ["web-2"]);
    assert!(second.get("next_cursor").is_none(), "{second}");

    // Changing only labels is a change; the same labels again are not.
    put_ok(
        &s.app,
        "web-1",
        &labelled(json!({"app": "web"})),
        "configured",
    )
    .await;
    put_ok(
        &s.app,
        "web-1",
        &labelled(json!({"app": "web"})),
        "unchanged",
    )
    .await;
    assert_eq!(names(&list("label=tier=front").await), Vec::<String>::new());

    // Bad labels and selectors name the field and the rule; nothing is written.
    for (method, uri, body, field) in [
        (
            Method::PUT,
            "/v1/vms/web-3",
            Some(labelled(json!({"app": "a b"}))),
            "labels: value",
        ),
        (
            Method::PUT,
            "/v1/vms/web-3",
            Some(labelled(json!({"-x": "a"}))),
            "labels: key \"-x\"",
        ),
        (
            Method::POST,
            "/v1/vms",
            Some(json!({"name": "web-3", "spec": spec(), "labels": {"app": "x/y"}})),
            "labels: value",
        ),
        (
            Method::GET,
            "/v1/vms?label=app",
            None,
            "label: \"app\" is not a label selector",
        ),
        (
            Method::PUT,
            "/v1/pools/default",
            Some(json!({"spec": {}, "labels": {"app": "web"}})),
            "labels: only VMs carry labels",
        ),
    ] {
        let (status, v) = call(&s.app, method.clone(), uri, body.as_ref()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {uri}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{method} {uri}: {message}");
    }
    let (status, _) = call(&s.app, Method::GET, "/v1/vms/web-3", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
