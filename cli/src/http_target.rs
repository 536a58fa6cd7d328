//! The CLI's [`ApplyTarget`]: the manifest routes of the otherixd HTTP API (`GET`/`PUT`/
//! `DELETE /v1/{vms,pools,networks,firmware}/{name}`, `/v1/cluster`, and the list routes
//! for `--prune`), sent through [`Client::execute`] so requests and the error envelope
//! are handled in one place. Task waits go through [`crate::wait`].

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use otherix_api::manifest::Kind;
use otherix_api::{ApplyRequest, ApplyResponse, Object, Task};
use otherix_manifests::{
    filter_owned, ApplyResult, ApplyTarget, DeleteResult, Error as ManifestsError, ObjectRef,
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
/// The kinds `--prune` lists, each with its collection path segment.
const LISTED: [Kind; 4] = [Kind::Vm, Kind::Pool, Kind::Network, Kind::Firmware];

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
    /// Tasks the server returned, so waiting starts without fetching them.
    tasks: HashMap<Uuid, Task>,
}

/// The collection path segment of a kind (`vms`, `pools`, ...).
fn collection(kind: Kind) -> &'static str {
    match kind {
        Kind::Vm => "vms",
        Kind::Pool => "pools",
        Kind::Network => "networks",
        Kind::Firmware => "firmware",
        Kind::ClusterSettings => "cluster",
    }
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
        })
    }
    match object {
        Object::Vm(m) => body(&m.spec, &m.metadata),
        Object::Pool(m) => body(&m.spec, &m.metadata),
        Object::Network(m) => body(&m.spec, &m.metadata),
        Object::Firmware(m) => body(&m.spec, &m.metadata),
        Object::ClusterSettings(m) => body(&m.spec, &m.metadata),
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
        }
    }

    /// Waits for a task this target saw (or any task by id) with the CLI's waiter.
    pub fn wait(&mut self, id: Uuid) -> Result<Task, WaitError> {
        let task = match self.tasks.remove(&id) {
            Some(t) => t,
            None => self.client.get_task(id, None)?.value,
        };
        wait::wait_for_task(self.client, task, self.wait_timeout, self.progress)
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

    fn remember(&mut self, task: Option<Task>) -> Option<Uuid> {
        let task = task?;
        let id = task.id;
        self.tasks.insert(id, task);
        Some(id)
    }
}

impl ApplyTarget for HttpTarget<'_> {
    fn get(&mut self, kind: Kind, name: &str) -> Result<Option<Value>, ManifestsError> {
        match self.send(Method::GET, &object_path(kind, name), &[], None) {
            Ok(answer) => Ok(Some(self.decode(answer).map_err(ManifestsError::target)?)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(ManifestsError::target(e)),
        }
    }

    fn apply(&mut self, object: &Object) -> Result<ApplyResult, ManifestsError> {
        let path = object_path(object.kind(), object.name());
        let body = apply_body(object).map_err(ManifestsError::target)?;
        let answer = self
            .send(Method::PUT, &path, &[], Some(&body))
            .map_err(ManifestsError::target)?;
        let resp: ApplyResponse<Value> = self.decode(answer).map_err(ManifestsError::target)?;
        Ok(ApplyResult {
            outcome: resp.outcome,
            task_id: self.remember(resp.task),
        })
    }

    fn delete(&mut self, kind: Kind, name: &str) -> Result<DeleteResult, ManifestsError> {
        match self.send(Method::DELETE, &object_path(kind, name), &[], None) {
            Ok(answer) => {
                // A VM answers `TaskAccepted {task, ...}`; other kinds may answer anything.
                let task = serde_json::from_str::<Value>(&answer.body)
                    .ok()
                    .and_then(|v| v.get("task").cloned())
                    .and_then(|t| serde_json::from_value::<Task>(t).ok());
                Ok(DeleteResult::Deleted {
                    task_id: self.remember(task),
                })
            }
            Err(e) if is_not_found(&e) => Ok(DeleteResult::NotFound),
            Err(e) => Err(ManifestsError::target(e)),
        }
    }

    fn list_owned(&mut self, source: &str) -> Result<Vec<ObjectRef>, ManifestsError> {
        let mut owned = Vec::new();
        for kind in LISTED {
            let mut cursor: Option<String> = None;
            loop {
                let mut query = vec![("limit", LIST_LIMIT)];
                if let Some(c) = &cursor {
                    query.push(("cursor", c));
                }
                let answer = self
                    .send(Method::GET, &["v1", collection(kind)], &query, None)
                    .map_err(ManifestsError::target)?;
                let page: Page = self.decode(answer).map_err(ManifestsError::target)?;
                owned.extend(filter_owned(kind, &page.items, source));
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
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
    fn object_paths_table() {
        let table = [
            (Kind::Vm, "web-1", "/v1/vms/web-1"),
            (Kind::Pool, "fast", "/v1/pools/fast"),
            (Kind::Network, "lan", "/v1/networks/lan"),
            (Kind::Firmware, "ovmf", "/v1/firmware/ovmf"),
            (Kind::ClusterSettings, "cluster", "/v1/cluster"),
        ];
        let client = Client::new("http://h:1/").unwrap();
        let mut sink = std::io::sink();
        let t = HttpTarget::new(&client, Duration::ZERO, &mut sink);
        for (kind, name, want) in table {
            assert_eq!(t.url(&object_path(kind, name)).path(), want);
        }
    }

    #[test]
    fn list_owned_pages_and_filters_on_annotations() {
        let mine = json!({"otherix.dev/source": "/m"});
        let server = FakeServer::start(vec![
            (200, json!({"items": [{"name": "a", "annotations": mine}, {"name": "b"}], "next_cursor": "c2"}).to_string()),
            (200, json!({"items": [{"name": "c", "annotations": mine}]}).to_string()),
            (200, json!({"items": [{"name": "p", "annotations": {"otherix.dev/source": "/x"}}]}).to_string()),
            (200, json!({"items": [{"name": "n", "annotations": mine}]}).to_string()),
            (200, json!({"items": [{"name": "ovmf", "builtin": true, "annotations": mine}]}).to_string()),
        ]);
        let client = Client::new(&server.url).unwrap();
        let mut sink = std::io::sink();
        let mut t = HttpTarget::new(&client, Duration::ZERO, &mut sink);
        let owned = t.list_owned("/m").unwrap();
        assert_eq!(
            owned,
            [
                (Kind::Vm, "a".to_owned()),
                (Kind::Vm, "c".to_owned()),
                (Kind::Network, "n".to_owned())
            ]
        );
        assert_eq!(
            server.requests(),
            [
                "GET /v1/vms?limit=1000",
                "GET /v1/vms?limit=1000&cursor=c2",
                "GET /v1/pools?limit=1000",
                "GET /v1/networks?limit=1000",
                "GET /v1/firmware?limit=1000",
            ]
        );
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
        assert_eq!(t.get(Kind::Vm, "web-1").unwrap(), None);
        assert_eq!(t.delete(Kind::Vm, "web-1").unwrap(), DeleteResult::NotFound);
        let err = CommandError::from(t.delete(Kind::Pool, "fast").unwrap_err());
        assert!(
            matches!(err, CommandError::Client(ClientError::Api { .. })),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "conflict: pool fast is used by vm web-1");
        let err = t.get(Kind::Pool, "fast").unwrap_err();
        assert!(
            err.to_string().starts_with("cannot reach otherix server"),
            "{err}"
        );
    }
}
