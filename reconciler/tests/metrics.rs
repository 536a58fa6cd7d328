//! `GET /metrics` through the in-process app (real auth middleware, SQLite or PostgreSQL):
//! the scrape is parsed by the `prometheus-parse` text-format parser, the VM gauges match
//! what `GET /v1/vms` shows, the request histogram has the route just called, and the
//! route needs a token (any role).

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use otherix_api::proto::{Register, VmPower};
use prometheus_parse::{Sample, Scrape, Value as PromValue};
use serde_json::{json, Value};
use tower::ServiceExt;

mod common;
use common::agent_finishes;
use common::{open, with_token};

fn registration(node: &str) -> Register {
    common::registration(node, 64, 262_144)
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.map(|b| b.to_string()).unwrap_or_default()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn json_call(app: &Router, method: Method, uri: &str, body: Option<Value>) -> Value {
    let (status, text) = call(app, method, uri, body).await;
    assert!(status.is_success(), "{status}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

fn gauge(s: &Sample) -> f64 {
    match s.value {
        PromValue::Gauge(v) => v,
        ref other => panic!("{} is not a gauge: {other:?}", s.metric),
    }
}

/// `otherix_vms` as {(phase, node): count}.
fn vm_gauges(scrape: &Scrape) -> BTreeMap<(String, String), f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == "otherix_vms")
        .map(|s| {
            let label = |k: &str| s.labels.get(k).unwrap_or_default().to_owned();
            ((label("phase"), label("node")), gauge(s))
        })
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// How many requests the histogram holds for (route, method, code).
fn requests_seen(scrape: &Scrape, route: &str, method: &str, code: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == "otherix_http_request_duration_seconds")
        .filter(|s| {
            s.labels.get("route") == Some(route)
                && s.labels.get("method") == Some(method)
                && s.labels.get("code") == Some(code)
        })
        .map(|s| match &s.value {
            PromValue::Histogram(buckets) => buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map_or(0.0, |b| b.count),
            other => panic!("not a histogram: {other:?}"),
        })
        .sum()
}

#[tokio::test]
async fn scrape_matches_vm_list_and_times_the_routes_called() {
    let s = open(tempfile::tempdir().unwrap()).await;
    s.daemon
        .gateway
        .register(&registration("node-1"))
        .await
        .unwrap();
    // Replica 0 only: the request histogram is per replica.
    let app = with_token(s.daemon.app(), &s.admin_token);
    let body = |name: &str| json!({"name": name, "spec": {"image_url": "http://127.0.0.1:9/img.qcow2", "arch": "amd64"}});
    let mut created = Vec::new();
    for name in ["m-1", "m-2", "m-3"] {
        created.push(json_call(&app, Method::POST, "/v1/vms", Some(body(name))).await);
    }
    // Two run, one is still being created.
    for v in &created[..2] {
        let task = v["task"]["id"].as_str().unwrap();
        let vm = v["vm"]["id"].as_str().unwrap();
        agent_finishes(&s, task, vm, VmPower::Running).await;
    }

    let list = json_call(&app, Method::GET, "/v1/vms?limit=100", None).await;
    let mut listed: BTreeMap<(String, String), f64> = BTreeMap::new();
    for vm in list["items"].as_array().unwrap() {
        let phase = vm["status"]["phase"].as_str().unwrap().to_owned();
        let node = vm["status"]["node"].as_str().unwrap_or("").to_owned();
        *listed.entry((phase, node)).or_default() += 1.0;
    }
    assert_eq!(listed.values().sum::<f64>(), 3.0, "{list}");
    assert!(listed.len() >= 2, "two phases expected: {listed:?}");

    let (status, text) = call(&app, Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let scrape = parse(&text);
    assert_eq!(vm_gauges(&scrape), listed, "{text}");
    for family in [
        "otherix_vms",
        "otherix_tasks",
        "otherix_nodes",
        "otherix_agent_sessions",
    ] {
        assert!(
            scrape.docs.contains_key(family),
            "no HELP for {family}: {text}"
        );
    }
    let create_tasks: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "otherix_tasks" && s.labels.get("kind") == Some("vm.create"))
        .map(gauge)
        .sum();
    assert_eq!(create_tasks, 3.0, "{text}");
    let ready_nodes = scrape
        .samples
        .iter()
        .find(|s| s.metric == "otherix_nodes" && s.labels.get("status") == Some("ready"))
        .map(gauge);
    assert_eq!(ready_nodes, Some(1.0), "{text}");
    // No election runs in this process and no agent stream is attached.
    let single = |name: &str| scrape.samples.iter().find(|s| s.metric == name).map(gauge);
    assert_eq!(single("otherix_leader"), Some(0.0), "{text}");
    assert_eq!(single("otherix_agent_sessions"), Some(0.0), "{text}");

    // The two creates that reached running were timed (create-to-running).
    let created_count = scrape
        .samples
        .iter()
        .find(|s| s.metric == "otherix_vm_create_to_running_seconds")
        .map(|s| match &s.value {
            PromValue::Histogram(b) => b.iter().find(|b| b.less_than.is_infinite()).unwrap().count,
            other => panic!("not a histogram: {other:?}"),
        });
    assert_eq!(created_count, Some(2.0), "{text}");

    // The routes called above, by template: three creates, one list.
    assert_eq!(
        requests_seen(&scrape, "/v1/vms", "POST", "202"),
        3.0,
        "{text}"
    );
    assert_eq!(
        requests_seen(&scrape, "/v1/vms", "GET", "200"),
        1.0,
        "{text}"
    );
    // A raw URI never becomes a label.
    json_call(&app, Method::GET, "/v1/vms/m-1", None).await;
    let (status, _) = call(&app, Method::GET, "/v1/no-such-route/x", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, text) = call(&app, Method::GET, "/metrics", None).await;
    let scrape = parse(&text);
    // prometheus-parse 0.2 skips sample lines whose label values hold `}` (its label regex
    // is `[^}]+`), so the templated route is checked on the text itself.
    assert!(
        text.lines().any(|l| l
            == r#"otherix_http_request_duration_seconds_count{route="/v1/vms/{name}",method="GET",code="200"} 1"#),
        "{text}"
    );
    assert_eq!(
        requests_seen(&scrape, "unmatched", "GET", "404"),
        1.0,
        "{text}"
    );
    assert_eq!(
        requests_seen(&scrape, "/metrics", "GET", "200"),
        1.0,
        "{text}"
    );
    assert!(
        !text.contains("m-1"),
        "a VM name leaked into a label: {text}"
    );

    // Deleting a VM takes it out of the gauges once it is gone.
    let gone = json_call(&app, Method::DELETE, "/v1/vms/m-2", None).await;
    let task = gone["task"]["id"].as_str().unwrap();
    let vm = created[1]["vm"]["id"].as_str().unwrap();
    agent_finishes(&s, task, vm, VmPower::Stopped).await;
    let list = json_call(&app, Method::GET, "/v1/vms?limit=100", None).await;
    let (_, text) = call(&app, Method::GET, "/metrics", None).await;
    let total: f64 = vm_gauges(&parse(&text)).values().sum();
    assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
    assert_eq!(total, 2.0, "after delete {gone}: {text}");
}

#[tokio::test]
async fn metrics_needs_a_token_and_any_role_may_scrape() {
    let s = open(tempfile::tempdir().unwrap()).await;
    let raw = s.daemon.app();
    let (status, text) = call(&raw, Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    assert!(text.contains("unauthenticated"), "{text}");
    let admin = with_token(raw.clone(), &s.admin_token);
    let token = json_call(
        &admin,
        Method::POST,
        "/v1/tokens",
        Some(json!({"name": "viewer", "project": "default", "role": "viewer"})),
    )
    .await;
    let viewer = with_token(raw.clone(), token["secret"].as_str().unwrap());
    let (status, text) = call(&viewer, Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    // The 401 above was timed too, under the one label for unrouted requests.
    assert_eq!(
        requests_seen(&parse(&text), "unmatched", "GET", "401"),
        1.0,
        "{text}"
    );
    // Other methods: refused for a viewer, 405 for an admin (like other cluster routes).
    let (status, _) = call(&viewer, Method::POST, "/metrics", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(&admin, Method::POST, "/metrics", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn the_leader_reports_its_reconcile_queue_depth_and_run_durations() {
    let mut s = open(tempfile::tempdir().unwrap()).await;
    s.daemon
        .spawn_background(std::time::Duration::from_secs(60));
    s.daemon
        .gateway
        .register(&registration("node-1"))
        .await
        .unwrap();
    let app = with_token(s.daemon.app(), &s.admin_token);
    let histogram_count = |scrape: &Scrape| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == "otherix_reconcile_duration_seconds")
            .map(|s| match &s.value {
                PromValue::Histogram(b) => {
                    b.iter().find(|b| b.less_than.is_infinite()).unwrap().count
                }
                other => panic!("not a histogram: {other:?}"),
            })
    };
    let body = json!({"name": "q-1", "spec": {"image_url": "http://127.0.0.1:9/img.qcow2", "arch": "amd64"}});
    let created = json_call(&app, Method::POST, "/v1/vms", Some(body)).await;
    // The agent's report wakes the leader's queue (a trigger), whose run is timed.
    let (task, vm) = (
        created["task"]["id"].as_str().unwrap(),
        created["vm"]["id"].as_str().unwrap(),
    );
    agent_finishes(&s, task, vm, VmPower::Running).await;
    let mut last = String::new();
    for _ in 0..100 {
        let (status, text) = call(&app, Method::GET, "/metrics", None).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let scrape = parse(&text);
        let leads = scrape
            .samples
            .iter()
            .find(|s| s.metric == "otherix_leader")
            .map(gauge);
        if leads == Some(1.0) && histogram_count(&scrape).unwrap_or(0.0) >= 1.0 {
            assert!(
                scrape.docs.contains_key("otherix_reconcile_queue_depth"),
                "{text}"
            );
            let depth = scrape
                .samples
                .iter()
                .find(|s| s.metric == "otherix_reconcile_queue_depth")
                .map(gauge)
                .expect("a depth sample");
            assert!((0.0..=1.0).contains(&depth), "{text}");
            return;
        }
        last = text;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no timed reconcile run on the leader: {last}");
}

#[tokio::test]
async fn agent_vm_counters_are_exported_for_vms_on_the_reporting_node_only() {
    use otherix_api::proto::{agent_message, AgentMessage, NodeStats, VmStats};
    let s = open(tempfile::tempdir().unwrap()).await;
    for node in ["node-1", "node-2"] {
        s.daemon
            .gateway
            .register(&registration(node))
            .await
            .unwrap();
    }
    let app = with_token(s.daemon.app(), &s.admin_token);
    let create = |name: &str, node: &str| json!({"name": name, "spec": {"image_url": "http://127.0.0.1:9/img.qcow2", "arch": "amd64", "node": node}});
    let one = json_call(&app, Method::POST, "/v1/vms", Some(create("s-1", "node-1"))).await;
    let two = json_call(&app, Method::POST, "/v1/vms", Some(create("s-2", "node-2"))).await;
    let id = |v: &Value| v["vm"]["id"].as_str().unwrap().to_owned();
    let stats = |vm: String, cpu: f64| VmStats {
        vm_id: vm,
        cpu_seconds: cpu,
        memory_bytes: 64 << 20,
        disk_read_bytes: Some(4096),
        disk_write_bytes: Some(512),
        net_rx_bytes: None,
        net_tx_bytes: None,
    };
    // node-1 reports its own VM and (hostile or confused) node-2's.
    let msg = AgentMessage {
        body: Some(agent_message::Body::NodeStats(NodeStats {
            vms: vec![stats(id(&one), 2.5), stats(id(&two), 99.0)],
        })),
    };
    s.daemon
        .gateway
        .handle_message("node-1", msg)
        .await
        .unwrap();

    let (status, text) = call(&app, Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let scrape = parse(&text);
    let value = |metric: &str, vm: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && s.labels.get("vm") == Some(vm))
            .map(|s| match s.value {
                PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => v,
                ref other => panic!("{metric}: {other:?}"),
            })
    };
    assert_eq!(
        value("otherix_vm_cpu_seconds_total", "s-1"),
        Some(2.5),
        "{text}"
    );
    assert_eq!(
        value("otherix_vm_memory_resident_bytes", "s-1"),
        Some((64 << 20) as f64),
        "{text}"
    );
    assert_eq!(
        value("otherix_vm_disk_read_bytes_total", "s-1"),
        Some(4096.0),
        "{text}"
    );
    assert!(
        text.contains(r#"project="default",node="node-1""#),
        "{text}"
    );
    // Not node-1's VM: dropped. No tap: no network series.
    assert_eq!(value("otherix_vm_cpu_seconds_total", "s-2"), None, "{text}");
    assert!(!text.contains("otherix_vm_network"), "{text}");
}
