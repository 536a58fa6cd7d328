//! A small client for the QEMU guest agent (qemu-ga) over the VM's QGA unix socket.
//!
//! Hand-rolled over newline-delimited JSON rather than `qapi`'s QGA service: QGA replies
//! carry no id, so a reply meant for an earlier client (a command it sent before it gave
//! up, answered once qemu-ga came up) must be recognized and dropped, and `qapi`'s reader
//! ends the connection on a reply nobody waits for. Every conversation begins with
//! `guest-sync-delimited` and a random id after a `0xFF` byte (which resets qemu-ga's
//! parser): everything before the `0xFF`-prefixed reply carrying that id is discarded.
//! Every call is bounded by a timeout: a guest without qemu-ga accepts the connection
//! (QEMU's chardev does) and never answers. QEMU serves one QGA client at a time; a second
//! connection waits until the first is closed, so callers hold a [`Qga`] briefly.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

/// The byte qemu-ga puts before a `guest-sync-delimited` reply (and resets its parser on).
const DELIMITER: u8 = 0xFF;
/// Longest reply accepted (a guest's interface list is a few KiB).
const MAX_REPLY: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum QgaError {
    #[error("cannot connect to QGA socket {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QGA {command}: {source}")]
    Io {
        command: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("QGA {command}: no answer within {secs}s", secs = .timeout.as_secs_f64())]
    Timeout {
        command: &'static str,
        timeout: Duration,
    },
    #[error("QGA {command} failed: {message}")]
    Command {
        command: &'static str,
        message: String,
    },
    #[error("QGA {command}: unexpected reply: {detail}")]
    Protocol {
        command: &'static str,
        detail: String,
    },
}

/// One synchronized QGA connection.
pub struct Qga {
    stream: UnixStream,
    /// Bytes read but not consumed yet.
    buf: Vec<u8>,
    timeout: Duration,
}

/// One IP address of a guest interface (`guest-network-get-interfaces`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpAddress {
    #[serde(rename = "ip-address-type")]
    pub kind: String,
    #[serde(rename = "ip-address")]
    pub address: String,
    #[serde(default)]
    pub prefix: u8,
}

/// One guest network interface.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(rename = "ip-addresses", default)]
    pub ip_addresses: Vec<IpAddress>,
}

/// What `guest-get-osinfo` says (every field optional in QAPI).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct OsInfo {
    #[serde(rename = "pretty-name")]
    pub pretty_name: Option<String>,
    pub name: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
    #[serde(rename = "version-id")]
    pub version_id: Option<String>,
}

impl Qga {
    /// Connects and synchronizes; each step is bounded by `timeout`.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Qga, QgaError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(socket))
            .await
            .map_err(|_| QgaError::Timeout {
                command: "connect",
                timeout,
            })?
            .map_err(|source| QgaError::Connect {
                path: socket.display().to_string(),
                source,
            })?;
        let mut qga = Qga {
            stream,
            buf: Vec::new(),
            timeout,
        };
        let id = (uuid::Uuid::new_v4().as_u128() & 0x7fff_ffff) as i64;
        qga.sync(id).await?;
        Ok(qga)
    }

    /// `guest-sync-delimited` with `id`: drops everything up to the reply carrying it.
    pub async fn sync(&mut self, id: i64) -> Result<(), QgaError> {
        const CMD: &str = "guest-sync-delimited";
        let mut request = vec![DELIMITER];
        request.extend_from_slice(
            format!("{}\n", json!({"execute": CMD, "arguments": {"id": id}})).as_bytes(),
        );
        bounded(self.timeout, CMD, async {
            self.write(CMD, &request).await?;
            loop {
                // Skip to the next delimiter, then take the line after it.
                loop {
                    if let Some(at) = self.buf.iter().position(|b| *b == DELIMITER) {
                        self.buf.drain(..=at);
                        break;
                    }
                    self.buf.clear();
                    self.fill(CMD).await?;
                }
                let line = self.line(CMD).await?;
                if sync_reply_matches(&line, id) {
                    return Ok(());
                }
                tracing::debug!(reply = %String::from_utf8_lossy(&line), "dropping stale QGA reply");
            }
        })
        .await
    }

    /// `guest-ping`.
    pub async fn ping(&mut self) -> Result<(), QgaError> {
        self.execute("guest-ping", None).await.map(drop)
    }

    /// `guest-network-get-interfaces`.
    pub async fn network_get_interfaces(&mut self) -> Result<Vec<Interface>, QgaError> {
        const CMD: &str = "guest-network-get-interfaces";
        let value = self.execute(CMD, None).await?;
        serde_json::from_value(value).map_err(|e| QgaError::Protocol {
            command: CMD,
            detail: e.to_string(),
        })
    }

    /// `guest-get-osinfo`.
    pub async fn get_osinfo(&mut self) -> Result<OsInfo, QgaError> {
        const CMD: &str = "guest-get-osinfo";
        let value = self.execute(CMD, None).await?;
        serde_json::from_value(value).map_err(|e| QgaError::Protocol {
            command: CMD,
            detail: e.to_string(),
        })
    }

    /// `guest-shutdown` with mode `powerdown`. qemu-ga answers only on failure, so this
    /// waits up to `grace` for an error and counts silence (or the guest closing the
    /// port as it goes down) as sent.
    pub async fn shutdown_powerdown(&mut self, grace: Duration) -> Result<(), QgaError> {
        const CMD: &str = "guest-shutdown";
        let request = format!(
            "{}\n",
            json!({"execute": CMD, "arguments": {"mode": "powerdown"}})
        );
        bounded(self.timeout, CMD, self.write(CMD, request.as_bytes())).await?;
        match tokio::time::timeout(grace, self.line(CMD)).await {
            Err(_) | Ok(Err(QgaError::Io { .. })) => Ok(()),
            Ok(Err(e)) => Err(e),
            Ok(Ok(line)) => reply_value(CMD, &line).map(drop),
        }
    }

    async fn execute(
        &mut self,
        command: &'static str,
        arguments: Option<Value>,
    ) -> Result<Value, QgaError> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let request = format!("{request}\n");
        bounded(self.timeout, command, async {
            self.write(command, request.as_bytes()).await?;
            let line = self.line(command).await?;
            reply_value(command, &line)
        })
        .await
    }

    async fn write(&self, command: &'static str, bytes: &[u8]) -> Result<(), QgaError> {
        // `&UnixStream` writes through `try_write` after `writable()`; keeps `&self`.
        let mut written = 0;
        while written < bytes.len() {
            self.stream
                .writable()
                .await
                .map_err(|source| QgaError::Io { command, source })?;
            match self.stream.try_write(&bytes[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(source) => return Err(QgaError::Io { command, source }),
            }
        }
        Ok(())
    }

    /// Reads more bytes into the buffer; EOF is an error.
    async fn fill(&mut self, command: &'static str) -> Result<(), QgaError> {
        let mut chunk = [0u8; 4096];
        let n = self
            .stream
            .read(&mut chunk)
            .await
            .map_err(|source| QgaError::Io { command, source })?;
        if n == 0 {
            return Err(QgaError::Io {
                command,
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
        if self.buf.len() + n > MAX_REPLY {
            return Err(QgaError::Protocol {
                command,
                detail: format!("reply over {MAX_REPLY} bytes"),
            });
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// The next newline-terminated line (without the newline).
    async fn line(&mut self, command: &'static str) -> Result<Vec<u8>, QgaError> {
        loop {
            if let Some(at) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=at).collect();
                line.pop();
                return Ok(line);
            }
            self.fill(command).await?;
        }
    }
}

/// Runs `fut`, failing with [`QgaError::Timeout`] after `timeout`.
async fn bounded<T>(
    timeout: Duration,
    command: &'static str,
    fut: impl std::future::Future<Output = Result<T, QgaError>>,
) -> Result<T, QgaError> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| QgaError::Timeout { command, timeout })?
}

/// Whether `line` is `{"return": id}`.
fn sync_reply_matches(line: &[u8], id: i64) -> bool {
    serde_json::from_slice::<Value>(line)
        .ok()
        .and_then(|v| v.get("return").and_then(Value::as_i64))
        == Some(id)
}

/// The `return` of a reply line, or its `error` as [`QgaError::Command`].
fn reply_value(command: &'static str, line: &[u8]) -> Result<Value, QgaError> {
    let value: Value = serde_json::from_slice(line).map_err(|e| QgaError::Protocol {
        command,
        detail: format!("{e}: {}", String::from_utf8_lossy(line)),
    })?;
    if let Some(ret) = value.get("return") {
        return Ok(ret.clone());
    }
    if let Some(error) = value.get("error") {
        let message = error
            .get("desc")
            .and_then(Value::as_str)
            .unwrap_or("no description")
            .to_string();
        return Err(QgaError::Command { command, message });
    }
    Err(QgaError::Protocol {
        command,
        detail: String::from_utf8_lossy(line).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    /// A fake qemu-ga: first sends `stale` (as a previous client's leftovers), then answers
    /// each command line with `answer(line)` (None: stay silent).
    fn fake_agent(
        dir: &Path,
        stale: &'static [u8],
        answer: fn(&Value) -> Option<Vec<u8>>,
    ) -> std::path::PathBuf {
        let path = dir.join("qga.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            write.write_all(stale).await.unwrap();
            let mut lines = BufReader::new(read).split(b'\n');
            while let Ok(Some(line)) = lines.next_segment().await {
                let line: Vec<u8> = line.into_iter().filter(|b| *b != DELIMITER).collect();
                let Ok(request) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                if let Some(reply) = answer(&request) {
                    write.write_all(&reply).await.unwrap();
                }
            }
        });
        path
    }

    fn real_agent(request: &Value) -> Option<Vec<u8>> {
        let reply = match request["execute"].as_str().unwrap() {
            "guest-sync-delimited" => {
                let mut out = vec![DELIMITER];
                out.extend(format!("{}\n", json!({"return": request["arguments"]["id"]})).bytes());
                return Some(out);
            }
            "guest-ping" => json!({"return": {}}),
            "guest-network-get-interfaces" => json!({"return": [
                {"name": "lo", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}]},
                {"name": "eth0", "hardware-address": "52:54:00:12:34:56"}
            ]}),
            "guest-get-osinfo" => {
                json!({"error": {"class": "GenericError", "desc": "no os-release"}})
            }
            "guest-shutdown" => return None,
            other => panic!("unexpected {other}"),
        };
        Some(format!("{reply}\n").into_bytes())
    }

    #[tokio::test]
    async fn sync_drops_stale_replies_then_commands_answer() {
        let dir = tempfile::tempdir().unwrap();
        // A half line, a stale sync reply for another id, a stale ping answer.
        let stale: &[u8] = b"{\"return\": [{\"na\xff{\"return\": 12345}\n{\"return\": {}}\n";
        let path = fake_agent(dir.path(), stale, real_agent);
        let mut qga = Qga::connect(&path, Duration::from_secs(5)).await.unwrap();
        qga.ping().await.unwrap();
        let interfaces = qga.network_get_interfaces().await.unwrap();
        assert_eq!(interfaces.len(), 2);
        assert_eq!(interfaces[0].ip_addresses[0].address, "127.0.0.1");
        assert!(interfaces[1].ip_addresses.is_empty());
        let err = qga.get_osinfo().await.unwrap_err();
        assert!(
            matches!(&err, QgaError::Command { message, .. } if message == "no os-release"),
            "{err}"
        );
        qga.shutdown_powerdown(Duration::from_millis(100))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn silent_agent_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = fake_agent(dir.path(), b"", |_| None);
        let started = std::time::Instant::now();
        let err = match Qga::connect(&path, Duration::from_millis(300)).await {
            Err(e) => e,
            Ok(_) => panic!("a silent agent synced"),
        };
        assert!(matches!(err, QgaError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = match Qga::connect(&dir.path().join("none.sock"), Duration::from_secs(1)).await {
            Err(e) => e,
            Ok(_) => panic!("connected to nothing"),
        };
        assert!(matches!(err, QgaError::Connect { .. }), "{err}");
    }
}
