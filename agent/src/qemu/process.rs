//! Launching QEMU detached and watching its process: pidfile, liveness (with a
//! `/proc/PID/cmdline` check against pid reuse) and SIGKILL.
//!
//! QEMU is not started with `-daemonize`: on QEMU 10 its fork and `setsid` come after the
//! seccomp filter, so `-daemonize` cannot be combined with `spawn=deny` or
//! `elevateprivileges=deny`, and `-run-with user=` (a `setuid` after the filter) dies with
//! SIGSYS under `elevateprivileges=deny`. As libvirt does, the agent instead starts QEMU in
//! its own process group, already as the unprivileged user ([`RunAs`], dropped by the
//! kernel-facing part of `std::process` before exec), and does not wait for it: the launch
//! is done when QEMU has written its pidfile and answers QMP. A QEMU the agent leaves
//! behind outlives it (re-adopted from the pidfile); one that exits is reaped by tokio.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long QEMU may take to write its pidfile and answer QMP.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the launch looks whether QEMU is up (or gone).
const LAUNCH_POLL: Duration = Duration::from_millis(20);

/// The unprivileged user QEMU runs as (`--qemu-user`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} exited with {status}: {log}")]
    LaunchFailed {
        program: String,
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("{program} did not answer QMP within {}s: {log}", LAUNCH_TIMEOUT.as_secs())]
    LaunchTimeout { program: String, log: String },
    #[error("cannot open QEMU log {0}")]
    Log(PathBuf, #[source] std::io::Error),
}

/// True when the permission bits `want` (e.g. `0o1` to traverse, `0o6` to read and write)
/// are granted to `uid`/`gid` (no supplementary groups) by a file with this owner and mode.
pub fn permits(mode: u32, owner: (u32, u32), uid: u32, gid: u32, want: u32) -> bool {
    let class = if owner.0 == uid {
        mode >> 6
    } else if owner.1 == gid {
        mode >> 3
    } else {
        mode
    };
    class & want == want
}

/// The first directory from `/` down to `path` that `user` cannot traverse (QEMU running
/// as that user could not reach the VM files below it), if any.
pub fn untraversable_ancestor(path: &Path, user: &RunAs) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut ancestors: Vec<&Path> = path.ancestors().collect();
    ancestors.reverse();
    ancestors.into_iter().find_map(|dir| {
        let meta = std::fs::metadata(dir).ok()?;
        let ok = permits(
            meta.mode(),
            (meta.uid(), meta.gid()),
            user.uid,
            user.gid,
            0o1,
        );
        (!ok).then(|| dir.to_path_buf())
    })
}

/// Starts `program args` (which must include `-pidfile PIDFILE` and `-qmp unix:QMP`) in
/// its own process group, as `run_as` when given, and returns QEMU's pid once the pidfile
/// names it and QMP answers. QEMU's own stderr goes to `log`, whose tail is the error
/// message when QEMU exits during start-up.
pub async fn launch(
    program: &str,
    args: &[OsString],
    pidfile: &Path,
    qmp_socket: &Path,
    log: &Path,
    run_as: Option<&RunAs>,
) -> Result<u32, ProcessError> {
    use std::os::unix::process::CommandExt;
    let log_file = std::fs::File::create(log).map_err(|e| ProcessError::Log(log.into(), e))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| ProcessError::Log(log.into(), e))?;
    tracing::debug!(program, ?args, ?run_as, "launching QEMU");
    let mut command = std::process::Command::new(program);
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .process_group(0);
    if let Some(user) = run_as {
        // Dropping from root also clears the supplementary groups (std does setgroups(0)).
        command.uid(user.uid).gid(user.gid);
    }
    let mut child = tokio::process::Command::from(command)
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            program: program.to_string(),
            source,
        })?;
    let deadline = tokio::time::Instant::now() + LAUNCH_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Err(ProcessError::LaunchFailed {
                    program: program.to_string(),
                    status,
                    log: log_tail(log),
                })
            }
            Ok(None) => {}
            Err(source) => {
                return Err(ProcessError::Spawn {
                    program: program.to_string(),
                    source,
                })
            }
        }
        if let Some(pid) = read_pid(pidfile) {
            // QMP greets once QEMU's main loop runs, i.e. after machine set-up succeeded.
            if super::Qmp::connect(qmp_socket).await.is_ok() {
                // Not killed on drop: QEMU outlives this handle (and the agent).
                drop(child);
                return Ok(pid);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill().await;
            return Err(ProcessError::LaunchTimeout {
                program: program.to_string(),
                log: log_tail(log),
            });
        }
        tokio::time::sleep(LAUNCH_POLL).await;
    }
}

/// The systemd scope unit a VM's QEMU runs in when the agent runs under systemd.
pub fn scope_unit(vm_id: uuid::Uuid) -> String {
    format!("otherix-vm-{vm_id}")
}

/// True when the agent runs as a systemd service (`INVOCATION_ID` is set) and
/// `systemd-run` exists: QEMU then gets its own scope, so stopping or restarting the
/// agent's unit (whose cgroup would otherwise hold QEMU) leaves VMs running.
pub fn systemd_scope_available() -> bool {
    std::env::var_os("INVOCATION_ID").is_some()
        && crate::host::find_on_path("systemd-run").is_some()
}

/// `program args`, wrapped in `systemd-run --scope` when `scope` names a unit (with
/// `--uid`/`--gid` when QEMU runs as `run_as`: systemd-run then drops privileges itself,
/// after creating the scope).
pub fn in_scope(
    program: &str,
    args: &[OsString],
    scope: Option<&str>,
    run_as: Option<&RunAs>,
) -> (String, Vec<OsString>) {
    let Some(unit) = scope else {
        return (program.to_string(), args.to_vec());
    };
    let mut wrapped: Vec<OsString> = ["--scope", "--collect", "--quiet", "--unit", unit]
        .into_iter()
        .map(OsString::from)
        .collect();
    if let Some(user) = run_as {
        wrapped.push(format!("--uid={}", user.uid).into());
        wrapped.push(format!("--gid={}", user.gid).into());
    }
    wrapped.push("--".into());
    wrapped.push(program.into());
    wrapped.extend(args.iter().cloned());
    ("systemd-run".to_string(), wrapped)
}

/// The last lines of a log file, joined for an error message.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join("; ");
    if tail.is_empty() {
        "(no output)".into()
    } else {
        tail
    }
}

/// The pid in a QEMU pidfile, if the file exists and holds one.
pub fn read_pid(pidfile: &Path) -> Option<u32> {
    std::fs::read_to_string(pidfile)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 0)
}

/// True if `pid` is alive and its command line mentions `marker` (the VM's run dir), so a
/// recycled pid of another process is not mistaken for the VM. Zombies have no cmdline
/// and count as dead.
pub fn pid_alive(pid: u32, marker: &Path) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if kill(Pid::from_raw(raw), None).is_err() {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let marker = marker.as_os_str().as_encoded_bytes();
    !marker.is_empty() && cmdline.windows(marker.len()).any(|w| w == marker)
}

/// Sends SIGKILL to `pid` (errors ignored: the process may already be gone).
pub fn kill_pid(pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
    }
}

/// Polls until `pid` is gone or `timeout` passes; true if it is gone.
pub async fn wait_exit(pid: u32, marker: &Path, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if !pid_alive(pid, marker) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_table() {
        let table = [
            (0o711, (0, 0), 999, 995, 0o1, true),
            (0o700, (0, 0), 999, 995, 0o1, false),
            (0o750, (0, 995), 999, 995, 0o1, true),
            (0o700, (999, 995), 999, 995, 0o1, true),
            (0o666, (0, 0), 999, 995, 0o6, true),
            (0o600, (0, 0), 999, 995, 0o6, false),
            // The owner class decides for the owner, even when others may.
            (0o077, (999, 0), 999, 995, 0o1, false),
        ];
        for (mode, owner, uid, gid, want, expect) in table {
            assert_eq!(
                permits(mode, owner, uid, gid, want),
                expect,
                "{mode:o} {owner:?}"
            );
        }
    }

    #[test]
    fn untraversable_ancestor_finds_a_closed_dir() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b");
        std::fs::create_dir_all(&deep).unwrap();
        let nobody = RunAs {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
        };
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::set_permissions(dir.path().join("a"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        assert_eq!(
            untraversable_ancestor(&deep, &nobody),
            Some(dir.path().join("a"))
        );
        std::fs::set_permissions(dir.path().join("a"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        assert_eq!(untraversable_ancestor(&deep, &nobody), None);
    }

    #[test]
    fn read_pid_valid_and_garbage_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("qemu.pid");
        assert_eq!(read_pid(&f), None);
        std::fs::write(&f, "1234\n").unwrap();
        assert_eq!(read_pid(&f), Some(1234));
        std::fs::write(&f, "nope").unwrap();
        assert_eq!(read_pid(&f), None);
    }

    #[test]
    fn pid_alive_own_process_needs_marker_match() {
        let me = std::process::id();
        let exe = std::env::current_exe().unwrap();
        assert!(pid_alive(me, &exe));
        assert!(!pid_alive(me, Path::new("/no/such/run/dir")));
        assert!(!pid_alive(u32::MAX - 1, &exe));
    }

    #[test]
    fn in_scope_wraps_only_with_a_unit() {
        let args: Vec<OsString> = vec!["-m".into(), "256".into()];
        assert_eq!(
            in_scope("qemu-system-x86_64", &args, None, None),
            ("qemu-system-x86_64".to_string(), args.clone())
        );
        let unit = scope_unit(uuid::Uuid::nil());
        assert_eq!(unit, "otherix-vm-00000000-0000-0000-0000-000000000000");
        let (program, wrapped) = in_scope("qemu-system-x86_64", &args, Some(&unit), None);
        assert_eq!(program, "systemd-run");
        let wrapped: Vec<String> = wrapped
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            wrapped.join(" "),
            format!("--scope --collect --quiet --unit {unit} -- qemu-system-x86_64 -m 256")
        );
        let user = RunAs {
            name: "otherix-qemu".into(),
            uid: 999,
            gid: 995,
        };
        let (_, wrapped) = in_scope("qemu-system-x86_64", &args, Some(&unit), Some(&user));
        let wrapped: Vec<String> = wrapped
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            wrapped.join(" "),
            format!("--scope --collect --quiet --unit {unit} --uid=999 --gid=995 -- qemu-system-x86_64 -m 256")
        );
    }

    #[test]
    fn log_tail_keeps_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("qemu.log");
        assert_eq!(log_tail(&f), "(no output)");
        std::fs::write(&f, "a\nb\n\nc\nd\ne\nf\n").unwrap();
        assert_eq!(log_tail(&f), "b; c; d; e; f");
    }
}
