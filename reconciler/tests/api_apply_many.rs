//! `POST /v1/apply` (many VMs of one project in one request; what `otherix create -f DIR`
//! sends): answers in the request's order, the new VMs created in one transaction (all or
//! none), every item validated before anything is written. The real app on a temp SQLite
//! file (or PostgreSQL with `OTHERIXD_TEST_POSTGRES_URL`) through `Router::oneshot`.

use axum::http::{Method, StatusCode};
use axum::Router;
use serde_json::{json, Value};

mod common;
use common::{call_json, register_node};

fn vm(name: &str, vcpus: u32) -> Value {
    json!({"name": name, "spec": {"image_url": "http://127.0.0.1:9/img.qcow2", "arch": "amd64",
        "vcpus": vcpus, "memory_mb": 256}})
}

async fn apply(app: &Router, vms: Vec<Value>) -> (StatusCode, Value) {
    call_json(app, Method::POST, "/v1/apply", Some(&json!({ "vms": vms }))).await
}

fn outcomes(v: &Value) -> Vec<(String, String)> {
    v["vms"]
        .as_array()
        .unwrap_or_else(|| panic!("no vms in {v}"))
        .iter()
        .map(|a| {
            let name = a["object"]["name"].as_str().unwrap().to_owned();
            (name, a["outcome"].as_str().unwrap().to_owned())
        })
        .collect()
}

async fn vm_names(app: &Router) -> Vec<String> {
    let (status, v) = call_json(app, Method::GET, "/v1/vms?limit=1000", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let mut names: Vec<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| vm["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, o)| (n.to_string(), o.to_string()))
        .collect()
}

#[tokio::test]
async fn apply_many_creates_in_order_then_reapply_is_unchanged_configured_or_created() {
    let s = common::open(tempfile::tempdir().unwrap()).await;
    register_node(&s.daemon, "node-1", 64, 262_144).await;
    let app = &s.app;
    let first: Vec<Value> = ["c", "a", "b"].iter().map(|n| vm(n, 1)).collect();
    let (status, v) = apply(app, first.clone()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        outcomes(&v),
        pairs(&[("c", "created"), ("a", "created"), ("b", "created")])
    );
    for answer in v["vms"].as_array().unwrap() {
        assert_eq!(answer["task"]["kind"], "vm.create", "{answer}");
        assert_eq!(answer["task"]["node"], "node-1", "{answer}");
        assert_eq!(answer["object"]["project"], "default", "{answer}");
    }
    assert_eq!(vm_names(app).await, ["a", "b", "c"]);

    // Same three, one of them changed, and a new one: each gets its own outcome.
    let mut second = first;
    second[1] = vm("a", 2);
    second.push(vm("d", 1));
    let (status, v) = apply(app, second).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        outcomes(&v),
        pairs(&[
            ("c", "unchanged"),
            ("a", "configured"),
            ("b", "unchanged"),
            ("d", "created")
        ])
    );
    assert!(v["vms"][0].get("task").is_none(), "{v}");
    assert_eq!(v["vms"][1]["object"]["spec"]["vcpus"], 2, "{v}");
    assert_eq!(v["vms"][1]["object"]["generation"], 2, "{v}");
}

#[tokio::test]
async fn apply_many_invalid_or_duplicate_item_writes_nothing_and_names_the_item() {
    let s = common::open(tempfile::tempdir().unwrap()).await;
    register_node(&s.daemon, "node-1", 64, 262_144).await;
    let app = &s.app;
    let cases = [
        (
            vec![vm("a", 1), vm("b", 1), vm("bad", 0)],
            "vms[2] (bad): spec.vcpus",
        ),
        (
            vec![vm("a", 1), vm("b", 1), vm("a", 1)],
            "vms[2] (a): name: appears twice in this request (also vms[0])",
        ),
        (
            vec![vm("a", 1), vm("Not_A_Name", 1)],
            "vms[1] (Not_A_Name): name",
        ),
    ];
    for (vms, want) in cases {
        let (status, v) = apply(app, vms).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["error"]["code"], "validation_failed", "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with(want), "{want:?} in {msg:?}");
        assert!(vm_names(app).await.is_empty(), "nothing written for {want}");
    }
    let too_many: Vec<Value> = (0..1001).map(|i| vm(&format!("v{i}"), 1)).collect();
    let (status, v) = apply(app, too_many).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(
        v["error"]["message"], "vms: at most 1000 per request (got 1001)",
        "{v}"
    );
}

#[tokio::test]
async fn apply_many_that_does_not_fit_creates_none_of_it() {
    let s = common::open(tempfile::tempdir().unwrap()).await;
    // 2 cores x ratio 4 = 8 schedulable vCPUs.
    register_node(&s.daemon, "node-1", 2, 262_144).await;
    let app = &s.app;
    let (status, v) = apply(app, vec![vm("a", 4), vm("b", 3)]).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // Room for one more vCPU: the first of these three would fit, the batch does not.
    let (status, v) = apply(app, vec![vm("c", 1), vm("d", 1), vm("e", 1)]).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "insufficient_capacity", "{v}");
    assert_eq!(vm_names(app).await, ["a", "b"]);
    let (_, tasks) = call_json(app, Method::GET, "/v1/tasks?limit=100", None).await;
    assert_eq!(tasks["items"].as_array().unwrap().len(), 2, "{tasks}");

    // A project whose quota holds 2 VMs (and a node with room): the quota is checked
    // inside the transaction, after the three inserts, which are then rolled back.
    register_node(&s.daemon, "node-2", 64, 262_144).await;
    let (status, p) = call_json(
        app,
        Method::POST,
        "/v1/projects",
        Some(&json!({"name": "q", "spec": {"max_vms": 2}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    let (status, v) = call_json(
        app,
        Method::POST,
        "/v1/apply?project=q",
        Some(&json!({"vms": [vm("x", 1), vm("y", 1), vm("z", 1)]})),
    )
    .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (StatusCode::CONFLICT, &json!("quota_exceeded")),
        "{v}"
    );
    let (_, listed) = call_json(app, Method::GET, "/v1/vms?project=q", None).await;
    assert_eq!(listed["items"], json!([]), "{listed}");
}
