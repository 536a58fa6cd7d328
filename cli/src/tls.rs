//! TLS for the CLI: certificate fingerprints and PEM in and out (pure), the pinned-CA
//! verifier every HTTPS request uses (Incus-style: the chain must be signed up to the
//! pinned CA; the host name is not checked, the CA is private to one cluster), and the
//! capture of a server's chain for `remote add`.

use std::fmt;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Url;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Characters per PEM line.
const PEM_LINE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} holds no PEM certificate")]
    NoCertificate { what: String },
    #[error("{what} is not valid PEM")]
    BadPem {
        what: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("remote {remote}: fingerprint {stored} does not match its ca_cert ({computed}); remove and add the remote again")]
    PinDisagrees {
        remote: String,
        stored: String,
        computed: String,
    },
    #[error("remote {remote} has an invalid fingerprint {value:?}: expected 64 hex digits")]
    BadFingerprint { remote: String, value: String },
    #[error("cannot set up TLS")]
    Setup(#[source] rustls::Error),
    #[error("{url} has no host")]
    NoHost { url: String },
    #[error("cannot connect to {url}")]
    Connect {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("TLS handshake with {url} failed")]
    Handshake {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("{url} presented no certificate")]
    NoPeerCertificate { url: String },
}

pub use otherix_api::enrollment::fingerprint;

/// Whether `s` looks like a fingerprint (64 hex digits, any case).
pub fn is_fingerprint(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The CA of a presented chain: its last certificate (the only one of a one-cert chain).
pub fn chain_ca<'a, 'b>(chain: &'a [CertificateDer<'b>]) -> Option<&'a CertificateDer<'b>> {
    chain.last()
}

/// `-----BEGIN CERTIFICATE-----` armour around the base64 of `der`, 64 columns.
pub fn pem_encode(der: &[u8]) -> String {
    let b64 = base64(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(PEM_LINE) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Every certificate of a PEM text, in order; `what` names the source in errors.
pub fn pem_decode(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadPem {
            what: what.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what: what.to_owned(),
        });
    }
    Ok(certs)
}

/// Standard base64 with padding (RFC 4648).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Who pinned the CA a connection is checked against, for the mismatch message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// A remote of the config file.
    Remote(String),
    /// The PEM file `OTHERIX_CA_CERT` names.
    CaFile(String),
}

impl fmt::Display for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinSource::Remote(name) => write!(f, "remote {name}"),
            PinSource::CaFile(path) => write!(f, "OTHERIX_CA_CERT ({path})"),
        }
    }
}

/// A pinned CA: its fingerprint, and its certificate when known (a remote may store only
/// the fingerprint; then the presented CA with that fingerprint is the anchor).
#[derive(Debug, Clone)]
pub struct Pin {
    pub source: PinSource,
    pub fingerprint: String,
    pub ca: Option<CertificateDer<'static>>,
}

impl Pin {
    /// A remote's pin from its stored `fingerprint` and/or `ca_cert` PEM (the last
    /// certificate of the PEM is the CA); both given must agree.
    pub fn from_remote(
        remote: &str,
        fingerprint: Option<&str>,
        ca_pem: Option<&str>,
    ) -> Result<Pin, TlsError> {
        let ca = match ca_pem {
            Some(pem) => {
                let certs = pem_decode(pem, &format!("remote {remote}: ca_cert"))?;
                certs.last().cloned()
            }
            None => None,
        };
        let computed = ca.as_ref().map(|c| fingerprint_of(c));
        let fingerprint = match (fingerprint, computed) {
            (Some(stored), Some(computed)) => {
                let stored = stored.to_ascii_lowercase();
                if stored != computed {
                    return Err(TlsError::PinDisagrees {
                        remote: remote.to_owned(),
                        stored,
                        computed,
                    });
                }
                stored
            }
            (Some(stored), None) => {
                if !is_fingerprint(stored) {
                    return Err(TlsError::BadFingerprint {
                        remote: remote.to_owned(),
                        value: stored.to_owned(),
                    });
                }
                stored.to_ascii_lowercase()
            }
            (None, Some(computed)) => computed,
            (None, None) => {
                return Err(TlsError::NoCertificate {
                    what: format!("remote {remote}"),
                })
            }
        };
        Ok(Pin {
            source: PinSource::Remote(remote.to_owned()),
            fingerprint,
            ca,
        })
    }

    /// The pin of a CA PEM file (its last certificate).
    pub fn from_ca_file(path: &str, pem: &str) -> Result<Pin, TlsError> {
        let certs = pem_decode(pem, path)?;
        let ca = certs
            .last()
            .cloned()
            .ok_or_else(|| TlsError::NoCertificate {
                what: path.to_owned(),
            })?;
        Ok(Pin {
            source: PinSource::CaFile(path.to_owned()),
            fingerprint: fingerprint_of(&ca),
            ca: Some(ca),
        })
    }
}

fn fingerprint_of(der: &CertificateDer<'_>) -> String {
    fingerprint(der.as_ref())
}

/// Where the pinned verifier leaves the fingerprint of a CA that did not match, so the
/// client can report `certificate_changed` instead of a bare TLS error.
pub type MismatchSlot = Arc<Mutex<Option<String>>>;

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsError> {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)
}

/// A client config that trusts the built-in web PKI roots (an `https://` server with a
/// publicly trusted certificate and no pinned CA).
pub fn webpki_config() -> Result<ClientConfig, TlsError> {
    let roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut config = builder()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client config that accepts only chains signed up to `pin`'s CA; a CA with another
/// fingerprint fails the handshake and is recorded in the returned slot.
pub fn pinned_config(pin: &Pin) -> Result<(ClientConfig, MismatchSlot), TlsError> {
    let slot = MismatchSlot::default();
    let verifier = PinnedVerifier {
        pin: pin.clone(),
        algs: algorithms(),
        mismatch: Arc::clone(&slot),
    };
    let mut config = builder()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, slot))
}

/// Checks server chains against a pinned CA, without host name checks.
#[derive(Debug)]
struct PinnedVerifier {
    pin: Pin,
    algs: WebPkiSupportedAlgorithms,
    mismatch: MismatchSlot,
}

impl PinnedVerifier {
    /// Whether `end_entity` (with `intermediates`) chains to `anchor`.
    fn chains_to(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        anchor: &CertificateDer<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone())?;
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &roots,
            intermediates,
            now,
            self.algs.all,
        )
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = intermediates.last().unwrap_or(end_entity);
        let presented_fp = fingerprint_of(presented);
        if presented_fp == self.pin.fingerprint {
            match intermediates.split_last() {
                // The pinned certificate itself, alone.
                None => {}
                Some((anchor, rest)) => self.chains_to(end_entity, rest, anchor, now)?,
            }
            return Ok(ServerCertVerified::assertion());
        }
        // A server may send its chain without the CA: still fine if it leads to the pin.
        if let Some(ca) = &self.pin.ca {
            if self.chains_to(end_entity, intermediates, ca, now).is_ok() {
                return Ok(ServerCertVerified::assertion());
            }
        }
        if let Ok(mut slot) = self.mismatch.lock() {
            *slot = Some(presented_fp);
        }
        Err(rustls::Error::General("certificate_changed".into()))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Trusts any chain, only to look at it: `remote add` shows the CA's fingerprint and the
/// user decides. The handshake signature is still checked, so the server holds the key of
/// the certificate it shows. Never used for requests.
#[derive(Debug)]
struct CaptureOnly {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for CaptureOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Connects to an `https://` URL, completes a TLS handshake and returns the chain the
/// server presented (leaf first).
pub fn fetch_chain(url: &Url, timeout: Duration) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = url.as_str().trim_end_matches('/').to_owned();
    let connect_err = |source| TlsError::Connect {
        url: shown.clone(),
        source,
    };
    let handshake_err = |source| TlsError::Handshake {
        url: shown.clone(),
        source,
    };
    let host = url
        .host_str()
        .ok_or_else(|| TlsError::NoHost { url: shown.clone() })?
        .trim_matches(['[', ']']);
    let server_name = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host.to_owned())
            .map_err(|e| connect_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?,
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(connect_err)?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    let mut sock = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                sock = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let mut sock = sock.ok_or_else(|| connect_err(last))?;
    sock.set_read_timeout(Some(timeout)).map_err(connect_err)?;
    sock.set_write_timeout(Some(timeout)).map_err(connect_err)?;
    let config = builder()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CaptureOnly { algs: algorithms() }))
        .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), server_name).map_err(TlsError::Setup)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(handshake_err)?;
    }
    let chain: Vec<CertificateDer<'static>> = conn
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    conn.send_close_notify();
    let _ = conn.complete_io(&mut sock);
    if chain.is_empty() {
        return Err(TlsError::NoPeerCertificate { url: shown });
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_lowercase_hex_sha256() {
        assert_eq!(
            fingerprint(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(is_fingerprint(&fingerprint(b"abc")));
        assert!(!is_fingerprint("3f9a"));
        assert!(!is_fingerprint(&"g".repeat(64)));
    }

    #[test]
    fn base64_table() {
        for (input, want) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
            (&[0xff, 0xfe, 0xfd], "//79"),
        ] {
            assert_eq!(base64(input), want, "{input:?}");
        }
    }

    #[test]
    fn pem_encode_then_decode_round_trips_and_wraps_at_64() {
        let der: Vec<u8> = (0..=255u8).cycle().take(700).collect();
        let pem = pem_encode(&der);
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(pem.ends_with("\n-----END CERTIFICATE-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        let two = format!("{pem}{}", pem_encode(b"second"));
        let certs = pem_decode(&two, "x").unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].as_ref(), &der[..]);
        assert_eq!(certs[1].as_ref(), b"second");
    }

    #[test]
    fn pem_decode_without_certificate_names_source() {
        let err = pem_decode("hello", "ca.crt").unwrap_err();
        assert_eq!(err.to_string(), "ca.crt holds no PEM certificate");
    }

    #[test]
    fn chain_ca_is_last_certificate_or_the_only_one() {
        let a = CertificateDer::from(b"a".to_vec());
        let b = CertificateDer::from(b"b".to_vec());
        assert_eq!(chain_ca(&[a.clone(), b.clone()]), Some(&b));
        assert_eq!(chain_ca(std::slice::from_ref(&a)), Some(&a));
        assert_eq!(chain_ca(&[]), None);
    }

    #[test]
    fn pin_from_remote_table() {
        let pem = pem_encode(b"ca-der");
        let fp = fingerprint(b"ca-der");
        let other = "0".repeat(64);
        let ok = Pin::from_remote("r", Some(&fp.to_uppercase()), Some(&pem)).unwrap();
        assert_eq!(ok.fingerprint, fp);
        assert_eq!(
            ok.ca.as_ref().map(|c| c.as_ref().to_vec()),
            Some(b"ca-der".to_vec())
        );
        assert_eq!(
            Pin::from_remote("r", None, Some(&pem)).unwrap().fingerprint,
            fp
        );
        let only_fp = Pin::from_remote("r", Some(&other), None).unwrap();
        assert!(only_fp.ca.is_none());
        assert!(matches!(
            Pin::from_remote("r", Some(&other), Some(&pem)),
            Err(TlsError::PinDisagrees { .. })
        ));
        assert!(matches!(
            Pin::from_remote("r", Some("3f9a"), None),
            Err(TlsError::BadFingerprint { .. })
        ));
        assert!(Pin::from_remote("r", None, None).is_err());
    }

    #[test]
    fn pin_source_names_remote_or_env_file() {
        assert_eq!(PinSource::Remote("lab".into()).to_string(), "remote lab");
        assert_eq!(
            PinSource::CaFile("/x/ca.crt".into()).to_string(),
            "OTHERIX_CA_CERT (/x/ca.crt)"
        );
    }
}
