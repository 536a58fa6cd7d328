//! Answers the CLI reads more tolerantly than `otherix-api` types them: an image list with
//! or without its `{"items": [...]}` envelope, and whether a VM's body carries
//! `status.restart_pending` at all.

use otherix_api::CachedImage;
use serde::{Deserialize, Deserializer, Serialize};

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
