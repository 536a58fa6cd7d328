//! Agent enrollment and the TLS gateway, end to end with the real binaries over real TLS on
//! loopback: agents that must be refused (no certificate, an expired join token, a reused
//! join token, a valid certificate of another node) are refused with the reason on both
//! sides, get no task and change no node; a revoked node is cut off without a server
//! restart; and a VM runs on an agent attached over mTLS.

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use otherix_e2e::cluster::NodeOptions;
use otherix_e2e::wait::{file_contains, until};
use otherix_e2e::{Cluster, ClusterOptions, ImageServer};
use serde_json::{json, Value};

const EXIT: Duration = Duration::from_secs(30);

fn log(cluster: &Cluster, name: &str) -> String {
    std::fs::read_to_string(cluster.dir.path().join(format!("{name}.log"))).unwrap_or_default()
}

/// Arguments of an extra agent for `node` with its own data dir and pool.
fn agent_args(cluster: &Cluster, node: &str, data_dir: &Path, extra: &[&str]) -> Vec<String> {
    let pool = cluster.dir.path().join(format!("{node}-extra-pool"));
    std::fs::create_dir_all(&pool).unwrap();
    let mut args: Vec<String> = [
        "--server",
        &cluster.agent_url,
        "--node",
        node,
        "--data-dir",
        &data_dir.display().to_string(),
        "--accel",
        "tcg",
        "--pool",
        &format!("default={}", pool.display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Waits for an agent process to exit; its exit code.
fn wait_exit(child: &mut Child) -> i32 {
    until("the agent to exit", EXIT, || {
        child.try_wait().unwrap().map(|s| s.code().unwrap_or(-1))
    })
}

/// Node rows as (name, status), to show a refusal changed none.
fn nodes(cluster: &Cluster) -> Vec<(String, String)> {
    let (status, body) = cluster.get("/v1/nodes");
    assert_eq!(status, 200, "{body}");
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_owned(),
                n["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn assert_never_attached(agent_log: &str) {
    for line in ["registered with the server", "task assigned"] {
        assert!(
            !agent_log.contains(line),
            "a refused agent got {line:?}:\n{agent_log}"
        );
    }
}

#[test]
fn refused_agents_say_why_get_no_task_and_change_no_node() {
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    let mut cluster = Cluster::start_with(ClusterOptions {
        nodes: vec![
            NodeOptions::new("node-1", &["default"]),
            NodeOptions::new("node-2", &["default"]),
        ],
        ..Default::default()
    });
    // A (stopped) VM on node-2, then node-2 goes down with a task waiting for it: an
    // impostor must not be able to take node-2's place and receive that task.
    let task = cluster.post_vm(
        "on-2",
        json!({"image_url": server.url("busybox-amd64.qcow2"), "arch": "amd64",
               "vcpus": 1, "memory_mb": 128, "desired_phase": "stopped", "node": "node-2"}),
    );
    let task = cluster.wait_task(&task, Duration::from_secs(120));
    assert_eq!(task["status"], "success", "{task}");
    cluster.kill_agent("node-2");
    until("node-2 not ready", Duration::from_secs(30), || {
        (cluster.get("/v1/nodes/node-2").1["status"] == "not_ready").then_some(())
    });
    let (status, accepted) = cluster.request("DELETE", "/v1/vms/on-2", None);
    assert_eq!(status, 202, "{accepted}");
    let waiting = accepted["task"]["id"].as_str().unwrap().to_owned();
    assert_eq!(accepted["task"]["status"], "pending");
    let before = nodes(&cluster);
    let dir = cluster.dir.path().to_owned();

    // 1. No certificate and no join token: the agent refuses to start, saying what to do.
    let args = agent_args(&cluster, "node-3", &dir.join("nocert"), &[]);
    let mut child = cluster.spawn_agent_process("nocert", &args);
    assert_ne!(wait_exit(&mut child), 0);
    let text = log(&cluster, "agent-nocert");
    assert!(
        text.contains("no client certificate") && text.contains("--join-token"),
        "{text}"
    );
    assert_never_attached(&text);

    // 2. An expired join token: refused by the server, which logs why.
    let expired = cluster.join_token("node-3", Some(1));
    std::thread::sleep(Duration::from_millis(2500));
    let args = agent_args(
        &cluster,
        "node-3",
        &dir.join("expired"),
        &["--join-token", &expired],
    );
    let mut child = cluster.spawn_agent_process("expired", &args);
    assert_ne!(wait_exit(&mut child), 0);
    let text = log(&cluster, "agent-expired");
    assert!(
        text.contains("the join token for node node-3 expired at"),
        "{text}"
    );
    assert!(!dir.join("expired/tls/node.crt").exists());
    assert_never_attached(&text);
    file_contains(
        &dir.join("otherixd.log"),
        "enrollment refused",
        Duration::from_secs(5),
    );
    assert!(log(&cluster, "otherixd").contains("the join token for node node-3 expired at"));

    // 3. A reused join token: the first use enrolls node-4, the second is refused.
    let token = cluster.join_token("node-4", None);
    let args = agent_args(
        &cluster,
        "node-4",
        &dir.join("first"),
        &["--join-token", &token],
    );
    let mut first = cluster.spawn_agent_process("first", &args);
    cluster.wait_node_ready("node-4");
    let before_reuse = nodes(&cluster);
    let args = agent_args(
        &cluster,
        "node-4",
        &dir.join("reuse"),
        &["--join-token", &token],
    );
    let mut child = cluster.spawn_agent_process("reuse", &args);
    assert_ne!(wait_exit(&mut child), 0);
    let text = log(&cluster, "agent-reuse");
    assert!(
        text.contains("the join token for node node-4 was already used"),
        "{text}"
    );
    assert!(log(&cluster, "otherixd").contains("the join token for node node-4 was already used"));
    assert_never_attached(&text);
    assert_eq!(nodes(&cluster), before_reuse);
    let _ = first.kill();
    let _ = first.wait();

    // 4. node-1's valid certificate claiming node-2: the gateway refuses every attempt.
    let stolen = dir.join("stolen");
    std::fs::create_dir_all(stolen.join("tls")).unwrap();
    for f in ["node.crt", "node.key", "ca.crt"] {
        std::fs::copy(
            cluster.agent_data_dir("node-1").join("tls").join(f),
            stolen.join("tls").join(f),
        )
        .unwrap();
    }
    let args = agent_args(&cluster, "node-2", &stolen, &[]);
    let mut impostor = cluster.spawn_agent_process("impostor", &args);
    let reason = "the client certificate is for node node-1, but Register names node node-2";
    file_contains(
        &dir.join("agent-impostor.log"),
        reason,
        Duration::from_secs(30),
    );
    file_contains(&dir.join("otherixd.log"), reason, Duration::from_secs(5));
    // Give it a few more reconnect attempts, then check nothing moved.
    std::thread::sleep(Duration::from_secs(3));
    let _ = impostor.kill();
    let _ = impostor.wait();
    assert_never_attached(&log(&cluster, "agent-impostor"));
    assert_eq!(cluster.get("/v1/nodes/node-2").1["status"], "not_ready");
    let (_, task) = cluster.get(&format!("/v1/tasks/{waiting}"));
    assert_eq!(
        task["status"], "pending",
        "the task for node-2 moved: {task}"
    );
    assert!(
        !log(&cluster, "otherixd")
            .lines()
            .any(|l| l.contains("task redelivered") && l.contains(&waiting)),
        "the task for node-2 was redelivered"
    );
    assert_eq!(cluster.get("/v1/nodes/node-3").0, 404);
    let mut after: Vec<_> = nodes(&cluster)
        .into_iter()
        .filter(|(n, _)| n != "node-4")
        .collect();
    after.sort();
    let mut before = before;
    before.sort();
    assert_eq!(after, before);
    let server_log = log(&cluster, "otherixd");
    assert!(
        !server_log
            .lines()
            .any(|l| l.contains("node registered") && l.contains("node-3")),
        "{server_log}"
    );
}

#[test]
fn revoked_node_is_cut_off_without_a_server_restart() {
    let cluster = Cluster::start();
    let (status, node) = cluster.request("POST", "/v1/nodes/node-1/revoke", None);
    assert_eq!(status, 200, "{node}");
    assert_eq!(node["name"], "node-1");
    assert_eq!(node["status"], "not_ready");

    // The live session drops and every re-attach is refused.
    let reason = "the certificate of node node-1 was revoked";
    file_contains(
        &cluster.dir.path().join("agent-node-1.log"),
        reason,
        Duration::from_secs(30),
    );
    until(
        "a refused re-attach in the server log",
        Duration::from_secs(30),
        || {
            log(&cluster, "otherixd")
                .lines()
                .any(|l| l.contains("agent refused") && l.contains(reason))
                .then_some(())
        },
    );
    // It stays not ready (no heartbeat gets through) for longer than the liveness window.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(cluster.get("/v1/nodes/node-1").1["status"], "not_ready");
    }
    // Revoking again is harmless; an unknown node is 404.
    let (status, _) = cluster.request("POST", "/v1/nodes/node-1/revoke", None);
    assert_eq!(status, 200);
    let (status, body) = cluster.request("POST", "/v1/nodes/nope/revoke", None);
    assert_eq!(status, 404, "{body}");
}

#[test]
fn join_token_route_validates_and_shows_the_ca_fingerprint() {
    let cluster = Cluster::start_with(ClusterOptions {
        nodes: vec![],
        ..Default::default()
    });
    let (status, body) = cluster.request(
        "POST",
        "/v1/nodes/node-9/join-token",
        Some(&json!({"ttl_secs": 120}).to_string()),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["node"], "node-9");
    let token = body["token"].as_str().unwrap();
    assert!(
        token.starts_with("otxj_") && token.ends_with(&format!("_{}", cluster.ca_fingerprint())),
        "{token}"
    );
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));
    for bad in [
        json!({"ttl_secs": 0}),
        json!({"ttl_secs": 7 * 24 * 3600 + 1}),
        json!({"ttl": 5}),
    ] {
        let (status, body) = cluster.request(
            "POST",
            "/v1/nodes/node-9/join-token",
            Some(&bad.to_string()),
        );
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "validation_failed");
    }
    // Plain HTTP on the HTTPS port does not get an answer.
    let plain = cluster.api_url.replacen("https://", "http://", 1);
    let r = otherix_e2e::cluster::http_request(&plain, "GET", "/healthz", None, &[]);
    assert!(!matches!(r, Ok((200, _))), "{r:?}");
}

#[test]
fn mtls_agent_runs_a_vm_and_reattaches_after_restarts() {
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    let mut cluster = Cluster::start();
    let task = cluster.post_vm(
        "mtls-1",
        json!({"image_url": server.url("busybox-amd64.qcow2"), "arch": "amd64",
               "vcpus": 1, "memory_mb": 256}),
    );
    let task: Value = cluster.wait_task(&task, Duration::from_secs(240));
    assert_eq!(task["status"], "success", "{task}");
    let vm = cluster.vm("mtls-1");
    assert_eq!(vm["status"]["phase"], "running", "{vm}");
    assert_eq!(vm["status"]["node"], "node-1");
    assert!(log(&cluster, "agent-node-1").contains("enrolled node node-1"));

    // A restarted agent attaches with its stored certificate (no token); a restarted
    // server keeps its CA, so the agent reconnects on its own.
    let fingerprint = cluster.ca_fingerprint();
    cluster.kill_agent("node-1");
    cluster.restart_agent("node-1");
    cluster.wait_node_ready("node-1");
    cluster.kill_server();
    cluster.start_server();
    assert_eq!(cluster.ca_fingerprint(), fingerprint);
    cluster.wait_node_ready("node-1");
    until("vm re-adopted as running", Duration::from_secs(60), || {
        (cluster.vm("mtls-1")["status"]["phase"] == "running").then_some(())
    });
    let agent_log = log(&cluster, "agent-node-1");
    assert_eq!(agent_log.matches("enrolled node node-1").count(), 1);
    // Neither side refused the stored certificate. (While the server restarts, the agent's
    // reconnects may meet a closed port: "Connection refused" is TCP, not a refusal.)
    let refusals: Vec<&str> = agent_log
        .lines()
        .filter(|l| l.contains("refused") && !l.contains("Connection refused"))
        .collect();
    assert!(refusals.is_empty(), "{refusals:#?}\n{agent_log}");
    assert!(!log(&cluster, "otherixd").contains("agent refused"));
}

#[test]
fn insecure_http_cluster_attaches_agents_by_name() {
    let cluster = Cluster::start_with(ClusterOptions {
        server_args: vec!["--insecure-http".into()],
        ..Default::default()
    });
    assert!(cluster.api_url.starts_with("http://"));
    assert_eq!(cluster.get("/v1/nodes/node-1").1["status"], "ready");
    assert!(!cluster.agent_data_dir("node-1").join("tls").exists());
    let (status, body) = cluster.request("POST", "/v1/nodes/node-1/join-token", None);
    assert_eq!(status, 409, "{body}");
    assert!(log(&cluster, "otherixd").contains("otherixd: api http://"));
}

#[test]
fn agent_with_several_servers_enrolls_and_attaches_past_an_unreachable_one() {
    let cluster = Cluster::start_with(ClusterOptions {
        nodes: vec![],
        ..Default::default()
    });
    // A port nothing listens on: the first --server is down.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("https://{}", l.local_addr().unwrap())
    };
    let token = cluster.join_token("node-9", None);
    let data_dir = cluster.dir.path().join("node-9-agent");
    let mut args = vec!["--server".to_owned(), dead.clone()];
    args.extend(agent_args(
        &cluster,
        "node-9",
        &data_dir,
        &["--join-token", &token],
    ));
    let mut agent = cluster.spawn_agent_process("node-9", &args);
    until(
        "node-9 ready through the second server",
        Duration::from_secs(60),
        || (cluster.get("/v1/nodes/node-9").1["status"] == "ready").then_some(()),
    );
    let agent_log = log(&cluster, "agent-node-9");
    assert!(
        agent_log.contains("trying the next"),
        "the unreachable server was tried first: {agent_log}"
    );
    let _ = agent.kill();
    let _ = agent.wait();
}
