//! The QEMU driver: the pure argv builder ([`argv`]), process launch and liveness
//! ([`process`]) and the QMP client ([`qmp`]).

pub mod argv;
pub mod process;
pub mod qmp;

pub use argv::{build_argv, mac_for_vm, BootFirmware, DiskImageFormat, LaunchConfig, Nic};
pub use process::{launch, pid_alive, read_pid, ProcessError};
pub use qmp::{Qmp, QmpError, RunStatus};
