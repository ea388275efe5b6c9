//! The slug and source archives: safe unpacking and reproducible packing.
//!
//! Unpacking accepts gzip-compressed or plain tar (told apart by magic
//! bytes), streams entries straight to disk through [`RootDir`] (so nothing
//! is written outside the destination and links are never followed), keeps
//! only regular files, directories, symlinks and inside hard links, drops
//! special mode bits and archive owners, and enforces [`Limits`].
//!
//! Packing walks a directory in byte order and writes a deterministic tar:
//! owners 0:0 with no names, modes normalised like git (0755 / 0644),
//! mtimes clamped to an epoch, symlinks stored as links, hard links once.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use flate2::bufread::MultiGzDecoder;
use tar::{EntryType, Header};

use crate::pgzip::ParallelGzWriter;
use crate::rootdir::{components, remove_entry, Owner, RootDir, RootError};

/// Bounds on what an archive may make us do. Defaults are generous for real
/// apps and small enough that a hostile archive fails fast.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Total bytes of file content (apparent size), checked against each
    /// entry's header before anything of it is written.
    pub max_bytes: u64,
    /// Number of entries.
    pub max_entries: u64,
    /// Length of one path or link target, in bytes.
    pub max_path_len: usize,
    /// Number of components in one path.
    pub max_depth: usize,
    /// Size of one extension header (PAX record set, GNU long name or link).
    pub max_extension_header: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            max_entries: 1_000_000,
            max_path_len: 4096,
            max_depth: 128,
            max_extension_header: 1 << 20,
        }
    }
}

/// Default bound on unpacked bytes: 4 GiB, a few times Heroku's 1 GB
/// compressed slug limit (slugs compress about 3:1).
pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;

/// How to unpack.
#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// Owner (uid, gid) for every created entry; `None` keeps the caller's.
    pub owner: Owner,
    pub limits: Limits,
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

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the archive is empty")]
    Empty,
    #[error("not a tar archive (and not gzip): {0}")]
    NotTar(String),
    #[error("corrupt archive: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Unsafe(#[from] RootError),
    #[error(
        "{path:?}: unsupported entry type {kind} (only files, directories and links are allowed)"
    )]
    UnsupportedType { path: PathBuf, kind: String },
    #[error("archive exceeds the limit of {limit} {what}")]
    Limit { what: &'static str, limit: u64 },
    #[error("{path:?}: path is longer or deeper than allowed")]
    PathTooLong { path: PathBuf },
    #[error("{path:?}: hard link target leaves the destination")]
    LinkEscapes { path: PathBuf },
    #[error("writing {path:?}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {path:?}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ArchiveError {
    /// Whether the archive itself is at fault (as opposed to the disk).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, ArchiveError::Write { .. } | ArchiveError::Read { .. })
            && !matches!(self, ArchiveError::Unsafe(RootError::Io { .. }))
    }
}

fn corrupt(e: io::Error) -> ArchiveError {
    ArchiveError::Corrupt(e.to_string())
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
fn read_error(e: io::Error, seen_any: bool) -> ArchiveError {
    if seen_any || e.get_ref().is_some_and(|inner| inner.is::<InputError>()) {
        corrupt(e)
    } else {
        ArchiveError::NotTar(e.to_string())
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const CHUNK: usize = 256 * 1024;

/// A reader fed by a decompression thread, so that inflating the next
/// chunk overlaps with writing the previous one to disk. At most a few
/// chunks are in flight: memory stays bounded whatever the input.
struct Pipelined {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Read for Pipelined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
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

/// Start decompressing `reader` (gzip when it starts with the gzip magic,
/// else passed through) on a thread. Returns the decompressed stream and
/// whether it was gzip.
pub fn decompressed(
    reader: impl Read + Send + 'static,
) -> Result<(Box<dyn Read>, bool), ArchiveError> {
    let mut buffered = BufReader::with_capacity(CHUNK, reader);
    let head = buffered.fill_buf().map_err(corrupt)?;
    if head.is_empty() {
        return Err(ArchiveError::Empty);
    }
    let gzip = head.len() >= 2 && head[..2] == GZIP_MAGIC;
    let mut source: Box<dyn Read + Send> = if gzip {
        Box::new(MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    std::thread::Builder::new()
        .name("decompress".into())
        .spawn(move || loop {
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
        })
        .map_err(|e| ArchiveError::Read {
            path: PathBuf::from("<input>"),
            source: e,
        })?;
    Ok((
        Box::new(Pipelined {
            rx,
            current: Vec::new(),
            pos: 0,
            done: false,
        }),
        gzip,
    ))
}

/// Unpack a gzip or plain tar stream into `dest` (created if missing).
pub fn unpack(
    reader: impl Read + Send + 'static,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackSummary, ArchiveError> {
    unpack_observed(reader, dest, opts, &mut |_| {})
}

/// [`unpack`], calling `on_entry` with each entry's path components.
fn unpack_observed(
    reader: impl Read + Send + 'static,
    dest: &Path,
    opts: &UnpackOptions,
    on_entry: &mut dyn FnMut(&[&OsStr]),
) -> Result<UnpackSummary, ArchiveError> {
    let (reader, gzip) = decompressed(reader)?;
    let mut root = RootDir::open(dest, opts.owner)?;
    let mut summary = unpack_tar(reader, &mut root, &opts.limits, on_entry)?;
    summary.gzip = gzip;
    Ok(summary)
}

/// Unpack a slug into `app_dir`, accepting both layouts in the wild:
/// rooted at `./` (herokuish, Deis) and at `./app/` (Heroku's platform API).
/// An `./app/`-rooted slug is recognised when `app` is its only top-level
/// entry, and its contents are moved up into `app_dir`.
pub fn unpack_slug(
    reader: impl Read + Send + 'static,
    app_dir: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackSummary, ArchiveError> {
    let mut top_level: BTreeSet<Vec<u8>> = BTreeSet::new();
    let summary = unpack_observed(reader, app_dir, opts, &mut |comps| {
        if let Some(first) = comps.first() {
            if top_level.len() < 2 {
                top_level.insert(first.as_bytes().to_vec());
            }
        }
    })?;
    if top_level.len() == 1 && top_level.contains(b"app".as_slice()) && app_dir.join("app").is_dir()
    {
        hoist(app_dir)?;
    }
    Ok(summary)
}

/// Move `dir/app/*` up into `dir`.
fn hoist(dir: &Path) -> Result<(), ArchiveError> {
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArchiveError::Write { path, source }
    };
    let staging = dir.join(format!(".slug-app-{}", std::process::id()));
    std::fs::rename(dir.join("app"), &staging).map_err(write_err(dir))?;
    for child in std::fs::read_dir(&staging).map_err(write_err(&staging))? {
        let child = child.map_err(write_err(&staging))?;
        let target = dir.join(child.file_name());
        remove_entry(&target).map_err(write_err(&target))?;
        std::fs::rename(child.path(), &target).map_err(write_err(&target))?;
    }
    std::fs::remove_dir(&staging).map_err(write_err(&staging))
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

/// Extension headers seen before the entry they describe.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<(String, Vec<u8>)>>,
}

impl Pending {
    fn pax(&self, key: &str) -> Option<&[u8]> {
        self.pax
            .as_ref()?
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }
}

/// Read an extension header's data, bounded by the limit.
fn read_extension(
    entry: &mut impl Read,
    size: u64,
    limits: &Limits,
) -> Result<Vec<u8>, ArchiveError> {
    if size > limits.max_extension_header {
        return Err(ArchiveError::Limit {
            what: "bytes in one extension header",
            limit: limits.max_extension_header,
        });
    }
    let mut data = Vec::with_capacity(size as usize);
    entry.take(size).read_to_end(&mut data).map_err(corrupt)?;
    if data.len() as u64 != size {
        return Err(ArchiveError::Corrupt("truncated extension header".into()));
    }
    Ok(data)
}

/// GNU long names end with a NUL.
fn strip_nul(mut v: Vec<u8>) -> Vec<u8> {
    if let Some(i) = v.iter().position(|&b| b == 0) {
        v.truncate(i);
    }
    v
}

/// Walk the archive's raw headers ourselves rather than let the tar crate
/// resolve extension headers: that way every extension header is bounded,
/// a PAX `size` that disagrees with the header is refused instead of
/// silently chosen, and one rule decides each entry's path and link.
fn unpack_tar(
    reader: Box<dyn Read>,
    root: &mut RootDir,
    limits: &Limits,
    on_entry: &mut dyn FnMut(&[&OsStr]),
) -> Result<UnpackSummary, ArchiveError> {
    let mut archive = tar::Archive::new(reader);
    let mut summary = UnpackSummary::default();
    let mut seen_any = false;
    let mut pending = Pending::default();
    let mut buf = vec![0u8; CHUNK];
    let entries = archive
        .entries()
        .map_err(|e| read_error(e, false))?
        .raw(true);
    for entry in entries {
        let mut entry = entry.map_err(|e| read_error(e, seen_any))?;
        seen_any = true;
        let header = entry.header().clone();
        let kind = header.entry_type();
        let size = header.entry_size().map_err(corrupt)?;
        match kind {
            EntryType::GNULongName => {
                pending.long_name = Some(strip_nul(read_extension(&mut entry, size, limits)?));
                continue;
            }
            EntryType::GNULongLink => {
                pending.long_link = Some(strip_nul(read_extension(&mut entry, size, limits)?));
                continue;
            }
            EntryType::XHeader => {
                let data = read_extension(&mut entry, size, limits)?;
                pending.pax = Some(parse_pax(&data)?);
                continue;
            }
            EntryType::XGlobalHeader => {
                let data = read_extension(&mut entry, size, limits)?;
                if let Some((_, v)) = parse_pax(&data)?
                    .into_iter()
                    .rev()
                    .find(|(k, _)| k == "comment")
                {
                    summary.pax_comment = String::from_utf8(v).ok();
                }
                continue;
            }
            _ => {}
        }
        let ext = std::mem::take(&mut pending);
        let path_bytes: Vec<u8> = ext
            .pax("path")
            .map(<[u8]>::to_vec)
            .or(ext.long_name.clone())
            .unwrap_or_else(|| header.path_bytes().into_owned());
        let display = || PathBuf::from(OsStr::from_bytes(&path_bytes));
        if let Some(pax_size) = ext.pax("size") {
            let parsed = std::str::from_utf8(pax_size)
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            if parsed != Some(size) {
                return Err(ArchiveError::Corrupt(format!(
                    "{:?}: PAX size {:?} disagrees with the header size {size}",
                    display(),
                    String::from_utf8_lossy(pax_size)
                )));
            }
        }
        if ext
            .pax
            .as_ref()
            .is_some_and(|p| p.iter().any(|(k, _)| k.starts_with("GNU.sparse.")))
        {
            return Err(ArchiveError::UnsupportedType {
                path: display(),
                kind: "sparse file".into(),
            });
        }
        if path_bytes.len() > limits.max_path_len || path_bytes.contains(&0) {
            return Err(ArchiveError::PathTooLong { path: display() });
        }
        let comps = components(&path_bytes)?;
        if comps.len() > limits.max_depth {
            return Err(ArchiveError::PathTooLong { path: display() });
        }
        summary.entries += 1;
        if summary.entries > limits.max_entries {
            return Err(ArchiveError::Limit {
                what: "entries",
                limit: limits.max_entries,
            });
        }
        let mode = header.mode().map_err(corrupt)?;
        let mtime = ext
            .pax("mtime")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.split('.').next()?.parse::<u64>().ok())
            .or_else(|| header.mtime().ok());
        if let Some(m) = mtime {
            summary.newest_mtime = Some(summary.newest_mtime.map_or(m, |n| n.max(m)));
        }
        let link_target = || -> Result<Vec<u8>, ArchiveError> {
            let target = ext
                .pax("linkpath")
                .map(<[u8]>::to_vec)
                .or(ext.long_link.clone())
                .or_else(|| header.link_name_bytes().map(|c| c.into_owned()))
                .unwrap_or_default();
            if target.is_empty() || target.contains(&0) || target.len() > limits.max_path_len {
                return Err(ArchiveError::Corrupt(format!(
                    "{:?}: invalid link target",
                    display()
                )));
            }
            Ok(target)
        };
        on_entry(&comps);
        match kind {
            EntryType::Directory => root.create_dir(&comps, sanitize_dir_mode(mode))?,
            EntryType::Regular | EntryType::Continuous => {
                if summary.bytes.saturating_add(size) > limits.max_bytes {
                    return Err(ArchiveError::Limit {
                        what: "bytes unpacked",
                        limit: limits.max_bytes,
                    });
                }
                let mut file = root.create_file(&comps, sanitize_file_mode(mode))?;
                let mut remaining = size;
                while remaining > 0 {
                    let want = remaining.min(buf.len() as u64) as usize;
                    let n = match entry.read(&mut buf[..want]) {
                        Ok(0) => {
                            return Err(ArchiveError::Corrupt(format!(
                                "{:?}: truncated ({} of {size} bytes)",
                                display(),
                                size - remaining
                            )))
                        }
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(corrupt(e)),
                    };
                    file.write_all(&buf[..n])
                        .map_err(|source| ArchiveError::Write {
                            path: display(),
                            source,
                        })?;
                    remaining -= n as u64;
                }
                if let Some(m) = mtime {
                    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(m);
                    // Best effort: a wrong mtime is not worth failing an unpack.
                    let _ = file.set_modified(t);
                }
                summary.bytes += size;
            }
            EntryType::Symlink => {
                root.create_symlink(&comps, OsStr::from_bytes(&link_target()?))?
            }
            EntryType::Link => {
                let target = link_target()?;
                let target_comps = components(&target)
                    .map_err(|_| ArchiveError::LinkEscapes { path: display() })?;
                root.create_hardlink(&comps, &target_comps)?;
            }
            other => {
                return Err(ArchiveError::UnsupportedType {
                    path: display(),
                    kind: entry_type_name(other),
                })
            }
        }
    }
    if !seen_any {
        return Err(ArchiveError::NotTar("no entries found".into()));
    }
    if pending.long_name.is_some() || pending.long_link.is_some() || pending.pax.is_some() {
        return Err(ArchiveError::Corrupt(
            "extension header at the end of the archive describes no entry".into(),
        ));
    }
    Ok(summary)
}

fn entry_type_name(kind: EntryType) -> String {
    match kind {
        EntryType::Char => "character device".into(),
        EntryType::Block => "block device".into(),
        EntryType::Fifo => "FIFO".into(),
        EntryType::GNUSparse => "sparse file".into(),
        other => format!("{other:?}"),
    }
}

/// Parse pax extended header records (`"<len> key=value\n"`), strictly.
fn parse_pax(data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, ArchiveError> {
    let bad = || ArchiveError::Corrupt("malformed PAX extended header".into());
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        // Some writers pad the record set with NULs.
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let space = rest
            .iter()
            .take(20)
            .position(|&b| b == b' ')
            .ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad());
        }
        let record = &rest[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        let key = std::str::from_utf8(&record[..eq])
            .map_err(|_| bad())?
            .to_string();
        out.push((key, record[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

/// How to pack.
#[derive(Debug, Clone, Default)]
pub struct PackOptions {
    /// Clamp every mtime to at most this (SOURCE_DATE_EPOCH semantics);
    /// `None` keeps mtimes as they are.
    pub mtime_clamp: Option<u64>,
    /// Leave out the root `.git` directory.
    pub skip_root_git: bool,
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
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut packer = Packer {
        builder,
        opts,
        summary: PackSummary::default(),
        hardlinks: HashMap::new(),
    };
    let root_meta = std::fs::symlink_metadata(dir).map_err(|source| ArchiveError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    packer.append_dir_header(Path::new("./"), &root_meta)?;
    packer.walk(dir, Path::new("."), true)?;
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
    let gz = ParallelGzWriter::new(out, level, threads).map_err(write_err)?;
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
}

impl<W: Write> Packer<'_, W> {
    fn header(&self, meta: &std::fs::Metadata, kind: EntryType, mode: u32) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
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

    fn append_dir_header(
        &mut self,
        name: &Path,
        meta: &std::fs::Metadata,
    ) -> Result<(), ArchiveError> {
        let mut h = self.header(meta, EntryType::Directory, 0o755);
        self.builder
            .append_data(&mut h, name, io::empty())
            .map_err(Self::write_err(name))?;
        self.summary.entries += 1;
        Ok(())
    }

    fn walk(&mut self, dir: &Path, archive_dir: &Path, is_root: bool) -> Result<(), ArchiveError> {
        let read_err = |source| ArchiveError::Read {
            path: dir.to_path_buf(),
            source,
        };
        let mut children: Vec<_> = std::fs::read_dir(dir)
            .map_err(read_err)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(read_err)?;
        children.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in children {
            if is_root && self.opts.skip_root_git && name == ".git" {
                continue;
            }
            let path = dir.join(&name);
            let archive_path = archive_dir.join(&name);
            let meta = std::fs::symlink_metadata(&path).map_err(|source| ArchiveError::Read {
                path: path.clone(),
                source,
            })?;
            let ft = meta.file_type();
            if ft.is_dir() {
                self.append_dir_header(&archive_path, &meta)?;
                self.walk(&path, &archive_path, false)?;
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(|source| ArchiveError::Read {
                    path: path.clone(),
                    source,
                })?;
                let mut h = self.header(&meta, EntryType::Symlink, 0o777);
                self.builder
                    .append_link(&mut h, &archive_path, &target)
                    .map_err(Self::write_err(&archive_path))?;
                self.summary.entries += 1;
            } else if ft.is_file() {
                self.append_file(&path, &archive_path, &meta)?;
            } else {
                self.summary.skipped.push(archive_path);
            }
        }
        Ok(())
    }

    fn append_file(
        &mut self,
        path: &Path,
        archive_path: &Path,
        meta: &std::fs::Metadata,
    ) -> Result<(), ArchiveError> {
        let mode = if meta.mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        if meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.hardlinks.get(&key) {
                let mut h = self.header(meta, EntryType::Link, mode);
                let first = first.clone();
                self.builder
                    .append_link(&mut h, archive_path, &first)
                    .map_err(Self::write_err(archive_path))?;
                self.summary.entries += 1;
                return Ok(());
            }
            self.hardlinks.insert(key, archive_path.to_path_buf());
        }
        // O_NOFOLLOW: if the file was swapped for a link since the walk saw
        // it, fail instead of packing whatever the link points at.
        let file = File::options()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .map_err(|source| ArchiveError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        let size = meta.len();
        let mut h = self.header(meta, EntryType::Regular, mode);
        h.set_size(size);
        // Exactly `size` bytes: a file that grows while packing must not
        // corrupt the archive, and one that shrinks is an error.
        let mut data = file.take(size);
        self.builder
            .append_data(&mut h, archive_path, &mut data)
            .map_err(Self::write_err(archive_path))?;
        self.summary.entries += 1;
        self.summary.bytes += size;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

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
}
