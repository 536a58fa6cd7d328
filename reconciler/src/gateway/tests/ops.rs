//! Fake-agent tests of what entities and agent-backed ops put on the wire: bridge and
//! firmware in task assignments, CancelTask, the logs sync op and the images fan-out.

use std::time::Duration;

use otherix_api::manifest::{NetworkSpec, NetworkType};
use otherix_api::proto::{
    agent_message, server_message, CachedImageInfo, SyncReply, TaskState, TaskUpdate, VmPower,
};
use otherix_api::{CreateObjectRequest, ErrorCode, TaskStatus, VmPhase};

use super::{actor, admin, create_req, harness, report, FakeAgent, Harness};

async fn bridge_network(h: &Harness, name: &str, bridge: &str) {
    h.daemon
        .state
        .entities
        .create_network(CreateObjectRequest {
            name: name.into(),
            spec: NetworkSpec {
                network_type: NetworkType::Bridge,
                bridge: Some(bridge.into()),
            },
            annotations: Default::default(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn gateway_dispatch_vm_with_network_and_firmware_carries_bridge_and_firmware() {
    let h = harness().await;
    bridge_network(&h, "lan", "br0").await;
    let mut agent = FakeAgent::attach(h.agent_addr, "node-1", vec![]).await;

    let mut req = create_req("uefi");
    req.spec.network = Some("lan".into());
    req.spec.firmware = Some("ovmf".into());
    h.daemon.state.vms.create(&actor(), req).await.unwrap();
    let t = agent.next_task().await;
    assert_eq!(t.bridge, "br0");
    let fw = t.firmware.expect("firmware sent");
    assert_eq!(
        (
            fw.name.as_str(),
            fw.r#type.as_str(),
            fw.code.as_str(),
            fw.vars_template.as_str()
        ),
        (
            "ovmf",
            "uefi",
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd"
        )
    );

    // Without either: no bridge, no firmware (the agent picks the arch default).
    h.daemon
        .state
        .vms
        .create(&actor(), create_req("plain"))
        .await
        .unwrap();
    let plain = agent.next_task().await;
    assert_eq!((plain.bridge.as_str(), plain.firmware), ("", None));

    // Redelivery after a reconnect carries them too (they are stored on the VM row).
    drop(agent);
    h.eventually_phase("uefi", VmPhase::Unknown).await;
    let mut agent = FakeAgent::attach(h.agent_addr, "node-1", vec![]).await;
    let mut redelivered = [agent.next_task().await, agent.next_task().await];
    redelivered.sort_by(|a, b| a.vm_name.cmp(&b.vm_name));
    assert_eq!(redelivered[1].vm_name, "uefi");
    assert_eq!(redelivered[1].bridge, "br0");
    assert_eq!(redelivered[1].firmware.as_ref().unwrap().name, "ovmf");
    assert_eq!(redelivered[0].firmware, None);
}

#[tokio::test]
async fn gateway_cancel_running_task_sends_cancel_task_and_agent_settles_it() {
    let h = harness().await;
    let mut agent = FakeAgent::attach(h.agent_addr, "node-1", vec![]).await;
    let acc = h
        .daemon
        .state
        .vms
        .create(&actor(), create_req("big"))
        .await
        .unwrap();
    let t = agent.next_task().await;
    agent
        .send(agent_message::Body::TaskUpdate(TaskUpdate {
            task_id: t.task_id.clone(),
            state: TaskState::Running as i32,
            phase: "downloading image".into(),
            bytes_done: 5,
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

    let answered = h
        .daemon
        .state
        .ops
        .cancel_task(&admin(), acc.task.id)
        .await
        .unwrap();
    assert_eq!(answered.status, TaskStatus::Running);
    match agent.next().await {
        server_message::Body::Cancel(c) => assert_eq!(c.task_id, t.task_id),
        other => panic!("expected CancelTask, got {other:?}"),
    }
    agent
        .send(agent_message::Body::TaskUpdate(TaskUpdate {
            task_id: t.task_id.clone(),
            state: TaskState::Cancelled as i32,
            error_message: "download cancelled".into(),
            vm: Some(report(&t.vm_id, VmPower::Absent, 0)),
            ..Default::default()
        }))
        .await;
    let done = h.finished(&t.task_id).await;
    assert_eq!(done.status, TaskStatus::Cancelled);
    assert_eq!(done.error.unwrap().code, ErrorCode::Cancelled);
    assert_eq!(h.phase("big").await, VmPhase::Failed);
    let err = h
        .daemon
        .state
        .ops
        .cancel_task(&admin(), acc.task.id)
        .await
        .unwrap_err();
    assert!(super::conflict(err).contains("is already cancelled"));
}

#[tokio::test]
async fn gateway_cancel_dispatched_pending_task_cancels_at_once_and_tells_agent() {
    let h = harness().await;
    let mut agent = FakeAgent::attach(h.agent_addr, "node-1", vec![]).await;
    let acc = h
        .daemon
        .state
        .vms
        .create(&actor(), create_req("quick"))
        .await
        .unwrap();
    let t = agent.next_task().await;
    let task = h
        .daemon
        .state
        .ops
        .cancel_task(&admin(), acc.task.id)
        .await
        .unwrap();
    assert_eq!(task.status, TaskStatus::Cancelled);
    match agent.next().await {
        server_message::Body::Cancel(c) => assert_eq!(c.task_id, t.task_id),
        other => panic!("expected CancelTask, got {other:?}"),
    }
    // The agent's late CANCELLED is ignored (already terminal).
    agent.update(&t, TaskState::Cancelled, None).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.phase("quick").await, VmPhase::Failed);
}

#[tokio::test]
async fn gateway_vm_logs_round_trip_through_sync_request() {
    let h = harness().await;
    let mut agent = FakeAgent::attach(h.agent_addr, "node-1", vec![]).await;
    h.daemon
        .state
        .vms
        .create(&actor(), create_req("con"))
        .await
        .unwrap();
    let t = agent.next_task().await;
    agent
        .update(
            &t,
            TaskState::Succeeded,
            Some(report(&t.vm_id, VmPower::Running, 5)),
        )
        .await;
    h.finished(&t.task_id).await;

    let ops = h.daemon.state.ops.clone();
    let logs =
        tokio::spawn(async move { ops.vm_logs("default", "con", Some(10), Some(4096)).await });
    let server_message::Body::SyncRequest(req) = agent.next().await else {
        panic!("expected a sync request")
    };
    assert_eq!(
        (
            req.op.as_str(),
            req.vm_id.as_str(),
            req.offset,
            req.max_bytes
        ),
        ("logs", t.vm_id.as_str(), 10, 4096)
    );
    agent
        .send(agent_message::Body::SyncReply(SyncReply {
            request_id: req.request_id,
            ok: true,
            data: b"login: ".to_vec(),
            next_offset: 17,
            eof: true,
            ..Default::default()
        }))
        .await;
    let chunk = logs.await.unwrap().unwrap();
    assert_eq!(
        (chunk.data.as_str(), chunk.next_offset, chunk.eof),
        ("login: ", 17, true)
    );

    // An agent error keeps its code.
    let ops = h.daemon.state.ops.clone();
    let logs = tokio::spawn(async move { ops.vm_logs("default", "con", None, None).await });
    let server_message::Body::SyncRequest(req) = agent.next().await else {
        panic!("expected a sync request")
    };
    assert_eq!((req.offset, req.max_bytes), (0, 64 * 1024));
    agent
        .send(agent_message::Body::SyncReply(SyncReply {
            request_id: req.request_id,
            ok: false,
            error_code: "not_found".into(),
            error_message: "no serial log".into(),
            ..Default::default()
        }))
        .await;
    match logs.await.unwrap().unwrap_err() {
        crate::service::ServiceError::Api(a) => assert_eq!(a.code, ErrorCode::NotFound),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn gateway_pool_images_fan_out_skips_failing_and_detached_nodes() {
    let h = harness().await;
    let mut a1 = FakeAgent::attach(h.agent_addr, "node-1", vec![]).await;
    let mut a2 = FakeAgent::attach(h.agent_addr, "node-2", vec![]).await;
    // node-3 is ready (registered) but has no stream attached.
    let Some(agent_message::Body::Register(reg3)) = super::register("node-3", vec![]).body else {
        unreachable!("register() builds a Register")
    };
    h.daemon.gateway.register(&reg3).await.unwrap();

    for (prune, op) in [(false, "images"), (true, "prune-images")] {
        let ops = h.daemon.state.ops.clone();
        let call = tokio::spawn(async move { ops.pool_images("default", prune).await });
        let server_message::Body::SyncRequest(r1) = a1.next().await else {
            panic!("expected a sync request")
        };
        let server_message::Body::SyncRequest(r2) = a2.next().await else {
            panic!("expected a sync request")
        };
        assert_eq!((r1.op.as_str(), r1.pool.as_str()), (op, "default"));
        a1.send(agent_message::Body::SyncReply(SyncReply {
            request_id: r1.request_id,
            ok: true,
            images: vec![CachedImageInfo {
                sha256: "ab".repeat(32),
                url: "http://x/img.qcow2".into(),
                size: 1234,
                last_used_ms: 1_700_000_000_000,
                used_by: u32::from(!prune),
            }],
            ..Default::default()
        }))
        .await;
        a2.send(agent_message::Body::SyncReply(SyncReply {
            request_id: r2.request_id,
            ok: false,
            error_code: "internal".into(),
            error_message: "disk on fire".into(),
            ..Default::default()
        }))
        .await;
        let list = call.await.unwrap().unwrap();
        assert_eq!(list.items.len(), 1, "{op}");
        let img = &list.items[0];
        assert_eq!((img.node.as_str(), img.size), ("node-1", 1234));
        assert_eq!(img.last_used.as_deref(), Some("2023-11-14T22:13:20.000Z"));
    }
}
