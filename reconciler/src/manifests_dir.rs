//! `otherixd --manifests-dir DIR`: the server applies a directory of manifests at start-up
//! and on every change, with the same engine as `otherix create -f DIR --watch --prune`
//! (`otherix_manifests::run_watch`), through [`ServiceTarget`], an in-process
//! [`ApplyTarget`] over the service layer. The watcher is synchronous, so it runs on a
//! dedicated thread and calls the async services with `Handle::block_on`. The server owns
//! the directory: objects are stamped with its source annotation and pruned when their
//! documents are removed. It acts as an admin: a VM goes to the project its document
//! names (`metadata.project`), else to `default`; `Project` documents are applied
//! through the identity service, before everything else.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use otherix_api::manifest::Kind;
use otherix_api::{ApiError, ApplyRequest, ErrorCode, Object, Role, TaskStatus, DEFAULT_PROJECT};
use otherix_manifests::{
    filter_owned, run_watch, ApplyResult, ApplyTarget, DeleteResult, Error, ObjectRef, StopSignal,
    WatchEvent, WatchOptions,
};
use serde::Serialize;
use serde_json::Value;
use tokio::runtime::Handle;
use uuid::Uuid;

use crate::api::AppState;
use crate::auth::Caller;
use crate::service::entities::ListQuery;
use crate::service::{Actor, ListVmsQuery, ServiceError, MAX_LIMIT};

/// The `requested_by` of what the manifests-dir watcher applies.
pub const MANIFESTS_DIR_ACTOR: &str = "otherixd:manifests-dir";

/// How long pruning waits for a VM's vm.delete before deleting what it used.
const WAIT_TASK_LIMIT: Duration = Duration::from_secs(600);

/// The services as an [`ApplyTarget`].
pub struct ServiceTarget {
    rt: Handle,
    state: AppState,
}

fn target_err(e: ServiceError) -> Error {
    Error::target(e)
}

fn is_not_found(e: &ServiceError) -> bool {
    matches!(e, ServiceError::Api(a) if a.code == ErrorCode::NotFound)
}

fn as_json<T: Serialize>(r: Result<T, ServiceError>) -> Result<Value, ServiceError> {
    r.and_then(|v| serde_json::to_value(&v).map_err(|e| ApiError::internal(e.to_string()).into()))
}

fn json<T: Serialize>(v: &T) -> Result<Value, Error> {
    serde_json::to_value(v).map_err(Error::target)
}

impl ServiceTarget {
    /// A target calling `state`'s services on runtime `rt`; use it off the runtime's
    /// worker threads (it blocks).
    pub fn new(rt: Handle, state: AppState) -> Self {
        ServiceTarget { rt, state }
    }

    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    /// The server acting on its own manifests directory: an admin (of every project; its
    /// own is the default project).
    fn caller() -> Caller {
        Caller {
            name: MANIFESTS_DIR_ACTOR.to_owned(),
            role: Role::Admin,
            project: DEFAULT_PROJECT.to_owned(),
        }
    }

    /// The project of a VM document (`None`: the default project).
    fn project(project: Option<&str>) -> &str {
        project.unwrap_or(DEFAULT_PROJECT)
    }

    /// The watcher acting in `project` (`None`: the default project).
    fn actor(project: Option<&str>) -> Actor {
        Actor::new(Self::project(project), MANIFESTS_DIR_ACTOR)
    }

    /// Every page of an entity list, as JSON items.
    fn entity_items<T: Serialize>(
        &self,
        list: impl Fn(ListQuery) -> Result<otherix_api::ListResponse<T>, ServiceError>,
    ) -> Result<Vec<Value>, Error> {
        let mut items = Vec::new();
        let mut cursor = None;
        loop {
            let page = list(ListQuery {
                limit: Some(MAX_LIMIT),
                cursor,
            })
            .map_err(target_err)?;
            for item in &page.items {
                items.push(json(item)?);
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(items),
            }
        }
    }
}

impl ApplyTarget for ServiceTarget {
    fn get(&mut self, object: &ObjectRef) -> Result<Option<Value>, Error> {
        let s = &self.state;
        let name = object.name.as_str();
        let got = match object.kind {
            Kind::Project => as_json(self.block(s.identity.project(&Self::caller(), name))),
            Kind::Vm => as_json(self.block(s.vms.get(Self::project(object.project()), name))),
            Kind::Pool => as_json(self.block(s.entities.pool(name))),
            Kind::Network => as_json(self.block(s.entities.network(name))),
            Kind::Firmware => as_json(self.block(s.entities.firmware(name))),
            Kind::ClusterSettings => as_json(self.block(s.entities.cluster())),
        };
        match got {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(target_err(e)),
        }
    }

    fn apply(&mut self, object: &Object) -> Result<ApplyResult, Error> {
        fn req<S: Clone>(spec: &S, meta: &otherix_api::ObjectMeta) -> ApplyRequest<S> {
            ApplyRequest {
                spec: spec.clone(),
                annotations: meta.annotations.clone(),
                labels: meta.labels.clone(),
            }
        }
        let s = &self.state;
        let name = object.name();
        let (outcome, task_id) = match object {
            Object::Project(m) => self
                .block(
                    s.identity
                        .apply_project(name, m.spec, m.metadata.annotations.clone(), None),
                )
                .map(|(_, outcome)| (outcome, None)),
            Object::Vm(m) => self
                .block(s.apply.apply_vm(
                    &Self::actor(object.project()),
                    name,
                    req(&m.spec, &m.metadata),
                ))
                .map(|r| (r.outcome, r.task.map(|t| t.id))),
            Object::Pool(m) => self
                .block(s.entities.apply_pool(name, req(&m.spec, &m.metadata), None))
                .map(|r| (r.outcome, None)),
            Object::Network(m) => self
                .block(
                    s.entities
                        .apply_network(name, req(&m.spec, &m.metadata), None),
                )
                .map(|r| (r.outcome, None)),
            Object::Firmware(m) => self
                .block(
                    s.entities
                        .apply_firmware(name, req(&m.spec, &m.metadata), None),
                )
                .map(|r| (r.outcome, None)),
            Object::ClusterSettings(m) => self
                .block(s.entities.apply_cluster(req(&m.spec, &m.metadata), None))
                .map(|r| (r.outcome, None)),
        }
        .map_err(target_err)?;
        Ok(ApplyResult { outcome, task_id })
    }

    fn delete(&mut self, object: &ObjectRef) -> Result<DeleteResult, Error> {
        let s = &self.state;
        let name = object.name.as_str();
        let done = match object.kind {
            Kind::Project => {
                // The identity service deletes a missing project silently; say so.
                match self.block(s.identity.project(&Self::caller(), name)) {
                    Ok(_) => self
                        .block(s.identity.delete_project(name, None))
                        .map(|()| None),
                    Err(e) => Err(e),
                }
            }
            Kind::Vm => self
                .block(s.vms.delete(&Self::actor(object.project()), name))
                .map(|a| Some(a.task.id)),
            Kind::Pool => self
                .block(s.entities.delete_pool(name, None))
                .map(|()| None),
            Kind::Network => self
                .block(s.entities.delete_network(name, None))
                .map(|()| None),
            Kind::Firmware => self
                .block(s.entities.delete_firmware(name, None))
                .map(|()| None),
            Kind::ClusterSettings => {
                Err(ApiError::validation("the cluster settings cannot be deleted").into())
            }
        };
        match done {
            Ok(task_id) => Ok(DeleteResult::Deleted { task_id }),
            Err(e) if is_not_found(&e) => Ok(DeleteResult::NotFound),
            Err(e) => Err(target_err(e)),
        }
    }

    fn default_project(&mut self) -> Result<String, Error> {
        Ok(DEFAULT_PROJECT.to_owned())
    }

    /// An admin sees every project: VMs are listed across all of them, so a VM is pruned
    /// even once no document names its project any more.
    fn list_owned(&mut self, source: &str, _projects: &[String]) -> Result<Vec<ObjectRef>, Error> {
        let s = self.state.clone();
        let mut owned = Vec::new();
        let vms = self.entity_items(|q| {
            self.block(s.vms.list(ListVmsQuery {
                project: None,
                limit: q.limit,
                cursor: q.cursor,
                ..Default::default()
            }))
        })?;
        owned.extend(filter_owned(Kind::Vm, &vms, source, None));
        let projects = self.block(s.identity.list_projects(&Self::caller()));
        let projects: Vec<Value> = projects
            .map_err(target_err)?
            .items
            .iter()
            .map(json)
            .collect::<Result<_, _>>()?;
        owned.extend(filter_owned(Kind::Project, &projects, source, None));
        let pools = self.entity_items(|q| self.block(s.entities.pools(&q)))?;
        owned.extend(filter_owned(Kind::Pool, &pools, source, None));
        let networks = self.entity_items(|q| self.block(s.entities.networks(&q)))?;
        owned.extend(filter_owned(Kind::Network, &networks, source, None));
        let firmware = self.entity_items(|q| self.block(s.entities.firmware_list(&q)))?;
        owned.extend(filter_owned(Kind::Firmware, &firmware, source, None));
        Ok(owned)
    }

    fn wait_task(&mut self, task_id: Uuid) -> Result<(), Error> {
        let deadline = Instant::now() + WAIT_TASK_LIMIT;
        loop {
            let task = self
                .block(self.state.tasks.wait(&Self::caller(), task_id, 30, None))
                .map_err(target_err)?;
            match task.status {
                TaskStatus::Success => return Ok(()),
                status if status.is_terminal() => {
                    let why = task.error.map(|e| format!(": {}", e.message));
                    return Err(Error::target(format!(
                        "task {task_id} {status}{}",
                        why.unwrap_or_default()
                    )));
                }
                _ if Instant::now() >= deadline => {
                    return Err(Error::target(format!(
                        "task {task_id} still {} after {} s",
                        task.status,
                        WAIT_TASK_LIMIT.as_secs()
                    )))
                }
                _ => {}
            }
        }
    }
}

/// A running directory watcher; [`ManifestsWatcher::stop`] ends it.
pub struct ManifestsWatcher {
    stop: StopSignal,
    thread: JoinHandle<()>,
}

impl ManifestsWatcher {
    /// Starts applying `dir` (at once, then on every change, pruning what its removed
    /// documents declared) on a dedicated thread; every [`WatchEvent`] is logged. Call
    /// from within the runtime `state`'s services run on.
    pub fn spawn(dir: PathBuf, state: AppState) -> std::io::Result<ManifestsWatcher> {
        let rt = Handle::current();
        let stop = StopSignal::new();
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("manifests-dir".into())
            .spawn(move || {
                let mut target = ServiceTarget::new(rt, state);
                watch_retrying(&dir, &mut target, &stop2, RETRY_BASE);
            })?;
        Ok(ManifestsWatcher { stop, thread })
    }

    /// Signals the watcher to return and waits for it (blocking; at most one apply plus
    /// a poll interval).
    pub fn stop(self) {
        self.stop.stop();
        let _ = self.thread.join();
    }
}

/// First delay before a failed apply of the directory is tried again; it doubles up to
/// [`RETRY_CAP`] while applies keep failing.
const RETRY_BASE: Duration = Duration::from_secs(2);
const RETRY_CAP: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

/// `run_watch` with prune, restarted (which re-applies the whole directory) while an
/// apply failed for a reason a file change would not fix: at start-up no agent may have
/// attached yet, so creating a VM fails until one has. A directory that does not load
/// waits for the user's next edit.
fn watch_retrying(dir: &Path, target: &mut dyn ApplyTarget, stop: &StopSignal, base: Duration) {
    let opts = WatchOptions {
        prune: true,
        ..WatchOptions::default()
    };
    let mut delay = base;
    tracing::info!(dir = %dir.display(), "applying the manifests directory");
    loop {
        let failed_at: Mutex<Option<Instant>> = Mutex::new(None);
        let synced = std::sync::atomic::AtomicBool::new(false);
        let round = StopSignal::new();
        let result = std::thread::scope(|scope| {
            let ticker = scope.spawn(|| loop {
                if stop.is_stopped() {
                    round.stop();
                    return;
                }
                let failed = *failed_at.lock().expect("failed_at poisoned");
                if failed.is_some_and(|t| t.elapsed() >= delay) {
                    round.stop();
                    return;
                }
                if round.is_stopped() {
                    return;
                }
                std::thread::sleep(POLL);
            });
            let mut on_event = |event: WatchEvent| {
                let mut failed = failed_at.lock().expect("failed_at poisoned");
                match &event {
                    WatchEvent::Failed(_) | WatchEvent::Error(_) => {
                        failed.get_or_insert_with(Instant::now);
                    }
                    WatchEvent::Synced { .. } => {
                        *failed = None;
                        synced.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    WatchEvent::Invalid(_) => *failed = None,
                    _ => {}
                }
                drop(failed);
                log_event(event);
            };
            let result = run_watch(dir, target, &opts, &mut on_event, &round);
            round.stop();
            let _ = ticker.join();
            result
        });
        if let Err(e) = result {
            tracing::error!(dir = %dir.display(), error = %crate::error_chain(&e), "manifests directory watcher failed");
            return;
        }
        if stop.is_stopped() {
            return;
        }
        tracing::info!(dir = %dir.display(), "applying the manifests directory again after a failure");
        // Back off while applies keep failing; a round that synced starts over.
        delay = if synced.into_inner() {
            base
        } else {
            (delay * 2).min(RETRY_CAP)
        };
    }
}

fn log_event(event: WatchEvent) {
    match event {
        WatchEvent::Applied(line) => tracing::info!(target: "manifests", "{line}"),
        WatchEvent::Diff { reference, diff } => {
            tracing::info!(target: "manifests", "{reference} changed:\n{diff}")
        }
        WatchEvent::Pruned(line) => tracing::info!(target: "manifests", "{line}"),
        WatchEvent::Invalid(errors) => {
            for e in errors {
                tracing::warn!(target: "manifests", "invalid manifest (nothing applied): {e}");
            }
        }
        WatchEvent::Failed(f) => {
            tracing::warn!(target: "manifests", "{}: {}", f.reference(), f.error)
        }
        WatchEvent::Error(e) => {
            tracing::warn!(target: "manifests", "{}", crate::error_chain(&e))
        }
        WatchEvent::Synced { objects } => {
            tracing::info!(target: "manifests", objects, "manifests directory in sync")
        }
    }
}
