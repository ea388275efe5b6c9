//! Images (OCI) of slugs, daemonless: a slug on a run image becomes an
//! image any runtime runs, published to a registry, an OCI layout or an
//! OCI archive, without a container engine; and an app image moves to a
//! newer run image without a rebuild ([`rebase`]).
//!
//! The image is the run image's layers plus one layer holding the slug at
//! `/app`, owned by the run image's user ([`layer`]), and a config derived
//! from the run image's ([`config`]). The same slug, run image and epoch
//! give the same digest. Base layers already in the target are neither
//! downloaded nor uploaded (an existence check, or a cross-repository
//! mount within one registry); from elsewhere they are streamed through
//! ([`store`]). Only the slug layer, the config and the manifest are new,
//! and the manifest, which moves the tag, is written last: a failure
//! leaves the tag where it was.
//!
//! The parts: [`reference`] (names), [`auth`] (credentials from auth
//! files), [`registry`] (the distribution protocol on `ureq`, with
//! oci-spec's types), [`layout`] (`oci:` directories and `oci-archive:`
//! files), [`store`] (reading and writing images whatever the transport),
//! [`user`] (the run image's user as numbers), [`layer`], [`config`].

pub mod auth;
pub mod config;
pub mod layer;
pub mod layout;
pub mod reference;
pub mod registry;
pub mod store;
pub mod user;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::image::{Descriptor, MediaType};

pub use reference::{BadReference, ImageRef};

use auth::{AuthFileError, Credentials};
use registry::{Endpoint, Registry};
use slug_shared::archive::Limits;
use slug_shared::cancel::{Cancel, Stop};
use slug_shared::exit::Exit;
use slug_shared::log;
use store::{ensure_blob, Image, Moved, Source, Target};

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(transparent)]
    Reference(#[from] BadReference),
    #[error(transparent)]
    AuthFile(#[from] AuthFileError),
    #[error("registry {registry} {reason}")]
    Auth { registry: String, reason: String },
    #[error("registry {registry} cannot be reached: {reason}")]
    Unreachable { registry: String, reason: String },
    #[error("{what} {reference} does not exist")]
    NotFound { what: String, reference: String },
    #[error("registry {registry}: {reason}")]
    Registry { registry: String, reason: String },
    #[error("{0}")]
    BadImage(String),
    /// A blob over `--max-layer-bytes`, said (`size`) or seen while it
    /// streamed.
    #[error("{what} {}", too_large(*size, *max))]
    TooLarge {
        what: String,
        size: Option<u64>,
        max: u64,
    },
    #[error("{0}")]
    NotOurs(String),
    #[error("the slug: {0}")]
    BadSlug(String),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Stopped(Stop),
}

impl OciError {
    /// The documented exit code for this failure.
    pub fn exit(&self) -> Exit {
        match self {
            OciError::Reference(_) => Exit::Usage,
            OciError::AuthFile(_) | OciError::Auth { .. } => Exit::RegistryAuth,
            OciError::Unreachable { .. } => Exit::RegistryUnreachable,
            OciError::NotFound { .. } => Exit::ImageNotFound,
            OciError::Registry { .. }
            | OciError::BadImage(_)
            | OciError::NotOurs(_)
            | OciError::Io { .. } => Exit::ImageFailed,
            OciError::BadSlug(_) => Exit::BadInput,
            OciError::TooLarge { .. } => Exit::LayerTooLarge,
            OciError::Stopped(stop) => stop.exit(),
        }
    }
}

fn too_large(size: Option<u64>, max: u64) -> String {
    let limit = format!("the --max-layer-bytes limit of {max} bytes");
    match size {
        Some(size) => format!("is {size} bytes ({}), over {limit}", log::human_size(size)),
        None => format!("sent more than {limit}"),
    }
}

/// A failure once the build's time limit passed (or a signal came) is
/// that stop, whatever part noticed it first: a read cut by a timeout at
/// the deadline is the deadline, not a broken registry or a bad image.
fn stop_wins(e: OciError, cancel: &Cancel) -> OciError {
    match (cancel.stopped(), &e) {
        (_, OciError::Stopped(_)) | (None, _) => e,
        (Some(stop), _) => {
            tracing::debug!("after the stop: {e}");
            OciError::Stopped(stop)
        }
    }
}

/// JSON with keys sorted at every level, no whitespace: the bytes (and so
/// the digest) of a document depend only on its content.
pub fn canonical_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, OciError> {
    let value = serde_json::to_value(value).map_err(|e| OciError::BadImage(e.to_string()))?;
    serde_json::to_vec(&value).map_err(|e| OciError::BadImage(e.to_string()))
}

/// gzip level of the slug layer: 1, as go-containerregistry (under pack,
/// kaniko, ko, crane) chooses for layers. On the stdlib corpus it takes
/// 2.4x less CPU than level 6 for a layer 30% larger; the layer is made at
/// every publish, pulled once per node.
pub const DEFAULT_LAYER_LEVEL: u32 = 1;

/// How to publish, checked before any work starts.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The base: normally the image `Dockerfile.runner` builds.
    pub run_image: ImageRef,
    /// `host[:port]` spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    pub credentials: Credentials,
    /// Where the compressed layer is made.
    pub work_dir: PathBuf,
    /// gzip level of the slug layer ([`DEFAULT_LAYER_LEVEL`]).
    pub compression_level: u32,
    pub limits: Limits,
    /// The largest layer or blob copied from the run image or the image to
    /// rebase (`--max-layer-bytes`).
    pub max_layer_bytes: u64,
}

/// The slug to publish and what the build knew about it.
#[derive(Debug, Clone)]
pub struct SlugInput {
    pub path: PathBuf,
    pub source_version: Option<String>,
    /// Buildpacks that built it (shown in a label, credentials removed).
    pub buildpacks: Vec<String>,
    /// `created` and the clamp of the layer's mtimes.
    pub epoch: u64,
}

/// What was published.
#[derive(Debug, Clone)]
pub struct Published {
    /// The target as given (`host/repo:tag`, `oci:dir:tag`, ...).
    pub reference: String,
    /// `name@digest` for a registry, else the reference and digest.
    pub pullable: String,
    pub digest: String,
    pub slug_layer: String,
    pub run_image_digest: String,
}

/// Registries by host, shared by the source and the target (one token can
/// then cover both repositories, and a mount is possible).
struct Registries<'a> {
    by_host: HashMap<String, (Arc<Registry>, Vec<String>)>,
    settings: &'a Settings,
    cancel: &'a Arc<Cancel>,
}

impl<'a> Registries<'a> {
    fn new(settings: &'a Settings, cancel: &'a Arc<Cancel>) -> Self {
        Self {
            by_host: HashMap::new(),
            settings,
            cancel,
        }
    }

    fn get(&mut self, r: &oci_spec::distribution::Reference, scope: String) -> Arc<Registry> {
        let host = r.registry().to_string();
        let s = self.settings;
        let cancel = self.cancel;
        let entry = self.by_host.entry(host.clone()).or_insert_with(|| {
            let api_host = r.resolve_registry().to_string();
            let insecure = s
                .insecure_registries
                .iter()
                .any(|h| h == &host || h == &api_host);
            let registry = Registry::new(
                Endpoint {
                    host: host.clone(),
                    api_host,
                    insecure,
                },
                s.credentials.find(&host, r.repository()).cloned(),
                s.credentials.helper_for(&host).map(Path::to_path_buf),
                s.credentials.searched.clone(),
                s.insecure_registries.clone(),
                Arc::clone(cancel),
                s.max_layer_bytes,
            );
            (Arc::new(registry), Vec::new())
        });
        entry.1.push(scope);
        Arc::clone(&entry.0)
    }

    /// Reach every registry and check its credentials.
    fn connect(&self) -> Result<(), OciError> {
        let mut hosts: Vec<_> = self.by_host.values().collect();
        hosts.sort_by(|a, b| a.0.host().cmp(b.0.host()));
        for (registry, scopes) in hosts {
            registry.connect(scopes)?;
        }
        Ok(())
    }
}

fn source_of(r: &ImageRef, regs: &mut Registries<'_>, what: &str) -> Result<Source, OciError> {
    Ok(match r {
        ImageRef::Registry(reference) => {
            let repo = reference.repository().to_string();
            let registry = regs.get(reference, registry::pull_scope(&repo));
            Source::Registry {
                registry,
                repo,
                reference: reference
                    .digest()
                    .or(reference.tag())
                    .unwrap_or(reference::DEFAULT_TAG)
                    .to_string(),
            }
        }
        ImageRef::Layout { dir, tag } => Source::Layout {
            layout: layout::LayoutDir::open(dir, what, &r.to_string())?,
            tag: tag.clone(),
        },
        ImageRef::Archive { file, tag } => Source::Archive {
            archive: layout::ArchiveReader::open(file, what, &r.to_string())?,
            tag: tag.clone(),
        },
    })
}

fn target_of(r: &ImageRef, regs: &mut Registries<'_>, work_dir: &Path) -> Result<Target, OciError> {
    r.check_writable()?;
    Ok(match r {
        ImageRef::Registry(reference) => {
            let repo = reference.repository().to_string();
            let registry = regs.get(reference, registry::push_scope(&repo));
            Target::Registry {
                registry,
                repo,
                tag: reference
                    .tag()
                    .unwrap_or(reference::DEFAULT_TAG)
                    .to_string(),
            }
        }
        ImageRef::Layout { dir, tag } => Target::Layout {
            layout: layout::LayoutDir::create(dir)?,
            tag: ImageRef::layout_tag(tag).to_string(),
        },
        ImageRef::Archive { file, tag } => {
            if file.is_dir() {
                return Err(OciError::BadImage(format!(
                    "{}: is a directory (oci-archive: names a file; oci: a directory)",
                    file.display()
                )));
            }
            let dir = tempfile::Builder::new()
                .prefix("oci-archive-")
                .tempdir_in(work_dir)
                .map_err(|source| OciError::Io {
                    context: format!("creating a staging directory in {}", work_dir.display()),
                    source,
                })?;
            Target::Archive {
                staging: layout::LayoutDir::create(dir.path())?,
                _dir: dir,
                file: file.clone(),
                tag: ImageRef::layout_tag(tag).to_string(),
            }
        }
    })
}

/// The `org.opencontainers.image.base.name` of a run image: registry
/// names only (a layout path is the operator's disk, not a name).
fn base_name(r: &ImageRef) -> Option<String> {
    match r {
        ImageRef::Registry(reference) => Some(reference.to_string()),
        _ => None,
    }
}

fn pullable(target: &ImageRef, digest: &str) -> String {
    match target {
        ImageRef::Registry(r) => format!("{}/{}@{digest}", r.registry(), r.repository()),
        other => format!("{other}@{digest}"),
    }
}

/// A buildpack spec fit for a label: no user info, no query string (a
/// token or a signature), the `#ref` kept.
fn label_safe(spec: &str) -> String {
    let (main, fragment) = match spec.split_once('#') {
        Some((m, f)) => (m, Some(f)),
        None => (spec, None),
    };
    let mut out = if main.contains("://") {
        slug_shared::http::redact_url(main)
    } else {
        main.to_string()
    };
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// A publish made ready before the build: the registries reached and the
/// credentials checked, the run image resolved (its digest is the base
/// whatever its tag does meanwhile) and its user known.
#[derive(Debug)]
pub struct Prepared {
    target_ref: ImageRef,
    target: Target,
    source: Source,
    run: Image,
    base_name: Option<String>,
    owner: (u32, u32),
    settings: Settings,
    cancel: Arc<Cancel>,
}

/// Everything of a publish that can fail before the slug exists.
pub fn prepare(
    target_ref: &ImageRef,
    settings: Settings,
    cancel: &Arc<Cancel>,
) -> Result<Prepared, OciError> {
    prepare_inner(target_ref, settings, cancel).map_err(|e| stop_wins(e, cancel))
}

fn prepare_inner(
    target_ref: &ImageRef,
    settings: Settings,
    cancel: &Arc<Cancel>,
) -> Result<Prepared, OciError> {
    let (target, source) = {
        let mut regs = Registries::new(&settings, cancel);
        let target = target_of(target_ref, &mut regs, &settings.work_dir)?;
        let source = source_of(&settings.run_image, &mut regs, "run image")?;
        regs.connect()?;
        (target, source)
    };
    let shown = settings.run_image.to_string();
    let run = source.image("run image", &shown)?;
    log::header(format!("Run image {shown} ({})", run.digest));
    let owner = user::resolve(&run, &source, &shown)?;
    check_entrypoint(&run, &shown);
    Ok(Prepared {
        target_ref: target_ref.clone(),
        target,
        source,
        base_name: base_name(&settings.run_image),
        run,
        owner,
        settings,
        cancel: Arc::clone(cancel),
    })
}

fn check_entrypoint(run: &Image, shown: &str) {
    let has = run
        .config
        .config()
        .as_ref()
        .and_then(|c| c.entrypoint().as_ref())
        .is_some_and(|e| !e.is_empty());
    if !has {
        log::warn(format!(
            "the run image {shown} has no entrypoint: the image's command `start web` needs slugrunner as its entrypoint (Dockerfile.runner's image has it)"
        ));
    }
}

impl Prepared {
    /// Make the slug layer and publish the image.
    pub fn publish(self, slug: &SlugInput) -> Result<Published, OciError> {
        let cancel = Arc::clone(&self.cancel);
        self.publish_inner(slug).map_err(|e| stop_wins(e, &cancel))
    }

    fn publish_inner(self, slug: &SlugInput) -> Result<Published, OciError> {
        log::header(format!("Publishing image {}", self.target_ref));
        let layer = layer::slug_layer(
            &slug.path,
            self.owner,
            slug.epoch,
            self.settings.compression_level,
            self.settings.limits,
            &self.settings.work_dir,
            &self.cancel,
        )?;
        self.cancel.check().map_err(OciError::Stopped)?;
        let app = config::App {
            layer: Descriptor::new(
                MediaType::ImageLayerGzip,
                layer.size,
                layer
                    .digest
                    .parse::<oci_spec::image::Digest>()
                    .map_err(|e| OciError::BadImage(e.to_string()))?,
            ),
            diff_id: layer.diff_id.clone(),
            slug_sha256: layer.slug_sha256.clone(),
            process_types: layer.process_types.clone(),
            config_vars: layer.config_vars.clone(),
            buildpacks: slug.buildpacks.iter().map(|b| label_safe(b)).collect(),
            revision: slug.source_version.clone(),
            epoch: slug.epoch,
            owner: self.owner,
        };
        let built = config::build(&self.run, self.base_name.as_deref(), &app)?;
        tracing::info!("layer made");
        let slug_moved = if self.target.has_blob(&layer.digest)? {
            Moved::Present
        } else {
            let mut file = std::fs::File::open(&layer.file).map_err(|source| OciError::Io {
                context: "reading the image layer".into(),
                source,
            })?;
            self.target
                .put_blob(&layer.digest, layer.size, &mut file, None)?;
            Moved::Copied(layer.size)
        };
        log::info(format!(
            "slug layer {} ({}, /app owned by {}:{}): {}",
            layer.digest,
            log::human_size(layer.size),
            self.owner.0,
            self.owner.1,
            match slug_moved {
                Moved::Present => "already there",
                _ => "uploaded",
            }
        ));
        tracing::info!("slug layer stored");
        write_image(
            &self.target,
            &built,
            &self.source,
            &self.cancel,
            self.settings.max_layer_bytes,
        )?;
        self.target.finish(slug.epoch)?;
        tracing::info!("image published");
        Ok(Published {
            reference: self.target_ref.to_string(),
            pullable: pullable(&self.target_ref, &built.manifest_digest),
            digest: built.manifest_digest,
            slug_layer: layer.digest,
            run_image_digest: self.run.digest,
        })
    }
}

/// Base layers, config, then the manifest (which moves the tag).
fn write_image(
    target: &Target,
    built: &config::Built,
    base: &Source,
    cancel: &Arc<Cancel>,
    max_layer_bytes: u64,
) -> Result<(), OciError> {
    let (mut present, mut mounted, mut copied, mut bytes) = (0, 0, 0, 0u64);
    for desc in &built.base_layers {
        cancel.check().map_err(OciError::Stopped)?;
        match ensure_blob(target, desc, base, max_layer_bytes)? {
            Moved::Present => present += 1,
            Moved::Mounted => mounted += 1,
            Moved::Copied(n) => {
                copied += 1;
                bytes += n;
            }
        }
    }
    log::info(format!(
        "run image layers: {present} already there, {mounted} mounted, {copied} copied ({})",
        log::human_size(bytes)
    ));
    if !target.has_blob(&built.config_digest)? {
        target.put_blob(
            &built.config_digest,
            built.config.len() as u64,
            &mut &built.config[..],
            None,
        )?;
    }
    cancel.check().map_err(OciError::Stopped)?;
    target.put_manifest(&built.manifest, &built.manifest_digest)
}

/// Put the app image `target_ref` on `settings.run_image`: same slug layer,
/// same app metadata, the new run image's layers and config. Nothing of
/// the slug is read or moved.
pub fn rebase(
    target_ref: &ImageRef,
    settings: Settings,
    cancel: &Arc<Cancel>,
) -> Result<Published, OciError> {
    rebase_inner(target_ref, settings, cancel).map_err(|e| stop_wins(e, cancel))
}

fn rebase_inner(
    target_ref: &ImageRef,
    settings: Settings,
    cancel: &Arc<Cancel>,
) -> Result<Published, OciError> {
    let shown = target_ref.to_string();
    let run_shown = settings.run_image.to_string();
    let (target, app_source, run_source) = {
        let mut regs = Registries::new(&settings, cancel);
        let app_source = source_of(target_ref, &mut regs, "image to rebase")?;
        let run_source = source_of(&settings.run_image, &mut regs, "run image")?;
        let target = target_of(target_ref, &mut regs, &settings.work_dir)?;
        regs.connect()?;
        (target, app_source, run_source)
    };
    let current = app_source.image("image to rebase", &shown)?;
    let app = config::app_of(&current, &shown)?;
    log::header(format!("Rebasing {shown}"));
    let run = run_source.image("run image", &run_shown)?;
    let owner = user::resolve(&run, &run_source, &run_shown)?;
    if owner != app.owner {
        return Err(OciError::BadImage(format!(
            "the run image {run_shown} runs as {}:{}, but /app in {shown} belongs to {}:{}: publish the slug again instead of rebasing",
            owner.0, owner.1, app.owner.0, app.owner.1
        )));
    }
    check_entrypoint(&run, &run_shown);
    let old_base = current
        .config
        .config()
        .as_ref()
        .and_then(|c| c.labels().as_ref())
        .and_then(|l| l.get(config::LABEL_BASE_DIGEST).cloned())
        .unwrap_or_default();
    log::info(format!(
        "run image {old_base} -> {run_shown} ({})",
        run.digest
    ));
    let built = config::build(&run, base_name(&settings.run_image).as_deref(), &app)?;
    // The slug layer is in the target already, except for a new archive.
    let max = settings.max_layer_bytes;
    ensure_blob(&target, &app.layer, &app_source, max)?;
    write_image(&target, &built, &run_source, cancel, max)?;
    target.finish(app.epoch)?;
    Ok(Published {
        reference: shown,
        pullable: pullable(target_ref, &built.manifest_digest),
        digest: built.manifest_digest,
        slug_layer: app.layer.digest().to_string(),
        run_image_digest: run.digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildpack_labels_lose_credentials_and_keep_refs() {
        assert_eq!(
            label_safe("https://user:token@git.example/bp.git#v1.2"),
            "https://git.example/bp.git#v1.2"
        );
        assert_eq!(
            label_safe("https://store.example/bp.tgz?X-Signature=abc"),
            "https://store.example/bp.tgz"
        );
        assert_eq!(label_safe("heroku/python"), "heroku/python");
    }

    #[test]
    fn every_failure_has_its_exit_code() {
        let codes = [
            OciError::Auth {
                registry: "r".into(),
                reason: "x".into(),
            }
            .exit(),
            OciError::Unreachable {
                registry: "r".into(),
                reason: "x".into(),
            }
            .exit(),
            OciError::NotFound {
                what: "run image".into(),
                reference: "r/x".into(),
            }
            .exit(),
            OciError::BadImage("x".into()).exit(),
            OciError::TooLarge {
                what: "blob".into(),
                size: Some(1 << 34),
                max: 1 << 32,
            }
            .exit(),
        ];
        assert_eq!(codes.map(Exit::code), [30, 31, 32, 33, 34]);
    }
}
