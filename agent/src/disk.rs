//! VM disks in `POOL_PATH/vms/<vm_id>/`: a qcow2 overlay on the cached base image
//! (`disk.qcow2`), or a full raw copy (`disk.raw`), grown to `disk_gib` when asked.
//! Creation is idempotent: an existing disk is reused (disks are built under a temp name
//! and renamed, so an existing one is complete).

use std::path::{Path, PathBuf};

use otherix_api::{DiskFormat, ErrorCode};
use uuid::Uuid;

use crate::image_cache::CachedImage;
use crate::qemu::DiskImageFormat;

pub const QCOW2_DISK: &str = "disk.qcow2";
pub const RAW_DISK: &str = "disk.raw";
const GIB: u64 = 1024 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk_gib {requested_gib} GiB is smaller than the image's virtual size of {virtual_size} bytes")]
    TooSmall {
        requested_gib: u32,
        virtual_size: u64,
    },
    #[error("qemu-img {action} failed: {stderr}")]
    QemuImg {
        action: &'static str,
        stderr: String,
    },
    #[error("disk I/O on {0}")]
    Io(PathBuf, #[source] std::io::Error),
}

impl DiskError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DiskError::TooSmall { .. } => ErrorCode::DiskTooSmall,
            DiskError::QemuImg { .. } | DiskError::Io(..) => ErrorCode::DiskFailed,
        }
    }
}

/// A VM's root disk on a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDisk {
    pub path: PathBuf,
    pub format: DiskImageFormat,
}

/// `POOL_PATH/vms/<vm_id>`.
pub fn disk_dir(pool_path: &Path, vm_id: Uuid) -> PathBuf {
    pool_path.join("vms").join(vm_id.to_string())
}

/// The VM's disk if it exists (qcow2 preferred).
pub fn existing_disk(pool_path: &Path, vm_id: Uuid) -> Option<VmDisk> {
    let dir = disk_dir(pool_path, vm_id);
    [
        (QCOW2_DISK, DiskImageFormat::Qcow2),
        (RAW_DISK, DiskImageFormat::Raw),
    ]
    .into_iter()
    .map(|(name, format)| VmDisk {
        path: dir.join(name),
        format,
    })
    .find(|d| d.path.is_file())
}

/// The size to pass to qemu-img: `None` keeps the image's size.
fn target_size(disk_gib: Option<u32>, virtual_size: u64) -> Result<Option<u64>, DiskError> {
    let Some(gib) = disk_gib else {
        return Ok(None);
    };
    let bytes = u64::from(gib) * GIB;
    match bytes.cmp(&virtual_size) {
        std::cmp::Ordering::Less => Err(DiskError::TooSmall {
            requested_gib: gib,
            virtual_size,
        }),
        std::cmp::Ordering::Equal => Ok(None),
        std::cmp::Ordering::Greater => Ok(Some(bytes)),
    }
}

async fn qemu_img(action: &'static str, args: Vec<std::ffi::OsString>) -> Result<(), DiskError> {
    let output = tokio::process::Command::new("qemu-img")
        .args(&args)
        .output()
        .await
        .map_err(|e| DiskError::QemuImg {
            action,
            stderr: format!("cannot run qemu-img: {e}"),
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(DiskError::QemuImg {
            action,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Creates the VM's disk from `base` unless it exists already.
pub async fn ensure_disk(
    pool_path: &Path,
    vm_id: Uuid,
    base: &CachedImage,
    format: DiskFormat,
    disk_gib: Option<u32>,
) -> Result<VmDisk, DiskError> {
    if let Some(disk) = existing_disk(pool_path, vm_id) {
        return Ok(disk);
    }
    let size = target_size(disk_gib, base.virtual_size)?;
    let dir = disk_dir(pool_path, vm_id);
    std::fs::create_dir_all(&dir).map_err(|e| DiskError::Io(dir.clone(), e))?;
    let (name, disk_format) = match format {
        DiskFormat::Qcow2 => (QCOW2_DISK, DiskImageFormat::Qcow2),
        DiskFormat::Raw => (RAW_DISK, DiskImageFormat::Raw),
    };
    let partial = dir.join(format!(".{name}.partial"));
    let _ = std::fs::remove_file(&partial);
    let result = build(&partial, base, disk_format, size).await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    let path = dir.join(name);
    std::fs::rename(&partial, &path).map_err(|e| DiskError::Io(path.clone(), e))?;
    Ok(VmDisk {
        path,
        format: disk_format,
    })
}

async fn build(
    target: &Path,
    base: &CachedImage,
    format: DiskImageFormat,
    size: Option<u64>,
) -> Result<(), DiskError> {
    match format {
        DiskImageFormat::Qcow2 => {
            let mut args: Vec<std::ffi::OsString> = vec![
                "create".into(),
                "-f".into(),
                "qcow2".into(),
                "-F".into(),
                base.format.clone().into(),
                "-b".into(),
                base.path.clone().into(),
                target.into(),
            ];
            if let Some(size) = size {
                args.push(size.to_string().into());
            }
            qemu_img("create", args).await
        }
        DiskImageFormat::Raw => {
            let args = vec![
                "convert".into(),
                "-f".into(),
                base.format.clone().into(),
                "-O".into(),
                "raw".into(),
                base.path.clone().into(),
                target.into(),
            ];
            qemu_img("convert", args).await?;
            if let Some(size) = size {
                let args = vec![
                    "resize".into(),
                    "-f".into(),
                    "raw".into(),
                    target.into(),
                    size.to_string().into(),
                ];
                qemu_img("resize", args).await?;
            }
            Ok(())
        }
    }
}

/// Removes `POOL_PATH/vms/<vm_id>`; absent is fine.
pub fn remove_disk_dir(pool_path: &Path, vm_id: Uuid) -> Result<(), DiskError> {
    let dir = disk_dir(pool_path, vm_id);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DiskError::Io(dir, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_size_table() {
        let table = [
            (None, 10 * GIB, Ok(None)),
            (Some(10), 10 * GIB, Ok(None)),
            (Some(20), 10 * GIB, Ok(Some(20 * GIB))),
            (Some(1), 10 * GIB, Err(ErrorCode::DiskTooSmall)),
        ];
        for (gib, vsize, want) in table {
            let got = target_size(gib, vsize).map_err(|e| e.code());
            assert_eq!(got, want, "{gib:?} {vsize}");
        }
    }

    async fn base_image(dir: &Path) -> CachedImage {
        let path = dir.join("base.raw");
        std::fs::write(&path, vec![0u8; 1024 * 1024]).unwrap();
        CachedImage {
            path,
            sha256: "x".into(),
            format: "raw".into(),
            virtual_size: 1024 * 1024,
        }
    }

    async fn virtual_size(path: &Path) -> (String, u64) {
        let out = std::process::Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(path)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            v["format"].as_str().unwrap().to_string(),
            v["virtual-size"].as_u64().unwrap(),
        )
    }

    #[tokio::test]
    async fn ensure_disk_qcow2_overlay_grows_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_image(dir.path()).await;
        let vm = Uuid::new_v4();
        let disk = ensure_disk(dir.path(), vm, &base, DiskFormat::Qcow2, Some(1))
            .await
            .unwrap();
        assert_eq!(disk.path, disk_dir(dir.path(), vm).join(QCOW2_DISK));
        assert_eq!(virtual_size(&disk.path).await, ("qcow2".into(), GIB));
        let again = ensure_disk(dir.path(), vm, &base, DiskFormat::Qcow2, Some(1))
            .await
            .unwrap();
        assert_eq!(again, disk);
        remove_disk_dir(dir.path(), vm).unwrap();
        remove_disk_dir(dir.path(), vm).unwrap();
        assert_eq!(existing_disk(dir.path(), vm), None);
    }

    #[tokio::test]
    async fn ensure_disk_raw_copy_keeps_image_size() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_image(dir.path()).await;
        let vm = Uuid::new_v4();
        let disk = ensure_disk(dir.path(), vm, &base, DiskFormat::Raw, None)
            .await
            .unwrap();
        assert_eq!(disk.format, DiskImageFormat::Raw);
        assert_eq!(virtual_size(&disk.path).await, ("raw".into(), 1024 * 1024));
    }
}
