//! `.slugignore`: files the app does not want in its slug, removed BEFORE the
//! buildpacks run (as Heroku does), so they never reach detect, compile or
//! the slug.
//!
//! Syntax is `.gitignore`'s (via the `ignore` crate) minus negation, which
//! Heroku does not support either: a `!pattern` line is reported and skipped.
//! Matching is done while walking the build directory without following
//! links, and only paths found by that walk are removed, so no pattern
//! (`../x`, `/etc`, a path through a symlink) can reach outside it.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use slug_shared::rootdir::{RootDir, RootError};
use slug_shared::tree::{Visit, WalkError};

/// Largest `.slugignore` accepted, in bytes.
pub const MAX_SLUGIGNORE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SlugignoreError {
    #[error(".slugignore line {line}: {message}")]
    Pattern { line: usize, message: String },
    #[error(".slugignore is larger than {MAX_SLUGIGNORE_BYTES} bytes")]
    TooLarge,
    #[error("applying .slugignore at {path:?}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Parsed `.slugignore`.
#[derive(Debug)]
pub struct Slugignore {
    matcher: Gitignore,
    /// Lines that were skipped, with the reason (shown to the user).
    pub warnings: Vec<String>,
}

impl Slugignore {
    /// Parse `.slugignore` text; `root` is the directory patterns are relative to.
    pub fn parse(root: &Path, text: &str) -> Result<Self, SlugignoreError> {
        let mut builder = GitignoreBuilder::new(root);
        let mut warnings = Vec::new();
        // The same lines as every other line-oriented file (BOM, CRLF,
        // comments, blanks); a pattern also loses its trailing blanks.
        for (line_no, raw) in slug_shared::lines::content_lines(text) {
            let line = raw.trim();
            if line.starts_with('!') {
                warnings.push(format!(
                    ".slugignore line {line_no}: negation is not supported, skipped: {line}"
                ));
                continue;
            }
            builder
                .add_line(None, line)
                .map_err(|e| SlugignoreError::Pattern {
                    line: line_no,
                    message: e.to_string(),
                })?;
        }
        let matcher = builder.build().map_err(|e| SlugignoreError::Pattern {
            line: 0,
            message: e.to_string(),
        })?;
        Ok(Self { matcher, warnings })
    }

    /// Read `root/.slugignore` if present (a regular file: a link, a FIFO
    /// or a device is an error, never opened).
    pub fn load(root: &Path) -> Result<Option<Self>, SlugignoreError> {
        let io = |source| SlugignoreError::Io {
            path: root.join(".slugignore"),
            source,
        };
        let mut dir = RootDir::open_existing(root).map_err(|e| io(e.into_io()))?;
        let text = match dir.read_file(&[OsStr::new(".slugignore")], MAX_SLUGIGNORE_BYTES) {
            Ok(Some(text)) => text,
            Ok(None) => return Ok(None),
            Err(RootError::TooLarge { .. }) => return Err(SlugignoreError::TooLarge),
            Err(e) => return Err(io(e.into_io())),
        };
        Self::parse(root, &String::from_utf8_lossy(&text)).map(Some)
    }

    /// Whether a path relative to the root matches.
    pub fn matches(&self, relative: &Path, is_dir: bool) -> bool {
        self.matcher.matched(relative, is_dir).is_ignore()
    }

    /// Remove every matching file and directory beneath `root`, walking it
    /// by descriptors (a link is matched and removed as a link, never
    /// followed). Returns the removed paths, relative to `root`, in walk
    /// order.
    pub fn apply(&self, root: &Path) -> Result<Vec<PathBuf>, SlugignoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SlugignoreError::Io { path, source }
        };
        let fd = slug_shared::tree::open_dir(root).map_err(io(root))?;
        let mut removed = Vec::new();
        slug_shared::tree::walk(fd.as_fd(), usize::MAX, &mut |e| {
            if self.matches(e.path, e.is_dir()) {
                slug_shared::rootdir::remove_at(e.dir, e.name).map_err(|errno| WalkError::Io {
                    path: e.path.to_path_buf(),
                    errno,
                })?;
                removed.push(e.path.to_path_buf());
                Ok(Visit::Skip)
            } else {
                Ok(Visit::Descend)
            }
        })
        .map_err(|e| io(root)(e.into_io()))?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree(root: &Path, files: &[&str]) {
        for f in files {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x").unwrap();
        }
    }

    /// The line rules of every other config file: a byte-order mark, CRLF,
    /// indented comments; line numbers count every line.
    #[test]
    fn lines_follow_the_shared_rules() {
        let root = Path::new("/build");
        let ignore = Slugignore::parse(
            root,
            "\u{feff}*.psd\r\n  # comment\r\n\r\n!keep\r\n/docs  \r\n",
        )
        .unwrap();
        assert!(ignore.matches(Path::new("design.psd"), false));
        assert!(ignore.matches(Path::new("docs"), true));
        assert!(!ignore.matches(Path::new("comment"), false));
        assert_eq!(
            ignore.warnings,
            [".slugignore line 4: negation is not supported, skipped: !keep"]
        );
    }

    #[test]
    fn gitignore_semantics() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        tree(
            root,
            &[
                "a.psd",
                "src/b.psd",
                "spec/t.rb",
                "src/spec/keep.rb",
                "docs/x.md",
                "keep.txt",
            ],
        );
        let s = Slugignore::parse(root, "# comment\n*.psd\n/spec\ndocs/\n!keep.txt\n").unwrap();
        assert_eq!(s.warnings.len(), 1);
        let removed = s.apply(root).unwrap();
        assert_eq!(
            removed,
            ["a.psd", "docs", "spec", "src/b.psd"].map(PathBuf::from)
        );
        assert!(root.join("src/spec/keep.rb").exists());
        assert!(root.join("keep.txt").exists());
    }

    #[test]
    fn never_reaches_outside_or_through_links() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("build");
        let outside = tmp.path().join("outside");
        tree(&outside, &["secret.txt", "x.psd"]);
        tree(&root, &["app.py"]);
        symlink(&outside, root.join("link")).unwrap();
        let s = Slugignore::parse(&root, "../outside\n/..\n*.psd\nlink/*\n*.txt\n").unwrap();
        s.apply(&root).unwrap();
        assert!(outside.join("secret.txt").exists());
        assert!(outside.join("x.psd").exists());
        assert!(root.join("link").symlink_metadata().is_ok());
        assert!(root.join("app.py").exists());
    }

    #[test]
    fn a_link_matching_a_pattern_is_removed_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("build");
        let outside = tmp.path().join("outside");
        tree(&outside, &["data/file"]);
        std::fs::create_dir_all(&root).unwrap();
        symlink(outside.join("data"), root.join("data")).unwrap();
        Slugignore::parse(&root, "data\n")
            .unwrap()
            .apply(&root)
            .unwrap();
        assert!(root.join("data").symlink_metadata().is_err());
        assert!(outside.join("data/file").exists());
    }
}
