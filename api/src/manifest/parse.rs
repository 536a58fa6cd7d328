//! Parses a multi-document YAML manifest file into typed, validated objects. Every problem
//! becomes a [`ManifestError`] `file:line:column: field.path: rule`; all documents are
//! checked and all errors returned, so a bad file applies nothing.

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::kinds::*;
use super::locate::{document_positions, DocPositions, Pos};
pub use crate::validate::valid_ifname;
use crate::validate::{
    validate_cluster_settings_spec, validate_name, validate_network_spec, validate_vm_spec,
};

/// Documents one file may hold.
pub const MAX_DOCUMENTS: usize = 10_000;

/// One manifest problem, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ManifestError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// `field.path: rule`.
    pub message: String,
}

/// A typed object and where it was declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedObject {
    pub object: Object,
    pub file: String,
    pub line: usize,
}

struct DocContext<'a> {
    file: &'a str,
    positions: Option<&'a DocPositions>,
}

impl DocContext<'_> {
    fn error_at(&self, path: &str, message: String) -> ManifestError {
        let pos = self
            .positions
            .and_then(|p| p.find(path))
            .unwrap_or(Pos { line: 1, column: 1 });
        ManifestError {
            file: self.file.to_owned(),
            line: pos.line,
            column: pos.column,
            message,
        }
    }

    /// Locates a validation message of the form `field.path: rule`.
    fn error_from_message(&self, message: String) -> ManifestError {
        let path = message
            .split_once(": ")
            .map(|(p, _)| p.to_owned())
            .unwrap_or_default();
        self.error_at(&path, message)
    }
}

/// Parses every document of `text` (read from `file`, used in messages).
pub fn parse_manifests(file: &str, text: &str) -> Result<Vec<ParsedObject>, Vec<ManifestError>> {
    let positions = match document_positions(text) {
        Ok(p) => p,
        Err(e) => {
            return Err(vec![ManifestError {
                file: file.to_owned(),
                line: e.pos.line,
                column: e.pos.column,
                message: format!("invalid YAML: {}", e.message),
            }])
        }
    };
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        if index >= MAX_DOCUMENTS {
            errors.push(ManifestError {
                file: file.to_owned(),
                line: 1,
                column: 1,
                message: format!("too many documents (at most {MAX_DOCUMENTS} per file)"),
            });
            break;
        }
        let ctx = DocContext {
            file,
            positions: positions.get(index),
        };
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                let (line, column) = e
                    .location()
                    .map(|l| (l.line(), l.column()))
                    .unwrap_or((1, 1));
                errors.push(ManifestError {
                    file: file.to_owned(),
                    line,
                    column,
                    message: format!("invalid YAML: {e}"),
                });
                // serde_yaml's document iterator repeats a syntax error forever; nothing
                // after it in the stream can be trusted anyway.
                break;
            }
        };
        if value.is_null() {
            continue; // An empty document, e.g. a trailing `---`.
        }
        match parse_object(&ctx, value) {
            Ok(object) => {
                let line = ctx.positions.and_then(|p| p.start).map_or(1, |p| p.line);
                objects.push(ParsedObject {
                    object,
                    file: file.to_owned(),
                    line,
                });
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    errors.extend(check_duplicates(&objects));
    if errors.is_empty() {
        Ok(objects)
    } else {
        Err(errors)
    }
}

fn parse_object(ctx: &DocContext, value: serde_yaml::Value) -> Result<Object, Vec<ManifestError>> {
    let Some(map) = value.as_mapping() else {
        return Err(vec![ctx.error_at(
            "",
            "a manifest document must be a mapping with apiVersion, kind, metadata and spec".into(),
        )]);
    };
    let kind_name = match map.get("kind") {
        Some(serde_yaml::Value::String(s)) => s.clone(),
        Some(_) => return Err(vec![ctx.error_at("kind", "kind: must be a string".into())]),
        None => return Err(vec![ctx.error_at("", "kind: required".into())]),
    };
    let Some(kind) = Kind::parse(&kind_name) else {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        return Err(vec![ctx.error_at(
            "kind",
            format!(
                "kind: unknown kind {kind_name:?} (expected one of {})",
                known.join(", ")
            ),
        )]);
    };
    match map.get("apiVersion") {
        Some(serde_yaml::Value::String(v)) if v == API_VERSION => {}
        Some(other) => {
            let shown = serde_yaml::to_string(other).unwrap_or_default();
            return Err(vec![ctx.error_at(
                "apiVersion",
                format!(
                    "apiVersion: must be {API_VERSION} (got {})",
                    shown.trim_end()
                ),
            )]);
        }
        None => {
            return Err(vec![
                ctx.error_at("", format!("apiVersion: required ({API_VERSION})"))
            ])
        }
    }
    let object = match kind {
        Kind::Project => Object::Project(typed(ctx, value)?),
        Kind::Vm => Object::Vm(Box::new(typed(ctx, value)?)),
        Kind::Pool => Object::Pool(typed(ctx, value)?),
        Kind::Network => Object::Network(typed(ctx, value)?),
        Kind::Firmware => Object::Firmware(typed(ctx, value)?),
        Kind::ClusterSettings => Object::ClusterSettings(typed(ctx, value)?),
    };
    validate_object(&object).map_err(|m| vec![ctx.error_from_message(m)])?;
    Ok(object)
}

fn typed<T: DeserializeOwned>(
    ctx: &DocContext,
    value: serde_yaml::Value,
) -> Result<T, Vec<ManifestError>> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = e.into_inner().to_string();
        let message = if path.is_empty() {
            inner
        } else {
            format!("{path}: {inner}")
        };
        vec![ctx.error_at(&path, message)]
    })
}

/// Field rules beyond types; `Err` is a `field.path: rule` message.
fn validate_object(object: &Object) -> Result<(), String> {
    let name = object.name();
    match object {
        Object::ClusterSettings(_) => {
            if name != "cluster" {
                return Err(format!(
                    "metadata.name: ClusterSettings must be named \"cluster\" (got {name:?})"
                ));
            }
        }
        _ => validate_name("metadata.name", name).map_err(|e| e.message)?,
    }
    if let Some(project) = object.project() {
        if !object.kind().in_project() {
            return Err(format!(
                "metadata.project: {} is cluster-wide; only VM documents belong to a project",
                object.kind().as_str()
            ));
        }
        validate_name("metadata.project", project).map_err(|e| e.message)?;
    }
    let labels = &object.metadata().labels;
    if !labels.is_empty() {
        if !matches!(object, Object::Vm(_)) {
            return Err(format!(
                "metadata.labels: only VM documents carry labels (this is a {})",
                object.kind().as_str()
            ));
        }
        crate::labels::validate_labels("metadata.labels", labels).map_err(|e| e.message)?;
    }
    match object {
        Object::Vm(vm) => validate_vm_spec("spec", &vm.spec).map_err(|e| e.message),
        Object::Network(net) => validate_network_spec("spec", &net.spec).map_err(|e| e.message),
        Object::Firmware(fw) => {
            if fw.spec.firmware_type == FirmwareType::Uefi && fw.spec.code.is_none() {
                Err("spec.code: required for type uefi".into())
            } else {
                Ok(())
            }
        }
        Object::ClusterSettings(cs) => {
            validate_cluster_settings_spec("spec", &cs.spec).map_err(|e| e.message)
        }
        Object::Pool(_) | Object::Project(_) => Ok(()),
    }
}

/// Errors for objects declared twice (same kind, project and name) in one set of
/// documents. A VM of the same name in two projects is two objects.
pub fn check_duplicates(objects: &[ParsedObject]) -> Vec<ManifestError> {
    type Key<'a> = (Kind, Option<&'a str>, &'a str);
    let mut seen: std::collections::HashMap<Key, &ParsedObject> = Default::default();
    let mut errors = Vec::new();
    for obj in objects {
        let key = (obj.object.kind(), obj.object.project(), obj.object.name());
        if let Some(first) = seen.get(&key) {
            errors.push(ManifestError {
                file: obj.file.clone(),
                line: obj.line,
                column: 1,
                message: format!(
                    "metadata.name: {} is declared twice (first at {}:{})",
                    obj.object.reference(),
                    first.file,
                    first.line
                ),
            });
        } else {
            seen.insert(key, obj);
        }
    }
    errors
}

/// Orders objects so dependencies come first (projects, pools, networks, firmware, cluster
/// settings, then VMs), keeping file order within a kind.
pub fn sort_for_apply(objects: &mut [ParsedObject]) {
    objects.sort_by_key(|o| o.object.kind());
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = "\
apiVersion: otherix.dev/v1
kind: VM
metadata:
  name: web-1
spec:
  image_url: http://127.0.0.1:8080/busybox.qcow2
  arch: amd64
  vcpus: 2
";

    fn errors(text: &str) -> Vec<String> {
        parse_manifests("web.yaml", text)
            .expect_err("should fail")
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn parse_manifests_valid_vm_parses_with_defaults() {
        let objs = parse_manifests("web.yaml", VM).unwrap();
        assert_eq!(objs.len(), 1);
        let Object::Vm(vm) = &objs[0].object else {
            panic!("not a VM")
        };
        assert_eq!(vm.metadata.name, "web-1");
        assert_eq!(vm.spec.memory_mb, 2048);
        assert_eq!(objs[0].object.reference(), "vm/web-1");
    }

    #[test]
    fn parse_manifests_error_table_has_locations() {
        let table: &[(&str, &str)] = &[
            (
                &VM.replace("vcpus: 2", "vcpus: 0"),
                "web.yaml:8:3: spec.vcpus: must be 1..128 (got 0)",
            ),
            (
                &VM.replace("vcpus: 2", "vcpu: 2"),
                "web.yaml:8:3: spec.vcpu: unknown field `vcpu`",
            ),
            (
                &VM.replace("vcpus: 2", "vcpus: two"),
                "web.yaml:8:3: spec.vcpus: invalid type",
            ),
            (
                &VM.replace("arch: amd64", "arch: sparc"),
                "web.yaml:7:3: spec.arch: unknown variant `sparc`",
            ),
            (
                &VM.replace("name: web-1", "name: Web_1"),
                "web.yaml:4:3: metadata.name: \"Web_1\" is not a valid name",
            ),
            (
                &VM.replace("kind: VM", "kind: Vm"),
                "web.yaml:2:1: kind: unknown kind \"Vm\"",
            ),
            (
                &VM.replace("otherix.dev/v1", "otherix.dev/v2"),
                "web.yaml:1:1: apiVersion: must be otherix.dev/v1 (got otherix.dev/v2)",
            ),
            (
                &VM.replace("  image_url: http://127.0.0.1:8080/busybox.qcow2\n", ""),
                "web.yaml:5:1: spec: missing field `image_url`",
            ),
            (
                "apiVersion: otherix.dev/v1\nkind: Network\nmetadata: {name: br}\nspec:\n  type: bridge\n",
                "web.yaml:4:1: spec.bridge: required for type bridge",
            ),
            ("a: [1, 2\n", "web.yaml:"),
        ];
        for (text, want) in table {
            let errs = errors(text);
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "want prefix {want:?}, got {errs:?}"
            );
        }
    }

    #[test]
    fn parse_manifests_reports_every_bad_document() {
        let text = format!(
            "{}---\n{}",
            VM.replace("vcpus: 2", "vcpus: 0"),
            VM.replace("web-1", "web-2")
                .replace("arch: amd64", "arch: x")
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[1].starts_with("web.yaml:16:3: spec.arch"), "{errs:?}");
    }

    #[test]
    fn parse_manifests_duplicate_objects_rejected() {
        let text = format!("{VM}---\n{VM}");
        let errs = errors(&text);
        assert!(
            errs[0].contains("vm/web-1 is declared twice (first at web.yaml:1)"),
            "{errs:?}"
        );
    }

    #[test]
    fn sort_for_apply_puts_dependencies_first() {
        let text = format!(
            "{VM}---\napiVersion: otherix.dev/v1\nkind: Pool\nmetadata: {{name: fast}}\nspec: {{}}\n---\napiVersion: otherix.dev/v1\nkind: Network\nmetadata: {{name: lan}}\nspec: {{type: bridge, bridge: br0}}\n"
        );
        let mut objs = parse_manifests("env.yaml", &text).unwrap();
        sort_for_apply(&mut objs);
        let refs: Vec<String> = objs.iter().map(|o| o.object.reference()).collect();
        assert_eq!(refs, ["pool/fast", "network/lan", "vm/web-1"]);
        let project =
            "apiVersion: otherix.dev/v1\nkind: Project\nmetadata: {name: team-a}\nspec: {}\n";
        let mut objs = parse_manifests("env.yaml", &format!("{text}---\n{project}")).unwrap();
        sort_for_apply(&mut objs);
        assert_eq!(objs[0].object.reference(), "project/team-a");
    }

    const POOL: &str = "\
apiVersion: otherix.dev/v1
kind: Pool
metadata:
  name: fast
  project: team-a
spec: {}
";

    #[test]
    fn parse_manifests_metadata_labels_table() {
        let labelled = |labels: &str| {
            VM.replace(
                "  name: web-1\n",
                &format!("  name: web-1\n  labels:\n{labels}"),
            )
        };
        let pool = POOL.replace("  project: team-a\n", "  labels:\n    tier: db\n");
        // (text, Ok(labels of the first object) or Err(error prefix))
        type Labels = Vec<(&'static str, &'static str)>;
        let table: Vec<(String, Result<Labels, &str>)> = vec![
            (VM.to_owned(), Ok(vec![])),
            (
                labelled("    app: web\n    example.com/tier: front\n"),
                Ok(vec![("app", "web"), ("example.com/tier", "front")]),
            ),
            (labelled("    app: \"\"\n"), Ok(vec![("app", "")])),
            (
                labelled("    app: we b\n"),
                Err("web.yaml:5:3: metadata.labels: value \"we b\" of \"app\" must be empty or 1..63"),
            ),
            (
                labelled("    -app: web\n"),
                Err("web.yaml:5:3: metadata.labels: key \"-app\""),
            ),
            (
                pool,
                Err("web.yaml:5:3: metadata.labels: only VM documents carry labels (this is a Pool)"),
            ),
        ];
        for (text, want) in table {
            match (parse_manifests("web.yaml", &text), want) {
                (Ok(objs), Ok(labels)) => {
                    let got: Vec<(&str, &str)> = objs[0]
                        .object
                        .metadata()
                        .labels
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    assert_eq!(got, labels, "{text}");
                }
                (Err(errs), Err(prefix)) => {
                    let errs: Vec<String> = errs.iter().map(ToString::to_string).collect();
                    assert!(
                        errs.iter().any(|e| e.starts_with(prefix)),
                        "{errs:?} lacks {prefix:?}"
                    );
                }
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn parse_manifests_metadata_project_table() {
        let with_project = VM.replace("  name: web-1\n", "  name: web-1\n  project: team-a\n");
        // (text, Ok(project of the first object) or Err(error prefix))
        let table: Vec<(String, Result<Option<&str>, &str>)> = vec![
            (VM.to_owned(), Ok(None)),
            (with_project.clone(), Ok(Some("team-a"))),
            (
                POOL.to_owned(),
                Err("web.yaml:5:3: metadata.project: Pool is cluster-wide; only VM documents belong to a project"),
            ),
            (
                POOL.replace("kind: Pool", "kind: Network")
                    .replace("spec: {}", "spec: {type: nat}"),
                Err("web.yaml:5:3: metadata.project: Network is cluster-wide"),
            ),
            (
                POOL.replace("kind: Pool", "kind: Project"),
                Err("web.yaml:5:3: metadata.project: Project is cluster-wide"),
            ),
            (
                POOL.replace("kind: Pool", "kind: ClusterSettings")
                    .replace("name: fast", "name: cluster"),
                Err("web.yaml:5:3: metadata.project: ClusterSettings is cluster-wide"),
            ),
            (
                with_project.replace("team-a", "Team_A"),
                Err("web.yaml:5:3: metadata.project: \"Team_A\" is not a valid name"),
            ),
            (
                with_project.replace("project: team-a", "project: [a]"),
                Err("web.yaml:5:3: metadata.project: invalid type"),
            ),
        ];
        for (text, want) in table {
            match (parse_manifests("web.yaml", &text), want) {
                (Ok(objs), Ok(project)) => assert_eq!(objs[0].object.project(), project),
                (Err(errs), Err(prefix)) => {
                    let errs: Vec<String> = errs.iter().map(ToString::to_string).collect();
                    assert!(
                        errs.iter().any(|e| e.starts_with(prefix)),
                        "want prefix {prefix:?}, got {errs:?}"
                    );
                }
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn parse_manifests_project_kind_parses_with_quotas() {
        let text = "apiVersion: otherix.dev/v1\nkind: Project\nmetadata: {name: team-a}\nspec: {max_vms: 3, max_vcpus: 8}\n";
        let objs = parse_manifests("p.yaml", text).unwrap();
        let Object::Project(p) = &objs[0].object else {
            panic!("not a Project: {objs:?}")
        };
        assert_eq!(p.spec.max_vms, Some(3));
        assert_eq!(p.spec.max_vcpus, Some(8));
        assert_eq!(p.spec.max_memory_mb, None);
        assert_eq!(objs[0].object.reference(), "project/team-a");
        let errs = errors(&text.replace("max_vms", "max_vm"));
        assert!(
            errs[0].starts_with("web.yaml:4:8: spec.max_vm: unknown field"),
            "{errs:?}"
        );
    }

    #[test]
    fn parse_manifests_same_vm_name_in_two_projects_is_two_objects() {
        let a = VM.replace("  name: web-1\n", "  name: web-1\n  project: team-a\n");
        let b = VM.replace("  name: web-1\n", "  name: web-1\n  project: team-b\n");
        let objs = parse_manifests("web.yaml", &format!("{a}---\n{b}---\n{VM}")).unwrap();
        let refs: Vec<String> = objs.iter().map(|o| o.object.reference()).collect();
        assert_eq!(refs, ["vm/team-a/web-1", "vm/team-b/web-1", "vm/web-1"]);
        let errs = errors(&format!("{a}---\n{a}"));
        assert!(
            errs[0].contains("vm/team-a/web-1 is declared twice (first at web.yaml:1)"),
            "{errs:?}"
        );
    }

    #[test]
    fn vm_manifest_from_vm_non_default_project_round_trips_through_yaml() {
        let objs = parse_manifests("web.yaml", VM).unwrap();
        let Object::Vm(parsed) = &objs[0].object else {
            panic!("not a VM")
        };
        for (project, want_line) in [("team-a", Some("  project: team-a\n")), ("default", None)] {
            let vm = crate::vm::Vm {
                project: project.to_owned(),
                ..serde_json::from_value(serde_json::json!({
                    "id": "6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11",
                    "name": "web-1",
                    "spec": serde_json::to_value(&parsed.spec).unwrap(),
                    "generation": 1,
                    "status": {"phase": "running", "observed_generation": 1},
                    "created_at": "2026-01-01T00:00:00Z",
                    "updated_at": "2026-01-01T00:00:00Z",
                }))
                .unwrap()
            };
            let manifest = VmManifest::from_vm(&vm);
            let yaml = serde_yaml::to_string(&manifest).unwrap();
            assert_eq!(yaml.contains("project:"), want_line.is_some(), "{yaml}");
            if let Some(line) = want_line {
                assert!(yaml.contains(&format!("  name: web-1\n{line}")), "{yaml}");
            }
            let back = parse_manifests("back.yaml", &yaml).unwrap();
            assert_eq!(back[0].object, Object::Vm(Box::new(manifest)), "{yaml}");
            let want_project = (project != "default").then_some(project);
            assert_eq!(back[0].object.project(), want_project);
        }
    }

    #[test]
    fn parse_manifests_syntax_error_serde_rejects_stops_instead_of_looping() {
        // yaml-rust2 accepts this key-less entry, serde_yaml does not; its iterator would
        // repeat the error forever (this once ran out of memory).
        let text = VM.replace("  arch: amd64", ": arch: amd64");
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("invalid YAML"), "{errs:?}");
    }

    #[test]
    fn valid_ifname_table() {
        for (name, ok) in [
            ("br0", true),
            ("virbr-0.1_x", true),
            ("", false),
            (".", false),
            ("..", false),
            ("a-name-of-16chrs", false),
            ("fifteen-chars-x", true),
            ("br 0", false),
            ("br/0", false),
        ] {
            assert_eq!(valid_ifname(name), ok, "{name:?}");
        }
    }

    #[test]
    fn parse_manifests_empty_documents_skipped() {
        let objs = parse_manifests("x.yaml", &format!("---\n{VM}---\n")).unwrap();
        assert_eq!(objs.len(), 1);
    }
}

#[cfg(test)]
mod mutation_tests {
    //! A deterministic fuzz pass: every example manifest, truncated at every byte boundary
    //! and with bytes flipped, must parse or fail with located errors — never panic.
    use super::*;

    /// xorshift64*: reproducible without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    #[test]
    fn parse_manifests_mutated_examples_never_panic() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/manifests");
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let specials = [
            b':', b'-', b'\n', b' ', b'[', b'{', b'"', b'\'', b'&', b'*', b'!', b'#', 0xff,
        ];
        let mut cases = 0;
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let text = std::fs::read(entry.path()).unwrap();
            for cut in (0..text.len()).step_by(7) {
                let s = String::from_utf8_lossy(&text[..cut]);
                let _ = parse_manifests("cut.yaml", &s);
                cases += 1;
            }
            for _ in 0..300 {
                let mut bytes = text.clone();
                for _ in 0..(1 + rng.next() % 4) {
                    let i = (rng.next() as usize) % bytes.len();
                    bytes[i] = specials[(rng.next() as usize) % specials.len()];
                }
                let s = String::from_utf8_lossy(&bytes);
                if let Err(errors) = parse_manifests("m.yaml", &s) {
                    for e in errors {
                        assert!(e.line >= 1 && e.column >= 1, "{e}");
                        assert!(!e.message.is_empty());
                    }
                }
                cases += 1;
            }
        }
        assert!(cases > 1000, "only {cases} cases");
    }
}
