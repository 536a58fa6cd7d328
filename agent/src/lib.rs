//! otherix-agent: the otherix node agent. It dials otherixd's agent gateway
//! ([`session`]), runs tasks idempotently ([`executor`]) through a [`driver::VmDriver`]
//! whose real implementation ([`local_driver`]) composes the image cache
//! ([`image_cache`]), disks ([`disk`]), QEMU ([`qemu`]) and the VM registry
//! ([`vm_registry`]); [`monitor`] notices VMs that stop outside a task.

pub mod atomic_file;
pub mod disk;
pub mod driver;
pub mod error_chain;
pub mod executor;
pub mod host;
pub mod image_cache;
pub mod image_fetch;
pub mod local_driver;
pub mod monitor;
pub mod outbox;
pub mod qemu;
pub mod session;
pub mod task_store;
pub mod vm_registry;
