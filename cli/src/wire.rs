//! Answers the CLI reads more tolerantly than `otherix-api` types them today: a pool with
//! its `spec` and `annotations` (ARCHITECTURE.md's `Pool {id, name, annotations, spec,
//! instances}`), an image list with or without its `{"items": [...]}` envelope, and a
//! VM's `status.restart_pending`.

use std::collections::BTreeMap;

use otherix_api::manifest::PoolSpec;
use otherix_api::{CachedImage, PoolInstance};
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

/// A storage pool as `GET /v1/pools/{name}` returns it; fields the server leaves out
/// default to empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolObject {
    pub id: Uuid,
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub spec: PoolSpec,
    #[serde(default)]
    pub instances: Vec<PoolInstance>,
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pool_object_without_spec_and_annotations_gets_defaults() {
        let p: PoolObject = serde_json::from_value(json!({
            "id": Uuid::nil(), "name": "default",
            "instances": [{"id": Uuid::nil(), "node": "node-1", "path": "/srv/p"}]
        }))
        .unwrap();
        assert_eq!(p.spec, PoolSpec::default());
        assert!(p.annotations.is_empty());
        assert_eq!(p.instances[0].node, "node-1");
    }

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
}
