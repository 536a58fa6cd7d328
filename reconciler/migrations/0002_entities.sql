-- Entities the VM spec points at (pools with spec and annotations, networks, firmware),
-- what a VM resolved them to at create time, and idempotency keys of async requests.
-- Portable across SQLite and PostgreSQL: TEXT and BIGINT only, JSON as TEXT.

ALTER TABLE pools ADD COLUMN spec TEXT NOT NULL DEFAULT '{}';
ALTER TABLE pools ADD COLUMN annotations TEXT NOT NULL DEFAULT '{}';

CREATE TABLE networks (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    annotations TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE firmware (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    annotations TEXT NOT NULL,
    builtin BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- The built-ins: fixed ids, so every installation names them the same.
INSERT INTO firmware (id, name, spec, annotations, builtin, created_at_ms) VALUES
    ('0b7d4a52-5c1e-4c43-9f0e-5eab10500001', 'seabios',
     '{"arch":"amd64","type":"bios"}', '{}', 1, 0),
    ('0b7d4a52-5c1e-4c43-9f0e-5eab10500002', 'ovmf',
     '{"arch":"amd64","type":"uefi","code":"/usr/share/OVMF/OVMF_CODE_4M.fd","vars_template":"/usr/share/OVMF/OVMF_VARS_4M.fd"}',
     '{}', 1, 0),
    ('0b7d4a52-5c1e-4c43-9f0e-5eab10500003', 'aavmf',
     '{"arch":"arm64","type":"uefi","code":"/usr/share/AAVMF/AAVMF_CODE.fd","vars_template":"/usr/share/AAVMF/AAVMF_VARS.fd"}',
     '{}', 1, 0);

-- What the VM's spec.network / spec.firmware resolved to when it was created (both are
-- immutable): the host bridge, and the firmware as JSON {name, type, code, vars_template}.
ALTER TABLE vms ADD COLUMN bridge TEXT;
ALTER TABLE vms ADD COLUMN firmware TEXT;

-- Idempotency-Key of the request that created a task, and a fingerprint of that request
-- (method, path, body) so a key reused for another request is refused.
ALTER TABLE tasks ADD COLUMN idempotency_request TEXT;
CREATE INDEX tasks_idempotency_key ON tasks (idempotency_key);
