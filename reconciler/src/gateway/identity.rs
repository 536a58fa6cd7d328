//! Agent identity over TLS: `Enroll` (a one-time join token and a CSR for a client
//! certificate naming the token's node) and the check that an attaching agent's verified
//! client certificate is one this cluster issued, not revoked, for the node it registers.

use std::sync::Arc;

use otherix_api::enrollment::JoinToken;
use otherix_api::proto::{EnrollRequest, EnrollResponse};
use rustls::pki_types::CertificateDer;

use super::{Gateway, GatewayError};
use crate::model::rfc3339;
use crate::pki::{self, Pki, PkiError};
use crate::store::JoinTokenUse;

/// Why an agent is refused. Every message says why, for both logs.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("no client certificate: enroll this agent first (otherix-agent --join-token)")]
    NoClientCert,
    #[error("client certificate {0} was not issued by this cluster")]
    UnknownCert(String),
    #[error("the certificate of node {node} was revoked; enroll it again with a new join token")]
    RevokedCert { node: String },
    #[error("the client certificate is for node {cert_node}, but Register names node {claimed}")]
    NodeMismatch { cert_node: String, claimed: String },
    #[error("{0}")]
    MalformedToken(String),
    #[error("the join token is unknown to this server")]
    UnknownToken,
    #[error("the join token for node {node} was already used")]
    UsedToken { node: String },
    #[error("the join token for node {node} expired at {expires_at}")]
    ExpiredToken { node: String, expires_at: String },
    #[error("the join token is for the cluster CA {token}, this server's CA is {server}")]
    WrongCluster { token: String, server: String },
    #[error("{0}")]
    BadCsr(String),
    #[error("this server runs with --insecure-http; enrollment needs TLS")]
    NoTls,
}

impl IdentityError {
    /// The gRPC code the agent sees.
    pub fn code(&self) -> tonic::Code {
        use IdentityError::*;
        match self {
            NoClientCert | UnknownCert(_) | UnknownToken => tonic::Code::Unauthenticated,
            RevokedCert { .. } | NodeMismatch { .. } | UsedToken { .. } | ExpiredToken { .. } => {
                tonic::Code::PermissionDenied
            }
            MalformedToken(_) | BadCsr(_) => tonic::Code::InvalidArgument,
            WrongCluster { .. } | NoTls => tonic::Code::FailedPrecondition,
        }
    }
}

/// A node's Register must name the node its certificate was issued for.
pub fn check_claim(cert_node: &str, claimed: &str) -> Result<(), IdentityError> {
    if cert_node == claimed {
        Ok(())
    } else {
        Err(IdentityError::NodeMismatch {
            cert_node: cert_node.to_owned(),
            claimed: claimed.to_owned(),
        })
    }
}

impl Gateway {
    /// The PKI when the gateway runs over TLS (then agents are identified by their
    /// client certificate); `None` with `--insecure-http`.
    pub fn pki(&self) -> Option<&Arc<Pki>> {
        self.pki.as_ref()
    }

    /// The node the verified client certificate (leaf first) was issued to.
    pub async fn authenticate_peer(
        &self,
        certs: Option<&[CertificateDer<'static>]>,
    ) -> Result<String, GatewayError> {
        let Some(leaf) = certs.and_then(|c| c.first()) else {
            return Err(IdentityError::NoClientCert.into());
        };
        let fp = pki::fingerprint(leaf);
        let Some(record) = self.store.node_cert(&fp).await? else {
            return Err(IdentityError::UnknownCert(fp).into());
        };
        if record.revoked_at_ms.is_some() {
            return Err(IdentityError::RevokedCert { node: record.node }.into());
        }
        Ok(record.node)
    }

    /// Trades a join token and a CSR for a node certificate. The CSR is checked before the
    /// token is consumed, so a broken request does not burn it.
    pub async fn enroll_node(&self, req: &EnrollRequest) -> Result<EnrollResponse, GatewayError> {
        let Some(pki) = self.pki.clone() else {
            return Err(IdentityError::NoTls.into());
        };
        let token = JoinToken::parse(&req.join_token)
            .map_err(|e| IdentityError::MalformedToken(e.to_string()))?;
        if token.ca_fingerprint != pki.ca_fingerprint() {
            return Err(IdentityError::WrongCluster {
                token: token.ca_fingerprint,
                server: pki.ca_fingerprint().to_owned(),
            }
            .into());
        }
        // Validate the CSR (signature, shape) with a throwaway name first.
        pki.sign_node_csr(&req.csr_pem, "csr-check")
            .map_err(|e| IdentityError::BadCsr(crate::error_chain(&e)))?;
        let now = self.store.now_ms();
        let node = match self
            .store
            .consume_join_token(&pki::join_secret_hash(&token.secret), now)
            .await?
        {
            JoinTokenUse::Consumed { node } => node,
            JoinTokenUse::Unknown => return Err(IdentityError::UnknownToken.into()),
            JoinTokenUse::Used { node } => return Err(IdentityError::UsedToken { node }.into()),
            JoinTokenUse::Expired {
                node,
                expires_at_ms,
            } => {
                return Err(IdentityError::ExpiredToken {
                    node,
                    expires_at: rfc3339(expires_at_ms),
                }
                .into())
            }
        };
        let signed = pki
            .sign_node_csr(&req.csr_pem, &node)
            .map_err(|e: PkiError| IdentityError::BadCsr(crate::error_chain(&e)))?;
        self.store
            .record_node_cert(&signed.fingerprint, &node, signed.not_after_ms)
            .await?;
        tracing::info!(node, fingerprint = %signed.fingerprint, "node enrolled; certificate issued");
        Ok(EnrollResponse {
            cert_pem: signed.cert_pem,
            ca_pem: pki.ca_pem().to_owned(),
            node,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_claim_table() {
        assert!(check_claim("node-1", "node-1").is_ok());
        let err = check_claim("node-1", "node-2").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the client certificate is for node node-1, but Register names node node-2"
        );
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn identity_error_codes() {
        let cases = [
            (IdentityError::NoClientCert, tonic::Code::Unauthenticated),
            (
                IdentityError::UnknownCert("x".into()),
                tonic::Code::Unauthenticated,
            ),
            (IdentityError::UnknownToken, tonic::Code::Unauthenticated),
            (
                IdentityError::RevokedCert { node: "n".into() },
                tonic::Code::PermissionDenied,
            ),
            (
                IdentityError::UsedToken { node: "n".into() },
                tonic::Code::PermissionDenied,
            ),
            (
                IdentityError::ExpiredToken {
                    node: "n".into(),
                    expires_at: "t".into(),
                },
                tonic::Code::PermissionDenied,
            ),
            (
                IdentityError::BadCsr("x".into()),
                tonic::Code::InvalidArgument,
            ),
            (IdentityError::NoTls, tonic::Code::FailedPrecondition),
        ];
        for (e, code) in cases {
            assert_eq!(e.code(), code, "{e}");
        }
    }
}
