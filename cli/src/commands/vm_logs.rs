//! `otherix vm logs NAME [--follow]`: the VM's serial console log, read in chunks from
//! `GET /v1/vms/{name}/logs` and written raw to stdout. Without --follow it stops at the
//! current end; with it, it polls for more until interrupted.

use std::thread;
use std::time::Duration;

use super::{CommandError, Ctx};
use crate::cli::VmLogsArgs;

/// Most bytes asked for per request.
pub const MAX_BYTES: u32 = 65536;
/// How often --follow asks again once it has reached the end.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub name: String,
    /// `Some(poll interval)` with --follow.
    pub follow: Option<Duration>,
}

impl From<VmLogsArgs> for Options {
    fn from(a: VmLogsArgs) -> Self {
        Options {
            name: a.name,
            follow: a.follow.then_some(FOLLOW_INTERVAL),
        }
    }
}

pub fn run(ctx: &mut Ctx<'_>, opts: Options) -> Result<(), CommandError> {
    let mut offset = 0u64;
    loop {
        let chunk = ctx.client.vm_logs(&opts.name, offset, MAX_BYTES)?;
        ctx.out.write_all(chunk.data.as_bytes())?;
        let moved = chunk.next_offset != offset;
        offset = chunk.next_offset;
        // At the end (or stuck, which a server should not do): stop, or wait for more.
        if chunk.eof || !moved {
            match opts.follow {
                None => break,
                Some(interval) => {
                    ctx.out.flush()?;
                    thread::sleep(interval);
                }
            }
        }
    }
    ctx.out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Client;
    use crate::wait::fake::FakeServer;
    use serde_json::json;

    fn chunk(data: &str, next_offset: u64, eof: bool) -> (u16, String) {
        let body = json!({"data": data, "next_offset": next_offset, "eof": eof});
        (200, body.to_string())
    }

    fn run_logs(
        server: &FakeServer,
        follow: Option<Duration>,
    ) -> (Result<(), CommandError>, String) {
        let client = Client::new(&server.url).unwrap();
        let (mut out, mut err) = (vec![], vec![]);
        let mut ctx = Ctx {
            client: &client,
            out: &mut out,
            err: &mut err,
        };
        let r = run(
            &mut ctx,
            Options {
                name: "web-1".into(),
                follow,
            },
        );
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn logs_without_follow_prints_chunks_raw_until_eof() {
        let server = FakeServer::start(vec![
            chunk("SeaBIOS (version 1.16)\r\n", 24, false),
            chunk("Linux version 6.1\nlogin: ", 49, false),
            chunk("", 49, true),
        ]);
        let (r, out) = run_logs(&server, None);
        r.unwrap();
        assert_eq!(out, "SeaBIOS (version 1.16)\r\nLinux version 6.1\nlogin: ");
        assert_eq!(
            server.requests(),
            [
                "GET /v1/vms/web-1/logs?offset=0&max_bytes=65536",
                "GET /v1/vms/web-1/logs?offset=24&max_bytes=65536",
                "GET /v1/vms/web-1/logs?offset=49&max_bytes=65536",
            ]
        );
    }

    #[test]
    fn logs_without_follow_stops_when_server_makes_no_progress() {
        let server = FakeServer::start(vec![chunk("", 0, false)]);
        let (r, out) = run_logs(&server, None);
        r.unwrap();
        assert_eq!(out, "");
        assert_eq!(server.requests().len(), 1);
    }

    #[test]
    fn logs_follow_polls_past_eof_until_an_error() {
        let server = FakeServer::start(vec![
            chunk("boot\n", 5, true),
            chunk("", 5, true),
            chunk("login: ", 12, true),
            (
                404,
                r#"{"error":{"code":"not_found","message":"vm web-1 not found"}}"#.into(),
            ),
        ]);
        let (r, out) = run_logs(&server, Some(Duration::from_millis(1)));
        assert_eq!(r.unwrap_err().to_string(), "not_found: vm web-1 not found");
        assert_eq!(out, "boot\nlogin: ");
        assert_eq!(
            server.requests()[1..],
            [
                "GET /v1/vms/web-1/logs?offset=5&max_bytes=65536",
                "GET /v1/vms/web-1/logs?offset=5&max_bytes=65536",
                "GET /v1/vms/web-1/logs?offset=12&max_bytes=65536",
            ]
        );
    }
}
