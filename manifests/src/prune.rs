//! Deleting declared objects (`delete -f`) and pruning owned objects whose documents are
//! gone (`--prune`): ownership rules and reverse dependency order (VMs, then firmware,
//! networks, pools, projects; cluster settings are never deleted). A VM's delete is
//! async, so the VMs' delete tasks are waited for before a pool, network or project they
//! may use is deleted.
//!
//! VMs are found in every project the documents name plus the target's own; declared and
//! owned references are compared in one form, where the target's own project is `None`
//! ([`relative`]), so `metadata.project: default` and no `metadata.project` are the same
//! VM when the target's project is `default`.

use std::fmt;

use otherix_api::manifest::Kind;
use otherix_api::{Object, DEFAULT_PROJECT, SOURCE_ANNOTATION};
use serde_json::Value;
use uuid::Uuid;

use crate::apply::ApplyFailure;
use crate::{ApplyTarget, DeleteResult, Error, ObjectRef};

/// Whether live `annotations` (a JSON map, possibly absent) carry exactly `source`.
pub fn is_owned(annotations: Option<&Value>, source: &str) -> bool {
    annotations
        .and_then(|a| a.get(SOURCE_ANNOTATION))
        .and_then(Value::as_str)
        == Some(source)
}

/// The live objects of one kind (as list endpoints return them) owned by `source`.
/// Cluster settings, built-in firmware and the `default` project are never owned. A VM
/// gets the `project` its item names, else `listed_in` (the project it was listed in).
pub fn filter_owned(
    kind: Kind,
    items: &[Value],
    source: &str,
    listed_in: Option<&str>,
) -> Vec<ObjectRef> {
    if kind == Kind::ClusterSettings {
        return Vec::new();
    }
    items
        .iter()
        .filter(|item| item.get("builtin").and_then(Value::as_bool) != Some(true))
        .filter(|item| is_owned(item.get("annotations"), source))
        .filter_map(|item| {
            let name = item.get("name").and_then(Value::as_str)?;
            if kind == Kind::Project && name == DEFAULT_PROJECT {
                return None;
            }
            let project = kind
                .in_project()
                .then(|| item.get("project").and_then(Value::as_str).or(listed_in))
                .flatten();
            Some(ObjectRef::in_project(kind, project, name))
        })
        .collect()
}

/// `object` with the target's own project (`default_project`) written as `None`.
pub fn relative(mut object: ObjectRef, default_project: &str) -> ObjectRef {
    if object.project.as_deref() == Some(default_project) || !object.kind.in_project() {
        object.project = None;
    }
    object
}

/// What `objects` declare, in the relative form ([`relative`]).
pub fn declared_refs(objects: &[Object], default_project: &str) -> Vec<ObjectRef> {
    objects
        .iter()
        .map(|o| relative(ObjectRef::of(o), default_project))
        .collect()
}

/// The live objects `source` owns, in the relative form, with VMs looked up in the
/// target's project and in every project `objects` name.
pub fn owned_refs(
    target: &mut dyn ApplyTarget,
    source: &str,
    objects: &[Object],
) -> Result<(Vec<ObjectRef>, String), Error> {
    let default_project = target.default_project()?;
    let mut projects = vec![default_project.clone()];
    for p in objects.iter().filter_map(Object::project) {
        if !projects.iter().any(|q| q == p) {
            projects.push(p.to_owned());
        }
    }
    let mut owned: Vec<ObjectRef> = Vec::new();
    for r in target.list_owned(source, &projects)? {
        let r = relative(r, &default_project);
        if !owned.contains(&r) {
            owned.push(r);
        }
    }
    Ok((owned, default_project))
}

/// `refs` in delete order (dependents first), without duplicates and without cluster
/// settings; stable within a kind.
pub fn plan_delete(refs: &[ObjectRef]) -> Vec<ObjectRef> {
    let mut planned: Vec<ObjectRef> = Vec::new();
    for r in refs {
        if r.kind != Kind::ClusterSettings && !planned.contains(r) {
            planned.push(r.clone());
        }
    }
    planned.sort_by_key(|r| std::cmp::Reverse(r.kind));
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
/// `vm/web-1 not found`, `vm/team-a/ci-1 pruned task=<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteLine {
    pub object: ObjectRef,
    pub verb: DeleteVerb,
    pub result: DeleteResult,
}

impl DeleteLine {
    pub fn reference(&self) -> String {
        self.object.to_string()
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
    for object in plan_delete(refs) {
        let fail = |error| ApplyFailure::new(&object, error);
        if object.kind != Kind::Vm {
            for task in std::mem::take(&mut pending) {
                if let Err(e) = target.wait_task(task) {
                    report.failure = Some(fail(e));
                    return report;
                }
                report.waited.push(task);
            }
        }
        match target.delete(&object) {
            Ok(result) => {
                let line = DeleteLine {
                    object: object.clone(),
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
        ObjectRef::new(kind, name)
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
    fn filter_owned_vm_project_from_item_else_listed_in_and_never_default_project() {
        let mine = json!({"otherix.dev/source": "/srv/m"});
        let vms = vec![
            json!({"name": "a", "project": "team-a", "annotations": mine}),
            json!({"name": "b", "annotations": mine}),
        ];
        assert_eq!(
            filter_owned(Kind::Vm, &vms, "/srv/m", Some("team-b")),
            vec![
                ObjectRef::in_project(Kind::Vm, Some("team-a"), "a"),
                ObjectRef::in_project(Kind::Vm, Some("team-b"), "b"),
            ]
        );
        let projects = vec![
            json!({"name": "default", "annotations": mine}),
            json!({"name": "team-a", "annotations": mine}),
        ];
        assert_eq!(
            filter_owned(Kind::Project, &projects, "/srv/m", Some("x")),
            vec![r(Kind::Project, "team-a")]
        );
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
            filter_owned(Kind::Firmware, &items, "/srv/m", None),
            vec![r(Kind::Firmware, "mine")]
        );
        assert!(filter_owned(Kind::ClusterSettings, &items, "/srv/m", None).is_empty());
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
        let owned = target.list_owned("/srv/m", &[]).unwrap();
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

    fn objects(docs: &[String]) -> Vec<Object> {
        let text = docs.join("---\n");
        crate::load::load_texts(&[("m.yaml".into(), text)])
            .unwrap()
            .into_iter()
            .map(|p| p.object)
            .collect()
    }

    fn vm_doc(name: &str, project: Option<&str>) -> String {
        let project = project.map_or(String::new(), |p| format!("  project: {p}\n"));
        format!("apiVersion: otherix.dev/v1\nkind: VM\nmetadata:\n  name: {name}\n{project}spec: {{image_url: http://i/x.qcow2, arch: amd64}}\n")
    }

    const PROJECT: &str =
        "apiVersion: otherix.dev/v1\nkind: Project\nmetadata: {name: team-a}\nspec: {max_vms: 4}\n";

    /// Applies `docs` as `/srv/m` would, then prunes what they no longer declare.
    fn sync(target: &mut FakeTarget, docs: &[String]) -> Vec<String> {
        let objs = objects(docs);
        let report = crate::apply_all(&objs, target, Some("/srv/m"));
        assert!(report.failure.is_none(), "{:?}", report.failure);
        let mut lines: Vec<String> = report.lines.iter().map(ToString::to_string).collect();
        let (owned, default_project) = owned_refs(target, "/srv/m", &objs).unwrap();
        let plan = plan_prune(&declared_refs(&objs, &default_project), &owned);
        let report = delete_all(&plan, target, DeleteVerb::Pruned, &mut |_| {});
        assert!(report.failure.is_none(), "{:?}", report.failure);
        lines.extend(report.lines.iter().map(ToString::to_string));
        lines
    }

    #[test]
    fn prune_vms_in_two_projects_finds_owned_vms_in_every_named_project() {
        let mut target = FakeTarget::default();
        // Not owned: a hand-made VM of the same name in team-a.
        target.put_live_in(
            Kind::Vm,
            Some("team-a"),
            "manual",
            json!({"name": "manual"}),
        );
        let task = |n: u128| Uuid::from_u128(n);
        // The project is applied first wherever its document is.
        let docs = vec![
            vm_doc("web-1", Some("team-a")),
            vm_doc("web-1", None),
            vm_doc("db", Some("team-a")),
            PROJECT.to_owned(),
        ];
        assert_eq!(
            sync(&mut target, &docs),
            [
                "project/team-a created".to_owned(),
                format!("vm/team-a/web-1 created task={}", task(1)),
                format!("vm/web-1 created task={}", task(2)),
                format!("vm/team-a/db created task={}", task(3)),
            ]
        );
        assert_eq!(
            target.live_refs(),
            [
                "project/team-a",
                "vm/web-1",
                "vm/team-a/db",
                "vm/team-a/manual",
                "vm/team-a/web-1"
            ]
        );
        // Re-applying is a no-op, and VMs are listed in the default project and team-a.
        target.clear_calls();
        let lines = sync(&mut target, &docs);
        assert!(lines.iter().all(|l| l.ends_with(" unchanged")), "{lines:?}");
        assert!(target.calls().contains(&Call::ListOwned(
            "/srv/m".into(),
            vec!["default".into(), "team-a".into()]
        )));

        // team-a's web-1 document is gone: only that VM is pruned, not the default
        // project's VM of the same name. Naming `default` explicitly is the same VM as
        // naming no project.
        let docs = vec![
            PROJECT.to_owned(),
            vm_doc("web-1", Some("default")),
            vm_doc("db", Some("team-a")),
        ];
        let lines = sync(&mut target, &docs);
        assert_eq!(
            lines[lines.len() - 1],
            format!("vm/team-a/web-1 pruned task={}", task(4))
        );
        assert_eq!(
            target.live_refs(),
            [
                "project/team-a",
                "vm/web-1",
                "vm/team-a/db",
                "vm/team-a/manual"
            ]
        );
    }

    #[test]
    fn prune_project_documents_gone_vms_first_then_the_project() {
        let docs = vec![
            PROJECT.to_owned(),
            vm_doc("db", Some("team-a")),
            vm_doc("web-1", None),
        ];
        let remaining = vec![vm_doc("web-1", None)];
        // A target that sees only the projects asked for (a member's) cannot find team-a's
        // VMs once no document names team-a; one that sees every project (an admin's) can.
        for admin in [false, true] {
            let mut target = FakeTarget::default();
            if admin {
                target.see_all_projects();
            }
            sync(&mut target, &docs);
            target.clear_calls();
            let lines = sync(&mut target, &remaining);
            let task = Uuid::from_u128(3);
            if admin {
                assert_eq!(
                    lines,
                    [
                        "vm/web-1 unchanged".to_owned(),
                        format!("vm/team-a/db pruned task={task}"),
                        "project/team-a pruned".to_owned(),
                    ]
                );
                let calls = target.calls();
                let wait = calls.iter().position(|c| *c == Call::Wait(task)).unwrap();
                let delete = calls
                    .iter()
                    .position(|c| *c == Call::Delete("project/team-a".into()))
                    .unwrap();
                assert!(wait < delete, "{calls:?}");
                assert_eq!(target.live_refs(), ["vm/web-1"]);
            } else {
                assert_eq!(lines, ["vm/web-1 unchanged", "project/team-a pruned"]);
            }
        }
    }

    #[test]
    fn owned_refs_relative_to_a_non_default_target_project() {
        let mut target = FakeTarget::default();
        target.set_default_project("team-a");
        target.see_all_projects();
        let docs = vec![vm_doc("web-1", None), vm_doc("web-1", Some("default"))];
        let lines = sync(&mut target, &docs);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(target.live_refs(), ["vm/default/web-1", "vm/web-1"]);
        let lines = sync(&mut target, &docs[..1]);
        assert_eq!(
            lines[1],
            format!("vm/default/web-1 pruned task={}", Uuid::from_u128(3))
        );
        assert_eq!(target.live_refs(), ["vm/web-1"]);
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
