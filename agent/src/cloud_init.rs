//! The cloud-init NoCloud seed: a small FAT image labelled `cidata` holding `meta-data`,
//! `user-data` and (when set) `network-config`, built in memory with `fatfs` and written
//! atomically to `POOL_PATH/vms/<vm_id>/seed.img`. It is rebuilt from the task's spec on
//! every boot, so an edited user-data reaches the guest on its next start.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use otherix_api::VmSpec;
use uuid::Uuid;

use crate::atomic_file::write_atomic;

/// The seed's file name in the VM's disk dir.
pub const SEED_IMAGE: &str = "seed.img";
/// The FAT volume label cloud-init's NoCloud datasource looks for (11 bytes, space padded).
pub const SEED_LABEL: [u8; 11] = *b"cidata     ";
/// user-data when the spec sets none: a valid, empty cloud-config.
pub const DEFAULT_USER_DATA: &str = "#cloud-config\n";

const MIB: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot format the cidata FAT image")]
    Format(#[source] std::io::Error),
    #[error("cannot write {file} into the cidata image")]
    AddFile {
        file: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write seed {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("cannot remove stale seed {0}")]
    Remove(PathBuf, #[source] std::io::Error),
}

/// The files of one seed, in the order they are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFiles {
    pub files: Vec<(&'static str, String)>,
}

/// What the seed of a VM holds; `None` when the spec disables cloud-init.
pub fn seed_files(vm_id: Uuid, vm_name: &str, spec: &VmSpec) -> Option<SeedFiles> {
    if spec.no_cloud_init {
        return None;
    }
    let mut meta = format!("instance-id: {vm_id}\nlocal-hostname: {vm_name}\n");
    if !spec.ssh_authorized_keys.is_empty() {
        // cloud-init's NoCloud reads `public-keys` from meta-data and installs them for
        // the default user, whatever the user-data is. JSON strings are YAML scalars.
        meta.push_str("public-keys:\n");
        for key in &spec.ssh_authorized_keys {
            let quoted = serde_json::to_string(key).expect("a string serializes");
            meta.push_str(&format!("  - {quoted}\n"));
        }
    }
    let mut files = vec![
        ("meta-data", meta),
        (
            "user-data",
            spec.user_data
                .clone()
                .unwrap_or_else(|| DEFAULT_USER_DATA.to_string()),
        ),
    ];
    if let Some(network_config) = &spec.network_config {
        files.push(("network-config", network_config.clone()));
    }
    Some(SeedFiles { files })
}

/// Image size for `content_bytes` of files: at least 2 MiB, whole MiB, with 1 MiB spare
/// for the FAT structures.
fn seed_image_size(content_bytes: usize) -> usize {
    (content_bytes + MIB).div_ceil(MIB).max(2) * MIB
}

/// Formats a `cidata` FAT image holding `seed`'s files.
pub fn build_seed_image(seed: &SeedFiles) -> Result<Vec<u8>, SeedError> {
    let content: usize = seed.files.iter().map(|(_, body)| body.len()).sum();
    let mut image = Cursor::new(vec![0u8; seed_image_size(content)]);
    fatfs::format_volume(
        &mut image,
        fatfs::FormatVolumeOptions::new().volume_label(SEED_LABEL),
    )
    .map_err(SeedError::Format)?;
    {
        let fs = fatfs::FileSystem::new(&mut image, fatfs::FsOptions::new())
            .map_err(SeedError::Format)?;
        for (file, body) in &seed.files {
            let root = fs.root_dir();
            let add = |source| SeedError::AddFile { file, source };
            let mut f = root.create_file(file).map_err(add)?;
            f.truncate().map_err(add)?;
            f.write_all(body.as_bytes()).map_err(add)?;
            f.flush().map_err(add)?;
        }
        fs.unmount().map_err(SeedError::Format)?;
    }
    Ok(image.into_inner())
}

/// `POOL_PATH/vms/<vm_id>/seed.img`.
pub fn seed_path(disk_dir: &Path) -> PathBuf {
    disk_dir.join(SEED_IMAGE)
}

/// Writes the VM's seed into `disk_dir` (replacing the previous one) and returns its path,
/// or removes a stale seed and returns `None` when the spec disables cloud-init.
pub fn write_seed(
    disk_dir: &Path,
    vm_id: Uuid,
    vm_name: &str,
    spec: &VmSpec,
) -> Result<Option<PathBuf>, SeedError> {
    let path = seed_path(disk_dir);
    let Some(files) = seed_files(vm_id, vm_name, spec) else {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SeedError::Remove(path, e)),
            _ => Ok(None),
        };
    };
    let image = build_seed_image(&files)?;
    write_atomic(&path, &image).map_err(|e| SeedError::Write(path.clone(), e))?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use otherix_api::Arch;

    use super::*;

    type WantFiles = Vec<(&'static str, &'static str)>;

    fn spec() -> VmSpec {
        VmSpec::new("http://x/i.img", Arch::Amd64)
    }

    fn read_back(image: Vec<u8>) -> (String, Vec<(String, String)>) {
        let fs = fatfs::FileSystem::new(Cursor::new(image), fatfs::FsOptions::new()).unwrap();
        let label = fs.volume_label();
        let mut files = Vec::new();
        for entry in fs.root_dir().iter() {
            let entry = entry.unwrap();
            let mut body = String::new();
            entry.to_file().read_to_string(&mut body).unwrap();
            files.push((entry.file_name(), body));
        }
        (label, files)
    }

    #[test]
    fn meta_data_with_keys_parses_as_yaml_listing_them() {
        let mut spec = spec();
        let keys = vec![
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB5q alice: laptop #1".to_owned(),
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB 'single' \"double\" \\".to_owned(),
        ];
        spec.ssh_authorized_keys = keys.clone();
        let seed = seed_files(Uuid::nil(), "web-1", &spec).unwrap();
        let meta: serde_yaml::Value = serde_yaml::from_str(&seed.files[0].1).unwrap();
        let got: Vec<String> = serde_yaml::from_value(meta["public-keys"].clone()).unwrap();
        assert_eq!(got, keys);
        assert_eq!(meta["local-hostname"], "web-1");
    }

    #[test]
    fn seed_files_table() {
        let id = Uuid::parse_str("6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11").unwrap();
        let meta = "instance-id: 6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11\nlocal-hostname: web-1\n";
        let mut with_all = spec();
        with_all.user_data = Some("#cloud-config\npackages: [nginx]\n".into());
        with_all.network_config = Some("version: 2\n".into());
        let mut disabled = spec();
        disabled.no_cloud_init = true;
        let mut with_keys = spec();
        with_keys.user_data = Some("#!/bin/sh\necho hi\n".into());
        with_keys.ssh_authorized_keys = vec![
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB5q alice@laptop".into(),
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB \"quoted\" #x".into(),
        ];
        let meta_with_keys =
            "instance-id: 6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11\nlocal-hostname: web-1\n\
            public-keys:\n  - \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB5q alice@laptop\"\n  \
            - \"ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB \\\"quoted\\\" #x\"\n";
        let table: Vec<(VmSpec, Option<WantFiles>)> = vec![
            (
                with_keys,
                Some(vec![
                    ("meta-data", meta_with_keys),
                    ("user-data", "#!/bin/sh\necho hi\n"),
                ]),
            ),
            (
                spec(),
                Some(vec![("meta-data", meta), ("user-data", DEFAULT_USER_DATA)]),
            ),
            (
                with_all,
                Some(vec![
                    ("meta-data", meta),
                    ("user-data", "#cloud-config\npackages: [nginx]\n"),
                    ("network-config", "version: 2\n"),
                ]),
            ),
            (disabled, None),
        ];
        for (spec, want) in table {
            let got = seed_files(id, "web-1", &spec);
            let want = want.map(|files| SeedFiles {
                files: files
                    .into_iter()
                    .map(|(name, body)| (name, body.to_string()))
                    .collect(),
            });
            assert_eq!(got, want);
        }
    }

    #[test]
    fn seed_image_size_table() {
        for (content, want) in [(0, 2 * MIB), (MIB, 2 * MIB), (MIB + 1, 3 * MIB)] {
            assert_eq!(seed_image_size(content), want, "{content}");
        }
    }

    #[test]
    fn build_seed_image_reads_back_label_and_files() {
        let mut s = spec();
        s.user_data = Some("#cloud-config\nhostname: x\n".into());
        s.network_config = Some("version: 2\nethernets: {}\n".into());
        let files = seed_files(Uuid::new_v4(), "web-1", &s).unwrap();
        let (label, got) = read_back(build_seed_image(&files).unwrap());
        assert_eq!(label, "cidata");
        let want: Vec<(String, String)> = files
            .files
            .iter()
            .map(|(n, b)| (n.to_string(), b.clone()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn build_seed_image_large_user_data_fits() {
        let mut s = spec();
        s.user_data = Some(format!("#cloud-config\n#{}\n", "x".repeat(3 * MIB)));
        let files = seed_files(Uuid::new_v4(), "big", &s).unwrap();
        let (_, got) = read_back(build_seed_image(&files).unwrap());
        assert_eq!(got[1].1.len(), s.user_data.unwrap().len());
    }

    #[test]
    fn write_seed_replaces_and_removes_when_disabled() {
        let dir = tempfile::tempdir().unwrap();
        let id = Uuid::new_v4();
        let path = write_seed(dir.path(), id, "web-1", &spec())
            .unwrap()
            .unwrap();
        assert_eq!(path, dir.path().join(SEED_IMAGE));
        let mut s = spec();
        s.user_data = Some("#cloud-config\nchanged: true\n".into());
        write_seed(dir.path(), id, "web-1", &s).unwrap();
        let (_, files) = read_back(std::fs::read(&path).unwrap());
        assert_eq!(files[1].1, "#cloud-config\nchanged: true\n");
        s.no_cloud_init = true;
        assert_eq!(write_seed(dir.path(), id, "web-1", &s).unwrap(), None);
        assert!(!path.exists());
        assert_eq!(write_seed(dir.path(), id, "web-1", &s).unwrap(), None);
    }
}
