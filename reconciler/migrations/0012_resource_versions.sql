-- Optimistic concurrency on every object users write through the API (VMs have it since
-- 0008): bumped on every write of the row; updates and deletes are compare-and-swap on it
-- (UPDATE/DELETE ... WHERE id = ? AND resource_version = ?), shown as `resource_version`
-- and checked against If-Match. Portable across SQLite and PostgreSQL: TEXT and BIGINT only.

ALTER TABLE pools ADD COLUMN resource_version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE networks ADD COLUMN resource_version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE firmware ADD COLUMN resource_version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE projects ADD COLUMN resource_version BIGINT NOT NULL DEFAULT 1;
-- Tokens are never rewritten (create and revoke only); the version is there so a revoke
-- can be conditional like every other delete.
ALTER TABLE api_tokens ADD COLUMN resource_version BIGINT NOT NULL DEFAULT 1;

-- The cluster settings object spans several settings rows (default_pool,
-- cluster_annotations); its one version is this row, bumped in the transaction that
-- writes any of them.
INSERT INTO settings (key, value) VALUES ('cluster_resource_version', '1')
    ON CONFLICT (key) DO NOTHING;
