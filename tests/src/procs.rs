//! Looking at processes and logs from outside: the QEMU processes whose command line
//! mentions a path or id (read from /proc), and log text without its ANSI colours.

use crate::wait;

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The pids of running `qemu-system-*` processes whose command line mentions `needle`.
pub fn qemu_pids_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        let prog = cmdline.split('\0').next().unwrap_or("");
        if prog
            .rsplit('/')
            .next()
            .unwrap_or("")
            .starts_with("qemu-system")
            && cmdline.contains(needle)
            && wait::pid_alive(pid)
        {
            pids.push(pid);
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::strip_ansi;

    #[test]
    fn strip_ansi_table() {
        let cases = [
            ("plain", "plain"),
            (
                "\u{1b}[3mtask_id\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"x\"",
                "task_id=\"x\"",
            ),
            ("\u{1b}[32m INFO\u{1b}[0m a", " INFO a"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(strip_ansi(input), want, "{input:?}");
        }
    }
}
