//! `GET /v1/events`: the change stream, in-process on a real database (SQLite, or
//! PostgreSQL with `OTHERIXD_TEST_POSTGRES_URL`; with `OTHERIXD_TEST_REPLICAS=3` the
//! stream and the writes land on different replicas, so cross-replica wake-ups are
//! exercised). Agent results go through the gateway's own entry points.

use std::collections::HashSet;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use otherix_api::proto::{Register, VmPower};
use serde_json::{json, Value};
use tower::ServiceExt;

mod common;
use common::agent_finishes;
use common::{open, with_token, TestServer};

fn registration(node: &str) -> Register {
    common::registration(node, 64, 262_144)
}

async fn server_with_node() -> TestServer {
    let s = open(tempfile::tempdir().unwrap()).await;
    s.daemon
        .gateway
        .register(&registration("node-1"))
        .await
        .unwrap();
    s
}

async fn call(app: &Router, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    common::call_json(app, method, uri, body.as_ref()).await
}

async fn ok(app: &Router, method: Method, uri: &str, body: Option<Value>) -> Value {
    let (status, v) = call(app, method.clone(), uri, body).await;
    assert!(status.is_success(), "{method} {uri}: {status} {v}");
    v
}

fn vm_body(name: &str) -> Value {
    json!({"name": name, "spec": {"image_url": "http://127.0.0.1:9/img.qcow2", "arch": "amd64"}})
}

/// An open `GET /v1/events` response, read line by line.
struct Stream {
    start: i64,
    body: Body,
    buf: Vec<u8>,
}

impl Stream {
    async fn open(app: &Router, uri: &str) -> Stream {
        let req = Request::get(uri).body(Body::empty()).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "GET {uri}");
        assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
        let start = resp.headers()["otherix-cursor"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        Stream {
            start,
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next event, or `None` when none comes within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .ok()??
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// Events until one satisfies `last` (included); panics after 20 s.
    async fn until(&mut self, last: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let e = self
                .next(Duration::from_secs(20))
                .await
                .unwrap_or_else(|| panic!("stream went quiet after {out:#?}"));
            let done = last(&e);
            out.push(e);
            if done {
                return out;
            }
        }
    }
}

fn cursor(e: &Value) -> i64 {
    e["cursor"].as_str().unwrap().parse().unwrap()
}

fn is(e: &Value, typ: &str, kind: &str, name: &str) -> bool {
    e["type"] == typ
        && e["kind"] == kind
        && (e["object"]["name"] == name || e["object"]["id"] == name)
}

fn summary(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let o = &e["object"];
            let name = o["name"].as_str().or(o["kind"].as_str()).unwrap_or("?");
            format!(
                "{} {} {}",
                e["type"].as_str().unwrap(),
                e["kind"].as_str().unwrap(),
                name
            )
        })
        .collect()
}

#[tokio::test]
async fn stream_dropped_midway_and_resumed_with_since_sees_every_change_once_in_order() {
    let s = server_with_node().await;
    let app = &s.app;
    let mut first = Stream::open(app, "/v1/events").await;
    let start = first.start;
    assert!(start > 0, "registering the node was logged already");

    // Part one, while the first client reads.
    let created = ok(app, Method::POST, "/v1/vms", Some(vm_body("web-1"))).await;
    let vm_id = created["vm"]["id"].as_str().unwrap().to_owned();
    let create_task = created["task"]["id"].as_str().unwrap().to_owned();
    agent_finishes(&s, &create_task, &vm_id, VmPower::Running).await;
    ok(
        app,
        Method::POST,
        "/v1/pools",
        Some(json!({"name": "fast", "spec": {}})),
    )
    .await;
    let part_one = first.until(|e| is(e, "added", "pool", "fast")).await;
    drop(first); // the connection goes away midway

    // Part two, while nobody listens.
    let stopped = ok(app, Method::POST, "/v1/vms/web-1/stop", None).await;
    agent_finishes(
        &s,
        stopped["task"]["id"].as_str().unwrap(),
        &vm_id,
        VmPower::Stopped,
    )
    .await;
    let deleted = ok(app, Method::DELETE, "/v1/vms/web-1", None).await;
    agent_finishes(
        &s,
        deleted["task"]["id"].as_str().unwrap(),
        &vm_id,
        VmPower::Absent,
    )
    .await;
    ok(app, Method::DELETE, "/v1/pools/fast", None).await;

    // Resume after the last event the first client saw; a change after resuming comes too.
    let last_seen = cursor(part_one.last().unwrap());
    let mut second = Stream::open(app, &format!("/v1/events?since={last_seen}")).await;
    assert_eq!(second.start, last_seen);
    ok(
        app,
        Method::PUT,
        "/v1/cluster",
        Some(json!({"spec": {"default_pool": "default"},
        "annotations": {"owner": "events-test"}})),
    )
    .await;
    let part_two = second
        .until(|e| e["kind"] == "cluster" && e["object"]["annotations"]["owner"] == "events-test")
        .await;

    let union: Vec<Value> = part_one.iter().chain(&part_two).cloned().collect();
    // Nothing missed, nothing repeated: the cursors are exactly start+1, start+2, ...
    let cursors: Vec<i64> = union.iter().map(cursor).collect();
    let want: Vec<i64> = (start + 1..=start + union.len() as i64).collect();
    assert_eq!(cursors, want, "{:#?}", summary(&union));

    // Every write of the VM row is one event: its resource_version goes 1, 2, 3, ... with
    // no gap and no repeat, from added to deleted.
    let vm_events: Vec<&Value> = union.iter().filter(|e| e["kind"] == "vm").collect();
    let versions: Vec<i64> = vm_events
        .iter()
        .map(|e| e["object"]["resource_version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, (1..=versions.len() as i64).collect::<Vec<_>>());
    assert_eq!(vm_events.first().unwrap()["type"], "added");
    assert_eq!(vm_events.last().unwrap()["type"], "deleted");
    assert_eq!(
        vm_events.last().unwrap()["object"]["status"]["phase"],
        "deleted"
    );
    assert!(vm_events[1..vm_events.len() - 1]
        .iter()
        .all(|e| e["type"] == "modified"));
    // The phases the VM went through, in order (each change once).
    let mut phases: Vec<&str> = vm_events
        .iter()
        .map(|e| e["object"]["status"]["phase"].as_str().unwrap())
        .collect();
    phases.dedup();
    for milestone in ["running", "stopped", "deleted"] {
        assert!(phases.contains(&milestone), "{phases:?}");
    }
    let pos = |p: &str| phases.iter().position(|x| *x == p).unwrap();
    assert!(
        pos("running") < pos("stopped") && pos("stopped") < pos("deleted"),
        "{phases:?}"
    );

    // The tasks: each added once (pending), then modified to success.
    for kind in ["vm.create", "vm.stop", "vm.delete"] {
        let of_kind: Vec<&Value> = union
            .iter()
            .filter(|e| e["kind"] == "task" && e["object"]["kind"] == kind)
            .collect();
        assert_eq!(of_kind.first().unwrap()["type"], "added", "{kind}");
        assert_eq!(
            of_kind.last().unwrap()["object"]["status"],
            "success",
            "{kind}"
        );
        let ids: HashSet<&str> = of_kind
            .iter()
            .map(|e| e["object"]["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 1, "{kind}");
    }
    let pools: Vec<String> = summary(&union)
        .into_iter()
        .filter(|l| l.ends_with("pool fast"))
        .collect();
    assert_eq!(pools, ["added pool fast", "deleted pool fast"]);

    // A fresh reader from the first cursor sees exactly the same events.
    let mut replay = Stream::open(app, &format!("/v1/events?since={start}")).await;
    let again = replay
        .until(|e| cursor(e) == cursor(union.last().unwrap()))
        .await;
    assert_eq!(again, union);
}

#[tokio::test]
async fn cursor_older_than_the_retained_window_is_410_cursor_expired() {
    let s = server_with_node().await;
    let app = &s.app;
    ok(app, Method::POST, "/v1/vms", Some(vm_body("web-1"))).await;
    let head = Stream::open(app, "/v1/events").await.start;
    assert!(head >= 3);

    // Everything older than "now" goes.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let policy = otherixd::retention::RetentionPolicy {
        events_max_age: Duration::ZERO,
        ..Default::default()
    };
    let purged = otherixd::retention::purge_expired(&s.daemon.store, &policy, None)
        .await
        .unwrap();
    assert_eq!(purged.events, head as u64);

    for since in [0, 1, head - 1] {
        let (status, v) = call(app, Method::GET, &format!("/v1/events?since={since}"), None).await;
        assert_eq!(status, StatusCode::GONE, "since={since}: {v}");
        assert_eq!(v["error"]["code"], "cursor_expired");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("list the objects again"), "{msg}");
    }
    // A cursor from another log (beyond the newest event) is refused the same way.
    let (status, v) = call(
        app,
        Method::GET,
        &format!("/v1/events?since={}", head + 100),
        None,
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::GONE, Some("cursor_expired"))
    );
    // Malformed is 400.
    let (status, v) = call(app, Method::GET, "/v1/events?since=abc", None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("validation_failed"))
    );
    let (status, v) = call(app, Method::GET, "/v1/events?kind=vms", None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("validation_failed"))
    );

    // The newest cursor still resumes: nothing after it was purged.
    let mut stream = Stream::open(app, &format!("/v1/events?since={head}")).await;
    ok(app, Method::POST, "/v1/vms", Some(vm_body("web-2"))).await;
    let got = stream.until(|e| is(e, "added", "vm", "web-2")).await;
    assert_eq!(cursor(&got[0]), head + 1);
}

#[tokio::test]
async fn members_see_only_their_projects_events_and_filters_narrow_the_stream() {
    let s = server_with_node().await;
    let admin = &s.app;
    for p in ["a", "b"] {
        ok(
            admin,
            Method::POST,
            "/v1/projects",
            Some(json!({"name": p, "spec": {}})),
        )
        .await;
    }
    let secret = |v: Value| v["secret"].as_str().unwrap().to_owned();
    let member_a = with_token(
        s.raw_app.clone(),
        &secret(
            ok(
                admin,
                Method::POST,
                "/v1/tokens",
                Some(json!({"name": "member-a", "project": "a", "role": "member"})),
            )
            .await,
        ),
    );
    let viewer_b = with_token(
        s.raw_app.clone(),
        &secret(
            ok(
                admin,
                Method::POST,
                "/v1/tokens",
                Some(json!({"name": "viewer-b", "project": "b", "role": "viewer"})),
            )
            .await,
        ),
    );

    let mut a_all = Stream::open(&member_a, "/v1/events").await;
    let since = a_all.start;
    let mut a_vm_only = Stream::open(&member_a, "/v1/events?kind=vm").await;
    let mut a_web = Stream::open(&member_a, "/v1/events?vm=web-a2").await;
    let mut b_all = Stream::open(&viewer_b, "/v1/events").await;
    let mut admin_all = Stream::open(admin, "/v1/events?all_projects=true").await;

    ok(
        admin,
        Method::POST,
        "/v1/vms?project=b",
        Some(vm_body("web-b")),
    )
    .await;
    ok(&member_a, Method::POST, "/v1/vms", Some(vm_body("web-a"))).await;
    ok(&member_a, Method::POST, "/v1/vms", Some(vm_body("web-a2"))).await;
    ok(
        admin,
        Method::POST,
        "/v1/networks",
        Some(json!({"name": "lan", "spec": {"type": "bridge", "bridge": "br0"}})),
    )
    .await;
    ok(
        admin,
        Method::PUT,
        "/v1/projects/b",
        Some(json!({"spec": {"max_vms": 5}})),
    )
    .await;
    ok(
        admin,
        Method::POST,
        "/v1/vms?project=b",
        Some(vm_body("web-b-last")),
    )
    .await;

    let a_seen = a_all.until(|e| is(e, "added", "network", "lan")).await;
    // Nothing of b (its VM, its tasks, the project itself) reaches a member of a, even
    // after waiting for b's last change.
    let b_last = admin_all
        .until(|e| is(e, "added", "vm", "web-b-last"))
        .await;
    let rest = a_all.next(Duration::from_millis(1500)).await;
    assert!(rest.is_none(), "{rest:?}");
    for e in &a_seen {
        let project = e["object"]["project"].as_str();
        assert!(project.is_none() || project == Some("a"), "{e}");
        assert_ne!(e["kind"], "project", "{e}");
    }
    assert_eq!(
        summary(&a_seen)
            .iter()
            .filter(|l| l.starts_with("added vm"))
            .collect::<Vec<_>>(),
        ["added vm web-a", "added vm web-a2"]
    );
    // The admin spanning projects sees both, and b's project change.
    let admin_lines = summary(&b_last);
    for want in [
        "added vm web-b",
        "added vm web-a",
        "modified project b",
        "added network lan",
    ] {
        assert!(
            admin_lines.iter().any(|l| l == want),
            "{want}: {admin_lines:#?}"
        );
    }
    // A viewer of b sees b's VMs (and the cluster-wide network), never a's.
    let b_seen = b_all.until(|e| is(e, "added", "vm", "web-b-last")).await;
    let b_vms: Vec<String> = summary(&b_seen)
        .into_iter()
        .filter(|l| l.starts_with("added vm"))
        .collect();
    assert_eq!(b_vms, ["added vm web-b", "added vm web-b-last"]);
    assert!(summary(&b_seen).iter().any(|l| l == "added network lan"));

    // kind=vm: only VM events; vm=web-a2: only that VM and its tasks.
    let vms = a_vm_only.until(|e| is(e, "added", "vm", "web-a2")).await;
    assert!(
        vms.iter()
            .all(|e| e["kind"] == "vm" && e["object"]["project"] == "a"),
        "{vms:#?}"
    );
    let web = a_web.until(|e| e["kind"] == "task").await;
    assert!(
        web.iter()
            .all(|e| e["object"]["name"] == "web-a2" || e["object"]["vm_name"] == "web-a2"),
        "{web:#?}"
    );
    assert_eq!(summary(&web)[0], "added vm web-a2");

    // Resuming as a: the same events again, none of b's in between.
    let mut again = Stream::open(&member_a, &format!("/v1/events?since={since}")).await;
    let replay = again.until(|e| is(e, "added", "network", "lan")).await;
    assert_eq!(replay, a_seen);

    // Another project's stream is 404 for a member; spanning projects is for admins.
    let (status, v) = call(&member_a, Method::GET, "/v1/events?project=b", None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, v) = call(&member_a, Method::GET, "/v1/events?all_projects=true", None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (status, _) = call(&s.raw_app, Method::GET, "/v1/events", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let s = server_with_node().await;
    let app = with_token(s.daemon.app(), &s.admin_token);
    let mut stream = Stream::open(&app, "/v1/events").await;
    s.daemon.state.events.close();
    let end = tokio::time::timeout(Duration::from_secs(5), stream.body.frame())
        .await
        .expect("the stream ended at close");
    assert!(end.is_none(), "{end:?}");
}

/// Many writers at once (on PostgreSQL with replicas: several processes' transactions
/// committing concurrently): a live reader still gets every number once, in order, with
/// no gap; the numbers are taken in commit order.
#[tokio::test]
async fn concurrent_writers_live_stream_has_no_gap() {
    let s = server_with_node().await;
    let mut live = Stream::open(&s.app, "/v1/events").await;
    let start = live.start;
    let writers: Vec<_> = (0..24)
        .map(|i| {
            let app = s.app.clone();
            tokio::spawn(async move {
                if i % 3 == 0 {
                    let body = json!({"name": format!("net-{i}"), "spec": {"type": "bridge", "bridge": "br0"}});
                    ok(&app, Method::POST, "/v1/networks", Some(body)).await;
                } else {
                    ok(&app, Method::POST, "/v1/vms", Some(vm_body(&format!("c-{i}")))).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let head = Stream::open(&s.app, "/v1/events").await.start;
    let got = live.until(|e| cursor(e) == head).await;
    let cursors: Vec<i64> = got.iter().map(cursor).collect();
    assert_eq!(
        cursors,
        (start + 1..=head).collect::<Vec<_>>(),
        "{:#?}",
        summary(&got)
    );
    let added_vms = got
        .iter()
        .filter(|e| e["type"] == "added" && e["kind"] == "vm")
        .count();
    let added_nets = got.iter().filter(|e| e["kind"] == "network").count();
    assert_eq!((added_vms, added_nets), (16, 8));
}

#[tokio::test]
async fn node_readiness_and_bulk_apply_are_events() {
    let s = server_with_node().await;
    let app = &s.app;
    let mut stream = Stream::open(app, "/v1/events").await;
    // Three VMs in one POST /v1/apply (one transaction): each VM and its task, once.
    let vm = |name: &str| {
        json!({"name": name, "spec": {"image_url": "http://127.0.0.1:9/img.qcow2", "arch": "amd64"},
               "annotations": {}})
    };
    ok(
        app,
        Method::POST,
        "/v1/apply",
        Some(json!({"vms": [vm("a-1"), vm("a-2"), vm("a-3")]})),
    )
    .await;
    let got = stream.until(|e| is(e, "added", "vm", "a-3")).await;
    let added: Vec<String> = summary(&got)
        .into_iter()
        .filter(|l| l.contains(" vm "))
        .collect();
    assert_eq!(added, ["added vm a-1", "added vm a-2", "added vm a-3"]);
    assert_eq!(
        got.iter().filter(|e| e["kind"] == "task").count(),
        2,
        "{:#?}",
        summary(&got)
    );
    let rest = stream.until(|e| e["kind"] == "task").await;
    assert_eq!(rest.len(), 1);

    // The node goes not ready: a node event, then its VMs as GET shows them (unknown).
    s.daemon.store.mark_node_not_ready("node-1").await.unwrap();
    let got = stream.until(|e| is(e, "modified", "vm", "a-3")).await;
    assert_eq!(summary(&got)[0], "modified node node-1");
    assert_eq!(got[0]["object"]["status"], "not_ready");
    assert!(
        got[1..]
            .iter()
            .all(|e| e["object"]["status"]["phase"] == "unknown"),
        "{got:#?}"
    );
    // A heartbeat makes it ready again; a second one changes nothing and is no event.
    s.daemon.store.node_heartbeat("node-1").await.unwrap();
    s.daemon.store.node_heartbeat("node-1").await.unwrap();
    let got = stream.until(|e| is(e, "modified", "vm", "a-3")).await;
    assert_eq!(got[0]["object"]["status"], "ready");
    assert!(
        got[1..]
            .iter()
            .all(|e| e["object"]["status"]["phase"] == "creating"),
        "{got:#?}"
    );
    assert!(stream.next(Duration::from_millis(1500)).await.is_none());
}
