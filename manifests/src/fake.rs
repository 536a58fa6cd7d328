//! A recording in-memory [`ApplyTarget`] for unit tests: it keeps live objects as the
//! server would return them and answers apply like the server's upsert. VMs live in
//! projects (the target's own is `default` unless [`FakeTarget::set_default_project`]
//! says otherwise); a VM of the same name in two projects is two objects.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use otherix_api::manifest::Kind;
use otherix_api::{ApplyOutcome, Object, DEFAULT_PROJECT};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::prune::relative;
use crate::{ApplyResult, ApplyTarget, DeleteResult, Error, ObjectRef};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Get(String),
    /// Reference and the annotations sent.
    Apply(String, BTreeMap<String, String>),
    Delete(String),
    /// Source and the projects whose VMs were listed.
    ListOwned(String, Vec<String>),
    Wait(Uuid),
}

#[derive(Default)]
struct State {
    /// Keyed with the absolute project of VMs (never `None` for a VM).
    live: BTreeMap<ObjectRef, Value>,
    calls: Vec<Call>,
    tasks: u128,
    apply_failures: HashMap<String, String>,
    default_project: Option<String>,
    /// `list_owned` lists the VMs of every project (an admin), not only those asked for.
    sees_all_projects: bool,
}

impl State {
    fn default_project(&self) -> String {
        self.default_project
            .clone()
            .unwrap_or_else(|| DEFAULT_PROJECT.to_owned())
    }

    /// `r` with a VM's project filled in with the target's own.
    fn absolute(&self, r: &ObjectRef) -> ObjectRef {
        let mut r = r.clone();
        if r.kind.in_project() && r.project.is_none() {
            r.project = Some(self.default_project());
        }
        r
    }
}

/// Cloning shares the state (so a test can inspect a target a watcher thread owns).
#[derive(Clone, Default)]
pub struct FakeTarget(Arc<Mutex<State>>);

/// The live JSON of a typed object: `name`, `annotations`, `spec`, plus a status.
pub fn live_json(object: &Object) -> Value {
    let manifest = match object {
        Object::Project(m) => serde_json::to_value(m),
        Object::Vm(m) => serde_json::to_value(m),
        Object::Pool(m) => serde_json::to_value(m),
        Object::Network(m) => serde_json::to_value(m),
        Object::Firmware(m) => serde_json::to_value(m),
        Object::ClusterSettings(m) => serde_json::to_value(m),
    }
    .unwrap();
    json!({
        "name": object.name(),
        "annotations": manifest["metadata"].get("annotations").cloned().unwrap_or(json!({})),
        "spec": manifest["spec"],
        "status": {"phase": "running"},
    })
}

impl FakeTarget {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    /// The project documents without `metadata.project` go to.
    pub fn set_default_project(&mut self, project: &str) {
        self.state().default_project = Some(project.to_owned());
    }

    /// Makes `list_owned` list the VMs of every project, as an admin's target may.
    pub fn see_all_projects(&mut self) {
        self.state().sees_all_projects = true;
    }

    /// A live object in the target's own project (or cluster-wide).
    pub fn put_live(&mut self, kind: Kind, name: &str, live: Value) {
        self.put_live_in(kind, None, name, live);
    }

    /// A live object in `project` (VMs).
    pub fn put_live_in(&mut self, kind: Kind, project: Option<&str>, name: &str, live: Value) {
        let mut s = self.state();
        let key = s.absolute(&ObjectRef::in_project(kind, project, name));
        s.live.insert(key, live);
    }

    /// Live objects as output lines name them (the target's own project left out).
    pub fn live_refs(&self) -> Vec<String> {
        let s = self.state();
        let default = s.default_project();
        s.live
            .keys()
            .map(|r| relative(r.clone(), &default).to_string())
            .collect()
    }

    /// Makes applying `reference` fail with `message`.
    pub fn fail_apply(&mut self, reference: &str, message: &str) {
        self.state()
            .apply_failures
            .insert(reference.to_owned(), message.to_owned());
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.state().calls.clear();
    }

    fn next_task(state: &mut State) -> Uuid {
        state.tasks += 1;
        Uuid::from_u128(state.tasks)
    }
}

impl ApplyTarget for FakeTarget {
    fn get(&mut self, object: &ObjectRef) -> Result<Option<Value>, Error> {
        let mut s = self.state();
        s.calls.push(Call::Get(object.to_string()));
        let key = s.absolute(object);
        Ok(s.live.get(&key).cloned())
    }

    fn apply(&mut self, object: &Object) -> Result<ApplyResult, Error> {
        let mut s = self.state();
        let r = object.reference();
        s.calls.push(Call::Apply(
            r.clone(),
            object.metadata().annotations.clone(),
        ));
        if let Some(message) = s.apply_failures.get(&r) {
            return Err(Error::target(message.clone()));
        }
        let key = s.absolute(&ObjectRef::of(object));
        let new = live_json(object);
        let is_vm = object.kind() == Kind::Vm;
        let (outcome, task) = match s.live.get(&key) {
            None => (ApplyOutcome::Created, is_vm),
            Some(old) if old["spec"] == new["spec"] && old["annotations"] == new["annotations"] => {
                (ApplyOutcome::Unchanged, false)
            }
            Some(old) => (
                ApplyOutcome::Configured,
                is_vm && old["spec"].get("desired_phase") != new["spec"].get("desired_phase"),
            ),
        };
        let task_id = task.then(|| Self::next_task(&mut s));
        if outcome != ApplyOutcome::Unchanged {
            s.live.insert(key, new);
        }
        Ok(ApplyResult { outcome, task_id })
    }

    fn delete(&mut self, object: &ObjectRef) -> Result<DeleteResult, Error> {
        let mut s = self.state();
        s.calls.push(Call::Delete(object.to_string()));
        let key = s.absolute(object);
        if s.live.remove(&key).is_none() {
            return Ok(DeleteResult::NotFound);
        }
        let task_id = (object.kind == Kind::Vm).then(|| Self::next_task(&mut s));
        Ok(DeleteResult::Deleted { task_id })
    }

    fn default_project(&mut self) -> Result<String, Error> {
        Ok(self.state().default_project())
    }

    fn list_owned(&mut self, source: &str, projects: &[String]) -> Result<Vec<ObjectRef>, Error> {
        let mut s = self.state();
        s.calls
            .push(Call::ListOwned(source.to_owned(), projects.to_vec()));
        let mut owned = Vec::new();
        for kind in Kind::ALL {
            let mut scopes: Vec<Option<String>> = if !kind.in_project() {
                vec![None]
            } else if s.sees_all_projects {
                s.live.keys().map(|r| r.project.clone()).collect()
            } else {
                projects.iter().cloned().map(Some).collect()
            };
            scopes.sort();
            scopes.dedup();
            for scope in scopes {
                let scope = scope.as_deref();
                let items: Vec<Value> = s
                    .live
                    .iter()
                    .filter(|(r, _)| r.kind == kind && r.project() == scope)
                    .map(|(_, v)| v.clone())
                    .collect();
                owned.extend(crate::filter_owned(kind, &items, source, scope));
            }
        }
        Ok(owned)
    }

    fn wait_task(&mut self, task_id: Uuid) -> Result<(), Error> {
        self.state().calls.push(Call::Wait(task_id));
        Ok(())
    }
}
