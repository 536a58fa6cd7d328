-- The cluster CA, so several replicas on one database present certificates of one CA
-- (agents pin it through their join token, the CLI pins it too). One row (id = 1),
-- inserted by the first replica that starts (INSERT ... ON CONFLICT DO NOTHING, then read
-- back). The key is stored unencrypted: access to the database is already
-- cluster-admin-equivalent. Portable: TEXT and BIGINT only.
CREATE TABLE cluster_ca (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    cert_pem TEXT NOT NULL,
    key_pem TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
