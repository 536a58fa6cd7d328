-- The event log of `GET /v1/events` (issue 12): one row per change of a VM, task, node,
-- pool, network, firmware, project or the cluster settings, written in the transaction
-- that makes the change. `seq` is the cursor: taken from the `last_seq` row below with
-- `UPDATE ... SET value = value + 1 RETURNING value` as the writing transaction's last
-- statement, so the row lock orders numbers by commit on PostgreSQL (SQLite serializes
-- writers anyway). `object` is the API object as JSON. Retention deletes a prefix and
-- records its end in `purged_through`; a cursor below it is 410 cursor_expired.
-- Portable across SQLite and PostgreSQL: TEXT and BIGINT only.

CREATE TABLE events (
    seq BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    -- The owning project of a VM, task or project event; NULL for cluster-wide kinds.
    project TEXT,
    -- The VM a VM or task event is about (its name), for `?vm=`.
    vm TEXT,
    object TEXT NOT NULL
);
CREATE INDEX events_at ON events (at_ms);

CREATE TABLE event_log (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO event_log (name, value) VALUES ('last_seq', 0);
INSERT INTO event_log (name, value) VALUES ('purged_through', 0);
