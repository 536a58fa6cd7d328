//! Leader election over a lease row (`leases`, migration 0009), so that work which must
//! run once (reconcile loop, resync, liveness sweep, retention) runs on one replica only.
//!
//! [`decide`] is pure and table tested; [`Elector::run`] is the I/O loop around it: every
//! `renew_every` it reads the row and acquires (compare-and-swap; the epoch grows on every
//! change of holder), renews or stands by, and publishes `Some(epoch)` while leading on a
//! watch channel. A leader that cannot renew steps down before its lease runs out. On stop
//! it resigns (holder cleared, `NOTIFY otherix_leader` on PostgreSQL) so a standby takes
//! over at its next check; standbys `LISTEN otherix_leader` and check at once, and a
//! standby checks right after the holder's lease runs out ([`next_check`]), so a crashed
//! leader is replaced when its lease expires. SQLite has one replica: it always leads, at
//! epoch 0, with no lease row.

use std::time::Duration;

use tokio::sync::watch;

use crate::store::{LeaseRow, Store};

/// The name of the control plane's lease row.
pub const LEASE_NAME: &str = crate::store::LEADER_LEASE;
/// The PostgreSQL channel a resigning leader notifies.
pub const NOTIFY_CHANNEL: &str = "otherix_leader";
/// How long a lease lasts without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews and a standby retries.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(2);

/// What a replica does with the lease row it just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Free, resigned or expired: take it (the epoch grows).
    Acquire,
    /// Ours and live: extend it.
    Renew,
    /// Another replica holds a live lease.
    Standby,
}

/// The pure decision: `now` in epoch milliseconds, the row as read (`None`: none yet).
pub fn decide(now_ms: i64, row: Option<&LeaseRow>, me: &str) -> Decision {
    match row {
        None => Decision::Acquire,
        Some(r) if r.holder.is_none() || r.expires_at_ms <= now_ms => Decision::Acquire,
        Some(r) if r.holder.as_deref() == Some(me) => Decision::Renew,
        Some(_) => Decision::Standby,
    }
}

/// When to check the lease next: every `renew_every`, but a standby that saw another
/// holder's lease run out sooner checks right after it does (so a crashed leader is
/// replaced as soon as its lease expires, not up to `renew_every` later).
pub fn next_check(
    now_ms: i64,
    other_expires_at_ms: Option<i64>,
    renew_every: Duration,
) -> Duration {
    match other_expires_at_ms {
        Some(at) => {
            let until_expiry =
                Duration::from_millis(u64::try_from(at - now_ms).unwrap_or(0)) + EXPIRY_MARGIN;
            until_expiry.min(renew_every)
        }
        None => renew_every,
    }
}

/// How long after another holder's lease expiry a standby checks.
const EXPIRY_MARGIN: Duration = Duration::from_millis(20);

/// Timing of the election; tests shorten it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    pub lease: Duration,
    pub renew_every: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            lease: LEASE_DURATION,
            renew_every: RENEW_INTERVAL,
        }
    }
}

/// Who leads, as this replica sees it: `Some(epoch)` while it leads.
pub type Leadership = watch::Receiver<Option<i64>>;

/// One replica's side of the election.
pub struct Elector {
    store: Store,
    me: String,
    timing: LeaseTiming,
    tx: watch::Sender<Option<i64>>,
}

impl Elector {
    pub fn new(store: Store, me: String, timing: LeaseTiming) -> (Elector, Leadership) {
        let (tx, rx) = watch::channel(None);
        (
            Elector {
                store,
                me,
                timing,
                tx,
            },
            rx,
        )
    }

    fn publish(&self, epoch: Option<i64>) {
        self.tx.send_if_modified(|cur| {
            if *cur == epoch {
                return false;
            }
            match epoch {
                Some(e) => tracing::info!(holder = %self.me, epoch = e, "leading"),
                None => tracing::info!(holder = %self.me, "not leading"),
            }
            *cur = epoch;
            true
        });
    }

    /// Runs until `stop` turns true (or its sender is dropped), then resigns.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        if !self.store.is_postgres() {
            self.publish(Some(0));
            let _ = stop.wait_for(|s| *s).await;
            self.publish(None);
            return;
        }
        let lease_ms = self.timing.lease.as_millis() as i64;
        let mut listener = self.listen().await;
        // While leading: (epoch, local deadline by which the lease must have been renewed).
        let mut held: Option<(i64, i64)> = None;
        loop {
            let now = self.store.now_ms();
            let mut other_expires_at = None;
            match self.step(now, lease_ms).await {
                Ok(Step::Leading(epoch)) => held = Some((epoch, now + lease_ms)),
                Ok(Step::Standby(expires_at)) => {
                    held = None;
                    other_expires_at = expires_at;
                }
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "leader lease check failed");
                    // Step down well before the lease could have been taken by another.
                    if held.is_some_and(|(_, until)| now + lease_ms / 3 >= until) {
                        held = None;
                    }
                }
            }
            self.publish(held.map(|(e, _)| e));
            let notified = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.map(drop),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(next_check(now, other_expires_at, self.timing.renew_every)) => {}
                r = notified => {
                    if let Err(e) = r {
                        tracing::warn!(error = %crate::error_chain(&e), "leader notifications lost; polling only");
                        listener = None;
                    }
                }
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        self.publish(None);
        if let Some((epoch, _)) = held {
            match self.store.resign_lease(LEASE_NAME, &self.me, epoch).await {
                Ok(_) => tracing::info!(holder = %self.me, epoch, "resigned leadership"),
                Err(e) => tracing::warn!(error = %crate::error_chain(&e), "resigning failed"),
            }
        }
    }

    /// A `LISTEN otherix_leader` connection, so a resign is noticed at once (`None`:
    /// polling only, every `renew_every`).
    async fn listen(&self) -> Option<sqlx::postgres::PgListener> {
        let connect = async {
            let mut l = sqlx::postgres::PgListener::connect(self.store.database_url()).await?;
            l.listen(NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        match connect.await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "cannot listen for leader notifications; polling only");
                None
            }
        }
    }

    /// One check of the lease row.
    async fn step(&self, now: i64, lease_ms: i64) -> Result<Step, crate::store::StoreError> {
        let row = self.store.read_lease(LEASE_NAME).await?;
        let until = now + lease_ms;
        let led = match decide(now, row.as_ref(), &self.me) {
            Decision::Acquire => {
                self.store
                    .acquire_lease(LEASE_NAME, &self.me, row.as_ref(), until)
                    .await?
            }
            Decision::Renew => {
                let epoch = row.as_ref().map_or(0, |r| r.epoch);
                self.store
                    .renew_lease(LEASE_NAME, &self.me, epoch, until)
                    .await?
                    .then_some(epoch)
            }
            Decision::Standby => {
                return Ok(Step::Standby(row.map(|r| r.expires_at_ms)));
            }
        };
        // A lost compare-and-swap: another replica just took or renewed it.
        Ok(led.map_or(Step::Standby(None), Step::Leading))
    }
}

/// What one [`Elector::step`] found.
enum Step {
    /// This replica leads at this epoch.
    Leading(i64),
    /// Another replica leads; its lease runs out at this time (if known).
    Standby(Option<i64>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_check_table() {
        let every = Duration::from_secs(2);
        let ms = Duration::from_millis;
        // (now, other holder's expiry, want)
        let cases = [
            (1_000, None, every),
            (1_000, Some(20_000), every),
            (1_000, Some(1_500), ms(520)),
            (1_000, Some(1_000), ms(20)),
            (1_000, Some(900), ms(20)),
            (1_000, Some(2_980), every),
        ];
        for (now, at, want) in cases {
            assert_eq!(next_check(now, at, every), want, "{now} {at:?}");
        }
    }

    fn row(holder: Option<&str>, expires_at_ms: i64) -> LeaseRow {
        LeaseRow {
            holder: holder.map(str::to_owned),
            epoch: 3,
            expires_at_ms,
        }
    }

    #[test]
    fn decide_table() {
        use Decision::*;
        let cases: &[(&str, Option<LeaseRow>, Decision)] = &[
            ("no row yet", None, Acquire),
            ("resigned", Some(row(None, 0)), Acquire),
            ("resigned, not yet expired", Some(row(None, 2_000)), Acquire),
            ("other holder expired", Some(row(Some("b"), 1_000)), Acquire),
            (
                "other holder expires exactly now",
                Some(row(Some("b"), 1_000)),
                Acquire,
            ),
            ("other holder live", Some(row(Some("b"), 1_001)), Standby),
            ("mine and live", Some(row(Some("a"), 5_000)), Renew),
            ("mine but expired", Some(row(Some("a"), 999)), Acquire),
        ];
        for (what, r, want) in cases {
            assert_eq!(decide(1_000, r.as_ref(), "a"), *want, "{what}");
        }
    }
}
