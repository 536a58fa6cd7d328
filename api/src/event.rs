//! Change events of `GET /v1/events`: one JSON object per line (`{type, kind, object,
//! cursor, at}`), the kinds of object they describe, and the cursor a stream resumes
//! from (`?since=`). Pure data, plus the cursor codec and the kind-list parser.

use serde::{Deserialize, Serialize};

/// What happened to the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Added,
    Modified,
    /// The object is gone; `object` is its last state.
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "added",
            EventType::Modified => "modified",
            EventType::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        [EventType::Added, EventType::Modified, EventType::Deleted]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// The kind of object an event carries (the API object of that kind, e.g. a `Vm` as
/// `GET /v1/vms/{name}` shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Vm,
    Task,
    Node,
    Pool,
    Network,
    Firmware,
    Project,
    /// The cluster settings object (`GET /v1/cluster`).
    Cluster,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::Vm,
        EventKind::Task,
        EventKind::Node,
        EventKind::Pool,
        EventKind::Network,
        EventKind::Firmware,
        EventKind::Project,
        EventKind::Cluster,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Vm => "vm",
            EventKind::Task => "task",
            EventKind::Node => "node",
            EventKind::Pool => "pool",
            EventKind::Network => "network",
            EventKind::Firmware => "firmware",
            EventKind::Project => "project",
            EventKind::Cluster => "cluster",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether objects of this kind belong to a project (VMs, tasks, the project itself)
    /// rather than to the whole cluster.
    pub fn project_scoped(self) -> bool {
        matches!(self, EventKind::Vm | EventKind::Task | EventKind::Project)
    }

    /// Parses `kind=` (comma-separated, e.g. `vm,task`); the message names what is wrong.
    pub fn parse_list(s: &str) -> Result<Vec<EventKind>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let kind = EventKind::parse(part).ok_or_else(|| {
                let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("kind: unknown kind {part:?} (one of {})", known.join(", "))
            })?;
            if !out.contains(&kind) {
                out.push(kind);
            }
        }
        if out.is_empty() {
            return Err("kind: empty".to_owned());
        }
        Ok(out)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A position in the event log: the number of the last event seen. Events are numbered
/// 1, 2, 3, ... in commit order; `since=N` sends the events after N. On the wire it is a
/// decimal string (opaque to clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventCursor(pub i64);

impl EventCursor {
    /// Parses a cursor as the server printed it.
    pub fn parse(s: &str) -> Result<EventCursor, String> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("since: {s:?} is not an event cursor"));
        }
        s.parse::<i64>()
            .map(EventCursor)
            .map_err(|_| format!("since: {s:?} is out of range"))
    }
}

impl std::fmt::Display for EventCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One line of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub kind: EventKind,
    /// The API object of `kind` after the change (for `deleted`: its last state).
    pub object: serde_json::Value,
    /// Resume after this event with `?since=<cursor>`.
    pub cursor: String,
    /// When the change was committed (RFC 3339, UTC).
    pub at: String,
}

impl Event {
    /// The object's `name` (every kind has one; a task's is its id).
    pub fn name(&self) -> &str {
        self.object
            .get("name")
            .or_else(|| self.object.get("id"))
            .and_then(|v| v.as_str())
            .unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_cursor_parse_table() {
        let table = [
            ("0", Ok(EventCursor(0))),
            ("42", Ok(EventCursor(42))),
            (" 7 ", Ok(EventCursor(7))),
            ("", Err(())),
            ("-1", Err(())),
            ("1.5", Err(())),
            ("abc", Err(())),
            ("99999999999999999999", Err(())),
        ];
        for (input, want) in table {
            assert_eq!(EventCursor::parse(input).map_err(|_| ()), want, "{input:?}");
        }
        assert_eq!(EventCursor(42).to_string(), "42");
        assert_eq!(
            EventCursor::parse(&EventCursor(9).to_string()),
            Ok(EventCursor(9))
        );
    }

    #[test]
    fn event_kind_parse_list_table() {
        use EventKind::*;
        let table: [(&str, Result<Vec<EventKind>, ()>); 6] = [
            ("vm", Ok(vec![Vm])),
            ("vm,task", Ok(vec![Vm, Task])),
            ("task, vm,task", Ok(vec![Task, Vm])),
            ("cluster,firmware", Ok(vec![Cluster, Firmware])),
            ("vms", Err(())),
            (",", Err(())),
        ];
        for (input, want) in table {
            assert_eq!(
                EventKind::parse_list(input).map_err(|_| ()),
                want,
                "{input:?}"
            );
        }
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }

    #[test]
    fn event_serializes_as_documented() {
        let e = Event {
            event_type: EventType::Deleted,
            kind: EventKind::Vm,
            object: serde_json::json!({"name": "web-1"}),
            cursor: "12".into(),
            at: "2026-12-04T08:00:00.000Z".into(),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "deleted", "kind": "vm", "object": {"name": "web-1"},
                               "cursor": "12", "at": "2026-12-04T08:00:00.000Z"})
        );
        assert_eq!(e.name(), "web-1");
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }
}
