//! Unpacking a tar (plain or gzip) safely: every entry goes through
//! [`RootDir`], extension headers are bounded and parsed strictly, and a
//! stream that ends without its end-of-archive marker is reported as
//! truncated.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::bufread::MultiGzDecoder;
use nix::errno::Errno;
use tar::EntryType;

use super::entries::{read_entries, TarEntry};
use super::{ArchiveError, Limits};
use crate::cancel::{Cancel, Stop};
use crate::rootdir::{components, list_dir, remove_at, Owner, RootDir};

/// How to unpack.
#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// Owner (uid, gid) for every created entry; `None` keeps the caller's.
    pub owner: Owner,
    pub limits: Limits,
    /// Give up waiting for input when the build must stop.
    pub cancel: Option<Arc<Cancel>>,
    /// Accept a tar that ends without its end-of-archive marker (two zero
    /// blocks), as a tool that died half-way leaves it.
    pub allow_truncated: bool,
}

/// What an unpack saw.
#[derive(Debug, Clone, Default)]
pub struct UnpackSummary {
    /// Entries created.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Newest mtime among the entries (a deterministic default epoch for a
    /// source archive: `git archive` stamps every entry with the commit time).
    pub newest_mtime: Option<u64>,
    /// `comment` of a pax global header: `git archive` puts the commit id there.
    pub pax_comment: Option<String>,
    /// Whether the archive was gzip-compressed.
    pub gzip: bool,
}

pub(super) fn corrupt(e: io::Error) -> ArchiveError {
    match stop_of(&e) {
        Some(stop) => ArchiveError::Stopped(stop),
        None => ArchiveError::Corrupt(e.to_string()),
    }
}

/// An input read that gave up because the build must stop.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Stopped(Stop);

fn stop_of(e: &io::Error) -> Option<Stop> {
    let inner = e.get_ref()?;
    if let Some(Stopped(stop)) = inner.downcast_ref::<Stopped>() {
        return Some(*stop);
    }
    // Wrapped once more by the tar reader.
    inner.downcast_ref::<io::Error>().and_then(stop_of)
}

/// Marks an error of the input stream itself (a truncated or corrupt gzip
/// stream, a failing read), as opposed to the tar structure.
#[derive(Debug)]
struct InputError(io::Error);

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for InputError {}

/// An error from the tar reader: the input stream's own errors and errors
/// after the first entry are corruption; before it, the input is not a tar.
pub(super) fn read_error(e: io::Error, seen_any: bool) -> ArchiveError {
    if let Some(stop) = stop_of(&e) {
        return ArchiveError::Stopped(stop);
    }
    if seen_any || e.get_ref().is_some_and(|inner| inner.is::<InputError>()) {
        corrupt(e)
    } else {
        ArchiveError::NotTar(e.to_string())
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const CHUNK: usize = 256 * 1024;

/// A reader fed by a decompression thread, so that inflating the next
/// chunk overlaps with writing the previous one to disk, and so that a
/// build can stop waiting for input that never comes. At most a few chunks
/// are in flight: memory stays bounded whatever the input.
struct Pipelined {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
    done: bool,
    /// Stop waiting for the next chunk when the build must stop (a stdin
    /// that never ends must not outlast SIGTERM or the deadline).
    cancel: Option<Arc<Cancel>>,
}

/// Wait for a message of the decompression thread.
fn receive<T>(rx: &std::sync::mpsc::Receiver<T>, cancel: Option<&Cancel>) -> io::Result<Option<T>> {
    match cancel {
        Some(cancel) => cancel
            .recv(rx)
            .map_err(|stop| io::Error::other(Stopped(stop))),
        None => Ok(rx.recv().ok()),
    }
}

impl Read for Pipelined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.done {
                return Ok(0);
            }
            match receive(&self.rx, self.cancel.as_deref()) {
                Ok(Some(Ok(chunk))) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                Ok(Some(Err(e))) | Err(e) => {
                    self.done = true;
                    return Err(e);
                }
                Ok(None) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// What the decompression thread found at the start of its input.
enum Format {
    Empty,
    Plain,
    Gzip,
    Failed(io::Error),
}

/// Start decompressing `reader` (gzip when it starts with the gzip magic,
/// else passed through) on a thread. Returns the decompressed stream and
/// whether it was gzip. Even the first read happens on that thread, so
/// `cancel` can end a wait for input that never comes.
pub fn decompressed(
    reader: impl Read + Send + 'static,
    cancel: Option<Arc<Cancel>>,
) -> Result<(Box<dyn Read>, bool), ArchiveError> {
    let (format_tx, format_rx) = std::sync::mpsc::sync_channel(1);
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    std::thread::Builder::new()
        .name("decompress".into())
        .spawn(move || {
            let mut buffered = BufReader::with_capacity(CHUNK, reader);
            let gzip = match buffered.fill_buf() {
                Err(e) => {
                    let _ = format_tx.send(Format::Failed(e));
                    return;
                }
                Ok([]) => {
                    let _ = format_tx.send(Format::Empty);
                    return;
                }
                Ok(head) => head.len() >= 2 && head[..2] == GZIP_MAGIC,
            };
            let _ = format_tx.send(if gzip { Format::Gzip } else { Format::Plain });
            let source: Box<dyn Read + Send> = if gzip {
                Box::new(MultiGzDecoder::new(buffered))
            } else {
                Box::new(buffered)
            };
            pump(source, gzip, &tx);
        })
        .map_err(|e| ArchiveError::Read {
            path: PathBuf::from("<input>"),
            source: e,
        })?;
    let gzip = match receive(&format_rx, cancel.as_deref()).map_err(corrupt)? {
        Some(Format::Gzip) => true,
        Some(Format::Plain) => false,
        Some(Format::Empty) => return Err(ArchiveError::Empty),
        Some(Format::Failed(e)) => return Err(corrupt(e)),
        None => return Err(ArchiveError::Empty),
    };
    Ok((
        Box::new(Pipelined {
            rx,
            current: Vec::new(),
            pos: 0,
            done: false,
            cancel,
        }),
        gzip,
    ))
}

/// Read `source` in whole chunks and hand them over until it ends.
fn pump(
    mut source: Box<dyn Read + Send>,
    gzip: bool,
    tx: &std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>,
) {
    loop {
        let mut chunk = vec![0u8; CHUNK];
        let mut filled = 0;
        // Fill whole chunks: fewer, larger hand-offs.
        let result = loop {
            match source.read(&mut chunk[filled..]) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    filled += n;
                    if filled == chunk.len() {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        let eof = filled < chunk.len();
        chunk.truncate(filled);
        if filled > 0 && tx.send(Ok(chunk)).is_err() {
            return;
        }
        match result {
            Err(e) => {
                let what = if gzip { "gzip stream" } else { "input" };
                let e = io::Error::new(
                    e.kind(),
                    InputError(io::Error::new(e.kind(), format!("{what}: {e}"))),
                );
                let _ = tx.send(Err(e));
                return;
            }
            Ok(()) if eof => return,
            Ok(()) => {}
        }
    }
}

/// Unpack a gzip or plain tar stream into `dest` (created if missing).
pub fn unpack(
    reader: impl Read + Send + 'static,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackSummary, ArchiveError> {
    let mut root = RootDir::open(dest, opts.owner)?;
    unpack_observed(reader, &mut root, opts, &mut |_| {})
}

/// [`unpack`], calling `on_entry` with each entry's path components.
fn unpack_observed(
    reader: impl Read + Send + 'static,
    root: &mut RootDir,
    opts: &UnpackOptions,
    on_entry: &mut dyn FnMut(&[&OsStr]),
) -> Result<UnpackSummary, ArchiveError> {
    let (reader, gzip) = decompressed(reader, opts.cancel.clone())?;
    let mut summary = unpack_tar(reader, root, opts, on_entry)?;
    summary.gzip = gzip;
    Ok(summary)
}

/// Unpack a slug into `app_dir`, accepting both layouts in the wild:
/// rooted at `./` (herokuish, Deis) and at `./app/` (Heroku's platform API).
/// An `./app/`-rooted slug is recognised when `app` is its only top-level
/// entry and a real directory (not a link), and its contents are moved up
/// into `app_dir`, by descriptors.
pub fn unpack_slug(
    reader: impl Read + Send + 'static,
    app_dir: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackSummary, ArchiveError> {
    let mut top_level: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut root = RootDir::open(app_dir, opts.owner)?;
    let summary = unpack_observed(reader, &mut root, opts, &mut |comps| {
        if let Some(first) = comps.first() {
            if top_level.len() < 2 {
                top_level.insert(first.as_bytes().to_vec());
            }
        }
    })?;
    if top_level.len() == 1 && top_level.contains(b"app".as_slice()) {
        hoist(&root, app_dir)?;
    }
    Ok(summary)
}

/// Move `app/*` up into the root, by descriptors: `app` must be a real
/// directory (a link named `app` stays a link, and nothing it points at is
/// ever touched).
fn hoist(root: &RootDir, dir: &Path) -> Result<(), ArchiveError> {
    let err = |what: &str| {
        let path = dir.join(what);
        move |e: Errno| ArchiveError::Write {
            path,
            source: e.into(),
        }
    };
    let top = root.fd();
    let app = OsStr::new("app");
    let st = nix::sys::stat::fstatat(top, app, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(err("app"))?;
    if nix::sys::stat::SFlag::from_bits_truncate(st.st_mode) & nix::sys::stat::SFlag::S_IFMT
        != nix::sys::stat::SFlag::S_IFDIR
    {
        return Ok(());
    }
    // Out of the way first: the slug's app/ may hold an entry named `app`.
    let staging = OsString::from(format!(".slug-app-{}", std::process::id()));
    nix::fcntl::renameat(top, app, top, staging.as_os_str()).map_err(err("app"))?;
    let moved = nix::fcntl::openat(
        top,
        staging.as_os_str(),
        nix::fcntl::OFlag::O_RDONLY
            | nix::fcntl::OFlag::O_DIRECTORY
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(err("app"))?;
    for name in list_dir(moved.as_fd()).map_err(err("app"))? {
        remove_at(top, &name).map_err(err(&name.to_string_lossy()))?;
        nix::fcntl::renameat(moved.as_fd(), name.as_os_str(), top, name.as_os_str())
            .map_err(err(&name.to_string_lossy()))?;
    }
    nix::unistd::unlinkat(
        top,
        staging.as_os_str(),
        nix::unistd::UnlinkatFlags::RemoveDir,
    )
    .map_err(err("app"))
}

/// Mode for a created file: no setuid/setgid/sticky, no world write.
fn sanitize_file_mode(mode: u32) -> u32 {
    mode & 0o775
}

/// Mode for a created directory: as the file rule, and always traversable
/// and writable by its owner so the rest of the archive can be unpacked.
fn sanitize_dir_mode(mode: u32) -> u32 {
    (mode & 0o775) | 0o700
}

/// Unpack the tar stream `reader` beneath `root`, telling `on_entry` each
/// entry's path components.
fn unpack_tar(
    reader: Box<dyn Read>,
    root: &mut RootDir,
    opts: &UnpackOptions,
    on_entry: &mut dyn FnMut(&[&OsStr]),
) -> Result<UnpackSummary, ArchiveError> {
    let mut buf = vec![0u8; CHUNK];
    let read = read_entries(reader, &opts.limits, opts.allow_truncated, |entry| {
        on_entry(entry.comps);
        create(root, entry, &mut buf)
    })?;
    Ok(UnpackSummary {
        entries: read.entries,
        bytes: read.bytes,
        newest_mtime: read.newest_mtime,
        pax_comment: read.pax_comment,
        gzip: false,
    })
}

/// Create one entry beneath `root`: modes sanitised, owners the caller's
/// choice, links never followed.
fn create(
    root: &mut RootDir,
    entry: &mut TarEntry<'_>,
    buf: &mut [u8],
) -> Result<(), ArchiveError> {
    let comps = entry.comps;
    match (entry.kind, entry.link) {
        (EntryType::Directory, _) => root.create_dir(comps, sanitize_dir_mode(entry.mode))?,
        (EntryType::Symlink, Some(target)) => {
            root.create_symlink(comps, OsStr::from_bytes(target))?
        }
        (EntryType::Link, Some(target)) => {
            let target_comps = components(target).map_err(|_| ArchiveError::LinkEscapes {
                path: entry.display(),
            })?;
            root.create_hardlink(comps, &target_comps)?;
        }
        _ => {
            let mut file = root.create_file(comps, sanitize_file_mode(entry.mode))?;
            copy_data(entry, &mut file, buf)?;
            if let Some(m) = entry.mtime {
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(m);
                // Best effort: a wrong mtime is not worth failing an unpack.
                let _ = file.set_modified(t);
            }
        }
    }
    Ok(())
}

/// A regular file's content into `file`.
fn copy_data(
    entry: &mut TarEntry<'_>,
    file: &mut impl Write,
    buf: &mut [u8],
) -> Result<(), ArchiveError> {
    loop {
        let n = match entry.data.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(entry
                    .data
                    .input_error(entry.path, e)
                    .unwrap_or_else(corrupt))
            }
        };
        file.write_all(&buf[..n])
            .map_err(|source| ArchiveError::Write {
                path: entry.display(),
                source,
            })?;
    }
}

#[cfg(test)]
mod tests {
    use super::super::{pack_gzip, parse_pax, PackOptions};
    use super::*;
    use crate::rootdir::RootError;
    use std::os::unix::fs::{symlink, MetadataExt};
    use tar::Header;

    fn tar_with(entries: &[(&str, EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            if let Some(link) = link {
                h.set_link_name(link).unwrap();
            }
            // Bypass the tar crate's own path checks to build hostile names.
            let name = h.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn unpack_bytes(bytes: Vec<u8>, dest: &Path) -> Result<UnpackSummary, ArchiveError> {
        unpack(io::Cursor::new(bytes), dest, &UnpackOptions::default())
    }

    #[test]
    fn refuses_dotdot_and_absolute_paths() {
        let tmp = tempfile::tempdir().unwrap();
        for path in ["../evil", "a/../../evil", "/tmp/evil"] {
            let err = unpack_bytes(
                tar_with(&[(path, EntryType::Regular, b"x", None)]),
                &tmp.path().join("d"),
            )
            .unwrap_err();
            assert!(
                matches!(err, ArchiveError::Unsafe(RootError::Escapes { .. })),
                "{path}: {err}"
            );
        }
        assert!(!tmp.path().join("evil").exists());
    }

    #[test]
    fn symlink_then_file_through_it_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        let bytes = tar_with(&[
            ("l", EntryType::Symlink, b"", Some(victim.to_str().unwrap())),
            ("l/x", EntryType::Regular, b"pwned", None),
        ]);
        let err = unpack_bytes(bytes, &tmp.path().join("d")).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Unsafe(RootError::ThroughLink { .. })),
            "{err}"
        );
        assert!(std::fs::read_dir(&victim).unwrap().next().is_none());
    }

    #[test]
    fn devices_are_refused_and_empty_input_is_clear() {
        let tmp = tempfile::tempdir().unwrap();
        let err =
            unpack_bytes(tar_with(&[("dev", EntryType::Char, b"", None)]), tmp.path()).unwrap_err();
        assert!(matches!(err, ArchiveError::UnsupportedType { .. }), "{err}");
        assert!(matches!(
            unpack_bytes(Vec::new(), tmp.path()),
            Err(ArchiveError::Empty)
        ));
        assert!(matches!(
            unpack_bytes(b"hello world, this is not a tar".to_vec(), tmp.path()),
            Err(ArchiveError::NotTar(_) | ArchiveError::Corrupt(_))
        ));
    }

    #[test]
    fn special_bits_are_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = Header::new_gnu();
        h.set_mode(0o6777);
        h.set_size(1);
        b.append_data(&mut h, "suid", &b"x"[..]).unwrap();
        unpack_bytes(b.into_inner().unwrap(), tmp.path()).unwrap();
        let mode = std::fs::metadata(tmp.path().join("suid")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o775);
    }

    #[test]
    fn pack_is_deterministic_and_keeps_links_as_links() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("b/c")).unwrap();
        std::fs::write(src.join("a.txt"), "a").unwrap();
        std::fs::write(src.join("b/c/d"), "d").unwrap();
        std::fs::hard_link(src.join("a.txt"), src.join("b/hard")).unwrap();
        symlink("/etc/passwd", src.join("passwd")).unwrap();
        std::fs::create_dir_all(src.join(".git")).unwrap();
        let opts = PackOptions {
            mtime_clamp: Some(1_000),
            skip_root_git: true,
            ..PackOptions::default()
        };
        let mut one = Vec::new();
        pack_gzip(&src, &mut one, 6, &opts).unwrap();
        std::fs::write(src.join("a.txt"), "a").unwrap(); // touch: mtime changes
        let mut two = Vec::new();
        pack_gzip(&src, &mut two, 6, &opts).unwrap();
        assert_eq!(one, two);

        let dest = tmp.path().join("dest");
        let summary = unpack(io::Cursor::new(one), &dest, &UnpackOptions::default()).unwrap();
        assert!(summary.gzip);
        assert_eq!(
            std::fs::read_link(dest.join("passwd")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(std::fs::read_to_string(dest.join("b/hard")).unwrap(), "a");
        assert_eq!(
            std::fs::metadata(dest.join("b/hard")).unwrap().ino(),
            std::fs::metadata(dest.join("a.txt")).unwrap().ino()
        );
        assert!(!dest.join(".git").exists());
    }

    #[test]
    fn app_rooted_slugs_are_hoisted() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = tar_with(&[
            ("./app/", EntryType::Directory, b"", None),
            ("./app/Procfile", EntryType::Regular, b"web: x", None),
        ]);
        unpack_slug(
            io::Cursor::new(bytes),
            tmp.path(),
            &UnpackOptions::default(),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("Procfile")).unwrap(),
            "web: x"
        );
        assert!(!tmp.path().join("app").exists());
    }

    #[test]
    fn pax_records_are_parsed_strictly() {
        let recs =
            parse_pax(b"52 comment=0123456789012345678901234567890123456789\n6 a=b\n").unwrap();
        assert_eq!(recs[0].0, "comment");
        assert_eq!(recs[1], ("a".to_string(), b"b".to_vec()));
        assert!(parse_pax(b"99 a=b\n").is_err());
        assert!(parse_pax(b"6 ab\n\n").is_err());
        assert!(parse_pax(b"x a=b\n").is_err());
    }

    #[test]
    fn a_tar_without_its_end_marker_is_truncated() {
        let whole = tar_with(&[
            ("a", EntryType::Regular, b"1", None),
            ("b", EntryType::Regular, b"2", None),
        ]);
        // git archive dying between two files: the first entry and its
        // padding, then nothing.
        let cut = whole[..1024].to_vec();
        let tmp = tempfile::tempdir().unwrap();
        let err = unpack_bytes(cut.clone(), &tmp.path().join("d")).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Truncated { entries: 1 }),
            "{err}"
        );
        let accepting = UnpackOptions {
            allow_truncated: true,
            ..UnpackOptions::default()
        };
        unpack(io::Cursor::new(cut), &tmp.path().join("e"), &accepting).unwrap();
        // One zero block is enough of a marker.
        unpack_bytes(whole[..2048 + 512].to_vec(), &tmp.path().join("f")).unwrap();
    }

    /// A slug whose only entry is a link `app` to a host directory: nothing
    /// of that directory may move.
    #[test]
    fn an_app_link_is_never_hoisted_through() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("host");
        std::fs::create_dir(&host).unwrap();
        std::fs::write(host.join("precious"), "data").unwrap();
        let bytes = tar_with(&[("app", EntryType::Symlink, b"", Some(host.to_str().unwrap()))]);
        let dest = tmp.path().join("dest");
        unpack_slug(io::Cursor::new(bytes), &dest, &UnpackOptions::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(host.join("precious")).unwrap(),
            "data"
        );
        assert!(dest
            .join("app")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(!dest.join("precious").exists());
    }

    #[test]
    fn waiting_for_input_ends_when_the_build_must_stop() {
        let (reader, _writer) = std::io::pipe().unwrap();
        let cancel = crate::cancel::Cancel::new(std::time::Duration::from_millis(200));
        let opts = UnpackOptions {
            cancel: Some(cancel),
            ..UnpackOptions::default()
        };
        let tmp = tempfile::tempdir().unwrap();
        let start = std::time::Instant::now();
        let err = unpack(reader, tmp.path(), &opts).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Stopped(Stop::TimedOut)),
            "{err}"
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }
}
