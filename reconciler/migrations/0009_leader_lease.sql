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
