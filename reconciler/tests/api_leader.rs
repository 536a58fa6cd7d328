//! Leader election: one leader per database, hand-over on resign with a higher epoch,
//! and opening a replica changes no node's status. The two-replica tests need PostgreSQL
//! (`OTHERIXD_TEST_POSTGRES_URL`); on SQLite the single daemon always leads.

mod common;

use std::time::Duration;

use common::fresh_database_url;
use otherix_api::proto::Register;
use otherix_api::{Arch, CreateVmRequest, NodeStatus, TaskKind, TaskStatus, VmPhase, VmSpec};
use otherixd::daemon::{Daemon, DaemonOptions};
use otherixd::leader::LeaseTiming;
use otherixd::model::TaskRecord;
use otherixd::store::{Fence, StoreError};

fn postgres() -> bool {
    std::env::var("OTHERIXD_TEST_POSTGRES_URL").is_ok()
}

fn registration() -> Register {
    common::registration("node-1", 8, 8192)
}

fn fast() -> DaemonOptions {
    DaemonOptions {
        lease: LeaseTiming {
            lease: Duration::from_secs(3),
            renew_every: Duration::from_millis(100),
        },
        ..DaemonOptions::default()
    }
}

async fn started(url: &str) -> Daemon {
    let mut d = Daemon::open_with(url, fast()).await.unwrap();
    d.spawn_background(Duration::from_secs(60));
    d
}

/// Waits until `cond` holds (5 s at most).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn single_daemon_leads() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database_url(dir.path()).await;
    let d = started(&url).await;
    eventually("leadership", || d.leading().is_some()).await;
    let epoch = d.leading().unwrap();
    if postgres() {
        assert!(epoch >= 1, "a lease epoch starts at 1, got {epoch}");
    } else {
        assert_eq!(epoch, 0, "SQLite always leads, without a lease");
    }
}

#[tokio::test]
async fn two_daemons_one_leads_and_resign_hands_over() {
    if !postgres() {
        eprintln!("skipped: needs OTHERIXD_TEST_POSTGRES_URL");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database_url(dir.path()).await;
    let mut a = started(&url).await;
    let mut b = started(&url).await;
    eventually("a leader", || {
        a.leading().is_some() || b.leading().is_some()
    })
    .await;
    // Several renew rounds later there is still exactly one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        a.leading().is_some() != b.leading().is_some(),
        "exactly one leads: a {:?}, b {:?}",
        a.leading(),
        b.leading()
    );
    let (leader, standby) = if a.leading().is_some() {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let first = leader.leading().unwrap();
    let row = leader.store.read_lease("leader").await.unwrap().unwrap();
    assert_eq!(row.holder.as_deref(), Some(leader.holder.as_str()));
    assert_eq!(row.epoch, first);

    // Resigning hands over well before the 3 s lease would have expired.
    let resigned = std::time::Instant::now();
    leader.resign().await;
    assert_eq!(leader.leading(), None);
    eventually("the standby to lead", || standby.leading().is_some()).await;
    assert!(resigned.elapsed() < Duration::from_secs(2));
    assert!(standby.leading().unwrap() > first, "the epoch grows");
}

#[tokio::test]
async fn a_dead_leaders_lease_expires_and_the_standby_takes_over() {
    if !postgres() {
        eprintln!("skipped: needs OTHERIXD_TEST_POSTGRES_URL");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database_url(dir.path()).await;
    let b = Daemon::open_with(&url, fast()).await.unwrap();
    // A leader that crashed: its lease row stays until it expires (in 1 s).
    let until = b.store.now_ms() + 1_000;
    let ghost = b.store.acquire_lease("leader", "ghost", None, until).await;
    assert_eq!(ghost.unwrap(), Some(1));
    let mut b = b;
    b.spawn_background(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.leading(), None, "the ghost's lease is still live");
    eventually("b to lead after expiry", || b.leading().is_some()).await;
    assert_eq!(b.leading(), Some(2));
}

#[tokio::test]
async fn opening_another_daemon_changes_no_node_status() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database_url(dir.path()).await;
    let a = Daemon::open(&url).await.unwrap();
    a.gateway.register(&registration()).await.unwrap();
    let _b = Daemon::open(&url).await.unwrap();
    let node = a.state.cluster.node("node-1").await.unwrap();
    assert_eq!(node.status, NodeStatus::Ready);
}

/// A daemon on a fresh database with node-1 registered and one VM `app` on it.
async fn daemon_with_one_vm() -> (tempfile::TempDir, Daemon, uuid::Uuid) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database_url(dir.path()).await;
    let d = Daemon::open(&url).await.unwrap();
    d.gateway.register(&registration()).await.unwrap();
    let actor = otherixd::service::Actor::new("default", "test");
    let req = CreateVmRequest {
        name: "app".into(),
        spec: VmSpec::new("http://127.0.0.1:9/img.qcow2", Arch::Amd64),
        labels: Default::default(),
    };
    d.state.vms.create(&actor, req).await.unwrap();
    let id = d.store.live_vm_ids().await.unwrap()[0];
    (dir, d, id)
}

#[tokio::test]
async fn a_deposed_leaders_fenced_task_insert_fails() {
    let (_dir, d, id) = daemon_with_one_vm().await;
    let store = &d.store;
    let mut vm = store.vm_by_id(id).await.unwrap().unwrap();

    // "a" leads at epoch 1; "b" steals the lease with a higher epoch.
    let far = store.now_ms() + 60_000;
    let a = store.acquire_lease("leader", "a", None, far).await.unwrap();
    assert_eq!(a, Some(1));
    let seen = store.read_lease("leader").await.unwrap().unwrap();
    sqlx::query("UPDATE leases SET holder = 'b', epoch = 2 WHERE name = 'leader'")
        .execute(store.pool())
        .await
        .unwrap();
    // a's own compare-and-swap on the row it saw fails too.
    let again = store.acquire_lease("leader", "a", Some(&seen), far).await;
    assert_eq!(again.unwrap(), None);

    // An already-finished task (not in flight), as the reconcile loop records deletes.
    let finished = |epoch| {
        let mut t = TaskRecord::pending(TaskKind::VmDelete, &vm, None, store.now_ms());
        t.status = TaskStatus::Success;
        t.epoch = Some(epoch);
        t
    };
    let deposed = Fence {
        holder: "a".into(),
        epoch: 1,
    };
    let task = finished(1);
    let task2 = finished(2);
    let version = vm.resource_version;
    let err = store
        .save_vm_with_new_task(&mut vm, &task, Some(&deposed))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { epoch: 1 }), "{err:?}");
    assert!(store.task(task.id).await.unwrap().is_none());
    let stored = store.vm_by_id(id).await.unwrap().unwrap();
    assert_eq!(stored.resource_version, version, "the VM was not written");

    // The current leader's write goes through and records its epoch.
    let current = Fence {
        holder: "b".into(),
        epoch: 2,
    };
    let task = task2;
    store
        .save_vm_with_new_task(&mut vm, &task, Some(&current))
        .await
        .unwrap();
    assert_eq!(store.task(task.id).await.unwrap().unwrap().epoch, Some(2));
}

/// Every other write of the leader's jobs is fenced too: the loop's VM bookkeeping, the
/// liveness sweep and the retention purge of a deposed leader change nothing.
#[tokio::test]
async fn a_deposed_leaders_sweep_purge_and_vm_writes_fail() {
    let (_dir, d, id) = daemon_with_one_vm().await;
    let store = &d.store;
    // A finished task of a deleted VM, both old enough for any retention cutoff.
    sqlx::query("UPDATE tasks SET status = 'success', finished_at = 1")
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE vms SET deleted_at = 1")
        .execute(store.pool())
        .await
        .unwrap();
    let far = store.now_ms() + 60_000;
    assert_eq!(
        store.acquire_lease("leader", "a", None, far).await.unwrap(),
        Some(1)
    );
    sqlx::query("UPDATE leases SET holder = 'b', epoch = 2 WHERE name = 'leader'")
        .execute(store.pool())
        .await
        .unwrap();
    let deposed = Fence {
        holder: "a".into(),
        epoch: 1,
    };
    let policy = otherixd::retention::RetentionPolicy {
        max_age: Duration::from_secs(1),
        every: Duration::from_secs(60),
        batch: 10,
        ..Default::default()
    };
    let version = store.vm_by_id(id).await.unwrap().unwrap().resource_version;
    let mut vm = store.vm_by_id(id).await.unwrap().unwrap();
    vm.last_error = None;
    let err = store
        .save_vm_fenced(&mut vm, Some(&deposed))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { epoch: 1 }), "{err:?}");
    // Heartbeats overdue by any cutoff: only the fence keeps the node ready.
    let err = store
        .mark_stale_nodes_not_ready(store.now_ms() + 1, Some(&deposed))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { epoch: 1 }), "{err:?}");
    let err = otherixd::retention::purge_expired(store, &policy, Some(&deposed))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { epoch: 1 }), "{err:?}");

    let stored = store.vm_by_id(id).await.unwrap().unwrap();
    assert_eq!(stored.resource_version, version, "the VM was not written");
    let node = d.state.cluster.node("node-1").await.unwrap();
    assert_eq!(node.status, NodeStatus::Ready);
    let tasks: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM tasks")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(tasks.0, 1, "nothing was purged");

    // The current leader's do go through.
    let current = Fence {
        holder: "b".into(),
        epoch: 2,
    };
    store.save_vm_fenced(&mut vm, Some(&current)).await.unwrap();
    assert!(vm.resource_version > version);
    let stale = store
        .mark_stale_nodes_not_ready(store.now_ms() + 1, Some(&current))
        .await
        .unwrap();
    assert_eq!(stale, vec!["node-1".to_owned()]);
    let purged = otherixd::retention::purge_expired(store, &policy, Some(&current))
        .await
        .unwrap();
    assert_eq!((purged.tasks, purged.vms), (1, 1));
}

#[tokio::test]
async fn the_leaders_loop_stamps_its_epoch_on_the_tasks_it_emits() {
    if !postgres() {
        eprintln!("skipped: needs OTHERIXD_TEST_POSTGRES_URL");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database_url(dir.path()).await;
    let mut d = Daemon::open_with(&url, fast()).await.unwrap();
    d.spawn_background(Duration::from_millis(100));
    eventually("leadership", || d.leading().is_some()).await;
    let epoch = d.leading().unwrap();
    d.gateway.register(&registration()).await.unwrap();
    let actor = otherixd::service::Actor::new("default", "test");
    let req = CreateVmRequest {
        name: "app".into(),
        spec: VmSpec::new("http://127.0.0.1:9/img.qcow2", Arch::Amd64),
        labels: Default::default(),
    };
    let accepted = d.state.vms.create(&actor, req).await.unwrap();
    let first = d.store.task(accepted.task.id).await.unwrap().unwrap();
    assert_eq!(first.epoch, None, "the HTTP path records no epoch");

    // The create finished and the VM is stopped while desired running: the leader's
    // resync emits the vm.start.
    let mut done = first.clone();
    done.status = TaskStatus::Success;
    d.store.save_task(&done).await.unwrap();
    let vm_id = first.vm_id.unwrap();
    let mut vm = d.store.vm_by_id(vm_id).await.unwrap().unwrap();
    vm.phase = VmPhase::Stopped;
    vm.current_task = None;
    d.store.save_vm(&mut vm).await.unwrap();
    let mut next = None;
    for _ in 0..100 {
        if let Some(t) = d.store.in_flight_task(vm_id).await.unwrap() {
            next = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let next = next.expect("the leader's loop emits a task");
    assert_eq!(next.kind, TaskKind::VmStart);
    assert_eq!(next.epoch, Some(epoch));
}

#[tokio::test]
async fn a_resign_is_noticed_at_once_through_notify() {
    if !postgres() {
        eprintln!("skipped: needs OTHERIXD_TEST_POSTGRES_URL");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database_url(dir.path()).await;
    // Standbys poll only every 10 s here: a hand-over within 2 s is the notification.
    let slow = DaemonOptions {
        lease: LeaseTiming {
            lease: Duration::from_secs(30),
            renew_every: Duration::from_secs(10),
        },
        ..DaemonOptions::default()
    };
    let mut a = Daemon::open_with(&url, slow.clone()).await.unwrap();
    a.spawn_background(Duration::from_secs(60));
    eventually("a to lead", || a.leading().is_some()).await;
    let mut b = Daemon::open_with(&url, slow).await.unwrap();
    b.spawn_background(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.leading(), None);
    a.resign().await;
    let resigned = std::time::Instant::now();
    eventually("b to lead", || b.leading().is_some()).await;
    assert!(resigned.elapsed() < Duration::from_secs(2));
    assert_eq!(b.leading(), Some(2));
}
