//! The event stream behind `GET /v1/events`: checks the resume cursor against the log
//! (410 `cursor_expired` below the retention watermark or beyond the newest event), then
//! sends every event after it in order, filtered by [`EventFilter`], and waits for more.
//! One pump per replica follows the log head (woken by this process's appends, by
//! `otherix_event` from other replicas through the relay, and by a 1 s poll, so a lost
//! notification only delays); streams read the log only when the head moved past them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use otherix_api::{ApiError, ErrorCode, Event, EventCursor};
use tokio::sync::watch;

use super::event_filter::EventFilter;
use super::ServiceError;
use crate::model::rfc3339;
use crate::store::{EventRow, Store};

/// How often the pump reads the head without being woken.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// Re-reads after a wake-up that found nothing new (the append that rang may not have
/// committed yet).
const RETRY_AFTER_WAKE: [Duration; 4] = [
    Duration::from_millis(5),
    Duration::from_millis(20),
    Duration::from_millis(80),
    Duration::from_millis(250),
];
/// Events read per query.
const PAGE: u32 = 500;

pub struct EventService {
    store: Store,
    head: watch::Sender<i64>,
    /// Whether the pump runs; it clears this under the lock when it sees no stream left.
    pump: Arc<Mutex<bool>>,
    /// Set at shutdown: every stream ends (its client resumes elsewhere with `since`).
    closing: watch::Sender<bool>,
}

/// An opened stream: where it starts and the events after that.
pub struct EventStream<S> {
    pub start: EventCursor,
    pub events: S,
}

impl EventService {
    pub fn new(store: Store) -> Self {
        EventService {
            store,
            head: watch::Sender::new(0),
            pump: Arc::new(Mutex::new(false)),
            closing: watch::Sender::new(false),
        }
    }

    /// Ends every open stream (the server is shutting down; a stream would otherwise hold
    /// the HTTP drain until its limit). A stream opened later ends after what is there.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Opens a stream after `since` (default: the newest event, i.e. only what comes
    /// next). `since` below the retained window, or beyond the newest event, is 410
    /// `cursor_expired`.
    pub async fn open(
        &self,
        since: Option<EventCursor>,
        filter: EventFilter,
    ) -> Result<EventStream<impl Stream<Item = Event> + Send + 'static>, ServiceError> {
        let head = self.store.event_head().await?;
        let start = since.map_or(head, |c| c.0);
        if start > head {
            return Err(expired(format!(
                "cursor {start} is not from this event log (its newest event is {head}); \
                 list the objects again and watch from a fresh stream"
            )));
        }
        let purged = self.store.events_purged_through().await?;
        if start < purged {
            return Err(expired(format!(
                "cursor {start} is older than the retained events (those up to {purged} were \
                 purged); list the objects again and watch from a fresh stream"
            )));
        }
        // Subscribe before making sure the pump runs: a pump that finds no subscriber
        // stops under the lock `ensure_pump` takes, so one of the two sees the other.
        let mut heads = self.head.subscribe();
        self.ensure_pump();
        let mut closing = self.closing.subscribe();
        let store = self.store.clone();
        let events = async_stream::stream! {
            let mut cursor = start;
            loop {
                let (rows, purged) = match store.events_after(cursor, PAGE).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %crate::error_chain(&e), "event stream: reading the log failed; closing");
                        break;
                    }
                };
                if cursor < purged {
                    tracing::info!(cursor, purged, "event stream fell behind retention; closing");
                    break;
                }
                let full = rows.len() == PAGE as usize;
                for row in rows {
                    cursor = row.seq;
                    let e = &row.event;
                    if filter.matches(e.kind, e.project.as_deref(), e.vm.as_deref()) {
                        yield to_event(row);
                    }
                }
                if full {
                    continue;
                }
                // Wait for the head to move past us; the timeout re-reads anyway.
                tokio::select! {
                    _ = tokio::time::timeout(POLL_EVERY * 2, heads.wait_for(|h| *h > cursor)) => {}
                    _ = closing.wait_for(|c| *c) => break,
                }
            }
        };
        Ok(EventStream {
            start: EventCursor(start),
            events,
        })
    }

    /// Starts the head pump unless it runs; it stops when no stream is left.
    fn ensure_pump(&self) {
        let mut running = self.pump.lock().expect("event pump poisoned");
        if *running {
            return;
        }
        *running = true;
        let store = self.store.clone();
        let head = self.head.clone();
        let pump = self.pump.clone();
        tokio::spawn(async move {
            let mut bell = crate::events::bell_listener();
            loop {
                let woken = tokio::select! {
                    r = bell.changed() => r.is_ok(),
                    _ = tokio::time::sleep(POLL_EVERY) => false,
                };
                {
                    let mut running = pump.lock().expect("event pump poisoned");
                    if head.receiver_count() == 0 {
                        *running = false;
                        break;
                    }
                }
                let last = *head.borrow();
                let mut retries = RETRY_AFTER_WAKE.iter();
                loop {
                    match store.event_head().await {
                        Ok(h) if h > last => {
                            head.send_replace(h);
                            break;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %crate::error_chain(&e), "event pump: reading the head failed");
                            break;
                        }
                    }
                    match retries.next() {
                        Some(d) if woken => tokio::time::sleep(*d).await,
                        _ => break,
                    }
                }
            }
        });
    }
}

fn expired(message: String) -> ServiceError {
    ApiError::new(ErrorCode::CursorExpired, message).into()
}

fn to_event(row: EventRow) -> Event {
    let e = row.event;
    Event {
        event_type: e.event_type,
        kind: e.kind,
        object: serde_json::from_str(&e.object).unwrap_or(serde_json::Value::Null),
        cursor: EventCursor(row.seq).to_string(),
        at: rfc3339(row.at_ms),
    }
}
