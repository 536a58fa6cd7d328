//! Fencing on the agent side: a task carries the epoch of the control-plane leader that
//! emitted it; once a task of epoch N arrived, tasks of an older epoch come from a deposed
//! leader and are dropped (Kleppmann's fencing tokens). Tasks without an epoch (the HTTP
//! path, a single SQLite replica) are always admitted. Kept for the agent's lifetime,
//! across reconnects to other servers.

use std::sync::atomic::{AtomicI64, Ordering};

#[derive(Debug, Default)]
pub struct EpochFence {
    /// The highest epoch seen; 0 = none yet (epochs start at 1).
    highest: AtomicI64,
}

impl EpochFence {
    /// Admits a task of `epoch` (raising the highest seen), or returns the highest epoch
    /// already seen when `epoch` is older.
    pub fn admit(&self, epoch: Option<i64>) -> Result<(), i64> {
        let Some(epoch) = epoch else {
            return Ok(());
        };
        let seen = self.highest.fetch_max(epoch, Ordering::SeqCst);
        if epoch < seen {
            Err(seen)
        } else {
            Ok(())
        }
    }

    pub fn highest(&self) -> i64 {
        self.highest.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admit_table() {
        let fence = EpochFence::default();
        // (task epoch, expected verdict, highest afterwards)
        let steps: [(Option<i64>, Result<(), i64>, i64); 7] = [
            (None, Ok(()), 0),
            (Some(2), Ok(()), 2),
            (Some(2), Ok(()), 2),
            (Some(1), Err(2), 2),
            (None, Ok(()), 2),
            (Some(5), Ok(()), 5),
            (Some(4), Err(5), 5),
        ];
        for (i, (epoch, want, highest)) in steps.into_iter().enumerate() {
            assert_eq!(fence.admit(epoch), want, "step {i}");
            assert_eq!(fence.highest(), highest, "step {i}");
        }
    }
}
