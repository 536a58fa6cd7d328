-- Leader election (several replicas on one database). Portable: TEXT and BIGINT only.
-- One row per lease (`leader`). `epoch` grows on every change of holder (a fencing
-- token); `holder` is NULL after a graceful resign; the lease is free once
-- `expires_at_ms` (epoch milliseconds) has passed.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT,
    epoch BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);

-- Fencing: the epoch of the leader whose reconcile loop inserted the task (NULL for tasks
-- from the HTTP path and on SQLite). The insert checks the lease in its transaction.
ALTER TABLE tasks ADD COLUMN epoch BIGINT;
