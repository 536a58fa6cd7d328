//! JSON Schemas of every manifest kind, generated from the types (schemars). The committed
//! copies live in `schemas/`; `cargo run -p otherix-api --example write_schemas` rewrites
//! them and a test fails when they drift.

use schemars::schema::RootSchema;
use schemars::schema_for;

use crate::manifest::{
    ClusterSettingsManifest, FirmwareManifest, Kind, NetworkManifest, PoolManifest,
    ProjectManifest, VmManifest,
};

/// The schema of one kind, with `kind` and `apiVersion` pinned to their only values.
pub fn schema_of(kind: Kind) -> serde_json::Value {
    let root: RootSchema = match kind {
        Kind::Project => schema_for!(ProjectManifest),
        Kind::Vm => schema_for!(VmManifest),
        Kind::Pool => schema_for!(PoolManifest),
        Kind::Network => schema_for!(NetworkManifest),
        Kind::Firmware => schema_for!(FirmwareManifest),
        Kind::ClusterSettings => schema_for!(ClusterSettingsManifest),
    };
    let mut value = serde_json::to_value(root).expect("schema serializes");
    if let Some(props) = value.get_mut("properties").and_then(|p| p.as_object_mut()) {
        props.insert(
            "kind".into(),
            serde_json::json!({"type": "string", "enum": [kind.as_str()]}),
        );
        props.insert(
            "apiVersion".into(),
            serde_json::json!({"type": "string", "enum": [crate::manifest::API_VERSION]}),
        );
    }
    // Only VMs live in a project: the other kinds' schemas refuse `metadata.project` (as
    // the parser does), so an editor flags it too.
    if !kind.in_project() {
        if let Some(props) = value
            .pointer_mut("/definitions/ObjectMeta/properties")
            .and_then(|p| p.as_object_mut())
        {
            props.remove("project");
        }
    }
    value["title"] = serde_json::Value::String(format!("otherix {}", kind.as_str()));
    value
}

/// `(file name, pretty JSON)` for every kind: what `schemas/` must contain.
pub fn all_schema_files() -> Vec<(String, String)> {
    Kind::ALL
        .iter()
        .map(|k| {
            let text = serde_json::to_string_pretty(&schema_of(*k)).expect("json") + "\n";
            (format!("{}.json", k.short()), text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_schemas_match_generated() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
        for (name, text) in all_schema_files() {
            let committed = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
            assert!(
                committed == text,
                "schemas/{name} is stale: run `cargo run -p otherix-api --example write_schemas`"
            );
        }
    }

    #[test]
    fn vm_schema_pins_kind_and_requires_spec() {
        let s = schema_of(Kind::Vm);
        assert_eq!(s["properties"]["kind"]["enum"][0], "VM");
        let required: Vec<&str> = s["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(required.contains(&"spec"), "{required:?}");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;
    use crate::manifest::parse_manifests;
    use serde::Deserialize;

    /// Every file in examples/manifests parses, passes the field rules, and each document
    /// validates against the committed JSON Schema of its kind.
    #[test]
    fn examples_manifests_validate_against_rules_and_schemas() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/manifests");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("examples/manifests exists")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        assert!(
            files.len() >= 6,
            "expected at least 6 examples, found {files:?}"
        );
        let mut kinds_seen = std::collections::BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                text.starts_with("# yaml-language-server: $schema=../../schemas/"),
                "{name} lacks the yaml-language-server schema comment"
            );
            let objs = parse_manifests(&name, &text).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value = serde_json::Value::deserialize(doc).unwrap();
                let kind = Kind::parse(value["kind"].as_str().unwrap()).unwrap();
                kinds_seen.insert(kind.short());
                let schema = schema_of(kind);
                let validator = jsonschema::validator_for(&schema).expect("schema compiles");
                let errors: Vec<String> = validator
                    .iter_errors(&value)
                    .map(|e| e.to_string())
                    .collect();
                assert!(errors.is_empty(), "{name}: {errors:?}");
            }
            assert!(!objs.is_empty(), "{name} declares nothing");
        }
        for k in ["vm", "pool", "network", "cluster", "project"] {
            assert!(kinds_seen.contains(k), "no example of kind {k}");
        }
    }

    #[test]
    fn schema_metadata_project_only_on_vms() {
        let doc = |kind: &str, spec: serde_json::Value| {
            serde_json::json!({
                "apiVersion": "otherix.dev/v1", "kind": kind,
                "metadata": {"name": "a", "project": "team-a"}, "spec": spec
            })
        };
        let vm = doc(
            "VM",
            serde_json::json!({"image_url": "http://x/y", "arch": "amd64"}),
        );
        assert!(jsonschema::validator_for(&schema_of(Kind::Vm))
            .unwrap()
            .is_valid(&vm));
        for kind in [Kind::Project, Kind::Pool, Kind::ClusterSettings] {
            let validator = jsonschema::validator_for(&schema_of(kind)).unwrap();
            assert!(
                !validator.is_valid(&doc(kind.as_str(), serde_json::json!({}))),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn schema_rejects_unknown_spec_field() {
        let schema = schema_of(Kind::Vm);
        let validator = jsonschema::validator_for(&schema).unwrap();
        let doc = serde_json::json!({
            "apiVersion": "otherix.dev/v1", "kind": "VM", "metadata": {"name": "a"},
            "spec": {"image_url": "http://x/y", "arch": "amd64", "vcpu": 2}
        });
        assert!(!validator.is_valid(&doc));
    }
}
