//! Streams an image from its URL (http/https, or file:// when allowed) into a temp file,
//! hashing with sha256 on the way and reporting throttled progress. The temp file is
//! removed unless the caller keeps it, so a failed or cancelled fetch leaves nothing.
//!
//! Every HTTP hop is checked against the agent's [`UrlPolicy`] before any connection: the
//! host is resolved here, every address it resolves to must be allowed, and the request is
//! pinned to exactly those addresses (so a DNS answer cannot change between the check and
//! the connect). Redirects are followed by hand, each hop checked again, at most
//! [`MAX_REDIRECTS`]. A body over the size limit (by Content-Length up front, or by bytes
//! read) ends the fetch with [`FetchError::TooLarge`].

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use otherix_api::ErrorCode;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error_chain::error_chain;
use crate::url_policy::UrlPolicy;

/// Progress is reported at most this often (each report is a task row write on the
/// server): at the start, then once a second, then at the end.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Redirect hops followed (each checked against the policy) before giving up.
pub const MAX_REDIRECTS: usize = 5;
/// Default `--max-image-gib`.
pub const DEFAULT_MAX_IMAGE_GIB: f64 = 64.0;

/// Progress callback: `(bytes_done, bytes_total)`; the total is the Content-Length or file
/// size when known.
pub type ProgressFn<'a> = &'a (dyn Fn(u64, Option<u64>) + Send + Sync);

/// What a fetch may reach and how much it may bring in.
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    /// Accept `file://` URLs (`--allow-file-urls`).
    pub allow_file_urls: bool,
    /// Which addresses HTTP hops may connect to.
    pub url_policy: UrlPolicy,
    /// Largest image body accepted, in bytes (`--max-image-gib`).
    pub max_bytes: u64,
}

impl FetchPolicy {
    /// The default policy, with file:// URLs as given.
    pub fn new(allow_file_urls: bool) -> FetchPolicy {
        FetchPolicy {
            allow_file_urls,
            url_policy: UrlPolicy::default(),
            max_bytes: (DEFAULT_MAX_IMAGE_GIB * GIB) as u64,
        }
    }
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// `--max-image-gib` as bytes: a positive number of GiB, fractions allowed.
pub fn gib_to_bytes(gib: f64) -> Option<u64> {
    (gib.is_finite() && gib > 0.0 && gib * GIB <= u64::MAX as f64).then_some((gib * GIB) as u64)
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "{url}: file:// image URLs are disabled on this agent (start it with --allow-file-urls)"
    )]
    FileUrlsDisabled { url: String },
    #[error("{url}: unsupported URL scheme; use http://, https:// or file://")]
    UnsupportedScheme { url: String },
    #[error("{url}: not a valid URL")]
    BadUrl { url: String },
    #[error("image URL {url} refused: {via}host {host} is {addr}, and {rule}")]
    Refused {
        url: String,
        /// `"redirected to <hop>: "` when a redirect hop was refused, else empty.
        via: String,
        host: String,
        addr: IpAddr,
        rule: String,
    },
    #[error("cannot resolve host {host} of {url}: {cause}")]
    Resolve {
        url: String,
        host: String,
        cause: String,
    },
    #[error("GET {url}: more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects { url: String },
    #[error("GET {url} answered HTTP {status} with no usable Location")]
    BadRedirect { url: String, status: u16 },
    #[error("GET {url} failed: {cause}")]
    Request { url: String, cause: String },
    #[error("GET {url} returned HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("image {url} is larger than the {max_bytes}-byte limit of this agent (--max-image-gib); {seen} bytes {how}")]
    TooLarge {
        url: String,
        max_bytes: u64,
        seen: u64,
        how: &'static str,
    },
    #[error("reading {url} failed after {bytes_done} bytes: {cause}")]
    Body {
        url: String,
        bytes_done: u64,
        cause: String,
    },
    #[error("writing temp file {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

impl FetchError {
    /// The task error code this failure ends with.
    pub fn code(&self) -> ErrorCode {
        match self {
            FetchError::FileUrlsDisabled { .. }
            | FetchError::UnsupportedScheme { .. }
            | FetchError::BadUrl { .. } => ErrorCode::ValidationFailed,
            FetchError::Refused { .. } => ErrorCode::ImageUrlRefused,
            FetchError::TooLarge { .. } => ErrorCode::ImageTooLarge,
            FetchError::Write(..) => ErrorCode::DiskFailed,
            FetchError::Resolve { .. }
            | FetchError::TooManyRedirects { .. }
            | FetchError::BadRedirect { .. }
            | FetchError::Request { .. }
            | FetchError::HttpStatus { .. }
            | FetchError::Body { .. } => ErrorCode::ImageDownloadFailed,
        }
    }
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

/// Resolves `url`'s host and checks every address against the policy; returns the
/// addresses to pin the connection to (empty for an IP literal, which needs no pinning).
async fn checked_addrs(
    url: &reqwest::Url,
    policy: &UrlPolicy,
) -> Result<(Option<String>, Vec<SocketAddr>), FetchError> {
    let shown = url.as_str().to_string();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| FetchError::BadUrl { url: shown.clone() })?;
    let host = url
        .host_str()
        .ok_or_else(|| FetchError::BadUrl { url: shown.clone() })?;
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok();
    let (domain, addrs): (Option<String>, Vec<IpAddr>) = match literal {
        Some(ip) => (None, vec![ip]),
        None => {
            let resolved =
                tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|e| FetchError::Resolve {
                        url: shown.clone(),
                        host: host.to_string(),
                        cause: e.to_string(),
                    })?;
            let ips: Vec<IpAddr> = resolved.map(|a| a.ip()).collect();
            if ips.is_empty() {
                return Err(FetchError::Resolve {
                    url: shown,
                    host: host.to_string(),
                    cause: "no addresses".into(),
                });
            }
            (Some(host.to_string()), ips)
        }
    };
    for ip in &addrs {
        if let Err(refusal) = policy.check(*ip) {
            return Err(FetchError::Refused {
                url: shown,
                via: String::new(),
                host: host.to_string(),
                addr: *ip,
                rule: refusal.to_string(),
            });
        }
    }
    let pinned = addrs
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    Ok((domain, pinned))
}

/// One GET with redirects off, connecting only to `pinned` for `domain`.
async fn get_pinned(
    url: &reqwest::Url,
    domain: Option<&str>,
    pinned: &[SocketAddr],
) -> Result<reqwest::Response, FetchError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("otherix-agent/", env!("CARGO_PKG_VERSION")));
    if let Some(domain) = domain {
        builder = builder.resolve_to_addrs(domain, pinned);
    }
    let client = builder.build().map_err(|e| FetchError::Request {
        url: url.to_string(),
        cause: error_chain(&e),
    })?;
    client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| FetchError::Request {
            url: url.to_string(),
            cause: error_chain(&e),
        })
}

/// GETs `url` over HTTP(S), checking and following up to [`MAX_REDIRECTS`] redirects.
async fn open_http(
    url: &str,
    policy: &FetchPolicy,
) -> Result<(ChunkStream, Option<u64>), FetchError> {
    let mut current =
        reqwest::Url::parse(url).map_err(|_| FetchError::BadUrl { url: url.into() })?;
    for hop in 0..=MAX_REDIRECTS {
        if !matches!(current.scheme(), "http" | "https") {
            return Err(FetchError::UnsupportedScheme {
                url: current.to_string(),
            });
        }
        let (domain, pinned) = match checked_addrs(&current, &policy.url_policy).await {
            Ok(checked) => checked,
            // Name the URL the VM asked for, and the hop that was refused.
            Err(FetchError::Refused {
                url: hop_url,
                host,
                addr,
                rule,
                ..
            }) if hop > 0 => {
                return Err(FetchError::Refused {
                    url: url.into(),
                    via: format!("redirected to {hop_url}: "),
                    host,
                    addr,
                    rule,
                })
            }
            Err(e) => return Err(e),
        };
        let response = get_pinned(&current, domain.as_deref(), &pinned).await?;
        let status = response.status();
        if status.is_redirection() {
            let next = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| current.join(l).ok())
                .ok_or_else(|| FetchError::BadRedirect {
                    url: current.to_string(),
                    status: status.as_u16(),
                })?;
            if hop == MAX_REDIRECTS {
                return Err(FetchError::TooManyRedirects { url: url.into() });
            }
            tracing::info!(from = %current, to = %next, "following image redirect");
            current = next;
            continue;
        }
        if !status.is_success() {
            return Err(FetchError::HttpStatus {
                url: current.to_string(),
                status: status.as_u16(),
            });
        }
        let total = response.content_length();
        if let Some(len) = total.filter(|len| *len > policy.max_bytes) {
            return Err(FetchError::TooLarge {
                url: url.into(),
                max_bytes: policy.max_bytes,
                seen: len,
                how: "announced by Content-Length",
            });
        }
        let stream = response
            .bytes_stream()
            .map(|r| r.map_err(|e| error_chain(&e)));
        return Ok((Box::pin(stream), total));
    }
    Err(FetchError::TooManyRedirects { url: url.into() })
}

/// Opens `url` as a stream of chunks plus its total size, if known.
async fn open_source(
    url: &str,
    policy: &FetchPolicy,
) -> Result<(ChunkStream, Option<u64>), FetchError> {
    if let Some(path) = url.strip_prefix("file://") {
        if !policy.allow_file_urls {
            return Err(FetchError::FileUrlsDisabled { url: url.into() });
        }
        let request_err = |e: std::io::Error| FetchError::Request {
            url: url.into(),
            cause: e.to_string(),
        };
        let mut file = tokio::fs::File::open(path).await.map_err(request_err)?;
        let total = file.metadata().await.map_err(request_err)?.len();
        if total > policy.max_bytes {
            return Err(FetchError::TooLarge {
                url: url.into(),
                max_bytes: policy.max_bytes,
                seen: total,
                how: "in the file",
            });
        }
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
    open_http(url, policy).await
}

/// Fetches `url` into a new temp file in `tmp_dir`, hashing while streaming, then fsyncs.
pub async fn fetch_to_temp(
    url: &str,
    policy: &FetchPolicy,
    tmp_dir: &Path,
    progress: ProgressFn<'_>,
) -> Result<Fetched, FetchError> {
    let (mut chunks, total) = open_source(url, policy).await?;
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
        let after = done.saturating_add(chunk.len() as u64);
        if after > policy.max_bytes {
            return Err(FetchError::TooLarge {
                url: url.into(),
                max_bytes: policy.max_bytes,
                seen: after,
                how: "received before the download was cut off",
            });
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(write_err)?;
        done = after;
        if reported_at.elapsed() >= PROGRESS_INTERVAL {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gib_to_bytes_accepts_fractions_and_refuses_nonsense() {
        assert_eq!(gib_to_bytes(64.0), Some(64 << 30));
        assert_eq!(gib_to_bytes(0.5), Some(512 << 20));
        assert_eq!(gib_to_bytes(0.0), None);
        assert_eq!(gib_to_bytes(-1.0), None);
        assert_eq!(gib_to_bytes(f64::NAN), None);
    }

    #[tokio::test]
    async fn fetch_refuses_metadata_address_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let policy = FetchPolicy::new(false);
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/x",
            "http://[::ffff:169.254.169.254]:8080/x",
            "http://[fe80::1]/x",
            "http://0.0.0.0:1/x",
        ] {
            let err = fetch_to_temp(url, &policy, dir.path(), &|_, _| {})
                .await
                .err()
                .unwrap_or_else(|| panic!("{url} fetched"));
            assert_eq!(err.code(), ErrorCode::ImageUrlRefused, "{url}: {err}");
        }
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
