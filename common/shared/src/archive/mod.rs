//! The slug and source archives: safe unpacking ([`unpack`]) and
//! reproducible packing ([`pack`]).
//!
//! Unpacking accepts gzip-compressed or plain tar (told apart by magic
//! bytes), streams entries straight to disk through
//! [`RootDir`](crate::rootdir::RootDir) (so nothing is written outside the
//! destination and links are never followed), keeps only regular files,
//! directories, symlinks and inside hard links, drops special mode bits and
//! archive owners, and enforces [`Limits`].
//!
//! Packing walks a directory by descriptors in byte order and writes a
//! deterministic tar: owners 0:0 with no names, modes normalised like git
//! (0755 / 0644), mtimes clamped to an epoch, symlinks stored as links,
//! hard links once.

pub mod blocks;
mod entries;
mod pack;
mod unpack;

use std::io;
use std::path::PathBuf;

pub use entries::parse_pax;
pub use entries::{read_entries, scan_entries, EntryData, TarEntry, TarSummary};
pub use pack::{pack_gzip, pack_tar, PackOptions, PackSummary};
pub use unpack::{decompressed, unpack, unpack_slug, UnpackOptions, UnpackSummary};

use crate::cancel::Stop;
use crate::rootdir::RootError;

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

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the archive is empty")]
    Empty,
    #[error("not a tar archive (and not gzip): {0}")]
    NotTar(String),
    #[error("corrupt archive: {0}")]
    Corrupt(String),
    #[error("the archive is truncated: it ends without the end-of-archive marker (after {entries} entries)")]
    Truncated { entries: u64 },
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
    #[error("{path:?} is not readable by the build user (owner {uid}, mode {mode:o})")]
    NotReadable { path: PathBuf, uid: u32, mode: u32 },
    #[error("{path:?} changed while it was packed: {reason}")]
    Changed { path: PathBuf, reason: String },
    #[error(transparent)]
    Stopped(Stop),
    #[error("writing {path:?}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {path:?}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ArchiveError {
    /// Whether the archive itself is at fault (as opposed to the disk).
    pub fn is_bad_input(&self) -> bool {
        !matches!(
            self,
            ArchiveError::Write { .. } | ArchiveError::Read { .. } | ArchiveError::Stopped(_)
        ) && !matches!(self, ArchiveError::Unsafe(RootError::Io { .. }))
    }
}
