//! A recording in-memory [`ApplyTarget`] for unit tests: it keeps live objects as the
//! server would return them and answers apply like the server's upsert.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use otherix_api::manifest::Kind;
use otherix_api::{ApplyOutcome, Object};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{reference, ApplyResult, ApplyTarget, DeleteResult, Error, ObjectRef};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Get(String),
    /// Reference and the annotations sent.
    Apply(String, BTreeMap<String, String>),
    Delete(String),
    ListOwned(String),
    Wait(Uuid),
}

#[derive(Default)]
struct State {
    live: BTreeMap<(Kind, String), Value>,
    calls: Vec<Call>,
    tasks: u128,
    apply_failures: HashMap<String, String>,
}

/// Cloning shares the state (so a test can inspect a target a watcher thread owns).
#[derive(Clone, Default)]
pub struct FakeTarget(Arc<Mutex<State>>);

/// The live JSON of a typed object: `name`, `annotations`, `spec`, plus a status.
pub fn live_json(object: &Object) -> Value {
    let manifest = match object {
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

    pub fn put_live(&mut self, kind: Kind, name: &str, live: Value) {
        self.state().live.insert((kind, name.to_owned()), live);
    }

    pub fn live_refs(&self) -> Vec<String> {
        self.state()
            .live
            .keys()
            .map(|(k, n)| reference(*k, n))
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
    fn get(&mut self, kind: Kind, name: &str) -> Result<Option<Value>, Error> {
        let mut s = self.state();
        s.calls.push(Call::Get(reference(kind, name)));
        Ok(s.live.get(&(kind, name.to_owned())).cloned())
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
        let key = (object.kind(), object.name().to_owned());
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

    fn delete(&mut self, kind: Kind, name: &str) -> Result<DeleteResult, Error> {
        let mut s = self.state();
        s.calls.push(Call::Delete(reference(kind, name)));
        if s.live.remove(&(kind, name.to_owned())).is_none() {
            return Ok(DeleteResult::NotFound);
        }
        let task_id = (kind == Kind::Vm).then(|| Self::next_task(&mut s));
        Ok(DeleteResult::Deleted { task_id })
    }

    fn list_owned(&mut self, source: &str) -> Result<Vec<ObjectRef>, Error> {
        let mut s = self.state();
        s.calls.push(Call::ListOwned(source.to_owned()));
        let mut owned = Vec::new();
        for kind in Kind::ALL {
            let items: Vec<Value> = s
                .live
                .iter()
                .filter(|((k, _), _)| *k == kind)
                .map(|(_, v)| v.clone())
                .collect();
            owned.extend(crate::filter_owned(kind, &items, source));
        }
        Ok(owned)
    }

    fn wait_task(&mut self, task_id: Uuid) -> Result<(), Error> {
        self.state().calls.push(Call::Wait(task_id));
        Ok(())
    }
}
