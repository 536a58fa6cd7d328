//! `GET /v1/vms/{name}/console`: a WebSocket onto the VM's serial port. Everything that
//! can be refused is refused before the upgrade, as a plain HTTP error (401/403/404, 409
//! when the VM does not run or the console has a writer, 503 when its agent cannot be
//! reached); then binary messages carry the bytes both ways until either side goes. When
//! the console ends on the agent's side the server closes with the reason.

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use otherix_api::proto::{console_frame, ConsoleFrame};
use otherix_api::ApiError;
use serde::Deserialize;

use super::auth::Scope;
use super::error::HttpError;
use super::extract::{ApiQuery, VmName};
use super::AppState;
use crate::auth::policy::{authorize, Access};
use crate::gateway::ConsoleLink;
use crate::service::console::ConsoleMode;

#[derive(Deserialize)]
pub struct ConsoleParams {
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    force: bool,
}

/// The route pattern, as the 403 names it.
const ROUTE: &str = "/v1/vms/{name}/console";
/// A WebSocket close reason is at most 123 bytes.
const MAX_CLOSE_REASON: usize = 123;

pub async fn attach(
    State(s): State<AppState>,
    scope: Scope,
    VmName(name): VmName,
    ApiQuery(p): ApiQuery<ConsoleParams>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, HttpError> {
    let mode = ConsoleMode::from_flags(p.read_only, p.force)?;
    if mode.writes() {
        authorize(&scope.caller, Access::ProjectWrite, "GET", ROUTE).map_err(|e| {
            ApiError::forbidden(format!(
                "{}; a viewer may attach with read_only=true",
                e.message
            ))
        })?;
    }
    let target = s.console.target(scope.project()?, &name).await?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::validation(format!(
            "this route is a WebSocket: send an Upgrade request ({})",
            e.body_text()
        ))
    })?;
    let link = s.console.open(&target, mode).await?;
    tracing::info!(
        vm = target.name,
        node = target.node,
        mode = mode.as_str(),
        caller = scope.caller.name,
        "console attached"
    );
    Ok(upgrade.on_upgrade(move |socket| pump(socket, link)))
}

/// Truncates `reason` to a valid close reason.
fn close_reason(reason: &str) -> String {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

fn data(bytes: Vec<u8>) -> Result<ConsoleFrame, tonic::Status> {
    Ok(ConsoleFrame {
        body: Some(console_frame::Body::Data(bytes)),
    })
}

/// Carries bytes between the client and the agent until either goes.
async fn pump(mut socket: WebSocket, link: ConsoleLink) {
    let ConsoleLink {
        mut from_agent,
        to_agent,
    } = link;
    let ended = loop {
        tokio::select! {
            frame = from_agent.message() => match frame {
                Ok(Some(ConsoleFrame { body: Some(console_frame::Body::Data(bytes)) })) => {
                    if socket.send(Message::Binary(bytes.into())).await.is_err() {
                        break None;
                    }
                }
                Ok(Some(ConsoleFrame { body: Some(console_frame::Body::End(end)) })) => {
                    break Some(end.reason);
                }
                Ok(Some(_)) => {}
                Ok(None) => break Some("the agent closed the console stream".to_owned()),
                Err(status) => break Some(format!("the console stream failed: {}", status.message())),
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(bytes))) => {
                    if to_agent.send(data(bytes.to_vec())).await.is_err() {
                        break Some("the agent closed the console stream".to_owned());
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    if to_agent.send(data(text.as_bytes().to_vec())).await.is_err() {
                        break Some("the agent closed the console stream".to_owned());
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                Some(Ok(_)) => {}
            },
        }
    };
    if let Some(reason) = ended {
        let _ = socket
            .send(Message::Close(Some(CloseFrame {
                code: axum::extract::ws::close_code::NORMAL,
                reason: Utf8Bytes::from(close_reason(&reason)),
            })))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reason_fits_and_keeps_characters_whole() {
        assert_eq!(close_reason("vm stopped"), "vm stopped");
        let long = "é".repeat(100);
        let r = close_reason(&long);
        assert!(r.len() <= MAX_CLOSE_REASON && r.chars().all(|c| c == 'é'));
        assert_eq!(r.len(), 122);
    }
}
