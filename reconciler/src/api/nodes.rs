//! Node enrollment routes: `POST /v1/nodes/{name}/join-token` (a one-time token that
//! carries the CA fingerprint) and `POST /v1/nodes/{name}/revoke` (cuts a node off: its
//! certificates are revoked, its live session dropped). [`NodeEnrollment`] is the service;
//! the handlers only parse. Admin only (the auth middleware decides).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use otherix_api::enrollment::{
    CreateJoinTokenRequest, JoinTokenResponse, JOIN_TOKEN_DEFAULT_TTL_SECS, JOIN_TOKEN_MAX_TTL_SECS,
};
use otherix_api::{ApiError, ErrorCode, Node};

use super::error::HttpError;
use super::extract::{parse_json, VmName};
use super::AppState;
use crate::model::rfc3339;
use crate::pki::{self, Pki};
use crate::relay::Relay;
use crate::service::{ClusterService, ServiceError};
use crate::store::Store;

/// Issues join tokens and revokes nodes.
pub struct NodeEnrollment {
    store: Store,
    relay: Arc<Relay>,
    cluster: Arc<ClusterService>,
    /// `None` with `--insecure-http`: there is no CA to enroll against.
    pki: Option<Arc<Pki>>,
}

/// The lifetime a join token request asks for, checked.
pub fn join_token_ttl(requested: Option<u64>) -> Result<u64, ApiError> {
    match requested {
        None => Ok(JOIN_TOKEN_DEFAULT_TTL_SECS),
        Some(t) if (1..=JOIN_TOKEN_MAX_TTL_SECS).contains(&t) => Ok(t),
        Some(t) => Err(ApiError::validation(format!(
            "ttl_secs: must be 1..{JOIN_TOKEN_MAX_TTL_SECS} (7 days), got {t}"
        ))),
    }
}

impl NodeEnrollment {
    pub fn new(
        store: Store,
        relay: Arc<Relay>,
        cluster: Arc<ClusterService>,
        pki: Option<Arc<Pki>>,
    ) -> Self {
        NodeEnrollment {
            store,
            relay,
            cluster,
            pki,
        }
    }

    /// A new one-time join token for `node`; only its hash is stored.
    pub async fn join_token(
        &self,
        node: &str,
        req: CreateJoinTokenRequest,
    ) -> Result<JoinTokenResponse, ServiceError> {
        let ttl = join_token_ttl(req.ttl_secs)?;
        let Some(pki) = &self.pki else {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "this server runs with --insecure-http: agents attach by name, there is nothing to enroll",
            )
            .into());
        };
        let token = pki::generate_join_token(pki.ca_fingerprint());
        let expires_at_ms = self.store.now_ms() + (ttl as i64) * 1000;
        self.store
            .create_join_token(node, &pki::join_secret_hash(&token.secret), expires_at_ms)
            .await?;
        tracing::info!(node, ttl_secs = ttl, "join token issued");
        Ok(JoinTokenResponse {
            node: node.to_owned(),
            token: token.to_string(),
            expires_at: rfc3339(expires_at_ms),
        })
    }

    /// Revokes every certificate of `node`, burns its unused join tokens, drops its live
    /// gateway session and marks it not ready. The node must exist.
    pub async fn revoke(&self, node: &str) -> Result<Node, ServiceError> {
        let revoked = self.store.revoke_node_credentials(node).await?;
        let dropped = self
            .relay
            .kick(node, &format!("the certificate of node {node} was revoked"))
            .await?;
        self.store.mark_node_not_ready(node).await?;
        let node_row = self.cluster.node(node).await;
        if node_row.is_ok() || revoked > 0 {
            tracing::warn!(
                node,
                certificates = revoked,
                session_dropped = dropped,
                "node revoked"
            );
        }
        node_row
    }
}

pub async fn join_token(
    State(s): State<AppState>,
    VmName(node): VmName,
    body: Bytes,
) -> Result<(StatusCode, Json<JoinTokenResponse>), HttpError> {
    let req = if body.iter().all(u8::is_ascii_whitespace) {
        CreateJoinTokenRequest::default()
    } else {
        parse_json(&body)?
    };
    Ok((
        StatusCode::CREATED,
        Json(s.enrollment.join_token(&node, req).await?),
    ))
}

pub async fn revoke(
    State(s): State<AppState>,
    VmName(node): VmName,
) -> Result<Json<Node>, HttpError> {
    Ok(Json(s.enrollment.revoke(&node).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_token_ttl_table() {
        let cases = [
            (None, Some(3600)),
            (Some(1), Some(1)),
            (Some(7 * 24 * 3600), Some(7 * 24 * 3600)),
            (Some(0), None),
            (Some(7 * 24 * 3600 + 1), None),
        ];
        for (req, want) in cases {
            assert_eq!(join_token_ttl(req).ok(), want, "{req:?}");
        }
    }
}
