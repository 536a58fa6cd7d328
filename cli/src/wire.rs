//! Answers the CLI reads more tolerantly than `otherix-api` types them: an image list with
//! or without its `{"items": [...]}` envelope, whether a VM's body carries
//! `status.restart_pending` at all, the `project`/`requested_by` of VMs and tasks (read
//! from the raw JSON until `otherix-api`'s `Vm` and `Task` carry them), and the identity
//! routes (`/v1/whoami`, `/v1/tokens`, `/v1/projects`, node join tokens), which have no
//! `otherix-api` type on this side of the contract.

use std::collections::BTreeMap;

use otherix_api::CachedImage;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The cached images of `GET /v1/pools/{name}/images` and `POST .../prune-images`:
/// `{"items": [...]}`, `{"removed": [...]}` or a bare array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Images(pub Vec<CachedImage>);

impl<'de> Deserialize<'de> for Images {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Shape {
            Items { items: Vec<CachedImage> },
            Removed { removed: Vec<CachedImage> },
            Bare(Vec<CachedImage>),
        }
        Ok(Images(match Shape::deserialize(d)? {
            Shape::Items { items } => items,
            Shape::Removed { removed } => removed,
            Shape::Bare(items) => items,
        }))
    }
}

/// `status.restart_pending` of a VM body, when the server sends it.
pub fn restart_pending(raw_vm: &str) -> Option<bool> {
    serde_json::from_str::<serde_json::Value>(raw_vm)
        .ok()?
        .pointer("/status/restart_pending")?
        .as_bool()
}

/// A top-level string field of a single object (`project` of a VM, `requested_by` of a
/// task), when the server sends it.
pub fn field(raw: &str, name: &str) -> Option<String> {
    serde_json::from_str::<Value>(raw)
        .ok()?
        .get(name)?
        .as_str()
        .map(str::to_owned)
}

/// The `project` of every item of a list answer, in order (`-` where absent).
pub fn item_projects(raw_list: &str) -> Vec<String> {
    let items = serde_json::from_str::<Value>(raw_list)
        .ok()
        .and_then(|v| v.get("items").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    items
        .iter()
        .map(|i| {
            i.get("project")
                .and_then(Value::as_str)
                .unwrap_or(crate::output::NONE)
                .to_owned()
        })
        .collect()
}

/// `GET /v1/whoami`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Whoami {
    pub name: String,
    pub role: String,
    pub project: String,
}

/// An API token as `GET /v1/tokens` lists it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub name: String,
    pub project: String,
    pub role: String,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub created_by: Option<String>,
}

/// `POST /v1/tokens` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreateTokenRequest {
    pub name: String,
    pub project: String,
    pub role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_secs: Option<u64>,
}

/// `POST /v1/tokens` answer: the token and its secret, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CreatedToken {
    pub token: Token,
    pub secret: String,
}

/// A project's quotas; absent means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vcpus: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mb: Option<u64>,
}

/// What a project's VMs use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectUsage {
    #[serde(default)]
    pub vms: u64,
    #[serde(default)]
    pub vcpus: u64,
    #[serde(default)]
    pub memory_mb: u64,
}

/// A project as `GET /v1/projects/{name}` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub spec: ProjectSpec,
    #[serde(default)]
    pub usage: ProjectUsage,
}

/// `POST /v1/projects` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreateProjectRequest {
    pub name: String,
    pub spec: ProjectSpec,
}

/// `POST /v1/nodes/{name}/join-token` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JoinTokenRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// `POST /v1/nodes/{name}/join-token` answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JoinToken {
    pub node: String,
    pub token: String,
    #[serde(default)]
    pub expires_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn images_accept_items_removed_and_bare_shapes() {
        let img = json!({"node": "n", "sha256": "ab", "url": "http://x", "size": 1, "used_by": 0});
        for body in [
            json!({"items": [img]}),
            json!({"removed": [img]}),
            json!([img]),
        ] {
            let Images(list) = serde_json::from_value(body.clone()).unwrap();
            assert_eq!(list.len(), 1, "{body}");
            assert_eq!(list[0].node, "n");
        }
        assert!(serde_json::from_value::<Images>(json!({"other": []})).is_err());
    }

    #[test]
    fn restart_pending_reads_status_field_or_none() {
        assert_eq!(
            restart_pending(r#"{"status":{"restart_pending":true}}"#),
            Some(true)
        );
        assert_eq!(
            restart_pending(r#"{"status":{"restart_pending":false}}"#),
            Some(false)
        );
        assert_eq!(restart_pending(r#"{"status":{"phase":"running"}}"#), None);
        assert_eq!(restart_pending("not json"), None);
    }

    #[test]
    fn field_and_item_projects_read_leniently() {
        assert_eq!(
            field(r#"{"project":"dev","requested_by":"alice"}"#, "project").as_deref(),
            Some("dev")
        );
        assert_eq!(field(r#"{"project":7}"#, "project"), None);
        assert_eq!(field("nope", "project"), None);
        assert_eq!(
            item_projects(r#"{"items":[{"project":"a"},{"name":"x"},{"project":"b"}]}"#),
            ["a", "-", "b"]
        );
        assert!(item_projects("{}").is_empty());
    }

    #[test]
    fn identity_types_read_contract_shapes() {
        let t: CreatedToken = serde_json::from_value(json!({
            "token": {"name": "ci", "project": "dev", "role": "member",
                      "created_at": "2026-05-01T10:00:00Z", "expires_at": null, "created_by": "admin"},
            "secret": "otx_00"
        }))
        .unwrap();
        assert_eq!(t.token.expires_at, None);
        assert_eq!(t.token.created_by.as_deref(), Some("admin"));
        let p: Project = serde_json::from_value(json!({
            "id": "6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11", "name": "dev", "annotations": {},
            "spec": {"max_vms": 10}, "usage": {"vms": 2, "vcpus": 4, "memory_mb": 4096}
        }))
        .unwrap();
        assert_eq!(p.spec.max_vms, Some(10));
        assert_eq!(p.usage.vcpus, 4);
        assert_eq!(
            serde_json::to_value(CreateTokenRequest {
                name: "ci".into(),
                project: "dev".into(),
                role: "viewer".into(),
                expires_secs: None
            })
            .unwrap(),
            json!({"name": "ci", "project": "dev", "role": "viewer"})
        );
        assert_eq!(
            serde_json::to_value(CreateProjectRequest {
                name: "dev".into(),
                spec: ProjectSpec {
                    max_vcpus: Some(8),
                    ..ProjectSpec::default()
                }
            })
            .unwrap(),
            json!({"name": "dev", "spec": {"max_vcpus": 8}})
        );
    }
}
