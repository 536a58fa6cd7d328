//! Shared by the API test files: an in-process otherixd on a fresh database — SQLite in a
//! temp dir, or a new PostgreSQL database when `OTHERIXD_TEST_POSTGRES_URL` is set. With
//! `OTHERIXD_TEST_REPLICAS=N` (PostgreSQL only) the suites talk to N replicas on that one
//! database through a round-robin client: request k goes to replica k mod N, each replica
//! runs its relay, so a task created on one is finished, long-polled and read on others.

#![allow(dead_code)] // Each test file uses a different part.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::Request;
use axum::Router;
use otherixd::daemon::Daemon;
use otherixd::store::default_database_url;
use sqlx::{Connection, Executor};
use tower::ServiceExt;

pub struct TestServer {
    /// Replica 0: the one tests reach into (`daemon.gateway.register`, `daemon.state`).
    pub daemon: Daemon,
    /// Replica 0's relay (running when there are several replicas).
    pub relay: Option<AbortOnDrop>,
    /// Replicas 1.. on the same database (empty unless `OTHERIXD_TEST_REPLICAS` > 1).
    pub replicas: Vec<Replica>,
    /// The app with the bootstrap admin token added to every request that has none: what
    /// the API suites drive (through the real authentication middleware).
    pub app: Router,
    /// The app as served: no token added (for 401/403/404 tests).
    pub raw_app: Router,
    /// The secret of the `admin` token created at first open.
    pub admin_token: String,
    pub dir: tempfile::TempDir,
    pub database_url: String,
}

/// A background task that stops when this is dropped.
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Another replica of a [`TestServer`], with its relay running.
pub struct Replica {
    pub daemon: Daemon,
    _relay: AbortOnDrop,
}

/// How many replicas the suites run against (`OTHERIXD_TEST_REPLICAS`, PostgreSQL only).
pub fn replica_count() -> usize {
    if std::env::var_os("OTHERIXD_TEST_POSTGRES_URL").is_none() {
        return 1;
    }
    match std::env::var("OTHERIXD_TEST_REPLICAS") {
        Ok(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .expect("OTHERIXD_TEST_REPLICAS is a number >= 1"),
        Err(_) => 1,
    }
}

/// One router that sends request k to `apps[k mod N]`.
pub fn round_robin(apps: Vec<Router>) -> Router {
    if apps.len() == 1 {
        return apps.into_iter().next().unwrap();
    }
    let apps = Arc::new(apps);
    let next = Arc::new(AtomicUsize::new(0));
    Router::new().fallback(move |req: Request| {
        let app = apps[next.fetch_add(1, Ordering::Relaxed) % apps.len()].clone();
        async move { app.oneshot(req).await.unwrap_or_else(|e| match e {}) }
    })
}

/// A fresh database: SQLite in `dir`, or a new PostgreSQL database when configured.
pub async fn fresh_database_url(dir: &std::path::Path) -> String {
    let Ok(base) = std::env::var("OTHERIXD_TEST_POSTGRES_URL") else {
        return default_database_url(dir);
    };
    sqlx::any::install_default_drivers();
    let name = format!("otherixd_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::AnyConnection::connect(&base).await.unwrap();
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let (server, _) = base.rsplit_once('/').unwrap();
    format!("{server}/{name}")
}

/// `app` with `Authorization: Bearer SECRET` added to requests that carry none.
pub fn with_token(app: Router, secret: &str) -> Router {
    let value = axum::http::HeaderValue::from_str(&format!("Bearer {secret}")).unwrap();
    app.layer(axum::middleware::map_request(
        move |mut req: axum::extract::Request| {
            let value = value.clone();
            async move {
                req.headers_mut()
                    .entry(axum::http::header::AUTHORIZATION)
                    .or_insert(value);
                req
            }
        },
    ))
}

/// A server on a fresh database in `dir`.
pub async fn open(dir: tempfile::TempDir) -> TestServer {
    let database_url = fresh_database_url(dir.path()).await;
    reopen(dir, database_url).await
}

/// A server on an existing database (e.g. after dropping the previous server).
pub async fn reopen(dir: tempfile::TempDir, database_url: String) -> TestServer {
    let daemon = Daemon::open(&database_url).await.unwrap();
    let mut relay = None;
    let mut replicas = Vec::new();
    if replica_count() > 1 {
        // Replica 0 listens too: tasks finished on another replica wake its long-polls.
        relay = Some(AbortOnDrop(daemon.spawn_relay_as_follower().await));
        for _ in 1..replica_count() {
            let daemon = Daemon::open(&database_url).await.unwrap();
            replicas.push(Replica {
                _relay: AbortOnDrop(daemon.spawn_relay_as_follower().await),
                daemon,
            });
        }
    }
    let admin_token = match daemon.bootstrap_admin_token(dir.path()).await.unwrap() {
        Some(path) => std::fs::read_to_string(path).unwrap().trim().to_owned(),
        None => std::fs::read_to_string(dir.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned(),
    };
    let raw_app = round_robin(
        std::iter::once(daemon.app())
            .chain(replicas.iter().map(|r| r.daemon.app()))
            .collect(),
    );
    let app = with_token(raw_app.clone(), &admin_token);
    TestServer {
        daemon,
        relay,
        replicas,
        app,
        raw_app,
        admin_token,
        dir,
        database_url,
    }
}

/// What an amd64 agent on `node` (amd64 guests, `vcpus` cores, `memory_mb` of memory)
/// sends when it attaches, serving the `default` pool at /srv/default, with no VMs.
pub fn registration(node: &str, vcpus: u32, memory_mb: u64) -> otherix_api::proto::Register {
    otherix_api::proto::Register {
        node: node.into(),
        host_arch: "amd64".into(),
        guest_arches: vec!["amd64".into()],
        accel: "tcg".into(),
        vcpus,
        memory_mb,
        pools: vec![otherix_api::proto::PoolPath {
            name: "default".into(),
            path: "/srv/default".into(),
        }],
        agent_version: "test".into(),
        allow_file_urls: false,
        firmware_dirs: vec![],
        vms: vec![],
    }
}

/// Registers a ready amd64 node `name` (guests amd64 and arm64) serving the `default` pool
/// (no agent stream).
pub async fn register_node(daemon: &Daemon, name: &str, vcpus: u32, memory_mb: u64) {
    let mut reg = registration(name, vcpus, memory_mb);
    reg.guest_arches.push("arm64".into());
    daemon.gateway.register(&reg).await.unwrap();
}

/// One JSON request through `app`: the status and the body (as JSON, else as a string).
pub async fn call_json(
    app: &Router,
    method: axum::http::Method,
    uri: &str,
    body: Option<&serde_json::Value>,
) -> (axum::http::StatusCode, serde_json::Value) {
    call_json_with(app, method, uri, &[], body).await
}

/// [`call_json`] with extra request headers (`If-Match`, `Idempotency-Key`, ...).
pub async fn call_json_with(
    app: &Router,
    method: axum::http::Method,
    uri: &str,
    headers: &[(&str, String)],
    body: Option<&serde_json::Value>,
) -> (axum::http::StatusCode, serde_json::Value) {
    use http_body_util::BodyExt;
    let mut req = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let req = req
        .body(axum::body::Body::from(
            body.map(serde_json::Value::to_string).unwrap_or_default(),
        ))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    });
    (status, value)
}

/// What the agent of `node` would send when task `task_id` of VM `vm_id` ends in `state`
/// with its VM in `power` (a failure carries `qemu_failed`), fed through the gateway's own
/// entry point.
pub async fn report_task(
    daemon: &Daemon,
    node: &str,
    task_id: &str,
    vm_id: &str,
    state: otherix_api::proto::TaskState,
    power: otherix_api::proto::VmPower,
) {
    use otherix_api::proto::{TaskState, TaskUpdate, VmPower, VmReport};
    let failed = state == TaskState::Failed;
    daemon
        .gateway
        .apply_task_update(
            node,
            &TaskUpdate {
                task_id: task_id.into(),
                state: state as i32,
                error_code: if failed {
                    "qemu_failed".into()
                } else {
                    String::new()
                },
                error_message: if failed {
                    "test: qemu exited".into()
                } else {
                    String::new()
                },
                vm: Some(VmReport {
                    vm_id: vm_id.into(),
                    power: power as i32,
                    pid: if power == VmPower::Running { 4242 } else { 0 },
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

/// The agent on node-1 reports task `task_id` of VM `vm_id` succeeded, its VM in `power`.
pub async fn agent_finishes(
    s: &TestServer,
    task_id: &str,
    vm_id: &str,
    power: otherix_api::proto::VmPower,
) {
    let ok = otherix_api::proto::TaskState::Succeeded;
    report_task(&s.daemon, "node-1", task_id, vm_id, ok, power).await;
}
