//! Shared by the API test files: an in-process otherixd on a fresh database — SQLite in a
//! temp dir, or a new PostgreSQL database when `OTHERIXD_TEST_POSTGRES_URL` is set.

#![allow(dead_code)] // Each test file uses a different part.

use axum::Router;
use otherixd::daemon::Daemon;
use otherixd::store::default_database_url;
use sqlx::{Connection, Executor};

pub struct TestServer {
    pub daemon: Daemon,
    /// The app with the bootstrap admin token added to every request that has none: what
    /// the API suites drive (through the real authentication middleware).
    pub app: Router,
    /// The app as served: no token added (for 401/403/404 tests).
    pub raw_app: Router,
    /// The secret of the `admin` token created at first open.
    pub admin_token: String,
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

/// `app` with `Authorization: Bearer SECRET` added to requests that carry none.
pub fn with_token(app: Router, secret: &str) -> Router {
    let value = axum::http::HeaderValue::from_str(&format!("Bearer {secret}")).unwrap();
    app.layer(axum::middleware::map_request(
        move |mut req: axum::extract::Request| {
            let value = value.clone();
            async move {
                req.headers_mut()
                    .entry(axum::http::header::AUTHORIZATION)
                    .or_insert(value);
                req
            }
        },
    ))
}

/// A server on a fresh database in `dir`.
pub async fn open(dir: tempfile::TempDir) -> TestServer {
    let database_url = fresh_database_url(dir.path()).await;
    reopen(dir, database_url).await
}

/// A server on an existing database (e.g. after dropping the previous server).
pub async fn reopen(dir: tempfile::TempDir, database_url: String) -> TestServer {
    let daemon = Daemon::open(&database_url).await.unwrap();
    let admin_token = match daemon.bootstrap_admin_token(dir.path()).await.unwrap() {
        Some(path) => std::fs::read_to_string(path).unwrap().trim().to_owned(),
        None => std::fs::read_to_string(dir.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned(),
    };
    let raw_app = daemon.app();
    let app = with_token(raw_app.clone(), &admin_token);
    TestServer {
        daemon,
        app,
        raw_app,
        admin_token,
        dir,
        database_url,
    }
}
