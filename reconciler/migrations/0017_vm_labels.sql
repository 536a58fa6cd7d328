-- VM labels (issue 12): `metadata.labels` as a JSON object, what `vm list -l key=value`
-- selects on. (0016 is the guest agent's column.) Portable across SQLite and PostgreSQL.
ALTER TABLE vms ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
