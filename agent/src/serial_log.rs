//! The VM's serial console log, size-capped and readable by logical offset.
//!
//! QEMU appends to `serial.log` (the serial socket chardev's `logfile=` with
//! `logappend=on`, opened `O_APPEND`, so its writes always land at the current end of the
//! file, whether or not a console is attached). When the file grows past the cap, the agent copies it
//! to `serial.log.1` (replacing the older part) and truncates `serial.log` in place, which
//! QEMU keeps writing to without a restart. `serial.log.base` holds the logical offset of
//! `serial.log`'s first byte, so offsets grow monotonically across rotations and boots:
//! the kept bytes are `[base - len(serial.log.1), base + len(serial.log))`, and a read
//! from an offset older than that starts at the oldest kept byte. Bytes the guest writes
//! in the instant between the copy and the truncation are lost (a `copytruncate` race,
//! microseconds wide for a 2 MiB log).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::atomic_file::write_atomic;

/// Rotate once `serial.log` is larger than this.
pub const SERIAL_LOG_CAP: u64 = 2 * 1024 * 1024;
/// Most bytes one read returns (also the default when the caller asks for 0).
pub const MAX_READ: u64 = 1024 * 1024;

/// Serializes rotations and reads (all in this process), so a read never sees a
/// half-rotated log.
static LOG_LOCK: Mutex<()> = Mutex::new(());

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("serial log I/O on {0}")]
    Io(PathBuf, #[source] std::io::Error),
}

/// Which file a byte range lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogPart {
    Rotated,
    Current,
}

/// Sizes and base offset of a log on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogLayout {
    pub rotated_len: u64,
    /// Logical offset of the current file's first byte.
    pub base: u64,
    pub current_len: u64,
}

impl LogLayout {
    pub fn oldest(&self) -> u64 {
        self.base.saturating_sub(self.rotated_len)
    }
    pub fn end(&self) -> u64 {
        self.base + self.current_len
    }
}

/// What to read for one request: `(file, position in file, length)` segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    pub segments: Vec<(LogPart, u64, u64)>,
    pub next_offset: u64,
    pub eof: bool,
}

/// The bytes of one read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    pub data: Vec<u8>,
    pub next_offset: u64,
    pub eof: bool,
}

/// Plans a read of up to `max_bytes` (0 or over [`MAX_READ`] means [`MAX_READ`]) from
/// logical `offset`, clamped into the kept range.
pub fn plan_read(layout: LogLayout, offset: u64, max_bytes: u64) -> ReadPlan {
    let max = if max_bytes == 0 {
        MAX_READ
    } else {
        max_bytes.min(MAX_READ)
    };
    let start = offset.clamp(layout.oldest(), layout.end());
    let stop = (start + max).min(layout.end());
    let mut segments = Vec::new();
    if start < layout.base {
        let until = stop.min(layout.base);
        if until > start {
            segments.push((LogPart::Rotated, start - layout.oldest(), until - start));
        }
    }
    let current_start = start.max(layout.base);
    if stop > current_start {
        segments.push((
            LogPart::Current,
            current_start - layout.base,
            stop - current_start,
        ));
    }
    ReadPlan {
        segments,
        next_offset: stop,
        eof: stop == layout.end(),
    }
}

fn sibling(log: &Path, suffix: &str) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// `serial.log.1`: the older kept part.
pub fn rotated_path(log: &Path) -> PathBuf {
    sibling(log, ".1")
}

/// `serial.log.base`: the logical offset of `serial.log`'s first byte.
pub fn base_path(log: &Path) -> PathBuf {
    sibling(log, ".base")
}

fn file_len(path: &Path) -> Result<u64, LogError> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(LogError::Io(path.into(), e)),
    }
}

fn layout(log: &Path) -> Result<LogLayout, LogError> {
    let base = std::fs::read_to_string(base_path(log))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    Ok(LogLayout {
        rotated_len: file_len(&rotated_path(log))?,
        base,
        current_len: file_len(log)?,
    })
}

fn read_range(path: &Path, pos: u64, len: u64, into: &mut Vec<u8>) -> Result<(), LogError> {
    let io = |e| LogError::Io(path.into(), e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(pos)).map_err(io)?;
    file.take(len).read_to_end(into).map_err(io)?;
    Ok(())
}

/// Reads up to `max_bytes` from logical `offset` of the log at `log` (a missing log reads
/// as empty).
pub fn read(log: &Path, offset: u64, max_bytes: u64) -> Result<LogChunk, LogError> {
    let _locked = LOG_LOCK.lock().expect("log lock poisoned");
    let plan = plan_read(layout(log)?, offset, max_bytes);
    let mut data = Vec::new();
    for (part, pos, len) in &plan.segments {
        let path = match part {
            LogPart::Rotated => rotated_path(log),
            LogPart::Current => log.to_path_buf(),
        };
        read_range(&path, *pos, *len, &mut data)?;
    }
    // A file shorter than planned (truncated meanwhile by someone else) ends the chunk.
    let next_offset =
        plan.next_offset - plan.segments.iter().map(|s| s.2).sum::<u64>() + data.len() as u64;
    Ok(LogChunk {
        data,
        next_offset,
        eof: plan.eof,
    })
}

/// Rotates the log when it is over `cap`; true if it did.
pub fn rotate_if_over(log: &Path, cap: u64) -> Result<bool, LogError> {
    let _locked = LOG_LOCK.lock().expect("log lock poisoned");
    let before = layout(log)?;
    if before.current_len <= cap {
        return Ok(false);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| LogError::Io(path, e)
    };
    let copied = std::fs::read(log).map_err(io(log))?;
    let rotated = rotated_path(log);
    write_atomic(&rotated, &copied).map_err(io(&rotated))?;
    let base = base_path(log);
    let new_base = before.base + copied.len() as u64;
    write_atomic(&base, new_base.to_string().as_bytes()).map_err(io(&base))?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(log)
        .and_then(|f| f.set_len(0))
        .map_err(io(log))?;
    tracing::debug!(log = %log.display(), new_base, "rotated serial log");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// (layout, offset, max_bytes, segments, next_offset, eof)
    type Case = (LogLayout, u64, u64, Vec<(LogPart, u64, u64)>, u64, bool);

    fn lay(rotated_len: u64, base: u64, current_len: u64) -> LogLayout {
        LogLayout {
            rotated_len,
            base,
            current_len,
        }
    }

    #[test]
    fn plan_read_table() {
        use LogPart::{Current, Rotated};
        let table: Vec<Case> = vec![
            // Empty log.
            (lay(0, 0, 0), 0, 10, vec![], 0, true),
            // No rotation yet.
            (lay(0, 0, 100), 0, 10, vec![(Current, 0, 10)], 10, false),
            (lay(0, 0, 100), 90, 50, vec![(Current, 90, 10)], 100, true),
            // Past the end: clamped to the end.
            (lay(0, 0, 100), 500, 10, vec![], 100, true),
            // Rotated: kept range is [1000, 1300).
            (
                lay(200, 1200, 100),
                0,
                50,
                vec![(Rotated, 0, 50)],
                1050,
                false,
            ),
            (
                lay(200, 1200, 100),
                1150,
                100,
                vec![(Rotated, 150, 50), (Current, 0, 50)],
                1250,
                false,
            ),
            (
                lay(200, 1200, 100),
                1200,
                0,
                vec![(Current, 0, 100)],
                1300,
                true,
            ),
            (
                lay(200, 1200, 100),
                1299,
                10,
                vec![(Current, 99, 1)],
                1300,
                true,
            ),
            // Rotated but current empty (just truncated).
            (
                lay(200, 1200, 0),
                1100,
                500,
                vec![(Rotated, 100, 100)],
                1200,
                true,
            ),
        ];
        for (layout, offset, max, segments, next, eof) in table {
            let plan = plan_read(layout, offset, max);
            assert_eq!(
                plan,
                ReadPlan {
                    segments,
                    next_offset: next,
                    eof
                },
                "{layout:?} offset {offset} max {max}"
            );
        }
    }

    #[test]
    fn plan_read_caps_at_max_read() {
        let plan = plan_read(lay(0, 0, 5 * MAX_READ), 0, 10 * MAX_READ);
        assert_eq!(plan.next_offset, MAX_READ);
        assert_eq!(
            plan_read(lay(0, 0, 5 * MAX_READ), 0, 0).next_offset,
            MAX_READ
        );
    }

    fn read_all(log: &Path, mut offset: u64) -> (Vec<u8>, u64) {
        let mut out = Vec::new();
        loop {
            let chunk = read(log, offset, 7).unwrap();
            out.extend(&chunk.data);
            offset = chunk.next_offset;
            if chunk.eof {
                return (out, offset);
            }
        }
    }

    #[test]
    fn rotate_keeps_newest_part_and_offsets_survive() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        assert_eq!(read(&log, 0, 10).unwrap().next_offset, 0);
        // A writer like QEMU's: O_APPEND, kept open across the rotation.
        let mut qemu = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        qemu.write_all(b"0123456789abcdefghij").unwrap(); // 20 bytes
        assert!(!rotate_if_over(&log, 32).unwrap());
        assert_eq!(read_all(&log, 0), (b"0123456789abcdefghij".to_vec(), 20));

        qemu.write_all(b"KLMNOPQRSTUVWXYZ").unwrap(); // 36 bytes total
        assert!(rotate_if_over(&log, 32).unwrap());
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        qemu.write_all(b"after").unwrap(); // lands at the start of the truncated file
        assert_eq!(std::fs::read(&log).unwrap(), b"after");

        // A reader that had reached 20 continues seamlessly.
        assert_eq!(read_all(&log, 20), (b"KLMNOPQRSTUVWXYZafter".to_vec(), 41));
        // Everything kept so far is still there from 0.
        let (all, end) = read_all(&log, 0);
        assert_eq!(all, b"0123456789abcdefghijKLMNOPQRSTUVWXYZafter");
        assert_eq!(end, 41);

        // A second rotation drops the oldest part: reads from 0 start at the oldest kept.
        qemu.write_all(&[b'x'; 40]).unwrap(); // current: 45 bytes, logical [36, 81)
        assert!(rotate_if_over(&log, 32).unwrap());
        let chunk = read(&log, 0, 5).unwrap();
        assert_eq!(chunk.data, b"after");
        assert_eq!(chunk.next_offset, 41);
        assert!(!chunk.eof);
        let (rest, end) = read_all(&log, 0);
        assert_eq!(rest.len(), 45);
        assert_eq!(end, 81);
    }
}
