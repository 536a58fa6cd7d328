//! The QEMU driver: the pure argv builder ([`argv`]), process launch and liveness
//! ([`process`]), the QMP client ([`qmp`]) and the guest agent client ([`qga`]).

pub mod argv;
pub mod process;
pub mod qga;
pub mod qmp;

pub use argv::{build_argv, mac_for_vm, BootFirmware, DiskImageFormat, LaunchConfig, Nic};
pub use process::{launch, pid_alive, read_pid, ProcessError};
pub use qga::{Qga, QgaError};
pub use qmp::{Qmp, QmpError, RunStatus};
