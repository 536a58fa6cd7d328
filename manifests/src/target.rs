//! Where manifests are applied: the [`ApplyTarget`] trait. The CLI implements it over HTTP
//! (`PUT/GET/DELETE /v1/<kind>/{name}`), otherixd over its service. It is synchronous; a
//! server runs the code that drives it (e.g. [`crate::run_watch`]) on a blocking thread.

use otherix_api::manifest::Kind;
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
    /// `cluster`.
    fn get(&mut self, kind: Kind, name: &str) -> Result<Option<serde_json::Value>, Error>;

    /// Server-side upsert of the object's desired state: its spec and its annotations
    /// (which replace the stored ones), as `PUT /v1/<kind>/{name}`.
    fn apply(&mut self, object: &Object) -> Result<ApplyResult, Error>;

    /// Deletes one object (`DELETE /v1/<kind>/{name}`).
    fn delete(&mut self, kind: Kind, name: &str) -> Result<DeleteResult, Error>;

    /// Every live pool, network, firmware and VM whose `otherix.dev/source` annotation is
    /// exactly `source` (see [`crate::filter_owned`]).
    fn list_owned(&mut self, source: &str) -> Result<Vec<ObjectRef>, Error>;

    /// Blocks until the task is terminal; an error if it did not succeed (or took too
    /// long, by the target's own limit). Used between a VM's delete and the delete of
    /// the pool or network it used.
    fn wait_task(&mut self, task_id: Uuid) -> Result<(), Error>;
}

impl<T: ApplyTarget + ?Sized> ApplyTarget for &mut T {
    fn get(&mut self, kind: Kind, name: &str) -> Result<Option<serde_json::Value>, Error> {
        (**self).get(kind, name)
    }
    fn apply(&mut self, object: &Object) -> Result<ApplyResult, Error> {
        (**self).apply(object)
    }
    fn delete(&mut self, kind: Kind, name: &str) -> Result<DeleteResult, Error> {
        (**self).delete(kind, name)
    }
    fn list_owned(&mut self, source: &str) -> Result<Vec<ObjectRef>, Error> {
        (**self).list_owned(source)
    }
    fn wait_task(&mut self, task_id: Uuid) -> Result<(), Error> {
        (**self).wait_task(task_id)
    }
}
