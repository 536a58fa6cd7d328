//! The retention purge on a real database (SQLite, or PostgreSQL with
//! `OTHERIXD_TEST_POSTGRES_URL`): old finished tasks and soft-deleted VM rows go in
//! batches; pending tasks and each live VM's newest task stay.

use std::time::Duration;

use otherix_api::{Arch, CreateVmRequest, VmSpec};
use otherixd::retention::{purge_expired, RetentionPolicy};
use sqlx::{Connection, Executor};

mod common;

async fn count(conn: &mut sqlx::AnyConnection, sql: &str) -> i64 {
    let row: (i64,) = sqlx::query_as(sql).fetch_one(&mut *conn).await.unwrap();
    row.0
}

#[tokio::test]
async fn retention_purges_old_rows_in_batches_and_keeps_live_vms_newest_task() {
    let s = common::open(tempfile::tempdir().unwrap()).await;
    s.daemon
        .gateway
        .register(&common::registration("node-1", 64, 262_144))
        .await
        .unwrap();
    let vms = &s.daemon.state.vms;
    let mut created = Vec::new();
    for name in ["live", "gone", "busy"] {
        let mut spec = VmSpec::new("http://127.0.0.1:9/img.qcow2", Arch::Amd64);
        spec.memory_mb = 128;
        let acc = vms
            .create(
                &otherixd::service::Actor::new("default", "test"),
                CreateVmRequest {
                    name: name.into(),
                    spec,
                    labels: Default::default(),
                },
            )
            .await
            .unwrap();
        created.push(acc);
    }
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&s.database_url).await.unwrap();
    let live_id = created[0].vm.as_ref().unwrap().id.to_string();
    // `live`: its create task finished long ago, plus two older finished tasks.
    // `gone`: soft-deleted long ago, its task finished long ago. `busy`: task pending.
    conn.execute(
        "UPDATE tasks SET status = 'success', finished_at = 5 WHERE vm_name IN ('live', 'gone')",
    )
    .await
    .unwrap();
    for (i, id) in [
        "11111111-1111-4111-8111-111111111111",
        "22222222-2222-4222-8222-222222222222",
    ]
    .iter()
    .enumerate()
    {
        sqlx::query(
            "INSERT INTO tasks (id, kind, vm_id, vm_name, status, created_at, finished_at) \
             VALUES ($1, 'vm.start', $2, 'live', 'failed', $3, $4)",
        )
        .bind(id.to_string())
        .bind(live_id.clone())
        .bind(i as i64)
        .bind(i as i64 + 1)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    conn.execute("UPDATE vms SET deleted_at = 5 WHERE name = 'gone'")
        .await
        .unwrap();
    assert_eq!(count(&mut conn, "SELECT COUNT(*) FROM tasks").await, 5);

    let policy = RetentionPolicy {
        max_age: Duration::from_secs(1),
        every: Duration::from_secs(1),
        batch: 1,
        ..Default::default()
    };
    let purged = purge_expired(&s.daemon.store, &policy, None).await.unwrap();
    assert_eq!((purged.tasks, purged.vms), (3, 1));
    let live_task = created[0].task.id.to_string();
    let busy_task = created[2].task.id.to_string();
    let mut left: Vec<String> = sqlx::query_as::<_, (String,)>("SELECT id FROM tasks")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.0)
        .collect();
    left.sort();
    let mut want = vec![live_task, busy_task];
    want.sort();
    assert_eq!(left, want);
    assert_eq!(count(&mut conn, "SELECT COUNT(*) FROM vms").await, 2);
    // A second pass finds nothing more.
    let again = purge_expired(&s.daemon.store, &policy, None).await.unwrap();
    assert_eq!((again.tasks, again.vms), (0, 0));
}
