-- Whether the node's agent was started with --allow-file-urls (0 or 1): the scheduler
-- places a VM whose spec.image_url is a file:// URL only on such nodes.
-- Portable across SQLite and PostgreSQL: BIGINT only.
ALTER TABLE nodes ADD COLUMN allow_file_urls BIGINT NOT NULL DEFAULT 0;
