//! The reconcile work queue (kube-runtime's scheduler + runner, in small): keys (VM ids)
//! are scheduled for a time; a key scheduled twice is queued once (at the earlier time);
//! a key is never run twice at once (scheduled while running, it runs again after); at
//! most `concurrency` keys run at a time; a run that fails is retried with exponential
//! backoff, reset by the next success; a run may ask to be requeued after a delay. The
//! bookkeeping (O(log n) per key) is [`super::due`]; this module adds the async runner.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use super::due::{DueKeys, Next};
use super::retry::Backoff;

/// What the queue reports to `/metrics`: how many keys wait, and how long each run of
/// the work function takes (prometheus-client handles, cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct QueueMetrics {
    pub depth: prometheus_client::metrics::gauge::Gauge,
    pub run_seconds: Option<prometheus_client::metrics::histogram::Histogram>,
}

impl QueueMetrics {
    /// Records the queue's depth now.
    pub fn set_depth(&self, keys: usize) {
        self.depth.set(keys as i64);
    }
}

/// What one run of the work function asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunResult {
    /// Done; nothing further unless triggered again. Resets the key's backoff.
    Done,
    /// Done; run again after this delay (e.g. a retry's backoff elapses). Resets backoff.
    RequeueAfter(Duration),
    /// Failed; run again after the key's next backoff delay.
    Failed,
}

struct State<K> {
    keys: DueKeys<K>,
    /// Consecutive failures per key.
    failures: HashMap<K, u32>,
}

/// A deduplicating delay queue of keys; cheap to share through an `Arc`.
pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    wake: Notify,
}

impl<K> Default for WorkQueue<K> {
    fn default() -> Self {
        WorkQueue {
            state: Mutex::new(State {
                keys: DueKeys::default(),
                failures: HashMap::new(),
            }),
            wake: Notify::new(),
        }
    }
}

impl<K: Hash + Ord + Clone + Send + 'static> WorkQueue<K> {
    /// Schedules `key` now.
    pub fn add(&self, key: K) {
        self.add_at(key, Instant::now());
    }

    /// Schedules `key` after `delay` (an earlier schedule of the same key wins).
    pub fn add_after(&self, key: K, delay: Duration) {
        self.add_at(key, Instant::now() + delay);
    }

    fn add_at(&self, key: K, at: Instant) {
        self.state
            .lock()
            .expect("work queue poisoned")
            .keys
            .schedule(key, at);
        self.wake.notify_one();
    }

    /// Number of keys waiting (for tests and logs).
    pub fn len(&self) -> usize {
        self.state.lock().expect("work queue poisoned").keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state
            .lock()
            .expect("work queue poisoned")
            .keys
            .is_empty()
    }

    /// Records the end of a run of `key` and schedules what it asked for.
    fn finish(&self, key: K, result: RunResult, backoff: &Backoff) {
        let mut s = self.state.lock().expect("work queue poisoned");
        let again = match result {
            RunResult::Done => {
                s.failures.remove(&key);
                None
            }
            RunResult::RequeueAfter(d) => {
                s.failures.remove(&key);
                Some(d)
            }
            RunResult::Failed => {
                let n = s.failures.entry(key.clone()).or_insert(0);
                *n += 1;
                Some(backoff.delay(*n))
            }
        };
        s.keys.finish(key, again.map(|d| Instant::now() + d));
        drop(s);
        self.wake.notify_one();
    }

    /// Runs `work` for due keys, at most `concurrency` at once, until the runtime stops.
    pub async fn run<F, Fut>(self: Arc<Self>, concurrency: usize, backoff: Backoff, work: F)
    where
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = RunResult> + Send + 'static,
    {
        let work = Arc::new(work);
        let slots = Arc::new(Semaphore::new(concurrency.max(1)));
        loop {
            let permit = slots
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore never closed");
            let key = loop {
                let next = self
                    .state
                    .lock()
                    .expect("work queue poisoned")
                    .keys
                    .take_due(Instant::now());
                match next {
                    Next::Run(key) => break key,
                    Next::At(at) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at) => {}
                            _ = self.wake.notified() => {}
                        }
                    }
                    Next::Idle => self.wake.notified().await,
                }
            };
            let me = self.clone();
            let work = work.clone();
            tokio::spawn(async move {
                let result = work(key.clone()).await;
                me.finish(key, result, &backoff);
                drop(permit);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const BACKOFF: Backoff = Backoff {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(8),
    };

    /// Per-key log of (start, end) times relative to the test start, and peak concurrency.
    #[derive(Default)]
    struct Log {
        runs: Mutex<Vec<(u32, u64, u64)>>,
        running: AtomicUsize,
        peak: AtomicUsize,
    }

    fn start(
        queue: &Arc<WorkQueue<u32>>,
        concurrency: usize,
        run_for: Duration,
        result: impl Fn(u32, usize) -> RunResult + Send + Sync + 'static,
    ) -> Arc<Log> {
        let log = Arc::new(Log::default());
        let t0 = Instant::now();
        let l = log.clone();
        let result = Arc::new(result);
        tokio::spawn(queue.clone().run(concurrency, BACKOFF, move |key| {
            let l = l.clone();
            let result = result.clone();
            async move {
                let now = l.running.fetch_add(1, Ordering::SeqCst) + 1;
                l.peak.fetch_max(now, Ordering::SeqCst);
                let began = t0.elapsed().as_millis() as u64;
                tokio::time::sleep(run_for).await;
                l.running.fetch_sub(1, Ordering::SeqCst);
                let mut runs = l.runs.lock().unwrap();
                runs.push((key, began, t0.elapsed().as_millis() as u64));
                let nth = runs.iter().filter(|r| r.0 == key).count();
                result(key, nth)
            }
        }));
        log
    }

    fn starts(log: &Log, key: u32) -> Vec<u64> {
        log.runs
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.0 == key)
            .map(|r| r.1)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn work_queue_same_key_added_many_times_runs_once() {
        let q = Arc::new(WorkQueue::default());
        for _ in 0..5 {
            q.add(1u32);
        }
        q.add(2);
        let log = start(&q, 4, Duration::from_millis(10), |_, _| RunResult::Done);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(starts(&log, 1), [0]);
        assert_eq!(starts(&log, 2), [0]);
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn work_queue_key_added_while_running_runs_again_after_never_concurrently() {
        let q = Arc::new(WorkQueue::default());
        q.add(1u32);
        let log = start(&q, 4, Duration::from_secs(1), |_, _| RunResult::Done);
        tokio::time::sleep(Duration::from_millis(100)).await;
        q.add(1);
        q.add(1);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let runs = log.runs.lock().unwrap().clone();
        assert_eq!(runs, [(1, 0, 1000), (1, 1000, 2000)]);
        assert_eq!(log.peak.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn work_queue_concurrency_is_bounded() {
        let q = Arc::new(WorkQueue::default());
        for k in 0..6u32 {
            q.add(k);
        }
        let log = start(&q, 2, Duration::from_secs(1), |_, _| RunResult::Done);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(log.runs.lock().unwrap().len(), 6);
        assert_eq!(log.peak.load(Ordering::SeqCst), 2);
        let mut ends: Vec<u64> = log.runs.lock().unwrap().iter().map(|r| r.2).collect();
        ends.sort();
        assert_eq!(ends, [1000, 1000, 2000, 2000, 3000, 3000]);
    }

    #[tokio::test(start_paused = true)]
    async fn work_queue_failures_back_off_exponentially_and_success_resets() {
        let q = Arc::new(WorkQueue::default());
        q.add(7u32);
        // Runs 1-5 fail, 6 succeeds, 7 and 8 fail again, 9 succeeds.
        let log = start(&q, 1, Duration::ZERO, |_, nth| match nth {
            6 | 9.. => RunResult::Done,
            _ => RunResult::Failed,
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        // 1 s, 2 s, 4 s, 8 s (cap), 8 s; then done.
        assert_eq!(starts(&log, 7), [0, 1000, 3000, 7000, 15000, 23000]);
        q.add(7);
        tokio::time::sleep(Duration::from_secs(60)).await;
        let s = starts(&log, 7);
        assert_eq!(s.len(), 9, "{s:?}");
        // After the success the backoff starts over at the base.
        assert_eq!(s[7] - s[6], 1000, "{s:?}");
        assert_eq!(s[8] - s[7], 2000, "{s:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn work_queue_requeue_after_runs_again_at_that_time() {
        let q = Arc::new(WorkQueue::default());
        q.add(3u32);
        let log = start(&q, 1, Duration::ZERO, |_, nth| {
            if nth == 1 {
                RunResult::RequeueAfter(Duration::from_millis(2500))
            } else {
                RunResult::Done
            }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(starts(&log, 3), [0, 2500]);
    }
}
