//! Drift and retries through the fake agent: the restart policy after an unsolicited stop
//! (crash vs clean guest poweroff), and failed creates/starts retried after backoff, never
//! in a tight loop. Backoff is shortened with `DaemonOptions`.

use std::time::{Duration, Instant};

use otherix_api::{RestartPolicy, TaskKind};

use super::*;
use crate::daemon::DaemonOptions;
use crate::reconcile::retry::Backoff;

const BASE: Duration = Duration::from_millis(300);

async fn short_backoff_harness() -> Harness {
    harness_with(DaemonOptions {
        retry_backoff: Backoff {
            base: BASE,
            cap: Duration::from_secs(5),
        },
        ..Default::default()
    })
    .await
}

/// Creates `name` with `policy` and has the agent boot it; returns the vm id.
async fn running_vm(
    h: &Harness,
    agent: &mut FakeAgent,
    name: &str,
    policy: RestartPolicy,
) -> String {
    let mut req = create_req(name);
    req.spec.restart_policy = policy;
    h.daemon.state.vms.create(&actor(), req).await.unwrap();
    let t = agent.next_task().await;
    assert_eq!(t.kind, "vm.create");
    agent
        .update(
            &t,
            TaskState::Succeeded,
            Some(report(&t.vm_id, VmPower::Running, 10)),
        )
        .await;
    h.finished(&t.task_id).await;
    t.vm_id
}

async fn stopped_on_its_own(agent: &FakeAgent, vm_id: &str, guest_shutdown: bool) {
    agent
        .send(agent_message::Body::VmReport(VmReport {
            guest_shutdown,
            ..report(vm_id, VmPower::Stopped, 0)
        }))
        .await;
}

/// Asserts the agent is sent nothing for `d`.
async fn no_message_for(agent: &mut FakeAgent, d: Duration) {
    if let Ok(m) = tokio::time::timeout(d, agent.rx.message()).await {
        panic!("expected no message, got {m:?}");
    }
}

#[tokio::test]
async fn restart_policy_on_failure_crash_restarts_after_backoff_and_shows_why() {
    let h = short_backoff_harness().await;
    let mut agent = FakeAgent::attach(h.agent_addr, "node-1", vec![]).await;
    let vm_id = running_vm(&h, &mut agent, "web", RestartPolicy::OnFailure).await;

    let crashed_at = Instant::now();
    stopped_on_its_own(&agent, &vm_id, false).await;
    h.eventually_phase("web", VmPhase::Stopped).await;
    let vm = h.daemon.state.vms.get("default", "web").await.unwrap();
    assert_eq!(vm.spec.desired_phase, DesiredPhase::Running);
    let err = vm.status.last_error.unwrap();
    assert_eq!(err.code, ErrorCode::QemuFailed);
    assert!(
        err.message.contains("(retry 1: vm.start at "),
        "{}",
        err.message
    );

    let t = agent.next_task().await;
    assert_eq!(t.kind, "vm.start");
    assert!(crashed_at.elapsed() >= BASE, "restarted before the backoff");
    agent
        .update(
            &t,
            TaskState::Succeeded,
            Some(report(&vm_id, VmPower::Running, 11)),
        )
        .await;
    h.finished(&t.task_id).await;
    let vm = h.daemon.state.vms.get("default", "web").await.unwrap();
    assert_eq!(
        (vm.status.phase, vm.status.pid),
        (VmPhase::Running, Some(11))
    );
    assert!(vm.status.last_error.is_none());
}

#[tokio::test]
async fn restart_policy_on_failure_clean_guest_poweroff_stays_stopped() {
    let h = short_backoff_harness().await;
    let mut agent = FakeAgent::attach(h.agent_addr, "node-1", vec![]).await;
    let vm_id = running_vm(&h, &mut agent, "web", RestartPolicy::OnFailure).await;
    let gen = h
        .daemon
        .state
        .vms
        .get("default", "web")
        .await
        .unwrap()
        .generation;
    stopped_on_its_own(&agent, &vm_id, true).await;
    h.eventually_phase("web", VmPhase::Stopped).await;
    let vm = h.daemon.state.vms.get("default", "web").await.unwrap();
    assert_eq!(vm.spec.desired_phase, DesiredPhase::Stopped);
    assert_eq!(vm.generation, gen + 1, "desired_phase is spec");
    assert!(vm.status.last_error.is_none());
    no_message_for(&mut agent, BASE * 3).await;
}

#[tokio::test]
async fn restart_policy_always_clean_guest_poweroff_is_restarted() {
    let h = short_backoff_harness().await;
    let mut agent = FakeAgent::attach(h.agent_addr, "node-1", vec![]).await;
    let vm_id = running_vm(&h, &mut agent, "web", RestartPolicy::Always).await;
    stopped_on_its_own(&agent, &vm_id, true).await;
    let t = agent.next_task().await;
    assert_eq!(t.kind, "vm.start");
    let vm = h.daemon.state.vms.get("default", "web").await.unwrap();
    assert_eq!(vm.spec.desired_phase, DesiredPhase::Running);
}

#[tokio::test]
async fn restart_policy_never_crash_stays_stopped() {
    let h = short_backoff_harness().await;
    let mut agent = FakeAgent::attach(h.agent_addr, "node-1", vec![]).await;
    let vm_id = running_vm(&h, &mut agent, "web", RestartPolicy::Never).await;
    stopped_on_its_own(&agent, &vm_id, false).await;
    h.eventually_phase("web", VmPhase::Stopped).await;
    let vm = h.daemon.state.vms.get("default", "web").await.unwrap();
    assert_eq!(vm.spec.desired_phase, DesiredPhase::Stopped);
    no_message_for(&mut agent, BASE * 3).await;
}

async fn fail(agent: &FakeAgent, t: &TaskAssignment, code: &str, power: VmPower) {
    agent
        .send(agent_message::Body::TaskUpdate(TaskUpdate {
            task_id: t.task_id.clone(),
            state: TaskState::Failed as i32,
            error_code: code.into(),
            error_message: format!("{code} happened"),
            vm: Some(report(&t.vm_id, power, 0)),
            ..Default::default()
        }))
        .await;
}

#[tokio::test]
async fn failed_create_is_retried_with_growing_backoff_not_in_a_tight_loop() {
    let h = short_backoff_harness().await;
    let mut agent = FakeAgent::attach(h.agent_addr, "node-1", vec![]).await;
    h.daemon
        .state
        .vms
        .create(&actor(), create_req("bad"))
        .await
        .unwrap();
    let mut t = agent.next_task().await;
    for attempt in 1..=2u32 {
        let failed_at = Instant::now();
        fail(&agent, &t, "image_download_failed", VmPower::Absent).await;
        h.finished(&t.task_id).await;
        let vm = h.daemon.state.vms.get("default", "bad").await.unwrap();
        assert_eq!(vm.status.phase, VmPhase::Failed);
        let err = vm.status.last_error.unwrap();
        assert_eq!(err.code, ErrorCode::ImageDownloadFailed);
        assert!(
            err.message
                .contains(&format!("(retry {attempt}: vm.create at ")),
            "{}",
            err.message
        );
        t = agent.next_task().await;
        assert_eq!(t.kind, "vm.create");
        let waited = failed_at.elapsed();
        let backoff = BASE * 2u32.pow(attempt - 1);
        assert!(
            waited >= backoff,
            "attempt {attempt}: retried after {waited:?} < {backoff:?}"
        );
    }
    // The retry succeeds: running, error and retry cleared.
    agent
        .update(
            &t,
            TaskState::Succeeded,
            Some(report(&t.vm_id, VmPower::Running, 5)),
        )
        .await;
    h.finished(&t.task_id).await;
    let vm = h.daemon.state.vms.get("default", "bad").await.unwrap();
    assert_eq!(vm.status.phase, VmPhase::Running);
    assert!(vm.status.last_error.is_none());
    let tasks = h
        .daemon
        .state
        .tasks
        .list(Some("default"), Some("bad"), None, None)
        .await
        .unwrap();
    let kinds: Vec<TaskKind> = tasks.items.iter().map(|t| t.kind).collect();
    assert_eq!(kinds, [TaskKind::VmCreate; 3]);
}

#[tokio::test]
async fn failed_start_is_retried_and_desired_stays_running() {
    let h = short_backoff_harness().await;
    let mut agent = FakeAgent::attach(h.agent_addr, "node-1", vec![]).await;
    running_vm(&h, &mut agent, "web", RestartPolicy::OnFailure).await;
    h.daemon
        .state
        .vms
        .stop(&actor(), "web", None)
        .await
        .unwrap();
    let t = agent.next_task().await;
    agent
        .update(
            &t,
            TaskState::Succeeded,
            Some(report(&t.vm_id, VmPower::Stopped, 0)),
        )
        .await;
    h.finished(&t.task_id).await;
    h.daemon.state.vms.start(&actor(), "web").await.unwrap();
    let t = agent.next_task().await;
    assert_eq!(t.kind, "vm.start");
    fail(&agent, &t, "qemu_failed", VmPower::Stopped).await;
    h.finished(&t.task_id).await;
    let vm = h.daemon.state.vms.get("default", "web").await.unwrap();
    assert_eq!(vm.status.phase, VmPhase::Stopped);
    assert_eq!(vm.spec.desired_phase, DesiredPhase::Running);
    let t = agent.next_task().await;
    assert_eq!(t.kind, "vm.start");
}
