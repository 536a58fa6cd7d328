-- Node enrollment: one-time join tokens (only the SHA-256 of the secret is stored) and
-- the client certificates issued to nodes, so the gateway can refuse unknown and revoked
-- ones. Portable across SQLite and PostgreSQL: TEXT and BIGINT only, times in epoch ms.
CREATE TABLE join_tokens (
    id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL UNIQUE,
    node TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0,
    used_at_ms BIGINT
);
CREATE INDEX join_tokens_node ON join_tokens (node);

CREATE TABLE node_certs (
    fingerprint TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    issued_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);
CREATE INDEX node_certs_node ON node_certs (node);
