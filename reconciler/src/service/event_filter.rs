//! Which events a stream sends, pure: the caller's visibility (the project(s) its scope
//! resolved to) and the request's filters (`kind=`, `vm=`). Table tested.

use otherix_api::EventKind;

/// What one `GET /v1/events` asked for, and may see.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventFilter {
    /// `None`: every project (an admin's `all_projects=true`); else this project only.
    pub project: Option<String>,
    /// `kind=`: only these kinds (`None`: all).
    pub kinds: Option<Vec<EventKind>>,
    /// `vm=NAME`: only events about this VM (the VM's own and its tasks').
    pub vm: Option<String>,
}

impl EventFilter {
    /// Whether an event of `kind`, owned by `project` (VMs, tasks, projects; `None` for
    /// cluster-wide kinds) and about VM `vm`, is sent.
    pub fn matches(&self, kind: EventKind, project: Option<&str>, vm: Option<&str>) -> bool {
        if let Some(kinds) = &self.kinds {
            if !kinds.contains(&kind) {
                return false;
            }
        }
        if let Some(want) = &self.vm {
            if vm != Some(want.as_str()) {
                return false;
            }
        }
        visible(self.project.as_deref(), kind, project)
    }
}

/// The visibility rule: cluster-wide kinds (nodes, pools, networks, firmware, cluster
/// settings) are readable by every role, so every stream may carry them; VMs, tasks and
/// projects only within the scope's project (every project for `None`).
pub fn visible(scope: Option<&str>, kind: EventKind, owner: Option<&str>) -> bool {
    if !kind.project_scoped() {
        return true;
    }
    match (scope, owner) {
        (None, _) => true,
        (Some(s), Some(o)) => s == o,
        (Some(_), None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EventKind::*;

    #[test]
    fn visible_table() {
        let table = [
            (Some("a"), Vm, Some("a"), true),
            (Some("a"), Vm, Some("b"), false),
            (Some("a"), Task, Some("b"), false),
            (Some("a"), Project, Some("b"), false),
            (Some("a"), Project, Some("a"), true),
            (Some("a"), Node, None, true),
            (Some("a"), Cluster, None, true),
            (Some("a"), Vm, None, false),
            (None, Vm, Some("b"), true),
            (None, Pool, None, true),
        ];
        for (scope, kind, owner, want) in table {
            assert_eq!(
                visible(scope, kind, owner),
                want,
                "{scope:?} {kind} {owner:?}"
            );
        }
    }

    #[test]
    fn event_filter_matches_table() {
        let member_a = EventFilter {
            project: Some("a".into()),
            ..Default::default()
        };
        let vms_only = EventFilter {
            project: Some("a".into()),
            kinds: Some(vec![Vm]),
            vm: None,
        };
        let web1 = EventFilter {
            project: Some("a".into()),
            kinds: None,
            vm: Some("web-1".into()),
        };
        let web1_tasks_all = EventFilter {
            project: None,
            kinds: Some(vec![Task]),
            vm: Some("web-1".into()),
        };
        let table = [
            (&member_a, Vm, Some("a"), Some("web-1"), true),
            (&member_a, Vm, Some("b"), Some("web-1"), false),
            (&member_a, Node, None, None, true),
            (&vms_only, Vm, Some("a"), Some("web-1"), true),
            (&vms_only, Task, Some("a"), Some("web-1"), false),
            (&vms_only, Node, None, None, false),
            (&web1, Vm, Some("a"), Some("web-1"), true),
            (&web1, Task, Some("a"), Some("web-1"), true),
            (&web1, Vm, Some("a"), Some("web-2"), false),
            (&web1, Node, None, None, false),
            (&web1, Vm, Some("b"), Some("web-1"), false),
            (&web1_tasks_all, Task, Some("b"), Some("web-1"), true),
            (&web1_tasks_all, Vm, Some("b"), Some("web-1"), false),
        ];
        for (i, (f, kind, project, vm, want)) in table.into_iter().enumerate() {
            assert_eq!(f.matches(kind, project, vm), want, "row {i}");
        }
    }
}
