//! Pools, networks and firmware as named objects (`{id, name, annotations, spec}` rows with
//! the spec and annotations as JSON, compare-and-swap on `resource_version`), what live
//! VMs refer to (for delete-in-use checks), and idempotency keys of task-creating requests.

use std::collections::BTreeMap;

use otherix_api::{EventType, VmSpec};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use super::events;
use super::rows::{parse_uuid, task_from_row, TASK_COLUMNS};
use super::{Store, StoreError};
use crate::model::TaskRecord;

/// The tables of named objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectTable {
    Pools,
    Networks,
    Firmware,
}

impl ObjectTable {
    fn table(self) -> &'static str {
        match self {
            ObjectTable::Pools => "pools",
            ObjectTable::Networks => "networks",
            ObjectTable::Firmware => "firmware",
        }
    }

    /// The object kind as the API names it (in 409 answers).
    pub fn kind(self) -> &'static str {
        match self {
            ObjectTable::Pools => "pool",
            ObjectTable::Networks => "network",
            ObjectTable::Firmware => "firmware",
        }
    }

    /// The `builtin` column, or a constant for tables without one.
    fn builtin_expr(self) -> &'static str {
        match self {
            ObjectTable::Firmware => "builtin",
            _ => "CAST(0 AS BIGINT)",
        }
    }
}

/// One named object row with its spec decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject<S> {
    pub id: Uuid,
    pub name: String,
    pub annotations: BTreeMap<String, String>,
    pub spec: S,
    pub builtin: bool,
    /// Moves on every write of the row; updates and deletes are compare-and-swap on it.
    pub resource_version: i64,
}

/// Which live VMs [`Store::live_vm_refs`] reads: those that may use this pool (by name),
/// a network, a firmware.
#[derive(Debug, Clone, Copy)]
pub enum RefCandidates<'a> {
    Pool(&'a str),
    Network,
    Firmware,
}

/// A live VM's references to named objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRefs {
    pub name: String,
    /// The pool it was placed in, once placed.
    pub pool: Option<String>,
    pub spec: VmSpec,
}

pub(super) fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("spec and annotations serialize")
}

pub(super) fn decode<T: DeserializeOwned>(
    table: &'static str,
    id: &str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        table,
        id: id.to_owned(),
        detail: e.to_string(),
    })
}

/// The [`StoreError::Conflict`] of a compare-and-swap on `table` that matched no row: the
/// version the row has now, or `None` when it is gone (a database error reading it is
/// returned as is).
async fn conflict(
    conn: &mut sqlx::AnyConnection,
    table: ObjectTable,
    id: Uuid,
    name: &str,
    expected: i64,
) -> StoreError {
    let sql = format!(
        "SELECT resource_version FROM {} WHERE id = $1",
        table.table()
    );
    match sqlx::query_as::<_, (i64,)>(&sql)
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await
    {
        Ok(actual) => StoreError::Conflict {
            kind: table.kind(),
            name: name.to_owned(),
            expected,
            actual: actual.map(|a| a.0),
        },
        Err(e) => e.into(),
    }
}

fn object_select(table: ObjectTable) -> String {
    format!(
        "SELECT id, name, spec, annotations, resource_version, {} AS builtin FROM {}",
        table.builtin_expr(),
        table.table()
    )
}

fn object_from_row<S: DeserializeOwned>(
    table: ObjectTable,
    r: &sqlx::any::AnyRow,
) -> Result<StoredObject<S>, StoreError> {
    let id: String = r.try_get("id")?;
    let spec: String = r.try_get("spec")?;
    let annotations: String = r.try_get("annotations")?;
    Ok(StoredObject {
        id: parse_uuid(table.table(), &id)?,
        name: r.try_get("name")?,
        annotations: decode(table.table(), &id, &annotations)?,
        spec: decode(table.table(), &id, &spec)?,
        builtin: r.try_get::<i64, _>("builtin")? != 0,
        resource_version: r.try_get("resource_version")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

impl Store {
    /// Every object of `table`, ordered by name.
    pub async fn list_objects<S: DeserializeOwned>(
        &self,
        table: ObjectTable,
    ) -> Result<Vec<StoredObject<S>>, StoreError> {
        let sql = format!("{} ORDER BY name", object_select(table));
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(|r| object_from_row(table, r)).collect()
    }

    /// The object of `table` whose name or id is `name_or_id` (an index lookup on each).
    pub async fn object<S: DeserializeOwned>(
        &self,
        table: ObjectTable,
        name_or_id: &str,
    ) -> Result<Option<StoredObject<S>>, StoreError> {
        let sql = format!("{} WHERE name = $1 OR id = $2", object_select(table));
        let row = sqlx::query(&sql)
            .bind(name_or_id.to_owned())
            .bind(name_or_id.to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(|r| object_from_row(table, r)).transpose()
    }

    /// Inserts a new object; false when the name is taken.
    pub async fn insert_object<S: Serialize>(
        &self,
        table: ObjectTable,
        obj: &StoredObject<S>,
    ) -> Result<bool, StoreError> {
        let sql = match table {
            ObjectTable::Firmware => "INSERT INTO firmware (id, name, spec, annotations, \
                 created_at_ms, builtin) VALUES ($1, $2, $3, $4, $5, $6)"
                .to_owned(),
            _ => format!(
                "INSERT INTO {} (id, name, spec, annotations, created_at_ms) \
                 VALUES ($1, $2, $3, $4, $5)",
                table.table()
            ),
        };
        let now = self.now_ms();
        let mut q = sqlx::query(&sql)
            .bind(obj.id.to_string())
            .bind(obj.name.clone())
            .bind(json(&obj.spec))
            .bind(json(&obj.annotations))
            .bind(now);
        if table == ObjectTable::Firmware {
            q = q.bind(i64::from(obj.builtin));
        }
        let mut tx = self.pool.begin().await?;
        match q.execute(&mut *tx).await {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let added = events::object(&mut tx, table, obj.id, EventType::Added).await?;
        events::append(&mut tx, now, vec![added]).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Replaces an object's spec and annotations if its row still has
    /// `obj.resource_version` (else [`StoreError::Conflict`]); returns the new version.
    pub async fn update_object<S: Serialize>(
        &self,
        table: ObjectTable,
        obj: &StoredObject<S>,
    ) -> Result<i64, StoreError> {
        let next = obj.resource_version + 1;
        let sql = format!(
            "UPDATE {} SET spec = $2, annotations = $3, resource_version = $4 \
             WHERE id = $1 AND resource_version = $5",
            table.table()
        );
        let mut conn = self.pool.begin().await?;
        let written = sqlx::query(&sql)
            .bind(obj.id.to_string())
            .bind(json(&obj.spec))
            .bind(json(&obj.annotations))
            .bind(next)
            .bind(obj.resource_version)
            .execute(&mut *conn)
            .await?;
        if written.rows_affected() == 1 {
            let modified = events::object(&mut conn, table, obj.id, EventType::Modified).await?;
            events::append(&mut conn, self.now_ms(), vec![modified]).await?;
            conn.commit().await?;
            return Ok(next);
        }
        Err(conflict(&mut conn, table, obj.id, &obj.name, obj.resource_version).await)
    }

    /// Deletes an object (a pool together with its pool instances) if its row still has
    /// `expected` (else [`StoreError::Conflict`], and nothing is deleted).
    pub async fn delete_object(
        &self,
        table: ObjectTable,
        id: Uuid,
        name: &str,
        expected: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // Compare-and-swap first: it also locks the row until the delete commits.
        let sql = format!(
            "UPDATE {} SET resource_version = resource_version + 1 \
             WHERE id = $1 AND resource_version = $2",
            table.table()
        );
        let locked = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(expected)
            .execute(&mut *tx)
            .await?;
        if locked.rows_affected() != 1 {
            return Err(conflict(&mut tx, table, id, name, expected).await);
        }
        let deleted = events::object(&mut tx, table, id, EventType::Deleted).await?;
        if table == ObjectTable::Pools {
            sqlx::query("DELETE FROM pool_instances WHERE pool_id = $1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        let sql = format!("DELETE FROM {} WHERE id = $1", table.table());
        sqlx::query(&sql)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        events::append(&mut tx, self.now_ms(), vec![deleted]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// What the live VMs that may use an entity refer to: only `candidates` are read
    /// (the caller decides which of them really use it).
    pub async fn live_vm_refs(
        &self,
        candidates: RefCandidates<'_>,
    ) -> Result<Vec<VmRefs>, StoreError> {
        let (cond, bind) = match candidates {
            // Placed in it, or not placed yet (its spec or the default pool may name it).
            RefCandidates::Pool(name) => ("(pool = $1 OR pool IS NULL)", Some(name)),
            // The bridge is resolved from spec.network at create, the firmware from
            // spec.firmware / firmware_id: a VM without one names none.
            RefCandidates::Network => ("bridge IS NOT NULL", None),
            RefCandidates::Firmware => ("firmware IS NOT NULL", None),
        };
        let sql = format!(
            "SELECT id, name, pool, spec FROM vms WHERE deleted_at IS NULL AND {cond} \
             ORDER BY name"
        );
        let mut q = sqlx::query_as::<_, (String, String, Option<String>, String)>(&sql);
        if let Some(b) = bind {
            q = q.bind(b.to_owned());
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(|(id, name, pool, spec)| {
                Ok(VmRefs {
                    name,
                    pool,
                    spec: decode("vms", &id, &spec)?,
                })
            })
            .collect()
    }

    /// The newest task created by a request with this Idempotency-Key, with that
    /// request's fingerprint.
    pub async fn task_by_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<(TaskRecord, Option<String>)>, StoreError> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE idempotency_key = $1 \
             ORDER BY created_at DESC, id DESC LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => {
                let task = task_from_row(&r)?;
                let request = task.idempotency_request.clone();
                Ok(Some((task, request)))
            }
            None => Ok(None),
        }
    }

    /// Records the Idempotency-Key and request fingerprint of the request that created a
    /// task, unless the task already carries one (stamped when it was inserted).
    pub async fn set_task_idempotency(
        &self,
        task_id: Uuid,
        key: &str,
        request: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tasks SET idempotency_key = $2, idempotency_request = $3 \
             WHERE id = $1 AND idempotency_key IS NULL",
        )
        .bind(task_id.to_string())
        .bind(key)
        .bind(request)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
