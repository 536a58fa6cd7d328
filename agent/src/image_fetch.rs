//! Streams an image from its URL (http/https, or file:// when allowed) into a temp file,
//! hashing with sha256 on the way and reporting throttled progress. The temp file is
//! removed unless the caller keeps it, so a failed or cancelled fetch leaves nothing.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error_chain::error_chain;

/// Progress is reported at most every this many bytes...
const PROGRESS_BYTES: u64 = 256 * 1024;
/// ...or this often, whichever comes first.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// Progress callback: `(bytes_done, bytes_total)`; the total is the Content-Length or file
/// size when known.
pub type ProgressFn<'a> = &'a (dyn Fn(u64, Option<u64>) + Send + Sync);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "{url}: file:// image URLs are disabled on this agent (start it with --allow-file-urls)"
    )]
    FileUrlsDisabled { url: String },
    #[error("{url}: unsupported URL scheme; use http://, https:// or file://")]
    UnsupportedScheme { url: String },
    #[error("GET {url} failed: {cause}")]
    Request { url: String, cause: String },
    #[error("GET {url} returned HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("reading {url} failed after {bytes_done} bytes: {cause}")]
    Body {
        url: String,
        bytes_done: u64,
        cause: String,
    },
    #[error("writing temp file {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

/// A file that is deleted on drop unless [`TempFile::keep`] is called.
pub struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    pub fn new(path: PathBuf) -> TempFile {
        TempFile { path: Some(path) }
    }
    pub fn path(&self) -> &Path {
        self.path.as_deref().expect("temp file already kept")
    }
    /// Disarms the guard; the caller owns the file now.
    pub fn keep(mut self) -> PathBuf {
        self.path.take().expect("temp file already kept")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A fetched image in a temp file, with its sha256 (lowercase hex) and size.
pub struct Fetched {
    pub file: TempFile,
    pub sha256: String,
    pub bytes: u64,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// Opens `url` as a stream of chunks plus its total size, if known.
async fn open_source(
    client: &reqwest::Client,
    url: &str,
    allow_file_urls: bool,
) -> Result<(ChunkStream, Option<u64>), FetchError> {
    if let Some(path) = url.strip_prefix("file://") {
        if !allow_file_urls {
            return Err(FetchError::FileUrlsDisabled { url: url.into() });
        }
        let request_err = |e: std::io::Error| FetchError::Request {
            url: url.into(),
            cause: e.to_string(),
        };
        let mut file = tokio::fs::File::open(path).await.map_err(request_err)?;
        let total = file.metadata().await.map_err(request_err)?.len();
        let stream = async_stream::stream! {
            let mut buf = vec![0u8; 1024 * 1024];
            loop {
                match file.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => yield Ok(Bytes::copy_from_slice(&buf[..n])),
                    Err(e) => { yield Err(e.to_string()); break; }
                }
            }
        };
        return Ok((Box::pin(stream), Some(total)));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(FetchError::UnsupportedScheme { url: url.into() });
    }
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| FetchError::Request {
            url: url.into(),
            cause: error_chain(&e),
        })?;
    let status = response.status();
    if !status.is_success() {
        return Err(FetchError::HttpStatus {
            url: url.into(),
            status: status.as_u16(),
        });
    }
    let total = response.content_length();
    let stream = response
        .bytes_stream()
        .map(|r| r.map_err(|e| error_chain(&e)));
    Ok((Box::pin(stream), total))
}

/// Fetches `url` into a new temp file in `tmp_dir`, hashing while streaming, then fsyncs.
pub async fn fetch_to_temp(
    client: &reqwest::Client,
    url: &str,
    allow_file_urls: bool,
    tmp_dir: &Path,
    progress: ProgressFn<'_>,
) -> Result<Fetched, FetchError> {
    let (mut chunks, total) = open_source(client, url, allow_file_urls).await?;
    let temp = TempFile::new(tmp_dir.join(format!("fetch-{}", uuid::Uuid::new_v4().simple())));
    let write_err = |e| FetchError::Write(temp.path().to_path_buf(), e);
    let mut file = tokio::fs::File::create(temp.path())
        .await
        .map_err(write_err)?;
    let mut hasher = Sha256::new();
    let mut done: u64 = 0;
    let (mut reported, mut reported_at) = (0u64, Instant::now());
    progress(0, total);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|cause| FetchError::Body {
            url: url.into(),
            bytes_done: done,
            cause,
        })?;
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(write_err)?;
        done += chunk.len() as u64;
        if done - reported >= PROGRESS_BYTES || reported_at.elapsed() >= PROGRESS_INTERVAL {
            progress(done, total);
            (reported, reported_at) = (done, Instant::now());
        }
    }
    file.flush().await.map_err(write_err)?;
    file.sync_all().await.map_err(write_err)?;
    drop(file);
    if reported != done {
        progress(done, total);
    }
    Ok(Fetched {
        file: temp,
        sha256: hex::encode(hasher.finalize()),
        bytes: done,
    })
}
