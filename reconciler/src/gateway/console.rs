//! Console streams the agents dial back (`AgentGateway.Console`): the rendezvous between
//! a console request waiting on this replica and the agent stream that answers it. The
//! request registers a random session id (bound to the VM's node) before it asks the agent
//! (through the relay, so the agent may be attached to another replica); the agent dials
//! this replica and names the session in its first frame.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use otherix_api::proto::{console_frame, ConsoleFrame};
use tokio::sync::{mpsc, oneshot};
use tonic::{Status, Streaming};
use uuid::Uuid;

/// Frames buffered toward an agent (a writer's keystrokes).
const TO_AGENT_BUFFER: usize = 64;

/// Both directions of an agent's console stream.
pub struct ConsoleLink {
    /// Frames from the agent: output bytes, then possibly why it ended.
    pub from_agent: Streaming<ConsoleFrame>,
    /// Frames to the agent (a writer's input). Dropping it ends the stream.
    pub to_agent: mpsc::Sender<Result<ConsoleFrame, Status>>,
}

struct Waiting {
    node: String,
    link: oneshot::Sender<ConsoleLink>,
}

/// Console sessions this replica waits for.
#[derive(Default)]
pub struct ConsoleRendezvous {
    waiting: Mutex<HashMap<Uuid, Waiting>>,
}

/// A registered session; dropping it forgets the session (an agent dialing later is
/// refused).
pub struct PendingConsole {
    rendezvous: Arc<ConsoleRendezvous>,
    pub session: Uuid,
    pub link: oneshot::Receiver<ConsoleLink>,
}

impl Drop for PendingConsole {
    fn drop(&mut self) {
        self.rendezvous
            .waiting
            .lock()
            .expect("console rendezvous poisoned")
            .remove(&self.session);
    }
}

impl ConsoleRendezvous {
    /// Registers a new session for a VM on `node`.
    pub fn expect(self: &Arc<Self>, node: &str) -> PendingConsole {
        let session = Uuid::new_v4();
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .expect("console rendezvous poisoned")
            .insert(
                session,
                Waiting {
                    node: node.to_owned(),
                    link: tx,
                },
            );
        PendingConsole {
            rendezvous: self.clone(),
            session,
            link: rx,
        }
    }

    /// An agent's stream arrives: the first frame names the session, which must be one
    /// this replica waits for on the agent's own node (`cert_node`; `None` without TLS,
    /// where the unguessable session id is the only key). Returns the frames to send it.
    pub async fn arrive(
        &self,
        cert_node: Option<&str>,
        mut from_agent: Streaming<ConsoleFrame>,
    ) -> Result<mpsc::Receiver<Result<ConsoleFrame, Status>>, Status> {
        let first = from_agent
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("console stream closed before its hello"))?;
        let Some(console_frame::Body::Hello(hello)) = first.body else {
            return Err(Status::invalid_argument(
                "the first console frame must be a hello",
            ));
        };
        let session = Uuid::parse_str(&hello.session_id)
            .map_err(|_| Status::invalid_argument("console hello: session_id is not a uuid"))?;
        let waiting = {
            let mut map = self.waiting.lock().expect("console rendezvous poisoned");
            match map.get(&session) {
                None => None,
                Some(w) if cert_node.is_some_and(|n| n != w.node) => {
                    return Err(Status::permission_denied(format!(
                        "console session {session} is not for node {}",
                        cert_node.unwrap_or_default()
                    )))
                }
                Some(_) => map.remove(&session),
            }
        };
        let waiting = waiting.ok_or_else(|| {
            Status::not_found(format!(
                "no console session {session} waits on this server (it timed out or ended)"
            ))
        })?;
        let (to_agent, rx) = mpsc::channel(TO_AGENT_BUFFER);
        waiting
            .link
            .send(ConsoleLink {
                from_agent,
                to_agent,
            })
            .map_err(|_| Status::cancelled("the console request gave up"))?;
        Ok(rx)
    }
}
