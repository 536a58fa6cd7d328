//! Applying objects in dependency order (projects, pools, networks, firmware, cluster
//! settings, then VMs), stamping the source annotation when one is given, stopping at the first error.

use std::fmt;

use otherix_api::manifest::{Kind, ObjectMeta};
use otherix_api::{ApplyOutcome, Object, SOURCE_ANNOTATION};
use uuid::Uuid;

use crate::target::{ApplyResult, ManyApplied, APPLY_MANY_MAX};
use crate::{ApplyTarget, Error, ObjectRef};

/// `object` with `otherix.dev/source: <source>` added when `source` is given.
pub fn stamp_source(object: &Object, source: Option<&str>) -> Object {
    let mut object = object.clone();
    if let Some(source) = source {
        metadata_mut(&mut object)
            .annotations
            .insert(SOURCE_ANNOTATION.to_owned(), source.to_owned());
    }
    object
}

pub(crate) fn metadata_mut(object: &mut Object) -> &mut ObjectMeta {
    match object {
        Object::Project(m) => &mut m.metadata,
        Object::Vm(m) => &mut m.metadata,
        Object::Pool(m) => &mut m.metadata,
        Object::Network(m) => &mut m.metadata,
        Object::Firmware(m) => &mut m.metadata,
        Object::ClusterSettings(m) => &mut m.metadata,
    }
}

/// One applied object: `vm/web-1 created task=<id>`, `pool/fast unchanged`,
/// `vm/team-a/ci-1 created task=<id>` for a document naming its project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyLine {
    pub kind: Kind,
    /// The project the document named (VMs only).
    pub project: Option<String>,
    pub name: String,
    pub outcome: ApplyOutcome,
    pub task_id: Option<Uuid>,
}

impl ApplyLine {
    pub fn object(&self) -> ObjectRef {
        ObjectRef::in_project(self.kind, self.project.as_deref(), &self.name)
    }
    pub fn reference(&self) -> String {
        self.object().to_string()
    }
}

impl fmt::Display for ApplyLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.reference(), self.outcome)?;
        if let Some(id) = self.task_id {
            write!(f, " task={id}")?;
        }
        Ok(())
    }
}

/// The object whose apply failed, and why.
#[derive(Debug)]
pub struct ApplyFailure {
    pub kind: Kind,
    /// The project the document named (VMs only).
    pub project: Option<String>,
    pub name: String,
    pub error: Error,
}

impl ApplyFailure {
    pub fn new(object: &ObjectRef, error: Error) -> Self {
        ApplyFailure {
            kind: object.kind,
            project: object.project.clone(),
            name: object.name.clone(),
            error,
        }
    }
    pub fn reference(&self) -> String {
        ObjectRef::in_project(self.kind, self.project.as_deref(), &self.name).to_string()
    }
}

/// What [`apply_all`] did: every object applied, in order, and the failure that stopped
/// it (objects after it were not sent).
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub lines: Vec<ApplyLine>,
    pub failure: Option<ApplyFailure>,
}

impl ApplyReport {
    /// The tasks the applied objects emitted, in apply order.
    pub fn task_ids(&self) -> Vec<(String, Uuid)> {
        self.lines
            .iter()
            .filter_map(|l| l.task_id.map(|t| (l.reference(), t)))
            .collect()
    }
}

/// Applies one object (stamped with `source` when given).
pub fn apply_one(
    object: &Object,
    target: &mut dyn ApplyTarget,
    source: Option<&str>,
) -> Result<ApplyLine, ApplyFailure> {
    let object = stamp_source(object, source);
    target
        .apply(&object)
        .map(|r| line(&object, r))
        .map_err(|error| ApplyFailure::new(&ObjectRef::of(&object), error))
}

/// Objects in apply order (dependencies first, otherwise as given).
pub fn in_apply_order(objects: &[Object]) -> Vec<&Object> {
    let mut ordered: Vec<&Object> = objects.iter().collect();
    ordered.sort_by_key(|o| o.kind());
    ordered
}

/// Applies every object in dependency order, stopping at the first error. Consecutive
/// VMs of one project go to the target together ([`ApplyTarget::apply_many`], at most
/// [`APPLY_MANY_MAX`] at a time); the report is the same line per object either way.
pub fn apply_all(
    objects: &[Object],
    target: &mut dyn ApplyTarget,
    source: Option<&str>,
) -> ApplyReport {
    let mut report = ApplyReport::default();
    let ordered: Vec<Object> = in_apply_order(objects)
        .into_iter()
        .map(|o| stamp_source(o, source))
        .collect();
    for run in runs(&ordered) {
        let done = if run.len() == 1 {
            match target.apply(&run[0]) {
                Ok(r) => ManyApplied {
                    results: vec![r],
                    failure: None,
                },
                Err(e) => ManyApplied {
                    results: vec![],
                    failure: Some((0, e)),
                },
            }
        } else {
            target.apply_many(run)
        };
        for (object, r) in run.iter().zip(done.results) {
            report.lines.push(line(object, r));
        }
        if let Some((i, error)) = done.failure {
            let failed = run.get(i).unwrap_or(&run[0]);
            report.failure = Some(ApplyFailure::new(&ObjectRef::of(failed), error));
            break;
        }
    }
    report
}

fn line(object: &Object, r: ApplyResult) -> ApplyLine {
    ApplyLine {
        kind: object.kind(),
        project: object.project().map(str::to_owned),
        name: object.name().to_owned(),
        outcome: r.outcome,
        task_id: r.task_id,
    }
}

/// `ordered` cut into what goes to the target at once: runs of consecutive VMs naming the
/// same project (at most [`APPLY_MANY_MAX`]); every other object alone.
fn runs(ordered: &[Object]) -> Vec<&[Object]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < ordered.len() {
        let first = &ordered[start];
        let mut end = start + 1;
        if first.kind() == Kind::Vm {
            while end < ordered.len()
                && end - start < APPLY_MANY_MAX
                && ordered[end].kind() == Kind::Vm
                && ordered[end].project() == first.project()
            {
                end += 1;
            }
        }
        out.push(&ordered[start..end]);
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Call, FakeTarget};
    use crate::load::load_texts;

    fn objects(text: &str) -> Vec<Object> {
        load_texts(&[("m.yaml".into(), text.into())])
            .unwrap()
            .into_iter()
            .map(|p| p.object)
            .collect()
    }

    const ENV: &str = "\
apiVersion: otherix.dev/v1
kind: VM
metadata: {name: web-1}
spec: {image_url: http://i/x.qcow2, arch: amd64, pool: fast, network: lan}
---
apiVersion: otherix.dev/v1
kind: VM
metadata: {name: web-2}
spec: {image_url: http://i/x.qcow2, arch: amd64}
---
apiVersion: otherix.dev/v1
kind: Network
metadata: {name: lan}
spec: {type: bridge, bridge: br0}
---
apiVersion: otherix.dev/v1
kind: Pool
metadata: {name: fast}
spec: {}
";

    #[test]
    fn apply_all_applies_dependencies_first_and_reports_lines() {
        let mut target = FakeTarget::default();
        let mut objs = objects(ENV);
        objs.rotate_left(2); // VMs first: apply_all orders by itself
        let report = apply_all(&objs, &mut target, None);
        assert!(report.failure.is_none());
        let lines: Vec<String> = report.lines.iter().map(ToString::to_string).collect();
        let task = |n: u128| Uuid::from_u128(n);
        assert_eq!(
            lines,
            [
                "pool/fast created".to_owned(),
                "network/lan created".to_owned(),
                format!("vm/web-1 created task={}", task(1)),
                format!("vm/web-2 created task={}", task(2)),
            ]
        );
        assert_eq!(report.task_ids().len(), 2);
        let again = apply_all(&objs, &mut target, None);
        let lines: Vec<String> = again.lines.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "pool/fast unchanged",
                "network/lan unchanged",
                "vm/web-1 unchanged",
                "vm/web-2 unchanged"
            ]
        );
    }

    #[test]
    fn apply_all_stops_at_first_error_reporting_what_was_applied() {
        let mut target = FakeTarget::default();
        target.fail_apply("vm/web-1", "immutable_field: spec.arch: amd64 -> arm64");
        let report = apply_all(&objects(ENV), &mut target, None);
        let lines: Vec<String> = report.lines.iter().map(ToString::to_string).collect();
        assert_eq!(lines, ["pool/fast created", "network/lan created"]);
        let failure = report.failure.unwrap();
        assert_eq!(failure.reference(), "vm/web-1");
        assert_eq!(
            failure.error.to_string(),
            "immutable_field: spec.arch: amd64 -> arm64"
        );
        let applied: Vec<String> = target
            .calls()
            .iter()
            .filter_map(|c| match c {
                Call::Apply(r, _) => Some(r.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            applied,
            ["pool/fast", "network/lan", "vm/web-1"],
            "web-2 never sent"
        );
    }

    #[test]
    fn apply_all_with_source_stamps_annotation() {
        let mut target = FakeTarget::default();
        apply_all(&objects(ENV)[..1], &mut target, Some("/srv/m"));
        match &target.calls()[0] {
            Call::Apply(r, annotations) => {
                assert_eq!(r, "pool/fast");
                assert_eq!(annotations.get(SOURCE_ANNOTATION).unwrap(), "/srv/m");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn runs_group_consecutive_vms_of_one_project_up_to_the_limit() {
        fn vm(name: &str, project: Option<&str>) -> String {
            let project = project
                .map(|p| format!(", project: {p}"))
                .unwrap_or_default();
            format!(
                "apiVersion: otherix.dev/v1\nkind: VM\nmetadata: {{name: {name}{project}}}\n\
                     spec: {{image_url: http://i/x.qcow2, arch: amd64}}\n"
            )
        }
        let pool = "apiVersion: otherix.dev/v1\nkind: Pool\nmetadata: {name: p}\nspec: {}\n";
        let text = [
            pool.to_owned(),
            vm("a", None),
            vm("b", None),
            vm("c", Some("t")),
            vm("d", Some("t")),
            vm("e", None),
        ]
        .join("---\n");
        let objs = objects(&text);
        let sizes: Vec<Vec<&str>> = runs(&objs)
            .iter()
            .map(|r| r.iter().map(|o| o.name()).collect())
            .collect();
        assert_eq!(
            sizes,
            [vec!["p"], vec!["a", "b"], vec!["c", "d"], vec!["e"]]
        );

        let many: String = (0..APPLY_MANY_MAX + 3)
            .map(|i| vm(&format!("v{i}"), None))
            .collect::<Vec<_>>()
            .join("---\n");
        let objs = objects(&many);
        let lens: Vec<usize> = runs(&objs).iter().map(|r| r.len()).collect();
        assert_eq!(lens, [APPLY_MANY_MAX, 3]);
    }
}
