-- The directories the node's agent takes firmware files from (--firmware-dir), as a JSON
-- array of absolute paths; '[]' for agents that predate it (they use the default dirs).
-- A Firmware entity's files must lie inside the union of the ready nodes' directories.
-- Portable across SQLite and PostgreSQL: TEXT only.
ALTER TABLE nodes ADD COLUMN firmware_dirs TEXT NOT NULL DEFAULT '[]';
