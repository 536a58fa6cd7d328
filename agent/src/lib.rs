//! otherix-agent: the otherix node agent. It enrolls and holds a client certificate
//! ([`enroll`]), dials otherixd's agent gateway ([`session`]), runs tasks idempotently ([`executor`]) through a [`driver::VmDriver`]
//! whose real implementation ([`local_driver`]) composes the image cache
//! ([`image_cache`], [`pool_images`]), disks ([`disk`]), per-boot setup ([`boot_setup`]:
//! [`firmware`], the [`cloud_init`] seed, [`network`] taps and port forwards), QEMU
//! ([`qemu`]), the capped serial console ([`serial_log`]) and the VM registry
//! ([`vm_registry`]); [`monitor`] notices VMs that stop outside a task,
//! [`guest_power`] tells a guest poweroff from a QEMU crash, and [`guest_agent`] asks
//! each running guest's qemu-ga for its addresses.

pub mod atomic_file;
pub mod boot_setup;
pub mod cloud_init;
pub mod console;
pub mod disk;
pub mod driver;
pub mod enroll;
pub mod epoch_fence;
pub mod error_chain;
pub mod executor;
pub mod firmware;
pub mod guest_agent;
pub mod guest_power;
pub mod host;
pub mod image_cache;
pub mod image_fetch;
pub mod image_format;
pub mod local_driver;
pub mod monitor;
pub mod network;
pub mod outbox;
pub mod pool_images;
pub mod qemu;
pub mod serial_log;
pub mod session;
pub mod sim_driver;
pub mod task_store;
pub mod url_policy;
pub mod vm_registry;
pub mod vm_stats;
