//! `remote add` and pinned requests against a real rustls HTTPS server on 127.0.0.1 with
//! certificates made by rcgen: trusting and pinning the CA, a changed CA failing with
//! both fingerprints, refusing without a terminal, and the chain shapes a server may send.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::remote::{add, AddOptions};
use super::{client_options, CommandError};
use crate::client::{Client, ClientError};
use crate::config::{self, Env, Flags};
use crate::tls;

const WHOAMI: &str = r#"{"name":"admin","role":"admin","project":"default"}"#;

/// A cluster CA and a server certificate it signed (for a host name the tests never
/// connect by: pinning does not check names).
struct Pki {
    ca: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
    leaf_key: Vec<u8>,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "otherix cluster CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["otherixd.invalid".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        Pki {
            ca: ca.der().clone(),
            leaf: leaf.der().clone(),
            leaf_key: leaf_key.serialize_der(),
        }
    }

    fn ca_fingerprint(&self) -> String {
        tls::fingerprint(self.ca.as_ref())
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.leaf.clone(), self.ca.clone()]
    }
}

/// An HTTPS/1.1 server answering canned `(status, body)` pairs in order (the last one
/// repeats), recording request lines; connections without a request (the certificate
/// capture of `remote add`) are not counted.
struct TlsServer {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl TlsServer {
    fn start(
        chain: Vec<CertificateDer<'static>>,
        key: &[u8],
        answers: Vec<(u16, String)>,
    ) -> TlsServer {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec()));
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(vec![]));
        let seen = Arc::clone(&requests);
        thread::spawn(move || {
            let mut n = 0usize;
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { return };
                let Ok(conn) = ServerConnection::new(Arc::clone(&config)) else {
                    continue;
                };
                let mut stream = StreamOwned::new(conn, tcp);
                let Some(line) = read_request(&mut stream) else {
                    continue;
                };
                seen.lock().unwrap().push(line);
                let (status, body) = &answers[n.min(answers.len() - 1)];
                n += 1;
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(resp.as_bytes());
                stream.conn.send_close_notify();
                let _ = stream.flush();
            }
        });
        TlsServer { url, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// Reads one request (line, headers, body); `None` when the peer sent none.
fn read_request(stream: &mut impl Read) -> Option<String> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        if h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(line.trim_end().trim_end_matches(" HTTP/1.1").to_owned())
}

fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("admin.token");
    std::fs::write(&path, "otx_0123\n").unwrap();
    path
}

fn add_opts(dir: &Path, url: &str, accept: bool) -> AddOptions {
    AddOptions {
        name: "local".into(),
        url: url.into(),
        token_file: Some(token_file(dir)),
        project: None,
        accept_certificate: accept,
    }
}

/// A client as a command would build it from the config file at `path` (plus `--server`).
fn client_from_config(path: &Path, server: Option<&str>) -> Result<Client, CommandError> {
    let config = config::load(path)?;
    let flags = Flags {
        server: server.map(Into::into),
        ..Flags::default()
    };
    let resolved = config::resolve(&config, &flags, &Env::default())?;
    Ok(Client::connect(client_options(&resolved)?)?)
}

#[test]
fn remote_add_accept_certificate_pins_ca_and_later_requests_verify_against_it() {
    let pki = Pki::new();
    let server = TlsServer::start(pki.chain(), &pki.leaf_key, vec![(200, WHOAMI.into())]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let (mut out, mut err) = (vec![], vec![]);
    add(
        &path,
        add_opts(dir.path(), &server.url, true),
        None,
        &mut out,
        &mut err,
    )
    .unwrap();
    let fp = pki.ca_fingerprint();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!(
            "Certificate fingerprint: {fp}\n\
             remote local added: {} (token admin, role admin, project default)\n\
             current remote: local\n",
            server.url
        )
    );
    let c = config::load(&path).unwrap();
    let r = &c.remotes["local"];
    assert_eq!(r.fingerprint.as_deref(), Some(fp.as_str()));
    let pem_certs = tls::pem_decode(r.ca_cert.as_deref().unwrap(), "ca_cert").unwrap();
    assert_eq!(pem_certs, std::slice::from_ref(&pki.ca));
    assert_eq!(r.token.as_deref(), Some("otx_0123"));

    // A later command: pinned CA, the server's name (otherixd.invalid) is not checked.
    let client = client_from_config(&path, None).unwrap();
    assert_eq!(client.whoami().unwrap().value.name, "admin");
    assert_eq!(server.requests(), ["GET /v1/whoami", "GET /v1/whoami"]);
}

#[test]
fn request_to_server_with_another_ca_fails_naming_both_fingerprints() {
    let old = Pki::new();
    let server = TlsServer::start(old.chain(), &old.leaf_key, vec![(200, WHOAMI.into())]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    add(
        &path,
        add_opts(dir.path(), &server.url, true),
        None,
        &mut vec![],
        &mut vec![],
    )
    .unwrap();

    // The server was re-installed: a new CA at the same address (here: a new port,
    // reached through --server, which keeps the remote's pin).
    let new = Pki::new();
    let reinstalled = TlsServer::start(new.chain(), &new.leaf_key, vec![(200, WHOAMI.into())]);
    let client = client_from_config(&path, Some(&reinstalled.url)).unwrap();
    let err = client.whoami().unwrap_err();
    assert!(
        matches!(err, ClientError::CertificateChanged { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "certificate_changed: the server at {} presents a certificate with fingerprint {}, \
             but remote local pinned {}; if the server was re-installed, run \
             'otherix remote remove local' and add it again",
            reinstalled.url,
            new.ca_fingerprint(),
            old.ca_fingerprint()
        )
    );
    assert!(reinstalled.requests().is_empty(), "no request may be sent");
}

#[test]
fn remote_add_without_terminal_and_flag_refuses_and_saves_nothing() {
    let pki = Pki::new();
    let server = TlsServer::start(pki.chain(), &pki.leaf_key, vec![(200, WHOAMI.into())]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let mut out = vec![];
    let err = add(
        &path,
        add_opts(dir.path(), &server.url, false),
        None,
        &mut out,
        &mut vec![],
    )
    .unwrap_err();
    assert!(
        matches!(err, CommandError::NeedsAcceptCertificate { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&pki.ca_fingerprint()), "{msg}");
    assert!(
        msg.ends_with(
            "stdin is not a terminal; re-run with --accept-certificate to trust it non-interactively"
        ),
        "{msg}"
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("Certificate fingerprint: {}\n", pki.ca_fingerprint())
    );
    assert!(!path.exists());
    assert!(server.requests().is_empty());
}

#[test]
fn remote_add_on_terminal_asks_and_no_keeps_config_untouched() {
    let pki = Pki::new();
    let server = TlsServer::start(pki.chain(), &pki.leaf_key, vec![(200, WHOAMI.into())]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let mut prompt = vec![];
    let err = add(
        &path,
        add_opts(dir.path(), &server.url, false),
        Some(&mut "n\n".as_bytes()),
        &mut vec![],
        &mut prompt,
    )
    .unwrap_err();
    assert!(
        matches!(err, CommandError::CertificateNotTrusted { .. }),
        "{err:?}"
    );
    assert_eq!(prompt, b"ok (y/n)? ");
    assert!(!path.exists());
    add(
        &path,
        add_opts(dir.path(), &server.url, false),
        Some(&mut "y\n".as_bytes()),
        &mut vec![],
        &mut vec![],
    )
    .unwrap();
    assert_eq!(
        config::load(&path).unwrap().remotes["local"]
            .fingerprint
            .as_deref(),
        Some(pki.ca_fingerprint().as_str())
    );
}

#[test]
fn server_sending_leaf_only_still_verifies_against_the_pinned_ca() {
    let pki = Pki::new();
    let full = TlsServer::start(pki.chain(), &pki.leaf_key, vec![(200, WHOAMI.into())]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    add(
        &path,
        add_opts(dir.path(), &full.url, true),
        None,
        &mut vec![],
        &mut vec![],
    )
    .unwrap();
    let leaf_only = TlsServer::start(
        vec![pki.leaf.clone()],
        &pki.leaf_key,
        vec![(200, WHOAMI.into())],
    );
    let client = client_from_config(&path, Some(&leaf_only.url)).unwrap();
    assert_eq!(client.whoami().unwrap().value.role, "admin");
}

#[test]
fn ca_file_pin_mismatch_names_otherix_ca_cert() {
    let served = Pki::new();
    let expected = Pki::new();
    let server = TlsServer::start(served.chain(), &served.leaf_key, vec![(200, WHOAMI.into())]);
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.crt");
    std::fs::write(&ca_path, tls::pem_encode(expected.ca.as_ref())).unwrap();
    let env = Env {
        ca_cert: Some(ca_path.clone()),
        ..Env::default()
    };
    let flags = Flags {
        server: Some(server.url.clone()),
        ..Flags::default()
    };
    let resolved = config::resolve(&config::Config::default(), &flags, &env).unwrap();
    let client = Client::connect(client_options(&resolved).unwrap()).unwrap();
    let msg = client.whoami().unwrap_err().to_string();
    assert!(
        msg.contains(&format!(
            "fingerprint {}, but OTHERIX_CA_CERT ({}) pinned {}",
            served.ca_fingerprint(),
            ca_path.display(),
            expected.ca_fingerprint()
        )),
        "{msg}"
    );
    // The right CA file works.
    std::fs::write(&ca_path, tls::pem_encode(served.ca.as_ref())).unwrap();
    let client = Client::connect(client_options(&resolved).unwrap()).unwrap();
    assert_eq!(client.whoami().unwrap().value.name, "admin");
}

#[test]
fn unpinned_request_to_private_ca_suggests_remote_add() {
    let pki = Pki::new();
    let server = TlsServer::start(pki.chain(), &pki.leaf_key, vec![(200, WHOAMI.into())]);
    let dir = tempfile::tempdir().unwrap();
    let client = client_from_config(&dir.path().join("none.yaml"), Some(&server.url)).unwrap();
    let err = client.whoami().unwrap_err();
    assert!(
        matches!(err, ClientError::UntrustedCertificate { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&format!(
            "'otherix remote add NAME {} --token-file FILE'",
            server.url
        )),
        "{err}"
    );
}
