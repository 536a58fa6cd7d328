-- Identity: projects (with quotas), API tokens (stored as sha256 of the secret), and the
-- project of every VM and task. Portable across SQLite and PostgreSQL: TEXT and BIGINT only.

CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    annotations TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    -- Touched by every quota-checked VM write so concurrent writers of one project queue
    -- up on this row (a row lock on PostgreSQL, the write lock on SQLite).
    updated_at_ms BIGINT NOT NULL
);

INSERT INTO projects (id, name, spec, annotations, created_at_ms, updated_at_ms) VALUES
    ('0b7d4a52-5c1e-4c43-9f0e-5eab10600001', 'default', '{}', '{}', 0, 0);

CREATE TABLE api_tokens (
    name TEXT PRIMARY KEY,
    -- hex sha256 of the secret; the secret itself is never stored.
    secret_sha256 TEXT NOT NULL UNIQUE,
    project TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT,
    created_by TEXT NOT NULL
);

ALTER TABLE vms ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
-- The spec's vcpus and memory_mb, kept as columns so quota usage is a SUM, not a parse of
-- every spec. NULL on rows written before this migration; filled in at start-up.
ALTER TABLE vms ADD COLUMN vcpus BIGINT;
ALTER TABLE vms ADD COLUMN memory_mb BIGINT;
-- The token whose request last changed the VM's desired state; handed to the next task
-- the reconciler emits (then cleared), like requested_op.
ALTER TABLE vms ADD COLUMN requested_by TEXT;

DROP INDEX vms_live_name;
CREATE UNIQUE INDEX vms_live_project_name ON vms (project, name) WHERE deleted_at IS NULL;

ALTER TABLE tasks ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
ALTER TABLE tasks ADD COLUMN requested_by TEXT;
CREATE INDEX tasks_project_created ON tasks (project, created_at, id);
