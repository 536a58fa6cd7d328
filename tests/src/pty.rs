//! Runs `otherix` on a pseudo-terminal, as a user's shell would (stdin and stdout are the
//! pty's terminal side, so raw mode and Ctrl-] behave as for a person typing); stderr goes
//! to a file. What the CLI prints is collected from the pty's other side.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::paths::bin;
use crate::wait::until;

/// An `otherix` process on a pty. Killed on drop.
pub struct PtyCli {
    child: Child,
    master: File,
    output: Arc<Mutex<Vec<u8>>>,
    pub stderr: PathBuf,
}

impl PtyCli {
    /// Starts `otherix ARGS` with config `config`, stderr to `stderr`.
    pub fn spawn(config: &Path, args: &[&str], stderr: &Path) -> PtyCli {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let slave = File::from(pty.slave);
        let child = Command::new(bin("otherix"))
            .args(args)
            .env("OTHERIX_CONFIG", config)
            .env_remove("OTHERIX_SERVER")
            .env_remove("OTHERIX_TOKEN")
            .env_remove("OTHERIX_PROJECT")
            .stdin(Stdio::from(slave.try_clone().expect("dup pty")))
            .stdout(Stdio::from(slave))
            .stderr(File::create(stderr).expect("stderr file"))
            .spawn()
            .expect("spawn otherix");
        let master = File::from(pty.master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("dup pty master");
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the CLI exits and the terminal side is closed.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        PtyCli {
            child,
            master,
            output,
            stderr: stderr.to_owned(),
        }
    }

    /// Types `bytes` at the terminal.
    pub fn type_bytes(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("write to the pty");
    }

    /// Everything the CLI printed on its terminal so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the terminal shows `needle`.
    pub fn wait_output(&self, needle: &str, timeout: Duration) {
        until(&format!("{needle:?} on the terminal"), timeout, || {
            self.output().contains(needle).then_some(())
        });
    }

    /// Waits until stderr shows `needle`.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) {
        until(&format!("{needle:?} on stderr"), timeout, || {
            self.stderr_text().contains(needle).then_some(())
        });
    }

    /// Waits for the CLI to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        until("otherix to exit", timeout, || {
            self.child.try_wait().unwrap()
        })
    }
}

impl Drop for PtyCli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
