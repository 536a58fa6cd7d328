-- Store-level concurrency safety (several replicas on one database).
-- Portable across SQLite and PostgreSQL: TEXT and BIGINT only.

-- Optimistic concurrency: bumped on every write of a VM row; writes are compare-and-swap
-- on it (UPDATE ... WHERE id = ? AND resource_version = ?), shown as Vm.resource_version
-- and checked against If-Match.
ALTER TABLE vms ADD COLUMN resource_version BIGINT NOT NULL DEFAULT 1;

-- Idempotency keys are unique: recorded in the transaction that inserts the task, so a
-- concurrent duplicate request cannot create a second one. Duplicates a race may have left
-- behind keep their oldest task.
UPDATE tasks SET idempotency_key = NULL, idempotency_request = NULL
WHERE idempotency_key IS NOT NULL AND EXISTS (
    SELECT 1 FROM tasks t2 WHERE t2.idempotency_key = tasks.idempotency_key
    AND (t2.created_at < tasks.created_at OR (t2.created_at = tasks.created_at AND t2.id < tasks.id))
);
DROP INDEX tasks_idempotency_key;
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key);
