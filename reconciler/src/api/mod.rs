//! The HTTP API (`/v1/...`, axum): the router, shared state, and thin handlers that parse
//! requests into typed commands and call the services. Errors become envelopes in
//! [`error`]; request parsing lives in [`extract`].

mod apply;
pub mod auth;
mod cluster;
mod console;
mod entities;
pub mod error;
pub mod events;
pub mod extract;
mod identity;
mod metrics;
pub mod nodes;
mod ops;
mod tasks;
mod vms;

use std::sync::Arc;

use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use otherix_api::ApiError;

use crate::service::{
    ApplyService, ClusterService, EntityService, EventService, IdentityService, OpsService,
    TaskService, VmService,
};
use error::HttpError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub vms: Arc<VmService>,
    pub tasks: Arc<TaskService>,
    pub cluster: Arc<ClusterService>,
    pub entities: Arc<EntityService>,
    pub ops: Arc<OpsService>,
    pub apply: Arc<ApplyService>,
    pub identity: Arc<IdentityService>,
    pub enrollment: Arc<nodes::NodeEnrollment>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub events: Arc<EventService>,
    pub console: Arc<crate::service::console::ConsoleService>,
}

/// The router under construction and every path registered on it, so the route list
/// tests walk is the server's own (a new route cannot be missed by them).
struct Routes {
    router: Router<AppState>,
    paths: Vec<&'static str>,
}

impl Routes {
    fn new() -> Self {
        Routes {
            router: Router::new(),
            paths: Vec::new(),
        }
    }

    fn route(mut self, path: &'static str, methods: MethodRouter<AppState>) -> Self {
        self.paths.push(path);
        self.router = self.router.route(path, methods);
        self
    }
}

/// Every route path of the API (axum patterns, e.g. `/v1/vms/{name}`), in registration
/// order. Which methods each path takes is found by asking the router.
pub fn route_paths() -> Vec<&'static str> {
    routes().paths
}

/// The whole HTTP API.
pub fn app(state: AppState) -> Router {
    routes()
        .router
        .fallback(not_found)
        // Layers run bottom-up: authenticate (every request but /healthz), then routing,
        // then authorize (the matched route against the caller's role), then the
        // Idempotency-Key replay, so a replay is only ever served to a caller allowed to
        // make the request.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ops::idempotency,
        ))
        .route_layer(axum::middleware::from_fn(auth::authorize))
        .route_layer(axum::middleware::from_fn(crate::metrics::http::tag_route))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        // Outermost: times every request, 401s included.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::http::observe,
        ))
        .with_state(state)
}

fn routes() -> Routes {
    Routes::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::scrape))
        .route("/v1/openapi.json", get(openapi_json))
        .route("/v1/vms", post(vms::create).get(vms::list))
        .route(
            "/v1/vms/{name}",
            get(vms::get).put(apply::put_vm).delete(vms::delete),
        )
        .route("/v1/apply", post(apply::apply_many))
        .route("/v1/vms/{name}/start", post(vms::start))
        .route("/v1/vms/{name}/stop", post(vms::stop))
        .route("/v1/vms/{name}/poweroff", post(vms::poweroff))
        .route("/v1/vms/{name}/reboot", post(vms::reboot))
        .route("/v1/vms/{name}/pause", post(vms::pause))
        .route("/v1/vms/{name}/resume", post(vms::resume))
        .route("/v1/vms/{name}/reset", post(vms::reset))
        .route("/v1/tasks", get(tasks::list))
        .route("/v1/tasks/{id}", get(tasks::get))
        .route("/v1/nodes", get(cluster::nodes))
        .route("/v1/nodes/{name}", get(cluster::node))
        .route("/v1/nodes/{name}/join-token", post(nodes::join_token))
        .route("/v1/nodes/{name}/revoke", post(nodes::revoke))
        .route("/v1/pools", get(cluster::pools).post(entities::create_pool))
        .route(
            "/v1/pools/{name}",
            get(cluster::pool)
                .put(entities::apply_pool)
                .delete(entities::delete_pool),
        )
        .route("/v1/pools/{name}/images", get(ops::pool_images))
        .route(
            "/v1/pools/{name}/prune-images",
            post(ops::prune_pool_images),
        )
        .route(
            "/v1/networks",
            get(entities::networks).post(entities::create_network),
        )
        .route(
            "/v1/networks/{name}",
            get(entities::network)
                .put(entities::apply_network)
                .delete(entities::delete_network),
        )
        .route(
            "/v1/firmware",
            get(entities::firmware_list).post(entities::create_firmware),
        )
        .route(
            "/v1/firmware/{name}",
            get(entities::firmware)
                .put(entities::apply_firmware)
                .delete(entities::delete_firmware),
        )
        .route(
            "/v1/cluster",
            get(entities::cluster).put(entities::apply_cluster),
        )
        .route("/v1/tasks/{id}/cancel", post(ops::cancel_task))
        .route("/v1/vms/{name}/logs", get(ops::vm_logs))
        .route("/v1/vms/{name}/console", get(console::attach))
        .route("/v1/whoami", get(identity::whoami))
        .route(
            "/v1/tokens",
            get(identity::list_tokens).post(identity::create_token),
        )
        .route("/v1/tokens/{name}", delete(identity::revoke_token))
        .route(
            "/v1/projects",
            get(identity::list_projects).post(identity::create_project),
        )
        .route(
            "/v1/projects/{name}",
            get(identity::get_project)
                .put(identity::apply_project)
                .delete(identity::delete_project),
        )
        .route("/v1/events", get(events::stream))
}

async fn healthz() -> &'static str {
    "ok"
}

/// `GET /v1/openapi.json`: the OpenAPI 3.1 document (`otherix_api::openapi`), built once.
async fn openapi_json() -> axum::Json<&'static serde_json::Value> {
    static DOCUMENT: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    axum::Json(DOCUMENT.get_or_init(otherix_api::openapi::document))
}

async fn not_found() -> HttpError {
    ApiError::not_found("no such route").into()
}
