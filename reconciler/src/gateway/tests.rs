//! Gateway tests with a fake agent: a real tonic client speaking the agent protocol to
//! the real gateway on a loopback port, driving the real services and store.

use std::net::SocketAddr;
use std::time::Duration;

use otherix_api::proto::agent_gateway_client::AgentGatewayClient;
use otherix_api::proto::{
    agent_message, server_message, AgentMessage, Heartbeat, PoolPath, Register, ServerMessage,
    SyncReply, TaskAssignment, TaskState, TaskUpdate, VmPower, VmReport,
};
use otherix_api::{
    Arch, CreateVmRequest, DesiredPhase, ErrorCode, NodeStatus, TaskStatus, VmPhase, VmSpec,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Streaming;

use crate::daemon::Daemon;
use crate::service::ServiceError;
use crate::store::default_database_url;

mod liveness;
mod mutation;
mod ops;
mod restart;
mod tls;

struct Harness {
    daemon: Daemon,
    agent_addr: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    harness_with(crate::daemon::DaemonOptions::default()).await
}

async fn harness_with(opts: crate::daemon::DaemonOptions) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::open_with(&default_database_url(dir.path()), opts)
        .await
        .unwrap();
    daemon.spawn_background(Duration::from_millis(200));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_addr = listener.local_addr().unwrap();
    let server = daemon.gateway.clone().into_server();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    Harness {
        daemon,
        agent_addr,
        _dir: dir,
    }
}

/// A fake agent: what a real agent sends, scripted by the test.
struct FakeAgent {
    tx: mpsc::Sender<AgentMessage>,
    rx: Streaming<ServerMessage>,
}

fn register(node: &str, vms: Vec<VmReport>) -> AgentMessage {
    AgentMessage {
        body: Some(agent_message::Body::Register(Register {
            node: node.into(),
            host_arch: "amd64".into(),
            guest_arches: vec!["amd64".into(), "arm64".into()],
            accel: "tcg".into(),
            vcpus: 8,
            memory_mb: 16384,
            pools: vec![PoolPath {
                name: "default".into(),
                path: "/srv/pool".into(),
            }],
            agent_version: "test".into(),
            allow_file_urls: false,
            firmware_dirs: vec![],
            vms,
        })),
    }
}

impl FakeAgent {
    async fn attach(addr: SocketAddr, node: &str, vms: Vec<VmReport>) -> FakeAgent {
        let mut client = AgentGatewayClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(64);
        tx.send(register(node, vms)).await.unwrap();
        let rx = client
            .attach(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut agent = FakeAgent { tx, rx };
        match agent.next().await {
            // 1 s with the default grace period, less with a shorter one (the exact rule
            // is `Liveness::heartbeat_every`'s table test).
            server_message::Body::Registered(r) => assert!(
                (100..=1000).contains(&r.heartbeat_interval_ms),
                "heartbeat every {} ms",
                r.heartbeat_interval_ms
            ),
            other => panic!("expected Registered, got {other:?}"),
        }
        agent
    }

    async fn next(&mut self) -> server_message::Body {
        let msg = tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("server message within 5 s")
            .unwrap()
            .expect("stream open");
        msg.body.expect("message has a body")
    }

    async fn next_task(&mut self) -> TaskAssignment {
        match self.next().await {
            server_message::Body::Task(t) => t,
            other => panic!("expected a task, got {other:?}"),
        }
    }

    async fn send(&self, body: agent_message::Body) {
        self.tx
            .send(AgentMessage { body: Some(body) })
            .await
            .unwrap();
    }

    async fn update(&self, task: &TaskAssignment, state: TaskState, vm: Option<VmReport>) {
        self.send(agent_message::Body::TaskUpdate(TaskUpdate {
            task_id: task.task_id.clone(),
            state: state as i32,
            phase: "working".into(),
            vm,
            ..Default::default()
        }))
        .await;
    }
}

fn report(vm_id: &str, power: VmPower, pid: u32) -> VmReport {
    VmReport {
        vm_id: vm_id.into(),
        power: power as i32,
        pid,
        pool: "default".into(),
        serial_log: "/var/lib/serial.log".into(),
        ..Default::default()
    }
}

/// The project and requester the tests act as.
fn actor() -> crate::service::Actor {
    crate::service::Actor::new("default", "test")
}

/// An admin caller, for reads that check visibility.
fn admin() -> crate::auth::Caller {
    crate::auth::Caller {
        name: "test".into(),
        role: otherix_api::Role::Admin,
        project: "default".into(),
    }
}

fn create_req(name: &str) -> CreateVmRequest {
    CreateVmRequest {
        name: name.into(),
        spec: VmSpec::new("http://127.0.0.1:9/img.qcow2", Arch::Amd64),
        labels: Default::default(),
    }
}

impl Harness {
    /// Waits for the task to reach a terminal status.
    async fn finished(&self, task_id: &str) -> otherix_api::Task {
        let id = task_id.parse().unwrap();
        let t = self
            .daemon
            .state
            .tasks
            .wait(&admin(), id, 5, None)
            .await
            .unwrap();
        assert!(t.status.is_terminal(), "task {task_id} still {}", t.status);
        t
    }

    async fn phase(&self, name: &str) -> VmPhase {
        self.daemon
            .state
            .vms
            .get("default", name)
            .await
            .unwrap()
            .status
            .phase
    }

    async fn eventually_phase(&self, name: &str, want: VmPhase) {
        for _ in 0..250 {
            if self.phase(name).await == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "vm {name} never reached {want}; is {}",
            self.phase(name).await
        );
    }
}

fn conflict(e: ServiceError) -> String {
    match e {
        ServiceError::Api(a) if a.code == ErrorCode::Conflict => a.message,
        other => panic!("expected conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn gateway_full_lifecycle_drives_phases_through_agent() {
    let h = harness().await;
    let vms = &h.daemon.state.vms;
    let mut agent = FakeAgent::attach(h.agent_addr, "node-1", vec![]).await;

    // create -> vm.create dispatched with the placement
    let acc = vms.create(&actor(), create_req("web-1")).await.unwrap();
    assert_eq!(acc.task.status, TaskStatus::Pending);
    assert_eq!(acc.vm.as_ref().unwrap().status.phase, VmPhase::Creating);
    let t = agent.next_task().await;
    assert_eq!(t.kind, "vm.create");
    assert_eq!(t.task_id, acc.task.id.to_string());
    assert_eq!(
        (t.pool.as_str(), t.pool_path.as_str()),
        ("default", "/srv/pool")
    );
    let spec: VmSpec = serde_json::from_str(&t.spec_json).unwrap();
    assert_eq!(spec.image_url, "http://127.0.0.1:9/img.qcow2");

    // RUNNING with progress, then a long-poll that the final update wakes
    agent
        .send(agent_message::Body::TaskUpdate(TaskUpdate {
            task_id: t.task_id.clone(),
            state: TaskState::Running as i32,
            phase: "downloading image".into(),
            bytes_done: 10,
            bytes_total: 100,
            ..Default::default()
        }))
        .await;
    let running = h
        .daemon
        .state
        .tasks
        .wait(&admin(), acc.task.id, 5, Some("pending"))
        .await
        .unwrap();
    assert_eq!(running.status, TaskStatus::Running);
    assert_eq!(running.progress.unwrap().bytes_total, Some(100));
    let tasks = h.daemon.state.tasks.clone();
    let id = acc.task.id;
    let poll = tokio::spawn(async move { tasks.wait(&admin(), id, 10, None).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    agent
        .update(
            &t,
            TaskState::Succeeded,
            Some(report(&t.vm_id, VmPower::Running, 100)),
        )
        .await;
    let done = poll.await.unwrap();
    assert_eq!(done.status, TaskStatus::Success);
    let vm = vms.get("default", "web-1").await.unwrap();
    assert_eq!(vm.status.phase, VmPhase::Running);
    assert_eq!(vm.status.pid, Some(100));
    assert_eq!(vm.status.node.as_deref(), Some("node-1"));

    // start of a running vm: already-succeeded task, nothing sent to the agent
    let acc = vms.start(&actor(), "web-1").await.unwrap();
    assert_eq!(acc.task.status, TaskStatus::Success);
    assert_eq!(acc.task.kind, otherix_api::TaskKind::VmStart);

    // stop with a timeout override
    let acc = vms.stop(&actor(), "web-1", Some(5)).await.unwrap();
    assert_eq!(acc.vm.as_ref().unwrap().status.phase, VmPhase::Stopping);
    let t = agent.next_task().await;
    assert_eq!((t.kind.as_str(), t.stop_timeout_ms), ("vm.stop", 5000));
    assert!(conflict(vms.stop(&actor(), "web-1", None).await.unwrap_err()).contains("is stopping"));
    agent
        .update(
            &t,
            TaskState::Succeeded,
            Some(report(&t.vm_id, VmPower::Stopped, 0)),
        )
        .await;
    h.finished(&t.task_id).await;
    let vm = vms.get("default", "web-1").await.unwrap();
    assert_eq!(vm.status.phase, VmPhase::Stopped);
    assert_eq!(vm.status.pid, None);
    assert_eq!(vm.spec.desired_phase, DesiredPhase::Stopped);

    // start
    vms.start(&actor(), "web-1").await.unwrap();
    let t = agent.next_task().await;
    assert_eq!(t.kind, "vm.start");
    agent
        .update(
            &t,
            TaskState::Succeeded,
            Some(report(&t.vm_id, VmPower::Running, 101)),
        )
        .await;
    h.finished(&t.task_id).await;
    assert_eq!(h.phase("web-1").await, VmPhase::Running);

    // pause (sync) and pausing again is a conflict
    let vms2 = h.daemon.state.vms.clone();
    let pause = tokio::spawn(async move { vms2.pause("default", "web-1").await });
    let server_message::Body::SyncRequest(req) = agent.next().await else {
        panic!("expected a sync request")
    };
    assert_eq!(req.op, "pause");
    agent
        .send(agent_message::Body::SyncReply(SyncReply {
            request_id: req.request_id,
            ok: true,
            vm: Some(report(&req.vm_id, VmPower::Paused, 101)),
            ..Default::default()
        }))
        .await;
    let vm = pause.await.unwrap().unwrap();
    assert_eq!(
        (vm.status.phase, vm.status.pid),
        (VmPhase::Paused, Some(101))
    );
    assert!(
        conflict(vms.pause("default", "web-1").await.unwrap_err()).contains("pause needs running")
    );

    // resume: the agent refuses with a conflict -> 409
    let vms2 = h.daemon.state.vms.clone();
    let resume = tokio::spawn(async move { vms2.resume("default", "web-1").await });
    let server_message::Body::SyncRequest(req) = agent.next().await else {
        panic!("expected a sync request")
    };
    agent
        .send(agent_message::Body::SyncReply(SyncReply {
            request_id: req.request_id,
            ok: false,
            error_code: "conflict".into(),
            error_message: "vm is not paused".into(),
            ..Default::default()
        }))
        .await;
    conflict(resume.await.unwrap().unwrap_err());

    // poweroff from paused
    vms.poweroff(&actor(), "web-1").await.unwrap();
    let t = agent.next_task().await;
    assert_eq!(t.kind, "vm.poweroff");
    agent
        .update(
            &t,
            TaskState::Succeeded,
            Some(report(&t.vm_id, VmPower::Stopped, 0)),
        )
        .await;
    h.finished(&t.task_id).await;
    assert_eq!(h.phase("web-1").await, VmPhase::Stopped);

    // delete -> soft-deleted, name free again
    let acc = vms.delete(&actor(), "web-1").await.unwrap();
    assert_eq!(acc.vm.as_ref().unwrap().status.phase, VmPhase::Deleting);
    let t = agent.next_task().await;
    assert_eq!(t.kind, "vm.delete");
    agent
        .update(
            &t,
            TaskState::Succeeded,
            Some(report(&t.vm_id, VmPower::Absent, 0)),
        )
        .await;
    h.finished(&t.task_id).await;
    match vms.get("default", "web-1").await.unwrap_err() {
        ServiceError::Api(a) => assert_eq!(a.code, ErrorCode::NotFound),
        other => panic!("{other:?}"),
    }
    let again = vms.create(&actor(), create_req("web-1")).await.unwrap();
    assert_ne!(again.vm.unwrap().id.to_string(), t.vm_id);
    let t = agent.next_task().await;
    assert_eq!(t.kind, "vm.create");
}

#[tokio::test]
async fn gateway_failed_stop_keeps_running_without_retry() {
    let h = harness().await;
    let vms = &h.daemon.state.vms;
    let mut agent = FakeAgent::attach(h.agent_addr, "node-1", vec![]).await;
    vms.create(&actor(), create_req("db")).await.unwrap();
    let t = agent.next_task().await;
    agent
        .update(
            &t,
            TaskState::Succeeded,
            Some(report(&t.vm_id, VmPower::Running, 7)),
        )
        .await;
    h.finished(&t.task_id).await;

    vms.stop(&actor(), "db", None).await.unwrap();
    let t = agent.next_task().await;
    assert_eq!(t.stop_timeout_ms, 60_000);
    agent
        .send(agent_message::Body::TaskUpdate(TaskUpdate {
            task_id: t.task_id.clone(),
            state: TaskState::Failed as i32,
            error_code: "stop_timeout".into(),
            error_message: "guest did not power off within 60 s".into(),
            vm: Some(report(&t.vm_id, VmPower::Running, 7)),
            ..Default::default()
        }))
        .await;
    let task = h.finished(&t.task_id).await;
    assert_eq!(task.error.unwrap().code, ErrorCode::StopTimeout);
    let vm = vms.get("default", "db").await.unwrap();
    assert_eq!(vm.status.phase, VmPhase::Running);
    assert_eq!(vm.status.last_error.unwrap().code, ErrorCode::StopTimeout);
    // Two resyncs later, still no new task.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(vms
        .get("default", "db")
        .await
        .unwrap()
        .status
        .current_task
        .is_none());
}

#[tokio::test]
async fn gateway_reconnect_redelivers_open_task_and_restores_phase() {
    let h = harness().await;
    let vms = &h.daemon.state.vms;
    let mut agent = FakeAgent::attach(h.agent_addr, "node-1", vec![]).await;
    vms.create(&actor(), create_req("app")).await.unwrap();
    let t = agent.next_task().await;
    agent
        .update(
            &t,
            TaskState::Succeeded,
            Some(report(&t.vm_id, VmPower::Running, 9)),
        )
        .await;
    h.finished(&t.task_id).await;
    agent
        .send(agent_message::Body::Heartbeat(Heartbeat { sent_at_ms: 1 }))
        .await;

    // The agent goes away: the node is not ready and its VM shows unknown.
    drop(agent);
    h.eventually_phase("app", VmPhase::Unknown).await;
    let node = h.daemon.state.cluster.node("node-1").await.unwrap();
    assert_eq!(node.status, NodeStatus::NotReady);
    conflict(vms.stop(&actor(), "app", None).await.unwrap_err());

    // It comes back reporting the VM running: phase restored, node ready.
    let vm_id = t.vm_id.clone();
    let mut agent = FakeAgent::attach(
        h.agent_addr,
        "node-1",
        vec![report(&vm_id, VmPower::Running, 9)],
    )
    .await;
    assert_eq!(h.phase("app").await, VmPhase::Running);

    // A task emitted while detached is redelivered on the next attach.
    let acc = vms.reboot(&actor(), "app").await.unwrap();
    let t = agent.next_task().await;
    assert_eq!(t.kind, "vm.reboot");
    drop(agent);
    h.eventually_phase("app", VmPhase::Unknown).await;
    let mut agent = FakeAgent::attach(h.agent_addr, "node-1", vec![]).await;
    let t = agent.next_task().await;
    assert_eq!(t.task_id, acc.task.id.to_string());
    agent
        .update(
            &t,
            TaskState::Succeeded,
            Some(report(&vm_id, VmPower::Running, 10)),
        )
        .await;
    h.finished(&t.task_id).await;
    let vm = vms.get("default", "app").await.unwrap();
    assert_eq!(
        (vm.status.phase, vm.status.pid),
        (VmPhase::Running, Some(10))
    );
}

#[tokio::test]
async fn gateway_guest_poweroff_report_sets_stopped_and_desired_stopped() {
    let h = harness().await;
    let vms = &h.daemon.state.vms;
    let mut agent = FakeAgent::attach(h.agent_addr, "node-1", vec![]).await;
    vms.create(&actor(), create_req("guest")).await.unwrap();
    let t = agent.next_task().await;
    agent
        .update(
            &t,
            TaskState::Succeeded,
            Some(report(&t.vm_id, VmPower::Running, 3)),
        )
        .await;
    h.finished(&t.task_id).await;
    agent
        .send(agent_message::Body::VmReport(VmReport {
            guest_shutdown: true,
            ..report(&t.vm_id, VmPower::Stopped, 0)
        }))
        .await;
    h.eventually_phase("guest", VmPhase::Stopped).await;
    let vm = vms.get("default", "guest").await.unwrap();
    assert_eq!(vm.spec.desired_phase, DesiredPhase::Stopped);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(vms
        .get("default", "guest")
        .await
        .unwrap()
        .status
        .current_task
        .is_none());
}

#[tokio::test]
async fn gateway_failed_create_marks_failed_and_delete_cleans_up() {
    let h = harness().await;
    let vms = &h.daemon.state.vms;
    let mut agent = FakeAgent::attach(h.agent_addr, "node-1", vec![]).await;
    vms.create(&actor(), create_req("bad")).await.unwrap();
    let t = agent.next_task().await;
    agent
        .send(agent_message::Body::TaskUpdate(TaskUpdate {
            task_id: t.task_id.clone(),
            state: TaskState::Failed as i32,
            error_code: "image_checksum_mismatch".into(),
            error_message: "sha256 mismatch".into(),
            vm: Some(report(&t.vm_id, VmPower::Absent, 0)),
            ..Default::default()
        }))
        .await;
    h.finished(&t.task_id).await;
    let vm = vms.get("default", "bad").await.unwrap();
    assert_eq!(vm.status.phase, VmPhase::Failed);
    assert_eq!(
        vm.status.last_error.unwrap().code,
        ErrorCode::ImageChecksumMismatch
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(vms
        .get("default", "bad")
        .await
        .unwrap()
        .status
        .current_task
        .is_none());
    vms.delete(&actor(), "bad").await.unwrap();
    let t = agent.next_task().await;
    assert_eq!(t.kind, "vm.delete");
}
