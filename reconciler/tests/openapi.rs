//! `GET /v1/openapi.json`: the document describes exactly the router's routes (methods from
//! the router's own 405 `Allow` answers), is served to any role, and real answers of the
//! running app validate against the schemas it gives for them (jsonschema). The real app
//! on a temp SQLite file (or PostgreSQL with `OTHERIXD_TEST_POSTGRES_URL`).

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

mod common;
use common::{call_json, register_node};

fn sample_path(pattern: &str) -> String {
    pattern
        .replace("{name}", "x")
        .replace("{id}", "00000000-0000-4000-8000-000000000000")
}

#[tokio::test]
async fn openapi_document_lists_exactly_the_routers_routes_and_methods() {
    let s = common::open(tempfile::tempdir().unwrap()).await;
    let (status, doc) = call_json(&s.app, Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc, otherix_api::openapi::document());
    assert_eq!(doc["openapi"], "3.1.0");

    let mut routed = BTreeSet::new();
    for pattern in otherixd::api::route_paths() {
        let path = sample_path(pattern);
        let req = axum::http::Request::builder()
            .method(Method::PATCH)
            .uri(&path)
            .header("authorization", format!("Bearer {}", s.admin_token))
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = tower::ServiceExt::oneshot(s.raw_app.clone(), req)
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "PATCH {path}"
        );
        let allow = resp.headers()["allow"].to_str().unwrap().to_owned();
        for m in allow.split(',').map(str::trim) {
            if m != "HEAD" {
                routed.insert((m.to_lowercase(), pattern.to_owned()));
            }
        }
    }
    let mut described = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            described.insert((method.clone(), path.clone()));
        }
    }
    assert_eq!(described, routed, "document vs router");
}

/// Validates `value` against the success schema the document gives `method path`.
fn check(doc: &Value, method: &str, path: &str, status: u16, value: &Value) {
    let op = &doc["paths"][path][method];
    let schema = &op["responses"][status.to_string()]["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "no {status} schema for {method} {path}");
    let mut root = schema.clone();
    root["components"] = doc["components"].clone();
    let validator = jsonschema::validator_for(&root).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{method} {path}: {errors:?}\n{value}");
}

#[tokio::test]
async fn real_answers_validate_against_the_documents_schemas() {
    let s = common::open(tempfile::tempdir().unwrap()).await;
    register_node(&s.daemon, "node-1", 64, 262_144).await;
    let doc = otherix_api::openapi::document();
    let app = &s.app;
    let body = json!({"name": "web-1", "spec": {"image_url": "http://127.0.0.1:9/i.qcow2",
        "arch": "amd64", "vcpus": 2}});
    let (status, v) = call_json(app, Method::POST, "/v1/vms", Some(&body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    check(&doc, "post", "/v1/vms", 202, &v);
    let task_id = v["task"]["id"].as_str().unwrap().to_owned();
    let (_, v) = call_json(
        app,
        Method::POST,
        "/v1/apply",
        Some(&json!({"vms": [{"name": "web-2", "spec": body["spec"]}]})),
    )
    .await;
    check(&doc, "post", "/v1/apply", 200, &v);

    let gets = [
        ("/v1/vms", "/v1/vms"),
        ("/v1/vms/web-1", "/v1/vms/{name}"),
        ("/v1/tasks", "/v1/tasks"),
        (&*format!("/v1/tasks/{task_id}"), "/v1/tasks/{id}"),
        ("/v1/nodes", "/v1/nodes"),
        ("/v1/nodes/node-1", "/v1/nodes/{name}"),
        ("/v1/pools", "/v1/pools"),
        ("/v1/pools/default", "/v1/pools/{name}"),
        ("/v1/firmware", "/v1/firmware"),
        ("/v1/networks", "/v1/networks"),
        ("/v1/cluster", "/v1/cluster"),
        ("/v1/projects", "/v1/projects"),
        ("/v1/projects/default", "/v1/projects/{name}"),
        ("/v1/tokens", "/v1/tokens"),
        ("/v1/whoami", "/v1/whoami"),
    ];
    for (uri, pattern) in gets {
        let (status, v) = call_json(app, Method::GET, uri, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {v}");
        check(&doc, "get", pattern, 200, &v);
    }
    // The schemas are strict enough to catch a wrong answer.
    let (_, mut vm) = call_json(app, Method::GET, "/v1/vms/web-1", None).await;
    vm["status"]["phase"] = json!("bogus");
    let schema = &doc["paths"]["/v1/vms/{name}"]["get"]["responses"]["200"]["content"]
        ["application/json"]["schema"];
    let mut root = schema.clone();
    root["components"] = doc["components"].clone();
    assert!(
        !jsonschema::validator_for(&root).unwrap().is_valid(&vm),
        "bogus phase accepted"
    );

    // An error answer has the documented envelope.
    let (status, v) = call_json(app, Method::GET, "/v1/vms/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let schema = &doc["paths"]["/v1/vms/{name}"]["get"]["responses"]["default"]["content"]
        ["application/json"]["schema"];
    let mut root = schema.clone();
    root["components"] = doc["components"].clone();
    assert!(
        jsonschema::validator_for(&root).unwrap().is_valid(&v),
        "{v}"
    );
}
