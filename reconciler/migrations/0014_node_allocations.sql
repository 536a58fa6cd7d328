-- Per-node allocation counters (issue 11): what the live, placed, not-failed VMs on a node
-- hold, moved in the transaction of every VM row write (store/allocations.rs), so the
-- capacity claim and `GET /v1/nodes` read one row instead of summing every VM.
ALTER TABLE nodes ADD COLUMN allocated_vms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN allocated_vcpus BIGINT NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN allocated_memory_mb BIGINT NOT NULL DEFAULT 0;
UPDATE nodes SET
    allocated_vms = (SELECT COUNT(*) FROM vms v WHERE v.node = nodes.name
        AND v.deleted_at IS NULL AND v.phase <> 'failed'),
    allocated_vcpus = (SELECT COALESCE(SUM(v.vcpus), 0) FROM vms v WHERE v.node = nodes.name
        AND v.deleted_at IS NULL AND v.phase <> 'failed'),
    allocated_memory_mb = (SELECT COALESCE(SUM(v.memory_mb), 0) FROM vms v
        WHERE v.node = nodes.name AND v.deleted_at IS NULL AND v.phase <> 'failed');
-- `vm list --status P` pages through the VMs stored in phase P in cursor order.
CREATE INDEX vms_phase_created ON vms (phase, created_at, id);
-- `vm list --node N` / `--pool P` page in cursor order within the filter.
CREATE INDEX vms_node_created ON vms (node, created_at, id);
CREATE INDEX vms_pool_created ON vms (pool, created_at, id);
-- A VM's tasks (retention keeps each live VM's newest task; the in-flight lookups).
CREATE INDEX tasks_vm_created ON tasks (vm_id, created_at);
