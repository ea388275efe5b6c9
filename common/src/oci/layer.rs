//! The slug as an image layer: its files at `/app`, owned by the run
//! image's user, in a reproducible tar+gzip.
//!
//! The slug is tenant data, so it goes through the same safe unpacker as
//! slugrunner's ([`archive::unpack_slug`]: both slug layouts, links never
//! followed, only files, directories and links, limits), into a private
//! directory; then the project's deterministic packer
//! ([`archive::pack_tar`]: sorted, modes 0755/0644, mtimes clamped to the
//! epoch, hard links once) writes it, and each entry is re-rooted at
//! `app/` and given the run user as owner on its way to the parallel
//! gzip writer ([`crate::pgzip`]). So `/app` in the image is what
//! slugrunner would have unpacked, and the same slug and epoch give the
//! same layer, byte for byte, however the slug was made or stored.
//!
//! The layer's digest (compressed) and diff_id (uncompressed) are computed
//! on the way; `.release` and the Procfile are read from the unpacked tree
//! (by descriptors, bounded) for the image config.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::OciError;
use crate::archive::{self, Limits, PackOptions, UnpackOptions};
use crate::cancel::Cancel;
use crate::pgzip::ParallelGzWriter;
use crate::procfile::{Procfile, MAX_PROCFILE_BYTES};
use crate::release::{Release, MAX_RELEASE_BYTES};
use crate::rootdir::{RootDir, RootError};

/// What went into the layer, and what the image config needs of the slug.
#[derive(Debug)]
pub struct SlugLayer {
    /// The compressed layer, in a private directory removed on drop.
    pub file: PathBuf,
    _dir: tempfile::TempDir,
    /// `sha256:` of the compressed bytes.
    pub digest: String,
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
    pub size: u64,
    /// The slug file's own sha256 (hex).
    pub slug_sha256: String,
    /// Process types: the Procfile's, then `.release` defaults it lacks.
    pub process_types: BTreeMap<String, String>,
    /// `config_vars` of `.release`.
    pub config_vars: BTreeMap<String, String>,
}

/// Counts and hashes what passes through.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn io_ctx(context: &str) -> impl FnOnce(io::Error) -> OciError + '_ {
    move |source| OciError::Io {
        context: context.to_string(),
        source,
    }
}

fn slug_error(e: archive::ArchiveError) -> OciError {
    match e {
        archive::ArchiveError::Stopped(stop) => OciError::Stopped(stop),
        e if e.is_bad_input() => OciError::BadSlug(e.to_string()),
        e => OciError::Io {
            context: "unpacking the slug".into(),
            source: io::Error::other(e.to_string()),
        },
    }
}

/// sha256 (hex) of a file.
pub fn file_sha256(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// Make the layer of `slug`, owned by `owner`, mtimes clamped to `epoch`.
pub fn slug_layer(
    slug: &Path,
    owner: (u32, u32),
    epoch: u64,
    level: u32,
    limits: Limits,
    work_dir: &Path,
    cancel: &Arc<Cancel>,
) -> Result<SlugLayer, OciError> {
    let dir = tempfile::Builder::new()
        .prefix("slug-layer-")
        .tempdir_in(work_dir)
        .map_err(io_ctx("creating a work directory for the image layer"))?;
    let cleanup = cancel.remove_on_emergency(dir.path());
    let result = make(slug, owner, epoch, level, limits, dir.path(), cancel);
    cancel.forget(cleanup);
    let made = result?;
    let slug_sha256 = file_sha256(slug).map_err(io_ctx("reading the slug"))?;
    Ok(SlugLayer {
        file: made.file,
        _dir: dir,
        digest: made.digest,
        diff_id: made.diff_id,
        size: made.size,
        slug_sha256,
        process_types: made.process_types,
        config_vars: made.config_vars,
    })
}

type Strings = BTreeMap<String, String>;

/// The layer file and what was learnt making it.
struct Made {
    file: PathBuf,
    digest: String,
    diff_id: String,
    size: u64,
    process_types: Strings,
    config_vars: Strings,
}

fn make(
    slug: &Path,
    owner: (u32, u32),
    epoch: u64,
    level: u32,
    limits: Limits,
    dir: &Path,
    cancel: &Arc<Cancel>,
) -> Result<Made, OciError> {
    // 1. Unpack, as slugrunner would.
    let tree = dir.join("app");
    let input =
        File::open(slug).map_err(|e| OciError::BadSlug(format!("{}: {e}", slug.display())))?;
    archive::unpack_slug(
        input,
        &tree,
        &UnpackOptions {
            owner: None,
            limits,
            cancel: Some(Arc::clone(cancel)),
            allow_truncated: false,
        },
    )
    .map_err(slug_error)?;
    cancel.check().map_err(OciError::Stopped)?;
    let (process_types, config_vars) = release_of(&tree)?;

    // 2. Pack deterministically, re-rooted and re-owned, compressed.
    let layer_path = dir.join("layer.tar.gz");
    let file = File::create(&layer_path).map_err(io_ctx("creating the image layer"))?;
    let compressed = Hashing {
        inner: io::BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let gz = ParallelGzWriter::new(compressed, level, threads)
        .map_err(io_ctx("starting the layer's compression"))?;
    let uncompressed = Hashing {
        inner: io::BufWriter::with_capacity(256 << 10, gz),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let (pipe_rx, pipe_tx) = io::pipe().map_err(io_ctx("making a pipe"))?;
    let pack_opts = PackOptions {
        mtime_clamp: Some(epoch),
        skip_root_git: false,
        max_bytes: limits.max_bytes,
        max_entries: limits.max_entries,
        max_depth: limits.max_depth,
        reader: None,
        cancel: Some(Arc::clone(cancel)),
    };
    let packer = {
        let tree = tree.clone();
        std::thread::Builder::new()
            .name("layer-pack".into())
            .spawn(move || {
                archive::pack_tar(
                    &tree,
                    io::BufWriter::with_capacity(256 << 10, pipe_tx),
                    &pack_opts,
                )
            })
            .map_err(io_ctx("starting the layer's packer"))?
    };
    let rewritten = reroot(pipe_rx, uncompressed, owner, epoch);
    // The packer ends when the pipe does; its own error is the real one.
    let packed = packer.join().unwrap_or_else(|_| {
        Err(archive::ArchiveError::Corrupt(
            "the layer packer panicked".into(),
        ))
    });
    if let Err(e) = packed {
        return Err(match e {
            archive::ArchiveError::Stopped(stop) => OciError::Stopped(stop),
            e => OciError::BadSlug(format!("packing the layer: {e}")),
        });
    }
    let uncompressed = rewritten?;
    let diff_id = format!("sha256:{:x}", uncompressed.hasher.finalize());
    let gz = uncompressed.inner.into_inner().map_err(|e| OciError::Io {
        context: "compressing the layer".into(),
        source: e.into_error(),
    })?;
    let mut compressed = gz.finish().map_err(io_ctx("compressing the layer"))?;
    compressed.flush().map_err(io_ctx("writing the layer"))?;
    let digest = format!("sha256:{:x}", compressed.hasher.finalize());
    let size = compressed.bytes;
    Ok(Made {
        file: layer_path,
        digest,
        diff_id,
        size,
        process_types,
        config_vars,
    })
}

/// Copy the packer's tar, each entry moved under `app/` and owned by
/// `owner`. The input is the project's own packer output (trusted shape:
/// the tenant's bytes went through the safe unpacker first).
fn reroot<W: Write>(
    input: impl Read,
    out: Hashing<W>,
    owner: (u32, u32),
    epoch: u64,
) -> Result<Hashing<W>, OciError> {
    let ctx = "re-rooting the slug at /app";
    let mut archive = tar::Archive::new(io::BufReader::with_capacity(256 << 10, input));
    let mut builder = tar::Builder::new(out);
    for entry in archive.entries().map_err(io_ctx(ctx))? {
        let mut entry = entry.map_err(io_ctx(ctx))?;
        let path = entry.path_bytes().into_owned();
        let rel = app_path(&path)?;
        let src = entry.header().clone();
        let kind = src.entry_type();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(src.mode().map_err(io_ctx(ctx))?);
        h.set_uid(owner.0.into());
        h.set_gid(owner.1.into());
        h.set_mtime(src.mtime().map_err(io_ctx(ctx))?.min(epoch));
        h.set_size(0);
        match kind {
            tar::EntryType::Directory => {
                builder
                    .append_data(&mut h, format!("{rel}/"), io::empty())
                    .map_err(io_ctx(ctx))?;
            }
            tar::EntryType::Regular => {
                h.set_size(entry.size());
                builder
                    .append_data(&mut h, &rel, &mut entry)
                    .map_err(io_ctx(ctx))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                builder
                    .append_link(&mut h, &rel, OsStr::from_bytes(&target))
                    .map_err(io_ctx(ctx))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target = app_path(&target)?;
                builder
                    .append_link(&mut h, &rel, &target)
                    .map_err(io_ctx(ctx))?;
            }
            other => {
                return Err(OciError::BadSlug(format!(
                    "unexpected entry type {other:?} for {rel}"
                )))
            }
        }
    }
    builder.into_inner().map_err(io_ctx(ctx))
}

/// Tar path `./a/b` -> `app/a/b` (`./` -> `app`). A name that the image
/// format would read as a whiteout (`.wh.*`) is refused: it would delete
/// a file of the image instead of being one.
fn app_path(path: &[u8]) -> Result<String, OciError> {
    let comps = crate::rootdir::components(path).map_err(|e| OciError::BadSlug(e.to_string()))?;
    let mut out = String::from("app");
    for c in comps {
        let bytes = c.as_encoded_bytes();
        if bytes.starts_with(b".wh.") {
            return Err(OciError::BadSlug(format!(
                "{:?}: names starting with .wh. mean a deletion in an image layer; rename it",
                String::from_utf8_lossy(path)
            )));
        }
        let s = std::str::from_utf8(bytes).map_err(|_| {
            OciError::BadSlug(format!(
                "{:?}: file names in an image must be UTF-8",
                String::from_utf8_lossy(path)
            ))
        })?;
        out.push('/');
        out.push_str(s);
    }
    Ok(out)
}

/// Process types and config vars of the unpacked slug: `.release` and the
/// Procfile, read beneath the tree by descriptors, bounded.
fn release_of(tree: &Path) -> Result<(Strings, Strings), OciError> {
    let mut root = RootDir::open_existing(tree).map_err(|e| OciError::Io {
        context: "opening the unpacked slug".into(),
        source: e.into_io(),
    })?;
    let read = |root: &mut RootDir, name: &str, limit: u64| -> Result<Option<Vec<u8>>, OciError> {
        match root.read_file(&[OsStr::new(name)], limit) {
            Ok(b) => Ok(b),
            Err(RootError::TooLarge { .. }) => Err(OciError::BadSlug(format!(
                "{name} is larger than {limit} bytes"
            ))),
            Err(RootError::NotRegular { kind, .. }) => Err(OciError::BadSlug(format!(
                "{name} is {kind}, not a regular file"
            ))),
            Err(e) => Err(OciError::Io {
                context: format!("reading {name} of the slug"),
                source: e.into_io(),
            }),
        }
    };
    let release = match read(&mut root, ".release", MAX_RELEASE_BYTES as u64)? {
        Some(bytes) => {
            Release::parse(&bytes).map_err(|e| OciError::BadSlug(format!(".release: {e}")))?
        }
        None => Release::default(),
    };
    let mut types = BTreeMap::new();
    if let Some(bytes) = read(&mut root, "Procfile", MAX_PROCFILE_BYTES as u64)? {
        let procfile = Procfile::parse_bytes(&bytes)
            .map_err(|e| OciError::BadSlug(format!("Procfile: {e}")))?;
        for (name, command) in procfile.entries() {
            types.insert(name.clone(), command.clone());
        }
    }
    for (name, command) in &release.default_process_types {
        types.entry(name.clone()).or_insert_with(|| command.clone());
    }
    Ok((types, release.config_vars))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A slug like slugbuilder's, rooted at `./` or `./app/`.
    fn slug(root: &str, dir: &Path) -> PathBuf {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::default(),
        ));
        let mut add =
            |path: &str, kind: tar::EntryType, data: &[u8], mode: u32, link: Option<&str>| {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(kind);
                h.set_size(data.len() as u64);
                h.set_mode(mode);
                h.set_mtime(2_000_000_000);
                match link {
                    Some(target) => b.append_link(&mut h, path, target).unwrap(),
                    None => b.append_data(&mut h, path, data).unwrap(),
                }
            };
        let p = |s: &str| format!("{root}{s}");
        if root == "./app/" {
            add("./", tar::EntryType::Directory, b"", 0o755, None);
        }
        add(&p(""), tar::EntryType::Directory, b"", 0o755, None);
        add(
            &p("Procfile"),
            tar::EntryType::Regular,
            b"web: ./bin/web\n",
            0o644,
            None,
        );
        add(
            &p(".release"),
            tar::EntryType::Regular,
            b"default_process_types:\n  web: ignored\n  worker: ./bin/work\nconfig_vars:\n  LANG: C.UTF-8\n",
            0o644,
            None,
        );
        add(&p("bin/"), tar::EntryType::Directory, b"", 0o755, None);
        add(
            &p("bin/web"),
            tar::EntryType::Regular,
            b"#!/bin/sh\n",
            0o4755,
            None,
        );
        add(
            &p("bin/link"),
            tar::EntryType::Symlink,
            b"",
            0o777,
            Some("/etc/passwd"),
        );
        let bytes = b.into_inner().unwrap().finish().unwrap();
        let path = dir.join(format!("slug-{}.tgz", root.len()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn layer_entries(layer: &SlugLayer) -> Vec<(String, u64, u64, u32)> {
        let file = File::open(&layer.file).unwrap();
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(file));
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.mode().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn both_slug_layouts_give_the_same_layer_at_app_owned_by_the_run_user() {
        let tmp = tempfile::tempdir().unwrap();
        let cancel = Cancel::new(Duration::from_secs(60));
        let make = |root| {
            slug_layer(
                &slug(root, tmp.path()),
                (1000, 1001),
                1_000_000_000,
                6,
                Limits::default(),
                tmp.path(),
                &cancel,
            )
            .unwrap()
        };
        let a = make("./");
        let b = make("./app/");
        assert_eq!(a.digest, b.digest, "the same tree gives the same layer");
        assert_eq!(a.diff_id, b.diff_id);
        let again = make("./");
        assert_eq!(a.digest, again.digest, "reproducible");
        let entries = layer_entries(&a);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "app/",
                "app/.release",
                "app/Procfile",
                "app/bin/",
                "app/bin/link",
                "app/bin/web"
            ]
        );
        assert!(
            entries.iter().all(|e| e.1 == 1000 && e.2 == 1001),
            "{entries:?}"
        );
        // setuid is gone.
        assert_eq!(
            entries.iter().find(|e| e.0 == "app/bin/web").unwrap().3,
            0o755
        );
        assert_eq!(a.process_types["web"], "./bin/web");
        assert_eq!(a.process_types["worker"], "./bin/work");
        assert_eq!(a.config_vars["LANG"], "C.UTF-8");
        // Another owner or epoch is another layer.
        let other = slug_layer(
            &slug("./", tmp.path()),
            (1000, 1000),
            1_000_000_000,
            6,
            Limits::default(),
            tmp.path(),
            &cancel,
        )
        .unwrap();
        assert_ne!(other.digest, a.digest);
    }

    #[test]
    fn whiteout_names_and_escapes_are_refused() {
        assert!(app_path(b"./x/.wh.config").is_err());
        assert!(app_path(b"../etc/passwd").is_err());
        assert_eq!(app_path(b"./").unwrap(), "app");
        assert_eq!(app_path(b"./a/b").unwrap(), "app/a/b");
    }
}
