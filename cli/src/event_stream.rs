//! The client side of `GET /v1/events`: opens the stream (no overall timeout: it stays
//! open until the server or the user ends it) and reads it one NDJSON line at a time.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use otherix_api::{Event, EventKind};
use reqwest::Method;

use crate::client::{Client, ClientError};

/// The response header naming the cursor a stream starts after.
const CURSOR_HEADER: &str = "otherix-cursor";
/// A stream has no useful overall deadline; this only bounds the blocking client's timer.
const STREAM_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// What to stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventsQuery {
    pub since: Option<String>,
    pub kinds: Vec<EventKind>,
    pub vm: Option<String>,
    pub all_projects: bool,
}

impl EventsQuery {
    /// The query string pairs, in a fixed order.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(s) = &self.since {
            q.push(("since", s.clone()));
        }
        if !self.kinds.is_empty() {
            let kinds: Vec<&str> = self.kinds.iter().map(|k| k.as_str()).collect();
            q.push(("kind", kinds.join(",")));
        }
        if let Some(vm) = &self.vm {
            q.push(("vm", vm.clone()));
        }
        if self.all_projects {
            q.push(("all_projects", "true".to_owned()));
        }
        q
    }
}

/// An open stream.
pub struct EventLines {
    /// The cursor the stream starts after (the server's `Otherix-Cursor`).
    pub start: Option<String>,
    route: String,
    server: String,
    reader: BufReader<reqwest::blocking::Response>,
}

/// Opens `GET /v1/events` with `q`.
pub fn open(client: &Client, q: &EventsQuery) -> Result<EventLines, ClientError> {
    let req = client
        .request(Method::GET, &["v1", "events"], &q.pairs())
        .timeout(STREAM_TIMEOUT);
    let (route, resp) = client.open(req)?;
    let start = resp
        .headers()
        .get(CURSOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok(EventLines {
        start,
        route,
        server: client.server().to_owned(),
        reader: BufReader::new(resp),
    })
}

impl Iterator for EventLines {
    type Item = Result<Event, ClientError>;

    /// The next event; `None` when the server closed the stream.
    fn next(&mut self) -> Option<Self::Item> {
        let mut line = String::new();
        loop {
            line.clear();
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) if line.trim().is_empty() => continue,
                Ok(_) if !line.ends_with('\n') => {
                    // The connection ended inside a line: a cut, not a bad answer.
                    return Some(Err(ClientError::Unreachable {
                        server: self.server.clone(),
                        source: "the event stream was cut inside a line".into(),
                    }));
                }
                Ok(_) => {
                    return Some(serde_json::from_str(&line).map_err(|source| {
                        ClientError::Decode {
                            server: self.server.clone(),
                            route: self.route.clone(),
                            source,
                        }
                    }))
                }
                Err(e) => {
                    return Some(Err(ClientError::Unreachable {
                        server: self.server.clone(),
                        source: Box::new(e),
                    }))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_query_pairs_table() {
        let table = [
            (EventsQuery::default(), vec![]),
            (
                EventsQuery {
                    since: Some("42".into()),
                    kinds: vec![EventKind::Vm, EventKind::Task],
                    vm: Some("web-1".into()),
                    all_projects: true,
                },
                vec![
                    ("since", "42".to_owned()),
                    ("kind", "vm,task".to_owned()),
                    ("vm", "web-1".to_owned()),
                    ("all_projects", "true".to_owned()),
                ],
            ),
        ];
        for (q, want) in table {
            assert_eq!(q.pairs(), want, "{q:?}");
        }
    }
}
