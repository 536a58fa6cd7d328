//! Where manifests are applied: the [`ApplyTarget`] trait. The CLI implements it over HTTP
//! (`PUT/GET/DELETE /v1/<kind>/{name}`), otherixd over its service. It is synchronous; a
//! server runs the code that drives it (e.g. [`crate::run_watch`]) on a blocking thread.

use otherix_api::{ApplyOutcome, Object};
use uuid::Uuid;

use crate::{Error, ObjectRef};

/// What applying one object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyResult {
    pub outcome: ApplyOutcome,
    /// The task the change emitted (VM create / start / stop), if any.
    pub task_id: Option<Uuid>,
}

/// What applying several objects did: `results[i]` for `objects[i]`, up to the one that
/// failed (`failure`: its index and why; objects after it were not applied, and a target
/// that applies them together, all or none, reports no results).
#[derive(Debug, Default)]
pub struct ManyApplied {
    pub results: Vec<ApplyResult>,
    pub failure: Option<(usize, Error)>,
}

/// `objects` one [`ApplyTarget::apply`] after the other, up to the first failure.
pub fn apply_each<T: ApplyTarget + ?Sized>(target: &mut T, objects: &[Object]) -> ManyApplied {
    let mut done = ManyApplied::default();
    for (i, object) in objects.iter().enumerate() {
        match target.apply(object) {
            Ok(r) => done.results.push(r),
            Err(e) => {
                done.failure = Some((i, e));
                break;
            }
        }
    }
    done
}

/// The most objects [`crate::apply_all`] hands to one [`ApplyTarget::apply_many`].
pub const APPLY_MANY_MAX: usize = 500;

/// What deleting one object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteResult {
    /// Deleted, or deletion started (`task_id` for a VM's async `vm.delete`).
    Deleted { task_id: Option<Uuid> },
    /// There was no such object.
    NotFound,
}

/// A control plane manifests can be applied to. Every error is [`Error::Target`] (or any
/// other [`Error`]); "not found" is not an error where the signature can say so.
pub trait ApplyTarget {
    /// The live object as `GET /v1/<kind>/{name}` returns it (`name`, `annotations`,
    /// `spec`, ...), or `None` if there is none. For `ClusterSettings` the name is
    /// `cluster`. A VM is looked up in `object.project` (else the target's project).
    fn get(&mut self, object: &ObjectRef) -> Result<Option<serde_json::Value>, Error>;

    /// Server-side upsert of the object's desired state: its spec and its annotations
    /// (which replace the stored ones), as `PUT /v1/<kind>/{name}`; a VM goes to its
    /// `metadata.project` (else the target's project).
    fn apply(&mut self, object: &Object) -> Result<ApplyResult, Error>;

    /// Applies VMs of one project (at most [`APPLY_MANY_MAX`]) as `apply` would, in one
    /// go where the target can (the CLI: one `POST /v1/apply`, the new VMs created in one
    /// transaction). By default one `apply` after the other.
    fn apply_many(&mut self, objects: &[Object]) -> ManyApplied {
        apply_each(self, objects)
    }

    /// Deletes one object (`DELETE /v1/<kind>/{name}`).
    fn delete(&mut self, object: &ObjectRef) -> Result<DeleteResult, Error>;

    /// The project documents without `metadata.project` go to (the CLI's resolved
    /// project, else the token's; `default` for the server's own directory).
    fn default_project(&mut self) -> Result<String, Error>;

    /// Every live project, pool, network, firmware, and every VM of `projects` (at least:
    /// a target that may see every project lists every project's VMs), whose
    /// `otherix.dev/source` annotation is exactly `source` (see [`crate::filter_owned`]);
    /// each VM with the project it lives in.
    fn list_owned(&mut self, source: &str, projects: &[String]) -> Result<Vec<ObjectRef>, Error>;

    /// Blocks until the task is terminal; an error if it did not succeed (or took too
    /// long, by the target's own limit). Used between a VM's delete and the delete of
    /// the pool or network it used.
    fn wait_task(&mut self, task_id: Uuid) -> Result<(), Error>;
}

impl<T: ApplyTarget + ?Sized> ApplyTarget for &mut T {
    fn get(&mut self, object: &ObjectRef) -> Result<Option<serde_json::Value>, Error> {
        (**self).get(object)
    }
    fn apply(&mut self, object: &Object) -> Result<ApplyResult, Error> {
        (**self).apply(object)
    }
    fn apply_many(&mut self, objects: &[Object]) -> ManyApplied {
        (**self).apply_many(objects)
    }
    fn delete(&mut self, object: &ObjectRef) -> Result<DeleteResult, Error> {
        (**self).delete(object)
    }
    fn default_project(&mut self) -> Result<String, Error> {
        (**self).default_project()
    }
    fn list_owned(&mut self, source: &str, projects: &[String]) -> Result<Vec<ObjectRef>, Error> {
        (**self).list_owned(source, projects)
    }
    fn wait_task(&mut self, task_id: Uuid) -> Result<(), Error> {
        (**self).wait_task(task_id)
    }
}
