//! otherixd: the otherix control plane. An axum HTTP API over a VM service, a sqlx store
//! (SQLite or PostgreSQL), a reconcile loop that turns desired state into tasks, a
//! scheduler, and the tonic gateway node agents attach to. [`daemon`] wires them up.

pub mod allocations;
pub mod api;
pub mod auth;
pub mod cursor;
pub mod daemon;
pub mod events;
pub mod gateway;
pub mod leader;
pub mod lifecycle;
pub mod locks;
pub mod manifests_dir;
pub mod metrics;
pub mod model;
pub mod pki;
pub mod reconcile;
pub mod relay;
pub mod retention;
pub mod scheduler;
pub mod service;
pub mod store;
pub mod tls_listener;

/// "outer: inner: innermost", for logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
