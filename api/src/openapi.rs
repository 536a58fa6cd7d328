//! The OpenAPI 3.1 description of the HTTP API: the operation table below (method, path,
//! query parameters, body and answer types) with every type's JSON Schema generated from
//! the wire types themselves (schemars). otherixd serves it at `GET /v1/openapi.json`; the
//! committed copy is `schemas/openapi.json` (`cargo run -p otherix-api --example
//! write_schemas` rewrites it; a test fails when it drifts, another checks the table
//! against the router's own routes, and the suite validates it with openapi-spec-validator).

use schemars::gen::{SchemaGenerator, SchemaSettings};
use schemars::schema::Schema;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

use crate::enrollment::{CreateJoinTokenRequest, JoinTokenResponse};
use crate::manifest::{ClusterSettingsSpec, FirmwareSpec, NetworkSpec, PoolSpec};
use crate::{
    ApplyBatchRequest, ApplyBatchResponse, ApplyRequest, ApplyResponse, CachedImage,
    ClusterSettings, CreateObjectRequest, CreateTokenRequest, CreateVmRequest, CreatedToken,
    ErrorEnvelope, Firmware, ListResponse, LogChunk, Network, Node, Pool, Project, ProjectSpec,
    Task, TaskAccepted, Token, Vm, VmSpec, WhoAmI,
};

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn s<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// What an operation answers on success.
#[derive(Clone, Copy)]
pub enum Answer {
    /// JSON of this type with this status.
    Json(u16, SchemaFn),
    /// No body (204).
    Empty,
    /// `text/plain` (health) or the Prometheus text format.
    Text(&'static str),
    /// 101 Switching Protocols to a WebSocket carrying what the text says.
    WebSocket(&'static str),
}

/// A query parameter: name, JSON type, description.
pub type Param = (&'static str, &'static str, &'static str);

/// One operation of the HTTP API.
#[derive(Clone, Copy)]
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub query: &'static [Param],
    pub body: Option<SchemaFn>,
    pub answer: Answer,
}

const PAGE: &[Param] = &[
    ("limit", "integer", "page size, 1..1000 (default 100)"),
    ("cursor", "string", "next_cursor of the previous page"),
];
const PROJECT: &[Param] = &[
    (
        "project",
        "string",
        "the project (admins: any; others: their own)",
    ),
    ("all_projects", "boolean", "every project (admins)"),
];
const VM_LIST: &[Param] = &[
    ("limit", "integer", "page size, 1..1000 (default 100)"),
    ("cursor", "string", "next_cursor of the previous page"),
    ("pool", "string", "only VMs in this pool"),
    ("node", "string", "only VMs on this node"),
    ("status", "string", "only VMs in this phase"),
    (
        "label",
        "string",
        "only VMs with these labels: key=value[,key=value...] (all must match)",
    ),
    (
        "project",
        "string",
        "the project (admins: any; others: their own)",
    ),
    ("all_projects", "boolean", "every project (admins)"),
];
const EVENTS: &[Param] = &[
    (
        "since",
        "string",
        "resume after this cursor (default: after the newest event); 410 cursor_expired when older than the retained events",
    ),
    (
        "kind",
        "string",
        "only these kinds, comma-separated: vm, task, node, pool, network, firmware, project, cluster",
    ),
    ("vm", "string", "only events about this VM (the VM and its tasks)"),
    (
        "project",
        "string",
        "the project (admins: any; others: their own)",
    ),
    ("all_projects", "boolean", "every project (admins)"),
];
const TASK_LIST: &[Param] = &[
    ("vm", "string", "only this VM's tasks"),
    ("limit", "integer", "page size, 1..1000 (default 100)"),
    ("cursor", "string", "next_cursor of the previous page"),
    (
        "project",
        "string",
        "the project (admins: any; others: their own)",
    ),
    ("all_projects", "boolean", "every project (admins)"),
];
const TASK_GET: &[Param] = &[
    ("wait_secs", "integer", "long-poll up to N seconds (max 60)"),
    (
        "status",
        "string",
        "answer once the status differs from this one",
    ),
    (
        "project",
        "string",
        "the project (admins: any; others: their own)",
    ),
];
const STOP: &[Param] = &[
    (
        "timeout_secs",
        "integer",
        "overrides spec.stop_timeout_secs for this call",
    ),
    (
        "project",
        "string",
        "the project (admins: any; others: their own)",
    ),
];
const LOGS: &[Param] = &[
    ("offset", "integer", "byte offset into the serial log"),
    ("max_bytes", "integer", "at most this many bytes"),
    (
        "project",
        "string",
        "the project (admins: any; others: their own)",
    ),
];

const CONSOLE: &[Param] = &[
    (
        "read_only",
        "boolean",
        "attach as a reader: any number may, besides the one writer (viewers may only read)",
    ),
    (
        "force",
        "boolean",
        "attach as the writer even if there is one (it is disconnected)",
    ),
    (
        "project",
        "string",
        "the project (admins: any; others: their own)",
    ),
];

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    query: &'static [Param],
    body: Option<SchemaFn>,
    answer: Answer,
) -> Operation {
    Operation {
        method,
        path,
        summary,
        query,
        body,
        answer,
    }
}

/// Every operation of the API (the router's routes; a test keeps the two equal).
pub fn operations() -> Vec<Operation> {
    use Answer::{Empty, Json, Text, WebSocket};
    let vm_op = |method, path, summary| {
        op(
            method,
            path,
            summary,
            PROJECT,
            None,
            Json(202, s::<TaskAccepted>),
        )
    };
    vec![
        op(
            "get",
            "/healthz",
            "Liveness (no token)",
            &[],
            None,
            Text("text/plain"),
        ),
        op(
            "get",
            "/metrics",
            "Prometheus metrics",
            &[],
            None,
            Text("application/openmetrics-text"),
        ),
        op(
            "get",
            "/v1/openapi.json",
            "This document",
            &[],
            None,
            Json(200, s::<Value>),
        ),
        op(
            "get",
            "/v1/events",
            "Stream of changes: one JSON Event {type, kind, object, cursor, at} per line, until the client goes; header Otherix-Cursor is where it starts",
            EVENTS,
            None,
            Text("application/x-ndjson"),
        ),
        op(
            "get",
            "/v1/whoami",
            "The calling token",
            &[],
            None,
            Json(200, s::<WhoAmI>),
        ),
        op(
            "get",
            "/v1/vms",
            "List VMs",
            VM_LIST,
            None,
            Json(200, s::<ListResponse<Vm>>),
        ),
        op(
            "post",
            "/v1/vms",
            "Create a VM",
            PROJECT,
            Some(s::<CreateVmRequest>),
            Json(202, s::<TaskAccepted>),
        ),
        op(
            "get",
            "/v1/vms/{name}",
            "Get a VM",
            PROJECT,
            None,
            Json(200, s::<Vm>),
        ),
        op(
            "put",
            "/v1/vms/{name}",
            "Apply a VM (server-side upsert)",
            PROJECT,
            Some(s::<ApplyRequest<VmSpec>>),
            Json(200, s::<ApplyResponse<Vm>>),
        ),
        vm_op("delete", "/v1/vms/{name}", "Delete a VM"),
        op(
            "post",
            "/v1/apply",
            "Apply many VMs of one project",
            PROJECT,
            Some(s::<ApplyBatchRequest>),
            Json(200, s::<ApplyBatchResponse>),
        ),
        vm_op("post", "/v1/vms/{name}/start", "Start a VM"),
        op(
            "post",
            "/v1/vms/{name}/stop",
            "Stop a VM (ACPI, then the timeout)",
            STOP,
            None,
            Json(202, s::<TaskAccepted>),
        ),
        vm_op("post", "/v1/vms/{name}/poweroff", "Power a VM off"),
        vm_op("post", "/v1/vms/{name}/reboot", "Reboot a VM"),
        op(
            "post",
            "/v1/vms/{name}/pause",
            "Pause a VM",
            PROJECT,
            None,
            Json(200, s::<Vm>),
        ),
        op(
            "post",
            "/v1/vms/{name}/resume",
            "Resume a VM",
            PROJECT,
            None,
            Json(200, s::<Vm>),
        ),
        op(
            "post",
            "/v1/vms/{name}/reset",
            "Reset a VM",
            PROJECT,
            None,
            Json(200, s::<Vm>),
        ),
        op(
            "get",
            "/v1/vms/{name}/logs",
            "Serial console bytes",
            LOGS,
            None,
            Json(200, s::<LogChunk>),
        ),
        op(
            "get",
            "/v1/vms/{name}/console",
            "Attach to the serial console (WebSocket)",
            CONSOLE,
            None,
            WebSocket("the serial port's bytes both ways (binary messages; a read-only session's input is dropped); the server closes with the reason when the console ends"),
        ),
        op(
            "get",
            "/v1/tasks",
            "List tasks, newest first",
            TASK_LIST,
            None,
            Json(200, s::<ListResponse<Task>>),
        ),
        op(
            "get",
            "/v1/tasks/{id}",
            "Get (or long-poll) a task",
            TASK_GET,
            None,
            Json(200, s::<Task>),
        ),
        op(
            "post",
            "/v1/tasks/{id}/cancel",
            "Cancel a task",
            PROJECT,
            None,
            Json(200, s::<Task>),
        ),
        op(
            "get",
            "/v1/nodes",
            "List nodes",
            &[],
            None,
            Json(200, s::<ListResponse<Node>>),
        ),
        op(
            "get",
            "/v1/nodes/{name}",
            "Get a node",
            &[],
            None,
            Json(200, s::<Node>),
        ),
        op(
            "post",
            "/v1/nodes/{name}/join-token",
            "Issue a join token",
            &[],
            Some(s::<CreateJoinTokenRequest>),
            Json(201, s::<JoinTokenResponse>),
        ),
        op(
            "post",
            "/v1/nodes/{name}/revoke",
            "Revoke a node",
            &[],
            None,
            Json(200, s::<Node>),
        ),
        op(
            "get",
            "/v1/pools",
            "List pools",
            &[],
            None,
            Json(200, s::<ListResponse<Pool>>),
        ),
        op(
            "post",
            "/v1/pools",
            "Create a pool",
            &[],
            Some(s::<CreateObjectRequest<PoolSpec>>),
            Json(201, s::<Pool>),
        ),
        op(
            "get",
            "/v1/pools/{name}",
            "Get a pool",
            &[],
            None,
            Json(200, s::<Pool>),
        ),
        op(
            "put",
            "/v1/pools/{name}",
            "Apply a pool",
            &[],
            Some(s::<ApplyRequest<PoolSpec>>),
            Json(200, s::<ApplyResponse<Pool>>),
        ),
        op(
            "delete",
            "/v1/pools/{name}",
            "Delete a pool",
            &[],
            None,
            Empty,
        ),
        op(
            "get",
            "/v1/pools/{name}/images",
            "Cached images per node",
            &[],
            None,
            Json(200, s::<ListResponse<CachedImage>>),
        ),
        op(
            "post",
            "/v1/pools/{name}/prune-images",
            "Remove unused cached images",
            &[],
            None,
            Json(200, s::<ListResponse<CachedImage>>),
        ),
        op(
            "get",
            "/v1/networks",
            "List networks",
            PAGE,
            None,
            Json(200, s::<ListResponse<Network>>),
        ),
        op(
            "post",
            "/v1/networks",
            "Create a network",
            &[],
            Some(s::<CreateObjectRequest<NetworkSpec>>),
            Json(201, s::<Network>),
        ),
        op(
            "get",
            "/v1/networks/{name}",
            "Get a network",
            &[],
            None,
            Json(200, s::<Network>),
        ),
        op(
            "put",
            "/v1/networks/{name}",
            "Apply a network",
            &[],
            Some(s::<ApplyRequest<NetworkSpec>>),
            Json(200, s::<ApplyResponse<Network>>),
        ),
        op(
            "delete",
            "/v1/networks/{name}",
            "Delete a network",
            &[],
            None,
            Empty,
        ),
        op(
            "get",
            "/v1/firmware",
            "List firmware",
            PAGE,
            None,
            Json(200, s::<ListResponse<Firmware>>),
        ),
        op(
            "post",
            "/v1/firmware",
            "Create a firmware",
            &[],
            Some(s::<CreateObjectRequest<FirmwareSpec>>),
            Json(201, s::<Firmware>),
        ),
        op(
            "get",
            "/v1/firmware/{name}",
            "Get a firmware",
            &[],
            None,
            Json(200, s::<Firmware>),
        ),
        op(
            "put",
            "/v1/firmware/{name}",
            "Apply a firmware",
            &[],
            Some(s::<ApplyRequest<FirmwareSpec>>),
            Json(200, s::<ApplyResponse<Firmware>>),
        ),
        op(
            "delete",
            "/v1/firmware/{name}",
            "Delete a firmware",
            &[],
            None,
            Empty,
        ),
        op(
            "get",
            "/v1/cluster",
            "Cluster settings",
            &[],
            None,
            Json(200, s::<ClusterSettings>),
        ),
        op(
            "put",
            "/v1/cluster",
            "Apply cluster settings",
            &[],
            Some(s::<ApplyRequest<ClusterSettingsSpec>>),
            Json(200, s::<ApplyResponse<ClusterSettings>>),
        ),
        op(
            "get",
            "/v1/tokens",
            "List tokens",
            &[],
            None,
            Json(200, s::<ListResponse<Token>>),
        ),
        op(
            "post",
            "/v1/tokens",
            "Create a token",
            &[],
            Some(s::<CreateTokenRequest>),
            Json(201, s::<CreatedToken>),
        ),
        op(
            "delete",
            "/v1/tokens/{name}",
            "Revoke a token",
            &[],
            None,
            Empty,
        ),
        op(
            "get",
            "/v1/projects",
            "List projects",
            PAGE,
            None,
            Json(200, s::<ListResponse<Project>>),
        ),
        op(
            "post",
            "/v1/projects",
            "Create a project",
            &[],
            Some(s::<CreateObjectRequest<ProjectSpec>>),
            Json(201, s::<Project>),
        ),
        op(
            "get",
            "/v1/projects/{name}",
            "Get a project",
            &[],
            None,
            Json(200, s::<Project>),
        ),
        op(
            "put",
            "/v1/projects/{name}",
            "Apply a project",
            &[],
            Some(s::<ApplyRequest<ProjectSpec>>),
            Json(200, s::<ApplyResponse<Project>>),
        ),
        op(
            "delete",
            "/v1/projects/{name}",
            "Delete a project",
            &[],
            None,
            Empty,
        ),
    ]
}

/// The whole document.
pub fn document() -> Value {
    let settings = SchemaSettings::draft2019_09().with(|s| {
        s.definitions_path = "#/components/schemas/".to_owned();
        s.option_add_null_type = true;
    });
    let mut gen = SchemaGenerator::new(settings);
    let error = serde_json::to_value(gen.subschema_for::<ErrorEnvelope>()).expect("schema");
    let mut paths: Map<String, Value> = Map::new();
    for o in operations() {
        let item = paths.entry(o.path.to_owned()).or_insert_with(|| json!({}));
        item[o.method] = operation(&o, &mut gen, &error);
    }
    let schemas: Map<String, Value> = gen
        .take_definitions()
        .into_iter()
        .map(|(k, v)| (k, serde_json::to_value(v).expect("schema")))
        .collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "otherix",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The otherix control plane API (otherixd). Every route but /healthz needs `Authorization: Bearer otx_...`; errors are {\"error\": {code, message}}.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    })
}

fn operation(o: &Operation, gen: &mut SchemaGenerator, error: &Value) -> Value {
    let mut params: Vec<Value> = path_params(o.path)
        .into_iter()
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    params.extend(o.query.iter().map(|(name, ty, about)| {
        json!({"name": name, "in": "query", "required": false, "description": about, "schema": {"type": ty}})
    }));
    let json_of = |schema: Value| json!({"application/json": {"schema": schema}});
    let mut responses = Map::new();
    match o.answer {
        Answer::Json(status, schema) => {
            let schema = serde_json::to_value(schema(gen)).expect("schema");
            responses.insert(
                status.to_string(),
                json!({"description": "success", "content": json_of(schema)}),
            );
        }
        Answer::Empty => {
            responses.insert("204".into(), json!({"description": "done"}));
        }
        Answer::WebSocket(what) => {
            responses.insert(
                "101".into(),
                json!({"description": format!("Switching Protocols: a WebSocket carrying {what}")}),
            );
        }
        Answer::Text(media) => {
            responses.insert(
                "200".into(),
                json!({"description": "success", "content": {media: {"schema": {"type": "string"}}}}),
            );
        }
    }
    if o.path != "/healthz" {
        responses.insert(
            "default".into(),
            json!({"description": "an error: 400 validation_failed, 401 unauthenticated, 403 forbidden, 404 not_found, 409 conflict, ...", "content": json_of(error.clone())}),
        );
    }
    let mut out = json!({
        "operationId": operation_id(o.method, o.path),
        "summary": o.summary,
        "parameters": params,
        "responses": responses,
    });
    if let Some(body) = o.body {
        let schema = serde_json::to_value(body(gen)).expect("schema");
        out["requestBody"] = json!({"required": true, "content": json_of(schema)});
    }
    if o.path == "/healthz" {
        out["security"] = json!([]);
    }
    out
}

/// `{name}` and `{id}` segments of a path template.
pub fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .collect()
}

/// `get /v1/vms/{name}/logs` -> `get_vms_name_logs`.
pub fn operation_id(method: &str, path: &str) -> String {
    let rest: Vec<String> = path
        .split('/')
        .filter(|seg| !seg.is_empty() && *seg != "v1")
        .map(|seg| {
            seg.trim_matches(|c| c == '{' || c == '}')
                .replace(['-', '.'], "_")
        })
        .collect();
    format!("{method}_{}", rest.join("_"))
}

/// The document as committed: pretty JSON and a newline.
pub fn document_text() -> String {
    serde_json::to_string_pretty(&document()).expect("json") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_params_and_operation_ids_table() {
        let table = [
            ("get", "/v1/vms", vec![], "get_vms"),
            (
                "get",
                "/v1/vms/{name}/logs",
                vec!["name"],
                "get_vms_name_logs",
            ),
            (
                "post",
                "/v1/tasks/{id}/cancel",
                vec!["id"],
                "post_tasks_id_cancel",
            ),
            (
                "post",
                "/v1/nodes/{name}/join-token",
                vec!["name"],
                "post_nodes_name_join_token",
            ),
            ("get", "/v1/openapi.json", vec![], "get_openapi_json"),
            ("get", "/healthz", vec![], "get_healthz"),
        ];
        for (method, path, params, id) in table {
            assert_eq!(path_params(path), params, "{path}");
            assert_eq!(operation_id(method, path), id, "{path}");
        }
    }

    #[test]
    fn operation_ids_are_unique_and_every_ref_resolves() {
        let doc = document();
        let mut ids = std::collections::BTreeSet::new();
        for o in operations() {
            assert!(
                ids.insert(operation_id(o.method, o.path)),
                "{} {}",
                o.method,
                o.path
            );
        }
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(schemas.contains_key(name), "dangling $ref {name}");
        }
        assert!(schemas.contains_key("Vm") && schemas.contains_key("ErrorEnvelope"));
    }

    #[test]
    fn committed_openapi_json_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/openapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == document_text(),
            "schemas/openapi.json is stale: run `cargo run -p otherix-api --example write_schemas`"
        );
    }
}
