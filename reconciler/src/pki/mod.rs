//! The cluster PKI: a private CA (`CN=otherix cluster CA`, ECDSA P-256) that signs the
//! server certificate of both listeners and the client certificates of enrolled nodes.
//!
//! [`Pki`] is built from PEM material ([`CaMaterial`] + [`ServerIdentity`]). The CA lives
//! in the database, so every replica presents certificates of one CA; each replica keeps
//! its own server certificate in `DATA_DIR/tls/` ([`load`], in `load.rs`). Certificate
//! building, SAN lists and CSR signing are pure and unit tested here; I/O stays in
//! `load.rs`.

mod load;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use sha2::{Digest, Sha256};

pub use load::{host_name, load, plan_ca, write_file, CaPlan, LocalCa, PkiOptions, PkiOrigin};

/// The CA's common name.
pub const CA_COMMON_NAME: &str = "otherix cluster CA";
/// The server certificate's common name.
pub const SERVER_COMMON_NAME: &str = "otherixd";
/// Files in `DATA_DIR/tls/`.
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
pub const SERVER_CERT_FILE: &str = "server.crt";
pub const SERVER_KEY_FILE: &str = "server.key";
/// Lifetime of node client certificates.
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// A generated server certificate this close to expiry is issued again at start.
const SERVER_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: no PEM {kind} found")]
    NoPem { what: String, kind: &'static str },
    #[error("{what}: invalid PEM")]
    Pem {
        what: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0}")]
    Certificate(String),
    #[error("certificate generation")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("invalid certificate signing request: {0}")]
    Csr(String),
    #[error("the cluster CA in the database")]
    Store(#[from] crate::store::StoreError),
}

pub use otherix_api::enrollment::fingerprint;

/// The CA as PEM text (kept in the database, mirrored in `DATA_DIR/tls/`).
#[derive(Clone)]
pub struct CaMaterial {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The certificate chain (PEM, leaf first) and key both listeners present.
#[derive(Clone)]
pub struct ServerIdentity {
    pub chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaMaterial").finish_non_exhaustive() // never the key
    }
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity").finish_non_exhaustive()
    }
}

/// A node certificate just signed.
#[derive(Debug, Clone)]
pub struct SignedNodeCert {
    pub cert_pem: String,
    pub fingerprint: String,
    pub not_after_ms: i64,
}

/// What the server certificate must cover.
#[derive(Debug, Clone, Default)]
pub struct SanOptions {
    /// `--tls-san` values: DNS names or IP addresses.
    pub extra: Vec<String>,
    /// This machine's host name, when known.
    pub host_name: Option<String>,
    /// `--listen` and `--agent-listen`; only specified IPs are added.
    pub listen: Vec<SocketAddr>,
}

/// The subject alternative names of the server certificate: `localhost`, `127.0.0.1`,
/// `::1`, the host name, every `--tls-san`, and the specified listen IPs; deduplicated,
/// in that order.
pub fn server_sans(opts: &SanOptions) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |s: String| {
        let s = s.trim().to_owned();
        if !s.is_empty() && !out.iter().any(|o| o.eq_ignore_ascii_case(&s)) {
            out.push(s);
        }
    };
    for s in ["localhost", "127.0.0.1", "::1"] {
        push(s.to_owned());
    }
    if let Some(h) = &opts.host_name {
        push(h.clone());
    }
    for s in &opts.extra {
        push(s.clone());
    }
    for a in &opts.listen {
        if !a.ip().is_unspecified() {
            push(a.ip().to_string());
        }
    }
    out
}

fn san_type(s: &str) -> Result<SanType, PkiError> {
    match s.parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => Ok(SanType::DnsName(s.try_into().map_err(|_| {
            PkiError::Certificate(format!("--tls-san {s:?} is neither an IP nor a DNS name"))
        })?)),
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

/// Makes `params` valid from now (minus an hour for clock skew) for `validity`.
fn set_validity(params: &mut CertificateParams, validity: Duration) {
    use chrono::{Datelike, Timelike};
    let now = chrono::Utc::now() - chrono::Duration::hours(1);
    let midnight = rcgen::date_time_ymd(now.year(), now.month() as u8, now.day() as u8);
    params.not_before = midnight + Duration::from_secs(u64::from(now.num_seconds_from_midnight()));
    params.not_after = params.not_before + validity;
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// A new CA: key and self-signed certificate, PEM.
pub fn generate_ca() -> Result<CaMaterial, PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    set_validity(&mut params, CA_VALIDITY);
    let cert = params.self_signed(&key)?;
    Ok(CaMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A server certificate for `sans`, signed by `ca`; the chain is `[server, ca]`.
pub fn issue_server_identity(ca: &CaMaterial, sans: &[String]) -> Result<ServerIdentity, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, &ca_key)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(SERVER_COMMON_NAME);
    params.subject_alt_names = sans.iter().map(|s| san_type(s)).collect::<Result<_, _>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    set_validity(&mut params, SERVER_CERT_VALIDITY);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(ServerIdentity {
        chain_pem: format!("{}{}", cert.pem(), ensure_newline(&ca.cert_pem)),
        key_pem: key.serialize_pem(),
    })
}

fn ensure_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_owned()
    } else {
        format!("{s}\n")
    }
}

/// Every certificate in a PEM text, in order.
pub fn parse_certs(what: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PkiError::Pem {
            what: what.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(PkiError::NoPem {
            what: what.to_owned(),
            kind: "certificate",
        });
    }
    Ok(certs)
}

fn parse_key(what: &str, pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => PkiError::NoPem {
            what: what.to_owned(),
            kind: "private key",
        },
        source => PkiError::Pem {
            what: what.to_owned(),
            source,
        },
    })
}

/// The DNS names and IPs a certificate's SAN extension covers, and its expiry (unix s).
fn cert_sans_and_expiry(der: &[u8]) -> Result<(BTreeSet<String>, i64), PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::Certificate(format!("unparsable certificate: {e}")))?;
    let mut out = BTreeSet::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    out.insert(d.to_ascii_lowercase());
                }
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        out.insert(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok((out, cert.validity().not_after.timestamp()))
}

/// Whether a generated server certificate must be issued again: a SAN is missing (a new
/// `--tls-san`), it expires soon, or the CA did not sign it.
pub(crate) fn server_needs_reissue(
    identity: &ServerIdentity,
    ca: &CaMaterial,
    sans: &[String],
) -> bool {
    let (Ok(chain), Ok(ca_certs)) = (
        parse_certs("server.crt", &identity.chain_pem),
        parse_certs("ca.crt", &ca.cert_pem),
    ) else {
        return true;
    };
    if chain.len() < 2 || chain[chain.len() - 1] != ca_certs[0] {
        return true;
    }
    let Ok((have, not_after)) = cert_sans_and_expiry(&chain[0]) else {
        return true;
    };
    let renew_at = chrono::Utc::now().timestamp() + SERVER_RENEW_BEFORE.as_secs() as i64;
    not_after < renew_at
        || sans.iter().any(|s| {
            let norm = s
                .parse::<IpAddr>()
                .map(|ip| ip.to_string())
                .unwrap_or_else(|_| s.to_ascii_lowercase());
            !have.contains(&norm)
        })
}

/// Fails unless `key_pem` is the private key of the certificate `cert_der`.
pub(crate) fn check_key_matches(cert_der: &[u8], key_pem: &str) -> Result<(), PkiError> {
    let key = KeyPair::from_pem(key_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| PkiError::Certificate(format!("unparsable CA certificate: {e}")))?;
    if cert.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
        return Err(PkiError::Certificate(
            "the CA key does not belong to the CA certificate".into(),
        ));
    }
    Ok(())
}

/// The cluster PKI in memory.
pub struct Pki {
    ca: CaMaterial,
    ca_der: CertificateDer<'static>,
    ca_fingerprint: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    /// `--tls-cert/--tls-key`: what the HTTPS API presents instead (as given).
    api_override: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Pki {
    /// Builds the PKI from PEM material; checks that the key parses and that the CA is
    /// usable for signing. A server chain without the CA at its end gets it appended, so
    /// clients always see the CA they pin.
    pub fn new(ca: CaMaterial, server: ServerIdentity) -> Result<Pki, PkiError> {
        let ca_der = parse_certs("ca.crt", &ca.cert_pem)?.remove(0);
        check_key_matches(&ca_der, &ca.key_pem)?;
        let mut server_chain = parse_certs("server certificate", &server.chain_pem)?;
        if server_chain.last() != Some(&ca_der) {
            server_chain.push(ca_der.clone());
        }
        let server_key = parse_key("server key", &server.key_pem)?;
        Ok(Pki {
            ca_fingerprint: fingerprint(&ca_der),
            ca,
            ca_der,
            server_chain,
            server_key,
            api_override: None,
        })
    }

    /// Serves `api` (a chain as given, and its key) on the HTTPS API instead of the
    /// generated server certificate. The gateway keeps the generated one: agents verify
    /// it against the cluster CA their join token pins, which a certificate of another
    /// CA could not satisfy.
    pub fn with_api_identity(mut self, api: &ServerIdentity) -> Result<Pki, PkiError> {
        let chain = parse_certs("--tls-cert", &api.chain_pem)?;
        let key = parse_key("--tls-key", &api.key_pem)?;
        self.api_override = Some((chain, key));
        Ok(self)
    }

    /// The CA's fingerprint (64 lowercase hex).
    pub fn ca_fingerprint(&self) -> &str {
        &self.ca_fingerprint
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The HTTPS API: chain `[server, ca]` (or `--tls-cert` as given), ALPN h2 and
    /// http/1.1, no client certificates (users authenticate with bearer tokens).
    pub fn https_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let (chain, key) = match &self.api_override {
            Some((chain, key)) => (chain.clone(), key.clone_key()),
            None => (self.server_chain.clone(), self.server_key.clone_key()),
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The agent gateway: chain `[server, ca]`, ALPN h2; a client certificate is optional
    /// (Enroll has none) but, when sent, must chain to the CA. Which node it names is the
    /// gateway's business (the certificate records in the store).
    pub fn gateway_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// Signs a node's CSR for one year. Whatever subject and SANs the CSR asks for, the
    /// certificate says CN = DNS SAN = `node`, client auth only, no CA.
    pub fn sign_node_csr(&self, csr_pem: &str, node: &str) -> Result<SignedNodeCert, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Csr(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(node);
        params.subject_alt_names =
            vec![SanType::DnsName(node.try_into().map_err(|_| {
                PkiError::Csr(format!("node name {node:?} is not a DNS name"))
            })?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        set_validity(&mut params, NODE_CERT_VALIDITY);
        let not_after_ms = params.not_after.unix_timestamp() * 1000;
        let ca_key = KeyPair::from_pem(&self.ca.key_pem)?;
        let issuer = Issuer::from_ca_cert_der(&self.ca_der, &ca_key)?;
        let forced = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let cert = forced.signed_by(&issuer)?;
        Ok(SignedNodeCert {
            fingerprint: fingerprint(cert.der()),
            cert_pem: cert.pem(),
            not_after_ms,
        })
    }
}

/// A fresh join token for a cluster whose CA has `ca_fingerprint`: 128 random bits.
pub fn generate_join_token(ca_fingerprint: &str) -> otherix_api::enrollment::JoinToken {
    let secret: [u8; 16] = rand::random();
    otherix_api::enrollment::JoinToken {
        secret: hex::encode(secret),
        ca_fingerprint: ca_fingerprint.to_owned(),
    }
}

/// What the store keeps of a join token's secret: its SHA-256, hex.
pub fn join_secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// `--insecure-http` is only allowed when both listeners are on a loopback address.
pub fn check_insecure_listen(addrs: &[(&str, SocketAddr)]) -> Result<(), String> {
    for (flag, addr) in addrs {
        if !addr.ip().is_loopback() {
            return Err(format!(
                "--insecure-http is refused on {flag} {addr}: without TLS anyone on the network \
                 could read tokens and pose as a node. Use a loopback address, or drop \
                 --insecure-http (TLS is the default)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sans(extra: &[&str], listen: &[&str]) -> SanOptions {
        SanOptions {
            extra: extra.iter().map(|s| s.to_string()).collect(),
            host_name: Some("box".into()),
            listen: listen.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn server_sans_table() {
        let base = ["localhost", "127.0.0.1", "::1", "box"];
        let cases: Vec<(SanOptions, Vec<&str>)> = vec![
            (sans(&[], &["0.0.0.0:7070", "[::]:7071"]), base.to_vec()),
            (
                sans(&["otx.example", "10.0.0.5"], &["127.0.0.1:1", "10.0.0.5:2"]),
                [&base[..], &["otx.example", "10.0.0.5"]].concat(),
            ),
            (
                sans(&["LOCALHOST", " box "], &["192.168.1.2:7070"]),
                [&base[..], &["192.168.1.2"]].concat(),
            ),
        ];
        for (opts, want) in cases {
            assert_eq!(server_sans(&opts), want, "{opts:?}");
        }
    }

    #[test]
    fn generate_join_token_parses_back_and_hash_differs_from_secret() {
        let fp = "ab".repeat(32);
        let t = generate_join_token(&fp);
        let parsed = otherix_api::enrollment::JoinToken::parse(&t.to_string()).unwrap();
        assert_eq!(parsed, t);
        assert_ne!(generate_join_token(&fp).secret, t.secret);
        let h = join_secret_hash(&t.secret);
        assert_eq!(h.len(), 64);
        assert!(!h.contains(&t.secret));
    }

    #[test]
    fn check_insecure_listen_table() {
        let cases = [
            ("127.0.0.1:1", "127.0.0.1:2", true),
            ("[::1]:1", "127.0.0.5:2", true),
            ("0.0.0.0:1", "127.0.0.1:2", false),
            ("127.0.0.1:1", "10.0.0.1:2", false),
            ("[::]:1", "[::1]:2", false),
        ];
        for (a, b, ok) in cases {
            let r = check_insecure_listen(&[
                ("--listen", a.parse().unwrap()),
                ("--agent-listen", b.parse().unwrap()),
            ]);
            assert_eq!(r.is_ok(), ok, "{a} {b}: {r:?}");
        }
        let err =
            check_insecure_listen(&[("--listen", "0.0.0.0:7070".parse().unwrap())]).unwrap_err();
        assert!(err.contains("--listen 0.0.0.0:7070"), "{err}");
    }

    #[test]
    fn fingerprint_is_64_lowercase_hex_of_sha256() {
        assert_eq!(
            fingerprint(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    fn pki(extra_sans: &[&str]) -> Pki {
        let ca = generate_ca().unwrap();
        let s = server_sans(&sans(extra_sans, &[]));
        let id = issue_server_identity(&ca, &s).unwrap();
        Pki::new(ca, id).unwrap()
    }

    #[test]
    fn pki_server_chain_is_server_then_ca_with_sans() {
        let p = pki(&["otx.example", "10.1.2.3"]);
        assert_eq!(p.server_chain.len(), 2);
        assert_eq!(p.server_chain[1], p.ca_der);
        let (have, _) = cert_sans_and_expiry(&p.server_chain[0]).unwrap();
        for s in [
            "localhost",
            "127.0.0.1",
            "::1",
            "box",
            "otx.example",
            "10.1.2.3",
        ] {
            assert!(have.contains(s), "{s} missing from {have:?}");
        }
        let (_, ca) = x509_parser::parse_x509_certificate(&p.ca_der).unwrap();
        assert_eq!(ca.subject().to_string(), "CN=otherix cluster CA");
        assert!(ca.is_ca());
        p.https_config().unwrap();
        p.gateway_config().unwrap();
    }

    #[test]
    fn server_needs_reissue_when_a_san_is_added() {
        let ca = generate_ca().unwrap();
        let s = server_sans(&sans(&[], &[]));
        let id = issue_server_identity(&ca, &s).unwrap();
        assert!(!server_needs_reissue(&id, &ca, &s));
        let more = server_sans(&sans(&["new.example"], &[]));
        assert!(server_needs_reissue(&id, &ca, &more));
        let other_ca = generate_ca().unwrap();
        assert!(server_needs_reissue(&id, &other_ca, &s));
    }

    fn csr(cn: &str, sans: &[&str]) -> (String, KeyPair) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = dn(cn);
        (params.serialize_request(&key).unwrap().pem().unwrap(), key)
    }

    #[test]
    fn sign_node_csr_forces_the_token_node_name() {
        let p = pki(&[]);
        let (pem, key) = csr("node-1", &["node-1", "otherixd", "evil.example"]);
        let signed = p.sign_node_csr(&pem, "node-2").unwrap();
        let der = parse_certs("node", &signed.cert_pem).unwrap().remove(0);
        assert_eq!(signed.fingerprint, fingerprint(&der));
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(cert.subject().to_string(), "CN=node-2");
        let (have, not_after) = cert_sans_and_expiry(&der).unwrap();
        assert_eq!(have, BTreeSet::from(["node-2".to_string()]));
        assert_eq!(not_after * 1000, signed.not_after_ms);
        let days = (not_after - chrono::Utc::now().timestamp()) / 86400;
        assert!((364..=365).contains(&days), "{days} days");
        assert!(!cert.is_ca());
        assert_eq!(
            cert.public_key().raw,
            rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
        );
    }

    #[test]
    fn sign_node_csr_garbage_is_a_csr_error() {
        let p = pki(&[]);
        for bad in [
            "",
            "not pem",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        ] {
            assert!(
                matches!(p.sign_node_csr(bad, "node-1"), Err(PkiError::Csr(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn signed_node_cert_passes_the_gateway_client_verifier() {
        let p = pki(&[]);
        let (pem, _key) = csr("x", &[]);
        let signed = p.sign_node_csr(&pem, "node-1").unwrap();
        let der = parse_certs("node", &signed.cert_pem).unwrap().remove(0);
        let mut roots = RootCertStore::empty();
        roots.add(p.ca_der.clone()).unwrap();
        let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
        v.verify_client_cert(&der, &[], rustls::pki_types::UnixTime::now())
            .unwrap();
        // A certificate of another CA is refused.
        let other = pki(&[]);
        let foreign = other.sign_node_csr(&pem, "node-1").unwrap();
        let fder = parse_certs("node", &foreign.cert_pem).unwrap().remove(0);
        assert!(v
            .verify_client_cert(&fder, &[], rustls::pki_types::UnixTime::now())
            .is_err());
    }
}
