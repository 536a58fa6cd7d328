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
    declared_refs, delete_all, filter_owned, is_owned, owned_refs, plan_delete, plan_prune,
    DeleteLine, DeleteReport, DeleteVerb,
};
pub use target::{apply_each, ApplyResult, ApplyTarget, DeleteResult, ManyApplied, APPLY_MANY_MAX};
pub use watch::{run_watch, StopSignal, WatchEvent, WatchOptions};

use otherix_api::manifest::{object_reference, Kind};
use otherix_api::Object;

/// One object a target holds: its kind, its name and, for a VM, the project a document
/// named (`None`: the target's own project, [`ApplyTarget::default_project`]). Objects
/// of cluster-wide kinds never have a project.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: Kind,
    pub project: Option<String>,
    pub name: String,
}

impl ObjectRef {
    /// An object in the target's own project, or a cluster-wide one.
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        ObjectRef {
            kind,
            project: None,
            name: name.into(),
        }
    }

    /// A VM in `project` (`None`: the target's own).
    pub fn in_project(kind: Kind, project: Option<&str>, name: impl Into<String>) -> Self {
        ObjectRef {
            kind,
            project: project.map(str::to_owned),
            name: name.into(),
        }
    }

    /// What a document declares.
    pub fn of(object: &Object) -> Self {
        ObjectRef::in_project(object.kind(), object.project(), object.name())
    }

    /// The project this object's requests name, if any.
    pub fn project(&self) -> Option<&str> {
        self.project.as_deref()
    }
}

impl std::fmt::Display for ObjectRef {
    /// `vm/web-1`, `vm/team-a/web-1`, as every output line names an object.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&object_reference(self.kind, self.project(), &self.name))
    }
}

/// `vm/web-1`, as every output line names an object (of the target's own project).
pub fn reference(kind: Kind, name: &str) -> String {
    object_reference(kind, None, name)
}
