//! A fresh PostgreSQL database for one test: a new database in the server named by
//! `OTHERIXD_TEST_POSTGRES_URL` when it is set (as `scripts/test.sh` does in its PostgreSQL
//! phase), otherwise a throwaway server started with `scripts/postgres-for-tests.sh` and
//! stopped when the [`TestDatabase`] is dropped. Queries go through the real `psql` client.

use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::paths::workspace_root;

pub struct TestDatabase {
    /// `postgres://.../<fresh database>`, what `otherixd --database-url` takes.
    pub url: String,
    /// The admin URL (database `postgres` of the same server), to drop ours at the end.
    admin_url: String,
    /// The data dir of the throwaway server this harness started, if it started one.
    server_dir: Option<PathBuf>,
}

impl TestDatabase {
    pub fn fresh() -> TestDatabase {
        let (admin_url, server_dir) = match std::env::var("OTHERIXD_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => (url, None),
            _ => start_server(),
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("otherix_e2e_{}_{nanos}", std::process::id());
        psql(&admin_url, &format!("CREATE DATABASE {name}"));
        let (server, _) = admin_url
            .rsplit_once('/')
            .expect("a postgres URL ends in /DATABASE");
        TestDatabase {
            url: format!("{server}/{name}"),
            admin_url,
            server_dir,
        }
    }

    /// Runs `sql` on the test database; the rows, columns split on tabs (`psql -At`).
    pub fn query(&self, sql: &str) -> Vec<Vec<String>> {
        psql(&self.url, sql)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        match &self.server_dir {
            Some(dir) => {
                let _ = Command::new("bash")
                    .arg(workspace_root().join("scripts/postgres-for-tests.sh"))
                    .arg("stop")
                    .arg(dir)
                    .status();
            }
            None => {
                let name = self.url.rsplit('/').next().unwrap_or_default().to_owned();
                let _ = Command::new("psql")
                    .args([&self.admin_url, "-Atq", "-c"])
                    .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .output();
            }
        }
    }
}

/// Starts a throwaway server: its admin URL and data dir.
fn start_server() -> (String, Option<PathBuf>) {
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts/postgres-for-tests.sh"))
        .output()
        .expect("run scripts/postgres-for-tests.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/postgres-for-tests.sh failed: {stderr}"
    );
    let dir = stderr
        .lines()
        .last()
        .expect("postgres-for-tests.sh prints its data dir")
        .trim()
        .to_owned();
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (url, Some(PathBuf::from(dir)))
}

/// `psql URL -At -F TAB -c SQL`; panics with psql's stderr when it fails.
fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            url,
            "-At",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-F",
            "\t",
            "-c",
            sql,
        ])
        .output()
        .expect("run psql (Debian package postgresql-client)");
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
