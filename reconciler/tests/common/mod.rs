//! Shared by the API test files: an in-process otherixd on a fresh database — SQLite in a
//! temp dir, or a new PostgreSQL database when `OTHERIXD_TEST_POSTGRES_URL` is set.

#![allow(dead_code)] // Each test file uses a different part.

use axum::Router;
use otherixd::daemon::Daemon;
use otherixd::store::default_database_url;
use sqlx::{Connection, Executor};

pub struct TestServer {
    pub daemon: Daemon,
    pub app: Router,
    pub dir: tempfile::TempDir,
    pub database_url: String,
}

/// A fresh database: SQLite in `dir`, or a new PostgreSQL database when configured.
pub async fn fresh_database_url(dir: &std::path::Path) -> String {
    let Ok(base) = std::env::var("OTHERIXD_TEST_POSTGRES_URL") else {
        return default_database_url(dir);
    };
    sqlx::any::install_default_drivers();
    let name = format!("otherixd_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::AnyConnection::connect(&base).await.unwrap();
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let (server, _) = base.rsplit_once('/').unwrap();
    format!("{server}/{name}")
}

/// A server on a fresh database in `dir`.
pub async fn open(dir: tempfile::TempDir) -> TestServer {
    let database_url = fresh_database_url(dir.path()).await;
    reopen(dir, database_url).await
}

/// A server on an existing database (e.g. after dropping the previous server).
pub async fn reopen(dir: tempfile::TempDir, database_url: String) -> TestServer {
    let daemon = Daemon::open(&database_url).await.unwrap();
    let app = daemon.app();
    TestServer {
        daemon,
        app,
        dir,
        database_url,
    }
}
