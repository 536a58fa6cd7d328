//! The cluster CA in the database, with several replicas on one database (SQLite, or
//! PostgreSQL with `OTHERIXD_TEST_POSTGRES_URL`): replicas starting at once agree on one
//! CA; a node certificate signed through one replica completes a real mTLS handshake with
//! another replica's gateway; an upgraded install's `DATA_DIR/tls` CA is adopted; a
//! replica whose server certificate another CA signed gets a new one.

mod common;

use std::path::Path;
use std::sync::Arc;

use otherixd::pki::{self, Pki, PkiOptions, PkiOrigin};
use otherixd::store::Store;
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A fresh database and two replicas' stores on it.
async fn two_stores(dir: &Path) -> (Store, Store) {
    let url = common::fresh_database_url(dir).await;
    let a = Store::open(&url).await.unwrap();
    let b = Store::open(&url).await.unwrap();
    (a, b)
}

fn opts(san: &str) -> PkiOptions {
    PkiOptions {
        sans: pki::SanOptions {
            extra: vec![san.to_owned()],
            host_name: None,
            listen: vec![],
        },
        ..Default::default()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client that pins `ca_pem` (as the agent pins its join token's CA and the CLI its
/// remote's), presenting `identity` (cert PEM, key PEM) when given.
fn client_config(ca_pem: &str, identity: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// What each side of a handshake ended with.
struct Outcome {
    client: Result<(), String>,
    /// The client certificate the server saw.
    server: Result<Option<CertificateDer<'static>>, String>,
}

/// A TLS handshake over loopback between `server` and `client` (server name
/// `localhost`), with a byte exchanged each way; `Ok(client certificate the server saw)`
/// when both sides succeeded.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> Result<Option<CertificateDer<'static>>, String> {
    let o = handshake_both(server, client).await;
    o.client?;
    o.server
}

async fn handshake_both(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> Outcome {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = tokio_rustls::TlsAcceptor::from(server)
            .accept(tcp)
            .await
            .map_err(|e| format!("server: {e}"))?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned());
        let mut b = [0u8; 1];
        tls.read_exact(&mut b)
            .await
            .map_err(|e| format!("server: {e}"))?;
        tls.write_all(b"!")
            .await
            .map_err(|e| format!("server: {e}"))?;
        tls.flush().await.map_err(|e| format!("server: {e}"))?;
        Ok::<_, String>(peer)
    });
    let client_side = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("client: {e}"))?;
        tls.write_all(b"?")
            .await
            .map_err(|e| format!("client: {e}"))?;
        tls.flush().await.map_err(|e| format!("client: {e}"))?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b)
            .await
            .map_err(|e| format!("client: {e}"))?;
        Ok::<_, String>(())
    };
    let client_result = tokio::time::timeout(std::time::Duration::from_secs(10), client_side)
        .await
        .expect("client handshake timed out");
    let server_result = tokio::time::timeout(std::time::Duration::from_secs(10), server_side)
        .await
        .expect("server handshake timed out")
        .unwrap();
    Outcome {
        client: client_result,
        server: server_result,
    }
}

/// A node key and a certificate for `node` signed through `replica` (what Enroll does).
fn enroll_through(replica: &Pki, node: &str) -> (String, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = CertificateParams::new(vec![node.to_owned()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let signed = replica.sign_node_csr(&csr, node).unwrap();
    (signed.cert_pem, key.serialize_pem())
}

fn file(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

#[tokio::test]
async fn two_replicas_starting_at_once_share_one_ca_and_keep_their_own_server_certs() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_stores(dir.path()).await;
    let (tls_a, tls_b) = (dir.path().join("a/tls"), dir.path().join("b/tls"));
    let (opts_a, opts_b) = (opts("replica-a.example"), opts("replica-b.example"));
    let (ra, rb) = tokio::join!(
        pki::load(&a, &tls_a, &opts_a),
        pki::load(&b, &tls_b, &opts_b)
    );
    let ((pa, oa), (pb, ob)) = (ra.unwrap(), rb.unwrap());
    assert_eq!(pa.ca_fingerprint(), pb.ca_fingerprint());
    let mut origins = [oa, ob];
    origins.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(origins, [PkiOrigin::Created, PkiOrigin::Loaded]);
    let stored = a.cluster_ca().await.unwrap().unwrap();
    assert_eq!(stored.cert_pem, pa.ca_pem());
    // DATA_DIR/tls/ca.crt of both replicas is the database's CA (users and the harness
    // read it).
    assert_eq!(file(&tls_a, "ca.crt"), stored.cert_pem);
    assert_eq!(file(&tls_b, "ca.crt"), stored.cert_pem);
    assert_ne!(file(&tls_a, "server.crt"), file(&tls_b, "server.crt"));

    // The CLI pins the CA once and verifies the HTTPS certificate of every replica.
    let cli = client_config(pa.ca_pem(), None);
    for p in [&pa, &pb] {
        handshake(p.https_config().unwrap(), cli.clone())
            .await
            .unwrap();
    }
    // A third start on the same database loads the same CA.
    let (pc, oc) = pki::load(&b, &dir.path().join("c/tls"), &opts("c.example"))
        .await
        .unwrap();
    assert_eq!(oc, PkiOrigin::Loaded);
    assert_eq!(pc.ca_fingerprint(), pa.ca_fingerprint());
}

#[tokio::test]
async fn a_node_enrolled_through_one_replica_attaches_to_another_over_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_stores(dir.path()).await;
    let (pa, _) = pki::load(&a, &dir.path().join("a/tls"), &opts("a.example"))
        .await
        .unwrap();
    let (pb, _) = pki::load(&b, &dir.path().join("b/tls"), &opts("b.example"))
        .await
        .unwrap();
    let (cert, key) = enroll_through(&pa, "node-1");
    // The agent pins the CA its join token (issued by replica 1) names, and presents the
    // certificate replica 1 signed; replica 2's gateway accepts both ways.
    let agent = client_config(pa.ca_pem(), Some((&cert, &key)));
    let seen = handshake(pb.gateway_config().unwrap(), agent)
        .await
        .unwrap()
        .expect("the gateway saw the node certificate");
    assert_eq!(
        seen,
        CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()
    );

    // Control: a replica of another cluster (another database) refuses that certificate,
    // and the agent refuses its gateway.
    let other_dir = tempfile::tempdir().unwrap();
    let (other, _) = two_stores(other_dir.path()).await;
    let (po, _) = pki::load(&other, &other_dir.path().join("tls"), &opts("o.example"))
        .await
        .unwrap();
    assert_ne!(po.ca_fingerprint(), pa.ca_fingerprint());
    let agent = client_config(pa.ca_pem(), Some((&cert, &key)));
    let o = handshake_both(po.gateway_config().unwrap(), agent).await;
    let err = o.client.unwrap_err();
    assert!(
        err.contains("invalid peer certificate"),
        "the agent refuses: {err}"
    );
    let trusting = client_config(po.ca_pem(), Some((&cert, &key)));
    let o = handshake_both(po.gateway_config().unwrap(), trusting).await;
    let err = o.server.unwrap_err();
    assert!(
        err.contains("invalid peer certificate"),
        "the gateway refuses: {err}"
    );
}

#[tokio::test]
async fn an_upgraded_install_adopts_its_data_dir_ca_into_an_empty_database() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_stores(dir.path()).await;
    let tls = dir.path().join("a/tls");
    std::fs::create_dir_all(&tls).unwrap();
    let old = pki::generate_ca().unwrap();
    let sans = pki::server_sans(&pki::SanOptions::default());
    let old_server = pki::issue_server_identity(&old, &sans).unwrap();
    pki::write_file(&tls.join("ca.crt"), &old.cert_pem, 0o644).unwrap();
    pki::write_file(&tls.join("ca.key"), &old.key_pem, 0o600).unwrap();
    pki::write_file(&tls.join("server.crt"), &old_server.chain_pem, 0o644).unwrap();
    pki::write_file(&tls.join("server.key"), &old_server.key_pem, 0o600).unwrap();
    let old_fp = Pki::new(old.clone(), old_server.clone())
        .unwrap()
        .ca_fingerprint()
        .to_owned();

    let (pa, origin) = pki::load(&a, &tls, &PkiOptions::default()).await.unwrap();
    assert_eq!(origin, PkiOrigin::Adopted);
    assert_eq!(
        pa.ca_fingerprint(),
        old_fp,
        "nodes enrolled before keep working"
    );
    let stored = a.cluster_ca().await.unwrap().unwrap();
    assert_eq!(
        (stored.cert_pem.as_str(), stored.key_pem.as_str()),
        (old.cert_pem.as_str(), old.key_pem.as_str())
    );
    assert_eq!(
        file(&tls, "server.crt"),
        old_server.chain_pem,
        "its server certificate is still valid"
    );
    // A second replica added later gets that CA.
    let (pb, origin) = pki::load(&b, &dir.path().join("b/tls"), &PkiOptions::default())
        .await
        .unwrap();
    assert_eq!(origin, PkiOrigin::Loaded);
    assert_eq!(pb.ca_fingerprint(), old_fp);
}

#[tokio::test]
async fn a_replica_whose_server_cert_another_ca_signed_gets_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_stores(dir.path()).await;
    let (pa, _) = pki::load(&a, &dir.path().join("a/tls"), &PkiOptions::default())
        .await
        .unwrap();
    // Replica b ran alone before, with a CA of its own in its data dir.
    let tls = dir.path().join("b/tls");
    std::fs::create_dir_all(&tls).unwrap();
    let own = pki::generate_ca().unwrap();
    let own_server = pki::issue_server_identity(&own, &["localhost".into()]).unwrap();
    pki::write_file(&tls.join("ca.crt"), &own.cert_pem, 0o644).unwrap();
    pki::write_file(&tls.join("ca.key"), &own.key_pem, 0o600).unwrap();
    pki::write_file(&tls.join("server.crt"), &own_server.chain_pem, 0o644).unwrap();
    pki::write_file(&tls.join("server.key"), &own_server.key_pem, 0o600).unwrap();

    let (pb, origin) = pki::load(&b, &tls, &PkiOptions::default()).await.unwrap();
    assert_eq!(origin, PkiOrigin::Loaded);
    assert_eq!(pb.ca_fingerprint(), pa.ca_fingerprint());
    assert_ne!(file(&tls, "server.crt"), own_server.chain_pem, "reissued");
    assert_eq!(file(&tls, "ca.crt"), pa.ca_pem());
    // Its own CA is set aside, not lost.
    assert_eq!(file(&tls, "ca.crt.replaced"), own.cert_pem);
    assert_eq!(file(&tls, "ca.key.replaced"), own.key_pem);
    // Clients pinning the cluster CA accept replica b, on both listeners.
    let cli = client_config(pa.ca_pem(), None);
    handshake(pb.https_config().unwrap(), cli).await.unwrap();
    let (cert, key) = enroll_through(&pa, "node-2");
    let agent = client_config(pa.ca_pem(), Some((&cert, &key)));
    handshake(pb.gateway_config().unwrap(), agent)
        .await
        .unwrap();
    // The database still has one CA, the first replica's.
    assert_eq!(b.cluster_ca().await.unwrap().unwrap().cert_pem, pa.ca_pem());
}
