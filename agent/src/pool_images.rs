//! The pool image listing and pruning behind `SyncRequest` ops `images` and
//! `prune-images`: the cache's entries joined with how many of this node's VMs use each
//! image. A VM uses the image its record names (`base_image_sha256`); for a record
//! written before that field existed, the backing file of its qcow2 disk tells.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use otherix_api::proto::CachedImageInfo;
use otherix_api::{ApiError, ErrorCode};

use crate::disk;
use crate::error_chain::error_chain;
use crate::image_cache::{ImageCache, IndexedImage};
use crate::vm_registry::VmRecord;

/// The sha256 a cached-image path names (`.../images/sha256-<hex>`).
pub fn sha256_of_blob_path(path: &str) -> Option<String> {
    let name = path.rsplit('/').next()?;
    let hex = name.strip_prefix("sha256-")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hex.to_string())
}

/// The base image of a legacy record's qcow2 disk, from `qemu-img info`.
async fn backing_sha256(pool_path: &Path, record: &VmRecord) -> Option<String> {
    let disk = disk::existing_disk(pool_path, record.vm_id)?;
    let output = tokio::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(&disk.path)
        .output()
        .await
        .ok()?;
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    sha256_of_blob_path(info["backing-filename"].as_str()?)
}

/// How many VMs on `pool_path` use each image sha256.
pub async fn usage(pool_path: &Path, records: &[VmRecord]) -> HashMap<String, u32> {
    let mut used_by = HashMap::new();
    for record in records.iter().filter(|r| r.pool_path == pool_path) {
        let sha = match &record.base_image_sha256 {
            Some(sha) => Some(sha.clone()),
            None => backing_sha256(pool_path, record).await,
        };
        if let Some(sha) = sha {
            *used_by.entry(sha).or_insert(0) += 1;
        }
    }
    used_by
}

/// Joins cache entries with usage counts.
pub fn to_infos(images: Vec<IndexedImage>, used_by: &HashMap<String, u32>) -> Vec<CachedImageInfo> {
    images
        .into_iter()
        .map(|image| CachedImageInfo {
            used_by: used_by.get(&image.sha256).copied().unwrap_or(0),
            sha256: image.sha256,
            url: image.url,
            size: image.size,
            last_used_ms: image.last_used_ms,
        })
        .collect()
}

fn cache_error(e: crate::image_cache::ImageError) -> ApiError {
    ApiError::new(ErrorCode::Internal, error_chain(&e))
}

/// The pool's cached images with their users.
pub async fn list(
    cache: &ImageCache,
    pool_path: &Path,
    records: &[VmRecord],
) -> Result<Vec<CachedImageInfo>, ApiError> {
    let used_by = usage(pool_path, records).await;
    let images = cache.list().await.map_err(cache_error)?;
    Ok(to_infos(images, &used_by))
}

/// Removes the pool's cached images no VM uses; returns them.
pub async fn prune(
    cache: &ImageCache,
    pool_path: &Path,
    records: &[VmRecord],
) -> Result<Vec<CachedImageInfo>, ApiError> {
    let used_by = usage(pool_path, records).await;
    let in_use: HashSet<String> = used_by.keys().cloned().collect();
    let removed = cache.prune(&in_use).await.map_err(cache_error)?;
    Ok(to_infos(removed, &used_by))
}

#[cfg(test)]
mod tests {
    use otherix_api::{Arch, VmSpec};
    use uuid::Uuid;

    use super::*;

    #[test]
    fn sha256_of_blob_path_table() {
        let hex = "ab".repeat(32);
        for (path, want) in [
            (format!("/pool/images/sha256-{hex}"), Some(hex.clone())),
            (format!("sha256-{hex}"), Some(hex.clone())),
            ("/pool/images/sha256-abc".to_string(), None),
            (format!("/pool/images/{hex}"), None),
            (format!("/pool/images/sha256-{}", "zz".repeat(32)), None),
        ] {
            assert_eq!(sha256_of_blob_path(&path), want, "{path}");
        }
    }

    fn record(pool: &Path, sha: Option<&str>) -> VmRecord {
        VmRecord {
            vm_id: Uuid::new_v4(),
            name: "vm".into(),
            pool: "default".into(),
            pool_path: pool.into(),
            spec: VmSpec::new("http://x", Arch::Amd64),
            base_image_sha256: sha.map(str::to_string),
        }
    }

    #[tokio::test]
    async fn list_and_prune_count_users_per_pool() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("pool");
        let other_pool = dir.path().join("other");
        let cache = ImageCache::new(&pool, true);
        let mut cached = Vec::new();
        for (name, fill) in [("a.img", 1u8), ("b.img", 2), ("c.img", 3)] {
            let src = dir.path().join(name);
            std::fs::write(&src, vec![fill; 4096]).unwrap();
            let url = format!("file://{}", src.display());
            cached.push(cache.materialize(&url, None, &|_, _| {}).await.unwrap());
        }
        let (a, b, c) = (&cached[0].sha256, &cached[1].sha256, &cached[2].sha256);
        let records = vec![
            record(&pool, Some(a)),
            record(&pool, Some(a)),
            record(&pool, Some(b)),
            record(&other_pool, Some(c)),
        ];

        let listed = list(&cache, &pool, &records).await.unwrap();
        let used: HashMap<&str, u32> = listed
            .iter()
            .map(|i| (i.sha256.as_str(), i.used_by))
            .collect();
        assert_eq!(
            used,
            HashMap::from([(a.as_str(), 2), (b.as_str(), 1), (c.as_str(), 0)])
        );
        assert!(listed.iter().all(|i| i.size == 4096 && i.last_used_ms > 0));

        let removed = prune(&cache, &pool, &records).await.unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(&removed[0].sha256, c);
        assert_eq!(list(&cache, &pool, &records).await.unwrap().len(), 2);
    }
}
