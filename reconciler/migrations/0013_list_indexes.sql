-- Indexes for the list cursors and filters (issue 11): every page is an index range scan.
-- The task cursor across all projects (created_at DESC, id DESC).
CREATE INDEX tasks_created ON tasks (created_at, id);
-- `task list --vm NAME` pages in cursor order.
DROP INDEX tasks_vm_name;
CREATE INDEX tasks_vm_name ON tasks (vm_name, created_at, id);
-- `vm list` of one project pages in cursor order.
CREATE INDEX vms_project_created ON vms (project, created_at, id);
-- Retention: finished tasks and deleted VMs by age.
CREATE INDEX tasks_finished ON tasks (finished_at);
CREATE INDEX vms_deleted ON vms (deleted_at);
