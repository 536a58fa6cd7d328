//! API tokens (by the sha256 of their secret) and projects: rows, usage sums, and the
//! quota-checked VM writes. A quota check locks the project row first (an UPDATE that
//! touches it: a row lock on PostgreSQL, the write lock on SQLite), so concurrent creates in
//! one project are serialized and can never together exceed a limit.

use std::collections::BTreeMap;

use otherix_api::{EventType, ProjectSpec, ProjectUsage, Role};
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::events;
use super::rows::parse_uuid;
use super::tasks::insert_task;
use super::vms::{claim_node, insert_vm, update_vm};
use super::{Store, StoreError};
use crate::model::{TaskRecord, VmRecord};

/// One `api_tokens` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub name: String,
    pub secret_sha256: String,
    pub project: String,
    pub role: Role,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub created_by: String,
    /// Tokens are never rewritten; a revoke can be conditional on it.
    pub resource_version: i64,
}

/// One `projects` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRow {
    pub id: Uuid,
    pub name: String,
    pub spec: ProjectSpec,
    pub annotations: BTreeMap<String, String>,
    /// Moves on every write of spec or annotations (not on the quota lock's touch).
    pub resource_version: i64,
}

const TOKEN_COLUMNS: &str =
    "name, secret_sha256, project, role, created_at_ms, expires_at_ms, created_by";
pub(super) const PROJECT_COLUMNS: &str = "id, name, spec, annotations, resource_version";

fn token_from_row(row: &sqlx::any::AnyRow) -> Result<TokenRow, StoreError> {
    let name: String = row.try_get("name")?;
    let role: String = row.try_get("role")?;
    Ok(TokenRow {
        role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt {
            table: "api_tokens",
            id: name.clone(),
            detail: format!("role {role:?}"),
        })?,
        name,
        secret_sha256: row.try_get("secret_sha256")?,
        project: row.try_get("project")?,
        created_at_ms: row.try_get("created_at_ms")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        created_by: row.try_get("created_by")?,
        resource_version: row.try_get("resource_version")?,
    })
}

pub(super) fn project_from_row(row: &sqlx::any::AnyRow) -> Result<ProjectRow, StoreError> {
    let id: String = row.try_get("id")?;
    let spec: String = row.try_get("spec")?;
    let annotations: String = row.try_get("annotations")?;
    let corrupt = |e: serde_json::Error| StoreError::Corrupt {
        table: "projects",
        id: id.clone(),
        detail: e.to_string(),
    };
    Ok(ProjectRow {
        id: parse_uuid("projects", &id)?,
        name: row.try_get("name")?,
        spec: serde_json::from_str(&spec).map_err(corrupt)?,
        annotations: serde_json::from_str(&annotations).map_err(corrupt)?,
        resource_version: row.try_get("resource_version")?,
    })
}

impl Store {
    // ---- tokens ----

    /// The token whose secret hashes to `secret_sha256`, if any.
    pub async fn token_by_hash(&self, secret_sha256: &str) -> Result<Option<TokenRow>, StoreError> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS}, resource_version FROM api_tokens WHERE secret_sha256 = $1"
        );
        let row = sqlx::query(&sql)
            .bind(secret_sha256)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Inserts a token; a taken name is `StoreError::NameTaken`.
    pub async fn insert_token(&self, t: &TokenRow) -> Result<(), StoreError> {
        let sql =
            format!("INSERT INTO api_tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)");
        sqlx::query(&sql)
            .bind(t.name.clone())
            .bind(t.secret_sha256.clone())
            .bind(t.project.clone())
            .bind(t.role.as_str())
            .bind(t.created_at_ms)
            .bind(t.expires_at_ms)
            .bind(t.created_by.clone())
            .execute(&self.pool)
            .await
            .map_err(|e| StoreError::from_insert(e, || StoreError::NameTaken(t.name.clone())))?;
        Ok(())
    }

    /// Every token, by name.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS}, resource_version FROM api_tokens ORDER BY name");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Deletes a token (only at version `expected`, if given: else
    /// [`StoreError::Conflict`]); false when there was none. The next request with it is
    /// 401.
    pub async fn delete_token(
        &self,
        name: &str,
        expected: Option<i64>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let done = match expected {
            None => {
                sqlx::query("DELETE FROM api_tokens WHERE name = $1")
                    .bind(name)
                    .execute(&mut *conn)
                    .await?
            }
            Some(v) => {
                sqlx::query("DELETE FROM api_tokens WHERE name = $1 AND resource_version = $2")
                    .bind(name)
                    .bind(v)
                    .execute(&mut *conn)
                    .await?
            }
        };
        if done.rows_affected() > 0 {
            return Ok(true);
        }
        let Some(expected) = expected else {
            return Ok(false);
        };
        let actual: Option<(i64,)> =
            sqlx::query_as("SELECT resource_version FROM api_tokens WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *conn)
                .await?;
        match actual {
            None => Ok(false),
            Some((actual,)) => Err(StoreError::Conflict {
                kind: "token",
                name: name.to_owned(),
                expected,
                actual: Some(actual),
            }),
        }
    }

    pub async fn count_tokens(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM api_tokens")
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    // ---- projects ----

    pub async fn project(&self, name: &str) -> Result<Option<ProjectRow>, StoreError> {
        let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE name = $1");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(project_from_row).transpose()
    }

    pub async fn list_projects(&self) -> Result<Vec<ProjectRow>, StoreError> {
        let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects ORDER BY name");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(project_from_row).collect()
    }

    /// Inserts a project; a taken name is `StoreError::NameTaken`.
    pub async fn insert_project(&self, p: &ProjectRow) -> Result<(), StoreError> {
        let now = self.now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO projects (id, name, spec, annotations, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(p.id.to_string())
        .bind(p.name.clone())
        .bind(serde_json::to_string(&p.spec).expect("ProjectSpec serializes"))
        .bind(serde_json::to_string(&p.annotations).expect("annotations serialize"))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::from_insert(e, || StoreError::NameTaken(p.name.clone())))?;
        let added = events::project(&mut tx, &p.name, EventType::Added).await?;
        events::append(&mut tx, now, vec![added]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Rewrites a project's spec and annotations if its row still has
    /// `p.resource_version` (else [`StoreError::Conflict`]); returns the new version.
    /// Limits below the current usage are allowed (like a Kubernetes ResourceQuota): they
    /// only stop further growth.
    pub async fn update_project(&self, p: &ProjectRow) -> Result<i64, StoreError> {
        let next = p.resource_version + 1;
        let now = self.now_ms();
        let mut conn = self.pool.begin().await?;
        let written = sqlx::query(
            "UPDATE projects SET spec = $2, annotations = $3, updated_at_ms = $4, \
             resource_version = $5 WHERE name = $1 AND resource_version = $6",
        )
        .bind(p.name.clone())
        .bind(serde_json::to_string(&p.spec).expect("ProjectSpec serializes"))
        .bind(serde_json::to_string(&p.annotations).expect("annotations serialize"))
        .bind(now)
        .bind(next)
        .bind(p.resource_version)
        .execute(&mut *conn)
        .await?;
        if written.rows_affected() == 1 {
            let modified = events::project(&mut conn, &p.name, EventType::Modified).await?;
            events::append(&mut conn, now, vec![modified]).await?;
            conn.commit().await?;
            return Ok(next);
        }
        Err(project_conflict(&mut conn, &p.name, p.resource_version).await?)
    }

    /// Deletes a project that holds no live VM, with the member and viewer tokens bound to
    /// it, in one transaction, if the project is still at version `expected` (else
    /// [`StoreError::Conflict`]). `Ok(Some(n))` = refused, `n` live VMs remain.
    pub async fn delete_project(
        &self,
        name: &str,
        expected: i64,
    ) -> Result<Option<u64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_project(&mut tx, name, self.now_ms()).await?;
        let (actual,): (i64,) =
            sqlx::query_as("SELECT resource_version FROM projects WHERE name = $1")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
        if actual != expected {
            return Err(StoreError::Conflict {
                kind: "project",
                name: name.to_owned(),
                expected,
                actual: Some(actual),
            });
        }
        let usage = usage_in(&mut tx, name).await?;
        if usage.vms > 0 {
            return Ok(Some(usage.vms));
        }
        let deleted = events::project(&mut tx, name, EventType::Deleted).await?;
        sqlx::query("DELETE FROM api_tokens WHERE project = $1 AND role <> 'admin'")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM projects WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        events::append(&mut tx, self.now_ms(), vec![deleted]).await?;
        tx.commit().await?;
        Ok(None)
    }

    /// What the live VMs of a project hold.
    pub async fn project_usage(&self, name: &str) -> Result<ProjectUsage, StoreError> {
        let mut conn = self.pool.acquire().await?;
        usage_in(&mut conn, name).await
    }

    /// Inserts new VMs of one project, each with its first task (`tasks[i]` for `vms[i]`),
    /// in one transaction (one commit, one fsync), the project quota checked once for their
    /// sum and each node's capacity claimed once with everything placed on it:
    /// `StoreError::QuotaExceeded`, `InsufficientCapacity` (or `NameTaken` for a live VM
    /// of the same name in the project, `IdempotencyKeyTaken` for a key already used)
    /// leaves nothing behind.
    pub async fn insert_vms_with_tasks_in_quota(
        &self,
        vms: &[VmRecord],
        tasks: &[TaskRecord],
    ) -> Result<(), StoreError> {
        let Some(project) = vms.first().map(|vm| vm.project.clone()) else {
            return Ok(());
        };
        debug_assert!(vms.iter().all(|vm| vm.project == project));
        debug_assert_eq!(vms.len(), tasks.len());
        let mut tx = self.pool.begin().await?;
        let spec = lock_project(&mut tx, &project, self.now_ms()).await?;
        let before = usage_if_limited(&mut tx, &project, &spec).await?;
        // Each insert moves its node's counters (a row lock there): in node-name order, so
        // two batches of different projects cannot lock two nodes in opposite orders.
        let mut by_node: Vec<&VmRecord> = vms.iter().collect();
        by_node.sort_by(|a, b| a.node.cmp(&b.node));
        for vm in by_node {
            insert_vm(&mut tx, vm).await.map_err(|e| {
                StoreError::from_insert(e, || StoreError::NameTaken(vm.name.clone()))
            })?;
        }
        check_quota(&mut tx, &project, &spec, &before).await?;
        let nodes: std::collections::BTreeSet<&str> =
            vms.iter().filter_map(|vm| vm.node.as_deref()).collect();
        for node in nodes {
            claim_node(&mut tx, node).await?;
        }
        let mut changed = Vec::with_capacity(vms.len() * 2);
        for (vm, task) in vms.iter().zip(tasks) {
            insert_task(&mut tx, task)
                .await
                .map_err(|e| StoreError::from_task_insert(e, vm.id, task))?;
            changed.push(events::vm(&mut tx, vm.id, true).await?);
            changed.push(events::task(task, true));
        }
        events::append(&mut tx, self.now_ms(), changed).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes `vm` (whose spec may have grown; compare-and-swap as `save_vm`) with its
    /// project quota checked in the same transaction.
    pub async fn save_vm_in_quota(&self, vm: &mut VmRecord) -> Result<(), StoreError> {
        let now = self.now_ms();
        let mut tx = self.pool.begin().await?;
        let spec = lock_project(&mut tx, &vm.project, now).await?;
        let before = usage_if_limited(&mut tx, &vm.project, &spec).await?;
        let version = update_vm(&mut tx, vm, now).await?;
        check_quota(&mut tx, &vm.project, &spec, &before).await?;
        events::append_vm(&mut tx, now, vm.id).await?;
        tx.commit().await?;
        vm.resource_version = version;
        Ok(())
    }

    /// Fills the vcpus/memory_mb columns of rows written before they existed.
    pub(super) async fn backfill_vm_sizes(&self) -> Result<(), StoreError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT id, spec FROM vms WHERE vcpus IS NULL OR memory_mb IS NULL")
                .fetch_all(&self.pool)
                .await?;
        let filled = !rows.is_empty();
        for (id, spec) in rows {
            let spec: otherix_api::VmSpec =
                serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt {
                    table: "vms",
                    id: id.clone(),
                    detail: e.to_string(),
                })?;
            sqlx::query("UPDATE vms SET vcpus = $2, memory_mb = $3 WHERE id = $1")
                .bind(id)
                .bind(i64::from(spec.vcpus))
                .bind(i64::from(spec.memory_mb))
                .execute(&self.pool)
                .await?;
        }
        if filled {
            // Rows that had no sizes counted as 0 in the node counters.
            super::allocations::recount_allocations(&mut *self.pool.acquire().await?).await?;
        }
        Ok(())
    }
}

/// The [`StoreError::Conflict`] of a compare-and-swap on project `name` that matched no
/// row.
async fn project_conflict(
    conn: &mut AnyConnection,
    name: &str,
    expected: i64,
) -> Result<StoreError, StoreError> {
    let actual: Option<(i64,)> =
        sqlx::query_as("SELECT resource_version FROM projects WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(StoreError::Conflict {
        kind: "project",
        name: name.to_owned(),
        expected,
        actual: actual.map(|a| a.0),
    })
}

/// Locks the project row for this transaction and returns its limits.
async fn lock_project(
    conn: &mut AnyConnection,
    name: &str,
    now_ms: i64,
) -> Result<ProjectSpec, StoreError> {
    let touched = sqlx::query("UPDATE projects SET updated_at_ms = $2 WHERE name = $1")
        .bind(name)
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
    if touched.rows_affected() == 0 {
        return Err(StoreError::ProjectNotFound(name.to_owned()));
    }
    let (spec,): (String,) = sqlx::query_as("SELECT spec FROM projects WHERE name = $1")
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
    serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt {
        table: "projects",
        id: name.to_owned(),
        detail: e.to_string(),
    })
}

pub(super) async fn usage_in(
    conn: &mut AnyConnection,
    project: &str,
) -> Result<ProjectUsage, StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(vcpus), 0) AS BIGINT) AS vcpus, \
         CAST(COALESCE(SUM(memory_mb), 0) AS BIGINT) AS memory_mb \
         FROM vms WHERE project = $1 AND deleted_at IS NULL",
    )
    .bind(project)
    .fetch_one(&mut *conn)
    .await?;
    let get = |col: &str| -> Result<u64, StoreError> {
        let v: i64 = row.try_get(col)?;
        Ok(u64::try_from(v).unwrap_or(0))
    };
    Ok(ProjectUsage {
        vms: get("n")?,
        vcpus: get("vcpus")?,
        memory_mb: get("memory_mb")?,
    })
}

/// The project's usage before a change, read only when the project has a limit (a
/// project without quotas, like `default` usually, costs no SUM per write).
async fn usage_if_limited(
    conn: &mut AnyConnection,
    project: &str,
    spec: &ProjectSpec,
) -> Result<Option<ProjectUsage>, StoreError> {
    if *spec == ProjectSpec::default() {
        return Ok(None);
    }
    usage_in(conn, project).await.map(Some)
}

/// Compares the usage after the change with `before` (from [`usage_if_limited`]; `None`
/// means the project has no limits).
async fn check_quota(
    conn: &mut AnyConnection,
    project: &str,
    spec: &ProjectSpec,
    before: &Option<ProjectUsage>,
) -> Result<(), StoreError> {
    let Some(before) = before else {
        return Ok(());
    };
    let after = usage_in(conn, project).await?;
    match otherix_api::identity::quota_violation(spec, before, &after) {
        Some(why) => Err(StoreError::QuotaExceeded(format!(
            "project {project}: {why}"
        ))),
        None => Ok(()),
    }
}
