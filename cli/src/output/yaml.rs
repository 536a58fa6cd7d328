//! YAML output, the only place that knows about serde_yaml: manifests (`vm get -o
//! yaml`, `cluster get -o yaml`) and list envelopes (`vm list -o yaml`).

use otherix_api::manifest::{ClusterSettingsManifest, Kind};
use otherix_api::{ClusterSettings, ObjectMeta, Vm, VmManifest, API_VERSION};
use serde::Serialize;

/// Renders any serializable value as a YAML document.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(value)
}

/// The re-appliable `kind: VM` manifest of a live VM.
pub fn vm_manifest(vm: &Vm) -> Result<String, serde_yaml::Error> {
    to_string(&VmManifest::from_vm(vm))
}

/// The re-appliable `kind: ClusterSettings` manifest of the live settings.
pub fn cluster_manifest(c: &ClusterSettings) -> Result<String, serde_yaml::Error> {
    to_string(&ClusterSettingsManifest {
        api_version: API_VERSION.to_owned(),
        kind: Kind::ClusterSettings.as_str().to_owned(),
        metadata: ObjectMeta {
            name: c.name.clone(),
            project: None,
            annotations: c.annotations.clone(),
            labels: Default::default(),
        },
        spec: c.spec.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;
    use otherix_api::ListResponse;

    #[test]
    fn vm_manifest_running_vm_prints_exact_manifest() {
        assert_eq!(
            vm_manifest(&fixtures::vm()).unwrap(),
            "\
apiVersion: otherix.dev/v1
kind: VM
metadata:
  name: web-1
spec:
  image_url: https://cloud-images.ubuntu.com/minimal/releases/noble/release/ubuntu-24.04-minimal-cloudimg-arm64.img
  arch: arm64
  vcpus: 2
  memory_mb: 2048
  user_data: |
    #cloud-config
    password: x
"
        );
    }

    #[test]
    fn vm_manifest_parses_back_with_same_spec() {
        for vm in [fixtures::vm(), fixtures::vm2()] {
            let text = vm_manifest(&vm).unwrap();
            let back: VmManifest = serde_yaml::from_str(&text).unwrap();
            assert_eq!(back.spec, vm.spec);
            assert_eq!(back.metadata.name, vm.name);
            assert_eq!(back, VmManifest::from_vm(&vm));
        }
    }

    #[test]
    fn vm_manifest_non_default_project_is_written_and_parses_back_to_it() {
        let vm = Vm {
            project: "team-a".into(),
            ..fixtures::vm()
        };
        let text = vm_manifest(&vm).unwrap();
        assert!(
            text.starts_with("apiVersion: otherix.dev/v1\nkind: VM\nmetadata:\n  name: web-1\n  project: team-a\nspec:\n"),
            "{text}"
        );
        let parsed = otherix_api::manifest::parse_manifests("vm.yaml", &text).unwrap();
        assert_eq!(parsed[0].object.project(), Some("team-a"));
        assert_eq!(
            parsed[0].object,
            otherix_api::Object::Vm(Box::new(VmManifest::from_vm(&vm)))
        );
    }

    #[test]
    fn cluster_manifest_prints_exact_manifest_that_parses_back() {
        let c = ClusterSettings {
            resource_version: 1,
            name: "cluster".into(),
            annotations: Default::default(),
            spec: otherix_api::manifest::ClusterSettingsSpec {
                default_pool: Some("fast".into()),
                ..Default::default()
            },
        };
        let text = cluster_manifest(&c).unwrap();
        assert_eq!(
            text,
            "\
apiVersion: otherix.dev/v1
kind: ClusterSettings
metadata:
  name: cluster
spec:
  default_pool: fast
"
        );
        let parsed = otherix_api::manifest::parse_manifests("c.yaml", &text).unwrap();
        assert_eq!(parsed[0].object.name(), "cluster");
    }

    #[test]
    fn to_string_list_envelope_keeps_items_and_cursor() {
        let list = ListResponse {
            items: vec![fixtures::vm()],
            next_cursor: Some("abc".into()),
        };
        let text = to_string(&list).unwrap();
        let back: ListResponse<Vm> = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back, list);
        assert!(text.contains("next_cursor: abc\n"), "{text}");
    }
}
