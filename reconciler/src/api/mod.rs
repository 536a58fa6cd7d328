//! The HTTP API (`/v1/...`, axum): the router, shared state, and thin handlers that parse
//! requests into typed commands and call the services. Errors become envelopes in
//! [`error`]; request parsing lives in [`extract`].

mod cluster;
pub mod error;
pub mod extract;
mod tasks;
mod vms;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use otherix_api::ApiError;

use crate::service::{ClusterService, TaskService, VmService};
use error::HttpError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub vms: Arc<VmService>,
    pub tasks: Arc<TaskService>,
    pub cluster: Arc<ClusterService>,
}

/// The whole HTTP API.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/vms", post(vms::create).get(vms::list))
        .route("/v1/vms/{name}", get(vms::get).delete(vms::delete))
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
        .route("/v1/pools", get(cluster::pools))
        .route("/v1/pools/{name}", get(cluster::pool))
        .fallback(not_found)
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn not_found() -> HttpError {
    ApiError::not_found("no such route").into()
}
