-- Declarative apply and the reconcile loop's memory (see reconcile/retry.rs).
-- Portable across SQLite and PostgreSQL: TEXT and BIGINT only, JSON as TEXT.

-- metadata.annotations of the VM, a JSON object (e.g. otherix.dev/source for --prune).
ALTER TABLE vms ADD COLUMN annotations TEXT NOT NULL DEFAULT '{}';
-- The spec the running QEMU was booted with (JSON VmSpec), set when a vm.create, vm.start
-- or vm.reboot succeeds; status.restart_pending compares its boot-time fields with spec.
ALTER TABLE vms ADD COLUMN booted_spec TEXT;
-- When that boot happened (epoch ms); a failure after a long enough run resets backoff.
ALTER TABLE vms ADD COLUMN booted_at BIGINT;
-- A retry the reconciler owes the VM after a failed vm.create / vm.start or a crash:
-- the task kind to emit, the consecutive attempt number, and when (epoch ms) it is due.
ALTER TABLE vms ADD COLUMN retry_kind TEXT;
ALTER TABLE vms ADD COLUMN retry_attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE vms ADD COLUMN retry_at BIGINT;
