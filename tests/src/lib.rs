//! Shared helpers for the end-to-end tests: where the real binaries are,
//! fixture buildpacks and apps, and small builders for tar archives.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub mod apps;
pub mod builds;
pub mod hostile;
pub mod platform;
pub mod slugs;
// cli_docs.rs is not a module of this crate: slugbuilder's and slugrunner's
// unit tests include it, since only they reach their clap definitions.

/// Root of the repository.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Directory with fixture buildpacks and apps.
pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

/// Path of a workspace binary (`slugbuilder` or `slugrunner`), built once per
/// test process so that the tests always drive the current code.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // target/<profile>/deps/<test-binary> -> target/<profile>
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in target/<profile>/deps")
            .to_path_buf();
        let profile = profile_dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        // What the test's own cargo set for this package (CARGO_MANIFEST_DIR,
        // CARGO_PKG_NAME, CARGO_PKG_VERSION_*, ...) would make build scripts
        // that track it (ring's) rerun whenever the binaries were last built
        // from a shell: a rebuild of half the tree. CARGO_HOME,
        // CARGO_TARGET_DIR and cargo's own settings stay.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_MANIFEST_")
                || key.starts_with("CARGO_BIN_")
                || ["CARGO_CRATE_NAME", "CARGO_PRIMARY_PACKAGE", "OUT_DIR"].contains(&&*key)
            {
                cmd.env_remove(&*key);
            }
        }
        cmd.current_dir(repo_root()).args([
            "build",
            "--quiet",
            "-p",
            "slugbuilder",
            "-p",
            "slugrunner",
        ]);
        if profile == "release" {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
        profile_dir
    });
    dir.join(name)
}
