//! `otherix events [--vm NAME] [--kind K] [--since C] [-o json]`: follows
//! `GET /v1/events`, one line per event (or the server's JSON line with `-o json`) until
//! the server ends the stream or the user interrupts. Resume with `--since` the cursor of
//! the last line printed.

use super::{CommandError, Ctx};
use crate::cli::{EventsArgs, TextFormat};
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
    follow(ctx, stream, opts.format)
}

/// Prints every event of `stream` as it arrives.
pub fn follow(
    ctx: &mut Ctx<'_>,
    stream: event_stream::EventLines,
    format: TextFormat,
) -> Result<(), CommandError> {
    for event in stream {
        let event = event?;
        let text = match format {
            TextFormat::Text => output::event::line(&event),
            TextFormat::Json => serde_json::to_string(&event).expect("events serialize"),
        };
        writeln!(ctx.out, "{text}")?;
        ctx.out.flush()?;
    }
    Ok(())
}
