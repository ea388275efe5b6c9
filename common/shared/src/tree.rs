//! Walking a directory tree a tenant controls, by descriptors.
//!
//! [`walk`] visits every entry beneath a directory in byte order, parents
//! before children, holding an open descriptor of each directory on the
//! way: a child is `lstat`ed and opened relative to its parent's descriptor
//! with `O_NOFOLLOW`, and a directory is only entered if the descriptor
//! opened is the very directory that was seen (same device and inode). A
//! tenant swapping a directory for a symlink (or for another directory)
//! while we walk can therefore make the walk fail, never lead it outside.
//!
//! Built on it: [`chown_tree`] (hand a cache to a build user) and
//! [`copy_tree`] (a private copy of a buildpack).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::{fchown, fchownat, Gid, Uid};

use crate::rootdir::{list_dir, open_regular, OpenError, RootDir, RootError};

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// One entry found by [`walk`].
#[derive(Debug)]
pub struct Entry<'a> {
    /// The directory holding it.
    pub dir: BorrowedFd<'a>,
    pub name: &'a OsStr,
    /// Its path relative to the walk's root (`a/b`).
    pub path: &'a Path,
    /// Its `lstat`.
    pub stat: &'a FileStat,
    /// Number of components of `path`.
    pub depth: usize,
}

impl Entry<'_> {
    pub fn kind(&self) -> SFlag {
        SFlag::from_bits_truncate(self.stat.st_mode) & SFlag::S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.kind() == SFlag::S_IFDIR
    }
    pub fn is_file(&self) -> bool {
        self.kind() == SFlag::S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.kind() == SFlag::S_IFLNK
    }

    /// Open it for reading if, and only if, it is still the regular file
    /// that was seen.
    pub fn open(&self) -> Result<std::fs::File, WalkError> {
        let io = |errno| WalkError::Io {
            path: self.path.to_path_buf(),
            errno,
        };
        match open_regular(self.dir, self.name) {
            Ok((file, st)) if (st.st_dev, st.st_ino) == (self.stat.st_dev, self.stat.st_ino) => {
                Ok(file)
            }
            Ok(_) => Err(WalkError::Changed {
                path: self.path.to_path_buf(),
            }),
            Err(OpenError::Missing) => Err(io(Errno::ENOENT)),
            Err(OpenError::NotRegular(_)) => Err(WalkError::Changed {
                path: self.path.to_path_buf(),
            }),
            Err(OpenError::Io(e)) => Err(io(e)),
        }
    }

    /// The target of the symlink it is.
    pub fn link_target(&self) -> Result<OsString, WalkError> {
        readlinkat(self.dir, self.name).map_err(|errno| match errno {
            // No longer a link (EINVAL) or gone: swapped since it was seen.
            Errno::EINVAL | Errno::ENOENT => WalkError::Changed {
                path: self.path.to_path_buf(),
            },
            errno => WalkError::Io {
                path: self.path.to_path_buf(),
                errno,
            },
        })
    }
}

/// What to do after visiting a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// Walk into it (ignored for non-directories).
    Descend,
    /// Leave it out (it may have been removed by the visitor).
    Skip,
}

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("{path:?}: deeper than {limit} levels")]
    TooDeep { path: PathBuf, limit: usize },
    #[error("{path:?} changed while it was being read (replaced by a link or another file)")]
    Changed { path: PathBuf },
    #[error("{path:?}")]
    Io {
        path: PathBuf,
        #[source]
        errno: Errno,
    },
    #[error("{0}")]
    Visitor(String),
}

impl WalkError {
    pub fn into_io(self) -> io::Error {
        match self {
            WalkError::Io { errno, .. } => io::Error::from(errno),
            other => io::Error::other(other.to_string()),
        }
    }
}

/// Visit everything beneath the directory open at `root`, in byte order,
/// parents first, never following a link. A directory more than
/// `max_depth` levels down is an error. The visitor may fail with a
/// [`WalkError`] of its own (e.g. [`WalkError::Visitor`]).
pub fn walk(
    root: BorrowedFd<'_>,
    max_depth: usize,
    visit: &mut dyn FnMut(&Entry<'_>) -> Result<Visit, WalkError>,
) -> Result<(), WalkError> {
    walk_dir(root, Path::new(""), 0, max_depth, visit)
}

fn walk_dir(
    dir: BorrowedFd<'_>,
    rel: &Path,
    depth: usize,
    max_depth: usize,
    visit: &mut dyn FnMut(&Entry<'_>) -> Result<Visit, WalkError>,
) -> Result<(), WalkError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |errno| WalkError::Io { path, errno }
    };
    for name in list_dir(dir).map_err(io(rel))? {
        let path = rel.join(&name);
        let stat = match fstatat(dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Gone since the listing: nothing to visit.
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(io(&path)(e)),
        };
        let entry = Entry {
            dir,
            name: &name,
            path: &path,
            stat: &stat,
            depth: depth + 1,
        };
        let decision = visit(&entry)?;
        if entry.is_dir() && decision == Visit::Descend {
            if depth + 1 > max_depth {
                return Err(WalkError::TooDeep {
                    path,
                    limit: max_depth,
                });
            }
            let sub = open_same_dir(dir, &name, &stat).map_err(|e| match e {
                Errno::ELOOP | Errno::ENOTDIR | Errno::ESTALE => {
                    WalkError::Changed { path: path.clone() }
                }
                e => io(&path)(e),
            })?;
            walk_dir(sub.as_fd(), &path, depth + 1, max_depth, visit)?;
        }
    }
    Ok(())
}

/// Open the directory `name` in `dir` if it is still the one `seen`.
fn open_same_dir(dir: BorrowedFd<'_>, name: &OsStr, seen: &FileStat) -> nix::Result<OwnedFd> {
    let fd = openat(dir, name, DIR_FLAGS, Mode::empty())?;
    let st = fstat(&fd)?;
    if (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino) {
        return Err(Errno::ESTALE);
    }
    Ok(fd)
}

/// Open a directory the caller trusts (its own path, e.g. the build dir).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    nix::fcntl::open(path, DIR_FLAGS, Mode::empty()).map_err(io::Error::from)
}

/// Bytes the tree at `path` takes on disk (allocated blocks, hard links
/// counted once per inode seen), never following a link; what cannot be
/// read (gone, swapped) is skipped. 0 when `path` cannot be opened.
pub fn disk_usage(path: &Path) -> u64 {
    let Ok(root) = open_dir(path) else {
        return 0;
    };
    let mut seen = std::collections::HashSet::new();
    let mut total = fstat(&root).map_or(0, |st| st.st_blocks as u64 * 512);
    let _ = walk(root.as_fd(), usize::MAX, &mut |e| {
        if e.stat.st_nlink <= 1 || seen.insert((e.stat.st_dev, e.stat.st_ino)) {
            total += e.stat.st_blocks as u64 * 512;
        }
        Ok(Visit::Descend)
    });
    total
}

/// Give the directory open at `root` and everything beneath it to
/// `uid:gid`, never following a link. Returns the number of entries.
pub fn chown_tree(root: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<u64, WalkError> {
    let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    fchown(root, uid, gid).map_err(|errno| WalkError::Io {
        path: PathBuf::from("."),
        errno,
    })?;
    let mut count = 1;
    walk(root, usize::MAX, &mut |e| {
        // Already owned: nothing to do (and a cache walked at every build
        // costs little when it already belongs to the build user).
        if e.stat.st_uid != uid.unwrap().as_raw() || e.stat.st_gid != gid.unwrap().as_raw() {
            fchownat(e.dir, e.name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|errno| {
                WalkError::Io {
                    path: e.path.to_path_buf(),
                    errno,
                }
            })?;
        }
        count += 1;
        Ok(Visit::Descend)
    })?;
    Ok(count)
}

/// Copy the tree at `src` (trusted: an operator's buildpack) into `dest`,
/// creating everything through `dest` (so with its owner). Symlinks are
/// copied as links; modes keep their permission bits less world-write and
/// special bits; sockets, FIFOs and devices are left out.
pub fn copy_tree(src: &Path, dest: &mut RootDir) -> Result<u64, CopyError> {
    use std::os::unix::ffi::OsStrExt;
    let root = open_dir(src).map_err(|source| CopyError::Read {
        path: src.to_path_buf(),
        source,
    })?;
    let mut count = 0;
    let mut failure: Option<CopyError> = None;
    let result = walk(root.as_fd(), 256, &mut |e| {
        let comps: Vec<&OsStr> = e
            .path
            .as_os_str()
            .as_bytes()
            .split(|&b| b == b'/')
            .map(OsStr::from_bytes)
            .collect();
        let mode = e.stat.st_mode & 0o775;
        let done: Result<(), CopyError> = if e.is_dir() {
            dest.create_dir(&comps, mode | 0o700)
                .map_err(CopyError::Write)
        } else if e.is_symlink() {
            e.link_target()
                .map_err(|w| CopyError::Read {
                    path: src.join(e.path),
                    source: w.into_io(),
                })
                .and_then(|t| dest.create_symlink(&comps, &t).map_err(CopyError::Write))
        } else if e.is_file() {
            e.open()
                .map_err(|w| CopyError::Read {
                    path: src.join(e.path),
                    source: w.into_io(),
                })
                .and_then(|mut from| {
                    let mut to = dest
                        .create_file(&comps, mode | 0o600)
                        .map_err(CopyError::Write)?;
                    io::copy(&mut from, &mut to)
                        .map(|_| ())
                        .map_err(|source| CopyError::Read {
                            path: src.join(e.path),
                            source,
                        })
                })
        } else {
            Ok(())
        };
        match done {
            Ok(()) => {
                count += 1;
                Ok(Visit::Descend)
            }
            Err(err) => {
                let msg = err.to_string();
                failure = Some(err);
                Err(WalkError::Visitor(msg))
            }
        }
    });
    match (result, failure) {
        (Ok(()), _) => Ok(count),
        (Err(_), Some(err)) => Err(err),
        (Err(walk), None) => Err(CopyError::Read {
            path: src.to_path_buf(),
            source: walk.into_io(),
        }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading {path:?}")]
    Read { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Write(RootError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn walks_in_byte_order_and_never_follows_links() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("b/c")).unwrap();
        std::fs::write(root.join("B"), "").unwrap();
        std::fs::write(root.join("b/c/f"), "").unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), "").unwrap();
        symlink(&outside, root.join("a")).unwrap();
        let fd = open_dir(&root).unwrap();
        let mut seen = Vec::new();
        walk(fd.as_fd(), 10, &mut |e| {
            seen.push(e.path.to_string_lossy().into_owned());
            Ok(Visit::Descend)
        })
        .unwrap();
        assert_eq!(seen, ["B", "a", "b", "b/c", "b/c/f"]);
    }

    #[test]
    fn depth_is_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("1/2/3/4")).unwrap();
        let fd = open_dir(tmp.path()).unwrap();
        let err = walk(fd.as_fd(), 2, &mut |_| Ok(Visit::Descend)).unwrap_err();
        assert!(matches!(err, WalkError::TooDeep { .. }), "{err}");
    }

    #[test]
    fn a_file_swapped_for_a_link_is_not_read() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("f"), "mine").unwrap();
        std::fs::write(tmp.path().join("secret"), "secret").unwrap();
        let fd = open_dir(&root).unwrap();
        let mut opened = Vec::new();
        walk(fd.as_fd(), 10, &mut |e| {
            // The swap happens between the lstat and the open.
            std::fs::remove_file(root.join("f")).unwrap();
            symlink(tmp.path().join("secret"), root.join("f")).unwrap();
            opened.push(e.open().map(|_| ()).map_err(|e| e.to_string()));
            Ok(Visit::Descend)
        })
        .unwrap();
        assert!(
            opened[0].as_ref().is_err_and(|e| e.contains("changed")),
            "{opened:?}"
        );
    }

    #[test]
    fn a_link_swapped_for_a_directory_is_a_change_not_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        symlink("/etc", root.join("a")).unwrap();
        let fd = open_dir(&root).unwrap();
        let mut targets = Vec::new();
        walk(fd.as_fd(), 10, &mut |e| {
            if e.is_symlink() {
                std::fs::remove_file(root.join("a")).unwrap();
                std::fs::create_dir(root.join("a")).unwrap();
                targets.push(e.link_target());
            }
            Ok(Visit::Skip)
        })
        .unwrap();
        assert!(
            matches!(targets[..], [Err(WalkError::Changed { .. })]),
            "{targets:?}"
        );
    }

    #[test]
    fn removes_trees_deeper_than_descriptors_allow() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("deep");
        // 3000 levels: far more than a path can name and than a recursive
        // removal holding one descriptor per level could open.
        let dir = open_dir(tmp.path()).unwrap();
        nix::sys::stat::mkdirat(dir.as_fd(), "deep", Mode::from_bits_truncate(0o755)).unwrap();
        let mut fd = openat(dir.as_fd(), "deep", DIR_FLAGS, Mode::empty()).unwrap();
        for _ in 0..3000 {
            nix::sys::stat::mkdirat(fd.as_fd(), "d", Mode::from_bits_truncate(0o755)).unwrap();
            nix::unistd::symlinkat("/etc", fd.as_fd(), "link").unwrap();
            fd = openat(fd.as_fd(), "d", DIR_FLAGS, Mode::empty()).unwrap();
        }
        crate::rootdir::remove_entry(&top).unwrap();
        assert!(!top.exists());
        assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
        assert!(Path::new("/etc/passwd").exists());
    }

    #[test]
    fn copies_links_as_links_and_drops_special_bits() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("bin")).unwrap();
        std::fs::write(src.join("bin/compile"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            src.join("bin/compile"),
            std::fs::Permissions::from_mode(0o4777),
        )
        .unwrap();
        symlink("/etc/passwd", src.join("passwd")).unwrap();
        let mut dest = RootDir::open(&tmp.path().join("dest"), None).unwrap();
        assert_eq!(copy_tree(&src, &mut dest).unwrap(), 3);
        let mode = std::fs::metadata(tmp.path().join("dest/bin/compile"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o775);
        assert_eq!(
            std::fs::read_link(tmp.path().join("dest/passwd")).unwrap(),
            Path::new("/etc/passwd")
        );
    }
}
