//! Deleting declared objects (`delete -f`) and pruning owned objects whose documents are
//! gone (`--prune`): ownership rules and reverse dependency order (VMs, then firmware,
//! networks, pools; cluster settings are never deleted). A VM's delete is async, so the
//! VMs' delete tasks are waited for before a pool or network they may use is deleted.

use std::fmt;

use otherix_api::manifest::Kind;
use otherix_api::SOURCE_ANNOTATION;
use serde_json::Value;
use uuid::Uuid;

use crate::apply::ApplyFailure;
use crate::{reference, ApplyTarget, DeleteResult, ObjectRef};

/// Whether live `annotations` (a JSON map, possibly absent) carry exactly `source`.
pub fn is_owned(annotations: Option<&Value>, source: &str) -> bool {
    annotations
        .and_then(|a| a.get(SOURCE_ANNOTATION))
        .and_then(Value::as_str)
        == Some(source)
}

/// The live objects of one kind (as list endpoints return them) owned by `source`.
/// Cluster settings and built-in firmware are never owned.
pub fn filter_owned(kind: Kind, items: &[Value], source: &str) -> Vec<ObjectRef> {
    if kind == Kind::ClusterSettings {
        return Vec::new();
    }
    items
        .iter()
        .filter(|item| item.get("builtin").and_then(Value::as_bool) != Some(true))
        .filter(|item| is_owned(item.get("annotations"), source))
        .filter_map(|item| item.get("name").and_then(Value::as_str))
        .map(|name| (kind, name.to_owned()))
        .collect()
}

/// `refs` in delete order (dependents first), without duplicates and without cluster
/// settings; stable within a kind.
pub fn plan_delete(refs: &[ObjectRef]) -> Vec<ObjectRef> {
    let mut planned: Vec<ObjectRef> = Vec::new();
    for r in refs {
        if r.0 != Kind::ClusterSettings && !planned.contains(r) {
            planned.push(r.clone());
        }
    }
    planned.sort_by_key(|(kind, _)| std::cmp::Reverse(*kind));
    planned
}

/// What to prune: owned live objects no document declares any more, in delete order.
/// `owned_live` must already be only this source's objects ([`ApplyTarget::list_owned`]).
pub fn plan_prune(declared: &[ObjectRef], owned_live: &[ObjectRef]) -> Vec<ObjectRef> {
    let gone: Vec<ObjectRef> = owned_live
        .iter()
        .filter(|r| !declared.contains(r))
        .cloned()
        .collect();
    plan_delete(&gone)
}

/// How delete lines name the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteVerb {
    /// `delete -f`: `vm/web-1 deleted`.
    Deleted,
    /// `--prune`: `vm/web-1 pruned`.
    Pruned,
}

/// One deleted object: `vm/web-1 deleted task=<id>`, `pool/fast pruned`,
/// `vm/web-1 not found`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteLine {
    pub kind: Kind,
    pub name: String,
    pub verb: DeleteVerb,
    pub result: DeleteResult,
}

impl DeleteLine {
    pub fn reference(&self) -> String {
        reference(self.kind, &self.name)
    }
    pub fn task_id(&self) -> Option<Uuid> {
        match self.result {
            DeleteResult::Deleted { task_id } => task_id,
            DeleteResult::NotFound => None,
        }
    }
}

impl fmt::Display for DeleteLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match (self.result, self.verb) {
            (DeleteResult::NotFound, _) => "not found",
            (_, DeleteVerb::Deleted) => "deleted",
            (_, DeleteVerb::Pruned) => "pruned",
        };
        write!(f, "{} {verb}", self.reference())?;
        if let Some(id) = self.task_id() {
            write!(f, " task={id}")?;
        }
        Ok(())
    }
}

/// What [`delete_all`] did.
#[derive(Debug, Default)]
pub struct DeleteReport {
    pub lines: Vec<DeleteLine>,
    /// Delete tasks already waited for (before deleting what the VMs used).
    pub waited: Vec<Uuid>,
    pub failure: Option<ApplyFailure>,
}

/// Deletes `refs` in delete order, stopping at the first error; `on_line` sees each line
/// as it happens. Before the first non-VM object, waits for the VM delete tasks issued
/// so far.
pub fn delete_all(
    refs: &[ObjectRef],
    target: &mut dyn ApplyTarget,
    verb: DeleteVerb,
    on_line: &mut dyn FnMut(&DeleteLine),
) -> DeleteReport {
    let mut report = DeleteReport::default();
    let mut pending: Vec<Uuid> = Vec::new();
    for (kind, name) in plan_delete(refs) {
        let fail = |error| ApplyFailure {
            kind,
            name: name.clone(),
            error,
        };
        if kind != Kind::Vm {
            for task in std::mem::take(&mut pending) {
                if let Err(e) = target.wait_task(task) {
                    report.failure = Some(fail(e));
                    return report;
                }
                report.waited.push(task);
            }
        }
        match target.delete(kind, &name) {
            Ok(result) => {
                let line = DeleteLine {
                    kind,
                    name: name.clone(),
                    verb,
                    result,
                };
                pending.extend(line.task_id());
                on_line(&line);
                report.lines.push(line);
            }
            Err(e) => {
                report.failure = Some(fail(e));
                return report;
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Call, FakeTarget};
    use serde_json::json;

    fn r(kind: Kind, name: &str) -> ObjectRef {
        (kind, name.to_owned())
    }

    #[test]
    fn is_owned_table() {
        let table = [
            (Some(json!({"otherix.dev/source": "/srv/m"})), true),
            (Some(json!({"otherix.dev/source": "/srv/other"})), false),
            (Some(json!({"otherix.dev/source": "/srv/m/sub"})), false),
            (Some(json!({"owner": "/srv/m"})), false),
            (Some(json!({})), false),
            (Some(Value::Null), false),
            (None, false),
        ];
        for (annotations, want) in table {
            assert_eq!(
                is_owned(annotations.as_ref(), "/srv/m"),
                want,
                "{annotations:?}"
            );
        }
    }

    #[test]
    fn filter_owned_skips_other_sources_unannotated_builtin_and_cluster() {
        let items = vec![
            json!({"name": "mine", "annotations": {"otherix.dev/source": "/srv/m"}}),
            json!({"name": "theirs", "annotations": {"otherix.dev/source": "/srv/x"}}),
            json!({"name": "bare"}),
            json!({"name": "ovmf", "builtin": true, "annotations": {"otherix.dev/source": "/srv/m"}}),
        ];
        assert_eq!(
            filter_owned(Kind::Firmware, &items, "/srv/m"),
            vec![r(Kind::Firmware, "mine")]
        );
        assert!(filter_owned(Kind::ClusterSettings, &items, "/srv/m").is_empty());
    }

    #[test]
    fn plan_prune_table() {
        let table: Vec<(Vec<ObjectRef>, Vec<ObjectRef>, Vec<ObjectRef>)> = vec![
            // Nothing owned: nothing pruned.
            (vec![r(Kind::Vm, "a")], vec![], vec![]),
            // Everything still declared.
            (vec![r(Kind::Vm, "a")], vec![r(Kind::Vm, "a")], vec![]),
            // Same name, other kind: the pool is gone.
            (
                vec![r(Kind::Vm, "a")],
                vec![r(Kind::Pool, "a"), r(Kind::Vm, "a")],
                vec![r(Kind::Pool, "a")],
            ),
            // Reverse dependency order: VMs, firmware, networks, pools.
            (
                vec![],
                vec![
                    r(Kind::Pool, "p"),
                    r(Kind::Network, "n"),
                    r(Kind::Vm, "v1"),
                    r(Kind::Firmware, "f"),
                    r(Kind::Vm, "v2"),
                ],
                vec![
                    r(Kind::Vm, "v1"),
                    r(Kind::Vm, "v2"),
                    r(Kind::Firmware, "f"),
                    r(Kind::Network, "n"),
                    r(Kind::Pool, "p"),
                ],
            ),
            // Cluster settings are never pruned.
            (vec![], vec![r(Kind::ClusterSettings, "cluster")], vec![]),
        ];
        for (declared, owned, want) in table {
            assert_eq!(
                plan_prune(&declared, &owned),
                want,
                "{declared:?} {owned:?}"
            );
        }
    }

    #[test]
    fn prune_never_touches_other_sources_or_unannotated_objects() {
        let mut target = FakeTarget::default();
        let live = |name: &str, source: Option<&str>| {
            let annotations = source.map_or(json!({}), |s| json!({"otherix.dev/source": s}));
            json!({"name": name, "annotations": annotations, "spec": {}})
        };
        target.put_live(Kind::Pool, "mine", live("mine", Some("/srv/m")));
        target.put_live(Kind::Pool, "kept", live("kept", Some("/srv/m")));
        target.put_live(Kind::Pool, "theirs", live("theirs", Some("/srv/x")));
        target.put_live(Kind::Pool, "manual", live("manual", None));
        let owned = target.list_owned("/srv/m").unwrap();
        let plan = plan_prune(&[r(Kind::Pool, "kept")], &owned);
        assert_eq!(plan, vec![r(Kind::Pool, "mine")]);
        let report = delete_all(&plan, &mut target, DeleteVerb::Pruned, &mut |_| {});
        let lines: Vec<String> = report.lines.iter().map(ToString::to_string).collect();
        assert_eq!(lines, ["pool/mine pruned"]);
        assert_eq!(
            target.live_refs(),
            ["pool/kept", "pool/manual", "pool/theirs"]
        );
    }

    #[test]
    fn delete_all_waits_for_vm_tasks_before_pools_and_reports_not_found() {
        let mut target = FakeTarget::default();
        target.put_live(Kind::Vm, "web-1", json!({"name": "web-1"}));
        target.put_live(Kind::Pool, "fast", json!({"name": "fast"}));
        let refs = vec![
            r(Kind::Pool, "fast"),
            r(Kind::ClusterSettings, "cluster"),
            r(Kind::Vm, "web-1"),
            r(Kind::Vm, "web-2"),
        ];
        let mut streamed = 0;
        let report = delete_all(&refs, &mut target, DeleteVerb::Deleted, &mut |_| {
            streamed += 1
        });
        assert_eq!(streamed, 3);
        let task = Uuid::from_u128(1);
        let lines: Vec<String> = report.lines.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                format!("vm/web-1 deleted task={task}"),
                "vm/web-2 not found".to_owned(),
                "pool/fast deleted".to_owned(),
            ]
        );
        assert_eq!(report.waited, [task]);
        assert_eq!(
            target.calls(),
            [
                Call::Delete("vm/web-1".into()),
                Call::Delete("vm/web-2".into()),
                Call::Wait(task),
                Call::Delete("pool/fast".into()),
            ]
        );
    }
}
