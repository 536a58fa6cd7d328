//! The wire form of relay announcements (`NOTIFY` payloads) and of a relayed sync call's
//! failure: pure parsing and formatting, table-tested.

use std::fmt;

use otherix_api::TaskStatus;
use uuid::Uuid;

use crate::gateway::GatewayError;
use crate::store::channel;

/// One announcement as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    Task {
        id: Uuid,
        status: TaskStatus,
        node: Option<String>,
    },
    Vm(Uuid),
    Sync {
        id: Uuid,
        node: String,
    },
    SyncDone(Uuid),
    Cancel {
        task: Uuid,
        node: String,
    },
    Kick(String),
    /// Events up to this number were committed (`otherix_event`).
    Event(i64),
}

impl Announcement {
    /// Parses `payload` received on `chan`; `None` for anything malformed.
    pub fn parse(chan: &str, payload: &str) -> Option<Announcement> {
        let mut parts = payload.split(' ');
        let mut next = || parts.next().filter(|s| !s.is_empty());
        let a = match chan {
            channel::TASK => {
                let id = Uuid::parse_str(next()?).ok()?;
                let status = TaskStatus::parse(next()?)?;
                let node = match next()? {
                    "-" => None,
                    n => Some(n.to_owned()),
                };
                Announcement::Task { id, status, node }
            }
            channel::VM => Announcement::Vm(Uuid::parse_str(next()?).ok()?),
            channel::SYNC => Announcement::Sync {
                id: Uuid::parse_str(next()?).ok()?,
                node: next()?.to_owned(),
            },
            channel::SYNC_DONE => Announcement::SyncDone(Uuid::parse_str(next()?).ok()?),
            channel::CANCEL => Announcement::Cancel {
                task: Uuid::parse_str(next()?).ok()?,
                node: next()?.to_owned(),
            },
            channel::KICK => Announcement::Kick(next()?.to_owned()),
            channel::EVENT => Announcement::Event(next()?.parse().ok()?),
            _ => return None,
        };
        next().is_none().then_some(a)
    }

    pub fn cancel_payload(task: Uuid, node: &str) -> String {
        format!("{task} {node}")
    }
}

/// Why the replica holding a stream could not answer a relayed sync call; stored as text
/// and turned back into the [`GatewayError`] a local call would have returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncFailure {
    NotAttached,
    SessionClosed,
    Timeout(u64),
    Other(String),
}

impl SyncFailure {
    pub fn of(e: &GatewayError) -> SyncFailure {
        match e {
            GatewayError::NotAttached(_) => SyncFailure::NotAttached,
            GatewayError::SessionClosed(_) => SyncFailure::SessionClosed,
            GatewayError::SyncTimeout { secs, .. } => SyncFailure::Timeout(*secs),
            other => SyncFailure::Other(crate::error_chain(other)),
        }
    }

    pub fn parse(s: &str) -> SyncFailure {
        match s.split_once(':') {
            Some(("not_attached", _)) => SyncFailure::NotAttached,
            Some(("session_closed", _)) => SyncFailure::SessionClosed,
            Some(("timeout", secs)) => secs
                .parse()
                .map(SyncFailure::Timeout)
                .unwrap_or_else(|_| SyncFailure::Other(s.to_owned())),
            Some(("other", m)) => SyncFailure::Other(m.to_owned()),
            _ => SyncFailure::Other(s.to_owned()),
        }
    }

    pub fn into_error(self, node: &str) -> GatewayError {
        let node = node.to_owned();
        match self {
            SyncFailure::NotAttached => GatewayError::NotAttached(node),
            SyncFailure::SessionClosed => GatewayError::SessionClosed(node),
            SyncFailure::Timeout(secs) => GatewayError::SyncTimeout { node, secs },
            SyncFailure::Other(m) => GatewayError::Relay { node, message: m },
        }
    }
}

impl fmt::Display for SyncFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncFailure::NotAttached => write!(f, "not_attached:"),
            SyncFailure::SessionClosed => write!(f, "session_closed:"),
            SyncFailure::Timeout(secs) => write!(f, "timeout:{secs}"),
            SyncFailure::Other(m) => write!(f, "other:{m}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "6f9619ff-8b86-d011-b42d-00c04fc964ff";

    #[test]
    fn parse_table() {
        let id = Uuid::parse_str(ID).unwrap();
        let cases: Vec<(&str, String, Option<Announcement>)> = vec![
            (
                channel::TASK,
                format!("{ID} pending n1"),
                Some(Announcement::Task {
                    id,
                    status: TaskStatus::Pending,
                    node: Some("n1".into()),
                }),
            ),
            (
                channel::TASK,
                format!("{ID} success -"),
                Some(Announcement::Task {
                    id,
                    status: TaskStatus::Success,
                    node: None,
                }),
            ),
            (channel::TASK, format!("{ID} bogus n1"), None),
            (channel::TASK, format!("{ID} pending"), None),
            (channel::TASK, format!("{ID} pending n1 extra"), None),
            (channel::TASK, "not-a-uuid pending n1".into(), None),
            (channel::VM, ID.into(), Some(Announcement::Vm(id))),
            (channel::VM, String::new(), None),
            (
                channel::SYNC,
                format!("{ID} n2"),
                Some(Announcement::Sync {
                    id,
                    node: "n2".into(),
                }),
            ),
            (
                channel::SYNC_DONE,
                ID.into(),
                Some(Announcement::SyncDone(id)),
            ),
            (
                channel::CANCEL,
                Announcement::cancel_payload(id, "n3"),
                Some(Announcement::Cancel {
                    task: id,
                    node: "n3".into(),
                }),
            ),
            (
                channel::KICK,
                "n4".into(),
                Some(Announcement::Kick("n4".into())),
            ),
            (channel::EVENT, "17".into(), Some(Announcement::Event(17))),
            ("otherix_unknown", ID.into(), None),
        ];
        for (chan, payload, want) in cases {
            assert_eq!(
                Announcement::parse(chan, &payload),
                want,
                "{chan} {payload:?}"
            );
        }
    }

    #[test]
    fn sync_failure_round_trips_and_maps_to_the_local_error() {
        for f in [
            SyncFailure::NotAttached,
            SyncFailure::SessionClosed,
            SyncFailure::Timeout(7),
            SyncFailure::Other("agent said: no: really".into()),
        ] {
            assert_eq!(SyncFailure::parse(&f.to_string()), f);
        }
        assert!(matches!(
            SyncFailure::Timeout(3).into_error("n1"),
            GatewayError::SyncTimeout { secs: 3, .. }
        ));
        assert!(matches!(
            SyncFailure::of(&GatewayError::NotAttached("n".into())).into_error("n"),
            GatewayError::NotAttached(_)
        ));
        assert_eq!(
            SyncFailure::parse("garbage"),
            SyncFailure::Other("garbage".into())
        );
    }
}
