//! `otherix vm console NAME [--read-only|--force]`: attaches the terminal (raw mode when
//! stdin is one) to the VM's serial console over the console WebSocket. Ctrl-] detaches;
//! a writer's end of input (a pipe) detaches once the output has had [`EOF_DRAIN`] to
//! arrive (a reader's input is not used, so it follows the console until stopped). The
//! server closing the console (the VM stopped, another writer forced in) ends the command
//! with the reason and exit status 1.

use std::io::{self, IsTerminal, Read};
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::termios::{self, SetArg, Termios};
use tungstenite::Message;

use super::{CommandError, Ctx};
use crate::cli::VmConsoleArgs;
use crate::client::ClientError;
use crate::console_socket::is_poll_timeout;

/// The detach key: Ctrl-] (0x1d), as telnet and virsh.
pub const ESCAPE: u8 = 0x1d;
/// How long output may still arrive after stdin ends.
const EOF_DRAIN: Duration = Duration::from_millis(1500);

/// What one chunk of typed input means: the bytes to send (those before Ctrl-]), and
/// whether Ctrl-] was typed (then the rest is dropped).
pub fn split_at_escape(input: &[u8]) -> (&[u8], bool) {
    match input.iter().position(|&b| b == ESCAPE) {
        Some(i) => (&input[..i], true),
        None => (input, false),
    }
}

/// The terminal in raw mode until dropped (restored then).
struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Raw mode on stdin when it is a terminal; `None` otherwise.
    fn enable() -> io::Result<Option<RawMode>> {
        let stdin = io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

enum Typed {
    Bytes(Vec<u8>),
    Eof,
}

/// How a session ended.
enum End {
    Detached,
    InputEnded,
    Closed(String),
}

pub fn run(ctx: &mut Ctx<'_>, args: VmConsoleArgs) -> Result<(), CommandError> {
    let name = args.name.clone();
    let mut socket = ctx.client.open_console(&name, args.read_only, args.force)?;
    let mode = if args.read_only { " (read-only)" } else { "" };
    writeln!(
        ctx.err,
        "otherix: attached to vm {name}'s serial console{mode}; detach with Ctrl-]"
    )?;
    ctx.err.flush()?;
    let raw = RawMode::enable()?;

    let (typed_tx, typed) = mpsc::channel();
    thread::spawn(move || {
        let mut stdin = io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = typed_tx.send(Typed::Eof);
                    return;
                }
                Ok(n) => {
                    if typed_tx.send(Typed::Bytes(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });

    let server = ctx.client.server().to_owned();
    let broken = |e: tungstenite::Error| {
        CommandError::Client(ClientError::Unreachable {
            server: server.clone(),
            source: Box::new(e),
        })
    };
    let mut input_ended: Option<Instant> = None;
    let end = 'session: loop {
        while let Ok(t) = typed.try_recv() {
            match t {
                Typed::Bytes(bytes) => {
                    let (send, detach) = split_at_escape(&bytes);
                    if !send.is_empty() && !args.read_only {
                        socket
                            .send(Message::Binary(send.to_vec().into()))
                            .map_err(&broken)?;
                    }
                    if detach {
                        break 'session End::Detached;
                    }
                }
                Typed::Eof if !args.read_only => input_ended = Some(Instant::now()),
                Typed::Eof => {}
            }
        }
        if input_ended.is_some_and(|at| at.elapsed() >= EOF_DRAIN) {
            break End::InputEnded;
        }
        match socket.read() {
            Ok(Message::Binary(bytes)) => {
                ctx.out.write_all(&bytes)?;
                ctx.out.flush()?;
            }
            Ok(Message::Text(text)) => {
                ctx.out.write_all(text.as_bytes())?;
                ctx.out.flush()?;
            }
            Ok(Message::Close(frame)) => {
                break End::Closed(
                    frame
                        .map(|f| f.reason.to_string())
                        .filter(|r| !r.is_empty())
                        .unwrap_or_else(|| "the server closed the console".to_owned()),
                )
            }
            Ok(_) => {}
            Err(e) if is_poll_timeout(&e) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                break End::Closed("the server closed the connection".to_owned())
            }
            Err(e) => return Err(broken(e)),
        }
    };
    drop(raw);
    let _ = socket.close(None);
    let _ = socket.flush();
    match end {
        End::Detached | End::InputEnded => {
            writeln!(ctx.err, "\notherix: detached from vm {name}'s console")?;
            Ok(())
        }
        End::Closed(reason) => Err(CommandError::ConsoleEnded { name, reason }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_at_escape_table() {
        let table: [(&[u8], &[u8], bool); 5] = [
            (b"ls\r", b"ls\r", false),
            (b"", b"", false),
            (b"\x1d", b"", true),
            (b"ab\x1dcd", b"ab", true),
            (b"\x1b[A", b"\x1b[A", false),
        ];
        for (input, send, detach) in table {
            assert_eq!(split_at_escape(input), (send, detach), "{input:?}");
        }
    }
}
