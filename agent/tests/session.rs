//! The gateway session against an in-process fake `AgentGateway` server over real gRPC:
//! Register contents (with re-adopted VMs), heartbeats, task routing and terminal updates,
//! sync replies, reconnect after the server drops the stream, and redelivery of a finished
//! task re-sending its result.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use otherix_agent::executor::Executor;
use otherix_agent::host::Accel;
use otherix_agent::local_driver::LocalDriver;
use otherix_agent::outbox::Outbox;
use otherix_agent::session::{self, NodeInfo, Transport};
use otherix_agent::vm_registry::{VmRecord, VmRegistry};
use otherix_api::proto::agent_gateway_server::{AgentGateway, AgentGatewayServer};
use otherix_api::proto::{
    agent_message, server_message, AgentMessage, Registered, ServerMessage, SyncRequest,
    TaskAssignment, TaskState, VmPower,
};
use otherix_api::{Arch, VmSpec};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::StreamExt;
use uuid::Uuid;

type ToAgent = mpsc::Sender<Result<ServerMessage, tonic::Status>>;

/// Forwards everything agents send to `seen`; hands each connection's sender to the test.
struct FakeGateway {
    seen: mpsc::UnboundedSender<agent_message::Body>,
    connections: mpsc::UnboundedSender<ToAgent>,
}

#[tonic::async_trait]
impl AgentGateway for FakeGateway {
    type AttachStream = ReceiverStream<Result<ServerMessage, tonic::Status>>;
    type ConsoleStream = ReceiverStream<Result<otherix_api::proto::ConsoleFrame, tonic::Status>>;

    async fn console(
        &self,
        _request: tonic::Request<tonic::Streaming<otherix_api::proto::ConsoleFrame>>,
    ) -> Result<tonic::Response<Self::ConsoleStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the fake gateway has no consoles",
        ))
    }

    async fn enroll(
        &self,
        _request: tonic::Request<otherix_api::proto::EnrollRequest>,
    ) -> Result<tonic::Response<otherix_api::proto::EnrollResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the fake gateway does not enroll",
        ))
    }

    async fn attach(
        &self,
        request: tonic::Request<tonic::Streaming<AgentMessage>>,
    ) -> Result<tonic::Response<Self::AttachStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let seen = self.seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = inbound.next().await {
                if let Some(body) = msg.body {
                    let _ = seen.send(body);
                }
            }
        });
        let (tx, rx) = mpsc::channel(16);
        tx.send(Ok(ServerMessage {
            body: Some(server_message::Body::Registered(Registered {
                node_id: "node-id-1".into(),
                heartbeat_interval_ms: 100,
            })),
        }))
        .await
        .unwrap();
        self.connections.send(tx.clone()).unwrap();
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

async fn next_matching<T>(
    rx: &mut mpsc::UnboundedReceiver<agent_message::Body>,
    mut pick: impl FnMut(agent_message::Body) -> Option<T>,
) -> T {
    let wait = async {
        loop {
            if let Some(found) = pick(rx.recv().await.expect("gateway gone")) {
                return found;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("expected message not seen within 10s")
}

fn send(to_agent: &ToAgent, body: server_message::Body) {
    to_agent
        .try_send(Ok(ServerMessage { body: Some(body) }))
        .unwrap();
}

#[tokio::test]
async fn session_registers_routes_tasks_and_reconnects() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let (conn_tx, mut connections) = mpsc::unbounded_channel();
    let gateway = FakeGateway {
        seen: seen_tx,
        connections: conn_tx,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentGatewayServer::new(gateway))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    // An agent with one recorded (stopped) VM on disk.
    let dir = tempfile::tempdir().unwrap();
    let pool_path: PathBuf = dir.path().join("pool");
    let registry = Arc::new(VmRegistry::new(dir.path()));
    let vm_id = Uuid::new_v4();
    let spec = VmSpec::new("http://127.0.0.1:1/img", Arch::Amd64);
    registry
        .save(&VmRecord {
            vm_id,
            name: "web-1".into(),
            pool: "default".into(),
            pool_path: pool_path.clone(),
            spec: spec.clone(),
            base_image_sha256: None,
        })
        .unwrap();
    let driver = Arc::new(LocalDriver::new(registry.clone(), Accel::Tcg, false));
    let (outbox, outbox_rx) = Outbox::new();
    let pools = vec![("default".to_string(), pool_path.clone())];
    let executor = Executor::new(driver.clone(), registry, dir.path(), outbox.clone(), pools);
    let node = NodeInfo {
        node: "node-1".into(),
        host_arch: "amd64".into(),
        guest_arches: vec!["amd64".into()],
        accel: "tcg".into(),
        vcpus: 2,
        memory_mb: 4096,
        pools: vec![("default".into(), pool_path.clone())],
        allow_file_urls: false,
        firmware_dirs: vec!["/usr/share/OVMF".into()],
    };
    tokio::spawn(session::run(
        vec![format!("http://{addr}")],
        Transport::Plain,
        node,
        executor,
        driver,
        outbox,
        outbox_rx,
    ));

    let register = next_matching(&mut seen, |b| match b {
        agent_message::Body::Register(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(register.node, "node-1");
    assert_eq!(register.accel, "tcg");
    assert_eq!(register.pools[0].name, "default");
    assert_eq!(register.pools[0].path, pool_path.display().to_string());
    assert_eq!(register.firmware_dirs, ["/usr/share/OVMF"]);
    assert_eq!(register.vms.len(), 1);
    assert_eq!(register.vms[0].vm_id, vm_id.to_string());
    assert_eq!(register.vms[0].power, VmPower::Stopped as i32);
    let conn = connections.recv().await.unwrap();

    next_matching(&mut seen, |b| match b {
        agent_message::Body::Heartbeat(h) => Some(h),
        _ => None,
    })
    .await;

    // A task runs and reports a terminal update with the VM's state.
    let task = TaskAssignment {
        task_id: Uuid::new_v4().to_string(),
        kind: "vm.poweroff".into(),
        vm_id: vm_id.to_string(),
        vm_name: "web-1".into(),
        pool: "default".into(),
        pool_path: pool_path.display().to_string(),
        spec_json: serde_json::to_string(&spec).unwrap(),
        stop_timeout_ms: 0,
        ..Default::default()
    };
    send(&conn, server_message::Body::Task(task.clone()));
    let done = next_matching(&mut seen, |b| match b {
        agent_message::Body::TaskUpdate(u) if u.state != TaskState::Running as i32 => Some(u),
        _ => None,
    })
    .await;
    assert_eq!(done.task_id, task.task_id);
    assert_eq!(done.state, TaskState::Succeeded as i32);
    assert_eq!(done.vm.as_ref().unwrap().power, VmPower::Stopped as i32);

    // Sync op on a stopped VM: conflict.
    send(
        &conn,
        server_message::Body::SyncRequest(SyncRequest {
            request_id: "req-1".into(),
            op: "pause".into(),
            vm_id: vm_id.to_string(),
            ..Default::default()
        }),
    );
    let reply = next_matching(&mut seen, |b| match b {
        agent_message::Body::SyncReply(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(reply.request_id, "req-1");
    assert!(!reply.ok);
    assert_eq!(reply.error_code, "conflict");

    // The server drops the stream: the agent reconnects and registers again.
    drop(conn);
    let again = next_matching(&mut seen, |b| match b {
        agent_message::Body::Register(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(again.node, "node-1");
    let conn = connections.recv().await.unwrap();

    // Redelivery of the finished task re-sends its result.
    send(&conn, server_message::Body::Task(task.clone()));
    let resent = next_matching(&mut seen, |b| match b {
        agent_message::Body::TaskUpdate(u) if u.task_id == task.task_id => Some(u),
        _ => None,
    })
    .await;
    assert_eq!(resent, done);
}
