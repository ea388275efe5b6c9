//! Shared helpers for the end-to-end tests: where the real binaries are,
//! fixture buildpacks and apps, and small builders for tar archives.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

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

/// Path of a workspace binary (`slugbuilder` or `slugrunner`): the one
/// Cargo built beside this test's own executable (`target/<profile>/`).
///
/// `CARGO_BIN_EXE_*` is set only for the tests of the package that owns a
/// binary, and artifact dependencies (`-Z bindeps`) are nightly-only, so
/// the end-to-end tests look where Cargo puts binaries. Both packages have
/// integration tests of their own, so `cargo test --workspace` builds both
/// executables; `scripts/test` also runs `cargo build --workspace --bins`
/// first. A binary older than the sources it is made of is refused rather
/// than tested: for one test file after a change, `cargo build --bins`
/// first.
pub fn bin(name: &str) -> PathBuf {
    // target/<profile>/deps/<test-binary> -> target/<profile>
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let release = if profile_dir.ends_with("release") {
        " --release"
    } else {
        ""
    };
    let path = profile_dir.join(name);
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: build the binaries first (cargo build --bins{release})",
                path.display()
            )
        });
    let (newest, source) = newest_source(name);
    assert!(
        built >= newest,
        "{} is older than {}: rebuild it first (cargo build --bins{release})",
        path.display(),
        source.display()
    );
    path
}

/// The newest file binary `name` is built from: its crate's and the
/// library crates' sources and manifests, and for slugbuilder the bundled buildpacks it
/// embeds (without the byte-code caches that running a Python helper
/// leaves). Not the lock file: Cargo relinks a binary only when its own
/// dependencies change.
fn newest_source(name: &str) -> (SystemTime, PathBuf) {
    fn walk(path: &Path, newest: &mut (SystemTime, PathBuf)) {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        if meta.is_dir() {
            if path.file_name().is_some_and(|n| n == "__pycache__") {
                return;
            }
            for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                walk(&entry.path(), newest);
            }
        } else if let Ok(modified) = meta.modified() {
            if modified > newest.0 && path.extension().is_none_or(|e| e != "pyc") {
                *newest = (modified, path.to_path_buf());
            }
        }
    }
    let root = repo_root();
    let mut newest = (SystemTime::UNIX_EPOCH, root.join(name));
    // What each binary is built from: its own crate, the library crates its
    // manifest names (`slug-X` is `common/X`: slugrunner links neither the
    // build nor the image side), and for slugbuilder the buildpacks it
    // embeds.
    let manifest = std::fs::read_to_string(root.join(name).join("Cargo.toml")).unwrap_or_default();
    let mut parts: Vec<PathBuf> = vec![
        root.join(name).join("Cargo.toml"),
        root.join(name).join("src"),
    ];
    parts.extend(
        manifest
            .split("[dev-dependencies]")
            .next()
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("slug-"))
            .filter_map(|l| l.split(['.', ' ', '=']).next())
            .map(|side| root.join("common").join(side)),
    );
    if name == "slugbuilder" {
        parts.extend([root.join("slugbuilder/build.rs"), root.join("buildpacks")]);
    }
    for part in &parts {
        walk(part, &mut newest);
    }
    newest
}

/// Every directory of the product's Rust sources (the library crates, then
/// the binaries): what the tests that read the code itself walk.
pub const SOURCE_DIRS: &[&str] = &[
    "common/shared/src",
    "common/build/src",
    "common/run/src",
    "common/image/src",
    "slugbuilder/src",
    "slugrunner/src",
];

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
