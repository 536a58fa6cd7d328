//! otherix: the otherix command-line client. Parses the command line, runs the command,
//! and owns every exit code.
//!
//! Exit codes: 0 success (including a closed stdout pipe), 1 error or failed task,
//! 2 usage error (also `vm delete` without --force and `remote add` without
//! --accept-certificate when stdin is not a terminal), 124 `--wait-timeout` reached;
//! `diff -f`: 0 same, 1 different, 2 error. A changed server certificate
//! (`certificate_changed`) is 1.

mod cli;
mod client;
mod commands;
mod config;
mod console_socket;
mod event_stream;
mod http_target;
mod output;
mod tls;
mod wait;
mod wire;

use std::error::Error;
use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;

use crate::commands::CommandError;
use crate::wait::WaitError;

const EXIT_ERROR: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_TIMEOUT: u8 = 124;
/// `diff -f` failed (1 is taken by "differences found").
const EXIT_DIFF_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut err = io::stderr();
    let result = commands::run(cli, &mut out, &mut err).and_then(|()| Ok(out.flush()?));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

/// Prints `e` the way its kind calls for and picks the exit code.
fn report(e: &CommandError) -> ExitCode {
    let code = match e {
        CommandError::Output(io) if io.kind() == io::ErrorKind::BrokenPipe => {
            return ExitCode::SUCCESS
        }
        CommandError::Wait(WaitError::Failed { .. }) => {
            // Already the full line: `task <id> failed: <code>: <message>`.
            eprintln!("{e}");
            return ExitCode::from(EXIT_ERROR);
        }
        CommandError::Wait(WaitError::TimedOut { .. }) => EXIT_TIMEOUT,
        CommandError::NeedsForce { .. }
        | CommandError::NeedsAcceptCertificate { .. }
        | CommandError::Usage(_) => EXIT_USAGE,
        CommandError::Manifests(otherix_manifests::Error::Invalid(errors)) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            return ExitCode::from(EXIT_ERROR);
        }
        // `diff -f`: 1 means "different" (already printed); its errors are 2.
        CommandError::Differences => return ExitCode::from(EXIT_ERROR),
        CommandError::Diff(inner) => {
            return match report(inner) {
                ok if ok == ExitCode::SUCCESS => ok,
                _ => ExitCode::from(EXIT_DIFF_ERROR),
            };
        }
        _ => EXIT_ERROR,
    };
    eprintln!("error: {}", chain(e));
    ExitCode::from(code)
}

/// `e: source: source...`, skipping a source whose text its parent already ends with.
fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}
