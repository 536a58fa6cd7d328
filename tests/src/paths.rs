//! Where the workspace, the built binaries and the test guest images are.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The profile directory holding the binaries: the one this test executable was built in.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>, or target/<profile>/<binary> (otherix-bench)
    let parent = exe.parent().expect("the executable has a directory");
    let dir = if parent.ends_with("deps") {
        parent
            .parent()
            .expect("test binary lives in target/<profile>/deps")
    } else {
        parent
    }
    .to_path_buf();
    for bin in ["otherixd", "otherix-agent", "otherix"] {
        assert!(
            dir.join(bin).exists(),
            "{} is missing: build the binaries first with `cargo build --workspace --bins` (scripts/test.sh does)",
            dir.join(bin).display()
        );
    }
    dir
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// The directory with the built test guest images, building them once if needed.
pub fn test_images() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = workspace_root();
        let out = root.join("target/test-images");
        let status = Command::new("bash")
            .arg(root.join("tests/images/build.sh"))
            .arg(&out)
            .status()
            .expect("run tests/images/build.sh");
        assert!(status.success(), "tests/images/build.sh failed: {status}");
        out
    })
    .clone()
}

/// The names of the entries of `dir` (empty when it does not exist).
pub fn files_in(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
