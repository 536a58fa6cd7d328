//! Optimistic concurrency on every object users write besides VMs (those are in
//! api_concurrency.rs): pools, networks, firmware, projects, tokens and the cluster
//! settings carry `resource_version`; `PUT`/`DELETE` with a stale `If-Match` are 409
//! `conflict` naming both versions and write nothing; concurrent writers with one stale
//! `If-Match` spread over two in-process replicas on one database: exactly one wins;
//! without `If-Match` a writer that loses the race retries on a fresh read. SQLite by
//! default; PostgreSQL when `OTHERIXD_TEST_POSTGRES_URL` is set.

use axum::http::{Method, StatusCode};
use axum::Router;
use otherixd::daemon::Daemon;
use otherixd::store::CAS_ATTEMPTS;
use serde_json::{json, Value};

mod common;
use common::TestServer;

/// Two replicas on one fresh database: the test server and a second daemon.
struct Replicas {
    s: TestServer,
    _b: Daemon,
    apps: [Router; 2],
}

async fn replicas() -> Replicas {
    let s = common::open(tempfile::tempdir().unwrap()).await;
    let b = Daemon::open(&s.database_url).await.unwrap();
    let b_app = common::with_token(b.app(), &s.admin_token);
    let apps = [s.app.clone(), b_app];
    Replicas { s, _b: b, apps }
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    if_match: Option<i64>,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let headers: Vec<(&str, String)> = if_match
        .map(|v| ("if-match", v.to_string()))
        .into_iter()
        .collect();
    common::call_json_with(app, method, uri, &headers, body).await
}

fn version(v: &Value) -> i64 {
    v["resource_version"]
        .as_i64()
        .unwrap_or_else(|| panic!("no resource_version: {v}"))
}

fn message(v: &Value) -> &str {
    assert_eq!(v["error"]["code"], "conflict", "{v}");
    v["error"]["message"].as_str().unwrap()
}

/// A kind written with `PUT {collection}/{name}`: its API kind (as 409 answers name it)
/// and a valid spec.
struct Kind {
    kind: &'static str,
    collection: &'static str,
    spec: Value,
}

fn kinds() -> Vec<Kind> {
    vec![
        Kind {
            kind: "pool",
            collection: "/v1/pools",
            spec: json!({"description": "fast disks"}),
        },
        Kind {
            kind: "network",
            collection: "/v1/networks",
            spec: json!({"type": "bridge", "bridge": "br0"}),
        },
        Kind {
            kind: "firmware",
            collection: "/v1/firmware",
            spec: json!({"arch": "amd64", "type": "bios"}),
        },
        Kind {
            kind: "project",
            collection: "/v1/projects",
            spec: json!({"max_vms": 3}),
        },
    ]
}

fn body(spec: &Value, writer: &str) -> Value {
    json!({"spec": spec, "annotations": {"writer": writer}})
}

#[tokio::test]
async fn put_delete_if_match_stale_is_409_naming_both_versions_for_every_kind() {
    let r = replicas().await;
    let app = &r.apps[0];
    for k in kinds() {
        let url = format!("{}/obj-1", k.collection);
        // Created at version 1, shown on GET and in the list.
        let (status, v) = call(app, Method::PUT, &url, None, Some(&body(&k.spec, "a"))).await;
        assert_eq!(status, StatusCode::OK, "{} {v}", k.kind);
        assert_eq!(v["outcome"], "created", "{v}");
        assert_eq!(version(&v["object"]), 1, "{v}");
        let (_, list) = call(app, Method::GET, k.collection, None, None).await;
        let listed = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == "obj-1")
            .unwrap_or_else(|| panic!("{list}"));
        assert_eq!(version(listed), 1, "{listed}");

        // A PUT naming the current version is configured and moves it.
        let (status, v) = call(app, Method::PUT, &url, Some(1), Some(&body(&k.spec, "b"))).await;
        assert_eq!(status, StatusCode::OK, "{} {v}", k.kind);
        assert_eq!(v["outcome"], "configured", "{v}");
        assert_eq!(version(&v["object"]), 2, "{v}");
        let (_, got) = call(&r.apps[1], Method::GET, &url, None, None).await;
        assert_eq!(version(&got), 2, "{got}");

        // The now stale version: 409 naming both, nothing written (even an unchanged body).
        for writer in ["c", "b"] {
            let (status, v) = call(
                app,
                Method::PUT,
                &url,
                Some(1),
                Some(&body(&k.spec, writer)),
            )
            .await;
            assert_eq!(status, StatusCode::CONFLICT, "{} {v}", k.kind);
            let want = format!(
                "{} obj-1 was changed: expected resource_version 1, it is 2",
                k.kind
            );
            assert!(message(&v).starts_with(&want), "{v}");
        }
        let (status, v) = call(app, Method::DELETE, &url, Some(1), None).await;
        assert_eq!(status, StatusCode::CONFLICT, "{} {v}", k.kind);
        assert!(
            message(&v).contains("expected resource_version 1, it is 2"),
            "{v}"
        );
        let (status, got) = call(app, Method::GET, &url, None, None).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "a refused delete deletes nothing: {got}"
        );
        assert_eq!(
            (version(&got), &got["annotations"]["writer"]),
            (2, &json!("b"))
        );

        // A precondition on an object that does not exist: 409, and nothing is created.
        let other = format!("{}/obj-2", k.collection);
        let (status, v) = call(app, Method::PUT, &other, Some(1), Some(&body(&k.spec, "a"))).await;
        assert_eq!(status, StatusCode::CONFLICT, "{} {v}", k.kind);
        assert!(
            message(&v).contains(&format!("it is none (no such {})", k.kind)),
            "{v}"
        );
        let (status, _) = call(app, Method::GET, &other, None, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{}", k.kind);

        // The current version deletes, through the other replica.
        let (status, v) = call(&r.apps[1], Method::DELETE, &url, Some(2), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{} {v}", k.kind);
        let (status, _) = call(app, Method::GET, &url, None, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{}", k.kind);
    }
}

// Several worker threads: the writers really run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_concurrent_writers_with_same_stale_if_match_exactly_one_wins_for_every_kind() {
    let r = replicas().await;
    for k in kinds() {
        let url = format!("{}/obj-1", k.collection);
        let (status, v) = call(
            &r.apps[0],
            Method::PUT,
            &url,
            None,
            Some(&body(&k.spec, "0")),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let read = version(&v["object"]);
        let outcomes = concurrent_puts(&r.apps, &url, Some(read), &k.spec, WRITERS).await;
        let (won, lost) = split(&outcomes, read);
        assert_eq!(
            won.len(),
            1,
            "{}: exactly one writer wins: {outcomes:?}",
            k.kind
        );
        assert_eq!(lost, WRITERS - 1, "{}", k.kind);
        // What is stored is the winner's write, one version on.
        let (_, got) = call(&r.apps[1], Method::GET, &url, None, None).await;
        assert_eq!(got["annotations"]["writer"], won[0], "{got}");
        assert_eq!(version(&got), read + 1, "{got}");
    }
}

// Several worker threads: the writers really run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_concurrent_writers_without_if_match_all_succeed_each_write_moves_the_version() {
    let r = replicas().await;
    for k in kinds() {
        let url = format!("{}/obj-1", k.collection);
        let (status, v) = call(
            &r.apps[0],
            Method::PUT,
            &url,
            None,
            Some(&body(&k.spec, "0")),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let read = version(&v["object"]);
        // A writer that loses the compare-and-swap re-reads and writes again: none is
        // refused, none is lost (every write took its own version). Each of the others
        // commits once, so a writer loses at most CAS_ATTEMPTS - 1 races: within its
        // attempts.
        let writers = CAS_ATTEMPTS as usize;
        let outcomes = concurrent_puts(&r.apps, &url, None, &k.spec, writers).await;
        for (status, v) in &outcomes {
            assert_eq!(*status, StatusCode::OK, "{}: {v}", k.kind);
            assert_eq!(v["outcome"], "configured", "{v}");
        }
        let (_, got) = call(&r.apps[0], Method::GET, &url, None, None).await;
        assert_eq!(version(&got), read + writers as i64, "{}: {got}", k.kind);
    }
}

const WRITERS: usize = 10;

/// `writers` concurrent PUTs of `url` over both replicas, writer `i` annotating `i + 1`.
async fn concurrent_puts(
    apps: &[Router; 2],
    url: &str,
    if_match: Option<i64>,
    spec: &Value,
    writers: usize,
) -> Vec<(StatusCode, Value)> {
    let mut joins = Vec::new();
    for i in 0..writers {
        let app = apps[i % 2].clone();
        let (url, body) = (url.to_owned(), body(spec, &(i + 1).to_string()));
        joins.push(tokio::spawn(async move {
            call(&app, Method::PUT, &url, if_match, Some(&body)).await
        }));
    }
    let mut out = Vec::new();
    for j in joins {
        out.push(j.await.unwrap());
    }
    out
}

/// The winners' `writer` annotations and the number of 409s naming `read` as stale.
fn split(outcomes: &[(StatusCode, Value)], read: i64) -> (Vec<Value>, usize) {
    let (mut won, mut lost) = (Vec::new(), 0);
    for (status, v) in outcomes {
        match *status {
            StatusCode::OK => {
                assert_eq!(v["outcome"], "configured", "{v}");
                won.push(v["object"]["annotations"]["writer"].clone());
            }
            StatusCode::CONFLICT => {
                let want = format!("expected resource_version {read}, it is {}", read + 1);
                assert!(message(v).contains(&want), "{v}");
                lost += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    (won, lost)
}

// Several worker threads: the writers really run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_settings_if_match_stale_409_concurrent_one_wins_agent_default_pool_moves_it() {
    let r = replicas().await;
    let app = &r.apps[0];
    let (status, c) = call(app, Method::GET, "/v1/cluster", None, None).await;
    assert_eq!(status, StatusCode::OK, "{c}");
    let v0 = version(&c);
    assert_eq!(v0, 1, "{c}");

    // An agent registering a `default` pool on a fresh cluster makes it the default pool:
    // a write of the settings, so it moves their version.
    register_node(&r.s).await;
    let (_, c) = call(app, Method::GET, "/v1/cluster", None, None).await;
    assert_eq!(c["spec"]["default_pool"], "default", "{c}");
    let v1 = version(&c);
    assert_eq!(v1, v0 + 1, "{c}");

    let settings = |writer: &str| json!({"spec": {"default_pool": "default"}, "annotations": {"writer": writer}});
    let (status, v) = call(
        app,
        Method::PUT,
        "/v1/cluster",
        Some(v0),
        Some(&settings("a")),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert!(
        message(&v).starts_with(&format!(
            "cluster settings was changed: expected resource_version {v0}, it is {v1}"
        )),
        "{v}"
    );
    let (status, v) = call(
        app,
        Method::PUT,
        "/v1/cluster",
        Some(v1),
        Some(&settings("a")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["outcome"], "configured", "{v}");
    let v2 = version(&v["object"]);
    assert_eq!(v2, v1 + 1, "{v}");

    // Concurrent writers naming the same version: exactly one wins.
    let mut joins = Vec::new();
    for i in 0..WRITERS {
        let app = r.apps[i % 2].clone();
        let body = settings(&(i + 1).to_string());
        joins.push(tokio::spawn(async move {
            call(&app, Method::PUT, "/v1/cluster", Some(v2), Some(&body)).await
        }));
    }
    let mut outcomes = Vec::new();
    for j in joins {
        outcomes.push(j.await.unwrap());
    }
    let (won, lost) = split(&outcomes, v2);
    assert_eq!((won.len(), lost), (1, WRITERS - 1), "{outcomes:?}");
    let (_, c) = call(&r.apps[1], Method::GET, "/v1/cluster", None, None).await;
    assert_eq!(c["annotations"]["writer"], won[0], "{c}");
    assert_eq!(version(&c), v2 + 1, "{c}");
}

async fn register_node(s: &TestServer) {
    s.daemon
        .gateway
        .register(&common::registration("node-1", 8, 8192))
        .await
        .unwrap();
}

#[tokio::test]
async fn token_revoke_if_match_stale_is_409_current_revokes() {
    let r = replicas().await;
    let app = &r.apps[0];
    let (status, v) = call(
        app,
        Method::POST,
        "/v1/tokens",
        None,
        Some(&json!({"name": "ci", "project": "default", "role": "viewer"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(version(&v["token"]), 1, "{v}");
    let (_, list) = call(app, Method::GET, "/v1/tokens", None, None).await;
    let ci = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci")
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(version(ci), 1, "{ci}");

    let (status, v) = call(app, Method::DELETE, "/v1/tokens/ci", Some(2), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert!(
        message(&v).starts_with("token ci was changed: expected resource_version 2, it is 1"),
        "{v}"
    );
    let (_, list) = call(app, Method::GET, "/v1/tokens", None, None).await;
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "ci"),
        "a refused revoke revokes nothing: {list}"
    );
    let (status, v) = call(&r.apps[1], Method::DELETE, "/v1/tokens/ci", Some(1), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    let (status, v) = call(app, Method::DELETE, "/v1/tokens/ci", Some(1), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
}

#[tokio::test]
async fn project_version_moves_on_its_own_writes_not_on_the_quota_checks_of_vm_writes() {
    let r = replicas().await;
    let app = &r.apps[0];
    register_node(&r.s).await;
    let (status, v) = call(
        app,
        Method::PUT,
        "/v1/projects/team",
        None,
        Some(&json!({"spec": {"max_vms": 2}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(version(&v["object"]), 1, "{v}");
    // A quota-checked VM create locks (touches) the project row: not a write of the
    // project, so a client holding version 1 may still write it.
    let vm = json!({"name": "web-1", "spec": {"image_url": "http://127.0.0.1:9/img.qcow2",
        "arch": "amd64", "vcpus": 1, "memory_mb": 512}});
    let (status, v) = call(
        &r.apps[1],
        Method::POST,
        "/v1/vms?project=team",
        None,
        Some(&vm),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let (_, p) = call(app, Method::GET, "/v1/projects/team", None, None).await;
    assert_eq!(
        (version(&p), p["usage"]["vms"].as_u64()),
        (1, Some(1)),
        "{p}"
    );
    let (status, v) = call(
        app,
        Method::PUT,
        "/v1/projects/team",
        Some(1),
        Some(&json!({"spec": {"max_vms": 3}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(version(&v["object"]), 2, "{v}");
    // A stale delete is 409 before the live-VM check; a current one names the VMs left.
    let (status, v) = call(app, Method::DELETE, "/v1/projects/team", Some(1), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert!(
        message(&v).starts_with("project team was changed: expected resource_version 1, it is 2"),
        "{v}"
    );
    let (status, v) = call(app, Method::DELETE, "/v1/projects/team", Some(2), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert!(message(&v).contains("still has 1 vm(s)"), "{v}");
}
