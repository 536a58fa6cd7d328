//! Agent benchmark: prints (a) first-use download throughput of `ImageCache::materialize`
//! next to `curl -o /dev/null` on the same 127.0.0.1 URL, and (b) create-to-running time
//! (overlay disk + seed + QEMU start until QMP says running) from a cached qcow2 image of
//! 100 MiB and of 10 GiB virtual size. Run with
//! `cargo run --release -p otherix-agent --example bench [-- --size-mib 500]`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use otherix_agent::driver::{VmDriver, VmTarget};
use otherix_agent::host::Accel;
use otherix_agent::image_cache::ImageCache;
use otherix_agent::local_driver::LocalDriver;
use otherix_agent::outbox::{Outbox, Progress};
use otherix_agent::vm_registry::VmRegistry;
use otherix_api::{Arch, VmSpec};
use uuid::Uuid;

const MIB: u64 = 1024 * 1024;

fn size_mib_arg() -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--size-mib")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

/// Writes `size` bytes of non-repeating-ish content (so nothing compresses it away).
fn write_payload(path: &Path, size: u64) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; MIB as usize];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..size / MIB {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&block).unwrap();
    }
    file.flush().unwrap();
}

/// Serves `path` at `/payload` from its own thread and runtime; returns the URL.
fn serve_file(path: &Path) -> String {
    let path = path.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let handler = move || {
                let path = path.clone();
                async move {
                    let len = std::fs::metadata(&path).unwrap().len();
                    let stream = async_stream::stream! {
                        use tokio::io::AsyncReadExt;
                        let mut file = tokio::fs::File::open(&path).await.unwrap();
                        loop {
                            let mut buf = vec![0u8; 256 * 1024];
                            let n = file.read(&mut buf).await?;
                            if n == 0 { break; }
                            buf.truncate(n);
                            yield Ok::<_, std::io::Error>(bytes::Bytes::from(buf));
                        }
                    };
                    (
                        [(axum::http::header::CONTENT_LENGTH, len.to_string())],
                        axum::body::Body::from_stream(stream),
                    )
                }
            };
            let app = axum::Router::new().route("/payload", axum::routing::get(handler));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{}/payload", rx.recv().unwrap())
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64()
}

fn qemu_img_create(path: &Path, size: &str) {
    let status = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size)
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::main]
async fn main() {
    let size = size_mib_arg() * MIB;
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("payload.raw");
    eprintln!("writing a {} MiB payload...", size / MIB);
    write_payload(&payload, size);
    let url = serve_file(&payload);

    // (a) download throughput: curl first (warms the page cache for both), then the agent.
    let started = Instant::now();
    let curl = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", &url])
        .status();
    let curl_time = started.elapsed();
    let curl_ok = curl.map(|s| s.success()).unwrap_or(false);
    let pool = dir.path().join("pool");
    let cache = ImageCache::new(&pool, true);
    let started = Instant::now();
    cache.materialize(&url, None, &|_, _| {}).await.unwrap();
    let agent_time = started.elapsed();

    println!();
    println!(
        "(a) first-use download of {} MiB from 127.0.0.1",
        size / MIB
    );
    println!("| client | seconds | MiB/s |");
    println!("|---|---|---|");
    if curl_ok {
        println!(
            "| curl -o /dev/null | {:.2} | {:.0} |",
            curl_time.as_secs_f64(),
            mib_per_s(size, curl_time)
        );
    } else {
        println!("| curl -o /dev/null | (curl failed or missing) | |");
    }
    println!(
        "| ImageCache::materialize (sha256 + write + fsync + qemu-img info) | {:.2} | {:.0} |",
        agent_time.as_secs_f64(),
        mib_per_s(size, agent_time)
    );

    // (b) create-to-running from a cached qcow2 image.
    let registry = Arc::new(VmRegistry::new(&dir.path().join("data")));
    let driver = LocalDriver::new(registry, Accel::Tcg, true).with_systemd_scope(false);
    let (outbox, _rx) = Outbox::new();
    let progress = Progress::new("bench", outbox);
    let mut rows = Vec::new();
    for (label, virtual_size) in [("100 MiB", "100M"), ("10 GiB (sparse)", "10G")] {
        let image = dir.path().join(format!("base-{virtual_size}.qcow2"));
        qemu_img_create(&image, virtual_size);
        let mut spec = VmSpec::new(format!("file://{}", image.display()), Arch::Amd64);
        spec.vcpus = 1;
        spec.memory_mb = 256;
        let warm = VmTarget {
            vm_id: Uuid::new_v4(),
            name: "warm".into(),
            pool: "default".into(),
            pool_path: pool.clone(),
            spec: Some(spec.clone()),
            bridge: String::new(),
            firmware: None,
        };
        // Cache the image (not timed), then time a fresh VM on the cached image.
        driver.remember(&warm).unwrap();
        driver.prepare(&warm, &progress).await.unwrap();
        driver.delete(&warm, &progress).await.unwrap();
        let vm = VmTarget {
            vm_id: Uuid::new_v4(),
            name: "bench".into(),
            ..warm
        };
        let started = Instant::now();
        driver.remember(&vm).unwrap();
        driver.prepare(&vm, &progress).await.unwrap();
        let disk_done = started.elapsed();
        driver.start(&vm, &progress).await.unwrap();
        let running = started.elapsed();
        driver.poweroff(&vm, &progress).await.unwrap();
        driver.delete(&vm, &progress).await.unwrap();
        rows.push((label, disk_done, running));
    }
    println!();
    println!("(b) create-to-running from a cached qcow2 image (TCG, 1 vCPU, 256 MiB)");
    println!("| image virtual size | overlay + disk (ms) | until QMP running (ms) |");
    println!("|---|---|---|");
    for (label, disk, running) in rows {
        println!(
            "| {label} | {:.0} | {:.0} |",
            disk.as_secs_f64() * 1000.0,
            running.as_secs_f64() * 1000.0
        );
    }
}
