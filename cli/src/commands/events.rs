//! `otherix events [--vm NAME] [--kind K] [--since C] [-o json]`: follows
//! `GET /v1/events`, one line per event (or the server's JSON line with `-o json`) until
//! the user interrupts; a stream the server ends or a cut connection is resumed after the
//! last cursor seen. Resume by hand with `--since` the cursor of the last line printed.

use std::time::{Duration, Instant};

use super::{CommandError, Ctx};
use crate::cli::{EventsArgs, TextFormat};
use crate::client::ClientError;
use crate::event_stream::{self, EventsQuery};
use crate::output;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub query: EventsQuery,
    pub format: TextFormat,
}

impl From<EventsArgs> for Options {
    fn from(a: EventsArgs) -> Self {
        Options {
            query: EventsQuery {
                since: a.since,
                kinds: a.kind,
                vm: a.vm,
                all_projects: a.all_projects,
            },
            format: a.output,
        }
    }
}

pub fn run(ctx: &mut Ctx<'_>, opts: Options) -> Result<(), CommandError> {
    let stream = event_stream::open(ctx.client, &opts.query)?;
    if let Some(start) = &stream.start {
        // On stderr: resuming needs it only when nothing was printed yet.
        let _ = writeln!(ctx.err, "events after cursor {start}:");
    }
    follow(ctx, stream, &opts.query, opts.format)
}

/// How long a dropped stream is retried before giving up (a replica restarting or
/// failing over behind a balancer takes seconds).
const RESUME_FOR: Duration = Duration::from_secs(60);

/// The pause before the `attempt`-th re-open (0-based): 200 ms doubling to 5 s.
pub fn resume_delay(attempt: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(5))
}

/// Prints every event of `stream` as it arrives. When the server ends the stream (a
/// replica shutting down) or the connection drops, it re-opens `query` after the last
/// cursor seen, so nothing is missed or printed twice; it gives up on an error answer
/// (e.g. `cursor_expired`) or after [`RESUME_FOR`] without a server.
pub fn follow(
    ctx: &mut Ctx<'_>,
    mut stream: event_stream::EventLines,
    query: &EventsQuery,
    format: TextFormat,
) -> Result<(), CommandError> {
    let mut last = stream.start.clone();
    loop {
        for event in stream.by_ref() {
            let event = match event {
                Ok(e) => e,
                // A cut connection: resume below.
                Err(ClientError::Unreachable { .. }) => break,
                Err(e) => return Err(e.into()),
            };
            let text = match format {
                TextFormat::Text => output::event::line(&event),
                TextFormat::Json => serde_json::to_string(&event).expect("events serialize"),
            };
            writeln!(ctx.out, "{text}")?;
            ctx.out.flush()?;
            last = Some(event.cursor);
        }
        let resumed = EventsQuery {
            since: last.clone(),
            ..query.clone()
        };
        let started = Instant::now();
        let mut attempt = 0;
        stream = loop {
            std::thread::sleep(resume_delay(attempt));
            attempt += 1;
            match event_stream::open(ctx.client, &resumed) {
                Ok(s) => break s,
                Err(e @ ClientError::Unreachable { .. }) if started.elapsed() >= RESUME_FOR => {
                    return Err(e.into())
                }
                Err(ClientError::Unreachable { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        };
        let _ = writeln!(
            ctx.err,
            "stream ended; resumed after cursor {}",
            last.as_deref().unwrap_or("-")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_delay_table() {
        let table = [
            (0, 200),
            (1, 400),
            (2, 800),
            (4, 3200),
            (5, 5000),
            (9, 5000),
            (40, 5000),
        ];
        for (attempt, ms) in table {
            assert_eq!(
                resume_delay(attempt),
                Duration::from_millis(ms),
                "{attempt}"
            );
        }
    }
}
