//! Authentication, authorization and project isolation of the HTTP API, over real HTTPS
//! (the server's own PKI and TLS listener) with real tokens. The route list is the router's own (`api::route_paths`, the
//! methods found by asking the router), so a route added later is covered without editing
//! this file: without a token every route is 401, a viewer on any mutating route is 403, a
//! member of another project gets 404 for every project-scoped route.

use reqwest::Method;
use serde_json::{json, Value};

mod common;
use common::{open, TestServer};

const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::PUT, Method::DELETE];

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{uri}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn ok(&self, method: Method, uri: &str, token: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method.clone(), uri, Some(token), body).await;
        assert!((200..300).contains(&status), "{method} {uri}: {status} {v}");
        v
    }

    async fn token(&self, admin: &str, name: &str, project: &str, role: &str) -> String {
        let v = self
            .ok(
                Method::POST,
                "/v1/tokens",
                admin,
                Some(json!({"name": name, "project": project, "role": role})),
            )
            .await;
        v["secret"].as_str().unwrap().to_owned()
    }
}

/// Serves the app as otherixd does: HTTPS from the cluster PKI (created in the server's
/// data dir), with a client that trusts only that CA.
async fn serve(s: &TestServer) -> Api {
    let (pki, _) = otherixd::pki::load(
        &s.daemon.store,
        &s.dir.path().join("tls"),
        &otherixd::pki::PkiOptions::default(),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming =
        otherixd::tls_listener::TlsIncoming::spawn(listener, pki.https_config().unwrap()).unwrap();
    let app = s.raw_app.clone();
    tokio::spawn(async move { axum::serve(incoming, app).await.unwrap() });
    let ca = reqwest::Certificate::from_pem(pki.ca_pem().as_bytes()).unwrap();
    Api {
        base: format!("https://{addr}"),
        http: reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .build()
            .unwrap(),
    }
}

async fn server() -> (TestServer, Api) {
    let s = open(tempfile::tempdir().unwrap()).await;
    s.daemon
        .gateway
        .register(&common::registration("node-1", 64, 262_144))
        .await
        .unwrap();
    let api = serve(&s).await;
    (s, api)
}

fn vm_body(name: &str, vcpus: u32) -> Value {
    json!({"name": name, "spec": {"image_url": "http://127.0.0.1:9/i.qcow2", "arch": "amd64",
        "vcpus": vcpus, "memory_mb": 256}})
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no error envelope>")
}

/// The concrete path of a route pattern, naming objects of project `a`.
fn sample_path(pattern: &str, task_id: &str) -> String {
    let name = if pattern.starts_with("/v1/vms/") {
        "only-a"
    } else if pattern.starts_with("/v1/pools/") {
        "default"
    } else if pattern.starts_with("/v1/nodes/") {
        "node-1"
    } else if pattern.starts_with("/v1/firmware/") {
        "seabios"
    } else if pattern.starts_with("/v1/tokens/") {
        "viewer-a"
    } else if pattern.starts_with("/v1/projects/") {
        "a"
    } else {
        "some-name"
    };
    pattern.replace("{name}", name).replace("{id}", task_id)
}

fn is_project_scoped(pattern: &str) -> bool {
    pattern.starts_with("/v1/vms")
        || pattern.starts_with("/v1/tasks")
        || pattern == "/v1/apply"
        || pattern == "/v1/events"
}

fn body_for(method: &Method) -> Option<Value> {
    matches!(*method, Method::POST | Method::PUT).then(|| json!({}))
}

#[tokio::test]
async fn every_route_needs_a_token_viewers_cannot_write_other_projects_are_404() {
    let (s, api) = server().await;
    let admin = s.admin_token.clone();
    for p in ["a", "b"] {
        api.ok(
            Method::POST,
            "/v1/projects",
            &admin,
            Some(json!({"name": p, "spec": {}})),
        )
        .await;
    }
    let viewer_a = api.token(&admin, "viewer-a", "a", "viewer").await;
    let member_b = api.token(&admin, "member-b", "b", "member").await;
    let created = api
        .ok(
            Method::POST,
            "/v1/vms?project=a",
            &admin,
            Some(vm_body("only-a", 1)),
        )
        .await;
    let task_a = created["task"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["vm"]["project"], "a");
    assert_eq!(created["task"]["project"], "a");
    assert_eq!(created["task"]["requested_by"], "admin");

    // The routes and their methods, from the router itself: the paths it was built with,
    // and for each the methods its 405 answer to an unused method (PATCH) allows.
    let mut routes = Vec::new();
    for pattern in otherixd::api::route_paths() {
        let path = sample_path(pattern, &task_a);
        let resp = api
            .http
            .patch(format!("{}{path}", api.base))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 405, "PATCH {path}");
        let allow = resp.headers()["allow"].to_str().unwrap().to_owned();
        for method in METHODS {
            if allow.split(',').any(|m| m.trim() == method.as_str()) {
                routes.push((method, pattern, path.clone()));
            }
        }
    }
    assert!(routes.len() >= 30, "only {} routes found", routes.len());

    for (method, _, path) in &routes {
        if *method == Method::GET {
            continue;
        }
        let (status, v) = api
            .call(method.clone(), path, Some(&viewer_a), body_for(method))
            .await;
        assert_eq!(
            (status, error_code(&v)),
            (403, "forbidden"),
            "viewer {method} {path}: {v}"
        );
    }

    for (method, pattern, path) in &routes {
        if *pattern == "/healthz" {
            continue;
        }
        let (status, v) = api.call(method.clone(), path, None, body_for(method)).await;
        assert_eq!(
            (status, error_code(&v)),
            (401, "unauthenticated"),
            "{method} {path}: {v}"
        );
        let (status, v) = api
            .call(
                method.clone(),
                path,
                Some("otx_000000000000000000000000000000000000000000000000"),
                body_for(method),
            )
            .await;
        assert_eq!(status, 401, "unknown token {method} {path}: {v}");
    }

    for (method, pattern, path) in &routes {
        if !is_project_scoped(pattern) {
            continue;
        }
        let sep = if path.contains('?') { '&' } else { '?' };
        let asking_for_a = format!("{path}{sep}project=a");
        let (status, v) = api
            .call(
                method.clone(),
                &asking_for_a,
                Some(&member_b),
                body_for(method),
            )
            .await;
        assert_eq!(
            (status, error_code(&v)),
            (404, "not_found"),
            "member-b {method} {asking_for_a}: {v}"
        );
        // Without naming the project, a's objects simply are not there for b.
        let is_upsert = *method == Method::PUT;
        // (The event stream is a list too: it answers 200 and streams b's own events.)
        let is_list_or_create = matches!(
            *pattern,
            "/v1/vms" | "/v1/tasks" | "/v1/apply" | "/v1/events"
        );
        if !is_upsert && !is_list_or_create {
            let (status, v) = api
                .call(method.clone(), path, Some(&member_b), body_for(method))
                .await;
            assert_eq!(status, 404, "member-b {method} {path}: {v}");
        }
    }
    let (_, list) = api
        .call(Method::GET, "/v1/vms", Some(&member_b), None)
        .await;
    assert_eq!(list["items"], json!([]), "b sees none of a's vms");
    let (_, tasks) = api
        .call(Method::GET, "/v1/tasks", Some(&member_b), None)
        .await;
    assert_eq!(tasks["items"], json!([]), "b sees none of a's tasks");
    // Only admins may span projects.
    let (status, _) = api
        .call(
            Method::GET,
            "/v1/vms?all_projects=true",
            Some(&member_b),
            None,
        )
        .await;
    assert_eq!(status, 403);

    // The console: a viewer may only attach read-only (GET routes are readable by
    // viewers, so the walk above does not cover the writer rule). only-a has no node
    // yet: past the role check, a read-only attach is 409, not 403.
    let (status, v) = api
        .call(Method::GET, "/v1/vms/only-a/console", Some(&viewer_a), None)
        .await;
    assert_eq!((status, error_code(&v)), (403, "forbidden"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("read_only=true"),
        "{v}"
    );
    let (status, v) = api
        .call(
            Method::GET,
            "/v1/vms/only-a/console?read_only=true",
            Some(&viewer_a),
            None,
        )
        .await;
    assert_eq!((status, error_code(&v)), (409, "conflict"), "{v}");
    let (status, v) = api
        .call(
            Method::GET,
            "/v1/vms/only-a/console?read_only=true&force=true",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!((status, error_code(&v)), (400, "validation_failed"), "{v}");
}

#[tokio::test]
async fn same_name_in_two_projects_each_member_sees_its_own_admin_sees_both() {
    let (s, api) = server().await;
    let admin = s.admin_token.clone();
    for p in ["a", "b"] {
        api.ok(
            Method::POST,
            "/v1/projects",
            &admin,
            Some(json!({"name": p, "spec": {}})),
        )
        .await;
    }
    let member_a = api.token(&admin, "member-a", "a", "member").await;
    let member_b = api.token(&admin, "member-b", "b", "member").await;
    let web_a = api
        .ok(Method::POST, "/v1/vms", &member_a, Some(vm_body("web", 1)))
        .await;
    let web_b = api
        .ok(Method::POST, "/v1/vms", &member_b, Some(vm_body("web", 2)))
        .await;
    assert_ne!(web_a["vm"]["id"], web_b["vm"]["id"]);
    assert_eq!(web_a["task"]["requested_by"], "member-a");
    assert_eq!(web_b["task"]["requested_by"], "member-b");

    let got_a = api.ok(Method::GET, "/v1/vms/web", &member_a, None).await;
    let got_b = api.ok(Method::GET, "/v1/vms/web", &member_b, None).await;
    assert_eq!(
        (got_a["project"].as_str(), got_a["spec"]["vcpus"].as_u64()),
        (Some("a"), Some(1))
    );
    assert_eq!(
        (got_b["project"].as_str(), got_b["spec"]["vcpus"].as_u64()),
        (Some("b"), Some(2))
    );
    for (token, project) in [(&member_a, "a"), (&member_b, "b")] {
        let list = api.ok(Method::GET, "/v1/vms", token, None).await;
        let projects: Vec<&str> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["project"].as_str().unwrap())
            .collect();
        assert_eq!(projects, [project]);
        let tasks = api.ok(Method::GET, "/v1/tasks?vm=web", token, None).await;
        let projects: Vec<&str> = tasks["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["project"].as_str().unwrap())
            .collect();
        assert_eq!(projects, [project]);
    }
    let all = api
        .ok(Method::GET, "/v1/vms?all_projects=true", &admin, None)
        .await;
    let mut seen: Vec<(String, String)> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["project"].as_str().unwrap().to_owned(),
                v["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("a".to_owned(), "web".to_owned()),
            ("b".to_owned(), "web".to_owned())
        ]
    );
    let all_tasks = api
        .ok(Method::GET, "/v1/tasks?all_projects=true", &admin, None)
        .await;
    assert_eq!(all_tasks["items"].as_array().unwrap().len(), 2);
    // A task is visible by id to its own project (and admins) only.
    let task_a = web_a["task"]["id"].as_str().unwrap();
    api.ok(Method::GET, &format!("/v1/tasks/{task_a}"), &member_a, None)
        .await;
    api.ok(Method::GET, &format!("/v1/tasks/{task_a}"), &admin, None)
        .await;
    let (status, _) = api
        .call(
            Method::GET,
            &format!("/v1/tasks/{task_a}"),
            Some(&member_b),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/v1/tasks/{task_a}/cancel"),
            Some(&member_b),
            None,
        )
        .await;
    assert_eq!(status, 404);
    // Projects: members see only their own; a project with VMs cannot be deleted.
    let projects = api.ok(Method::GET, "/v1/projects", &member_a, None).await;
    assert_eq!(projects["items"].as_array().unwrap().len(), 1);
    assert_eq!(projects["items"][0]["usage"]["vms"], 1);
    let (status, _) = api
        .call(Method::GET, "/v1/projects/b", Some(&member_a), None)
        .await;
    assert_eq!(status, 404);
    let (status, v) = api
        .call(Method::DELETE, "/v1/projects/a", Some(&admin), None)
        .await;
    assert_eq!((status, error_code(&v)), (409, "conflict"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("still has 1 vm"),
        "{v}"
    );
    let whoami = api.ok(Method::GET, "/v1/whoami", &member_b, None).await;
    assert_eq!(
        whoami,
        json!({"name": "member-b", "role": "member", "project": "b"})
    );
}

#[tokio::test]
async fn quota_refuses_the_vm_that_would_pass_max_vcpus_and_leaves_nothing() {
    let (s, api) = server().await;
    let admin = s.admin_token.clone();
    api.ok(
        Method::POST,
        "/v1/projects",
        &admin,
        Some(json!({"name": "small", "spec": {"max_vcpus": 3, "max_vms": 5}})),
    )
    .await;
    let member = api.token(&admin, "dev", "small", "member").await;
    api.ok(Method::POST, "/v1/vms", &member, Some(vm_body("one", 2)))
        .await;
    let (status, v) = api
        .call(
            Method::POST,
            "/v1/vms",
            Some(&member),
            Some(vm_body("two", 2)),
        )
        .await;
    assert_eq!((status, error_code(&v)), (409, "quota_exceeded"), "{v}");
    assert_eq!(
        v["error"]["message"],
        "quota exceeded: project small: max_vcpus is 3: 2 in use, 4 with this change"
    );
    let (status, _) = api
        .call(Method::GET, "/v1/vms/two", Some(&member), None)
        .await;
    assert_eq!(status, 404, "no vm was created");
    let tasks = api.ok(Method::GET, "/v1/tasks?vm=two", &member, None).await;
    assert_eq!(tasks["items"], json!([]), "no task exists");
    // Growing a VM by apply is checked too, and leaves the stored spec alone.
    let grow = json!({"spec": {"image_url": "http://127.0.0.1:9/i.qcow2", "arch": "amd64",
        "vcpus": 4, "memory_mb": 256}});
    let (status, v) = api
        .call(Method::PUT, "/v1/vms/one", Some(&member), Some(grow))
        .await;
    assert_eq!((status, error_code(&v)), (409, "quota_exceeded"), "{v}");
    let one = api.ok(Method::GET, "/v1/vms/one", &member, None).await;
    assert_eq!(one["spec"]["vcpus"], 2);
    assert_eq!(one["generation"], 1);
    let project = api
        .ok(Method::GET, "/v1/projects/small", &member, None)
        .await;
    assert_eq!(
        project["usage"],
        json!({"vms": 1, "vcpus": 2, "memory_mb": 256})
    );
    // A VM that fits still goes in.
    api.ok(Method::POST, "/v1/vms", &member, Some(vm_body("three", 1)))
        .await;
}

#[tokio::test]
async fn revoked_and_expired_tokens_stop_working_at_once() {
    let (s, api) = server().await;
    let admin = s.admin_token.clone();
    let dev = api.token(&admin, "dev", "default", "member").await;
    api.ok(Method::GET, "/v1/vms", &dev, None).await;
    let (status, _) = api
        .call(Method::DELETE, "/v1/tokens/dev", Some(&admin), None)
        .await;
    assert_eq!(status, 204);
    let (status, v) = api.call(Method::GET, "/v1/vms", Some(&dev), None).await;
    assert_eq!((status, error_code(&v)), (401, "unauthenticated"));
    let listed = api.ok(Method::GET, "/v1/tokens", &admin, None).await;
    let names: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin"]);

    let v = api
        .ok(
            Method::POST,
            "/v1/tokens",
            &admin,
            Some(
                json!({"name": "brief", "project": "default", "role": "viewer", "expires_secs": 1}),
            ),
        )
        .await;
    let brief = v["secret"].as_str().unwrap().to_owned();
    assert!(v["token"]["expires_at"].is_string());
    api.ok(Method::GET, "/v1/vms", &brief, None).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, v) = api.call(Method::GET, "/v1/vms", Some(&brief), None).await;
    assert_eq!(status, 401);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("expired"),
        "{v}"
    );
    // Tokens name an existing project; a bad role is refused naming the field.
    let (status, v) = api
        .call(
            Method::POST,
            "/v1/tokens",
            Some(&admin),
            Some(json!({"name": "x", "project": "nope", "role": "member"})),
        )
        .await;
    assert_eq!((status, error_code(&v)), (400, "validation_failed"), "{v}");
    let (status, v) = api
        .call(
            Method::POST,
            "/v1/tokens",
            Some(&admin),
            Some(json!({"name": "x", "role": "root"})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        v["error"]["message"].as_str().unwrap().starts_with("role"),
        "{v}"
    );
}

#[tokio::test]
async fn admin_token_file_is_private_and_written_once() {
    let s = open(tempfile::tempdir().unwrap()).await;
    let path = s.dir.path().join("admin.token");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(s.admin_token.starts_with("otx_"));
    // A second start does not mint another admin token.
    assert_eq!(
        s.daemon.bootstrap_admin_token(s.dir.path()).await.unwrap(),
        None
    );
}
