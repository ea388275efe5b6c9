//! Finding programs: the one place that decides what is an executable and
//! where one is looked up.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Directories searched after `PATH` (or instead of it, when there is none).
pub const STANDARD_DIRS: &[&str] = &["/usr/local/bin", "/usr/bin", "/bin"];

/// Whether `path` is a regular file (a link to one counts) that someone may
/// execute.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Find the executable `name` in `path` (a `PATH` value; relative entries
/// are ignored), then in [`STANDARD_DIRS`].
pub fn find(name: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = path
        .map(|p| {
            std::env::split_paths(p)
                .filter(|d| d.is_absolute())
                .collect()
        })
        .unwrap_or_default();
    dirs.extend(STANDARD_DIRS.iter().map(PathBuf::from));
    let joined = std::env::join_paths(&dirs).ok()?;
    which::which_in(name, Some(joined), "/")
        .ok()
        .filter(|p| is_executable(p))
}

/// [`find`] in this process's own `PATH`.
pub fn find_here(name: &str) -> Option<PathBuf> {
    find(name, std::env::var_os("PATH").as_deref())
}

/// The bash that runs buildpacks' export files: this process's `PATH`,
/// else `/bin/bash`.
pub fn find_bash() -> PathBuf {
    find_here("bash").unwrap_or_else(|| PathBuf::from("/bin/bash"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_in_path_then_standard_dirs_and_ignores_relative_entries() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("my-tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([Path::new("relative"), dir.path()]).unwrap();
        assert_eq!(find("my-tool", Some(&path)), Some(tool.clone()));
        assert!(find("sh", Some(OsStr::new("relative"))).is_some());
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(find("my-tool", Some(&path)), None);
        assert!(!is_executable(dir.path()));
    }
}
