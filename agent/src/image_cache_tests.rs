//! Image cache tests against a real HTTP server on 127.0.0.1.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use super::*;

/// 600 KiB of raw image content (qemu-img sees a raw image).
fn image_bytes() -> Vec<u8> {
    (0..600 * 1024).map(|i| (i % 251) as u8).collect()
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

struct Server {
    base: String,
    requests: Arc<AtomicUsize>,
}

/// Serves `/img` (slowly, so concurrent callers overlap) and 404 for anything else.
async fn start_server() -> Server {
    let requests = Arc::new(AtomicUsize::new(0));
    async fn img(State(count): State<Arc<AtomicUsize>>) -> Vec<u8> {
        count.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        image_bytes()
    }
    async fn missing(State(count): State<Arc<AtomicUsize>>) -> StatusCode {
        count.fetch_add(1, Ordering::SeqCst);
        StatusCode::NOT_FOUND
    }
    async fn slow() -> axum::body::Body {
        let chunks = async_stream::stream! {
            for _ in 0..100 {
                yield Ok::<_, std::io::Error>(bytes::Bytes::from(vec![7u8; 64 * 1024]));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        axum::body::Body::from_stream(chunks)
    }
    async fn to_metadata() -> (StatusCode, [(&'static str, &'static str); 1]) {
        (
            StatusCode::FOUND,
            [("location", "http://169.254.169.254/latest/meta-data/")],
        )
    }
    async fn to_img() -> (StatusCode, [(&'static str, &'static str); 1]) {
        (StatusCode::MOVED_PERMANENTLY, [("location", "/img")])
    }
    async fn forever(
        axum::extract::Path(n): axum::extract::Path<u32>,
    ) -> (StatusCode, [(&'static str, String); 1]) {
        (
            StatusCode::FOUND,
            [("location", format!("/loop/{}", n + 1))],
        )
    }
    let app = Router::new()
        .route("/img", get(img))
        .route("/to-metadata", get(to_metadata))
        .route("/to-img", get(to_img))
        .route("/loop/{n}", get(forever))
        .route("/slow", get(slow))
        .fallback(missing)
        .with_state(requests.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server {
        base: format!("http://{addr}"),
        requests,
    }
}

fn no_progress(_: u64, _: Option<u64>) {}

fn images_dir_entries(pool: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(pool.join("images"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn materialize_checksum_ok_caches_content_addressed_file() {
    let server = start_server().await;
    let pool = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(pool.path(), false);
    let want = sha_hex(&image_bytes());
    let seen = Mutex::new(Vec::new());
    let progress = |done: u64, total: Option<u64>| seen.lock().unwrap().push((done, total));
    let url = format!("{}/img", server.base);

    let image = cache
        .materialize(&url, Some(&want), &progress)
        .await
        .unwrap();

    assert_eq!(image.sha256, want);
    assert_eq!(image.format, "raw");
    assert_eq!(image.virtual_size, 600 * 1024);
    assert_eq!(
        image.path,
        pool.path().join(format!("images/sha256-{want}"))
    );
    assert_eq!(std::fs::read(&image.path).unwrap(), image_bytes());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.last(), Some(&(600 * 1024, Some(600 * 1024))));
    assert!(seen.len() >= 2, "{seen:?}");
    assert_eq!(
        images_dir_entries(pool.path()),
        vec![
            "index.json".to_string(),
            format!("sha256-{want}"),
            "tmp".into()
        ]
    );
    assert!(std::fs::read_dir(pool.path().join("images/tmp"))
        .unwrap()
        .next()
        .is_none());
}

#[tokio::test]
async fn materialize_checksum_mismatch_leaves_nothing_cached() {
    let server = start_server().await;
    let pool = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(pool.path(), false);
    let url = format!("{}/img", server.base);
    let wrong = "0".repeat(64);

    let err = cache
        .materialize(&url, Some(&wrong), &no_progress)
        .await
        .unwrap_err();

    assert_eq!(err.code(), ErrorCode::ImageChecksumMismatch);
    let msg = err.to_string();
    assert!(
        msg.contains(&wrong) && msg.contains(&sha_hex(&image_bytes())),
        "{msg}"
    );
    assert_eq!(images_dir_entries(pool.path()), vec!["tmp".to_string()]);
    assert!(std::fs::read_dir(pool.path().join("images/tmp"))
        .unwrap()
        .next()
        .is_none());
}

#[tokio::test]
async fn materialize_http_404_is_image_download_failed() {
    let server = start_server().await;
    let pool = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(pool.path(), false);
    let url = format!("{}/nope.img", server.base);

    let err = cache
        .materialize(&url, None, &no_progress)
        .await
        .unwrap_err();

    assert_eq!(err.code(), ErrorCode::ImageDownloadFailed);
    assert_eq!(err.to_string(), format!("GET {url} returned HTTP 404"));
}

#[tokio::test]
async fn materialize_connection_refused_is_image_download_failed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/img", listener.local_addr().unwrap());
    drop(listener);
    let pool = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(pool.path(), false);

    let err = cache
        .materialize(&url, None, &no_progress)
        .await
        .unwrap_err();

    assert_eq!(err.code(), ErrorCode::ImageDownloadFailed);
    let msg = err.to_string().to_lowercase();
    assert!(msg.contains("refused"), "{msg}");
}

#[tokio::test]
async fn materialize_second_call_is_cache_hit_without_request() {
    let server = start_server().await;
    let pool = tempfile::tempdir().unwrap();
    let url = format!("{}/img", server.base);
    let first = ImageCache::new(pool.path(), false)
        .materialize(&url, None, &no_progress)
        .await
        .unwrap();

    // A fresh cache object (as after an agent restart) reads the on-disk index.
    let second = ImageCache::new(pool.path(), false)
        .materialize(&url, Some(&first.sha256), &no_progress)
        .await
        .unwrap();

    assert_eq!(first, second);
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn materialize_concurrent_same_url_shares_one_download() {
    let server = start_server().await;
    let pool = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(pool.path(), false);
    let url = format!("{}/img", server.base);

    let (a, b) = tokio::join!(
        cache.materialize(&url, None, &no_progress),
        cache.materialize(&url, None, &no_progress)
    );

    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn materialize_file_url_without_flag_is_validation_error() {
    let pool = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(pool.path(), false);

    let err = cache
        .materialize("file:///etc/hostname", None, &no_progress)
        .await
        .unwrap_err();

    assert_eq!(err.code(), ErrorCode::ValidationFailed);
    assert!(err.to_string().contains("--allow-file-urls"), "{err}");
}

#[tokio::test]
async fn materialize_file_url_with_flag_caches_copy() {
    let pool = tempfile::tempdir().unwrap();
    let src = pool.path().join("src.img");
    std::fs::write(&src, image_bytes()).unwrap();
    let cache = ImageCache::new(pool.path(), true);

    let image = cache
        .materialize(&format!("file://{}", src.display()), None, &no_progress)
        .await
        .unwrap();

    assert_eq!(image.sha256, sha_hex(&image_bytes()));
    assert_eq!(std::fs::read(&image.path).unwrap(), image_bytes());
}

#[tokio::test]
async fn materialize_cancelled_mid_download_leaves_no_partial_file() {
    let server = start_server().await;
    let pool = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(pool.path(), false);
    let url = format!("{}/slow", server.base);
    let started = tokio::sync::Notify::new();
    let progress = |done: u64, _: Option<u64>| {
        if done > 0 {
            started.notify_one();
        }
    };

    let download = cache.materialize(&url, None, &progress);
    tokio::select! {
        _ = download => panic!("slow download finished"),
        _ = started.notified() => {}
    }

    let tmp = pool.path().join("images/tmp");
    assert!(
        std::fs::read_dir(&tmp).unwrap().next().is_none(),
        "partial file left in tmp"
    );
    assert_eq!(images_dir_entries(pool.path()), vec!["tmp".to_string()]);
}

async fn cache_file(cache: &ImageCache, dir: &Path, name: &str, fill: u8) -> CachedImage {
    let src = dir.join(name);
    std::fs::write(&src, vec![fill; 64 * 1024]).unwrap();
    cache
        .materialize(&format!("file://{}", src.display()), None, &no_progress)
        .await
        .unwrap()
}

#[tokio::test]
async fn list_shows_each_url_with_size_and_last_used() {
    let pool = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(pool.path(), true);
    assert_eq!(cache.list().await.unwrap(), vec![]);
    let a = cache_file(&cache, pool.path(), "a.img", 1).await;
    let listed = cache.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].sha256, a.sha256);
    assert_eq!(listed[0].size, 64 * 1024);
    assert!(listed[0].url.ends_with("/a.img"), "{}", listed[0].url);
    let first_use = listed[0].last_used_ms;
    assert!(first_use > 0);

    tokio::time::sleep(Duration::from_millis(5)).await;
    cache_file(&cache, pool.path(), "a.img", 1).await;
    let again = cache.list().await.unwrap();
    assert!(
        again[0].last_used_ms > first_use,
        "a cache hit must stamp last_used"
    );
}

#[tokio::test]
async fn prune_removes_only_unused_images_and_their_entries() {
    let pool = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(pool.path(), true);
    let used = cache_file(&cache, pool.path(), "used.img", 1).await;
    let unused = cache_file(&cache, pool.path(), "unused.img", 2).await;

    let in_use: HashSet<String> = [used.sha256.clone()].into();
    let removed = cache.prune(&in_use).await.unwrap();

    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].sha256, unused.sha256);
    assert!(!unused.path.exists());
    assert!(used.path.is_file());
    let left: Vec<String> = cache
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.sha256)
        .collect();
    assert_eq!(left, vec![used.sha256.clone()]);
    assert_eq!(cache.prune(&in_use).await.unwrap(), vec![]);
    // A pruned URL downloads again on its next use.
    let back = cache_file(&cache, pool.path(), "unused.img", 2).await;
    assert!(back.path.is_file());
}

fn policy_with_max(max_bytes: u64) -> FetchPolicy {
    FetchPolicy {
        max_bytes,
        ..FetchPolicy::new(false)
    }
}

#[tokio::test]
async fn materialize_redirect_to_metadata_refused_nothing_kept() {
    let server = start_server().await;
    let pool = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(pool.path(), false);
    let url = format!("{}/to-metadata", server.base);
    let err = cache
        .materialize(&url, None, &no_progress)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ImageUrlRefused, "{err}");
    let text = crate::error_chain::error_chain(&err);
    assert!(
        text.starts_with(&format!(
            "image URL {url} refused: redirected to http://169.254.169.254/latest/meta-data/: host 169.254.169.254 is 169.254.169.254, and cloud metadata range 169.254.169.254/32 is refused by default"
        )),
        "{text}"
    );
    assert_eq!(images_dir_entries(pool.path()), vec!["tmp"]);
    assert!(tmp_empty(pool.path()));
    assert_eq!(cache.url_locks_len(), 0);
}

#[tokio::test]
async fn materialize_follows_allowed_redirects_up_to_the_limit() {
    let server = start_server().await;
    let pool = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(pool.path(), false);
    let hit = cache
        .materialize(&format!("{}/to-img", server.base), None, &no_progress)
        .await
        .unwrap();
    assert_eq!(hit.sha256, sha_hex(&image_bytes()));
    let err = cache
        .materialize(&format!("{}/loop/0", server.base), None, &no_progress)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ImageDownloadFailed);
    assert!(err.to_string().contains("more than 5 redirects"), "{err}");
}

#[tokio::test]
async fn materialize_over_size_limit_is_cut_off_and_leaves_nothing() {
    let server = start_server().await;
    let pool = tempfile::tempdir().unwrap();
    // /img announces 600 KiB; /slow streams chunks without a Content-Length.
    let cache = ImageCache::with_policy(pool.path(), policy_with_max(100 * 1024));
    for path in ["/img", "/slow"] {
        let err = cache
            .materialize(&format!("{}{path}", server.base), None, &no_progress)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::ImageTooLarge, "{path}: {err}");
        assert!(tmp_empty(pool.path()), "{path}");
    }
    assert_eq!(images_dir_entries(pool.path()), vec!["tmp"]);
}

#[tokio::test]
async fn sweep_tmp_removes_leftovers() {
    let pool = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(pool.path(), false);
    assert_eq!(cache.sweep_tmp().unwrap(), 0);
    let tmp = pool.path().join("images/tmp");
    std::fs::create_dir_all(tmp.join("odd-dir")).unwrap();
    std::fs::write(tmp.join("fetch-123"), b"partial").unwrap();
    assert_eq!(cache.sweep_tmp().unwrap(), 2);
    assert!(tmp_empty(pool.path()));
}

fn tmp_empty(pool: &Path) -> bool {
    std::fs::read_dir(pool.join("images/tmp")).map_or(true, |mut rd| rd.next().is_none())
}
