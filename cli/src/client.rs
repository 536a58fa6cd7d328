//! The typed HTTP client of the otherixd `/v1` API: one function per route, blocking,
//! every failure a [`ClientError`]. [`Client::execute`] is the one place that sends a
//! request and reads the error envelope; `http_target` uses it too.

use std::time::Duration;

use otherix_api::manifest::{ClusterSettingsSpec, FirmwareSpec, NetworkSpec, PoolSpec};
use otherix_api::{
    ApplyRequest, ApplyResponse, ClusterSettings, CreateObjectRequest, CreateVmRequest, Firmware,
    ListResponse, LogChunk, Network, Node, Pool, Task, TaskAccepted, TaskStatus, Vm, VmPhase,
};
use reqwest::blocking::{Client as Http, RequestBuilder};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use uuid::Uuid;

use crate::tls::{self, MismatchSlot, Pin, PinSource, TlsError};
use crate::wire::{
    CreateProjectRequest, CreateTokenRequest, CreatedToken, Images, JoinToken, JoinTokenRequest,
    Project, Token, Whoami,
};

/// Longest a single request may take; long-polls ask for far less.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a non-JSON error body to quote.
const BODY_QUOTE_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error envelope.
    #[error("{code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// No usable answer: connection failure, timeout, or an error without an envelope.
    #[error("cannot reach otherix server at {server}")]
    Unreachable {
        server: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A success status whose body is not what the route returns.
    #[error("unexpected response from otherix server at {server} for {route}")]
    Decode {
        server: String,
        route: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid server URL {url:?}")]
    BadServerUrl {
        url: String,
        #[source]
        source: UrlParseError,
    },
    /// The server's CA is not the one pinned: a hard error, never retried.
    #[error(
        "certificate_changed: the server at {server} presents a certificate with fingerprint {presented}, but {pinned_by} pinned {pinned}{hint}",
        hint = certificate_changed_hint(pinned_by)
    )]
    CertificateChanged {
        server: String,
        presented: String,
        pinned: String,
        pinned_by: PinSource,
    },
    #[error("invalid trust settings")]
    Trust(#[source] TlsError),
    #[error("the token is not a valid HTTP header value")]
    BadToken,
    /// No CA is pinned and the built-in roots do not vouch for the server.
    #[error(
        "the server at {server} presents a certificate this CLI does not trust; trust its CA with 'otherix remote add NAME {server} --token-file FILE' (or set OTHERIX_CA_CERT to its ca.crt)"
    )]
    UntrustedCertificate {
        server: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Whether `e` (or an error it wraps, also inside `io::Error`s) is rustls rejecting the
/// peer's certificate.
fn is_invalid_certificate(e: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return matches!(tls, rustls::Error::InvalidCertificate(_));
    }
    // `io::Error::source` skips the error it wraps; look at that one too.
    let wrapped = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .is_some_and(|inner| is_invalid_certificate(inner));
    wrapped || e.source().is_some_and(is_invalid_certificate)
}

/// What to do about a changed certificate, by who pinned the old one.
fn certificate_changed_hint(pinned_by: &PinSource) -> String {
    match pinned_by {
        PinSource::Remote(name) => format!(
            "; if the server was re-installed, run 'otherix remote remove {name}' and add it again"
        ),
        PinSource::CaFile(_) => "; point OTHERIX_CA_CERT at the server's current CA".into(),
    }
}

/// The url crate's parse error, named without depending on `url` directly.
pub type UrlParseError = <Url as std::str::FromStr>::Err;

/// An HTTP answer that was not an error envelope.
#[derive(Debug, thiserror::Error)]
#[error("HTTP {status}: {body}")]
pub struct BadStatus {
    status: reqwest::StatusCode,
    body: String,
}

/// A decoded answer and the exact body it came from (for `-o json`).
#[derive(Debug, Clone)]
pub struct Fetched<T> {
    pub value: T,
    pub raw: String,
}

/// A success answer, not yet decoded: the route it answered (`GET /v1/vms`) and its body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub route: String,
    pub body: String,
}

/// Filters of `GET /v1/vms`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmListQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    pub pool: Option<String>,
    pub node: Option<String>,
    pub status: Option<VmPhase>,
    /// `label=KEY=VALUE,...`.
    pub label: Option<String>,
    /// `all_projects=true` (admins).
    pub all_projects: bool,
}

/// How a [`Client`] connects: the server URL, the bearer token, the pinned CA (`None`:
/// the built-in roots; ignored for `http://`) and the project of VM and task routes.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    pub server: String,
    pub token: Option<String>,
    pub pin: Option<Pin>,
    pub project: Option<String>,
}

impl ClientOptions {
    /// Plain options: no token, no pin, no project (tests).
    #[cfg(test)]
    pub fn plain(server: &str) -> ClientOptions {
        ClientOptions {
            server: server.to_owned(),
            ..ClientOptions::default()
        }
    }
}

/// The error envelope, read leniently so a code this CLI does not know still prints.
#[derive(Deserialize)]
struct WireEnvelope {
    error: WireError,
}
#[derive(Deserialize)]
struct WireError {
    code: String,
    message: String,
}

#[derive(Clone)]
pub struct Client {
    base: Url,
    server: String,
    http: Http,
    /// `project=P` on VM and task routes.
    project: Option<String>,
    /// The pin and where its verifier reports a mismatch.
    pinned: Option<(Pin, MismatchSlot)>,
    /// `Authorization: Bearer` of every request (also sent by the console's WebSocket).
    token: Option<String>,
}

impl Client {
    /// A client without token, pin or project (tests).
    #[cfg(test)]
    pub fn new(server: &str) -> Result<Client, ClientError> {
        Client::connect(ClientOptions::plain(server))
    }

    /// A client for `opts`: `Authorization: Bearer <token>` on every request when a
    /// token is given; for `https://` with a pin, only chains signed up to the pinned CA
    /// are accepted (no host name check).
    pub fn connect(opts: ClientOptions) -> Result<Client, ClientError> {
        let server = opts.server.as_str();
        let base = Url::parse(server).map_err(|source| ClientError::BadServerUrl {
            url: server.to_owned(),
            source,
        })?;
        let mut builder = Http::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("otherix/", env!("CARGO_PKG_VERSION")));
        if let Some(token) = &opts.token {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::BadToken)?;
            value.set_sensitive(true);
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        let mut pinned = None;
        if let (Some(pin), "https") = (opts.pin, base.scheme()) {
            let (config, slot) = tls::pinned_config(&pin).map_err(ClientError::Trust)?;
            builder = builder.use_preconfigured_tls(config);
            pinned = Some((pin, slot));
        }
        let http = builder.build().map_err(|e| ClientError::Unreachable {
            server: server.to_owned(),
            source: Box::new(e),
        })?;
        Ok(Client {
            base,
            server: server.trim_end_matches('/').to_owned(),
            http,
            project: opts.project,
            pinned,
            token: opts.token.clone(),
        })
    }

    /// The server URL, as given.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The project VM and task routes name (`--project`, `OTHERIX_PROJECT`, the
    /// remote's), or `None` when the server uses the token's.
    pub fn project(&self) -> Option<&str> {
        self.project.as_deref()
    }

    /// The same client with `project` as its project (one connection pool, one pin).
    pub fn in_project(&self, project: &str) -> Client {
        Client {
            project: Some(project.to_owned()),
            ..self.clone()
        }
    }

    /// `POST /v1/vms`
    pub fn create_vm(&self, req: &CreateVmRequest) -> Result<TaskAccepted, ClientError> {
        Ok(self
            .send(self.request(Method::POST, &["v1", "vms"], &[]).json(req))?
            .value)
    }

    /// `GET /v1/vms?limit=&cursor=&pool=&node=&status=`
    pub fn list_vms(&self, q: &VmListQuery) -> Result<Fetched<ListResponse<Vm>>, ClientError> {
        let limit = q.limit.map(|l| l.to_string());
        let mut query = vec![];
        let pairs = [
            ("limit", limit.as_deref()),
            ("cursor", q.cursor.as_deref()),
            ("pool", q.pool.as_deref()),
            ("node", q.node.as_deref()),
            ("status", q.status.map(VmPhase::as_str)),
            ("label", q.label.as_deref()),
            ("all_projects", q.all_projects.then_some("true")),
        ];
        for (k, v) in pairs {
            if let Some(v) = v {
                query.push((k, v.to_owned()));
            }
        }
        self.get(&["v1", "vms"], &query)
    }

    /// `GET /v1/vms/{name}`
    pub fn get_vm(&self, name: &str) -> Result<Fetched<Vm>, ClientError> {
        self.get(&["v1", "vms", name], &[])
    }

    /// `POST /v1/vms/{name}/start`
    pub fn start_vm(&self, name: &str) -> Result<TaskAccepted, ClientError> {
        Ok(self.post_vm(name, "start", &[])?.value)
    }

    /// `POST /v1/vms/{name}/stop?timeout_secs=N`
    pub fn stop_vm(
        &self,
        name: &str,
        timeout_secs: Option<u32>,
    ) -> Result<TaskAccepted, ClientError> {
        let query: Vec<_> = timeout_secs
            .map(|t| ("timeout_secs", t.to_string()))
            .into_iter()
            .collect();
        Ok(self.post_vm(name, "stop", &query)?.value)
    }

    /// `POST /v1/vms/{name}/poweroff`
    pub fn poweroff_vm(&self, name: &str) -> Result<TaskAccepted, ClientError> {
        Ok(self.post_vm(name, "poweroff", &[])?.value)
    }

    /// `POST /v1/vms/{name}/reboot`
    pub fn reboot_vm(&self, name: &str) -> Result<TaskAccepted, ClientError> {
        Ok(self.post_vm(name, "reboot", &[])?.value)
    }

    /// `POST /v1/vms/{name}/pause`
    pub fn pause_vm(&self, name: &str) -> Result<Fetched<Vm>, ClientError> {
        self.post_vm(name, "pause", &[])
    }

    /// `POST /v1/vms/{name}/resume`
    pub fn resume_vm(&self, name: &str) -> Result<Fetched<Vm>, ClientError> {
        self.post_vm(name, "resume", &[])
    }

    /// `POST /v1/vms/{name}/reset`
    pub fn reset_vm(&self, name: &str) -> Result<Fetched<Vm>, ClientError> {
        self.post_vm(name, "reset", &[])
    }

    /// `DELETE /v1/vms/{name}`
    pub fn delete_vm(&self, name: &str) -> Result<TaskAccepted, ClientError> {
        Ok(self
            .send(self.request(Method::DELETE, &["v1", "vms", name], &[]))?
            .value)
    }

    /// `GET /v1/tasks/{id}`, long-polling with `wait_secs` (and `status`, the status
    /// the caller last saw) when `wait` is given.
    pub fn get_task(
        &self,
        id: Uuid,
        wait: Option<(u32, Option<TaskStatus>)>,
    ) -> Result<Fetched<Task>, ClientError> {
        let mut query = vec![];
        if let Some((secs, status)) = wait {
            query.push(("wait_secs", secs.to_string()));
            if let Some(s) = status {
                query.push(("status", s.as_str().to_owned()));
            }
        }
        self.get(&["v1", "tasks", &id.to_string()], &query)
    }

    /// `GET /v1/tasks?vm=NAME&all_projects=true`
    pub fn list_tasks(
        &self,
        vm: Option<&str>,
        all_projects: bool,
    ) -> Result<Fetched<ListResponse<Task>>, ClientError> {
        let mut query: Vec<_> = vm.map(|v| ("vm", v.to_owned())).into_iter().collect();
        if all_projects {
            query.push(("all_projects", "true".to_owned()));
        }
        self.get(&["v1", "tasks"], &query)
    }

    /// `GET /v1/nodes`
    pub fn list_nodes(&self) -> Result<Fetched<ListResponse<Node>>, ClientError> {
        self.get(&["v1", "nodes"], &[])
    }

    /// `GET /v1/nodes/{name}`
    pub fn get_node(&self, name: &str) -> Result<Fetched<Node>, ClientError> {
        self.get(&["v1", "nodes", name], &[])
    }

    /// `POST /v1/pools`
    pub fn create_pool(
        &self,
        req: &CreateObjectRequest<PoolSpec>,
    ) -> Result<Fetched<Pool>, ClientError> {
        self.send(self.request(Method::POST, &["v1", "pools"], &[]).json(req))
    }

    /// `GET /v1/pools`
    pub fn list_pools(&self) -> Result<Fetched<ListResponse<Pool>>, ClientError> {
        self.get(&["v1", "pools"], &[])
    }

    /// `GET /v1/pools/{name}`
    pub fn get_pool(&self, name: &str) -> Result<Fetched<Pool>, ClientError> {
        self.get(&["v1", "pools", name], &[])
    }

    /// `DELETE /v1/pools/{name}` (the answer's body, if any, is not needed).
    pub fn delete_pool(&self, name: &str) -> Result<(), ClientError> {
        self.execute(self.request(Method::DELETE, &["v1", "pools", name], &[]))
            .map(drop)
    }

    /// `GET /v1/pools/{name}/images`
    pub fn pool_images(&self, name: &str) -> Result<Fetched<Images>, ClientError> {
        self.get(&["v1", "pools", name, "images"], &[])
    }

    /// `POST /v1/pools/{name}/prune-images`: the images removed.
    pub fn prune_pool_images(&self, name: &str) -> Result<Fetched<Images>, ClientError> {
        self.send(self.request(Method::POST, &["v1", "pools", name, "prune-images"], &[]))
    }

    /// `POST /v1/networks`
    pub fn create_network(
        &self,
        req: &CreateObjectRequest<NetworkSpec>,
    ) -> Result<Fetched<Network>, ClientError> {
        self.send(
            self.request(Method::POST, &["v1", "networks"], &[])
                .json(req),
        )
    }

    /// `GET /v1/networks`
    pub fn list_networks(&self) -> Result<Fetched<ListResponse<Network>>, ClientError> {
        self.get(&["v1", "networks"], &[])
    }

    /// `GET /v1/networks/{name}`
    pub fn get_network(&self, name: &str) -> Result<Fetched<Network>, ClientError> {
        self.get(&["v1", "networks", name], &[])
    }

    /// `DELETE /v1/networks/{name}` (the answer's body, if any, is not needed).
    pub fn delete_network(&self, name: &str) -> Result<(), ClientError> {
        self.execute(self.request(Method::DELETE, &["v1", "networks", name], &[]))
            .map(drop)
    }

    /// `POST /v1/firmware`
    pub fn create_firmware(
        &self,
        req: &CreateObjectRequest<FirmwareSpec>,
    ) -> Result<Fetched<Firmware>, ClientError> {
        self.send(
            self.request(Method::POST, &["v1", "firmware"], &[])
                .json(req),
        )
    }

    /// `GET /v1/firmware`
    pub fn list_firmware(&self) -> Result<Fetched<ListResponse<Firmware>>, ClientError> {
        self.get(&["v1", "firmware"], &[])
    }

    /// `GET /v1/firmware/{name}`
    pub fn get_firmware(&self, name: &str) -> Result<Fetched<Firmware>, ClientError> {
        self.get(&["v1", "firmware", name], &[])
    }

    /// `GET /v1/cluster`
    pub fn get_cluster(&self) -> Result<Fetched<ClusterSettings>, ClientError> {
        self.get(&["v1", "cluster"], &[])
    }

    /// `PUT /v1/cluster`, conditional on `if_match` (the resource_version read) if given.
    pub fn put_cluster(
        &self,
        req: &ApplyRequest<ClusterSettingsSpec>,
        if_match: Option<i64>,
    ) -> Result<ApplyResponse<ClusterSettings>, ClientError> {
        let mut builder = self.request(Method::PUT, &["v1", "cluster"], &[]).json(req);
        if let Some(v) = if_match {
            builder = builder.header(reqwest::header::IF_MATCH, v.to_string());
        }
        Ok(self.send(builder)?.value)
    }

    /// `POST /v1/tasks/{id}/cancel`
    pub fn cancel_task(&self, id: Uuid) -> Result<Fetched<Task>, ClientError> {
        let id = id.to_string();
        self.send(self.request(Method::POST, &["v1", "tasks", &id, "cancel"], &[]))
    }

    /// `GET /v1/vms/{name}/logs?offset=N&max_bytes=M`
    pub fn vm_logs(
        &self,
        name: &str,
        offset: u64,
        max_bytes: u32,
    ) -> Result<LogChunk, ClientError> {
        let query = [
            ("offset", offset.to_string()),
            ("max_bytes", max_bytes.to_string()),
        ];
        Ok(self.get(&["v1", "vms", name, "logs"], &query)?.value)
    }

    /// `GET /v1/whoami`
    pub fn whoami(&self) -> Result<Fetched<Whoami>, ClientError> {
        self.get(&["v1", "whoami"], &[])
    }

    /// `POST /v1/tokens`: the token and its secret.
    pub fn create_token(&self, req: &CreateTokenRequest) -> Result<CreatedToken, ClientError> {
        Ok(self
            .send(self.request(Method::POST, &["v1", "tokens"], &[]).json(req))?
            .value)
    }

    /// `GET /v1/tokens`
    pub fn list_tokens(&self) -> Result<Fetched<ListResponse<Token>>, ClientError> {
        self.get(&["v1", "tokens"], &[])
    }

    /// `DELETE /v1/tokens/{name}`
    pub fn revoke_token(&self, name: &str) -> Result<(), ClientError> {
        self.execute(self.request(Method::DELETE, &["v1", "tokens", name], &[]))
            .map(drop)
    }

    /// `POST /v1/projects`
    pub fn create_project(
        &self,
        req: &CreateProjectRequest,
    ) -> Result<Fetched<Project>, ClientError> {
        self.send(
            self.request(Method::POST, &["v1", "projects"], &[])
                .json(req),
        )
    }

    /// `GET /v1/projects`
    pub fn list_projects(&self) -> Result<Fetched<ListResponse<Project>>, ClientError> {
        self.get(&["v1", "projects"], &[])
    }

    /// `GET /v1/projects/{name}`
    pub fn get_project(&self, name: &str) -> Result<Fetched<Project>, ClientError> {
        self.get(&["v1", "projects", name], &[])
    }

    /// `DELETE /v1/projects/{name}`
    pub fn delete_project(&self, name: &str) -> Result<(), ClientError> {
        self.execute(self.request(Method::DELETE, &["v1", "projects", name], &[]))
            .map(drop)
    }

    /// `POST /v1/nodes/{name}/join-token`
    pub fn node_join_token(
        &self,
        node: &str,
        req: &JoinTokenRequest,
    ) -> Result<JoinToken, ClientError> {
        Ok(self
            .send(
                self.request(Method::POST, &["v1", "nodes", node, "join-token"], &[])
                    .json(req),
            )?
            .value)
    }

    /// `POST /v1/nodes/{name}/revoke` (the node it answers is not needed).
    pub fn revoke_node(&self, node: &str) -> Result<(), ClientError> {
        self.execute(self.request(Method::POST, &["v1", "nodes", node, "revoke"], &[]))
            .map(drop)
    }

    fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Fetched<T>, ClientError> {
        self.send(self.request(Method::GET, segments, query))
    }

    fn post_vm<T: DeserializeOwned>(
        &self,
        name: &str,
        op: &str,
        query: &[(&str, String)],
    ) -> Result<Fetched<T>, ClientError> {
        self.send(self.request(Method::POST, &["v1", "vms", name, op], query))
    }

    /// A request to the base URL plus `segments` and `query`.
    pub fn request(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> RequestBuilder {
        self.http.request(method, self.url(segments, query))
    }

    /// The base URL plus percent-encoded path segments and query pairs, plus
    /// `project=P` on VM and task routes (see [`scoped`]).
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        let project = scoped(segments, query, self.project.as_deref());
        if !query.is_empty() || project.is_some() {
            let mut pairs = url.query_pairs_mut();
            pairs.extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
            if let Some(p) = project {
                pairs.append_pair("project", p);
            }
        }
        url
    }

    /// Sends a request: a success status gives its body, an error envelope `Api`, and
    /// anything else (no connection, an error without an envelope) `Unreachable`.
    pub fn execute(&self, req: RequestBuilder) -> Result<Answer, ClientError> {
        let (route, resp) = self.open(req)?;
        let body = resp.text().map_err(|e| ClientError::Unreachable {
            server: self.server.clone(),
            source: Box::new(e),
        })?;
        Ok(Answer { route, body })
    }

    /// Sends a request and returns the success response with its body unread (a
    /// stream), or the error [`Client::execute`] would; also the route, for messages.
    pub fn open(
        &self,
        req: RequestBuilder,
    ) -> Result<(String, reqwest::blocking::Response), ClientError> {
        let unreachable =
            |source: Box<dyn std::error::Error + Send + Sync>| ClientError::Unreachable {
                server: self.server.clone(),
                source,
            };
        let req = req.build().map_err(|e| unreachable(Box::new(e)))?;
        let route = format!("{} {}", req.method(), req.url().path());
        let resp = self.http.execute(req).map_err(|e| {
            if let Some(changed) = self.certificate_changed() {
                return changed;
            }
            if self.pinned.is_none() && is_invalid_certificate(&e) {
                return ClientError::UntrustedCertificate {
                    server: self.server.clone(),
                    source: Box::new(e),
                };
            }
            unreachable(Box::new(e))
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok((route, resp));
        }
        let body = resp.text().map_err(|e| unreachable(Box::new(e)))?;
        Err(self.error_answer(status, &body))
    }

    /// The error an answer with a failure `status` and `body` means: `Api` with its
    /// envelope, else `Unreachable` quoting the body.
    pub fn error_answer(&self, status: reqwest::StatusCode, body: &str) -> ClientError {
        match serde_json::from_str::<WireEnvelope>(body) {
            Ok(env) => ClientError::Api {
                status: status.as_u16(),
                code: env.error.code,
                message: env.error.message,
            },
            Err(_) => ClientError::Unreachable {
                server: self.server.clone(),
                source: Box::new(BadStatus {
                    status,
                    body: quote_body(body),
                }),
            },
        }
    }

    /// The bearer token requests carry, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The TLS settings requests to an `https://` server use: the pinned CA, or the
    /// built-in roots.
    pub fn tls_config(&self) -> Result<rustls::ClientConfig, ClientError> {
        match &self.pinned {
            Some((pin, _)) => Ok(tls::pinned_config(pin).map_err(ClientError::Trust)?.0),
            None => tls::webpki_config().map_err(ClientError::Trust),
        }
    }

    /// Decodes a success answer as what its route returns.
    pub fn decode<T: DeserializeOwned>(&self, answer: Answer) -> Result<Fetched<T>, ClientError> {
        match serde_json::from_str(&answer.body) {
            Ok(value) => Ok(Fetched {
                value,
                raw: answer.body,
            }),
            Err(source) => Err(ClientError::Decode {
                server: self.server.clone(),
                route: answer.route,
                source,
            }),
        }
    }

    fn send<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<Fetched<T>, ClientError> {
        self.decode(self.execute(req)?)
    }

    /// `CertificateChanged` when the pinned verifier rejected the server's CA.
    fn certificate_changed(&self) -> Option<ClientError> {
        let (pin, slot) = self.pinned.as_ref()?;
        let presented = slot.lock().ok()?.take()?;
        Some(ClientError::CertificateChanged {
            server: self.server.clone(),
            presented,
            pinned: pin.fingerprint.clone(),
            pinned_by: pin.source.clone(),
        })
    }
}

/// The project to add to a request: `project` on `/v1/vms...`, `/v1/tasks...` and
/// `/v1/events` routes,
/// unless the query already selects a project or all of them.
pub fn scoped<'p>(
    segments: &[&str],
    query: &[(&str, String)],
    project: Option<&'p str>,
) -> Option<&'p str> {
    let vm_or_task = matches!(segments, ["v1", "vms" | "tasks" | "events", ..]);
    let chosen = query
        .iter()
        .any(|(k, _)| *k == "project" || *k == "all_projects");
    project.filter(|_| vm_or_task && !chosen)
}

/// The first line of a body, shortened, for an error message.
fn quote_body(raw: &str) -> String {
    let line = raw.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return "(empty body)".into();
    }
    let mut out: String = line.chars().take(BODY_QUOTE_CHARS).collect();
    if out.len() < line.len() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_url_encodes_segments_and_query() {
        let c = Client::new("http://127.0.0.1:7080/").unwrap();
        let url = c.url(
            &["v1", "vms", "a b/c"],
            &[("status", "running".into()), ("cursor", "x&y".into())],
        );
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:7080/v1/vms/a%20b%2Fc?status=running&cursor=x%26y"
        );
    }

    #[test]
    fn scoped_adds_project_to_vm_and_task_routes_only() {
        let q = |k: &'static str| vec![(k, "x".to_owned())];
        type Row<'a> = (&'a [&'a str], Vec<(&'a str, String)>, Option<&'a str>);
        let table: &[Row] = &[
            (&["v1", "vms"], vec![], Some("dev")),
            (
                &["v1", "vms", "web-1", "stop"],
                q("timeout_secs"),
                Some("dev"),
            ),
            (&["v1", "tasks", "id"], vec![], Some("dev")),
            (&["v1", "vms"], q("all_projects"), None),
            (&["v1", "vms"], q("project"), None),
            (&["v1", "pools"], vec![], None),
            (&["v1", "nodes", "n", "join-token"], vec![], None),
            (&["v1", "tokens"], vec![], None),
            (&["v1", "projects", "dev"], vec![], None),
            (&["v1", "whoami"], vec![], None),
        ];
        for (segments, query, want) in table {
            assert_eq!(scoped(segments, query, Some("dev")), *want, "{segments:?}");
            assert_eq!(scoped(segments, query, None), None, "{segments:?}");
        }
    }

    #[test]
    fn client_with_project_sends_it_and_all_projects_overrides() {
        let c = Client::connect(ClientOptions {
            project: Some("dev".into()),
            ..ClientOptions::plain("https://h:7080")
        })
        .unwrap();
        assert_eq!(
            c.url(&["v1", "vms", "web-1"], &[]).as_str(),
            "https://h:7080/v1/vms/web-1?project=dev"
        );
        assert_eq!(
            c.url(&["v1", "tasks"], &[("vm", "web-1".into())]).as_str(),
            "https://h:7080/v1/tasks?vm=web-1&project=dev"
        );
        assert_eq!(
            c.url(&["v1", "vms"], &[("all_projects", "true".into())])
                .as_str(),
            "https://h:7080/v1/vms?all_projects=true"
        );
        assert_eq!(
            c.url(&["v1", "nodes"], &[]).as_str(),
            "https://h:7080/v1/nodes"
        );
    }

    #[test]
    fn client_token_with_newline_is_rejected() {
        let err = Client::connect(ClientOptions {
            token: Some("otx_a\nb".into()),
            ..ClientOptions::plain("https://h:7080")
        })
        .err()
        .unwrap();
        assert!(matches!(err, ClientError::BadToken), "{err:?}");
    }

    #[test]
    fn client_url_keeps_base_path_prefix() {
        let c = Client::new("http://h:1/otherix").unwrap();
        assert_eq!(
            c.url(&["v1", "vms"], &[]).as_str(),
            "http://h:1/otherix/v1/vms"
        );
    }

    #[test]
    fn client_bad_server_url_is_rejected() {
        let err = Client::new("not a url").err().unwrap();
        assert!(err.to_string().starts_with("invalid server URL"), "{err}");
    }

    #[test]
    fn quote_body_shortens_and_names_empty() {
        assert_eq!(quote_body(""), "(empty body)");
        assert_eq!(quote_body("Bad Gateway\nmore"), "Bad Gateway");
        assert_eq!(quote_body(&"x".repeat(300)).len(), BODY_QUOTE_CHARS + 3);
    }
}
