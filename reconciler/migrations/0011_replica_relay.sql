-- Several replicas on one database. Portable: TEXT and BIGINT only.
-- The replica whose gateway holds the node's agent stream (NULL: no stream); set on
-- attach, cleared on detach by the same replica.
ALTER TABLE nodes ADD COLUMN stream_replica TEXT;

-- A synchronous operation (pause, resume, reset, logs, images) asked on a replica that
-- does not hold the node's stream: the holder claims the row, runs it over its stream
-- and writes the reply. Request and reply are the protobuf messages, hex-encoded.
CREATE TABLE sync_calls (
    id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    request TEXT NOT NULL,
    timeout_ms BIGINT NOT NULL,
    claimed_by TEXT,
    reply TEXT,
    error TEXT,
    created_at_ms BIGINT NOT NULL,
    finished_at_ms BIGINT
);
