//! How a console session attaches: the one definition shared by otherixd (which reads it
//! from `?read_only=` / `?force=`) and the agent (which reads it from
//! `SyncRequest.console_mode`, the wire names below).

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleMode {
    /// The one session whose input reaches the guest.
    Writer,
    /// Sees the output; any number may.
    ReadOnly,
    /// A writer that disconnects the current one.
    Force,
}

impl ConsoleMode {
    /// `?read_only=` and `?force=` of the request.
    pub fn from_flags(read_only: bool, force: bool) -> Result<ConsoleMode, ApiError> {
        match (read_only, force) {
            (true, true) => Err(ApiError::validation(
                "read_only, force: a read-only session cannot force (pick one)",
            )),
            (true, false) => Ok(ConsoleMode::ReadOnly),
            (false, true) => Ok(ConsoleMode::Force),
            (false, false) => Ok(ConsoleMode::Writer),
        }
    }

    /// The wire name (`SyncRequest.console_mode`).
    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleMode::Writer => "writer",
            ConsoleMode::ReadOnly => "read-only",
            ConsoleMode::Force => "force",
        }
    }

    /// The mode a wire name names.
    pub fn parse(mode: &str) -> Option<ConsoleMode> {
        [
            ConsoleMode::Writer,
            ConsoleMode::ReadOnly,
            ConsoleMode::Force,
        ]
        .into_iter()
        .find(|m| m.as_str() == mode)
    }

    pub fn writes(self) -> bool {
        self != ConsoleMode::ReadOnly
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn from_flags_table() {
        let table = [
            ((false, false), Some(ConsoleMode::Writer)),
            ((true, false), Some(ConsoleMode::ReadOnly)),
            ((false, true), Some(ConsoleMode::Force)),
            ((true, true), None),
        ];
        for ((read_only, force), want) in table {
            let got = ConsoleMode::from_flags(read_only, force);
            match want {
                Some(mode) => assert_eq!(got.unwrap(), mode),
                None => assert_eq!(got.unwrap_err().code, ErrorCode::ValidationFailed),
            }
        }
        assert!(ConsoleMode::Force.writes() && !ConsoleMode::ReadOnly.writes());
    }

    #[test]
    fn wire_names_round_trip() {
        for mode in [
            ConsoleMode::Writer,
            ConsoleMode::ReadOnly,
            ConsoleMode::Force,
        ] {
            assert_eq!(ConsoleMode::parse(mode.as_str()), Some(mode));
        }
        assert_eq!(ConsoleMode::as_str(ConsoleMode::ReadOnly), "read-only");
        assert_eq!(ConsoleMode::parse("rw"), None);
    }
}
