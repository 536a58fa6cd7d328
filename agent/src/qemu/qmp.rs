//! A small QMP client over the VM's unix socket (the `qapi` crate underneath).
//!
//! QEMU's `-qmp` socket serves one client at a time, so callers hold a [`Qmp`] only for
//! the commands they send and drop it right after.

use std::path::Path;
use std::time::Duration;

use qapi::futures::{QapiService, QmpStreamTokio};
use qapi::qmp;
use tokio::io::WriteHalf;
use tokio::net::UnixStream;

/// Time allowed for connecting plus capability negotiation, and for each command.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP {command} failed: {message}")]
    Command {
        command: &'static str,
        message: String,
    },
    #[error("QMP {0} timed out after {secs}s", secs = QMP_TIMEOUT.as_secs())]
    Timeout(&'static str),
}

/// The guest's run state as `query-status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStatus {
    Running,
    Paused,
    /// The guest powered off and QEMU waits, alive, because it runs with `-no-shutdown`.
    Shutdown,
    /// Any other QEMU run state (e.g. `internal-error`, `prelaunch`), by its QAPI name.
    Other(String),
}

type Service = QapiService<QmpStreamTokio<WriteHalf<UnixStream>>>;

/// One negotiated QMP connection.
pub struct Qmp {
    service: Service,
    events: tokio::task::JoinHandle<()>,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.events.abort();
    }
}

impl Qmp {
    /// Connects and negotiates capabilities.
    pub async fn connect(socket: &Path) -> Result<Qmp, QmpError> {
        let connect_err = |source| QmpError::Connect {
            path: socket.display().to_string(),
            source,
        };
        let negotiated = tokio::time::timeout(QMP_TIMEOUT, async {
            let stream = QmpStreamTokio::open_uds(socket).await?;
            stream.negotiate().await
        })
        .await
        .map_err(|_| QmpError::Timeout("qmp_capabilities"))?
        .map_err(connect_err)?;
        let (service, events) = negotiated.spawn_tokio();
        Ok(Qmp { service, events })
    }

    /// Connects, retrying for up to `within` while the socket is not there yet.
    pub async fn connect_retrying(socket: &Path, within: Duration) -> Result<Qmp, QmpError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match Qmp::connect(socket).await {
                Ok(qmp) => return Ok(qmp),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn run<C>(&self, name: &'static str, command: C) -> Result<C::Ok, QmpError>
    where
        C: qapi::Command + Send + 'static,
        QmpStreamTokio<WriteHalf<UnixStream>>:
            futures::Sink<qapi::Execute<C, u32>, Error = std::io::Error> + Unpin,
    {
        tokio::time::timeout(QMP_TIMEOUT, self.service.execute(command))
            .await
            .map_err(|_| QmpError::Timeout(name))?
            .map_err(|e| QmpError::Command {
                command: name,
                message: e.to_string(),
            })
    }

    /// Bytes read and written by the guest's block devices (QMP `query-blockstats`,
    /// summed over the devices).
    pub async fn block_bytes(&self) -> Result<(u64, u64), QmpError> {
        let stats = self
            .run(
                "query-blockstats",
                qmp::query_blockstats {
                    query_nodes: Some(false),
                },
            )
            .await?;
        Ok(stats.iter().fold((0, 0), |(r, w), s| {
            (
                r + s.stats.rd_bytes.max(0) as u64,
                w + s.stats.wr_bytes.max(0) as u64,
            )
        }))
    }

    pub async fn query_status(&self) -> Result<RunStatus, QmpError> {
        let info = self.run("query-status", qmp::query_status {}).await?;
        Ok(match info.status {
            qmp::RunState::running => RunStatus::Running,
            qmp::RunState::paused => RunStatus::Paused,
            qmp::RunState::shutdown => RunStatus::Shutdown,
            other => RunStatus::Other(
                serde_json::to_value(other)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("{other:?}")),
            ),
        })
    }

    /// Presses the ACPI power button.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.run("system_powerdown", qmp::system_powerdown {})
            .await
            .map(drop)
    }

    /// Asks QEMU to exit. QEMU may close the socket before answering; that counts as done.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.run("quit", qmp::quit {}).await {
            Err(QmpError::Command { message, .. }) if message.contains("EOF") => Ok(()),
            Err(QmpError::Command { message, .. }) if message.contains("disconnected") => Ok(()),
            other => other.map(drop),
        }
    }

    /// Pauses the vCPUs.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.run("stop", qmp::stop {}).await.map(drop)
    }

    /// Resumes the vCPUs.
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.run("cont", qmp::cont {}).await.map(drop)
    }

    /// Presses the reset button.
    pub async fn system_reset(&self) -> Result<(), QmpError> {
        self.run("system_reset", qmp::system_reset {})
            .await
            .map(drop)
    }
}
