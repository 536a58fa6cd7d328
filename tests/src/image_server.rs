//! A small real HTTP/1.1 server on 127.0.0.1 that serves test guest images from a folder,
//! counts requests per path, and can be told to throttle or fail, so tests can observe
//! cache hits, shared downloads, download errors and cancellations.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Shared {
    counts: Mutex<HashMap<String, u64>>,
    /// Bytes per second per connection; 0 = unthrottled.
    throttle_bps: AtomicU64,
    /// Paths answered with this status instead of the file.
    fail: Mutex<HashMap<String, u16>>,
    /// Paths answered with `302 Found` and this Location.
    redirects: Mutex<HashMap<String, String>>,
    stop: AtomicBool,
}

pub struct ImageServer {
    pub port: u16,
    root: PathBuf,
    shared: Arc<Shared>,
}

impl ImageServer {
    /// A server for `halt.img`: a 1 MiB raw disk whose boot sector is `hlt; jmp $-1`, so
    /// QEMU boots it and idles (many guests fit on 2 cores). Keep the dir while serving.
    pub fn with_halt_disk() -> (tempfile::TempDir, ImageServer) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut disk = vec![0u8; 1024 * 1024];
        disk[0..3].copy_from_slice(&[0xf4, 0xeb, 0xfd]);
        disk[510] = 0x55;
        disk[511] = 0xaa;
        std::fs::write(dir.path().join("halt.img"), disk).expect("write halt.img");
        let server = ImageServer::start(dir.path());
        (dir, server)
    }

    /// Serves the files under `root` at `http://127.0.0.1:<port>/<name>`.
    pub fn start(root: &Path) -> ImageServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind image server");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let root = root.to_path_buf();
        {
            let shared = shared.clone();
            let root = root.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if shared.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let shared = shared.clone();
                    let root = root.clone();
                    std::thread::spawn(move || {
                        let _ = serve_one(conn, &root, &shared);
                    });
                }
            });
        }
        ImageServer { port, root, shared }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, name)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many GET requests reached `/<name>`.
    pub fn requests(&self, name: &str) -> u64 {
        let counts = self.shared.counts.lock().unwrap();
        counts.get(&format!("/{name}")).copied().unwrap_or(0)
    }

    pub fn set_throttle(&self, bytes_per_sec: u64) {
        self.shared
            .throttle_bps
            .store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Answers `/<name>` with `302 Found` to `location`.
    pub fn redirect_path(&self, name: &str, location: &str) {
        self.shared
            .redirects
            .lock()
            .unwrap()
            .insert(format!("/{name}"), location.to_owned());
    }

    pub fn fail_path(&self, name: &str, status: u16) {
        self.shared
            .fail
            .lock()
            .unwrap()
            .insert(format!("/{name}"), status);
    }
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_one(mut conn: TcpStream, root: &Path, shared: &Shared) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("/").to_owned();
    if method == "GET" {
        *shared
            .counts
            .lock()
            .unwrap()
            .entry(path.clone())
            .or_default() += 1;
    }
    if let Some(status) = shared.fail.lock().unwrap().get(&path).copied() {
        let body = format!("injected failure {status}\n");
        write!(
            conn,
            "HTTP/1.1 {status} Injected\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    }
    if let Some(location) = shared.redirects.lock().unwrap().get(&path).cloned() {
        write!(
            conn,
            "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return Ok(());
    }
    let name = path.trim_start_matches('/');
    let file = root.join(name);
    if name.contains("..") || name.is_empty() || !file.is_file() {
        conn.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n",
        )?;
        return Ok(());
    }
    let mut f = std::fs::File::open(&file)?;
    let len = f.metadata()?.len();
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )?;
    if method == "HEAD" {
        return Ok(());
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let bps = shared.throttle_bps.load(Ordering::SeqCst);
        let chunk = if bps > 0 {
            (bps as usize / 10).clamp(1, buf.len())
        } else {
            buf.len()
        };
        let n = f.read(&mut buf[..chunk])?;
        if n == 0 {
            break;
        }
        conn.write_all(&buf[..n])?;
        if bps > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
    }
    Ok(())
}
