//! Serial console sessions (`otherix vm console`): one connection per VM to QEMU's
//! console socket (a hub), shared by the sessions the server opens (one writer at a time,
//! any number of read-only readers), each carried on a `Console` gRPC stream that the
//! agent dials back to the replica that asked. QEMU records the guest's output in the
//! serial log whether or not anyone is attached, so `vm logs` sees the same bytes.
//!
//! [`admit`] is the pure writer rule. A hub lives while it has sessions: the last one
//! leaving closes the connection (QEMU's socket then accepts the next hub). A hub ends
//! when QEMU closes the socket (the VM stopped); its sessions get the reason. A guest
//! reboot keeps QEMU and its socket, so sessions survive it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
pub use otherix_api::console::ConsoleMode;
use otherix_api::proto::agent_gateway_client::AgentGatewayClient;
use otherix_api::proto::{
    console_frame, ConsoleEnd, ConsoleFrame, ConsoleHello, SyncReply, SyncRequest,
};
use otherix_api::{ApiError, ErrorCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use uuid::Uuid;

/// How long connecting to QEMU's console socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Output chunks buffered per session before a slow one starts missing output.
const OUTPUT_BUFFER: usize = 1024;
/// How long a session waits for the server to close after its last frame.
const END_LINGER: Duration = Duration::from_secs(2);

/// Why a session ended when another writer forced its way in.
pub const REPLACED_REASON: &str = "another writer took over the console (--force)";
/// Why sessions end when QEMU closes the serial socket.
pub const QEMU_GONE_REASON: &str = "the VM's serial port closed: QEMU exited (the VM stopped)";

/// What a session may do once admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Its input reaches the guest.
    pub writes: bool,
    /// The current writer is ended (with [`REPLACED_REASON`]).
    pub replaces_writer: bool,
}

/// The writer rule: readers always attach; a writer only when there is none, unless it
/// forces (then the current one is ended).
pub fn admit(mode: ConsoleMode, has_writer: bool) -> Result<Admission, ApiError> {
    match (mode, has_writer) {
        (ConsoleMode::ReadOnly, _) => Ok(Admission {
            writes: false,
            replaces_writer: false,
        }),
        (ConsoleMode::Writer, true) => Err(ApiError::conflict(
            "the console already has a writer; attach with --read-only, or --force to take over",
        )),
        (ConsoleMode::Writer | ConsoleMode::Force, _) => Ok(Admission {
            writes: true,
            replaces_writer: mode == ConsoleMode::Force && has_writer,
        }),
    }
}

/// One VM's connection to QEMU's serial socket.
struct Hub {
    id: Uuid,
    output: broadcast::Sender<Bytes>,
    input: mpsc::Sender<Bytes>,
    /// Why the console ended (QEMU closed the socket); `None` while open.
    ended: watch::Receiver<Option<String>>,
    state: Mutex<HubState>,
    tasks: [tokio::task::AbortHandle; 2],
}

#[derive(Default)]
struct HubState {
    sessions: usize,
    /// The writer session and how to end it.
    writer: Option<(Uuid, Arc<Notify>)>,
}

/// Every VM's console hub on this node.
#[derive(Clone, Default)]
pub struct Consoles {
    hubs: Arc<tokio::sync::Mutex<HashMap<Uuid, Arc<Hub>>>>,
}

/// A session admitted to a hub; leaving (drop) frees its writer slot and closes the hub
/// when it was the last one.
pub struct Attached {
    consoles: Consoles,
    vm_id: Uuid,
    session: Uuid,
    hub: Arc<Hub>,
    output: broadcast::Receiver<Bytes>,
    writes: bool,
    /// Notified when a forcing writer replaces this one.
    replaced: Arc<Notify>,
}

impl Consoles {
    /// Admits `session` to the VM's console in `mode`, connecting to `socket` when the
    /// VM has no hub yet. `conflict` for a second writer without force.
    pub async fn attach(
        &self,
        vm_id: Uuid,
        socket: &Path,
        session: Uuid,
        mode: ConsoleMode,
    ) -> Result<Attached, ApiError> {
        let mut hubs = self.hubs.lock().await;
        let hub = match hubs.get(&vm_id) {
            Some(hub) if hub.ended.borrow().is_none() => hub.clone(),
            _ => {
                let hub = self.connect(vm_id, socket).await?;
                hubs.insert(vm_id, hub.clone());
                hub
            }
        };
        let replaced = Arc::new(Notify::new());
        let admission = {
            let mut state = hub.state.lock().expect("console hub poisoned");
            let admission = admit(mode, state.writer.is_some())?;
            if admission.replaces_writer {
                if let Some((old, notify)) = state.writer.take() {
                    tracing::info!(%vm_id, old_session = %old, %session, "console writer replaced");
                    notify.notify_one();
                }
            }
            if admission.writes {
                state.writer = Some((session, replaced.clone()));
            }
            state.sessions += 1;
            admission
        };
        Ok(Attached {
            consoles: self.clone(),
            vm_id,
            session,
            output: hub.output.subscribe(),
            hub,
            writes: admission.writes,
            replaced,
        })
    }

    async fn connect(&self, vm_id: Uuid, socket: &Path) -> Result<Arc<Hub>, ApiError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(socket))
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::QemuFailed,
                    format!("the VM's serial socket {} did not accept", socket.display()),
                )
            })?
            .map_err(|e| {
                ApiError::new(
                    ErrorCode::QemuFailed,
                    format!(
                        "cannot connect to the VM's serial socket {}: {e} (a VM started by an older agent has none until it restarts)",
                        socket.display()
                    ),
                )
            })?;
        let (mut rd, mut wr) = stream.into_split();
        let (output, _) = broadcast::channel(OUTPUT_BUFFER);
        let (input, mut input_rx) = mpsc::channel::<Bytes>(64);
        let (ended_tx, ended) = watch::channel(None);
        let id = Uuid::new_v4();
        let reader = {
            let output = output.clone();
            let consoles = self.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            // No receivers (all sessions lagging or gone) is fine.
                            let _ = output.send(Bytes::copy_from_slice(&buf[..n]));
                        }
                    }
                }
                let _ = ended_tx.send(Some(QEMU_GONE_REASON.to_owned()));
                consoles.forget(vm_id, id).await;
            })
        };
        let writer = tokio::spawn(async move {
            while let Some(bytes) = input_rx.recv().await {
                if wr.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        });
        tracing::info!(%vm_id, "console connected to QEMU's serial socket");
        Ok(Arc::new(Hub {
            id,
            output,
            input,
            ended,
            state: Mutex::new(HubState::default()),
            tasks: [reader.abort_handle(), writer.abort_handle()],
        }))
    }

    /// Drops hub `id` of the VM from the table (if it is still the VM's hub) and closes
    /// its connection.
    async fn forget(&self, vm_id: Uuid, id: Uuid) {
        let mut hubs = self.hubs.lock().await;
        if hubs.get(&vm_id).is_some_and(|h| h.id == id) {
            if let Some(hub) = hubs.remove(&vm_id) {
                hub.tasks.iter().for_each(|t| t.abort());
                tracing::info!(%vm_id, "console closed");
            }
        }
    }

    /// How many VMs have an open console (tests).
    pub async fn open_count(&self) -> usize {
        self.hubs.lock().await.len()
    }
}

impl Attached {
    /// Whether this session's input reaches the guest.
    pub fn writes(&self) -> bool {
        self.writes
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let last = {
            let mut state = self.hub.state.lock().expect("console hub poisoned");
            if state
                .writer
                .as_ref()
                .is_some_and(|(s, _)| *s == self.session)
            {
                state.writer = None;
            }
            state.sessions -= 1;
            state.sessions == 0
        };
        if last {
            let (consoles, vm_id, id) = (self.consoles.clone(), self.vm_id, self.hub.id);
            tokio::spawn(async move { consoles.forget(vm_id, id).await });
        }
    }
}

fn frame(body: console_frame::Body) -> ConsoleFrame {
    ConsoleFrame { body: Some(body) }
}

/// Carries `attached` over a `Console` stream on `client` until the server closes it,
/// the console ends (QEMU exited) or a forcing writer replaces this one.
pub async fn serve(mut attached: Attached, mut client: AgentGatewayClient<Channel>) {
    let (vm_id, session) = (attached.vm_id, attached.session);
    let (tx, rx) = mpsc::channel::<ConsoleFrame>(64);
    let hello = frame(console_frame::Body::Hello(ConsoleHello {
        session_id: session.to_string(),
    }));
    if tx.send(hello).await.is_err() {
        return;
    }
    let mut inbound = match client.console(ReceiverStream::new(rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            tracing::warn!(%vm_id, %session, error = %status, "the server refused the console stream");
            return;
        }
    };
    tracing::info!(%vm_id, %session, writes = attached.writes, "console session attached");
    let mut ended = attached.hub.ended.clone();
    let end_reason = loop {
        if let Some(reason) = ended.borrow_and_update().clone() {
            break Some(reason);
        }
        tokio::select! {
            out = attached.output.recv() => match out {
                Ok(bytes) => {
                    if tx.send(frame(console_frame::Body::Data(bytes.to_vec()))).await.is_err() {
                        break None;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(%vm_id, %session, missed, "slow console session missed output");
                }
                Err(broadcast::error::RecvError::Closed) => break Some(QEMU_GONE_REASON.to_owned()),
            },
            _ = attached.replaced.notified() => break Some(REPLACED_REASON.to_owned()),
            _ = ended.changed() => {}
            msg = inbound.message() => match msg {
                Ok(Some(ConsoleFrame { body: Some(console_frame::Body::Data(data)) })) => {
                    if attached.writes && attached.hub.input.send(Bytes::from(data)).await.is_err() {
                        break Some(QEMU_GONE_REASON.to_owned());
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break None,
            },
        }
    };
    if let Some(reason) = end_reason {
        tracing::info!(%vm_id, %session, reason, "console session ended");
        let _ = tx
            .send(frame(console_frame::Body::End(ConsoleEnd { reason })))
            .await;
        drop(tx);
        // Let the server read the last frames before the stream is torn down.
        let _ = tokio::time::timeout(END_LINGER, async {
            while let Ok(Some(_)) = inbound.message().await {}
        })
        .await;
    } else {
        tracing::info!(%vm_id, %session, "console session detached");
    }
}

/// Opens console sessions the server asks for (`SyncRequest` op "console").
pub struct Opener {
    pub consoles: Consoles,
    pub transport: crate::session::Transport,
    /// The server this agent is attached to (dialed when the request names no replica).
    pub server: String,
}

/// `vm_id` of a request, as a uuid.
pub fn parse_vm_id(vm_id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(vm_id)
        .map_err(|_| ApiError::validation(format!("vm_id: not a uuid ({vm_id:?})")))
}

impl Opener {
    /// Admits the session to the VM's console at `socket`, dials the asking replica and
    /// answers; on success the session runs on its own until it ends.
    pub async fn open(self, request: SyncRequest, socket: Result<PathBuf, ApiError>) -> SyncReply {
        let request_id = request.request_id.clone();
        match self.try_open(request, socket).await {
            Ok(()) => SyncReply {
                request_id,
                ok: true,
                ..Default::default()
            },
            Err(e) => {
                tracing::warn!(error = %e.message, "console refused");
                SyncReply {
                    request_id,
                    ok: false,
                    error_code: e.code.as_str().into(),
                    error_message: e.message,
                    ..Default::default()
                }
            }
        }
    }

    async fn try_open(
        self,
        request: SyncRequest,
        socket: Result<PathBuf, ApiError>,
    ) -> Result<(), ApiError> {
        let vm_id = parse_vm_id(&request.vm_id)?;
        let session = Uuid::parse_str(&request.console_session).map_err(|_| {
            ApiError::validation(format!(
                "console_session: not a uuid ({:?})",
                request.console_session
            ))
        })?;
        let mode = ConsoleMode::parse(&request.console_mode).ok_or_else(|| {
            ApiError::validation(format!(
                "console_mode: must be writer, read-only or force (got {:?})",
                request.console_mode
            ))
        })?;
        let url = match request.console_url.as_str() {
            "" => self.server.clone(),
            u if u.starts_with("https://") || u.starts_with("http://") => u.to_owned(),
            u => {
                return Err(ApiError::validation(format!(
                    "console_url: must be an http(s) URL (got {u:?})"
                )))
            }
        };
        let attached = self.consoles.attach(vm_id, &socket?, session, mode).await?;
        let client = self.transport.dial(&url).await.map_err(|e| {
            ApiError::new(
                ErrorCode::AgentUnavailable,
                format!(
                    "the agent cannot reach the server at {url} for the console stream: {}",
                    crate::error_chain::error_chain(&e)
                ),
            )
        })?;
        tokio::spawn(serve(attached, client));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admit_table() {
        use ConsoleMode::*;
        // (mode, has_writer, Some((writes, replaces)) or None for a conflict)
        type Row = (ConsoleMode, bool, Option<(bool, bool)>);
        let table: [Row; 6] = [
            (ReadOnly, false, Some((false, false))),
            (ReadOnly, true, Some((false, false))),
            (Writer, false, Some((true, false))),
            (Writer, true, None),
            (Force, false, Some((true, false))),
            (Force, true, Some((true, true))),
        ];
        for (mode, has_writer, want) in table {
            let got = admit(mode, has_writer);
            match want {
                Some((writes, replaces_writer)) => assert_eq!(
                    got.unwrap(),
                    Admission {
                        writes,
                        replaces_writer
                    },
                    "{mode:?} {has_writer}"
                ),
                None => assert_eq!(got.unwrap_err().code, ErrorCode::Conflict),
            }
        }
    }

    /// A fake QEMU serial socket: echoes what it gets, upper-cased.
    async fn fake_serial(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("console.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 256];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let up = buf[..n].to_ascii_uppercase();
                    if s.write_all(&up).await.is_err() {
                        break;
                    }
                }
            }
        });
        path
    }

    #[tokio::test]
    async fn hub_one_writer_readers_see_output_last_leaver_closes() {
        let dir = tempfile::tempdir().unwrap();
        let socket = fake_serial(dir.path()).await;
        let consoles = Consoles::default();
        let vm = Uuid::new_v4();
        let mut writer = consoles
            .attach(vm, &socket, Uuid::new_v4(), ConsoleMode::Writer)
            .await
            .unwrap();
        let mut reader = consoles
            .attach(vm, &socket, Uuid::new_v4(), ConsoleMode::ReadOnly)
            .await
            .unwrap();
        let second = consoles
            .attach(vm, &socket, Uuid::new_v4(), ConsoleMode::Writer)
            .await;
        assert_eq!(second.err().unwrap().code, ErrorCode::Conflict);
        assert!(writer.writes() && !reader.writes());

        writer
            .hub
            .input
            .send(Bytes::from_static(b"hi"))
            .await
            .unwrap();
        assert_eq!(&writer.output.recv().await.unwrap()[..], b"HI");
        assert_eq!(&reader.output.recv().await.unwrap()[..], b"HI");

        // A forcing writer replaces the first one.
        let forced = consoles
            .attach(vm, &socket, Uuid::new_v4(), ConsoleMode::Force)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), writer.replaced.notified())
            .await
            .expect("the replaced writer is told");
        drop(writer);
        drop(forced);
        assert_eq!(consoles.open_count().await, 1);
        drop(reader);
        for _ in 0..50 {
            if consoles.open_count().await == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the hub outlived its last session");
    }

    #[tokio::test]
    async fn missing_socket_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Consoles::default()
            .attach(
                Uuid::new_v4(),
                &dir.path().join("console.sock"),
                Uuid::new_v4(),
                ConsoleMode::ReadOnly,
            )
            .await
            .err()
            .unwrap();
        assert!(err.message.contains("cannot connect"), "{}", err.message);
    }
}
