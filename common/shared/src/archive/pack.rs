//! Packing a directory into a reproducible tar, by descriptors.
//!
//! The tree is walked with [`crate::tree::walk`]: every entry is found and
//! opened relative to its parent's descriptor, never through a link, and a
//! file is read only if it is still the regular file that was seen (see
//! [`crate::rootdir::open_regular`]). A tenant process swapping directories
//! and links while we pack (it should not exist, the sandbox killed them
//! all, but the packer does not rely on that) can make packing fail, never
//! put a file from outside into the slug. When packing for a build user,
//! a file that user could not read itself (a hard link to a root-only file)
//! is refused. Sizes are the files' apparent sizes, counted before a byte is
//! read: a sparse 8 GiB file fails the limit at once.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::stat::FileStat;
use tar::{EntryType, Header};

use super::ArchiveError;
use crate::cancel::Cancel;
use crate::pgzip::ParallelGzWriter;
use crate::transfer::{Cut, Guarded, Rules};
use crate::tree::{self, Entry, Visit, WalkError};

const CHUNK: usize = 256 * 1024;

/// How to pack.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Clamp every mtime to at most this (SOURCE_DATE_EPOCH semantics);
    /// `None` keeps mtimes as they are.
    pub mtime_clamp: Option<u64>,
    /// Leave out the root `.git` directory.
    pub skip_root_git: bool,
    /// Most bytes of file content (apparent sizes) the archive may hold.
    pub max_bytes: u64,
    /// Most entries.
    pub max_entries: u64,
    /// Deepest path, in components.
    pub max_depth: usize,
    /// Only pack files this (uid, gid) could read by itself: for root
    /// packing a tree a build user wrote.
    pub reader: Option<(u32, u32)>,
    /// Stop when the build must stop.
    pub cancel: Option<Arc<Cancel>>,
    /// Compressed blocks of the last slug (see [`super::blocks`]).
    pub blocks: Option<Arc<dyn crate::pgzip::BlockCache>>,
}

impl Default for PackOptions {
    fn default() -> Self {
        let limits = super::Limits::default();
        Self {
            mtime_clamp: None,
            skip_root_git: false,
            max_bytes: limits.max_bytes,
            max_entries: limits.max_entries,
            max_depth: limits.max_depth,
            reader: None,
            cancel: None,
            blocks: None,
        }
    }
}

/// What a pack wrote.
#[derive(Debug, Clone, Default)]
pub struct PackSummary {
    pub entries: u64,
    /// Bytes of file content (uncompressed).
    pub bytes: u64,
    /// Paths of sockets and other special files that were left out.
    pub skipped: Vec<PathBuf>,
}

/// Write `dir` as an uncompressed, deterministic tar to `out`, rooted at `./`.
pub fn pack_tar(
    dir: &Path,
    out: impl Write,
    opts: &PackOptions,
) -> Result<PackSummary, ArchiveError> {
    let root = tree::open_dir(dir).map_err(|source| ArchiveError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let root_stat = nix::sys::stat::fstat(&root).map_err(|e| ArchiveError::Read {
        path: dir.to_path_buf(),
        source: e.into(),
    })?;
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut packer = Packer {
        builder,
        opts,
        summary: PackSummary::default(),
        hardlinks: HashMap::new(),
        failure: None,
    };
    packer.append_dir(Path::new("./"), &root_stat)?;
    let walked = tree::walk(
        root.as_fd(),
        opts.max_depth,
        &mut |entry| match packer.visit(entry) {
            Ok(v) => Ok(v),
            Err(e) => {
                let msg = crate::log::error_line(&e);
                packer.failure = Some(e);
                Err(WalkError::Visitor(msg))
            }
        },
    );
    if let Err(walk) = walked {
        return Err(packer.failure.take().unwrap_or_else(|| match walk {
            WalkError::TooDeep { path, .. } => ArchiveError::PathTooLong { path },
            WalkError::Changed { path } => ArchiveError::Changed {
                path,
                reason: "replaced by a link or another file".into(),
            },
            WalkError::Io { path, errno } => ArchiveError::Read {
                path,
                source: errno.into(),
            },
            WalkError::Visitor(msg) => ArchiveError::Corrupt(msg),
        }));
    }
    packer
        .builder
        .finish()
        .map_err(|source| ArchiveError::Write {
            path: PathBuf::from("<archive>"),
            source,
        })?;
    Ok(packer.summary)
}

/// Write `dir` as a deterministic gzip-compressed tar to `out`, compressed
/// on all cores (see [`crate::pgzip`]); the bytes do not depend on the
/// number of cores.
pub fn pack_gzip(
    dir: &Path,
    out: impl Write,
    level: u32,
    opts: &PackOptions,
) -> Result<PackSummary, ArchiveError> {
    let write_err = |source| ArchiveError::Write {
        path: PathBuf::from("<archive>"),
        source,
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let gz = ParallelGzWriter::with_cache(out, level, threads, opts.blocks.clone())
        .map_err(write_err)?;
    let mut buffered = io::BufWriter::with_capacity(CHUNK, gz);
    let summary = pack_tar(dir, &mut buffered, opts)?;
    let gz = buffered
        .into_inner()
        .map_err(|e| write_err(e.into_error()))?;
    gz.finish().map_err(write_err)?;
    Ok(summary)
}

struct Packer<'a, W: Write> {
    builder: tar::Builder<W>,
    opts: &'a PackOptions,
    summary: PackSummary,
    /// (dev, ino) of multiply-linked files -> archive path of the first one.
    hardlinks: HashMap<(u64, u64), PathBuf>,
    /// The error that stopped the walk.
    failure: Option<ArchiveError>,
}

impl<W: Write> Packer<'_, W> {
    fn header(&self, stat: &FileStat, kind: EntryType, mode: u32) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        let mtime = u64::try_from(stat.st_mtime).unwrap_or(0);
        h.set_mtime(match self.opts.mtime_clamp {
            Some(clamp) => mtime.min(clamp),
            None => mtime,
        });
        h.set_size(0);
        h
    }

    fn write_err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
        move |source| ArchiveError::Write {
            path: path.to_path_buf(),
            source,
        }
    }

    fn count_entry(&mut self) -> Result<(), ArchiveError> {
        self.summary.entries += 1;
        if self.summary.entries > self.opts.max_entries {
            return Err(ArchiveError::Limit {
                what: "entries",
                limit: self.opts.max_entries,
            });
        }
        Ok(())
    }

    fn append_dir(&mut self, name: &Path, stat: &FileStat) -> Result<(), ArchiveError> {
        self.count_entry()?;
        let mut h = self.header(stat, EntryType::Directory, 0o755);
        self.builder
            .append_data(&mut h, name, io::empty())
            .map_err(Self::write_err(name))
    }

    fn visit(&mut self, e: &Entry<'_>) -> Result<Visit, ArchiveError> {
        if let Some(cancel) = &self.opts.cancel {
            cancel.check().map_err(ArchiveError::Stopped)?;
        }
        if e.depth == 1 && self.opts.skip_root_git && e.name == OsStr::new(".git") {
            return Ok(Visit::Skip);
        }
        let archive_path = Path::new(".").join(e.path);
        if e.is_dir() {
            self.append_dir(&archive_path, e.stat)?;
            Ok(Visit::Descend)
        } else if e.is_symlink() {
            self.count_entry()?;
            let target = e.link_target().map_err(|w| match w {
                WalkError::Changed { path } => ArchiveError::Changed {
                    path,
                    reason: "no longer a link".into(),
                },
                other => ArchiveError::Read {
                    path: e.path.to_path_buf(),
                    source: other.into_io(),
                },
            })?;
            let mut h = self.header(e.stat, EntryType::Symlink, 0o777);
            self.builder
                .append_link(&mut h, &archive_path, &target)
                .map_err(Self::write_err(&archive_path))?;
            Ok(Visit::Descend)
        } else if e.is_file() {
            self.append_file(e, &archive_path)?;
            Ok(Visit::Descend)
        } else {
            self.summary.skipped.push(archive_path);
            Ok(Visit::Descend)
        }
    }

    fn append_file(&mut self, e: &Entry<'_>, archive_path: &Path) -> Result<(), ArchiveError> {
        self.count_entry()?;
        let st = e.stat;
        let mode = if st.st_mode & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        if self.append_known_hardlink(st, mode, archive_path)? {
            return Ok(());
        }
        self.refuse_unreadable(e)?;
        // The apparent size counts, before anything is read: a sparse or
        // huge file fails here.
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if self.summary.bytes.saturating_add(size) > self.opts.max_bytes {
            return Err(ArchiveError::Limit {
                what: "bytes of file content (apparent size)",
                limit: self.opts.max_bytes,
            });
        }
        self.append_contents(e, archive_path, mode, size)
    }

    /// Another name of a file already packed goes in as a hard link to
    /// the first name. Whether it did.
    fn append_known_hardlink(
        &mut self,
        st: &FileStat,
        mode: u32,
        archive_path: &Path,
    ) -> Result<bool, ArchiveError> {
        if st.st_nlink <= 1 {
            return Ok(false);
        }
        let Some(first) = self.hardlinks.get(&(st.st_dev, st.st_ino)) else {
            return Ok(false);
        };
        let mut h = self.header(st, EntryType::Link, mode);
        let first = first.clone();
        self.builder
            .append_link(&mut h, archive_path, &first)
            .map_err(Self::write_err(archive_path))?;
        Ok(true)
    }

    /// When packing for a build user, a file that user could not read
    /// itself (a hard link to a root-only file) is refused.
    fn refuse_unreadable(&self, e: &Entry<'_>) -> Result<(), ArchiveError> {
        let Some((uid, gid)) = self.opts.reader else {
            return Ok(());
        };
        let st = e.stat;
        let readable = st.st_uid == uid
            || st.st_mode & 0o004 != 0
            || (st.st_gid == gid && st.st_mode & 0o040 != 0);
        if readable {
            return Ok(());
        }
        Err(ArchiveError::NotReadable {
            path: e.path.to_path_buf(),
            uid: st.st_uid,
            mode: st.st_mode & 0o7777,
        })
    }

    /// The file's `size` bytes, read from the file that was seen (not
    /// whatever replaced it), and remembered for its other names.
    fn append_contents(
        &mut self,
        e: &Entry<'_>,
        archive_path: &Path,
        mode: u32,
        size: u64,
    ) -> Result<(), ArchiveError> {
        let st = e.stat;
        let file = e.open().map_err(|w| match w {
            WalkError::Changed { path } => ArchiveError::Changed {
                path,
                reason: "replaced by a link or another file".into(),
            },
            other => ArchiveError::Read {
                path: e.path.to_path_buf(),
                source: other.into_io(),
            },
        })?;
        if st.st_nlink > 1 {
            self.hardlinks
                .insert((st.st_dev, st.st_ino), archive_path.to_path_buf());
        }
        let mut h = self.header(st, EntryType::Regular, mode);
        h.set_size(size);
        let mut data = Exact {
            inner: Guarded::new(
                file,
                Rules {
                    cancel: self.opts.cancel.clone(),
                    ..Rules::default()
                },
            ),
            remaining: size,
        };
        self.builder
            .append_data(&mut h, archive_path, &mut data)
            .map_err(|source| contents_error(source, e.path, archive_path))?;
        self.summary.bytes += size;
        Ok(())
    }
}

/// Why packing a file's contents failed: the file shrank while it was
/// read, the build stopped, or writing the archive failed.
fn contents_error(source: io::Error, path: &Path, archive_path: &Path) -> ArchiveError {
    match source.get_ref().and_then(|r| r.downcast_ref::<Shrunk>()) {
        Some(_) => ArchiveError::Changed {
            path: path.to_path_buf(),
            reason: "it became shorter while it was read".into(),
        },
        None => match Cut::of(&source) {
            Some(Cut::Stopped(stop)) => ArchiveError::Stopped(stop),
            _ => ArchiveError::Write {
                path: archive_path.to_path_buf(),
                source,
            },
        },
    }
}

/// Exactly `remaining` bytes of a file: one that grows while it is packed
/// is cut at its size, one that shrinks is an error (the archive would be
/// corrupt). Read [`Guarded`] by the build's stop and deadline.
struct Exact {
    inner: Guarded<std::fs::File>,
    remaining: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("file shrank while it was packed")]
struct Shrunk;

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, Shrunk));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn packed(dir: &Path, opts: &PackOptions) -> Result<Vec<u8>, ArchiveError> {
        let mut out = Vec::new();
        pack_tar(dir, &mut out, opts)?;
        Ok(out)
    }

    #[test]
    fn a_sparse_file_fails_the_limit_without_being_read() {
        let tmp = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(tmp.path().join("sparse")).unwrap();
        f.set_len(8 << 30).unwrap();
        let opts = PackOptions {
            max_bytes: 1 << 30,
            ..PackOptions::default()
        };
        let start = std::time::Instant::now();
        let err = packed(tmp.path(), &opts).unwrap_err();
        assert!(matches!(err, ArchiveError::Limit { .. }), "{err}");
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn files_the_build_user_cannot_read_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("mine"), "x").unwrap();
        std::fs::set_permissions(
            tmp.path().join("mine"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let me = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let owner_ok = PackOptions {
            reader: Some(me),
            ..PackOptions::default()
        };
        packed(tmp.path(), &owner_ok).unwrap();
        let stranger = PackOptions {
            reader: Some((me.0.wrapping_add(12345), me.1.wrapping_add(12345))),
            ..PackOptions::default()
        };
        let err = packed(tmp.path(), &stranger).unwrap_err();
        assert!(matches!(err, ArchiveError::NotReadable { .. }), "{err}");
    }

    #[test]
    fn links_are_stored_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        symlink("/etc/passwd", tmp.path().join("passwd")).unwrap();
        let tar = packed(tmp.path(), &PackOptions::default()).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let entries: Vec<(String, EntryType)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("./".to_string(), EntryType::Directory),
                ("passwd".to_string(), EntryType::Symlink)
            ]
        );
    }

    #[test]
    fn depth_and_entries_are_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a/b/c")).unwrap();
        let shallow = PackOptions {
            max_depth: 2,
            ..PackOptions::default()
        };
        assert!(matches!(
            packed(tmp.path(), &shallow),
            Err(ArchiveError::PathTooLong { .. })
        ));
        let few = PackOptions {
            max_entries: 2,
            ..PackOptions::default()
        };
        assert!(matches!(
            packed(tmp.path(), &few),
            Err(ArchiveError::Limit { .. })
        ));
    }
}
