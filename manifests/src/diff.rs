//! Unified diffs between a live object's projection and the manifest file's object, both
//! in canonical YAML (`--- live/vm/web-1`, `+++ file/vm/web-1`, 3 lines of context). A
//! missing live object diffs against empty text.

use otherix_api::Object;
use similar::TextDiff;

use crate::apply::{metadata_mut, stamp_source};
use crate::project::{live_to_object, to_yaml};
use crate::{ApplyTarget, Error, ObjectRef};

/// Lines of context around each change.
pub const CONTEXT_LINES: usize = 3;

/// The unified diff from `live` (absent: empty) to `file`; empty when they are equal.
pub fn unified_diff(reference: &str, live: Option<&str>, file: &str) -> String {
    let live = live.unwrap_or("");
    if live == file {
        return String::new();
    }
    TextDiff::from_lines(live, file)
        .unified_diff()
        .context_radius(CONTEXT_LINES)
        .header(&format!("live/{reference}"), &format!("file/{reference}"))
        .to_string()
}

/// One object's live and file projections and the diff between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectDiff {
    /// `vm/web-1`.
    pub reference: String,
    /// The live projection; `None` when the object does not exist.
    pub live: Option<String>,
    pub file: String,
    /// Empty when equal.
    pub diff: String,
}

impl ObjectDiff {
    /// Diffs a file object (already stamped, if it will be) against a live projection.
    pub fn new(object: &Object, live: Option<String>) -> Result<ObjectDiff, Error> {
        let reference = object.reference();
        let file = to_yaml(object)?;
        let diff = unified_diff(&reference, live.as_deref(), &file);
        Ok(ObjectDiff {
            reference,
            live,
            file,
            diff,
        })
    }

    pub fn is_same(&self) -> bool {
        self.diff.is_empty()
    }
}

/// The live projection of `object`'s counterpart, `None` if there is none. It was looked
/// up where the document points (its `metadata.project`, else the target's project), so
/// it carries the document's `metadata.project`: where a VM lives is not a difference.
pub fn live_projection(
    target: &mut dyn ApplyTarget,
    object: &Object,
) -> Result<Option<String>, Error> {
    let kind = object.kind();
    target
        .get(&ObjectRef::of(object))?
        .map(|live| {
            let mut projected = live_to_object(kind, &live)?;
            metadata_mut(&mut projected).project = object.metadata().project.clone();
            to_yaml(&projected)
        })
        .transpose()
}

/// Diffs every object against the live state, in the given order. With `source`, the
/// file side carries the source annotation apply would stamp.
pub fn diff_objects(
    objects: &[Object],
    target: &mut dyn ApplyTarget,
    source: Option<&str>,
) -> Result<Vec<ObjectDiff>, Error> {
    objects
        .iter()
        .map(|o| {
            let o = stamp_source(o, source);
            let live = live_projection(target, &o)?;
            ObjectDiff::new(&o, live)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{live_json, FakeTarget};
    use crate::load::load_path;
    use otherix_api::manifest::Kind;

    fn examples() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/manifests")
    }

    #[test]
    fn unified_diff_equal_is_empty() {
        assert_eq!(unified_diff("vm/a", Some("x\n"), "x\n"), "");
    }

    #[test]
    fn unified_diff_change_has_headers_and_context() {
        let live = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let file = "a\nb\nc\nd\nE\nf\ng\nh\n";
        assert_eq!(
            unified_diff("vm/web-1", Some(live), file),
            "--- live/vm/web-1\n+++ file/vm/web-1\n@@ -2,7 +2,7 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n"
        );
    }

    #[test]
    fn unified_diff_missing_live_is_all_added() {
        assert_eq!(
            unified_diff("pool/fast", None, "a\nb\n"),
            "--- live/pool/fast\n+++ file/pool/fast\n@@ -0,0 +1,2 @@\n+a\n+b\n"
        );
    }

    #[test]
    fn examples_project_back_to_themselves_with_empty_diff() {
        let mut seen = 0;
        for file in crate::load::manifest_files(&examples()).unwrap() {
            let objects = load_path(&file).unwrap();
            for parsed in objects {
                let object = parsed.object;
                let live = live_json(&object);
                // The project is where the object was found, not content.
                let mut back = live_to_object(object.kind(), &live).unwrap();
                assert_eq!(back.project(), None);
                metadata_mut(&mut back).project = object.metadata().project.clone();
                assert_eq!(back, object, "{}", file.display());
                let mut target = FakeTarget::default();
                target.put_live_in(object.kind(), object.project(), object.name(), live);
                let projected = live_projection(&mut target, &object).unwrap();
                let d = ObjectDiff::new(&object, projected).unwrap();
                assert!(d.is_same(), "{}: {}", file.display(), d.diff);
                seen += 1;
            }
        }
        assert!(seen >= 6, "only {seen} example objects");
    }

    #[test]
    fn diff_objects_reports_change_and_missing() {
        let objects: Vec<Object> = load_path(&examples().join("env.yaml"))
            .unwrap()
            .into_iter()
            .map(|p| p.object)
            .collect();
        let mut target = FakeTarget::default();
        for o in &objects {
            let mut live = live_json(o);
            if o.name() == "app-1" {
                live["spec"]["vcpus"] = 4.into();
            }
            if o.kind() != Kind::ClusterSettings {
                target.put_live(o.kind(), o.name(), live);
            }
        }
        let diffs = diff_objects(&objects, &mut target, None).unwrap();
        let changed: Vec<(&str, &str)> = diffs
            .iter()
            .filter(|d| !d.is_same())
            .map(|d| (d.reference.as_str(), d.diff.as_str()))
            .collect();
        assert_eq!(changed.len(), 2, "{changed:?}");
        assert_eq!(changed[0].0, "cluster/cluster");
        assert!(changed[0].1.contains("@@ -0,0 +1,"), "{}", changed[0].1);
        assert_eq!(changed[1].0, "vm/app-1");
        assert!(
            changed[1].1.contains("-  vcpus: 4\n+  vcpus: 1\n"),
            "{}",
            changed[1].1
        );
    }

    #[test]
    fn diff_objects_with_source_expects_the_stamp() {
        let objects: Vec<Object> = load_path(&examples().join("pool.yaml"))
            .unwrap()
            .into_iter()
            .map(|p| p.object)
            .collect();
        let mut target = FakeTarget::default();
        let stamped = stamp_source(&objects[0], Some("/srv/m"));
        target.put_live(Kind::Pool, "fast", live_json(&stamped));
        assert!(diff_objects(&objects, &mut target, Some("/srv/m")).unwrap()[0].is_same());
        let d = &diff_objects(&objects, &mut target, None).unwrap()[0];
        assert!(
            d.diff
                .contains("-  annotations:\n-    otherix.dev/source: /srv/m\n"),
            "{}",
            d.diff
        );
    }
}
