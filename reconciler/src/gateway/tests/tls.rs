//! The gateway over real TLS (the listener and configs `otherixd` uses) with tonic
//! clients: Enroll with join tokens (one-time even under concurrent use, bound to the
//! cluster's CA), Attach refused without a certificate, with one this cluster did not
//! record, and after revoke (which also drops the live session).

use std::net::SocketAddr;
use std::sync::Arc;

use otherix_api::proto::agent_gateway_client::AgentGatewayClient;
use otherix_api::proto::{EnrollRequest, ServerMessage};
use rcgen::{CertificateParams, KeyPair};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Streaming};

use super::register;
use crate::daemon::{Daemon, DaemonOptions};
use crate::pki::{self, generate_ca, issue_server_identity, Pki};
use crate::store::default_database_url;
use crate::tls_listener::TlsIncoming;

struct TlsHarness {
    daemon: Daemon,
    addr: SocketAddr,
    pki: Arc<Pki>,
    _dir: tempfile::TempDir,
}

async fn tls_harness() -> TlsHarness {
    let dir = tempfile::tempdir().unwrap();
    let ca = generate_ca().unwrap();
    let id = issue_server_identity(&ca, &["localhost".into(), "127.0.0.1".into()]).unwrap();
    let pki = Arc::new(Pki::new(ca, id).unwrap());
    let mut daemon = Daemon::open_with(
        &default_database_url(dir.path()),
        DaemonOptions {
            pki: Some(pki.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    daemon.spawn_background(std::time::Duration::from_millis(200));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = TlsIncoming::spawn(listener, pki.gateway_config().unwrap()).unwrap();
    let server = daemon.gateway.clone().into_server();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(incoming.into_stream())
            .await
            .unwrap();
    });
    TlsHarness {
        daemon,
        addr,
        pki,
        _dir: dir,
    }
}

/// A client key and a CSR.
fn key_and_csr() -> (String, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params = CertificateParams::new(vec!["whatever".to_owned()]).unwrap();
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key.serialize_pem(), csr)
}

impl TlsHarness {
    async fn client(&self, identity: Option<(&str, &str)>) -> AgentGatewayClient<Channel> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.pki.ca_pem()))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let channel = Endpoint::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        AgentGatewayClient::new(channel)
    }

    async fn token(&self, node: &str) -> String {
        self.daemon
            .state
            .enrollment
            .join_token(node, Default::default())
            .await
            .unwrap()
            .token
    }

    /// Enrolls `node`; its (cert, key) PEM.
    async fn enroll(&self, node: &str) -> (String, String) {
        let (key, csr) = key_and_csr();
        let resp = self
            .client(None)
            .await
            .enroll(EnrollRequest {
                join_token: self.token(node).await,
                csr_pem: csr,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.node, node);
        assert_eq!(resp.ca_pem, self.pki.ca_pem());
        (resp.cert_pem, key)
    }

    /// Attach as `node` with `identity`: the stream, or the refusal.
    async fn attach(
        &self,
        identity: Option<(&str, &str)>,
        node: &str,
    ) -> Result<
        (
            mpsc::Sender<otherix_api::proto::AgentMessage>,
            Streaming<ServerMessage>,
        ),
        tonic::Status,
    > {
        let (tx, rx) = mpsc::channel(8);
        tx.send(register(node, vec![])).await.unwrap();
        let mut stream = self
            .client(identity)
            .await
            .attach(ReceiverStream::new(rx))
            .await?
            .into_inner();
        // The first message is Registered, or the refusal.
        stream.message().await?.expect("Registered");
        Ok((tx, stream))
    }

    async fn node_status(&self, node: &str) -> Option<String> {
        self.daemon.state.cluster.node(node).await.ok().map(|n| {
            serde_json::to_value(n.status)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
    }
}

#[tokio::test]
async fn tls_gateway_enrolled_node_attaches_and_others_are_refused() {
    let h = tls_harness().await;
    let (cert, key) = h.enroll("node-1").await;

    let (_tx, _stream) = h.attach(Some((&cert, &key)), "node-1").await.unwrap();
    assert_eq!(h.node_status("node-1").await.as_deref(), Some("ready"));

    // No client certificate.
    let err = h.attach(None, "node-2").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("no client certificate"), "{err:?}");

    // Signed by the CA but never issued through Enroll (not recorded).
    let (k2, csr2) = key_and_csr();
    let unrecorded = h.pki.sign_node_csr(&csr2, "node-2").unwrap();
    let err = h
        .attach(Some((&unrecorded.cert_pem, &k2)), "node-2")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("not issued by this cluster"),
        "{err:?}"
    );

    // node-1's certificate naming node-2.
    let err = h.attach(Some((&cert, &key)), "node-2").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("is for node node-1"), "{err:?}");
    assert_eq!(
        h.node_status("node-2").await,
        None,
        "no node row was written"
    );
}

#[tokio::test]
async fn tls_gateway_join_token_wins_once_under_concurrent_use() {
    let h = Arc::new(tls_harness().await);
    let token = h.token("node-1").await;
    let mut calls = Vec::new();
    for _ in 0..4 {
        let h = h.clone();
        let token = token.clone();
        calls.push(tokio::spawn(async move {
            let (_key, csr) = key_and_csr();
            h.client(None)
                .await
                .enroll(EnrollRequest {
                    join_token: token,
                    csr_pem: csr,
                })
                .await
        }));
    }
    let mut ok = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
                assert!(e.message().contains("already used"), "{e:?}");
            }
        }
    }
    assert_eq!(ok, 1);

    // A well-formed token this server never issued.
    let unknown = pki::generate_join_token(h.pki.ca_fingerprint()).to_string();
    let (_k, csr) = key_and_csr();
    let err = h
        .client(None)
        .await
        .enroll(EnrollRequest {
            join_token: unknown,
            csr_pem: csr,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("unknown"), "{err:?}");

    // A token of another cluster (another CA fingerprint) and garbage.
    let foreign = pki::generate_join_token(&"0".repeat(64)).to_string();
    let (_k, csr) = key_and_csr();
    let err = h
        .client(None)
        .await
        .enroll(EnrollRequest {
            join_token: foreign,
            csr_pem: csr.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = h
        .client(None)
        .await
        .enroll(EnrollRequest {
            join_token: "otxj_nope".into(),
            csr_pem: csr,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // A broken CSR does not burn the token.
    let token = h.token("node-2").await;
    let err = h
        .client(None)
        .await
        .enroll(EnrollRequest {
            join_token: token.clone(),
            csr_pem: "garbage".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let (_k, csr) = key_and_csr();
    h.client(None)
        .await
        .enroll(EnrollRequest {
            join_token: token,
            csr_pem: csr,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn tls_gateway_revoke_drops_the_session_and_refuses_reattach() {
    let h = tls_harness().await;
    let (cert, key) = h.enroll("node-1").await;
    let (_tx, mut stream) = h.attach(Some((&cert, &key)), "node-1").await.unwrap();

    let node = h.daemon.state.enrollment.revoke("node-1").await.unwrap();
    assert_eq!(
        serde_json::to_value(node.status).unwrap(),
        serde_json::json!("not_ready")
    );
    let err = tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
        .await
        .expect("the stream ends")
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("revoked"), "{err:?}");

    let err = h.attach(Some((&cert, &key)), "node-1").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("revoked"), "{err:?}");
    assert_eq!(h.node_status("node-1").await.as_deref(), Some("not_ready"));

    // A fresh enrollment brings it back.
    let (cert, key) = h.enroll("node-1").await;
    h.attach(Some((&cert, &key)), "node-1").await.unwrap();
    assert_eq!(h.node_status("node-1").await.as_deref(), Some("ready"));
}
