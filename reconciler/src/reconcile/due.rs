//! The work queue's bookkeeping, pure: which keys wait for which time, which run, and
//! which key is due next, in O(log n) per operation (a time-ordered set next to a map of
//! each key's time). A key scheduled while it runs is parked and becomes due only when
//! its run finishes, so no key runs twice at once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::Hash;

use tokio::time::Instant;

/// What [`DueKeys::take_due`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next<K> {
    /// This key is due and is now running.
    Run(K),
    /// Nothing is due before this time.
    At(Instant),
    /// Nothing waits (keys parked behind a running one wait for its finish).
    Idle,
}

#[derive(Debug)]
pub struct DueKeys<K> {
    /// Every waiting key with its time (due or parked).
    when: HashMap<K, Instant>,
    /// The waiting keys that are not running, by time.
    due: BTreeSet<(Instant, K)>,
    running: HashSet<K>,
}

impl<K> Default for DueKeys<K> {
    fn default() -> Self {
        DueKeys {
            when: HashMap::new(),
            due: BTreeSet::new(),
            running: HashSet::new(),
        }
    }
}

impl<K: Hash + Ord + Clone> DueKeys<K> {
    /// Schedules `key` at `at`; a key already waiting keeps the earlier of its two times.
    pub fn schedule(&mut self, key: K, at: Instant) {
        match self.when.get_mut(&key) {
            Some(old) if *old <= at => {}
            Some(old) => {
                if !self.running.contains(&key) {
                    self.due.remove(&(*old, key.clone()));
                    self.due.insert((at, key));
                }
                *old = at;
            }
            None => {
                self.when.insert(key.clone(), at);
                if !self.running.contains(&key) {
                    self.due.insert((at, key));
                }
            }
        }
    }

    /// Takes the earliest key due at `now` (marking it running), or says when to look again.
    pub fn take_due(&mut self, now: Instant) -> Next<K> {
        match self.due.first() {
            None => Next::Idle,
            Some((at, _)) if *at > now => Next::At(*at),
            Some(_) => {
                let (_, key) = self.due.pop_first().expect("checked above");
                self.when.remove(&key);
                self.running.insert(key.clone());
                Next::Run(key)
            }
        }
    }

    /// Ends the run of `key`; `again` schedules it anew. A time it was given while
    /// running (parked) is kept if earlier.
    pub fn finish(&mut self, key: K, again: Option<Instant>) {
        self.running.remove(&key);
        if let Some(at) = again {
            self.when
                .entry(key.clone())
                .and_modify(|t| *t = (*t).min(at))
                .or_insert(at);
        }
        if let Some(at) = self.when.get(&key) {
            self.due.insert((*at, key));
        }
    }

    /// Keys waiting (due or parked).
    pub fn len(&self) -> usize {
        self.when.len()
    }

    pub fn is_empty(&self) -> bool {
        self.when.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// One step of a table: an operation and what `take_due` answers right after it.
    enum Op {
        Schedule(u32, u64),
        Take(u64),
        Finish(u32, Option<u64>),
    }

    #[test]
    fn table() {
        use Op::*;
        // (name, steps, expected answers of each Take in order: Some(key) ran, or the
        // Next::At offset / Idle)
        #[derive(Debug, PartialEq)]
        enum Want {
            Run(u32),
            At(u64),
            Idle,
        }
        let cases: Vec<(&str, Vec<Op>, Vec<Want>)> = vec![
            ("empty is idle", vec![Take(0)], vec![Want::Idle]),
            (
                "earliest first, regardless of insertion order",
                vec![
                    Schedule(1, 30),
                    Schedule(2, 10),
                    Schedule(3, 20),
                    Take(100),
                    Take(100),
                    Take(100),
                    Take(100),
                ],
                vec![Want::Run(2), Want::Run(3), Want::Run(1), Want::Idle],
            ),
            (
                "not yet due: says when",
                vec![Schedule(1, 50), Take(10), Take(50)],
                vec![Want::At(50), Want::Run(1)],
            ),
            (
                "scheduled twice: queued once at the earlier time",
                vec![
                    Schedule(1, 50),
                    Schedule(1, 20),
                    Schedule(1, 90),
                    Take(0),
                    Take(20),
                    Take(100),
                ],
                vec![Want::At(20), Want::Run(1), Want::Idle],
            ),
            (
                "scheduled while running: parked until its run finishes",
                vec![
                    Schedule(1, 0),
                    Take(0),
                    Schedule(1, 0),
                    Take(10),
                    Finish(1, None),
                    Take(10),
                ],
                vec![Want::Run(1), Want::Idle, Want::Run(1)],
            ),
            (
                "a parked key does not block others",
                vec![
                    Schedule(1, 0),
                    Take(0),
                    Schedule(1, 0),
                    Schedule(2, 5),
                    Take(10),
                ],
                vec![Want::Run(1), Want::Run(2)],
            ),
            (
                "finish with a requeue: the earlier of requeue and parked time",
                vec![
                    Schedule(1, 0),
                    Take(0),
                    Schedule(1, 40),
                    Finish(1, Some(20)),
                    Take(0),
                    Take(30),
                ],
                vec![Want::Run(1), Want::At(20), Want::Run(1)],
            ),
            (
                "finish with a requeue, nothing parked",
                vec![Schedule(1, 0), Take(0), Finish(1, Some(70)), Take(0)],
                vec![Want::Run(1), Want::At(70)],
            ),
            (
                "finish without requeue: gone",
                vec![Schedule(1, 0), Take(0), Finish(1, None), Take(1000)],
                vec![Want::Run(1), Want::Idle],
            ),
        ];
        let t0 = Instant::now();
        for (name, steps, want) in cases {
            let mut q = DueKeys::default();
            let mut got = Vec::new();
            for step in steps {
                match step {
                    Schedule(k, ms) => q.schedule(k, at(t0, ms)),
                    Finish(k, again) => q.finish(k, again.map(|ms| at(t0, ms))),
                    Take(ms) => got.push(match q.take_due(at(t0, ms)) {
                        Next::Run(k) => Want::Run(k),
                        Next::At(i) => Want::At((i - t0).as_millis() as u64),
                        Next::Idle => Want::Idle,
                    }),
                }
            }
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn len_counts_due_and_parked_keys() {
        let t0 = Instant::now();
        let mut q = DueKeys::default();
        q.schedule(1u32, t0);
        q.schedule(2, t0);
        assert_eq!(q.len(), 2);
        assert_eq!(q.take_due(t0), Next::Run(1));
        assert_eq!(q.len(), 1);
        q.schedule(1, t0);
        assert_eq!(q.len(), 2, "parked key 1 and due key 2");
        assert_eq!(q.take_due(t0), Next::Run(2));
        assert_eq!(q.take_due(t0), Next::Idle, "1 is parked behind its run");
        q.finish(1, None);
        assert_eq!(q.take_due(t0), Next::Run(1));
        assert!(q.is_empty());
    }

    #[test]
    fn ten_thousand_keys_come_out_in_time_order() {
        let t0 = Instant::now();
        let mut q = DueKeys::default();
        // A scrambled order of 10,000 distinct times.
        for i in 0..10_000u64 {
            let ms = (i * 7919) % 10_000;
            q.schedule(ms, at(t0, ms));
        }
        for want in 0..10_000u64 {
            assert_eq!(q.take_due(at(t0, 20_000)), Next::Run(want));
        }
        assert_eq!(q.take_due(at(t0, 20_000)), Next::Idle);
    }
}
