//! The one place where paths are resolved beneath a root directory.
//!
//! Every file, directory and link that an archive creates goes through
//! [`RootDir`]: paths are split into components, `..` and absolute paths are
//! refused up front, and each parent directory is opened with
//! `openat(O_DIRECTORY | O_NOFOLLOW)` relative to the previous one. A
//! symlink (or anything that is not a directory) in the middle of a path
//! therefore stops the walk instead of redirecting it, whatever the archive
//! did before. Final components are created with `O_EXCL | O_NOFOLLOW`
//! after removing what was there, so an earlier link of the same name is
//! replaced, never written through.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

/// Why a path could not be used beneath the root.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("{path:?}: path escapes the destination (`..` or absolute)")]
    Escapes { path: PathBuf },
    #[error("{path:?}: path goes through a symlink or a non-directory")]
    ThroughLink { path: PathBuf },
    #[error("{path:?}: a directory is in the way and is not empty")]
    DirectoryInTheWay { path: PathBuf },
    #[error("{path:?}: link target {target:?} does not exist inside the destination")]
    LinkTargetMissing { path: PathBuf, target: PathBuf },
    #[error("{path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &[&OsStr], errno: Errno) -> RootError {
    RootError::Io {
        path: join(path),
        source: io::Error::from(errno),
    }
}

fn join(components: &[&OsStr]) -> PathBuf {
    components.iter().collect()
}

/// Split a relative archive path into its normal components.
///
/// `.` and empty components are dropped; `..` anywhere, or a leading `/`, is
/// an escape. Returns an empty vector for the root itself (`./`).
pub fn components(path: &[u8]) -> Result<Vec<&OsStr>, RootError> {
    if path.first() == Some(&b'/') {
        return Err(RootError::Escapes {
            path: PathBuf::from(OsStr::from_bytes(path)),
        });
    }
    let mut out = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(RootError::Escapes {
                    path: PathBuf::from(OsStr::from_bytes(path)),
                })
            }
            _ => out.push(OsStr::from_bytes(part)),
        }
    }
    Ok(out)
}

/// Remove what is at `path`, whatever it is, never following a link: a
/// directory (not a link to one) with everything in it, anything else on
/// its own. A path that does not exist is not an error.
pub fn remove_entry(path: &Path) -> io::Result<()> {
    match path.symlink_metadata() {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Ownership to give to everything created (when running as root).
pub type Owner = Option<(u32, u32)>;

/// A directory that nothing may escape.
#[derive(Debug)]
pub struct RootDir {
    root: OwnedFd,
    owner: Owner,
    /// The parent directory most recently resolved: archives list siblings
    /// together, so this saves a path walk for nearly every entry.
    cached: Option<(Vec<OsString>, OwnedFd)>,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

impl RootDir {
    /// Open (creating if needed) the root directory.
    pub fn open(path: &Path, owner: Owner) -> Result<Self, RootError> {
        std::fs::create_dir_all(path).map_err(|source| RootError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let root = nix::fcntl::open(path, DIR_FLAGS, Mode::empty()).map_err(|e| RootError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        Ok(Self {
            root,
            owner,
            cached: None,
        })
    }

    /// The root's own file descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    fn chown_fd(&self, fd: BorrowedFd<'_>) -> nix::Result<()> {
        match self.owner {
            Some((uid, gid)) => fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))),
            None => Ok(()),
        }
    }

    /// Open the directory `dirs` beneath the root, creating missing ones with
    /// `mode` when `create` is set. Never follows a symlink.
    fn open_dir(&mut self, dirs: &[&OsStr], create: bool) -> Result<BorrowedFd<'_>, RootError> {
        let hit = matches!(&self.cached, Some((p, _)) if p.len() == dirs.len() && p.iter().zip(dirs).all(|(a, b)| a == b));
        if !hit {
            let mut current: Option<OwnedFd> = None;
            for (i, name) in dirs.iter().enumerate() {
                let parent = current.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
                let fd = match openat(parent, *name, DIR_FLAGS, Mode::empty()) {
                    Ok(fd) => fd,
                    Err(Errno::ENOENT) if create => {
                        match mkdirat(parent, *name, Mode::from_bits_truncate(0o755)) {
                            Ok(()) | Err(Errno::EEXIST) => {}
                            Err(e) => return Err(io_err(&dirs[..=i], e)),
                        }
                        let fd = openat(parent, *name, DIR_FLAGS, Mode::empty())
                            .map_err(|e| self.walk_error(&dirs[..=i], e))?;
                        self.chown_fd(fd.as_fd())
                            .map_err(|e| io_err(&dirs[..=i], e))?;
                        fd
                    }
                    Err(e) => return Err(self.walk_error(&dirs[..=i], e)),
                };
                current = Some(fd);
            }
            self.cached = current.map(|fd| (dirs.iter().map(|s| s.to_os_string()).collect(), fd));
        }
        Ok(match &self.cached {
            Some((_, fd)) => fd.as_fd(),
            None => self.root.as_fd(),
        })
    }

    fn walk_error(&self, path: &[&OsStr], e: Errno) -> RootError {
        match e {
            Errno::ELOOP | Errno::ENOTDIR => RootError::ThroughLink { path: join(path) },
            e => io_err(path, e),
        }
    }

    /// Make room for a new non-directory entry named `name` in `parent`:
    /// remove a file or link of that name, or an empty directory.
    fn clear(parent: BorrowedFd<'_>, path: &[&OsStr]) -> Result<(), RootError> {
        let name = *path.last().expect("non-empty path");
        match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io_err(path, e)),
            Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
                unlinkat(parent, name, UnlinkatFlags::RemoveDir).map_err(|e| match e {
                    Errno::ENOTEMPTY | Errno::EEXIST => {
                        RootError::DirectoryInTheWay { path: join(path) }
                    }
                    e => io_err(path, e),
                })
            }
            Ok(_) => {
                unlinkat(parent, name, UnlinkatFlags::NoRemoveDir).map_err(|e| io_err(path, e))
            }
        }
    }

    /// Forget the cached parent: after something was removed, a cached
    /// descriptor could point at a directory no longer in the tree.
    fn invalidate(&mut self) {
        self.cached = None;
    }

    /// Create (or keep) the directory at `path` with `mode`.
    pub fn create_dir(&mut self, path: &[&OsStr], mode: u32) -> Result<(), RootError> {
        let Some((name, parents)) = path.split_last() else {
            return Ok(());
        };
        let owner = self.owner;
        let parent = self.open_dir(parents, true)?;
        match mkdirat(parent, *name, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io_err(path, e)),
        }
        let fd = openat(parent, *name, DIR_FLAGS, Mode::empty()).map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => RootError::ThroughLink { path: join(path) },
            e => io_err(path, e),
        })?;
        fchmod(fd.as_fd(), Mode::from_bits_truncate(mode)).map_err(|e| io_err(path, e))?;
        if let Some((uid, gid)) = owner {
            fchown(
                fd.as_fd(),
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
            )
            .map_err(|e| io_err(path, e))?;
        }
        Ok(())
    }

    /// Create a new regular file at `path` (replacing what was there) and
    /// return it open for writing. Mode and owner are set on the descriptor.
    pub fn create_file(&mut self, path: &[&OsStr], mode: u32) -> Result<std::fs::File, RootError> {
        let (name, parents) = path.split_last().ok_or_else(|| RootError::Escapes {
            path: PathBuf::from("."),
        })?;
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let create_mode = Mode::from_bits_truncate(0o600);
        let parent = self.open_dir(parents, true)?;
        let fd = match openat(parent, *name, flags, create_mode) {
            Ok(fd) => fd,
            Err(Errno::EEXIST) => {
                Self::clear(parent, path)?;
                self.invalidate();
                let parent = self.open_dir(parents, true)?;
                openat(parent, *name, flags, create_mode).map_err(|e| io_err(path, e))?
            }
            Err(e) => return Err(io_err(path, e)),
        };
        fchmod(fd.as_fd(), Mode::from_bits_truncate(mode)).map_err(|e| io_err(path, e))?;
        self.chown_fd(fd.as_fd()).map_err(|e| io_err(path, e))?;
        Ok(std::fs::File::from(fd))
    }

    /// Create a symlink at `path` pointing at `target` (stored verbatim; the
    /// link is never followed by anything in this module).
    pub fn create_symlink(&mut self, path: &[&OsStr], target: &OsStr) -> Result<(), RootError> {
        let (name, parents) = path.split_last().ok_or_else(|| RootError::Escapes {
            path: PathBuf::from("."),
        })?;
        let owner = self.owner;
        let parent = self.open_dir(parents, true)?;
        if let Err(e) = symlinkat(target, parent, *name) {
            if e != Errno::EEXIST {
                return Err(io_err(path, e));
            }
            Self::clear(parent, path)?;
            self.invalidate();
            let parent = self.open_dir(parents, true)?;
            symlinkat(target, parent, *name).map_err(|e| io_err(path, e))?;
        }
        if let Some((uid, gid)) = owner {
            let parent = self.open_dir(parents, true)?;
            fchownat(
                parent,
                *name,
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_err(path, e))?;
        }
        Ok(())
    }

    /// Create a hard link at `path` to the existing entry `target`, both
    /// beneath the root. The target's parents are resolved without following
    /// links, and a target that is itself a symlink is linked as a symlink.
    pub fn create_hardlink(&mut self, path: &[&OsStr], target: &[&OsStr]) -> Result<(), RootError> {
        let (name, parents) = path.split_last().ok_or_else(|| RootError::Escapes {
            path: PathBuf::from("."),
        })?;
        let (target_name, target_parents) =
            target
                .split_last()
                .ok_or_else(|| RootError::LinkTargetMissing {
                    path: join(path),
                    target: PathBuf::from("."),
                })?;
        let missing = || RootError::LinkTargetMissing {
            path: join(path),
            target: join(target),
        };
        // Resolve the target's directory into an owned descriptor first, so
        // that the cache can then serve the link's own parent.
        let target_dir = {
            let fd = self.open_dir(target_parents, false).map_err(|e| match e {
                RootError::Io { .. } => missing(),
                e => e,
            })?;
            fd.try_clone_to_owned().map_err(|e| RootError::Io {
                path: join(target),
                source: e,
            })?
        };
        match fstatat(
            target_dir.as_fd(),
            *target_name,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
                return Err(missing())
            }
            Ok(_) => {}
            Err(_) => return Err(missing()),
        }
        let parent = self.open_dir(parents, true)?;
        if path == target {
            return Ok(());
        }
        if let Err(e) = linkat(
            target_dir.as_fd(),
            *target_name,
            parent,
            *name,
            AtFlags::empty(),
        ) {
            if e != Errno::EEXIST {
                return Err(io_err(path, e));
            }
            Self::clear(parent, path)?;
            self.invalidate();
            let parent = self.open_dir(parents, true)?;
            linkat(
                target_dir.as_fd(),
                *target_name,
                parent,
                *name,
                AtFlags::empty(),
            )
            .map_err(|e| io_err(path, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_refuse_escapes() {
        assert!(components(b"../x").is_err());
        assert!(components(b"a/../../x").is_err());
        assert!(components(b"/etc/passwd").is_err());
        assert_eq!(components(b"./a//b/./c").unwrap(), ["a", "b", "c"]);
        assert!(components(b"./").unwrap().is_empty());
    }

    #[test]
    fn never_writes_through_a_symlinked_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("dest");
        let victim = tmp.path().join("victim");
        std::fs::create_dir_all(&victim).unwrap();
        let mut root = RootDir::open(&dest, None).unwrap();
        root.create_symlink(&[OsStr::new("link")], victim.as_os_str())
            .unwrap();
        let err = root
            .create_file(&[OsStr::new("link"), OsStr::new("pwned")], 0o644)
            .unwrap_err();
        assert!(matches!(err, RootError::ThroughLink { .. }), "{err}");
        assert!(std::fs::read_dir(&victim).unwrap().next().is_none());
    }

    #[test]
    fn replaces_a_link_instead_of_writing_through_it() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim.txt");
        std::fs::write(&victim, "safe").unwrap();
        let mut root = RootDir::open(&tmp.path().join("dest"), None).unwrap();
        root.create_symlink(&[OsStr::new("f")], victim.as_os_str())
            .unwrap();
        use std::io::Write;
        root.create_file(&[OsStr::new("f")], 0o644)
            .unwrap()
            .write_all(b"new")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "safe");
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("dest/f")).unwrap(),
            "new"
        );
    }
}
