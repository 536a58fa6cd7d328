//! Per-VM locks: every writer of a VM row (service mutations, the reconciler, agent
//! reports) holds the VM's lock, so there are never two reconcile runs for one VM at once
//! and read-modify-write of a row never loses an update.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

/// Held while a VM row is read, decided on and written.
pub type VmGuard = OwnedMutexGuard<()>;

#[derive(Default)]
pub struct VmLocks {
    locks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
}

/// Above this many entries, idle locks are dropped from the map.
const PRUNE_ABOVE: usize = 1024;

impl VmLocks {
    pub async fn lock(&self, vm_id: Uuid) -> VmGuard {
        let lock = {
            let mut map = self.locks.lock().expect("vm lock map poisoned");
            if map.len() > PRUNE_ABOVE {
                map.retain(|_, l| Arc::strong_count(l) > 1);
            }
            map.entry(vm_id).or_default().clone()
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn vm_locks_same_vm_serializes() {
        let locks = Arc::new(VmLocks::default());
        let id = Uuid::new_v4();
        let g = locks.lock(id).await;
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move { l2.lock(id).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        // Another VM is not blocked.
        let _other = locks.lock(Uuid::new_v4()).await;
        drop(g);
        waiter.await.unwrap();
    }
}
