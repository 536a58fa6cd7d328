//! The declarative manifest envelope: `apiVersion`, `kind`, `metadata`, `spec`, in the
//! kubectl style, with field names the same as the HTTP API.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::vm::{Vm, VmSpec};

/// The one API version manifests carry today.
pub const API_VERSION: &str = "otherix.dev/v1";

/// Object metadata users write.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A `kind: VM` manifest document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VmManifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: VmSpec,
}

impl VmManifest {
    /// Projects a live VM back into the manifest that would re-create it.
    pub fn from_vm(vm: &Vm) -> Self {
        VmManifest {
            api_version: API_VERSION.to_owned(),
            kind: "VM".to_owned(),
            metadata: ObjectMeta {
                name: vm.name.clone(),
                annotations: BTreeMap::new(),
            },
            spec: vm.spec.clone(),
        }
    }
}
