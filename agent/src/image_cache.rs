//! The per-pool image cache in `POOL_PATH/images/`: content-addressed files
//! `sha256-<hex>` (read-only, never modified after verification), an `index.json` mapping
//! URL -> sha256 so a known URL is a cache hit with no HTTP request, and per-URL locks so
//! concurrent requests for one URL share one download. Each materialize stamps the
//! entry's `last_used_ms`; [`ImageCache::list`] and [`ImageCache::prune`] serve the pool's
//! image listing and pruning. A download is accepted only if [`crate::image_format`] says
//! so (raw or standalone qcow2, judged by the header and by `qemu-img info` run under
//! `prlimit`); `tmp/` is swept at agent start ([`ImageCache::sweep_tmp`]) and a URL's lock
//! leaves the lock table once nobody holds or waits for it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use otherix_api::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::atomic_file::{sync_dir, write_json_atomic};
use crate::image_fetch::{fetch_to_temp, FetchError, FetchPolicy, ProgressFn};
use crate::image_format::{self, FormatError, ImageFormat, QEMU_IMG_LIMITS};

const INDEX_FILE: &str = "index.json";
const TMP_DIR: &str = "tmp";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("image {url} has sha256 {actual}, expected {expected}")]
    ChecksumMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("image {url} cannot be inspected by qemu-img: {cause}")]
    Inspect { url: String, cause: String },
    #[error("cannot run prlimit qemu-img info: {0}")]
    InspectTool(String),
    #[error("image {url} refused")]
    Format {
        url: String,
        #[source]
        source: FormatError,
    },
    #[error("image cache I/O on {0}")]
    Io(PathBuf, #[source] std::io::Error),
}

impl ImageError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ImageError::Fetch(e) => e.code(),
            ImageError::Io(..) => ErrorCode::DiskFailed,
            ImageError::Format { source, .. } if source.is_refusal() => {
                ErrorCode::ImageFormatRefused
            }
            // qemu-img could not make sense of the bytes: not an image we accept.
            ImageError::Inspect { .. } => ErrorCode::ImageFormatRefused,
            ImageError::Format { .. } | ImageError::InspectTool(_) => {
                ErrorCode::ImageDownloadFailed
            }
            ImageError::ChecksumMismatch { .. } => ErrorCode::ImageChecksumMismatch,
        }
    }
}

/// A verified image in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedImage {
    pub path: PathBuf,
    pub sha256: String,
    /// Format qemu-img detected (`qcow2`, `raw`, ...).
    pub format: String,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct IndexEntry {
    sha256: String,
    format: String,
    virtual_size: u64,
    /// When a VM last materialized this URL (ms since the Unix epoch; 0 = never recorded).
    #[serde(default)]
    last_used_ms: u64,
}

/// One URL's image in the cache, as the pool listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedImage {
    pub url: String,
    pub sha256: String,
    /// Bytes of the cached file.
    pub size: u64,
    pub last_used_ms: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    #[serde(default)]
    urls: BTreeMap<String, IndexEntry>,
}

/// The image cache of one pool instance.
pub struct ImageCache {
    images_dir: PathBuf,
    policy: FetchPolicy,
    url_locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    index_lock: tokio::sync::Mutex<()>,
}

/// Holds one URL's download lock; on drop, removes the URL from the lock table unless
/// someone else holds or waits for it (so the table only has URLs in use).
struct UrlLease {
    url: String,
    table: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for UrlLease {
    fn drop(&mut self) {
        let Ok(mut table) = self.table.lock() else {
            return;
        };
        self.guard.take();
        // The table's clone is the only one left: nobody holds or waits for this URL.
        if table
            .get(&self.url)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            table.remove(&self.url);
        }
    }
}

impl ImageCache {
    /// A cache with the default fetch policy.
    pub fn new(pool_path: &Path, allow_file_urls: bool) -> ImageCache {
        ImageCache::with_policy(pool_path, FetchPolicy::new(allow_file_urls))
    }

    pub fn with_policy(pool_path: &Path, policy: FetchPolicy) -> ImageCache {
        ImageCache {
            images_dir: pool_path.join("images"),
            policy,
            url_locks: Arc::default(),
            index_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// How many URLs the lock table holds (those being materialized right now).
    pub fn url_locks_len(&self) -> usize {
        self.url_locks.lock().map(|t| t.len()).unwrap_or(0)
    }

    /// Removes everything in `images/tmp/` (downloads a crashed agent left behind); call
    /// before any download starts. Returns how many entries it removed.
    pub fn sweep_tmp(&self) -> Result<usize, ImageError> {
        let tmp = self.images_dir.join(TMP_DIR);
        let entries = match std::fs::read_dir(&tmp) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(ImageError::Io(tmp, e)),
        };
        let mut removed = 0;
        for entry in entries {
            let path = entry.map_err(Self::io_err(&tmp))?.path();
            let result = if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            result.map_err(|e| ImageError::Io(path.clone(), e))?;
            removed += 1;
        }
        Ok(removed)
    }

    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.images_dir.join(format!("sha256-{sha256}"))
    }

    fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
        move |e| ImageError::Io(path.to_path_buf(), e)
    }

    /// Returns the cached image for `url`, downloading and verifying it on first use.
    pub async fn materialize(
        &self,
        url: &str,
        expected_sha256: Option<&str>,
        progress: ProgressFn<'_>,
    ) -> Result<CachedImage, ImageError> {
        let expected = expected_sha256.map(str::to_ascii_lowercase);
        let url_lock = self
            .url_locks
            .lock()
            .expect("url lock table poisoned")
            .entry(url.to_string())
            .or_default()
            .clone();
        let _lease = UrlLease {
            url: url.to_string(),
            table: self.url_locks.clone(),
            guard: Some(url_lock.lock_owned().await),
        };

        if let Some(hit) = self.lookup(url, expected.as_deref()).await? {
            tracing::info!(url, sha256 = %hit.sha256, "image cache hit");
            self.touch(url).await?;
            return Ok(hit);
        }

        let tmp_dir = self.images_dir.join(TMP_DIR);
        tokio::fs::create_dir_all(&tmp_dir)
            .await
            .map_err(Self::io_err(&tmp_dir))?;
        tracing::info!(url, "downloading image");
        let fetched = fetch_to_temp(url, &self.policy, &tmp_dir, progress).await?;
        if let Some(expected) = &expected {
            if *expected != fetched.sha256 {
                return Err(ImageError::ChecksumMismatch {
                    url: url.into(),
                    expected: expected.clone(),
                    actual: fetched.sha256,
                });
            }
        }
        let (format, virtual_size) = inspect(url, fetched.file.path()).await?;
        let blob = self.blob_path(&fetched.sha256);
        let temp_path = fetched.file.path().to_path_buf();
        set_read_only(&temp_path).map_err(Self::io_err(&temp_path))?;
        if blob.exists() {
            drop(fetched.file);
        } else {
            std::fs::rename(&temp_path, &blob).map_err(Self::io_err(&blob))?;
            fetched.file.keep();
            sync_dir(&self.images_dir).map_err(Self::io_err(&self.images_dir))?;
        }
        let entry = IndexEntry {
            sha256: fetched.sha256,
            format,
            virtual_size,
            last_used_ms: now_ms(),
        };
        self.record(url, &entry).await?;
        tracing::info!(url, sha256 = %entry.sha256, bytes = fetched.bytes, "image cached");
        Ok(self.cached(entry))
    }

    fn cached(&self, entry: IndexEntry) -> CachedImage {
        CachedImage {
            path: self.blob_path(&entry.sha256),
            sha256: entry.sha256,
            format: entry.format,
            virtual_size: entry.virtual_size,
        }
    }

    /// A cache hit: the URL's indexed blob (matching `expected` if given), or a blob with
    /// the expected hash that another URL brought in.
    async fn lookup(
        &self,
        url: &str,
        expected: Option<&str>,
    ) -> Result<Option<CachedImage>, ImageError> {
        let index = self.read_index().await?;
        if let Some(entry) = index.urls.get(url) {
            let matches = expected.is_none_or(|e| e == entry.sha256)
                && ImageFormat::parse(&entry.format).is_some();
            if matches && self.blob_path(&entry.sha256).is_file() {
                return Ok(Some(self.cached(entry.clone())));
            }
        }
        if let Some(expected) = expected {
            if let Some(entry) = index
                .urls
                .values()
                .find(|e| e.sha256 == expected && ImageFormat::parse(&e.format).is_some())
            {
                if self.blob_path(expected).is_file() {
                    let entry = entry.clone();
                    self.record(url, &entry).await?;
                    return Ok(Some(self.cached(entry)));
                }
            }
        }
        Ok(None)
    }

    /// Stamps the URL's entry as used now.
    async fn touch(&self, url: &str) -> Result<(), ImageError> {
        let _writing = self.index_lock.lock().await;
        let mut index = self.read_index().await?;
        if let Some(entry) = index.urls.get_mut(url) {
            entry.last_used_ms = now_ms();
            self.write_index(&index)?;
        }
        Ok(())
    }

    /// Every URL whose image is in the cache.
    pub async fn list(&self) -> Result<Vec<IndexedImage>, ImageError> {
        let index = self.read_index().await?;
        let mut images = Vec::new();
        for (url, entry) in &index.urls {
            let Ok(meta) = std::fs::metadata(self.blob_path(&entry.sha256)) else {
                continue;
            };
            images.push(IndexedImage {
                url: url.clone(),
                sha256: entry.sha256.clone(),
                size: meta.len(),
                last_used_ms: entry.last_used_ms,
            });
        }
        Ok(images)
    }

    /// Removes every cached image whose sha256 is not in `in_use`, with its index entries
    /// (and entries whose file is already gone); returns what it removed. Callers must
    /// keep materializations out while pruning.
    pub async fn prune(&self, in_use: &HashSet<String>) -> Result<Vec<IndexedImage>, ImageError> {
        let _writing = self.index_lock.lock().await;
        let listed = self.list().await?;
        let mut index = self.read_index().await?;
        let removed: Vec<IndexedImage> = listed
            .into_iter()
            .filter(|image| !in_use.contains(&image.sha256))
            .collect();
        let doomed: HashSet<&str> = removed.iter().map(|i| i.sha256.as_str()).collect();
        for sha256 in &doomed {
            let blob = self.blob_path(sha256);
            match std::fs::remove_file(&blob) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ImageError::Io(blob, e))
                }
                _ => tracing::info!(sha256, "pruned cached image"),
            }
        }
        index.urls.retain(|_, entry| {
            !doomed.contains(entry.sha256.as_str()) && self.blob_path(&entry.sha256).is_file()
        });
        self.write_index(&index)?;
        Ok(removed)
    }

    fn write_index(&self, index: &Index) -> Result<(), ImageError> {
        let path = self.images_dir.join(INDEX_FILE);
        write_json_atomic(&path, index).map_err(|e| ImageError::Io(path, e))
    }

    async fn read_index(&self) -> Result<Index, ImageError> {
        let path = self.images_dir.join(INDEX_FILE);
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "corrupt image index; starting a new one");
                Index::default()
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(ImageError::Io(path, e)),
        }
    }

    async fn record(&self, url: &str, entry: &IndexEntry) -> Result<(), ImageError> {
        let _writing = self.index_lock.lock().await;
        let mut index = self.read_index().await?;
        let mut entry = entry.clone();
        entry.last_used_ms = now_ms();
        index.urls.insert(url.to_string(), entry);
        self.write_index(&index)
    }
}

fn set_read_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))
}

/// Detects format and virtual size: the qcow2 header is checked first, then
/// `qemu-img info --output=json` runs under `prlimit` (1 GiB address space, 30 s CPU) and
/// [`image_format::verdict`] judges its answer.
async fn inspect(url: &str, path: &Path) -> Result<(String, u64), ImageError> {
    let err = |cause: String| ImageError::Inspect {
        url: url.into(),
        cause,
    };
    let refused = |source: FormatError| ImageError::Format {
        url: url.into(),
        source,
    };
    let mut head = vec![0u8; 512];
    {
        use tokio::io::AsyncReadExt;
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| ImageError::Io(path.to_path_buf(), e))?;
        let mut filled = 0;
        while filled < head.len() {
            let n = file
                .read(&mut head[filled..])
                .await
                .map_err(|e| ImageError::Io(path.to_path_buf(), e))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        head.truncate(filled);
    }
    image_format::qcow2_header(&head).map_err(refused)?;
    let output = tokio::process::Command::new("prlimit")
        .args(QEMU_IMG_LIMITS)
        .args(["qemu-img", "info", "--output=json"])
        .arg(path)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| ImageError::InspectTool(e.to_string()))?;
    if !output.status.success() {
        return Err(err(String::from_utf8_lossy(&output.stderr)
            .trim()
            .to_string()));
    }
    let info: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| err(format!("unreadable qemu-img output: {e}")))?;
    let verdict = image_format::verdict(&info, None).map_err(refused)?;
    Ok((verdict.format.as_str().to_string(), verdict.virtual_size))
}

#[cfg(test)]
#[path = "image_cache_tests.rs"]
mod tests;
