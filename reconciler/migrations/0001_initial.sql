-- otherixd schema, portable across SQLite and PostgreSQL: TEXT and BIGINT columns only,
-- uuids as TEXT, timestamps as epoch milliseconds (BIGINT), JSON as TEXT, booleans as 0/1.

CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    arch TEXT NOT NULL,
    guest_arches TEXT NOT NULL,
    accel TEXT NOT NULL,
    vcpus BIGINT NOT NULL,
    memory_mb BIGINT NOT NULL,
    agent_version TEXT NOT NULL,
    status TEXT NOT NULL,
    last_heartbeat_ms BIGINT,
    registered_at_ms BIGINT NOT NULL
);

CREATE TABLE pools (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE pool_instances (
    id TEXT PRIMARY KEY,
    pool_id TEXT NOT NULL REFERENCES pools (id),
    node_id TEXT NOT NULL REFERENCES nodes (id),
    path TEXT NOT NULL,
    UNIQUE (pool_id, node_id)
);

CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE vms (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    generation BIGINT NOT NULL,
    observed_generation BIGINT NOT NULL,
    phase TEXT NOT NULL,
    node TEXT,
    pool TEXT,
    pool_path TEXT,
    pid BIGINT,
    serial_log TEXT,
    requested_op TEXT,
    last_error_code TEXT,
    last_error_message TEXT,
    deletion_requested BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT
);

-- Names are unique among live VMs; soft-deleted rows keep theirs.
CREATE UNIQUE INDEX vms_live_name ON vms (name) WHERE deleted_at IS NULL;
CREATE INDEX vms_created ON vms (created_at, id);
CREATE INDEX vms_node ON vms (node);

CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    vm_id TEXT,
    vm_name TEXT,
    node TEXT,
    status TEXT NOT NULL,
    phase TEXT,
    bytes_done BIGINT,
    bytes_total BIGINT,
    error_code TEXT,
    error_message TEXT,
    placement TEXT,
    idempotency_key TEXT,
    stop_timeout_ms BIGINT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT
);

-- At most one in-flight task per VM.
CREATE UNIQUE INDEX tasks_one_in_flight ON tasks (vm_id) WHERE status IN ('pending', 'running');
CREATE INDEX tasks_vm_name ON tasks (vm_name, created_at);
CREATE INDEX tasks_node_status ON tasks (node, status);
