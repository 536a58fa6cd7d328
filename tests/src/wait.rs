//! Polling helpers with generous deadlines: QEMU under TCG on two busy cores is slow.

use std::path::Path;
use std::time::{Duration, Instant};

/// Polls `probe` every 200 ms until it returns `Some`, or panics naming `what` after `timeout`.
pub fn until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the file at `path` contains `needle`.
pub fn file_contains(path: &Path, needle: &str, timeout: Duration) {
    until(
        &format!("{needle:?} in {}", path.display()),
        timeout,
        || {
            let text = std::fs::read(path).ok()?;
            String::from_utf8_lossy(&text)
                .contains(needle)
                .then_some(())
        },
    )
}

/// True while a process with this pid exists (and is not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state is the field after the parenthesised command name.
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}
