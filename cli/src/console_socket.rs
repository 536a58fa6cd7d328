//! The client side of `GET /v1/vms/{name}/console`: the WebSocket, opened with the same
//! server, token and trust as every other request (TLS by rustls, pinned CA or built-in
//! roots). Reads time out after [`POLL`] so one thread can both show the console and send
//! keystrokes.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tungstenite::client::ClientRequestBuilder;
use tungstenite::handshake::client::Response;
use tungstenite::{HandshakeError, WebSocket};

use crate::client::{Client, ClientError};

/// How long a read waits before the caller gets to send keystrokes.
pub const POLL: Duration = Duration::from_millis(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds the handshake (the server asks the agent first: up to 10 s, plus slack).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// A TCP stream, in TLS for `https://` servers.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

pub type ConsoleSocket = WebSocket<Stream>;

/// Whether a read error only means "nothing yet" (the [`POLL`] timeout).
pub fn is_poll_timeout(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if matches!(io.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
}

impl Client {
    /// Opens VM `name`'s console: as its writer, `read_only`, or a writer that replaces
    /// the current one (`force`). Refusals (404, 409, ...) come back as `Api` errors.
    pub fn open_console(
        &self,
        name: &str,
        read_only: bool,
        force: bool,
    ) -> Result<ConsoleSocket, ClientError> {
        let mut query = Vec::new();
        if read_only {
            query.push(("read_only", "true".to_owned()));
        }
        if force {
            query.push(("force", "true".to_owned()));
        }
        let url = self.url(&["v1", "vms", name, "console"], &query);
        let unreachable =
            |source: Box<dyn std::error::Error + Send + Sync>| ClientError::Unreachable {
                server: self.server().to_owned(),
                source,
            };
        let host = url
            .host_str()
            .ok_or_else(|| unreachable("the server URL has no host".into()))?
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let addr = (host.trim_matches(|c| c == '[' || c == ']'), port)
            .to_socket_addrs()
            .map_err(|e| unreachable(Box::new(e)))?
            .next()
            .ok_or_else(|| unreachable(format!("{host} has no address").into()))?;
        let tcp = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| unreachable(Box::new(e)))?;
        tcp.set_nodelay(true)
            .map_err(|e| unreachable(Box::new(e)))?;
        tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .map_err(|e| unreachable(Box::new(e)))?;
        let stream = match url.scheme() {
            "https" => {
                let config = Arc::new(self.tls_config()?);
                let server_name =
                    ServerName::try_from(host.trim_matches(|c| c == '[' || c == ']').to_owned())
                        .map_err(|e| unreachable(Box::new(e)))?;
                let conn = rustls::ClientConnection::new(config, server_name)
                    .map_err(|e| unreachable(Box::new(e)))?;
                Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
            }
            _ => Stream::Plain(tcp),
        };
        let mut ws_url = url.clone();
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        ws_url
            .set_scheme(scheme)
            .map_err(|()| unreachable("cannot form the WebSocket URL".into()))?;
        let uri = ws_url
            .as_str()
            .parse()
            .map_err(|e: tungstenite::http::uri::InvalidUri| unreachable(Box::new(e)))?;
        let mut request = ClientRequestBuilder::new(uri)
            .with_header("User-Agent", concat!("otherix/", env!("CARGO_PKG_VERSION")));
        if let Some(token) = self.token() {
            request = request.with_header("Authorization", format!("Bearer {token}"));
        }
        let (socket, _response) = match tungstenite::client::client(request, stream) {
            Ok(done) => done,
            Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                return Err(self.refusal(&response))
            }
            Err(HandshakeError::Failure(e)) => return Err(unreachable(Box::new(e))),
            Err(HandshakeError::Interrupted(_)) => {
                return Err(unreachable("the WebSocket handshake timed out".into()))
            }
        };
        socket
            .get_ref()
            .tcp()
            .set_read_timeout(Some(POLL))
            .map_err(|e| unreachable(Box::new(e)))?;
        Ok(socket)
    }

    /// The error a refused upgrade (an HTTP answer other than 101) carries.
    fn refusal(&self, response: &Response) -> ClientError {
        let body = response
            .body()
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let status = reqwest::StatusCode::from_u16(response.status().as_u16())
            .unwrap_or(reqwest::StatusCode::BAD_GATEWAY);
        self.error_answer(status, &body)
    }
}
