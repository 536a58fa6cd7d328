//! Projection of live objects (the JSON `GET /v1/<kind>/{name}` returns: `name`,
//! `annotations`, `spec`, plus status the manifest does not carry) into typed manifests,
//! and the one canonical YAML rendering both sides of a diff go through, so defaults,
//! field order and formatting never show up as differences.

use std::collections::BTreeMap;

use otherix_api::manifest::{Kind, Manifest, ObjectMeta, VmManifest, API_VERSION};
use otherix_api::Object;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{reference, Error};

/// The typed manifest object a live object corresponds to. A missing `annotations` is
/// empty; a missing `spec` is `{}` (which only kinds with all-optional specs accept).
/// A live VM's `project` is where it was found, not content: `metadata.project` is left
/// out, and a caller that looked the object up for a document sets it to the document's
/// (see [`crate::diff::live_projection`]).
pub fn live_to_object(kind: Kind, live: &Value) -> Result<Object, Error> {
    let name = match live.get("name").and_then(Value::as_str) {
        Some(n) => n.to_owned(),
        None if kind == Kind::ClusterSettings => "cluster".to_owned(),
        None => {
            return Err(Error::Project {
                reference: format!("{}/?", kind.short()),
                message: "name: missing".into(),
            })
        }
    };
    let fail = |message: String| Error::Project {
        reference: reference(kind, &name),
        message,
    };
    let map = |field: &str| -> Result<BTreeMap<String, String>, Error> {
        match live.get(field) {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| fail(format!("{field}: {e}"))),
        }
    };
    let annotations = map("annotations")?;
    let labels = map("labels")?;
    let spec = live
        .get("spec")
        .cloned()
        .unwrap_or_else(|| Value::Object(Default::default()));
    let metadata = ObjectMeta {
        name: name.clone(),
        project: None,
        annotations,
        labels,
    };
    fn typed<S: DeserializeOwned>(
        kind: Kind,
        metadata: ObjectMeta,
        spec: Value,
    ) -> Result<Manifest<S>, serde_json::Error> {
        Ok(Manifest {
            api_version: API_VERSION.to_owned(),
            kind: kind.as_str().to_owned(),
            metadata,
            spec: serde_json::from_value(spec)?,
        })
    }
    let spec_err = |e: serde_json::Error| fail(format!("spec: {e}"));
    Ok(match kind {
        Kind::Project => Object::Project(typed(kind, metadata, spec).map_err(spec_err)?),
        Kind::Vm => {
            let m: Manifest<otherix_api::VmSpec> = typed(kind, metadata, spec).map_err(spec_err)?;
            Object::Vm(Box::new(VmManifest {
                api_version: m.api_version,
                kind: m.kind,
                metadata: m.metadata,
                spec: m.spec,
            }))
        }
        Kind::Pool => Object::Pool(typed(kind, metadata, spec).map_err(spec_err)?),
        Kind::Network => Object::Network(typed(kind, metadata, spec).map_err(spec_err)?),
        Kind::Firmware => Object::Firmware(typed(kind, metadata, spec).map_err(spec_err)?),
        Kind::ClusterSettings => {
            Object::ClusterSettings(typed(kind, metadata, spec).map_err(spec_err)?)
        }
    })
}

/// The canonical manifest YAML of a typed object.
pub fn to_yaml(object: &Object) -> Result<String, Error> {
    Ok(match object {
        Object::Project(m) => serde_yaml::to_string(m)?,
        Object::Vm(m) => serde_yaml::to_string(m)?,
        Object::Pool(m) => serde_yaml::to_string(m)?,
        Object::Network(m) => serde_yaml::to_string(m)?,
        Object::Firmware(m) => serde_yaml::to_string(m)?,
        Object::ClusterSettings(m) => serde_yaml::to_string(m)?,
    })
}

/// The canonical manifest YAML of a live object.
pub fn project_live(kind: Kind, live: &Value) -> Result<String, Error> {
    to_yaml(&live_to_object(kind, live)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn project_live_vm_drops_status_and_keeps_annotations() {
        let live = json!({
            "id": "6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11",
            "name": "web-1",
            "generation": 3,
            "annotations": {"otherix.dev/source": "/srv/m"},
            "spec": {"image_url": "http://i/x.qcow2", "arch": "amd64", "vcpus": 2, "memory_mb": 2048},
            "status": {"phase": "running", "observed_generation": 3},
        });
        assert_eq!(
            project_live(Kind::Vm, &live).unwrap(),
            "\
apiVersion: otherix.dev/v1
kind: VM
metadata:
  name: web-1
  annotations:
    otherix.dev/source: /srv/m
spec:
  image_url: http://i/x.qcow2
  arch: amd64
  vcpus: 2
  memory_mb: 2048
"
        );
    }

    #[test]
    fn project_live_table_handles_each_kind() {
        let table = [
            (
                Kind::Pool,
                json!({"id": "x", "name": "fast", "instances": []}),
                "kind: Pool\nmetadata:\n  name: fast\nspec: {}\n",
            ),
            (
                Kind::Network,
                json!({"name": "lan", "annotations": {}, "spec": {"type": "bridge", "bridge": "br0"}}),
                "kind: Network\nmetadata:\n  name: lan\nspec:\n  type: bridge\n  bridge: br0\n",
            ),
            (
                Kind::Firmware,
                json!({"name": "ovmf", "spec": {"arch": "amd64", "type": "uefi", "code": "/c.fd"}, "builtin": true}),
                "kind: Firmware\nmetadata:\n  name: ovmf\nspec:\n  arch: amd64\n  type: uefi\n  code: /c.fd\n",
            ),
            (
                Kind::Project,
                json!({"id": "x", "name": "team-a", "annotations": {}, "spec": {"max_vms": 2}, "usage": {"vms": 1, "vcpus": 1, "memory_mb": 256}}),
                "kind: Project\nmetadata:\n  name: team-a\nspec:\n  max_vms: 2\n",
            ),
            (
                Kind::Vm,
                json!({"name": "ci-1", "project": "team-a", "spec": {"image_url": "http://i/x", "arch": "amd64"}}),
                "kind: VM\nmetadata:\n  name: ci-1\nspec:\n  image_url: http://i/x\n  arch: amd64\n  vcpus: 2\n  memory_mb: 2048\n",
            ),
            (
                Kind::ClusterSettings,
                json!({"name": "cluster", "spec": {"default_pool": "fast"}}),
                "kind: ClusterSettings\nmetadata:\n  name: cluster\nspec:\n  default_pool: fast\n",
            ),
        ];
        for (kind, live, want) in table {
            let got = project_live(kind, &live).unwrap();
            assert_eq!(
                got,
                format!("apiVersion: otherix.dev/v1\n{want}"),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn project_live_bad_spec_names_object() {
        let err = project_live(
            Kind::Vm,
            &json!({"name": "web-1", "spec": {"arch": "amd64"}}),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot project live vm/web-1 as a manifest: spec: missing field"),
            "{err}"
        );
    }
}
