//! Node liveness that holds under load: agents heartbeat every [`Liveness::heartbeat_every`]
//! (1 s with the default grace period; a beat is only a liveness ping, VM state travels
//! in reports), and a heartbeat is written to the database at most once per
//! [`Liveness::persist_every`] per node, by a
//! background write that never delays the agent's stream (one write in flight per node;
//! beats arriving meanwhile are only counted). The leader marks a node `not_ready` once its
//! last persisted heartbeat is older than the grace period (default 20 s, like Incus;
//! Kubernetes allows 40 s). A closed stream still marks the node at once (detach).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Default `--node-grace-period`.
pub const DEFAULT_NODE_GRACE: Duration = Duration::from_secs(20);
/// Shortest and longest accepted grace period.
pub const NODE_GRACE_RANGE: (Duration, Duration) =
    (Duration::from_secs(2), Duration::from_secs(600));

/// How long a node may go without a persisted heartbeat, and how often one is persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    pub grace: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            grace: DEFAULT_NODE_GRACE,
        }
    }
}

impl Liveness {
    /// A quarter of the grace period, at most 5 s: a node is declared down only after
    /// several persisted beats were missed.
    pub fn persist_every(self) -> Duration {
        (self.grace / 4).clamp(Duration::from_millis(250), Duration::from_secs(5))
    }

    /// How often agents are told to heartbeat: five times per persist interval (1 s with
    /// the default 20 s grace). Slower beats were tried: at 5 s and 2.5 s nodes flapped
    /// under a boot storm of 100 TCG guests on 2 cores (a persisted beat can be many
    /// seconds late there, and each missing beat widens the gap); at 1 s they never did.
    pub fn heartbeat_every(self) -> Duration {
        self.persist_every() / 5
    }

    /// How often the leader sweeps for overdue nodes.
    pub fn sweep_every(self) -> Duration {
        (self.grace / 10).clamp(Duration::from_millis(200), Duration::from_secs(2))
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    last_persisted: Option<Instant>,
    in_flight: bool,
}

/// Per-node record of heartbeat writes; one per replica.
#[derive(Debug, Default)]
pub struct HeartbeatBook {
    nodes: Mutex<HashMap<String, Entry>>,
}

/// Whether a heartbeat at `now` should be written: none in flight and the last write is
/// `every` old (or there was none).
fn due(entry: Entry, now: Instant, every: Duration) -> bool {
    !entry.in_flight
        && entry
            .last_persisted
            .is_none_or(|at| now.saturating_duration_since(at) >= every)
}

impl HeartbeatBook {
    /// Called for each heartbeat: true when the caller must write it now (and then call
    /// [`HeartbeatBook::end`]); the write is marked in flight.
    pub fn begin(&self, node: &str, now: Instant, every: Duration) -> bool {
        let mut nodes = self.nodes.lock().expect("heartbeat book poisoned");
        let entry = nodes.entry(node.to_owned()).or_default();
        if !due(*entry, now, every) {
            return false;
        }
        entry.in_flight = true;
        true
    }

    /// The write begun at `started` ended; a failed one is retried at the next beat.
    pub fn end(&self, node: &str, started: Instant, ok: bool) {
        let mut nodes = self.nodes.lock().expect("heartbeat book poisoned");
        let entry = nodes.entry(node.to_owned()).or_default();
        entry.in_flight = false;
        if ok {
            entry.last_persisted = Some(started);
        }
    }

    /// The node's session ended here: forget it (a new session writes at once).
    pub fn forget(&self, node: &str) {
        self.nodes
            .lock()
            .expect("heartbeat book poisoned")
            .remove(node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_table() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let every = s(5);
        let e = |last: Option<u64>, in_flight| Entry {
            last_persisted: last.map(|x| t0 + s(x)),
            in_flight,
        };
        // (entry, now offset s, due)
        let cases = [
            (e(None, false), 0, true),
            (e(None, true), 0, false),
            (e(Some(0), false), 4, false),
            (e(Some(0), false), 5, true),
            (e(Some(0), true), 60, false),
            (e(Some(10), false), 9, false), // a clock step back: not due
        ];
        for (i, (entry, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(due(entry, t0 + s(now), every), want, "case {i}");
        }
    }

    #[test]
    fn book_writes_once_per_interval_and_one_at_a_time() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let book = HeartbeatBook::default();
        let every = s(5);
        assert!(book.begin("n1", t0, every));
        // Beats while the first write is in flight (a slow database) are not written.
        assert!(!book.begin("n1", t0 + s(1), every));
        assert!(!book.begin("n1", t0 + s(9), every));
        assert!(book.begin("n2", t0, every), "nodes are independent");
        book.end("n1", t0, true);
        assert!(!book.begin("n1", t0 + s(4), every));
        assert!(book.begin("n1", t0 + s(5), every));
        // A failed write is retried at the next beat.
        book.end("n1", t0 + s(5), false);
        assert!(book.begin("n1", t0 + s(6), every));
        book.end("n1", t0 + s(6), true);
        book.forget("n1");
        assert!(
            book.begin("n1", t0 + s(7), every),
            "a new session writes at once"
        );
    }

    #[test]
    fn persist_and_sweep_intervals_follow_the_grace_period() {
        let s = Duration::from_secs;
        let l = |grace| Liveness { grace };
        assert_eq!(Liveness::default().heartbeat_every(), s(1));
        assert_eq!(l(s(2)).heartbeat_every(), Duration::from_millis(100));
        assert_eq!(l(s(600)).heartbeat_every(), s(1));
        assert_eq!(l(s(20)).persist_every(), s(5));
        assert_eq!(l(s(20)).sweep_every(), s(2));
        assert_eq!(l(s(600)).persist_every(), s(5));
        assert_eq!(l(s(4)).persist_every(), s(1));
        assert_eq!(l(s(2)).sweep_every(), Duration::from_millis(200));
    }
}
