//! The one tar entry reader: unpacking ([`super::unpack`]) and the image
//! layer ([`slug_image::layer`]) both read tenant archives through it, so
//! every rule about what an entry is lives here once.
//!
//! It walks the archive's raw headers rather than let the tar crate resolve
//! extension headers: every extension header is bounded, PAX records are
//! parsed strictly, a PAX `size` that disagrees with the header is refused
//! instead of silently chosen, sparse files are refused, one rule decides
//! each entry's path, link, mode and mtime, the entry/byte/path limits are
//! enforced, and a stream that ends without its end-of-archive marker is
//! reported as truncated. A caller only decides what to do with each
//! [`TarEntry`] it is handed.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::{cell::Cell, mem};

use tar::{EntryType, Header};

use super::unpack::{corrupt, read_error};
use super::{ArchiveError, Limits};
use crate::rootdir::components;

/// One entry of the archive, its extension headers applied and checked:
/// a directory, a regular file, a symlink or a hard link (nothing else is
/// handed out).
#[derive(Debug)]
pub struct TarEntry<'a> {
    pub kind: EntryType,
    /// The name as the archive gives it (for messages).
    pub path: &'a [u8],
    /// The path's components: none is `..`, the path is not absolute, and
    /// its length and depth are within the limits.
    pub comps: &'a [&'a OsStr],
    /// A link's target: non-empty, no NUL, within the path length limit.
    pub link: Option<&'a [u8]>,
    /// Bytes of content (regular files only; already counted against the
    /// limit on unpacked bytes).
    pub size: u64,
    pub mode: u32,
    pub mtime: Option<u64>,
    /// The content: exactly `size` bytes, or an error.
    pub data: EntryData<'a>,
}

impl TarEntry<'_> {
    /// The path, for messages and errors.
    pub fn display(&self) -> PathBuf {
        shown(self.path)
    }
}

fn shown(path: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(path))
}

/// What the whole archive held.
#[derive(Debug, Default)]
pub struct TarSummary {
    /// Entries handed out.
    pub entries: u64,
    /// Bytes of regular-file content.
    pub bytes: u64,
    pub newest_mtime: Option<u64>,
    /// `comment` of a PAX global header (`git archive` puts the commit there).
    pub pax_comment: Option<String>,
}

/// Read every entry of the tar stream `reader`, handing each to `visit`.
/// An archive without its end-of-archive marker is an error unless
/// `allow_truncated`.
pub fn read_entries<'r, E: From<ArchiveError>>(
    reader: Box<dyn Read + 'r>,
    limits: &Limits,
    allow_truncated: bool,
    visit: impl FnMut(&mut TarEntry<'_>) -> Result<(), E>,
) -> Result<TarSummary, E> {
    let rules = Rules {
        allow_truncated,
        look_only: false,
    };
    walk_archive(reader, limits, rules, visit)
}

/// Read every entry of the tar stream `reader` for a caller that only
/// looks for a few files and creates nothing (a run image's layer): every
/// rule above holds, except that devices, FIFOs and sparse files are
/// skipped rather than refused (a runtime creates them; nothing here
/// does), an absolute name is taken from the image's root (as runtimes
/// do), and an archive with no entries, or without its end-of-archive
/// marker, is accepted (image layers may be empty, and the caller checks
/// the layer's digest, not the marker, to know it got all of it).
pub fn scan_entries<'r, E: From<ArchiveError>>(
    reader: Box<dyn Read + 'r>,
    limits: &Limits,
    visit: impl FnMut(&mut TarEntry<'_>) -> Result<(), E>,
) -> Result<TarSummary, E> {
    let rules = Rules {
        allow_truncated: true,
        look_only: true,
    };
    walk_archive(reader, limits, rules, visit)
}

/// How strict the reader is beyond the limits (see [`scan_entries`]).
#[derive(Clone, Copy)]
struct Rules {
    allow_truncated: bool,
    look_only: bool,
}

fn walk_archive<'r, E: From<ArchiveError>>(
    reader: Box<dyn Read + 'r>,
    limits: &Limits,
    rules: Rules,
    mut visit: impl FnMut(&mut TarEntry<'_>) -> Result<(), E>,
) -> Result<TarSummary, E> {
    let consumed = Rc::new(Cell::new(0u64));
    let mut archive = tar::Archive::new(Counting {
        inner: reader,
        count: Rc::clone(&consumed),
    });
    let mut walk = Walk {
        limits,
        pending: Pending::default(),
        summary: TarSummary::default(),
        seen_any: false,
        last_end: 0,
    };
    let entries = archive
        .entries()
        .map_err(|e| read_error(e, false))?
        .raw(true);
    for entry in entries {
        let mut entry = entry.map_err(|e| read_error(e, walk.seen_any))?;
        walk.seen_any = true;
        let header = entry.header().clone();
        let size = header.entry_size().map_err(corrupt)?;
        // Where this entry's data (padded to a block) ends.
        walk.last_end = entry
            .raw_file_position()
            .saturating_add(size.div_ceil(512).saturating_mul(512));
        if walk.extension(&header, &mut entry, size)? {
            continue;
        }
        let ext = mem::take(&mut walk.pending);
        if rules.look_only && !creatable(&ext, &header) {
            continue;
        }
        let mut path = ext.path(&header);
        if rules.look_only {
            let names = path.iter().position(|&b| b != b'/').unwrap_or(path.len());
            path.drain(..names);
        }
        let comps = walk.checked_path(&ext, &path, size)?;
        let link = walk.link(&ext, &header, &path)?;
        let (mode, mtime) = walk.metadata(&ext, &header, &path, size)?;
        visit(&mut TarEntry {
            kind: header.entry_type(),
            path: &path,
            comps: &comps,
            link: link.as_deref(),
            size,
            mode,
            mtime,
            data: EntryData::new(&mut entry, size),
        })?;
    }
    Ok(walk.finish(consumed.get(), rules)?)
}

/// The reader's state between entries.
struct Walk<'l> {
    limits: &'l Limits,
    pending: Pending,
    summary: TarSummary,
    seen_any: bool,
    last_end: u64,
}

impl Walk<'_> {
    /// Take in an extension header (GNU long name or link, PAX records);
    /// `false` when `header` is an entry of its own.
    fn extension(
        &mut self,
        header: &Header,
        entry: &mut impl Read,
        size: u64,
    ) -> Result<bool, ArchiveError> {
        let mut data = || read_extension(entry, size, self.limits);
        match header.entry_type() {
            EntryType::GNULongName => self.pending.long_name = Some(strip_nul(data()?)),
            EntryType::GNULongLink => self.pending.long_link = Some(strip_nul(data()?)),
            EntryType::XHeader => self.pending.pax = Some(parse_pax(&data()?)?),
            EntryType::XGlobalHeader => {
                if let Some((_, v)) = parse_pax(&data()?)?
                    .into_iter()
                    .rev()
                    .find(|(k, _)| k == "comment")
                {
                    self.summary.pax_comment = String::from_utf8(v).ok();
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The entry's path components, once its extension headers agree with
    /// its header and the path and entry-count limits hold.
    fn checked_path<'p>(
        &mut self,
        ext: &Pending,
        path: &'p [u8],
        size: u64,
    ) -> Result<Vec<&'p OsStr>, ArchiveError> {
        if let Some(pax_size) = ext.pax("size") {
            let parsed = std::str::from_utf8(pax_size)
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            if parsed != Some(size) {
                return Err(ArchiveError::Corrupt(format!(
                    "{:?}: PAX size {:?} disagrees with the header size {size}",
                    shown(path),
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
                path: shown(path),
                kind: "sparse file".into(),
            });
        }
        if path.len() > self.limits.max_path_len || path.contains(&0) {
            return Err(ArchiveError::PathTooLong { path: shown(path) });
        }
        let comps = components(path)?;
        if comps.len() > self.limits.max_depth {
            return Err(ArchiveError::PathTooLong { path: shown(path) });
        }
        self.summary.entries += 1;
        if self.summary.entries > self.limits.max_entries {
            return Err(ArchiveError::Limit {
                what: "entries",
                limit: self.limits.max_entries,
            });
        }
        Ok(comps)
    }

    /// A link's target (`None` for other entries); an invalid one is an
    /// error. Any other kind of entry than the four allowed is refused here.
    fn link(
        &self,
        ext: &Pending,
        header: &Header,
        path: &[u8],
    ) -> Result<Option<Vec<u8>>, ArchiveError> {
        match header.entry_type() {
            EntryType::Symlink | EntryType::Link => {}
            EntryType::Directory | EntryType::Regular | EntryType::Continuous => return Ok(None),
            other => {
                return Err(ArchiveError::UnsupportedType {
                    path: shown(path),
                    kind: entry_type_name(other),
                })
            }
        }
        let target = ext
            .pax("linkpath")
            .map(<[u8]>::to_vec)
            .or_else(|| ext.long_link.clone())
            .or_else(|| header.link_name_bytes().map(|c| c.into_owned()))
            .unwrap_or_default();
        if target.is_empty() || target.contains(&0) || target.len() > self.limits.max_path_len {
            return Err(ArchiveError::Corrupt(format!(
                "{:?}: invalid link target",
                shown(path)
            )));
        }
        Ok(Some(target))
    }

    /// Mode (a corrupt one is an error, whoever reads the archive) and
    /// mtime (PAX first, whole seconds); a regular file's size counts
    /// against the limit on unpacked bytes.
    fn metadata(
        &mut self,
        ext: &Pending,
        header: &Header,
        path: &[u8],
        size: u64,
    ) -> Result<(u32, Option<u64>), ArchiveError> {
        let mode = header.mode().map_err(|e| {
            ArchiveError::Corrupt(format!("{:?}: unreadable mode: {e}", shown(path)))
        })?;
        let mtime = ext
            .pax("mtime")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.split('.').next()?.parse::<u64>().ok())
            .or_else(|| header.mtime().ok());
        if let Some(m) = mtime {
            self.summary.newest_mtime = Some(self.summary.newest_mtime.map_or(m, |n| n.max(m)));
        }
        if matches!(
            header.entry_type(),
            EntryType::Regular | EntryType::Continuous
        ) {
            if self.summary.bytes.saturating_add(size) > self.limits.max_bytes {
                return Err(ArchiveError::Limit {
                    what: "bytes unpacked",
                    limit: self.limits.max_bytes,
                });
            }
            self.summary.bytes += size;
        }
        Ok((mode, mtime))
    }

    /// The checks once the tar reader has stopped.
    fn finish(self, consumed: u64, rules: Rules) -> Result<TarSummary, ArchiveError> {
        if !self.seen_any && !rules.look_only {
            return Err(ArchiveError::NotTar("no entries found".into()));
        }
        let p = &self.pending;
        if p.long_name.is_some() || p.long_link.is_some() || p.pax.is_some() {
            return Err(ArchiveError::Corrupt(
                "extension header at the end of the archive describes no entry".into(),
            ));
        }
        // The tar reader stops at the first zero block, or at the end of the
        // input: input that ends right after the last entry never had its
        // end-of-archive marker (the writer died between two files).
        if consumed <= self.last_end && !rules.allow_truncated {
            return Err(ArchiveError::Truncated {
                entries: self.summary.entries,
            });
        }
        Ok(self.summary)
    }
}

/// An entry's content: exactly its size, then end of file. Input that ends
/// early is an error saying so; [`EntryData::input_error`] tells a caller whose
/// writer saw an error whether the input was at fault.
pub struct EntryData<'a> {
    inner: &'a mut dyn Read,
    size: u64,
    remaining: u64,
    failed: Option<io::ErrorKind>,
}

impl std::fmt::Debug for EntryData<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryData")
            .field("size", &self.size)
            .field("remaining", &self.remaining)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<'a> EntryData<'a> {
    fn new(inner: &'a mut dyn Read, size: u64) -> Self {
        Self {
            inner,
            size,
            remaining: size,
            failed: None,
        }
    }

    /// The input's error when reading it failed or it ended early; else
    /// `e` back (the caller's output failed).
    pub fn input_error(&self, path: &[u8], e: io::Error) -> Result<ArchiveError, io::Error> {
        match self.failed {
            None => Err(e),
            Some(io::ErrorKind::UnexpectedEof) => Ok(ArchiveError::Corrupt(format!(
                "{:?}: truncated ({} of {} bytes)",
                shown(path),
                self.size - self.remaining,
                self.size
            ))),
            Some(_) => Ok(corrupt(e)),
        }
    }
}

impl Read for EntryData<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = match self.inner.read(&mut buf[..want]) {
            Ok(0) => {
                self.failed = Some(io::ErrorKind::UnexpectedEof);
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "truncated entry",
                ));
            }
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.failed = Some(e.kind());
                }
                return Err(e);
            }
        };
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Extension headers seen before the entry they describe.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<(String, Vec<u8>)>>,
}

impl Pending {
    /// The last value of a PAX key (later records win).
    fn pax(&self, key: &str) -> Option<&[u8]> {
        self.pax
            .as_ref()?
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// The entry's path: PAX, then GNU long name, then the header's.
    fn path(&self, header: &Header) -> Vec<u8> {
        self.pax("path")
            .map(<[u8]>::to_vec)
            .or_else(|| self.long_name.clone())
            .unwrap_or_else(|| header.path_bytes().into_owned())
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

/// Whether an entry is one the reader hands out (a directory, a regular
/// file or a link, not sparse); anything else a strict read refuses.
fn creatable(ext: &Pending, header: &Header) -> bool {
    let sparse = ext
        .pax
        .as_ref()
        .is_some_and(|p| p.iter().any(|(k, _)| k.starts_with("GNU.sparse.")));
    !sparse
        && matches!(
            header.entry_type(),
            EntryType::Directory
                | EntryType::Regular
                | EntryType::Continuous
                | EntryType::Symlink
                | EntryType::Link
        )
}

/// Counts the bytes the tar reader took, to tell a missing end-of-archive
/// marker.
struct Counting<'r> {
    inner: Box<dyn Read + 'r>,
    count: Rc<Cell<u64>>,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// How an entry type is named in errors.
fn entry_type_name(kind: EntryType) -> String {
    match kind {
        EntryType::Char => "character device".into(),
        EntryType::Block => "block device".into(),
        EntryType::Fifo => "FIFO".into(),
        EntryType::GNUSparse => "sparse file".into(),
        other => format!("{other:?}"),
    }
}

/// Parse pax extended header records (`"<len> key=value\n"`), strictly:
/// every record's length must match, values are kept as bytes (newlines
/// included), and a set cut short is an error. Public for the property
/// tests and the fuzz target.
pub fn parse_pax(data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, ArchiveError> {
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
