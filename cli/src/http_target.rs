//! The CLI's [`ApplyTarget`]: the manifest routes of the otherixd HTTP API (`GET`/`PUT`/
//! `DELETE /v1/{projects,vms,pools,networks,firmware}/{name}`, `/v1/cluster`, and the list
//! routes for `--prune`), sent through [`Client::execute`] so requests and the error
//! envelope are handled in one place. Task waits go through [`crate::wait`].
//!
//! A VM whose document names `metadata.project` is addressed with `?project=P` (which wins
//! over the CLI's resolved project, see [`crate::client::scoped`]); other VMs go to the
//! resolved project as every VM command does. `--prune` lists VMs of every project with
//! `all_projects=true` and, when the token may not (403: a member or viewer), of the
//! resolved project and each project the documents name.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use otherix_api::manifest::Kind;
use otherix_api::{
    ApplyBatchRequest, ApplyBatchResponse, ApplyRequest, ApplyResponse, ApplyVm, Object, Task,
};
use otherix_manifests::{
    apply_each, filter_owned, ApplyResult, ApplyTarget, DeleteResult, Error as ManifestsError,
    ManyApplied, ObjectRef,
};
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::client::{Answer, Client, ClientError};
use crate::commands::CommandError;
use crate::wait::{self, WaitError};

/// Page size of the list calls behind `--prune`.
const LIST_LIMIT: &str = "1000";
/// The cluster-wide kinds `--prune` lists (VMs are listed per project).
const LISTED: [Kind; 4] = [Kind::Project, Kind::Pool, Kind::Network, Kind::Firmware];

/// The list envelope, with items kept as JSON (ownership is read from `annotations`).
#[derive(Deserialize)]
struct Page {
    items: Vec<Value>,
    #[serde(default)]
    next_cursor: Option<String>,
}

pub struct HttpTarget<'a> {
    client: &'a Client,
    wait_timeout: Duration,
    /// Where task waits print their progress dots.
    progress: &'a mut dyn Write,
    /// Tasks the server returned, so waiting starts without fetching them, each with the
    /// project its request named (`None`: the CLI's).
    tasks: HashMap<Uuid, (Task, Option<String>)>,
    /// The project documents without `metadata.project` go to, once asked.
    default_project: Option<String>,
}

/// The collection path segment of a kind (`vms`, `pools`, ...).
fn collection(kind: Kind) -> &'static str {
    match kind {
        Kind::Vm => "vms",
        Kind::Pool => "pools",
        Kind::Network => "networks",
        Kind::Firmware => "firmware",
        Kind::ClusterSettings => "cluster",
        Kind::Project => "projects",
    }
}

/// `project=P` for an object whose document names its project.
fn project_query(project: Option<&str>) -> Vec<(&'static str, &str)> {
    project.map(|p| ("project", p)).into_iter().collect()
}

fn is_forbidden(e: &ClientError) -> bool {
    matches!(e, ClientError::Api { status: 403, .. })
}

/// The object path of `kind`/`name`; cluster settings are the singleton `/v1/cluster`.
fn object_path(kind: Kind, name: &str) -> Vec<&str> {
    match kind {
        Kind::ClusterSettings => vec!["v1", "cluster"],
        _ => vec!["v1", collection(kind), name],
    }
}

/// `PUT` body of an object: `{spec, annotations}`.
fn apply_body(object: &Object) -> Result<Value, serde_json::Error> {
    fn body<S: serde::Serialize + Clone>(
        spec: &S,
        meta: &otherix_api::ObjectMeta,
    ) -> Result<Value, serde_json::Error> {
        serde_json::to_value(ApplyRequest {
            spec: spec.clone(),
            annotations: meta.annotations.clone(),
            labels: meta.labels.clone(),
        })
    }
    match object {
        Object::Project(m) => body(&m.spec, &m.metadata),
        Object::Vm(m) => body(&m.spec, &m.metadata),
        Object::Pool(m) => body(&m.spec, &m.metadata),
        Object::Network(m) => body(&m.spec, &m.metadata),
        Object::Firmware(m) => body(&m.spec, &m.metadata),
        Object::ClusterSettings(m) => body(&m.spec, &m.metadata),
    }
}

/// Nothing applied, item `index` failed.
fn failed_at(index: usize, error: ManifestsError) -> ManyApplied {
    ManyApplied {
        results: Vec::new(),
        failure: Some((index, error)),
    }
}

/// The item a `POST /v1/apply` error is about (`vms[3] (web-4): why` -> 3, with the
/// message cut to `why`, since the CLI names the object itself); 0 and the error as it
/// is when the message names none (a full node, a quota: the batch as a whole).
fn batch_item_error(e: ClientError) -> (usize, ClientError) {
    let ClientError::Api {
        status,
        code,
        message,
    } = e
    else {
        return (0, e);
    };
    let item = message
        .strip_prefix("vms[")
        .and_then(|rest| rest.split_once("] ("))
        .and_then(|(index, rest)| Some((index.parse::<usize>().ok()?, rest.split_once("): ")?.1)));
    match item {
        Some((index, why)) => (
            index,
            ClientError::Api {
                status,
                code,
                message: why.to_owned(),
            },
        ),
        None => (
            0,
            ClientError::Api {
                status,
                code,
                message,
            },
        ),
    }
}

fn is_not_found(e: &ClientError) -> bool {
    matches!(e, ClientError::Api { status: 404, code, .. } if code == "not_found")
}

impl<'a> HttpTarget<'a> {
    /// A target on `client`'s server; task waits give up after `wait_timeout` and print
    /// dots to `progress`.
    pub fn new(client: &'a Client, wait_timeout: Duration, progress: &'a mut dyn Write) -> Self {
        HttpTarget {
            client,
            wait_timeout,
            progress,
            tasks: HashMap::new(),
            default_project: None,
        }
    }

    /// Waits for a task this target saw (or any task by id) with the CLI's waiter. A task
    /// of a VM whose document named its project is polled in that project.
    pub fn wait(&mut self, id: Uuid) -> Result<Task, WaitError> {
        let (task, project) = match self.tasks.remove(&id) {
            Some(t) => t,
            None => (self.client.get_task(id, None)?.value, None),
        };
        match project {
            Some(p) => {
                let client = self.client.in_project(&p);
                wait::wait_for_task(&client, task, self.wait_timeout, self.progress)
            }
            None => wait::wait_for_task(self.client, task, self.wait_timeout, self.progress),
        }
    }

    /// Every page of `GET /v1/<collection>` with `query`.
    fn list_all(&self, kind: Kind, query: &[(&str, &str)]) -> Result<Vec<Value>, ClientError> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = vec![("limit", LIST_LIMIT)];
            q.extend_from_slice(query);
            if let Some(c) = &cursor {
                q.push(("cursor", c));
            }
            let answer = self.send(Method::GET, &["v1", collection(kind)], &q, None)?;
            let page: Page = self.decode(answer)?;
            items.extend(page.items);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(items),
            }
        }
    }

    #[cfg(test)]
    fn url(&self, segments: &[&str]) -> reqwest::Url {
        self.client.url(segments, &[])
    }

    /// Sends `method` to `segments` (and `query`) with an optional JSON body.
    fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Answer, ClientError> {
        let query: Vec<(&str, String)> = query.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        let mut req = self.client.request(method, segments, &query);
        if let Some(body) = body {
            req = req.json(body);
        }
        self.client.execute(req)
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, answer: Answer) -> Result<T, ClientError> {
        self.client.decode(answer).map(|f| f.value)
    }

    /// Keeps a task the server returned for a request to `project` (`None`: the CLI's).
    fn remember(&mut self, task: Option<Task>, project: Option<&str>) -> Option<Uuid> {
        let task = task?;
        let id = task.id;
        self.tasks.insert(id, (task, project.map(str::to_owned)));
        Some(id)
    }
}

impl ApplyTarget for HttpTarget<'_> {
    fn get(&mut self, object: &ObjectRef) -> Result<Option<Value>, ManifestsError> {
        let path = object_path(object.kind, &object.name);
        let query = project_query(object.project());
        match self.send(Method::GET, &path, &query, None) {
            Ok(answer) => Ok(Some(self.decode(answer).map_err(ManifestsError::target)?)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(ManifestsError::target(e)),
        }
    }

    fn apply(&mut self, object: &Object) -> Result<ApplyResult, ManifestsError> {
        let path = object_path(object.kind(), object.name());
        let body = apply_body(object).map_err(ManifestsError::target)?;
        let query = project_query(object.project());
        let answer = self
            .send(Method::PUT, &path, &query, Some(&body))
            .map_err(ManifestsError::target)?;
        let resp: ApplyResponse<Value> = self.decode(answer).map_err(ManifestsError::target)?;
        Ok(ApplyResult {
            outcome: resp.outcome,
            task_id: self.remember(resp.task, object.project()),
        })
    }

    /// One `POST /v1/apply` for VMs of one project (anything else: one PUT each). The
    /// server creates the new ones in one transaction, so a failure applied none of them;
    /// its message names the item (`vms[3] (web-4): ...`), which becomes the failed object.
    fn apply_many(&mut self, objects: &[Object]) -> ManyApplied {
        let project = objects.first().and_then(Object::project);
        let same_vms = objects
            .iter()
            .all(|o| o.kind() == Kind::Vm && o.project() == project);
        let vms: Option<Vec<ApplyVm>> = same_vms
            .then(|| {
                objects
                    .iter()
                    .map(|o| match o {
                        Object::Vm(m) => Some(ApplyVm {
                            name: m.metadata.name.clone(),
                            spec: m.spec.clone(),
                            annotations: m.metadata.annotations.clone(),
                            labels: m.metadata.labels.clone(),
                        }),
                        _ => None,
                    })
                    .collect()
            })
            .flatten();
        let Some(vms) = vms else {
            return apply_each(self, objects);
        };
        let body = match serde_json::to_value(ApplyBatchRequest { vms }) {
            Ok(b) => b,
            Err(e) => return failed_at(0, ManifestsError::target(e)),
        };
        let query = project_query(project);
        let answer = match self.send(Method::POST, &["v1", "apply"], &query, Some(&body)) {
            Ok(a) => a,
            Err(e) => {
                let (index, e) = batch_item_error(e);
                return failed_at(index.min(objects.len() - 1), ManifestsError::target(e));
            }
        };
        let resp: ApplyBatchResponse = match self.decode(answer) {
            Ok(r) => r,
            Err(e) => return failed_at(0, ManifestsError::target(e)),
        };
        let results = resp
            .vms
            .into_iter()
            .map(|r| ApplyResult {
                outcome: r.outcome,
                task_id: self.remember(r.task, project),
            })
            .collect();
        ManyApplied {
            results,
            failure: None,
        }
    }

    fn delete(&mut self, object: &ObjectRef) -> Result<DeleteResult, ManifestsError> {
        let path = object_path(object.kind, &object.name);
        let query = project_query(object.project());
        match self.send(Method::DELETE, &path, &query, None) {
            Ok(answer) => {
                // A VM answers `TaskAccepted {task, ...}`; other kinds may answer anything.
                let task = serde_json::from_str::<Value>(&answer.body)
                    .ok()
                    .and_then(|v| v.get("task").cloned())
                    .and_then(|t| serde_json::from_value::<Task>(t).ok());
                Ok(DeleteResult::Deleted {
                    task_id: self.remember(task, object.project()),
                })
            }
            Err(e) if is_not_found(&e) => Ok(DeleteResult::NotFound),
            Err(e) => Err(ManifestsError::target(e)),
        }
    }

    /// The CLI's resolved project, else the token's (`GET /v1/whoami`, asked once).
    fn default_project(&mut self) -> Result<String, ManifestsError> {
        if let Some(p) = self.client.project().or(self.default_project.as_deref()) {
            return Ok(p.to_owned());
        }
        let me = self.client.whoami().map_err(ManifestsError::target)?.value;
        self.default_project = Some(me.project.clone());
        Ok(me.project)
    }

    fn list_owned(
        &mut self,
        source: &str,
        projects: &[String],
    ) -> Result<Vec<ObjectRef>, ManifestsError> {
        let mut owned = Vec::new();
        match self.list_all(Kind::Vm, &[("all_projects", "true")]) {
            Ok(vms) => owned.extend(filter_owned(Kind::Vm, &vms, source, None)),
            Err(e) if is_forbidden(&e) => {
                for project in projects {
                    let vms = self
                        .list_all(Kind::Vm, &[("project", project)])
                        .map_err(ManifestsError::target)?;
                    owned.extend(filter_owned(Kind::Vm, &vms, source, Some(project)));
                }
            }
            Err(e) => return Err(ManifestsError::target(e)),
        }
        for kind in LISTED {
            let items = self.list_all(kind, &[]).map_err(ManifestsError::target)?;
            owned.extend(filter_owned(kind, &items, source, None));
        }
        Ok(owned)
    }

    fn wait_task(&mut self, task_id: Uuid) -> Result<(), ManifestsError> {
        self.wait(task_id).map(drop).map_err(ManifestsError::target)
    }
}

/// Server and wait errors keep their own variants (and so their exit codes); the rest
/// stay manifest errors.
impl From<ManifestsError> for CommandError {
    fn from(e: ManifestsError) -> Self {
        let ManifestsError::Target(boxed) = e else {
            return CommandError::Manifests(e);
        };
        let boxed = match boxed.downcast::<ClientError>() {
            Ok(c) => return CommandError::Client(*c),
            Err(b) => b,
        };
        match boxed.downcast::<WaitError>() {
            Ok(w) => CommandError::Wait(*w),
            Err(b) => CommandError::Manifests(ManifestsError::Target(b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::fake::FakeServer;
    use serde_json::json;

    #[test]
    fn batch_item_error_table() {
        let api = |message: &str| ClientError::Api {
            status: 400,
            code: "validation_failed".into(),
            message: message.into(),
        };
        let table = [
            (
                "vms[3] (web-4): spec.vcpus: must be 1..64",
                3,
                "spec.vcpus: must be 1..64",
            ),
            ("vms[0] (a): name: appears twice", 0, "name: appears twice"),
            ("no node can take the vm", 0, "no node can take the vm"),
            ("vms[x] (a): why", 0, "vms[x] (a): why"),
            ("vms[2] no colon", 0, "vms[2] no colon"),
        ];
        for (message, index, rest) in table {
            match batch_item_error(api(message)) {
                (i, ClientError::Api { message: m, .. }) => {
                    assert_eq!((i, m.as_str()), (index, rest), "{message}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn object_paths_table() {
        let table = [
            (Kind::Vm, "web-1", "/v1/vms/web-1"),
            (Kind::Pool, "fast", "/v1/pools/fast"),
            (Kind::Network, "lan", "/v1/networks/lan"),
            (Kind::Firmware, "ovmf", "/v1/firmware/ovmf"),
            (Kind::ClusterSettings, "cluster", "/v1/cluster"),
            (Kind::Project, "team-a", "/v1/projects/team-a"),
        ];
        let client = Client::new("http://h:1/").unwrap();
        let mut sink = std::io::sink();
        let t = HttpTarget::new(&client, Duration::ZERO, &mut sink);
        for (kind, name, want) in table {
            assert_eq!(t.url(&object_path(kind, name)).path(), want);
        }
    }

    #[test]
    fn list_owned_admin_lists_vms_of_all_projects_pages_and_filters_on_annotations() {
        let mine = json!({"otherix.dev/source": "/m"});
        let server = FakeServer::start(vec![
            (200, json!({"items": [{"name": "a", "project": "team-a", "annotations": mine}, {"name": "b", "project": "default"}], "next_cursor": "c2"}).to_string()),
            (200, json!({"items": [{"name": "c", "project": "default", "annotations": mine}]}).to_string()),
            (200, json!({"items": [{"name": "default", "annotations": mine}, {"name": "team-a", "annotations": mine}]}).to_string()),
            (200, json!({"items": [{"name": "p", "annotations": {"otherix.dev/source": "/x"}}]}).to_string()),
            (200, json!({"items": [{"name": "n", "annotations": mine}]}).to_string()),
            (200, json!({"items": [{"name": "ovmf", "builtin": true, "annotations": mine}]}).to_string()),
        ]);
        let client = Client::new(&server.url).unwrap();
        let mut sink = std::io::sink();
        let mut t = HttpTarget::new(&client, Duration::ZERO, &mut sink);
        let owned = t.list_owned("/m", &["default".into()]).unwrap();
        assert_eq!(
            owned,
            [
                ObjectRef::in_project(Kind::Vm, Some("team-a"), "a"),
                ObjectRef::in_project(Kind::Vm, Some("default"), "c"),
                ObjectRef::new(Kind::Project, "team-a"),
                ObjectRef::new(Kind::Network, "n"),
            ]
        );
        assert_eq!(
            server.requests(),
            [
                "GET /v1/vms?limit=1000&all_projects=true",
                "GET /v1/vms?limit=1000&all_projects=true&cursor=c2",
                "GET /v1/projects?limit=1000",
                "GET /v1/pools?limit=1000",
                "GET /v1/networks?limit=1000",
                "GET /v1/firmware?limit=1000",
            ]
        );
    }

    #[test]
    fn list_owned_member_refused_all_projects_lists_each_named_project() {
        let mine = json!({"otherix.dev/source": "/m"});
        let empty = (200, json!({"items": []}).to_string());
        let server = FakeServer::start(vec![
            (
                403,
                json!({"error": {"code": "forbidden", "message": "token dev (member) may not list all projects"}}).to_string(),
            ),
            (200, json!({"items": [{"name": "a", "project": "dev", "annotations": mine}]}).to_string()),
            empty.clone(),
            empty.clone(),
            empty.clone(),
            empty.clone(),
            empty,
        ]);
        let client = Client::connect(crate::client::ClientOptions {
            project: Some("dev".into()),
            ..crate::client::ClientOptions::plain(&server.url)
        })
        .unwrap();
        let mut sink = std::io::sink();
        let mut t = HttpTarget::new(&client, Duration::ZERO, &mut sink);
        assert_eq!(t.default_project().unwrap(), "dev");
        let owned = t.list_owned("/m", &["dev".into(), "ops".into()]).unwrap();
        assert_eq!(owned, [ObjectRef::in_project(Kind::Vm, Some("dev"), "a")]);
        assert_eq!(
            server.requests(),
            [
                "GET /v1/vms?limit=1000&all_projects=true",
                "GET /v1/vms?limit=1000&project=dev",
                "GET /v1/vms?limit=1000&project=ops",
                "GET /v1/projects?limit=1000",
                "GET /v1/pools?limit=1000",
                "GET /v1/networks?limit=1000",
                "GET /v1/firmware?limit=1000",
            ]
        );
    }

    #[test]
    fn vm_with_metadata_project_is_sent_to_that_project_others_to_the_resolved_one() {
        let vm = |project: &str| {
            let project = if project.is_empty() {
                String::new()
            } else {
                format!("  project: {project}\n")
            };
            let text = format!("apiVersion: otherix.dev/v1\nkind: VM\nmetadata:\n  name: web-1\n{project}spec: {{image_url: http://i/x, arch: amd64}}\n");
            otherix_manifests::load_stdin(&text)
                .unwrap()
                .remove(0)
                .object
        };
        let project = otherix_manifests::load_stdin(
            "apiVersion: otherix.dev/v1\nkind: Project\nmetadata: {name: team-a}\nspec: {max_vms: 2}\n",
        )
        .unwrap()
        .remove(0)
        .object;
        let applied = json!({"outcome": "created", "object": {}}).to_string();
        let server = FakeServer::start(vec![(200, applied)]);
        let client = Client::connect(crate::client::ClientOptions {
            project: Some("dev".into()),
            ..crate::client::ClientOptions::plain(&server.url)
        })
        .unwrap();
        let mut sink = std::io::sink();
        let mut t = HttpTarget::new(&client, Duration::ZERO, &mut sink);
        t.apply(&project).unwrap();
        t.apply(&vm("team-a")).unwrap();
        t.apply(&vm("")).unwrap();
        t.get(&ObjectRef::of(&vm("team-a"))).unwrap();
        t.delete(&ObjectRef::of(&vm("team-a"))).unwrap();
        t.delete(&ObjectRef::of(&vm(""))).unwrap();
        let spec =
            r#"{"spec":{"arch":"amd64","image_url":"http://i/x","memory_mb":2048,"vcpus":2}}"#;
        assert_eq!(
            server.requests(),
            [
                r#"PUT /v1/projects/team-a {"spec":{"max_vms":2}}"#.to_owned(),
                format!("PUT /v1/vms/web-1?project=team-a {spec}"),
                format!("PUT /v1/vms/web-1?project=dev {spec}"),
                "GET /v1/vms/web-1?project=team-a".to_owned(),
                "DELETE /v1/vms/web-1?project=team-a".to_owned(),
                "DELETE /v1/vms/web-1?project=dev".to_owned(),
            ]
        );
    }

    #[test]
    fn default_project_without_a_resolved_one_is_the_tokens_asked_once() {
        let server = FakeServer::start(vec![(
            200,
            json!({"name": "ci", "role": "member", "project": "team-a"}).to_string(),
        )]);
        let client = Client::new(&server.url).unwrap();
        let mut sink = std::io::sink();
        let mut t = HttpTarget::new(&client, Duration::ZERO, &mut sink);
        assert_eq!(t.default_project().unwrap(), "team-a");
        assert_eq!(t.default_project().unwrap(), "team-a");
        assert_eq!(server.requests(), ["GET /v1/whoami"]);
    }

    #[test]
    fn get_and_delete_not_found_are_none_other_errors_surface() {
        let nf = r#"{"error":{"code":"not_found","message":"vm web-1 not found"}}"#;
        let server = FakeServer::start(vec![
            (404, nf.into()),
            (404, nf.into()),
            (
                409,
                r#"{"error":{"code":"conflict","message":"pool fast is used by vm web-1"}}"#.into(),
            ),
            (404, "no route".into()),
        ]);
        let client = Client::new(&server.url).unwrap();
        let mut sink = std::io::sink();
        let mut t = HttpTarget::new(&client, Duration::ZERO, &mut sink);
        let vm = ObjectRef::new(Kind::Vm, "web-1");
        let pool = ObjectRef::new(Kind::Pool, "fast");
        assert_eq!(t.get(&vm).unwrap(), None);
        assert_eq!(t.delete(&vm).unwrap(), DeleteResult::NotFound);
        let err = CommandError::from(t.delete(&pool).unwrap_err());
        assert!(
            matches!(err, CommandError::Client(ClientError::Api { .. })),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "conflict: pool fast is used by vm web-1");
        let err = t.get(&pool).unwrap_err();
        assert!(
            err.to_string().starts_with("cannot reach otherix server"),
            "{err}"
        );
    }
}
