//! otherix-manifests: declarative manifests shared by `otherix create|delete|diff -f` and
//! `otherixd --manifests-dir`.
//!
//! Pure logic is kept apart from I/O: [`load`] reads files and parses them with
//! `otherix_api::manifest`, [`project`] turns live objects back into canonical manifest
//! YAML, [`diff`] renders unified diffs, [`apply`] and [`prune`] drive an
//! [`ApplyTarget`] (HTTP in the CLI, the service in the server), and [`watch`] re-applies
//! a directory on every change.

pub mod apply;
pub mod diff;
mod error;
pub mod load;
pub mod project;
pub mod prune;
pub mod target;
pub mod watch;

#[cfg(test)]
pub(crate) mod fake;

pub use apply::{apply_all, stamp_source, ApplyFailure, ApplyLine, ApplyReport};
pub use diff::{diff_objects, unified_diff, ObjectDiff};
pub use error::{Error, TargetError};
pub use load::{load_path, load_stdin, load_texts, source_id};
pub use project::{live_to_object, project_live, to_yaml};
pub use prune::{
    delete_all, filter_owned, is_owned, plan_delete, plan_prune, DeleteLine, DeleteReport,
    DeleteVerb,
};
pub use target::{ApplyResult, ApplyTarget, DeleteResult};
pub use watch::{run_watch, StopSignal, WatchEvent, WatchOptions};

/// A kind and name pair, e.g. `(Kind::Vm, "web-1")`.
pub type ObjectRef = (otherix_api::manifest::Kind, String);

/// `vm/web-1`, as every output line names an object.
pub fn reference(kind: otherix_api::manifest::Kind, name: &str) -> String {
    format!("{}/{name}", kind.short())
}
