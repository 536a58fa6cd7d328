//! `vm console`: finds the VM's node, registers a console session on this replica, asks
//! the VM's agent (through the relay, wherever its stream is attached) to dial this
//! replica's gateway back with it, and waits for that stream. Who may write is the HTTP
//! layer's decision (a writer needs write access to the project).

use std::sync::Arc;
use std::time::Duration;

pub use otherix_api::console::ConsoleMode;
use otherix_api::proto::SyncRequest;
use otherix_api::{ApiError, ErrorCode, VmPhase};
use uuid::Uuid;

use super::ServiceError;
use crate::gateway::{ConsoleLink, ConsoleRendezvous};
use crate::relay::Relay;
use crate::store::Store;
use otherix_api::validate::validate_name;

/// How long the agent gets to answer and to dial back.
pub const CONSOLE_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A VM whose console can be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleTarget {
    pub vm_id: Uuid,
    pub name: String,
    pub node: String,
}

pub struct ConsoleService {
    store: Store,
    relay: Arc<Relay>,
    rendezvous: Arc<ConsoleRendezvous>,
    /// This replica's agent gateway URL as agents reach it (empty: the agent dials the
    /// server it is attached to, right on a single replica).
    dial_url: String,
}

impl ConsoleService {
    pub fn new(
        store: Store,
        relay: Arc<Relay>,
        rendezvous: Arc<ConsoleRendezvous>,
        dial_url: String,
    ) -> Self {
        ConsoleService {
            store,
            relay,
            rendezvous,
            dial_url,
        }
    }

    /// The VM `name` of `project`, if its console can be opened now: 404 when there is no
    /// such VM, 409 unless it runs (or is paused) on a ready node.
    pub async fn target(&self, project: &str, name: &str) -> Result<ConsoleTarget, ServiceError> {
        validate_name("name", name)?;
        let vm = self
            .store
            .vm_by_name(project, name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("vm {name} not found")))?;
        let phase = vm.effective_phase();
        let node = match (&vm.node, phase) {
            (Some(node), VmPhase::Running | VmPhase::Paused) => node.clone(),
            _ => {
                return Err(ApiError::conflict(format!(
                    "vm {name} is {phase}; its console is there while it runs"
                ))
                .into())
            }
        };
        Ok(ConsoleTarget {
            vm_id: vm.id,
            name: vm.name,
            node,
        })
    }

    /// Asks the target's agent to open a session in `mode` and waits for its stream.
    /// 409 when the console has a writer (and `mode` does not force), 503 when the agent
    /// does not answer or cannot reach this replica.
    pub async fn open(
        &self,
        target: &ConsoleTarget,
        mode: ConsoleMode,
    ) -> Result<ConsoleLink, ServiceError> {
        let mut pending = self.rendezvous.expect(&target.node);
        let request = SyncRequest {
            op: "console".to_owned(),
            vm_id: target.vm_id.to_string(),
            console_session: pending.session.to_string(),
            console_url: self.dial_url.clone(),
            console_mode: mode.as_str().to_owned(),
            ..Default::default()
        };
        let reply = self
            .relay
            .sync_request(&target.node, request, CONSOLE_OPEN_TIMEOUT)
            .await?;
        if !reply.ok {
            let code = ErrorCode::from_wire(&reply.error_code);
            let message = if reply.error_message.is_empty() {
                format!("the agent refused the console of vm {}", target.name)
            } else {
                format!("vm {}: {}", target.name, reply.error_message)
            };
            return Err(ApiError::new(code, message).into());
        }
        match tokio::time::timeout(CONSOLE_OPEN_TIMEOUT, &mut pending.link).await {
            Ok(Ok(link)) => Ok(link),
            _ => Err(ApiError::new(
                ErrorCode::AgentUnavailable,
                format!(
                    "the agent of node {} did not open vm {}'s console stream within {}s",
                    target.node,
                    target.name,
                    CONSOLE_OPEN_TIMEOUT.as_secs()
                ),
            )
            .into()),
        }
    }
}

/// This replica's console dial-back URL: `--agent-advertise-url` when given (an http(s)
/// URL), else the bound agent gateway address when it is a specific IP, else none.
pub fn advertise_url(
    explicit: Option<&str>,
    tls: bool,
    bound: std::net::SocketAddr,
) -> Result<String, String> {
    if let Some(url) = explicit {
        let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
        return match url.parse::<axum::http::Uri>() {
            Ok(uri) if scheme_ok && uri.host().is_some() => {
                Ok(url.trim_end_matches('/').to_owned())
            }
            _ => Err(format!(
                "--agent-advertise-url: must be an http(s)://HOST:PORT URL (got {url:?})"
            )),
        };
    }
    if bound.ip().is_unspecified() {
        return Ok(String::new());
    }
    Ok(format!("{}://{bound}", if tls { "https" } else { "http" }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_url_table() {
        let v4: std::net::SocketAddr = "127.0.0.1:7071".parse().unwrap();
        let any: std::net::SocketAddr = "0.0.0.0:7071".parse().unwrap();
        let v6: std::net::SocketAddr = "[::1]:7071".parse().unwrap();
        let table = [
            (None, true, v4, Ok("https://127.0.0.1:7071")),
            (None, false, v4, Ok("http://127.0.0.1:7071")),
            (None, true, v6, Ok("https://[::1]:7071")),
            (None, true, any, Ok("")),
            (
                Some("https://cp-2.example:7071/"),
                true,
                any,
                Ok("https://cp-2.example:7071"),
            ),
            (Some("cp-2.example:7071"), true, v4, Err(())),
            (Some("ftp://x"), true, v4, Err(())),
        ];
        for (explicit, tls, bound, want) in table {
            let got = advertise_url(explicit, tls, bound);
            match want {
                Ok(url) => assert_eq!(got.as_deref(), Ok(url), "{explicit:?} {bound}"),
                Err(()) => assert!(
                    got.unwrap_err().contains("--agent-advertise-url"),
                    "{explicit:?}"
                ),
            }
        }
    }
}
