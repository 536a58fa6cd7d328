//! The store: the only place with SQL. One `AnyPool` over SQLite (default, a file in the
//! data dir, WAL + synchronous=FULL) or PostgreSQL, migrations run at open, and typed
//! queries for VMs, tasks, nodes, pools, settings and the cluster CA. Every multi-row
//! change is one transaction.

mod allocations;
mod cluster_ca;
mod cluster_settings;
mod counts;
mod enrollment;
mod entities;
mod events;
mod identity;
mod lease;
mod nodes;
mod relay;
mod retention;
mod rows;
mod tasks;
mod vms;

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

use crate::model::TaskRecord;

pub use cluster_ca::ClusterCaRow;
pub use cluster_settings::{ClusterSettingsRow, SETTING_CLUSTER_ANNOTATIONS};
pub use counts::GroupCount;
pub use enrollment::{JoinTokenUse, NodeCertRecord};
pub use entities::{ObjectTable, RefCandidates, StoredObject, VmRefs};
pub use events::{EventRow, Pending as PendingEvent};
pub use identity::{ProjectRow, TokenRow};
pub use lease::{Fence, LeaseRow, LEADER_LEASE};
pub use nodes::NodeRegistration;
pub use relay::{channel, SyncCallOutcome, SyncCallRow};
pub use retention::Purged;
pub use tasks::TaskPage;
pub use vms::{VmFilter, VmIdentity, VmPage};

/// The key of the default-pool setting.
pub const SETTING_DEFAULT_POOL: &str = "default_pool";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database")]
    Database(#[from] sqlx::Error),
    #[error("migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create database file {path}")]
    CreateFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("row {table}/{id} is corrupt: {detail}")]
    Corrupt {
        table: &'static str,
        id: String,
        detail: String,
    },
    #[error("a live vm named {0} already exists")]
    NameTaken(String),
    #[error("vm {0} already has a task in flight")]
    TaskInFlight(uuid::Uuid),
    #[error("project {0} not found")]
    ProjectNotFound(String),
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// A compare-and-swap write found the row of `kind` (`vm`, `pool`, `project`, ...)
    /// `name` at another version (`None`: gone).
    #[error("{kind} {name} was changed concurrently: expected resource_version {expected}, found {}", actual.map_or_else(|| "none".to_owned(), |a| a.to_string()))]
    Conflict {
        kind: &'static str,
        name: String,
        expected: i64,
        actual: Option<i64>,
    },
    /// A placement claim found the node full (a concurrent create took the room).
    #[error("node {node} has no room left: {detail}")]
    InsufficientCapacity { node: String, detail: String },
    /// The fencing check found the lease held by another replica or at another epoch:
    /// this replica was deposed and must not write.
    #[error("leader epoch {epoch} is no longer current; write refused")]
    Fenced { epoch: i64 },
    /// Another request already created a task with this (scoped) Idempotency-Key.
    #[error("idempotency key {0} is already recorded")]
    IdempotencyKeyTaken(String),
}

impl StoreError {
    /// Maps unique-index violations to domain errors; everything else stays a db error.
    fn from_insert(e: sqlx::Error, name_taken: impl FnOnce() -> StoreError) -> StoreError {
        match &e {
            sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation => {
                name_taken()
            }
            _ => StoreError::Database(e),
        }
    }

    /// Maps a failed task insert: a taken Idempotency-Key, or a second in-flight task.
    fn from_task_insert(e: sqlx::Error, vm_id: uuid::Uuid, task: &TaskRecord) -> StoreError {
        if let Some(key) = &task.idempotency_key {
            if let sqlx::Error::Database(db) = &e {
                if db.kind() == sqlx::error::ErrorKind::UniqueViolation
                    && (db.message().contains("idempotency")
                        || db.constraint().is_some_and(|c| c.contains("idempotency")))
                {
                    return StoreError::IdempotencyKeyTaken(key.clone());
                }
            }
        }
        StoreError::from_insert(e, || StoreError::TaskInFlight(vm_id))
    }

    /// True for a compare-and-swap write that lost a race: re-read and try again.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

/// How often internal writers (reconciler runs, agent reports, services without
/// `If-Match`) re-read and retry a write that lost a compare-and-swap race.
pub const CAS_ATTEMPTS: u32 = 5;

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    clock: Arc<AtomicI64>,
    postgres: bool,
    url: Arc<str>,
}

/// The database URL for a data dir when none is given: a SQLite file created if missing.
pub fn default_database_url(data_dir: &Path) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        data_dir.join("otherix.db").display()
    )
}

impl Store {
    /// Connects, applies SQLite durability PRAGMAs on every connection, runs migrations.
    pub async fn open(database_url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        if let Some(path) = sqlite_file_path(database_url) {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|source| StoreError::CreateFile {
                    path: path.clone(),
                    source,
                })?;
        }
        let options: AnyConnectOptions = database_url.parse()?;
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    if conn.backend_name().eq_ignore_ascii_case("sqlite") {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        let store = Store {
            pool,
            clock: Arc::new(AtomicI64::new(0)),
            postgres: database_url.starts_with("postgres"),
            url: database_url.into(),
        };
        store.backfill_vm_sizes().await?;
        Ok(store)
    }

    /// Whether the database is PostgreSQL (several replicas possible) rather than SQLite.
    pub fn is_postgres(&self) -> bool {
        self.postgres
    }

    /// The URL the store was opened with (for a PostgreSQL `LISTEN` connection).
    pub fn database_url(&self) -> &str {
        &self.url
    }

    /// The pool, for tests that inspect the connection (PRAGMAs).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Wall-clock epoch milliseconds, strictly increasing within this process so rows
    /// created in one millisecond still order by creation.
    pub fn now_ms(&self) -> i64 {
        let wall = chrono::Utc::now().timestamp_millis();
        let mut last = self.clock.load(Ordering::Relaxed);
        loop {
            let next = wall.max(last + 1);
            match self
                .clock
                .compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.0))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The file path of a `sqlite://PATH?...` URL (not for in-memory databases).
fn sqlite_file_path(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or("");
    if path.is_empty() || path == ":memory:" {
        None
    } else {
        Some(path.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_file_path_url_forms_give_path() {
        assert_eq!(
            sqlite_file_path("sqlite:///tmp/x/otherix.db?mode=rwc").as_deref(),
            Some("/tmp/x/otherix.db")
        );
        assert_eq!(sqlite_file_path("sqlite::memory:"), None);
        assert_eq!(sqlite_file_path("postgres://u@h/db"), None);
    }

    #[tokio::test]
    async fn store_open_sqlite_sets_wal_and_synchronous_full() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&default_database_url(dir.path()))
            .await
            .unwrap();
        for _ in 0..3 {
            // Several connections: the PRAGMAs are per connection.
            let mode: (String,) = sqlx::query_as("PRAGMA journal_mode")
                .fetch_one(store.pool())
                .await
                .unwrap();
            assert_eq!(mode.0.to_lowercase(), "wal");
            let sync: (i64,) = sqlx::query_as("PRAGMA synchronous")
                .fetch_one(store.pool())
                .await
                .unwrap();
            assert_eq!(sync.0, 2, "synchronous=FULL is 2");
        }
        assert!(dir.path().join("otherix.db").exists());
    }

    #[tokio::test]
    async fn store_now_ms_same_millisecond_still_increases() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&default_database_url(dir.path()))
            .await
            .unwrap();
        let a = store.now_ms();
        let b = store.now_ms();
        assert!(b > a);
    }
}
