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

/// Whether `CI` says yes: set to anything but "", "0" or "false".
pub fn in_ci() -> bool {
    ci_says_yes(std::env::var_os("CI").as_deref())
}

fn ci_says_yes(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| !matches!(v.to_str(), Some("" | "0" | "false")))
}

/// The one rule for a test that cannot run here (`why_not` says why:
/// not root, a tool missing): in CI, which runs as root and installs
/// every tool, that fails the test; elsewhere the test is skipped with the
/// reason on stderr. Returns whether the test can go on.
pub fn runnable(test: &str, why_not: Option<String>) -> bool {
    let Some(why) = why_not else {
        return true;
    };
    assert!(!in_ci(), "CI must run {test}, but it cannot: {why}");
    eprintln!("SKIPPED {test}: {why}");
    false
}

/// Whether `program` is on PATH.
pub fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// For a test that needs `program`: [`runnable`] when it is not on PATH.
pub fn have(test: &str, program: &str) -> bool {
    runnable(
        test,
        (!installed(program)).then(|| format!("{program} is not installed")),
    )
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

#[cfg(test)]
mod tests {
    use super::ci_says_yes;
    use std::ffi::OsStr;

    #[test]
    fn ci_means_yes_unless_unset_empty_0_or_false() {
        for no in [None, Some(""), Some("0"), Some("false")] {
            assert!(!ci_says_yes(no.map(OsStr::new)), "{no:?}");
        }
        for yes in ["1", "true", "yes", "TRUE"] {
            assert!(ci_says_yes(Some(OsStr::new(yes))), "{yes}");
        }
    }
}
