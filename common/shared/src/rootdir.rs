//! The one place where paths are resolved beneath a root directory.
//!
//! Every file, directory and link that root-side code creates, reads or
//! removes in a tree a tenant controls (a build dir, a cache, a slug, an app
//! dir) goes through [`RootDir`]: paths are split into components, `..` and
//! absolute paths are refused up front, and each parent directory is opened
//! with `openat(O_DIRECTORY | O_NOFOLLOW)` relative to the previous one. A
//! symlink (or anything that is not a directory) in the middle of a path
//! therefore stops the walk instead of redirecting it, whatever the tenant
//! did before or does meanwhile. Final components are created with
//! `O_EXCL | O_NOFOLLOW` after removing what was there, so an earlier link of
//! the same name is replaced, never written through; files are read only
//! when they are regular files ([`open_regular`]: no link, FIFO or device is
//! ever opened for reading), and only up to a size cap.

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
    #[error("{path:?} is {kind}, not a regular file")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path:?} is larger than {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{path:?}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl RootError {
    /// As an `io::Error` (keeping the OS error when there is one).
    pub fn into_io(self) -> io::Error {
        match self {
            RootError::Io { path, source } => {
                io::Error::new(source.kind(), format!("{}: {source}", path.display()))
            }
            other => io::Error::other(other.to_string()),
        }
    }
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

/// What a file system object is, for messages.
pub fn kind_name(mode: u32) -> &'static str {
    match SFlag::from_bits_truncate(mode) & SFlag::S_IFMT {
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFLNK => "a symbolic link",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        _ => "of an unknown type",
    }
}

/// Why [`open_regular`] refused.
#[derive(Debug)]
pub enum OpenError {
    /// Nothing of that name.
    Missing,
    /// Something that is not a regular file (a link, a FIFO, a device ...).
    NotRegular(&'static str),
    Io(Errno),
}

impl OpenError {
    fn into_root_error(self, path: &[&OsStr]) -> RootError {
        match self {
            OpenError::Missing => io_err(path, Errno::ENOENT),
            OpenError::NotRegular(kind) => RootError::NotRegular {
                path: join(path),
                kind,
            },
            OpenError::Io(e) => io_err(path, e),
        }
    }
}

/// Open the regular file `name` in `dir` for reading, without ever opening
/// anything else: the name is first opened with `O_PATH | O_NOFOLLOW` (no
/// side effect, a symlink is not followed but seen as one), checked to be a
/// regular file, and then that very inode is reopened for reading through
/// `/proc/self/fd` (so a swap between check and open cannot substitute
/// another file). Returns the file and its status.
pub fn open_regular(
    dir: BorrowedFd<'_>,
    name: &OsStr,
) -> Result<(std::fs::File, nix::sys::stat::FileStat), OpenError> {
    let path_fd = match openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Err(OpenError::Missing),
        Err(e) => return Err(OpenError::Io(e)),
    };
    let st = nix::sys::stat::fstat(&path_fd).map_err(OpenError::Io)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(OpenError::NotRegular(kind_name(st.st_mode)));
    }
    let read_flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let proc_path = format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&path_fd)
    );
    let fd = match nix::fcntl::open(proc_path.as_str(), read_flags, Mode::empty()) {
        Ok(fd) => fd,
        // No /proc: open by name and make sure it is the same inode.
        Err(Errno::ENOENT) => {
            let fd = openat(dir, name, read_flags | OFlag::O_NOFOLLOW, Mode::empty())
                .map_err(OpenError::Io)?;
            let again = nix::sys::stat::fstat(&fd).map_err(OpenError::Io)?;
            if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino) {
                return Err(OpenError::Io(Errno::ESTALE));
            }
            fd
        }
        Err(e) => return Err(OpenError::Io(e)),
    };
    Ok((std::fs::File::from(fd), st))
}

/// Read at most `limit` bytes of a file opened by [`open_regular`]; more is
/// an error (`Ok(None)`), not a truncation.
pub fn read_capped(file: std::fs::File, limit: u64) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// Deepest directory [`remove_at`] descends into before it moves the rest
/// up: the descriptors it holds stay few whatever the depth of the tree.
const REMOVE_MAX_DEPTH: usize = 32;

/// Remove `name` in `dir` and, if it is a directory, everything beneath it,
/// by descriptors only: a link is unlinked, never followed. Works on trees
/// of any depth (a tenant can nest directories far deeper than a path can
/// name): subtrees deeper than [`REMOVE_MAX_DEPTH`] are first moved up
/// into `dir` under a temporary name, then removed in turn.
pub fn remove_at(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()> {
    let mut pending: Vec<OsString> = vec![name.to_os_string()];
    let mut moved = 0u64;
    while let Some(top) = pending.pop() {
        match unlinkat(dir, top.as_os_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => continue,
            Err(Errno::EISDIR) | Err(Errno::EPERM) => {}
            Err(e) => return Err(e),
        }
        // Depth-first with an explicit stack of (descriptor, name in parent).
        let first = match openat(dir, top.as_os_str(), DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        let mut stack: Vec<(OwnedFd, OsString)> = vec![(first, top.clone())];
        while let Some((fd, _)) = stack.last() {
            let fd = fd.as_fd();
            let mut descend = None;
            for child in list_dir(fd)? {
                match unlinkat(fd, child.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    Err(Errno::EISDIR) | Err(Errno::EPERM) => {
                        descend = Some(child);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            match descend {
                Some(child) if stack.len() < REMOVE_MAX_DEPTH => {
                    let sub = openat(fd, child.as_os_str(), DIR_FLAGS, Mode::empty())?;
                    stack.push((sub, child));
                }
                Some(child) => {
                    // Too deep: move this subtree up beside the top and come
                    // back for it later.
                    let spare = loop {
                        moved += 1;
                        let spare =
                            OsString::from(format!(".slug-remove-{}-{moved}", std::process::id()));
                        let taken = fstatat(dir, spare.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW);
                        if taken == Err(Errno::ENOENT) {
                            break spare;
                        }
                    };
                    nix::fcntl::renameat(fd, child.as_os_str(), dir, spare.as_os_str())?;
                    pending.push(spare);
                }
                None => {
                    let (_, name) = stack.pop().expect("non-empty");
                    let parent = stack.last().map_or(dir, |(fd, _)| fd.as_fd());
                    match unlinkat(parent, name.as_os_str(), UnlinkatFlags::RemoveDir) {
                        Ok(()) | Err(Errno::ENOENT) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
    Ok(())
}

/// Remove what is at `path`, whatever it is, never following a link: a
/// directory (not a link to one) with everything in it (see [`remove_at`]),
/// anything else on its own. A path that does not exist is not an error.
pub fn remove_entry(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Some(name) = path.file_name() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no file name"));
    };
    let dir = match nix::fcntl::open(
        parent,
        DIR_FLAGS.difference(OFlag::O_NOFOLLOW),
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    remove_at(dir.as_fd(), name).map_err(io::Error::from)
}

/// The names in the directory open at `dir` (without `.` and `..`), in
/// byte order.
pub fn list_dir(dir: BorrowedFd<'_>) -> nix::Result<Vec<OsString>> {
    // A fresh open of "." (not a dup, which would share the read offset).
    let fd = openat(dir, ".", DIR_FLAGS, Mode::empty())?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
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
        let dir = Self {
            root,
            owner,
            cached: None,
        };
        // The root itself belongs to the owner too (a buildpack writes its
        // `export` file into its own directory).
        dir.chown_fd(dir.root.as_fd()).map_err(|e| RootError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        Ok(dir)
    }

    /// Open an existing directory as a root (never created, not through a
    /// link at its last component).
    pub fn open_existing(path: &Path) -> Result<Self, RootError> {
        let root = nix::fcntl::open(path, DIR_FLAGS, Mode::empty()).map_err(|e| RootError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        Ok(Self {
            root,
            owner: None,
            cached: None,
        })
    }

    /// Give what is created from now on to `owner`.
    pub fn set_owner(&mut self, owner: Owner) {
        self.owner = owner;
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

    /// The directory `path` beneath the root, opened (never created, never
    /// through a link).
    pub fn open_subdir(&mut self, path: &[&OsStr]) -> Result<OwnedFd, RootError> {
        let fd = self.open_dir(path, false)?;
        fd.try_clone_to_owned().map_err(|source| RootError::Io {
            path: join(path),
            source,
        })
    }

    /// Read the regular file at `path`, at most `limit` bytes. `Ok(None)` when
    /// nothing of that name exists; a link, FIFO, device, a parent that is a
    /// link, or a larger file is an error. Nothing outside the root is ever
    /// opened, and a FIFO never blocks.
    pub fn read_file(&mut self, path: &[&OsStr], limit: u64) -> Result<Option<Vec<u8>>, RootError> {
        let Some((name, parents)) = path.split_last() else {
            return Err(RootError::NotRegular {
                path: PathBuf::from("."),
                kind: "a directory",
            });
        };
        let parent = match self.open_dir(parents, false) {
            Ok(fd) => fd,
            Err(RootError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let file = match open_regular(parent, name) {
            Ok((file, _)) => file,
            Err(OpenError::Missing) => return Ok(None),
            Err(e) => return Err(e.into_root_error(path)),
        };
        match read_capped(file, limit) {
            Ok(Some(bytes)) => Ok(Some(bytes)),
            Ok(None) => Err(RootError::TooLarge {
                path: join(path),
                limit,
            }),
            Err(source) => Err(RootError::Io {
                path: join(path),
                source,
            }),
        }
    }

    /// Replace whatever is at `path` (a file, a link, an empty directory)
    /// with a new regular file holding `bytes`.
    pub fn write_file(
        &mut self,
        path: &[&OsStr],
        bytes: &[u8],
        mode: u32,
    ) -> Result<(), RootError> {
        use std::io::Write;
        let mut file = self.create_file(path, mode)?;
        file.write_all(bytes).map_err(|source| RootError::Io {
            path: join(path),
            source,
        })
    }

    /// Remove what is at `path` beneath the root, never following a link: a
    /// link or file is unlinked, a directory removed with all it holds. A
    /// missing path is not an error.
    pub fn remove(&mut self, path: &[&OsStr]) -> Result<(), RootError> {
        let Some((name, parents)) = path.split_last() else {
            return Ok(());
        };
        let parent = match self.open_dir(parents, false) {
            Ok(fd) => fd.try_clone_to_owned().map_err(|source| RootError::Io {
                path: join(path),
                source,
            })?,
            Err(RootError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        self.invalidate();
        remove_at(parent.as_fd(), name).map_err(|e| io_err(path, e))
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
