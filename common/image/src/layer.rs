//! The slug as an image layer: its files at `/app`, owned by the run
//! image's user, in a reproducible tar+gzip, made in one streaming pass.
//!
//! The slug is decompressed on its own thread ([`archive::decompressed`]),
//! each entry is checked and re-rooted at `app/` on the main thread, and
//! the result is compressed on all cores ([`slug_shared::pgzip`]): nothing is
//! unpacked to disk, memory stays bounded (a few 256 KiB chunks, and a
//! hash of each path for the checks below), and the digest (compressed)
//! and diff_id (uncompressed) are computed on the way.
//!
//! The slug is tenant data, and the layer will be unpacked as root by
//! every runtime that pulls it, so entries are held to slugrunner's
//! unpacking rules (`archive::unpack`): extension headers (PAX, GNU long
//! names) bounded and parsed strictly, a PAX size that disagrees with the
//! header refused, paths normalised with [`rootdir::components`] (no `..`,
//! nothing absolute), only directories, regular files, symlinks and hard
//! links to earlier files, nothing beneath a symlink or a file, the
//! entry/byte/depth/path limits, a truncated tar refused, and a slug whose
//! only top-level entry is a directory `app` moved up (Heroku's layout).
//! On top: names starting with `.wh.` are refused (an image layer would
//! read them as deletions). Missing parent directories are added, so that
//! every directory of `/app` belongs to the run user.
//!
//! Metadata is normalised as the slug packer does (`archive::pack`):
//! modes 0755/0644 (0755 for directories, 0777 for links), owner the run
//! user, no user or group names, mtimes clamped to the epoch. So the same
//! slug and epoch give the same layer byte for byte, however the slug was
//! stored, and a slug rooted at `./app/` gives the same layer as one
//! rooted at `./`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tar::EntryType;

use super::OciError;
use slug_shared::archive::{self, ArchiveError, Limits, TarEntry};
use slug_shared::cancel::Cancel;
use slug_shared::digest::Hashed;
use slug_shared::pgzip::ParallelGzWriter;
use slug_shared::procfile::{Procfile, MAX_PROCFILE_BYTES};
use slug_shared::release::{Release, MAX_RELEASE_BYTES};

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

fn io_ctx(context: &str) -> impl FnOnce(io::Error) -> OciError + '_ {
    move |source| OciError::Io {
        context: context.to_string(),
        source,
    }
}

fn bad(msg: impl Into<String>) -> OciError {
    OciError::BadSlug(msg.into())
}

/// sha256 (hex) of a file.
pub fn file_sha256(path: &Path) -> io::Result<String> {
    let mut file = Hashed::new(File::open(path)?);
    io::copy(&mut file, &mut io::sink())?;
    Ok(file.finish().2)
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
    let started = std::time::Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("slug-layer-")
        .tempdir_in(work_dir)
        .map_err(io_ctx("creating a work directory for the image layer"))?;
    let cleanup = cancel.remove_on_emergency(dir.path());
    // The slug's own digest, for a label, beside the transform.
    let hashing = {
        let slug = slug.to_path_buf();
        std::thread::Builder::new()
            .name("slug-sha256".into())
            .spawn(move || file_sha256(&slug))
            .map_err(io_ctx("starting a thread"))?
    };
    let layer_path = dir.path().join("layer.tar.gz");
    let recipe = Recipe {
        owner,
        epoch,
        level,
        limits,
    };
    let mut made = transform(slug, &layer_path, &recipe, false, cancel);
    if let Ok(m) = &made {
        if m.app_rooted {
            // Heroku's layout (only `./app/`): again, moved up.
            made = transform(slug, &layer_path, &recipe, true, cancel);
        }
    }
    cancel.forget(cleanup);
    let made = made?;
    let slug_sha256 = hashing
        .join()
        .map_err(|_| bad("hashing the slug failed"))?
        .map_err(io_ctx("reading the slug"))?;
    tracing::info!(elapsed = ?started.elapsed(), size = made.size, "slug layer made");
    let release = match &made.release {
        Some(bytes) => Release::parse(bytes)
            .map_err(|e| bad(format!(".release: {}", slug_shared::log::error_line(&e))))?,
        None => Release::default(),
    };
    let mut process_types = BTreeMap::new();
    if let Some(bytes) = &made.procfile {
        let procfile = Procfile::parse_bytes(bytes).map_err(|e| bad(format!("Procfile: {e}")))?;
        for (name, command) in procfile.entries() {
            process_types.insert(name.clone(), command.clone());
        }
    }
    for (name, command) in &release.default_process_types {
        process_types
            .entry(name.clone())
            .or_insert_with(|| command.clone());
    }
    Ok(SlugLayer {
        file: layer_path,
        _dir: dir,
        digest: made.digest,
        diff_id: made.diff_id,
        size: made.size,
        slug_sha256,
        process_types,
        config_vars: release.config_vars,
    })
}

/// The layer file and what was learnt making it.
struct Made {
    digest: String,
    diff_id: String,
    size: u64,
    release: Option<Vec<u8>>,
    procfile: Option<Vec<u8>>,
    /// The slug's only top-level entry is a directory `app`: make it again,
    /// moved up.
    app_rooted: bool,
}

/// How the layer is made, whatever the slug's layout.
struct Recipe {
    owner: (u32, u32),
    epoch: u64,
    level: u32,
    limits: Limits,
}

/// One pass from the slug to the layer; with `hoist`, the slug's `app/`
/// becomes /app.
fn transform(
    slug: &Path,
    layer_path: &Path,
    recipe: &Recipe,
    hoist: bool,
    cancel: &Arc<Cancel>,
) -> Result<Made, OciError> {
    let input = File::open(slug).map_err(|e| bad(format!("{}: {e}", slug.display())))?;
    let (reader, _gzip) = archive::decompressed(input, Some(Arc::clone(cancel)))?;
    let file = File::create(layer_path).map_err(io_ctx("creating the image layer"))?;
    let compressed = Hashed::new(io::BufWriter::with_capacity(1 << 20, file));
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let gz = ParallelGzWriter::new(compressed, recipe.level, threads)
        .map_err(io_ctx("starting the layer's compression"))?;
    let uncompressed = Hashed::new(io::BufWriter::with_capacity(256 << 10, gz));
    let mut walk = Walk {
        builder: tar::Builder::new(uncompressed),
        owner: recipe.owner,
        epoch: recipe.epoch,
        limits: recipe.limits,
        hoist,
        cancel: Arc::clone(cancel),
        kinds: HashMap::new(),
        keys: RandomState::new(),
        top_level: BTreeSet::new(),
        app_not_dir: false,
        release: None,
        procfile: None,
    };
    walk.run(reader)?;
    let Walk {
        builder,
        top_level,
        app_not_dir,
        release,
        procfile,
        ..
    } = walk;
    let uncompressed = builder.into_inner().map_err(io_ctx("writing the layer"))?;
    let (buffered, _, diff_id) = uncompressed.finish();
    let gz = buffered.into_inner().map_err(|e| OciError::Io {
        context: "compressing the layer".into(),
        source: e.into_error(),
    })?;
    let mut compressed = gz.finish().map_err(io_ctx("compressing the layer"))?;
    compressed.flush().map_err(io_ctx("writing the layer"))?;
    let (_, size, digest) = compressed.finish();
    let app_rooted =
        !hoist && top_level.len() == 1 && top_level.contains(b"app".as_slice()) && !app_not_dir;
    Ok(Made {
        digest: format!("sha256:{digest}"),
        diff_id: format!("sha256:{diff_id}"),
        size,
        release,
        procfile,
        app_rooted,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Link,
}

/// One pass over the slug's entries, writing the layer.
struct Walk<W: Write> {
    builder: tar::Builder<W>,
    owner: (u32, u32),
    epoch: u64,
    limits: Limits,
    hoist: bool,
    cancel: Arc<Cancel>,
    /// What each path (relative to /app, by a keyed hash) is.
    kinds: HashMap<u64, Kind>,
    keys: RandomState,
    /// First components seen (up to two), for Heroku's `./app/` layout.
    top_level: BTreeSet<Vec<u8>>,
    /// A top-level `app` that is not a directory (then it stays as it is).
    app_not_dir: bool,
    release: Option<Vec<u8>>,
    procfile: Option<Vec<u8>>,
}

impl<W: Write> Walk<W> {
    fn key(&self, rel: &[u8]) -> u64 {
        self.keys.hash_one(rel)
    }

    fn write_error(&self, e: io::Error) -> OciError {
        match self.cancel.stopped() {
            Some(stop) => OciError::Stopped(stop),
            None => OciError::Io {
                context: "writing the layer".into(),
                source: e,
            },
        }
    }

    fn header(&self, kind: EntryType, mode: u32, mtime: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(self.owner.0.into());
        h.set_gid(self.owner.1.into());
        h.set_mtime(mtime.min(self.epoch));
        h.set_size(0);
        h
    }

    fn run(&mut self, reader: Box<dyn Read>) -> Result<(), OciError> {
        // /app itself, first.
        let h = self.header(EntryType::Directory, 0o755, self.epoch);
        self.append(h, "app/", io::empty())?;
        let root = self.key(b"");
        self.kinds.insert(root, Kind::Dir);
        let limits = self.limits;
        let read = archive::read_entries(reader, &limits, false, |entry| self.entry(entry));
        match (read, self.cancel.stopped()) {
            (Ok(_), _) => Ok(()),
            // Input that failed because the build must stop is the stop.
            (Err(OciError::BadSlug(_)), Some(stop)) => Err(OciError::Stopped(stop)),
            (Err(e), _) => Err(e),
        }
    }

    /// One entry of the slug, re-rooted at /app.
    fn entry(&mut self, entry: &mut TarEntry<'_>) -> Result<(), OciError> {
        self.cancel.check().map_err(OciError::Stopped)?;
        let Some(comps) = self.placed(entry)? else {
            return Ok(());
        };
        let rel = comps.join(&b'/');
        self.parents(&comps, entry.path)?;
        let out = format!("app/{}", String::from_utf8_lossy(&rel));
        let mtime = entry.mtime.unwrap_or(0);
        let kind = match entry.kind {
            EntryType::Directory => {
                let h = self.header(EntryType::Directory, 0o755, mtime);
                self.append(h, &format!("{out}/"), io::empty())?;
                Kind::Dir
            }
            EntryType::Symlink => {
                let target = entry.link.unwrap_or_default();
                let mut h = self.header(EntryType::Symlink, 0o777, mtime);
                self.builder
                    .append_link(&mut h, &out, std::ffi::OsStr::from_bytes(target))
                    .map_err(|e| self.write_error(e))?;
                Kind::Link
            }
            EntryType::Link => {
                self.hardlink(entry, &out, mtime)?;
                Kind::File
            }
            _ => {
                self.file(entry, &rel, &out, mtime)?;
                Kind::File
            }
        };
        let key = self.key(&rel);
        self.kinds.insert(key, kind);
        Ok(())
    }

    /// Where an entry goes: its components relative to /app, after the
    /// layout's rules (Heroku's `./app/` moved up, no whiteouts, UTF-8
    /// names); `None` for the slug's root, which is /app, written first.
    fn placed<'e>(&mut self, entry: &TarEntry<'e>) -> Result<Option<Vec<&'e [u8]>>, OciError> {
        let path = entry.path;
        let mut comps: Vec<&[u8]> = entry.comps.iter().map(|c| c.as_encoded_bytes()).collect();
        if let Some(first) = comps.first() {
            if self.top_level.len() < 2 {
                self.top_level.insert(first.to_vec());
            }
            if comps.len() == 1 && *first == b"app" && entry.kind != EntryType::Directory {
                self.app_not_dir = true;
            }
        }
        if self.hoist {
            match comps.first() {
                Some(first) if *first == b"app" => {
                    comps.remove(0);
                }
                // `./` itself: /app is written already.
                None => return Ok(None),
                Some(_) => return Err(bad("the slug's layout changed while it was read")),
            }
        }
        if comps.is_empty() {
            if entry.kind == EntryType::Directory {
                return Ok(None);
            }
            return Err(bad(format!(
                "{}: the slug's root is not a directory",
                shown(path)
            )));
        }
        for c in &comps {
            if c.starts_with(b".wh.") {
                return Err(bad(format!(
                    "{}: names starting with .wh. mean a deletion in an image layer; rename it",
                    shown(path)
                )));
            }
            if std::str::from_utf8(c).is_err() {
                return Err(bad(format!(
                    "{}: file names in an image must be UTF-8",
                    shown(path)
                )));
            }
        }
        Ok(Some(comps))
    }

    /// A regular file: streamed, or kept when it is the Procfile or
    /// `.release` (the image config is made of them).
    fn file(
        &mut self,
        entry: &mut TarEntry<'_>,
        rel: &[u8],
        out: &str,
        mtime: u64,
    ) -> Result<(), OciError> {
        let mode = if entry.mode & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        let mut h = self.header(EntryType::Regular, mode, mtime);
        h.set_size(entry.size);
        let limit = match rel {
            b".release" => MAX_RELEASE_BYTES,
            b"Procfile" => MAX_PROCFILE_BYTES,
            _ => {
                return match self.builder.append_data(&mut h, out, &mut entry.data) {
                    Ok(()) => Ok(()),
                    Err(e) => Err(match entry.data.input_error(entry.path, e) {
                        Ok(input) => input.into(),
                        Err(e) => self.write_error(e),
                    }),
                };
            }
        };
        if entry.size > limit as u64 {
            return Err(bad(format!(
                "{} is larger than {limit} bytes",
                String::from_utf8_lossy(rel)
            )));
        }
        let mut bytes = Vec::with_capacity(entry.size as usize);
        if let Err(e) = entry.data.read_to_end(&mut bytes) {
            let input = entry.data.input_error(entry.path, e);
            return Err(input
                .unwrap_or_else(|e| ArchiveError::Corrupt(e.to_string()))
                .into());
        }
        self.append(h, out, &bytes[..])?;
        if rel == b".release" {
            self.release = Some(bytes);
        } else {
            self.procfile = Some(bytes);
        }
        Ok(())
    }

    /// A hard link, to a regular file earlier in the slug.
    fn hardlink(&mut self, entry: &TarEntry<'_>, out: &str, mtime: u64) -> Result<(), OciError> {
        let (path, target) = (entry.path, entry.link.unwrap_or_default());
        let escapes = || bad(format!("{}: hard link target leaves the slug", shown(path)));
        let tcomps = slug_shared::rootdir::components(target).map_err(|_| escapes())?;
        let mut tcomps: Vec<&[u8]> = tcomps.iter().map(|c| c.as_encoded_bytes()).collect();
        if self.hoist {
            if tcomps.first().map(|c| *c == b"app") != Some(true) {
                return Err(escapes());
            }
            tcomps.remove(0);
        }
        let trel = tcomps.join(&b'/');
        if self.kinds.get(&self.key(&trel)) != Some(&Kind::File) {
            return Err(bad(format!(
                "{}: hard link to {}, which is not a file earlier in the slug",
                shown(path),
                shown(target)
            )));
        }
        let mut h = self.header(EntryType::Link, 0o644, mtime);
        let target = format!("app/{}", String::from_utf8_lossy(&trel));
        self.builder
            .append_link(&mut h, out, target)
            .map_err(|e| self.write_error(e))
    }

    /// Every parent must be a directory: a missing one is added (owned by
    /// the run user), a link or a file is refused (extracting beneath a
    /// link writes through it).
    fn parents(&mut self, comps: &[&[u8]], path: &[u8]) -> Result<(), OciError> {
        for depth in 1..comps.len() {
            let parent = comps[..depth].join(&b'/');
            match self.kinds.get(&self.key(&parent)) {
                Some(Kind::Dir) => {}
                Some(Kind::Link) => {
                    return Err(bad(format!("{}: beneath a symbolic link", shown(path))))
                }
                Some(Kind::File) => return Err(bad(format!("{}: beneath a file", shown(path)))),
                None => {
                    let h = self.header(EntryType::Directory, 0o755, self.epoch);
                    let name = format!("app/{}/", String::from_utf8_lossy(&parent));
                    self.append(h, &name, io::empty())?;
                    let key = self.key(&parent);
                    self.kinds.insert(key, Kind::Dir);
                }
            }
        }
        Ok(())
    }

    fn append(&mut self, mut h: tar::Header, path: &str, data: impl Read) -> Result<(), OciError> {
        self.builder
            .append_data(&mut h, path, data)
            .map_err(|e| self.write_error(e))
    }
}

fn shown(path: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(path))
}

/// The reader's refusals (and a stop while reading) as the layer's.
impl From<ArchiveError> for OciError {
    fn from(e: ArchiveError) -> Self {
        match e {
            ArchiveError::Stopped(stop) => OciError::Stopped(stop),
            e => bad(slug_shared::log::error_line(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A tar entry written as is: the tar crate's builder would refuse
    /// the hostile paths these tests need.
    fn raw(out: &mut Vec<u8>, path: &[u8], kind: EntryType, data: &[u8], link: &[u8], mode: u32) {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..path.len()].copy_from_slice(path);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(2_000_000_000);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    type Entry<'a> = (&'a str, EntryType, &'a [u8], &'a str);

    fn tar_of(entries: &[Entry<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for (path, kind, data, link) in entries {
            let mode = if *kind == EntryType::Regular {
                0o4755
            } else {
                0o755
            };
            raw(
                &mut out,
                path.as_bytes(),
                *kind,
                data,
                link.as_bytes(),
                mode,
            );
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// A slug like slugbuilder's, rooted at `./` or `./app/`.
    fn slug(root: &str) -> Vec<u8> {
        let p = |s: &str| format!("{root}{s}");
        let (procfile, release, bin, web, link) = (
            p("Procfile"),
            p(".release"),
            p("bin/"),
            p("bin/web"),
            p("bin/link"),
        );
        let release_yaml: &[u8] =
            b"default_process_types:\n  web: ignored\n  worker: ./bin/work\nconfig_vars:\n  LANG: C.UTF-8\n";
        let mut entries: Vec<Entry<'_>> = vec![("./", EntryType::Directory, b"", "")];
        if root == "./app/" {
            entries.push(("./app/", EntryType::Directory, b"", ""));
        }
        entries.extend([
            (
                procfile.as_str(),
                EntryType::Regular,
                b"web: ./bin/web\n".as_slice(),
                "",
            ),
            (release.as_str(), EntryType::Regular, release_yaml, ""),
            (bin.as_str(), EntryType::Directory, b"", ""),
            (web.as_str(), EntryType::Regular, b"#!/bin/sh\n", ""),
            (link.as_str(), EntryType::Symlink, b"", "/etc/passwd"),
        ]);
        gz(&tar_of(&entries))
    }

    /// The layer of `bytes`; its file lives as long as the TempDir.
    fn made(bytes: &[u8], owner: (u32, u32)) -> (tempfile::TempDir, Result<SlugLayer, OciError>) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("slug.tgz");
        std::fs::write(&path, bytes).unwrap();
        let cancel = Cancel::new(Duration::from_secs(60));
        let result = slug_layer(
            &path,
            owner,
            1_000_000_000,
            6,
            Limits::default(),
            tmp.path(),
            &cancel,
        );
        (tmp, result)
    }

    /// Digests and metadata only: the file goes with its directory.
    fn layer(bytes: &[u8], owner: (u32, u32)) -> Result<SlugLayer, OciError> {
        made(bytes, owner).1
    }

    fn entries_of(bytes: &[u8], owner: (u32, u32)) -> Vec<(String, u64, u64, u32, u64)> {
        let (_tmp, layer) = made(bytes, owner);
        layer_entries(&layer.unwrap())
    }

    fn layer_entries(layer: &SlugLayer) -> Vec<(String, u64, u64, u32, u64)> {
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
                    h.mtime().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn both_slug_layouts_give_the_same_layer_at_app_owned_by_the_run_user() {
        let a = layer(&slug("./"), (1000, 1001)).unwrap();
        let b = layer(&slug("./app/"), (1000, 1001)).unwrap();
        assert_eq!(a.digest, b.digest, "the same tree gives the same layer");
        assert_eq!(a.diff_id, b.diff_id);
        let again = layer(&slug("./"), (1000, 1001)).unwrap();
        assert_eq!(a.digest, again.digest, "reproducible");
        let entries = entries_of(&slug("./"), (1000, 1001));
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "app/",
                "app/Procfile",
                "app/.release",
                "app/bin/",
                "app/bin/web",
                "app/bin/link"
            ]
        );
        assert!(
            entries.iter().all(|e| e.1 == 1000 && e.2 == 1001),
            "{entries:?}"
        );
        assert!(
            entries.iter().all(|e| e.4 == 1_000_000_000),
            "mtimes clamped"
        );
        // setuid is gone, as slugrunner drops it.
        assert_eq!(
            entries.iter().find(|e| e.0 == "app/bin/web").unwrap().3,
            0o755
        );
        assert_eq!(a.process_types["web"], "./bin/web");
        assert_eq!(a.process_types["worker"], "./bin/work");
        assert_eq!(a.config_vars["LANG"], "C.UTF-8");
        // Another owner is another layer.
        assert_ne!(layer(&slug("./"), (1000, 1000)).unwrap().digest, a.digest);
    }

    #[test]
    fn missing_parents_are_added_for_the_run_user() {
        let bytes = gz(&tar_of(&[("a/b/c.txt", EntryType::Regular, b"x", "")]));
        let entries = entries_of(&bytes, (7, 8));
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["app/", "app/a/", "app/a/b/", "app/a/b/c.txt"]);
        assert!(entries.iter().all(|e| e.1 == 7 && e.2 == 8));
    }

    /// Slugs that must not become a layer, each with a word of the reason
    /// it is refused for.
    fn hostile_slugs() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            (
                "escapes",
                tar_of(&[("../etc/passwd", EntryType::Regular, b"x", "")]),
            ),
            (
                "escapes",
                tar_of(&[("/etc/passwd", EntryType::Regular, b"x", "")]),
            ),
            ("FIFO", tar_of(&[("p", EntryType::Fifo, b"", "")])),
            (
                "character device",
                tar_of(&[("null", EntryType::Char, b"", "")]),
            ),
            (
                "beneath a symbolic link",
                tar_of(&[
                    ("etc", EntryType::Symlink, b"", "/etc"),
                    (
                        "etc/passwd",
                        EntryType::Regular,
                        b"root::0:0::/:/bin/sh\n",
                        "",
                    ),
                ]),
            ),
            (
                "beneath a file",
                tar_of(&[
                    ("f", EntryType::Regular, b"", ""),
                    ("f/x", EntryType::Regular, b"", ""),
                ]),
            ),
            (
                "leaves the slug",
                tar_of(&[("h", EntryType::Link, b"", "/etc/shadow")]),
            ),
            (
                "not a file earlier",
                tar_of(&[("h", EntryType::Link, b"", "later")]),
            ),
            (
                "leaves the slug",
                tar_of(&[("h", EntryType::Link, b"", "../../etc/shadow")]),
            ),
            (
                ".wh.",
                tar_of(&[("x/.wh.config", EntryType::Regular, b"", "")]),
            ),
            ("truncated", cut_after_two_blocks(b"data")),
            ("truncated", cut_after_two_blocks(&[7u8; 2000])),
            ("extension header", long_name_of_two_mib()),
            ("PAX size", pax_size_past_the_data()),
        ]
    }

    /// A one-file tar cut after its header and first data block.
    fn cut_after_two_blocks(data: &[u8]) -> Vec<u8> {
        let mut t = tar_of(&[("a", EntryType::Regular, data, "")]);
        t.truncate(1024);
        t
    }

    /// A GNU long-name entry far larger than any name.
    fn long_name_of_two_mib() -> Vec<u8> {
        let mut t = Vec::new();
        raw(
            &mut t,
            b"././@LongLink",
            EntryType::GNULongName,
            &vec![b'a'; 2 << 20],
            b"",
            0o644,
        );
        t.extend_from_slice(&[0u8; 1024]);
        t
    }

    /// A PAX header claiming a size the entry's data does not have.
    fn pax_size_past_the_data() -> Vec<u8> {
        let mut t = Vec::new();
        raw(
            &mut t,
            b"pax",
            EntryType::XHeader,
            b"12 size=999\n",
            b"",
            0o644,
        );
        raw(&mut t, b"a", EntryType::Regular, b"data", b"", 0o644);
        t.extend_from_slice(&[0u8; 1024]);
        t
    }

    #[test]
    fn hostile_slugs_are_refused_with_a_reason() {
        for (want, tar) in hostile_slugs() {
            for bytes in [gz(&tar), tar.clone()] {
                let err = layer(&bytes, (1000, 1000)).unwrap_err();
                assert!(matches!(err, OciError::BadSlug(_)), "{want}: {err:?}");
                assert!(err.to_string().contains(want), "{want}: {err}");
            }
        }
    }

    /// Issue 26: the layer read a corrupt mode as 0644 where unpacking
    /// refused it; with one tar reader both refuse it, in the same words.
    #[test]
    fn a_corrupt_mode_fails_the_layer_as_it_fails_unpacking() {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..5].copy_from_slice(b"a.txt");
        h.set_entry_type(EntryType::Regular);
        h.set_size(4);
        h.as_old_mut().mode = *b"9z9z9z9\0";
        h.set_cksum();
        let mut tar = h.as_bytes().to_vec();
        tar.extend_from_slice(b"data");
        tar.resize(512 * 2, 0);
        tar.extend_from_slice(&[0u8; 1024]);
        let dest = tempfile::tempdir().unwrap();
        let unpacked = archive::unpack(
            io::Cursor::new(tar.clone()),
            dest.path(),
            &archive::UnpackOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(unpacked, ArchiveError::Corrupt(_)), "{unpacked:?}");
        assert!(unpacked.to_string().contains("mode"), "{unpacked}");
        for bytes in [gz(&tar), tar] {
            let err = layer(&bytes, (1000, 1000)).unwrap_err();
            assert!(matches!(err, OciError::BadSlug(_)), "{err:?}");
            assert_eq!(err.to_string(), format!("the slug: {unpacked}"));
        }
    }

    #[test]
    fn a_link_named_like_a_parent_later_replaced_by_a_directory_is_fine() {
        let bytes = gz(&tar_of(&[
            ("x", EntryType::Symlink, b"", "/tmp"),
            ("x/", EntryType::Directory, b"", ""),
            ("x/y", EntryType::Regular, b"ok", ""),
            ("h", EntryType::Link, b"", "x/y"),
        ]));
        let entries = entries_of(&bytes, (1, 1));
        assert_eq!(entries.len(), 5);
    }
}
