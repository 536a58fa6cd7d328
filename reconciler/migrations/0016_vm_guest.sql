-- What a VM's guest agent (qemu-ga) last told its node agent (issue 12): JSON of
-- `model::GuestState` ({"connected", "addresses", "os_name", "os_version"}), NULL when
-- nothing is known (not running, or no report yet). Cleared when the VM stops.
-- Portable across SQLite and PostgreSQL: TEXT and BIGINT only.

ALTER TABLE vms ADD COLUMN guest TEXT;
