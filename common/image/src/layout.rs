//! OCI image layouts on disk: a directory (`oci:DIR`) and a tar of one
//! (`oci-archive:FILE`, what `podman load` and `skopeo copy oci-archive:`
//! read).
//!
//! A layout is `oci-layout`, `index.json` and `blobs/sha256/<hex>`; a tag
//! is the `org.opencontainers.image.ref.name` annotation of an entry of
//! `index.json`. Blobs are written to a temporary file, checked against
//! their digest and size, then renamed into place; `index.json` is
//! replaced atomically, last, so a failed write never moves a tag. An
//! archive is read in place (its entries are indexed, nothing is
//! unpacked) and written as a new file renamed over the old one at the end.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, MediaType};
use sha2::{Digest as _, Sha256};

use super::{canonical_json, OciError};

const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// Largest `index.json` read.
const MAX_INDEX_BYTES: u64 = 4 << 20;

fn io_err(context: String) -> impl FnOnce(io::Error) -> OciError {
    move |source| OciError::Io { context, source }
}

fn hex_of(digest: &str) -> Result<&str, OciError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(hex),
        _ => Err(OciError::BadImage(format!(
            "unsupported or malformed digest {digest:?}"
        ))),
    }
}

/// The descriptor tagged `tag` in `index` (no tag: the only entry, or `latest`).
pub fn find_tag(
    index: &ImageIndex,
    tag: Option<&str>,
    what: &str,
    shown: &str,
) -> Result<Descriptor, OciError> {
    let name_of = |d: &Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_REF_NAME))
            .cloned()
    };
    let manifests = index.manifests();
    let found = match tag {
        Some(tag) => manifests
            .iter()
            .find(|d| name_of(d).as_deref() == Some(tag)),
        None if manifests.len() == 1 => manifests.first(),
        None => manifests
            .iter()
            .find(|d| name_of(d).as_deref() == Some(super::reference::DEFAULT_TAG)),
    };
    found.cloned().ok_or_else(|| OciError::NotFound {
        what: what.to_string(),
        reference: shown.to_string(),
    })
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct LayoutDir {
    pub dir: PathBuf,
}

impl LayoutDir {
    /// An existing layout (for reading).
    pub fn open(dir: &Path, what: &str, shown: &str) -> Result<Self, OciError> {
        if !dir.join("index.json").is_file() {
            return Err(OciError::NotFound {
                what: what.to_string(),
                reference: format!("{shown} (no index.json in {})", dir.display()),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// A layout to write to: created if missing.
    pub fn create(dir: &Path) -> Result<Self, OciError> {
        let ctx = || format!("creating the image layout {}", dir.display());
        std::fs::create_dir_all(dir.join("blobs/sha256")).map_err(io_err(ctx()))?;
        let layout = Self {
            dir: dir.to_path_buf(),
        };
        if !dir.join("oci-layout").exists() {
            layout.write_atomic("oci-layout", OCI_LAYOUT)?;
        }
        if !dir.join("index.json").exists() {
            let empty = empty_index()?;
            layout.write_atomic("index.json", &canonical_json(&empty)?)?;
        }
        Ok(layout)
    }

    pub fn index(&self) -> Result<ImageIndex, OciError> {
        let path = self.dir.join("index.json");
        let bytes = read_capped(&path, MAX_INDEX_BYTES)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| OciError::BadImage(format!("{}: {e}", path.display())))
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf, OciError> {
        Ok(self.dir.join("blobs/sha256").join(hex_of(digest)?))
    }

    pub fn has_blob(&self, digest: &str) -> Result<bool, OciError> {
        Ok(self.blob_path(digest)?.is_file())
    }

    pub fn open_blob(&self, digest: &str) -> Result<File, OciError> {
        let path = self.blob_path(digest)?;
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                OciError::BadImage(format!(
                    "blob {digest} is missing from the layout {}",
                    self.dir.display()
                ))
            } else {
                OciError::Io {
                    context: format!("reading {}", path.display()),
                    source: e,
                }
            }
        })
    }

    /// Copy a blob in, checking its digest and size on the way.
    pub fn put_blob(&self, digest: &str, size: u64, reader: &mut dyn Read) -> Result<(), OciError> {
        let dest = self.blob_path(digest)?;
        let dir = self.dir.join("blobs/sha256");
        let ctx = || format!("writing blob {digest} to {}", dir.display());
        let mut tmp = tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(&dir)
            .map_err(io_err(ctx()))?;
        let mut verify = super::store::Verify::new(reader, digest, size);
        io::copy(
            &mut verify,
            &mut io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut()),
        )
        .map_err(|e| super::store::copy_error(e, ctx()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(io_err(ctx()))?;
        tmp.persist(&dest).map_err(|e| OciError::Io {
            context: ctx(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Point `tag` at `desc` (replacing whatever it named): `index.json`
    /// is replaced atomically.
    pub fn set_tag(&self, tag: &str, desc: &Descriptor) -> Result<(), OciError> {
        let mut index = self.index()?;
        let mut manifests: Vec<Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| {
                d.annotations()
                    .as_ref()
                    .and_then(|a| a.get(ANNOTATION_REF_NAME))
                    .map(String::as_str)
                    != Some(tag)
            })
            .cloned()
            .collect();
        let mut tagged = desc.clone();
        let mut annotations = tagged.annotations().clone().unwrap_or_default();
        annotations.insert(ANNOTATION_REF_NAME.to_string(), tag.to_string());
        tagged.set_annotations(Some(annotations));
        manifests.push(tagged);
        index.set_manifests(manifests);
        self.write_atomic("index.json", &canonical_json(&index)?)
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), OciError> {
        let ctx = || format!("writing {}", self.dir.join(name).display());
        let mut tmp = tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(&self.dir)
            .map_err(io_err(ctx()))?;
        tmp.write_all(bytes).map_err(io_err(ctx()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(io_err(ctx()))?;
        tmp.persist(self.dir.join(name)).map_err(|e| OciError::Io {
            context: ctx(),
            source: e.error,
        })?;
        Ok(())
    }
}

fn empty_index() -> Result<ImageIndex, OciError> {
    oci_spec::image::ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(Vec::<Descriptor>::new())
        .build()
        .map_err(|e| OciError::BadImage(e.to_string()))
}

fn read_capped(path: &Path, limit: u64) -> Result<Vec<u8>, OciError> {
    let file = File::open(path).map_err(io_err(format!("reading {}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(format!("reading {}", path.display())))?;
    if bytes.len() as u64 > limit {
        return Err(OciError::BadImage(format!(
            "{} is larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// An `oci-archive:` file, read in place: its entries are indexed by
/// name (offset and size of the data), nothing is unpacked.
#[derive(Debug)]
pub struct ArchiveReader {
    path: PathBuf,
    entries: BTreeMap<String, (u64, u64)>,
}

impl ArchiveReader {
    pub fn open(path: &Path, what: &str, shown: &str) -> Result<Self, OciError> {
        let file = File::open(path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                OciError::NotFound {
                    what: what.to_string(),
                    reference: shown.to_string(),
                }
            } else {
                OciError::Io {
                    context: format!("reading {}", path.display()),
                    source: e,
                }
            }
        })?;
        let bad = |e: io::Error| OciError::BadImage(format!("{}: not a tar: {e}", path.display()));
        let mut archive = tar::Archive::new(io::BufReader::new(file));
        let mut entries = BTreeMap::new();
        for entry in archive.entries().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry.path().map_err(bad)?.to_string_lossy().to_string();
            let name = name.trim_start_matches("./").to_string();
            entries.insert(name, (entry.raw_file_position(), entry.size()));
        }
        if !entries.contains_key("index.json") {
            return Err(OciError::BadImage(format!(
                "{}: not an OCI archive (no index.json)",
                path.display()
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            entries,
        })
    }

    fn open_entry(&self, name: &str) -> Result<Option<io::Take<File>>, OciError> {
        let Some(&(offset, size)) = self.entries.get(name) else {
            return Ok(None);
        };
        let ctx = || format!("reading {}", self.path.display());
        let mut file = File::open(&self.path).map_err(io_err(ctx()))?;
        file.seek(SeekFrom::Start(offset)).map_err(io_err(ctx()))?;
        Ok(Some(file.take(size)))
    }

    pub fn index(&self) -> Result<ImageIndex, OciError> {
        let mut bytes = Vec::new();
        let (_, size) = self.entries["index.json"];
        if size > MAX_INDEX_BYTES {
            return Err(OciError::BadImage("index.json is too large".into()));
        }
        self.open_entry("index.json")?
            .expect("index.json was found when opening")
            .read_to_end(&mut bytes)
            .map_err(io_err(format!("reading {}", self.path.display())))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| OciError::BadImage(format!("{}: index.json: {e}", self.path.display())))
    }

    pub fn open_blob(&self, digest: &str) -> Result<io::Take<File>, OciError> {
        let name = format!("blobs/sha256/{}", hex_of(digest)?);
        self.open_entry(&name)?.ok_or_else(|| {
            OciError::BadImage(format!(
                "blob {digest} is missing from {}",
                self.path.display()
            ))
        })
    }
}

/// Write a layout directory as a tar to `dest`, atomically (a temporary
/// file next to it, renamed at the end). Entries in a fixed order with
/// fixed metadata, so the same layout gives the same bytes.
pub fn write_archive(layout: &LayoutDir, dest: &Path, mtime: u64) -> Result<(), OciError> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let ctx = || format!("writing {}", dest.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(".oci-archive-")
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(io_err(ctx()))?;
    write_layout_tar(layout, tmp.as_file_mut(), mtime).map_err(io_err(ctx()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
        .map_err(io_err(ctx()))?;
    tmp.persist(dest).map_err(|e| OciError::Io {
        context: ctx(),
        source: e.error,
    })?;
    Ok(())
}

/// The layout as a tar into `out`, synced: its two blob directories, the
/// blobs in name order, then `oci-layout` and `index.json`.
fn write_layout_tar(layout: &LayoutDir, out: &mut File, mtime: u64) -> io::Result<()> {
    let mut builder = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, out));
    let header = |size: u64, kind: tar::EntryType, mode: u32| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    for dir_name in ["blobs/", "blobs/sha256/"] {
        builder.append_data(
            &mut header(0, tar::EntryType::Directory, 0o755),
            dir_name,
            io::empty(),
        )?;
    }
    let blobs = blob_paths(&layout.dir.join("blobs/sha256"))?;
    let names = blobs.iter().map(|path| {
        let name = format!(
            "blobs/sha256/{}",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
        (path.clone(), name)
    });
    let meta = ["oci-layout", "index.json"].map(|name| (layout.dir.join(name), name.to_string()));
    for (path, name) in names.chain(meta) {
        let file = File::open(&path)?;
        let size = file.metadata()?.len();
        builder.append_data(
            &mut header(size, tar::EntryType::Regular, 0o644),
            name,
            file,
        )?;
    }
    let out = builder.into_inner()?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// The blobs of a layout's `blobs/sha256`, in name order; temporary files
/// (dot files) left out.
fn blob_paths(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut blobs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.'))
        })
        .collect();
    blobs.sort();
    Ok(blobs)
}

/// A digest computed while copying, compared at the end.
pub fn sha256_hex_of_reader(reader: &mut dyn Read) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((format!("{:x}", hasher.finalize()), total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::sha256_digest;

    #[test]
    fn a_layout_round_trips_through_an_archive() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = LayoutDir::create(&tmp.path().join("layout")).unwrap();
        let blob = b"{\"hello\":1}";
        let digest = sha256_digest(blob);
        layout
            .put_blob(&digest, blob.len() as u64, &mut &blob[..])
            .unwrap();
        // A blob whose bytes do not match its digest is refused, and leaves nothing.
        let wrong = sha256_digest(b"other");
        assert!(layout.put_blob(&wrong, 11, &mut &blob[..]).is_err());
        assert!(!layout.has_blob(&wrong).unwrap());
        let desc = Descriptor::new(
            MediaType::ImageManifest,
            blob.len() as u64,
            digest.parse::<oci_spec::image::Digest>().unwrap(),
        );
        layout.set_tag("v1", &desc).unwrap();
        layout.set_tag("v1", &desc).unwrap();
        layout.set_tag("v2", &desc).unwrap();
        assert_eq!(layout.index().unwrap().manifests().len(), 2);

        let file = tmp.path().join("image.tar");
        write_archive(&layout, &file, 0).unwrap();
        let first = std::fs::read(&file).unwrap();
        write_archive(&layout, &file, 0).unwrap();
        assert_eq!(
            first,
            std::fs::read(&file).unwrap(),
            "archives are reproducible"
        );

        let archive = ArchiveReader::open(&file, "image", "x").unwrap();
        let index = archive.index().unwrap();
        let found = find_tag(&index, Some("v2"), "image", "x").unwrap();
        assert_eq!(found.digest().to_string(), digest);
        let mut content = Vec::new();
        archive
            .open_blob(&digest)
            .unwrap()
            .read_to_end(&mut content)
            .unwrap();
        assert_eq!(content, blob);
        assert!(matches!(
            find_tag(&index, Some("nope"), "image", "x"),
            Err(OciError::NotFound { .. })
        ));
    }
}
