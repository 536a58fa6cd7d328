//! Harness for the end-to-end suite: runs the real `otherixd`, `otherix-agent` and `otherix`
//! binaries on loopback ports, serves test guest images over real HTTP, and cleans up every
//! process it started (QEMU included) when a test ends.
//!
//! The binaries must be built first (`cargo build --workspace --bins`, which
//! `scripts/test.sh` does); the test guests come from `tests/images/build.sh`.

pub mod cluster;
pub mod ha;
pub mod image_server;
pub mod netns;
pub mod paths;
pub mod postgres;
pub mod procs;
pub mod pty;
pub mod wait;

pub use cluster::{BackgroundCli, CliOutput, Cluster, ClusterOptions};
pub use ha::{HaCluster, HaOptions};
pub use image_server::ImageServer;

/// The UUID that follows `key` in `text` (e.g. `task=` in `created task=<uuid> ...`).
pub fn uuid_after<'a>(text: &'a str, key: &str) -> &'a str {
    let start = text
        .find(key)
        .unwrap_or_else(|| panic!("{key} not in {text:?}"))
        + key.len();
    let id = text
        .get(start..start + 36)
        .unwrap_or_else(|| panic!("no uuid after {key} in {text:?}"));
    assert!(
        otherix_api::validate::is_uuid_literal(id),
        "{id:?} is not a uuid"
    );
    id
}
