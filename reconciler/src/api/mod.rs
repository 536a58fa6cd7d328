//! The HTTP API (`/v1/...`, axum): the router, shared state, and thin handlers that parse
//! requests into typed commands and call the services. Errors become envelopes in
//! [`error`]; request parsing lives in [`extract`].

mod apply;
mod cluster;
mod entities;
pub mod error;
pub mod extract;
pub mod nodes;
mod ops;
mod tasks;
mod vms;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use otherix_api::ApiError;

use crate::service::{
    ApplyService, ClusterService, EntityService, OpsService, TaskService, VmService,
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
    pub enrollment: Arc<nodes::NodeEnrollment>,
}

/// The whole HTTP API.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/vms", post(vms::create).get(vms::list))
        .route(
            "/v1/vms/{name}",
            get(vms::get).put(apply::put_vm).delete(vms::delete),
        )
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
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ops::idempotency,
        ))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn not_found() -> HttpError {
    ApiError::not_found("no such route").into()
}
