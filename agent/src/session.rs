//! The gateway session: dials otherixd's `AgentGateway.Attach`, registers the node (with a
//! report of every VM on disk), heartbeats, routes server messages to the executor and
//! forwards the outbox to the server. Reconnects with exponential backoff; VMs keep running
//! while the agent is disconnected.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use otherix_api::proto::agent_gateway_client::AgentGatewayClient;
use otherix_api::proto::{
    agent_message, server_message, AgentMessage, Heartbeat, PoolPath, Register, Registered,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::console::Consoles;
use crate::driver::VmDriver;
use crate::enroll::{self, EnrollError};
use crate::epoch_fence::EpochFence;
use crate::error_chain::error_chain;
use crate::executor::Executor;
use crate::outbox::Outbox;

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect to {url}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot connect over TLS")]
    Tls(#[from] EnrollError),
    #[error("timed out connecting to {0}")]
    ConnectTimeout(String),
    #[error("gateway stream failed")]
    Stream(#[from] tonic::Status),
    #[error("server did not answer Register with Registered: {0}")]
    NotRegistered(String),
    #[error("outgoing stream closed")]
    OutgoingClosed,
}

/// How the agent reaches the gateway.
#[derive(Clone)]
pub enum Transport {
    /// `http://` (servers started with `--insecure-http`): no TLS, identified by name.
    Plain,
    /// `https://`: mTLS with the node certificate, the server pinned to the cluster CA.
    Tls(Arc<rustls::ClientConfig>),
}

impl Transport {
    /// A gateway client for `url` (the session's server, or a replica asking for a
    /// console stream).
    pub async fn dial(&self, url: &str) -> Result<AgentGatewayClient<Channel>, SessionError> {
        let url = url.to_owned();
        match self {
            Transport::Plain => {
                let endpoint =
                    tonic::transport::Endpoint::from_shared(url.clone()).map_err(|source| {
                        SessionError::Connect {
                            url: url.clone(),
                            source,
                        }
                    })?;
                let channel = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    enroll::gateway_endpoint(endpoint).connect(),
                )
                .await
                .map_err(|_| SessionError::ConnectTimeout(url.clone()))?
                .map_err(|source| SessionError::Connect { url, source })?;
                Ok(AgentGatewayClient::new(channel))
            }
            Transport::Tls(config) => Ok(tokio::time::timeout(
                CONNECT_TIMEOUT,
                enroll::connect(&url, config.clone()),
            )
            .await
            .map_err(|_| SessionError::ConnectTimeout(url.clone()))??),
        }
    }
}

/// What the agent tells the server about its node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: String,
    pub host_arch: String,
    pub guest_arches: Vec<String>,
    pub accel: String,
    pub vcpus: u32,
    pub memory_mb: u64,
    pub pools: Vec<(String, PathBuf)>,
    /// Started with `--allow-file-urls` (announced in `Register`).
    pub allow_file_urls: bool,
    /// Canonical `--firmware-dir`s (announced in `Register`).
    pub firmware_dirs: Vec<String>,
}

/// Exponential backoff between reconnect attempts.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The delay before the next attempt; doubles up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }
    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// Which of the `--server`s to dial next. A session that ends (a refused connection, or
/// a replica that went away under a registered session) moves on to the next server at
/// once; only a whole round of failures in a row waits out the exponential backoff, so an
/// agent whose replica dies is attached to another within a heartbeat or two.
#[derive(Debug)]
pub struct Failover {
    servers: Vec<String>,
    current: usize,
    failed_in_a_row: usize,
    backoff: Backoff,
}

impl Failover {
    /// `servers` must not be empty (the CLI requires at least one `--server`).
    pub fn new(servers: Vec<String>) -> Self {
        assert!(!servers.is_empty(), "at least one server");
        Failover {
            servers,
            current: 0,
            failed_in_a_row: 0,
            backoff: Backoff::default(),
        }
    }

    /// The server to dial now.
    pub fn current(&self) -> &str {
        &self.servers[self.current]
    }

    /// The session registered: the next failure starts a new round.
    pub fn registered(&mut self) {
        self.failed_in_a_row = 0;
        self.backoff.reset();
    }

    /// The session ended; moves to the next server and says how long to wait first.
    pub fn failed(&mut self) -> Duration {
        self.failed_in_a_row += 1;
        self.current = (self.current + 1) % self.servers.len();
        if self.failed_in_a_row.is_multiple_of(self.servers.len()) {
            self.backoff.next_delay()
        } else {
            Duration::ZERO
        }
    }
}

/// Keeps a session to one of `servers` up forever, failing over between them.
pub async fn run<D: VmDriver>(
    servers: Vec<String>,
    transport: Transport,
    node: NodeInfo,
    executor: Executor<D>,
    driver: Arc<D>,
    outbox: Outbox,
    mut outbox_rx: mpsc::Receiver<AgentMessage>,
) {
    let mut failover = Failover::new(servers);
    let epochs = EpochFence::default();
    let consoles = Consoles::default();
    loop {
        let server = failover.current().to_owned();
        let session = Session {
            server: &server,
            transport: &transport,
            node: &node,
            executor: &executor,
            driver: &driver,
            outbox: &outbox,
            epochs: &epochs,
            consoles: &consoles,
        };
        match session.attach(&mut outbox_rx, &mut failover).await {
            Ok(()) => tracing::warn!(server, "server closed the gateway stream"),
            Err(SessionError::Stream(status))
                if matches!(
                    status.code(),
                    tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                ) =>
            {
                tracing::error!(
                    server,
                    reason = status.message(),
                    "the server refused this agent"
                )
            }
            Err(e) => tracing::warn!(server, error = %error_chain(&e), "gateway session failed"),
        }
        let delay = failover.failed();
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            next = failover.current(),
            "reconnecting"
        );
        tokio::time::sleep(delay).await;
    }
}

struct Session<'a, D> {
    server: &'a str,
    transport: &'a Transport,
    node: &'a NodeInfo,
    executor: &'a Executor<D>,
    driver: &'a Arc<D>,
    outbox: &'a Outbox,
    epochs: &'a EpochFence,
    consoles: &'a Consoles,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn message(body: agent_message::Body) -> AgentMessage {
    AgentMessage { body: Some(body) }
}

impl<D: VmDriver> Session<'_, D> {
    async fn register_message(&self) -> AgentMessage {
        let node = self.node;
        message(agent_message::Body::Register(Register {
            node: node.node.clone(),
            host_arch: node.host_arch.clone(),
            guest_arches: node.guest_arches.clone(),
            accel: node.accel.clone(),
            vcpus: node.vcpus,
            memory_mb: node.memory_mb,
            pools: node
                .pools
                .iter()
                .map(|(name, path)| PoolPath {
                    name: name.clone(),
                    path: path.display().to_string(),
                })
                .collect(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            vms: self.driver.report_all().await,
            allow_file_urls: node.allow_file_urls,
            firmware_dirs: node.firmware_dirs.clone(),
        }))
    }

    /// One connection: register, then pump messages until the stream ends.
    async fn attach(
        &self,
        outbox_rx: &mut mpsc::Receiver<AgentMessage>,
        failover: &mut Failover,
    ) -> Result<(), SessionError> {
        // Messages queued while disconnected are stale: Register carries every VM's state
        // and the server redelivers unfinished tasks, whose final updates are re-sent.
        while outbox_rx.try_recv().is_ok() {}

        let mut client = self.transport.dial(self.server).await?;
        let (tx, rx) = mpsc::channel::<AgentMessage>(256);
        tx.send(self.register_message().await)
            .await
            .map_err(|_| SessionError::OutgoingClosed)?;
        let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();

        let first = tokio::time::timeout(REGISTER_TIMEOUT, inbound.message())
            .await
            .map_err(|_| SessionError::NotRegistered("no answer within 10s".into()))??;
        let registered: Registered = match first.and_then(|m| m.body) {
            Some(server_message::Body::Registered(r)) => r,
            Some(other) => return Err(SessionError::NotRegistered(format!("got {other:?}"))),
            None => return Err(SessionError::NotRegistered("stream ended".into())),
        };
        failover.registered();
        let heartbeat_every = match registered.heartbeat_interval_ms {
            0 => DEFAULT_HEARTBEAT,
            ms => Duration::from_millis(ms.into()),
        };
        tracing::info!(
            node_id = registered.node_id,
            heartbeat_ms = heartbeat_every.as_millis() as u64,
            "registered with the server"
        );

        let mut heartbeat = tokio::time::interval(heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    let beat = message(agent_message::Body::Heartbeat(Heartbeat { sent_at_ms: now_ms() }));
                    tx.send(beat).await.map_err(|_| SessionError::OutgoingClosed)?;
                }
                Some(outgoing) = outbox_rx.recv() => {
                    tx.send(outgoing).await.map_err(|_| SessionError::OutgoingClosed)?;
                }
                incoming = inbound.message() => match incoming? {
                    Some(msg) => self.dispatch(msg.body),
                    None => return Ok(()),
                },
            }
        }
    }

    fn dispatch(&self, body: Option<server_message::Body>) {
        match body {
            Some(server_message::Body::Task(task)) => {
                if let Err(highest) = self.epochs.admit(task.epoch) {
                    tracing::warn!(
                        task_id = task.task_id,
                        kind = task.kind,
                        vm = task.vm_name,
                        epoch = task.epoch,
                        highest,
                        "refusing a task from a deposed leader (older epoch)"
                    );
                    return;
                }
                tracing::info!(
                    task_id = task.task_id,
                    kind = task.kind,
                    vm = task.vm_name,
                    "task assigned"
                );
                self.executor.assign(task);
            }
            Some(server_message::Body::Cancel(cancel)) => self.executor.cancel(&cancel.task_id),
            Some(server_message::Body::SyncRequest(request)) if request.op == "console" => {
                let opener = crate::console::Opener {
                    consoles: self.consoles.clone(),
                    transport: self.transport.clone(),
                    server: self.server.to_owned(),
                };
                let socket = crate::console::parse_vm_id(&request.vm_id)
                    .and_then(|id| self.driver.console_socket(id));
                let outbox = self.outbox.clone();
                tokio::spawn(async move {
                    let reply = opener.open(request, socket).await;
                    outbox
                        .send_wait(agent_message::Body::SyncReply(reply))
                        .await;
                });
            }
            Some(server_message::Body::SyncRequest(request)) => {
                let executor = self.executor.clone();
                let outbox = self.outbox.clone();
                tokio::spawn(async move {
                    let reply = executor.sync(request).await;
                    outbox
                        .send_wait(agent_message::Body::SyncReply(reply))
                        .await;
                });
            }
            Some(server_message::Body::Registered(_)) => {
                tracing::debug!("ignoring a repeated Registered")
            }
            None => tracing::debug!("ignoring an empty server message"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..7).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, vec![200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_MIN);
    }

    fn servers(n: usize) -> Vec<String> {
        (1..=n)
            .map(|i| format!("https://replica-{i}:7071"))
            .collect()
    }

    #[test]
    fn failover_moves_on_at_once_and_backs_off_only_after_a_whole_round() {
        let mut f = Failover::new(servers(3));
        assert_eq!(f.current(), "https://replica-1:7071");
        // (delay, next server) after each failure in a row.
        let table = [
            (Duration::ZERO, "https://replica-2:7071"),
            (Duration::ZERO, "https://replica-3:7071"),
            (BACKOFF_MIN, "https://replica-1:7071"),
            (Duration::ZERO, "https://replica-2:7071"),
            (Duration::ZERO, "https://replica-3:7071"),
            (BACKOFF_MIN * 2, "https://replica-1:7071"),
        ];
        for (i, (delay, next)) in table.into_iter().enumerate() {
            assert_eq!((f.failed(), f.current()), (delay, next), "failure {i}");
        }
        // A registered session that drops (its replica died) goes to the next one at once.
        f.registered();
        assert_eq!(f.failed(), Duration::ZERO);
        assert_eq!(f.current(), "https://replica-2:7071");
    }

    #[test]
    fn failover_single_server_backs_off_every_time_like_before() {
        let mut f = Failover::new(servers(1));
        let delays: Vec<Duration> = (0..4).map(|_| f.failed()).collect();
        assert_eq!(
            delays,
            [
                BACKOFF_MIN,
                BACKOFF_MIN * 2,
                BACKOFF_MIN * 4,
                BACKOFF_MIN * 8
            ]
        );
        assert_eq!(f.current(), "https://replica-1:7071");
        f.registered();
        assert_eq!(f.failed(), BACKOFF_MIN);
    }
}
