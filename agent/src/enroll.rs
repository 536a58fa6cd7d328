//! The agent's TLS identity: enrollment with a one-time join token (the gateway's chain
//! must end in the CA whose fingerprint the token carries; a locally generated key and a
//! CSR are traded for a client certificate) and the mTLS channel every later attach uses.
//!
//! The server certificate is checked Incus-style: its chain must verify up to the pinned
//! cluster CA (by fingerprint on first contact, by the stored `ca.crt` afterwards); the
//! host name is NOT checked, because the CA is private to the cluster and agents may
//! reach the server by any address.
//!
//! Files in `DATA_DIR/tls/`: `node.key` (0600), `node.crt`, `ca.crt`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use otherix_api::enrollment::JoinToken;
use otherix_api::proto::agent_gateway_client::AgentGatewayClient;
use otherix_api::proto::EnrollRequest;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

pub const TLS_DIR: &str = "tls";
pub const NODE_KEY_FILE: &str = "node.key";
pub const NODE_CERT_FILE: &str = "node.crt";
pub const CA_CERT_FILE: &str = "ca.crt";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PINGs on the gateway connection: a server that stops answering (a frozen or
/// partitioned replica whose kernel still ACKs TCP) is given up after interval + timeout,
/// and the session fails over to the next `--server`.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// The agent's settings for every gateway connection (plain or TLS).
pub fn gateway_endpoint(endpoint: Endpoint) -> Endpoint {
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
}
const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{0}")]
    Token(#[from] otherix_api::enrollment::JoinTokenError),
    #[error("server URL {0:?}: expected https://HOST:PORT")]
    BadUrl(String),
    #[error("cannot connect to {url}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the server refused the enrollment: {0}")]
    Refused(String),
    #[error("the server returned a certificate for node {got}, but this agent is --node {want}")]
    WrongNode { got: String, want: String },
    #[error("the server's CA {got} is not the one the join token names ({want})")]
    WrongCa { got: String, want: String },
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: invalid PEM")]
    Pem(String),
    #[error("key generation")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration")]
    Rustls(#[from] rustls::Error),
}

impl EnrollError {
    /// The server could not be reached (another `--server` may be tried); every other
    /// error is an answer, and final.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, EnrollError::Connect { .. })
    }
}

pub use otherix_api::enrollment::fingerprint;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the server certificate chain must end in.
#[derive(Debug, Clone)]
pub enum CaPin {
    /// First contact: the last certificate of the chain must have this fingerprint.
    Fingerprint(String),
    /// After enrollment: the stored CA.
    Ca(CertificateDer<'static>),
}

/// Accepts a server chain only if its leaf is signed by the pinned CA. No host name check.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pin: CaPin,
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    pub fn new(pin: CaPin) -> Self {
        PinnedCaVerifier {
            pin,
            provider: provider(),
        }
    }

    /// The pure check: the CA the chain is verified against, then the signature path.
    pub fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let ca: CertificateDer<'_> = match &self.pin {
            CaPin::Ca(ca) => ca.clone(),
            CaPin::Fingerprint(want) => {
                let Some(last) = intermediates.last() else {
                    return Err(rustls::Error::General(format!(
                        "the server sent no CA certificate; expected the CA {want}"
                    )));
                };
                let got = fingerprint(last);
                if &got != want {
                    return Err(rustls::Error::General(format!(
                        "the server's CA fingerprint is {got}, the join token expects {want}"
                    )));
                }
                last.clone()
            }
        };
        let ca_fingerprint = fingerprint(&ca);
        let mut roots = RootCertStore::empty();
        roots.add(ca.into_owned())?;
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )
        .map_err(|e| match &self.pin {
            CaPin::Ca(_) => rustls::Error::General(format!(
                "the server certificate does not verify against this agent's cluster CA \
                 {ca_fingerprint} ({e}); if the server got a new CA, remove DATA_DIR/tls and \
                 enroll again with a new join token"
            )),
            CaPin::Fingerprint(_) => e,
        })
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify_chain(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client certificate and its key.
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// A rustls client config for the gateway: ALPN h2, the pinning verifier, and the node's
/// certificate when it has one.
pub fn client_config(
    pin: CaPin,
    identity: Option<ClientIdentity>,
) -> Result<Arc<rustls::ClientConfig>, EnrollError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier::new(pin)));
    let mut config = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain, id.key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A tonic connector that dials TCP and runs the TLS handshake with `config`.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
}

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other("server URL has no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            // The verifier ignores the name; it only feeds SNI.
            let name = ServerName::try_from(host.clone())
                .unwrap_or_else(|_| ServerName::try_from("otherixd").expect("valid name"));
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// The `https://HOST:PORT` server URL as the plain `http://` URI tonic is given while
/// [`TlsConnector`] does the TLS.
fn endpoint(url: &str) -> Result<Endpoint, EnrollError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| EnrollError::BadUrl(url.to_owned()))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(EnrollError::BadUrl(url.to_owned()));
    }
    Ok(gateway_endpoint(
        Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|_| EnrollError::BadUrl(url.to_owned()))?,
    ))
}

/// Connects to the gateway at `url` (https) over TLS with `config`.
pub async fn connect(
    url: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<AgentGatewayClient<Channel>, EnrollError> {
    let channel = endpoint(url)?
        .connect_with_connector(TlsConnector { config })
        .await
        .map_err(|source| EnrollError::Connect {
            url: url.to_owned(),
            source,
        })?;
    Ok(AgentGatewayClient::new(channel))
}

/// `DATA_DIR/tls`.
pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(TLS_DIR)
}

/// Whether this agent holds a certificate.
pub fn is_enrolled(data_dir: &Path) -> bool {
    tls_dir(data_dir).join(NODE_CERT_FILE).exists()
}

fn read(path: &Path) -> Result<Vec<u8>, EnrollError> {
    std::fs::read(path).map_err(|source| EnrollError::Io {
        action: "reading",
        path: path.to_owned(),
        source,
    })
}

/// The client config of an enrolled agent: its certificate and key, the stored CA.
pub fn load_client_config(data_dir: &Path) -> Result<Arc<rustls::ClientConfig>, EnrollError> {
    let dir = tls_dir(data_dir);
    let pem_err = |p: &Path| EnrollError::Pem(p.display().to_string());
    let (ca_path, crt_path, key_path) = (
        dir.join(CA_CERT_FILE),
        dir.join(NODE_CERT_FILE),
        dir.join(NODE_KEY_FILE),
    );
    let ca = CertificateDer::from_pem_slice(&read(&ca_path)?).map_err(|_| pem_err(&ca_path))?;
    let chain = CertificateDer::pem_slice_iter(&read(&crt_path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| pem_err(&crt_path))?;
    if chain.is_empty() {
        return Err(pem_err(&crt_path));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&key_path)?).map_err(|_| pem_err(&key_path))?;
    client_config(CaPin::Ca(ca), Some(ClientIdentity { chain, key }))
}

/// Writes `contents` atomically with `mode` (the agent's one atomic write).
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), EnrollError> {
    crate::atomic_file::write_atomic_mode(path, contents.as_bytes(), mode).map_err(|source| {
        EnrollError::Io {
            action: "writing",
            path: path.to_owned(),
            source,
        }
    })
}

/// A new P-256 key and a CSR naming `node` (the server decides the name anyway).
pub fn key_and_csr(node: &str) -> Result<(String, String), EnrollError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec![node.to_owned()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// First start: checks the gateway against the token's CA fingerprint, sends a CSR and
/// stores `node.key` (0600), `ca.crt` and `node.crt` (last: its presence means enrolled).
pub async fn enroll(
    server: &str,
    join_token: &str,
    node: &str,
    data_dir: &Path,
) -> Result<(), EnrollError> {
    let token = JoinToken::parse(join_token)?;
    let config = client_config(CaPin::Fingerprint(token.ca_fingerprint.clone()), None)?;
    let mut client = connect(server, config).await?;
    let (key_pem, csr_pem) = key_and_csr(node)?;
    let request = EnrollRequest {
        join_token: token.to_string(),
        csr_pem,
    };
    let resp = tokio::time::timeout(ENROLL_TIMEOUT, client.enroll(request))
        .await
        .map_err(|_| EnrollError::Refused("no answer within 30 s".into()))?
        .map_err(|status| EnrollError::Refused(status.message().to_owned()))?
        .into_inner();
    if resp.node != node {
        return Err(EnrollError::WrongNode {
            got: resp.node,
            want: node.to_owned(),
        });
    }
    let ca = CertificateDer::from_pem_slice(resp.ca_pem.as_bytes())
        .map_err(|_| EnrollError::Pem("the CA in the server's answer".into()))?;
    let got = fingerprint(&ca);
    if got != token.ca_fingerprint {
        return Err(EnrollError::WrongCa {
            got,
            want: token.ca_fingerprint,
        });
    }
    let dir = tls_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|source| EnrollError::Io {
        action: "creating",
        path: dir.clone(),
        source,
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    }
    write_file(&dir.join(NODE_KEY_FILE), &key_pem, 0o600)?;
    write_file(&dir.join(CA_CERT_FILE), &resp.ca_pem, 0o644)?;
    write_file(&dir.join(NODE_CERT_FILE), &resp.cert_pem, 0o644)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA, a server certificate it signed, and a second unrelated CA.
    fn chain() -> (
        CertificateDer<'static>,
        CertificateDer<'static>,
        CertificateDer<'static>,
    ) {
        let mk_ca = || {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut p = rcgen::CertificateParams::default();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::DigitalSignature,
            ];
            let cert = p.self_signed(&key).unwrap();
            (cert, key, p)
        };
        let (ca, ca_key, ca_params) = mk_ca();
        let (other, _, _) = mk_ca();
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["otherixd.example".to_owned()]).unwrap();
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = p.signed_by(&key, &issuer).unwrap();
        (leaf.der().clone(), ca.der().clone(), other.der().clone())
    }

    #[test]
    fn pinned_verifier_table() {
        let (leaf, ca, other) = chain();
        let now = UnixTime::now();
        let fp = |c: &CertificateDer<'_>| CaPin::Fingerprint(fingerprint(c));
        let cases: Vec<(&str, CaPin, Vec<CertificateDer<'static>>, bool)> = vec![
            (
                "fingerprint of the chain's CA",
                fp(&ca),
                vec![ca.clone()],
                true,
            ),
            (
                "stored CA, no CA in chain",
                CaPin::Ca(ca.clone()),
                vec![],
                true,
            ),
            (
                "stored CA, CA in chain",
                CaPin::Ca(ca.clone()),
                vec![ca.clone()],
                true,
            ),
            ("other fingerprint", fp(&other), vec![ca.clone()], false),
            ("no CA sent", fp(&ca), vec![], false),
            (
                "other CA appended and pinned",
                fp(&other),
                vec![ca.clone(), other.clone()],
                false,
            ),
            (
                "stored CA is another one",
                CaPin::Ca(other.clone()),
                vec![ca.clone()],
                false,
            ),
        ];
        for (what, pin, intermediates, ok) in cases {
            let v = PinnedCaVerifier::new(pin);
            let r = v.verify_chain(&leaf, &intermediates, now);
            assert_eq!(r.is_ok(), ok, "{what}: {r:?}");
        }
    }

    #[test]
    fn pinned_verifier_mismatch_names_both_fingerprints() {
        let (leaf, ca, other) = chain();
        let v = PinnedCaVerifier::new(CaPin::Fingerprint(fingerprint(&other)));
        let err = v
            .verify_chain(&leaf, std::slice::from_ref(&ca), UnixTime::now())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&fingerprint(&ca)) && err.contains(&fingerprint(&other)),
            "{err}"
        );
    }

    #[test]
    fn endpoint_accepts_only_https_authorities() {
        assert!(endpoint("https://10.0.0.1:7071").is_ok());
        assert!(endpoint("https://[::1]:7071/").is_ok());
        for bad in ["http://h:1", "h:1", "https://", "https://h:1/path"] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_and_csr_produce_pem() {
        let (key, csr) = key_and_csr("node-1").unwrap();
        assert!(key.contains("PRIVATE KEY"));
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    }
}
