//! Where images are read from ([`Source`]) and written to ([`Target`]),
//! whatever the transport (registry, layout directory, archive), and how a
//! blob gets from one to the other ([`ensure_blob`]): not at all when the
//! target has it; by a cross-repository mount when both are repositories
//! of one registry; else streamed through, its digest and size checked on
//! the way, never held whole in memory.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use sha2::{Digest as _, Sha256};

use super::layout::{find_tag, write_archive, ArchiveReader, LayoutDir};
use super::registry::{carried, pull_scope, push_scope, sha256_digest, Mount, Registry};
use super::OciError;

/// Largest image config accepted.
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// A blob whose bytes are not what its descriptor says.
#[derive(Debug, thiserror::Error)]
#[error("blob {digest}: {reason}")]
pub struct BlobMismatch {
    pub digest: String,
    pub reason: String,
}

/// Checks a blob's size and digest while it is read: the read that
/// completes its size fails if the digest is wrong (an HTTP client that
/// sends exactly `Content-Length` bytes never reads on to the end), and
/// so does the one that sees the end too early or too late.
pub struct Verify<'a> {
    inner: &'a mut dyn Read,
    hasher: Sha256,
    expected: String,
    size: u64,
    seen: u64,
}

impl std::fmt::Debug for Verify<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verify")
            .field("expected", &self.expected)
            .field("size", &self.size)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl<'a> Verify<'a> {
    pub fn new(inner: &'a mut dyn Read, digest: &str, size: u64) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            expected: digest.to_string(),
            size,
            seen: 0,
        }
    }

    fn mismatch(&self, reason: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            BlobMismatch {
                digest: self.expected.clone(),
                reason,
            },
        )
    }
}

impl Read for Verify<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            if self.seen != self.size {
                return Err(self.mismatch(format!("{} bytes instead of {}", self.seen, self.size)));
            }
            let got = format!("sha256:{:x}", self.hasher.clone().finalize());
            if got != self.expected {
                return Err(self.mismatch(format!("the content has digest {got}")));
            }
            return Ok(0);
        }
        self.seen += n as u64;
        if self.seen > self.size {
            return Err(self.mismatch(format!("more than {} bytes", self.size)));
        }
        self.hasher.update(&buf[..n]);
        if self.seen == self.size {
            let got = format!("sha256:{:x}", self.hasher.clone().finalize());
            if got != self.expected {
                return Err(self.mismatch(format!("the content has digest {got}")));
            }
        }
        Ok(n)
    }
}

/// Map an I/O error of a copy: the build stopping, a wrong blob, or I/O.
pub fn copy_error(e: io::Error, context: String) -> OciError {
    let e = match carried(e) {
        Ok(ours) => return ours,
        Err(e) => e,
    };
    if let Some(slug_shared::transfer::Cut::Stopped(stop)) = slug_shared::transfer::Cut::of(&e) {
        return OciError::Stopped(stop);
    }
    if let Some(m) = e.get_ref().and_then(|r| r.downcast_ref::<BlobMismatch>()) {
        return OciError::BadImage(m.to_string());
    }
    OciError::Io { context, source: e }
}

/// An image to read.
#[derive(Debug)]
pub enum Source {
    Registry {
        registry: Arc<Registry>,
        repo: String,
        /// Tag or digest.
        reference: String,
    },
    Layout {
        layout: LayoutDir,
        tag: Option<String>,
    },
    Archive {
        archive: ArchiveReader,
        tag: Option<String>,
    },
}

/// A resolved image: one platform's manifest and its config.
#[derive(Debug, Clone)]
pub struct Image {
    /// Digest of the manifest (not of an index above it).
    pub digest: String,
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
}

/// The GOARCH name of this machine.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

impl Source {
    /// The top-level manifest (or index): bytes, media type, digest.
    fn top(&self, what: &str, shown: &str) -> Result<(Vec<u8>, String, String), OciError> {
        match self {
            Source::Registry {
                registry,
                repo,
                reference,
            } => registry.get_manifest(repo, reference, what),
            Source::Layout { layout, tag } => {
                let desc = find_tag(&layout.index()?, tag.as_deref(), what, shown)?;
                let bytes = self.small_blob(&desc, super::registry::MAX_MANIFEST_BYTES)?;
                Ok((
                    bytes,
                    desc.media_type().to_string(),
                    desc.digest().to_string(),
                ))
            }
            Source::Archive { archive, tag } => {
                let desc = find_tag(&archive.index()?, tag.as_deref(), what, shown)?;
                let bytes = self.small_blob(&desc, super::registry::MAX_MANIFEST_BYTES)?;
                Ok((
                    bytes,
                    desc.media_type().to_string(),
                    desc.digest().to_string(),
                ))
            }
        }
    }

    /// A manifest named by digest (an index entry).
    fn by_digest(&self, desc: &Descriptor, what: &str) -> Result<Vec<u8>, OciError> {
        match self {
            Source::Registry { registry, repo, .. } => {
                Ok(registry.get_manifest(repo, desc.digest().as_ref(), what)?.0)
            }
            _ => self.small_blob(desc, super::registry::MAX_MANIFEST_BYTES),
        }
    }

    /// Stream a blob (unverified: wrap it in [`Verify`]).
    pub fn blob(&self, digest: &str) -> Result<Box<dyn Read + Send>, OciError> {
        match self {
            Source::Registry { registry, repo, .. } => registry.get_blob(repo, digest),
            Source::Layout { layout, .. } => Ok(Box::new(io::BufReader::with_capacity(
                1 << 20,
                layout.open_blob(digest)?,
            ))),
            Source::Archive { archive, .. } => Ok(Box::new(io::BufReader::with_capacity(
                1 << 20,
                archive.open_blob(digest)?,
            ))),
        }
    }

    /// A small blob, whole and verified.
    pub fn small_blob(&self, desc: &Descriptor, limit: u64) -> Result<Vec<u8>, OciError> {
        let digest = desc.digest().to_string();
        if desc.size() > limit {
            return Err(OciError::BadImage(format!(
                "{digest} is {} bytes, more than the {limit} allowed",
                desc.size()
            )));
        }
        let mut reader = self.blob(&digest)?;
        let mut verify = Verify::new(&mut reader, &digest, desc.size());
        let mut bytes = Vec::with_capacity(desc.size() as usize);
        verify
            .read_to_end(&mut bytes)
            .map_err(|e| copy_error(e, format!("reading {digest}")))?;
        Ok(bytes)
    }

    /// Resolve to one image for this machine's platform (linux and the
    /// host's architecture when the reference names an index).
    pub fn image(&self, what: &str, shown: &str) -> Result<Image, OciError> {
        let (mut bytes, mut media_type, mut digest) = self.top(what, shown)?;
        let doc: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|_| OciError::BadImage(format!("{what} {shown}: the manifest is not JSON")))?;
        if doc.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
            return Err(OciError::BadImage(format!(
                "{what} {shown}: Docker schema 1 manifests are not supported; push the image again with a current tool"
            )));
        }
        let is_index = media_type == MediaType::ImageIndex.to_string()
            || media_type == DOCKER_MANIFEST_LIST
            || doc.get("manifests").is_some();
        if is_index {
            let index: ImageIndex = serde_json::from_slice(&bytes)
                .map_err(|e| OciError::BadImage(format!("{what} {shown}: index: {e}")))?;
            let arch = host_arch();
            let chosen = index
                .manifests()
                .iter()
                .find(|d| {
                    d.platform().as_ref().is_some_and(|p| {
                        p.os().to_string() == "linux" && p.architecture().to_string() == arch
                    })
                })
                .or_else(|| (index.manifests().len() == 1).then(|| &index.manifests()[0]))
                .cloned()
                .ok_or_else(|| {
                    OciError::BadImage(format!("{what} {shown} has no image for linux/{arch}"))
                })?;
            bytes = self.by_digest(&chosen, what)?;
            media_type = chosen.media_type().to_string();
            digest = chosen.digest().to_string();
            if sha256_digest(&bytes) != digest {
                return Err(OciError::BadImage(format!(
                    "{what} {shown}: manifest {digest} does not match its digest"
                )));
            }
        }
        let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| {
            OciError::BadImage(format!("{what} {shown}: manifest ({media_type}): {e}"))
        })?;
        let config_bytes = self.small_blob(manifest.config(), MAX_CONFIG_BYTES)?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| OciError::BadImage(format!("{what} {shown}: config: {e}")))?;
        let diff_ids = config.rootfs().diff_ids().len();
        if diff_ids != manifest.layers().len() {
            return Err(OciError::BadImage(format!(
                "{what} {shown}: {} layers but {diff_ids} diff_ids in its config",
                manifest.layers().len()
            )));
        }
        Ok(Image {
            digest,
            manifest,
            config,
        })
    }
}

/// Where an image is written.
#[derive(Debug)]
pub enum Target {
    Registry {
        registry: Arc<Registry>,
        repo: String,
        tag: String,
    },
    Layout {
        layout: LayoutDir,
        tag: String,
    },
    /// Built as a layout in a private staging directory, then written as
    /// a tar over `file` at [`Target::finish`].
    Archive {
        staging: LayoutDir,
        _dir: tempfile::TempDir,
        file: PathBuf,
        tag: String,
    },
}

/// How a blob got to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    /// It was there already.
    Present,
    /// Linked from another repository of the same registry.
    Mounted,
    /// Its bytes went through us.
    Copied(u64),
}

impl Target {
    pub fn has_blob(&self, digest: &str) -> Result<bool, OciError> {
        match self {
            Target::Registry { registry, repo, .. } => {
                registry.has_blob(repo, digest, &[push_scope(repo)])
            }
            Target::Layout { layout, .. } => layout.has_blob(digest),
            Target::Archive { staging, .. } => staging.has_blob(digest),
        }
    }

    /// Write a blob from `reader`, checked against `digest` and `size`.
    pub fn put_blob(
        &self,
        digest: &str,
        size: u64,
        reader: &mut dyn Read,
        session: Option<String>,
    ) -> Result<(), OciError> {
        match self {
            Target::Registry { registry, repo, .. } => {
                let mut verify = Verify::new(reader, digest, size);
                registry.upload_blob(repo, digest, size, &mut verify, session)
            }
            Target::Layout { layout, .. } => layout.put_blob(digest, size, reader),
            Target::Archive { staging, .. } => staging.put_blob(digest, size, reader),
        }
    }

    /// Drop an upload session that will not be used (a registry's).
    pub fn abandon(&self, session: Option<String>) {
        if let (Target::Registry { registry, .. }, Some(session)) = (self, session) {
            registry.cancel_upload(&session);
        }
    }

    /// Store the manifest and point the tag at it: the last step.
    pub fn put_manifest(&self, bytes: &[u8], digest: &str) -> Result<(), OciError> {
        let media_type = MediaType::ImageManifest.to_string();
        let desc = || -> Result<Descriptor, OciError> {
            Ok(Descriptor::new(
                MediaType::ImageManifest,
                bytes.len() as u64,
                digest
                    .parse::<oci_spec::image::Digest>()
                    .map_err(|e| OciError::BadImage(e.to_string()))?,
            ))
        };
        match self {
            Target::Registry {
                registry,
                repo,
                tag,
            } => registry.put_manifest(repo, tag, bytes, &media_type),
            Target::Layout { layout, tag }
            | Target::Archive {
                staging: layout,
                tag,
                ..
            } => {
                layout.put_blob(digest, bytes.len() as u64, &mut &bytes[..])?;
                layout.set_tag(tag, &desc()?)
            }
        }
    }

    /// For an archive: write the tar over the destination file.
    pub fn finish(self, mtime: u64) -> Result<(), OciError> {
        match self {
            Target::Archive { staging, file, .. } => write_archive(&staging, &file, mtime),
            _ => Ok(()),
        }
    }

    /// The scopes a registry token needs to write here.
    pub fn scopes(&self) -> Vec<String> {
        match self {
            Target::Registry { repo, .. } => vec![push_scope(repo)],
            _ => Vec::new(),
        }
    }
}

impl Source {
    pub fn scopes(&self) -> Vec<String> {
        match self {
            Source::Registry { repo, .. } => vec![pull_scope(repo)],
            _ => Vec::new(),
        }
    }
}

/// Make sure `target` has the blob `desc`, taking it from `source` if it
/// must: present, mounted, or streamed through; one larger than
/// `max_bytes` is refused before any of it moves.
pub fn ensure_blob(
    target: &Target,
    desc: &Descriptor,
    source: &Source,
    max_bytes: u64,
) -> Result<Moved, OciError> {
    let digest = desc.digest().to_string();
    if target.has_blob(&digest)? {
        return Ok(Moved::Present);
    }
    let mut session = None;
    if let (
        Target::Registry {
            registry: to,
            repo: to_repo,
            ..
        },
        Source::Registry {
            registry: from,
            repo: from_repo,
            ..
        },
    ) = (target, source)
    {
        if to.host() == from.host() && to_repo != from_repo {
            match to.mount_blob(to_repo, &digest, from_repo)? {
                Mount::Mounted => return Ok(Moved::Mounted),
                Mount::NotMounted(location) => session = location,
            }
        }
    }
    if is_non_distributable(desc) {
        // Foreign layers are fetched by runtimes from their URLs.
        return Ok(Moved::Present);
    }
    if desc.size() > max_bytes {
        target.abandon(session);
        return Err(OciError::TooLarge {
            what: format!("layer {digest}"),
            size: Some(desc.size()),
            max: max_bytes,
        });
    }
    let mut reader = match source.blob(&digest) {
        Ok(reader) => reader,
        Err(e) => {
            target.abandon(session);
            return Err(e);
        }
    };
    target.put_blob(&digest, desc.size(), &mut reader, session)?;
    Ok(Moved::Copied(desc.size()))
}

fn is_non_distributable(desc: &Descriptor) -> bool {
    let mt = desc.media_type().to_string();
    mt.contains("nondistributable") || mt.contains("foreign")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_catches_wrong_digests_and_sizes() {
        let data = b"layer bytes";
        let good = sha256_digest(data);
        let mut src = &data[..];
        let mut ok = Verify::new(&mut src, &good, data.len() as u64);
        let mut out = Vec::new();
        ok.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);

        for (digest, size) in [
            (sha256_digest(b"other"), data.len() as u64),
            (good.clone(), data.len() as u64 + 1),
            (good.clone(), 3),
        ] {
            let mut src = &data[..];
            let mut bad = Verify::new(&mut src, &digest, size);
            let err = bad.read_to_end(&mut Vec::new()).unwrap_err();
            assert!(matches!(
                copy_error(err, String::new()),
                OciError::BadImage(_)
            ));
        }
    }

    /// An upload sends exactly the blob's size and never reads on to the
    /// end: the wrong digest must fail the read that completes the size.
    #[test]
    fn a_wrong_digest_fails_before_the_end_is_read() {
        let data = b"layer bytes";
        let mut src = &data[..];
        let mut verify = Verify::new(&mut src, &sha256_digest(b"other"), data.len() as u64);
        let mut exactly = (&mut verify).take(data.len() as u64);
        let err = exactly.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(matches!(
            copy_error(err, String::new()),
            OciError::BadImage(_)
        ));
    }
}
