//! Node liveness through the fake agent: a node whose stream stays open but whose
//! heartbeats stop is marked not ready only after the grace period; beats arriving keep
//! it ready; a closed stream marks it at once.

use std::time::{Duration, Instant};

use super::*;
use crate::daemon::DaemonOptions;
use crate::gateway::Liveness;

const GRACE: Duration = Duration::from_secs(6);

async fn status(h: &Harness) -> NodeStatus {
    h.daemon.state.cluster.node("node-1").await.unwrap().status
}

/// Waits (5 s at most) for node-1 to have `want`.
async fn until(h: &Harness, want: NodeStatus) {
    for _ in 0..250 {
        if status(h).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("node-1 never became {want:?}");
}

#[tokio::test]
async fn silent_node_is_not_ready_only_after_the_grace_period() {
    let h = harness_with(DaemonOptions {
        liveness: Liveness { grace: GRACE },
        ..Default::default()
    })
    .await;
    let agent = FakeAgent::attach(h.agent_addr, "node-1", vec![]).await;
    // Beats every 300 ms for longer than the grace period: ready throughout.
    let t0 = Instant::now();
    while t0.elapsed() < GRACE + Duration::from_secs(1) {
        agent
            .send(agent_message::Body::Heartbeat(Heartbeat { sent_at_ms: 1 }))
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(status(&h).await, NodeStatus::Ready, "at {:?}", t0.elapsed());
    }
    // Silence, stream still open: ready for a while, not ready after the grace period.
    let silent = Instant::now();
    tokio::time::sleep(GRACE / 4).await;
    assert_eq!(status(&h).await, NodeStatus::Ready);
    let mut not_ready_after = None;
    while silent.elapsed() < GRACE * 2 {
        if status(&h).await == NodeStatus::NotReady {
            not_ready_after = Some(silent.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = not_ready_after.expect("marked not ready within 2 grace periods");
    // The last persisted beat may be up to persist_every (grace/4) older than the last
    // beat sent.
    assert!(
        after >= GRACE - Liveness { grace: GRACE }.persist_every(),
        "not ready after only {after:?}"
    );
    // A beat makes it ready again.
    agent
        .send(agent_message::Body::Heartbeat(Heartbeat { sent_at_ms: 2 }))
        .await;
    until(&h, NodeStatus::Ready).await;
    // A closed stream: not ready at once, no grace period.
    drop(agent);
    let closed = Instant::now();
    until(&h, NodeStatus::NotReady).await;
    assert!(closed.elapsed() < GRACE, "took {:?}", closed.elapsed());
}
