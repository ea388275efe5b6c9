//! The image features of slugbuilder: `--image REF` after a build, and the
//! `image` and `rebase` subcommands. The work is done by `slug_image`;
//! this module turns flags into checked settings, orders the steps (the
//! registries are reached and the run image resolved before any buildpack
//! runs; the slug is delivered only once the image is published) and
//! prints the report line.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use slug_build::report::{ImageReport, Recorder};
use slug_build::{self as build, BuildConfig, BuildError, SlugOutput};
use slug_image::{self as oci, auth::Credentials, ImageRef, OciError, Published, SlugInput};
use slug_shared::cancel::Cancel;
use slug_shared::log;

/// Where the run image is and how to reach registries: shared by the
/// build's `--image` and the subcommands.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// The run image, the base of app images: normally the image
    /// Dockerfile.runner builds. docker://HOST[:PORT]/REPO[:TAG] (or
    /// without docker://), oci:DIR[:TAG] or oci-archive:FILE[:TAG].
    #[arg(long, env = "SLUG_RUN_IMAGE", value_name = "REF")]
    pub run_image: Option<String>,

    /// Speak plain HTTP (no TLS) to this registry. Repeatable; the
    /// variable takes a comma-separated list.
    #[arg(
        long = "insecure-registry",
        env = "SLUGBUILDER_INSECURE_REGISTRIES",
        value_name = "HOST[:PORT]",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,

    /// Refuse to copy a layer or blob of the run image (or of the image to
    /// rebase) larger than this: checked against its declared size before
    /// it streams, and counted while it does.
    #[arg(
        long,
        env = "SLUGBUILDER_MAX_LAYER_BYTES",
        default_value_t = slug_shared::archive::DEFAULT_MAX_BYTES,
        value_name = "BYTES"
    )]
    pub max_layer_bytes: u64,
}

/// The build's image flags.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// After a successful build, also publish an image of the slug on
    /// --run-image to REF (a registry, oci:DIR[:TAG] or
    /// oci-archive:FILE[:TAG]). The slug still goes to stdout or -o
    /// (`-o /dev/null`: nowhere), once the image is published.
    #[arg(long, env = "SLUGBUILDER_IMAGE", value_name = "REF")]
    pub image: Option<String>,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Flags every image subcommand has.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Time limit, in seconds.
    #[arg(
        long,
        env = "SLUGBUILDER_TIMEOUT",
        default_value_t = 900,
        value_name = "SECONDS"
    )]
    pub timeout: u64,

    /// Where the image layer is made. Default: $TMPDIR.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,

    /// More diagnostics on stderr (-v, -vv). SLUG_LOG=<filter> also works.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish an image of an existing slug (from a slug store, say):
    /// the run image plus the slug at /app. Prints NAME@DIGEST on stdout.
    Image(ImageCmd),
    /// Put an app image on a newer run image (a stack update) without
    /// rebuilding: the slug layer stays, only the base layers, config and
    /// manifest change. Prints NAME@DIGEST on stdout.
    Rebase(RebaseCmd),
}

impl Command {
    pub fn verbose(&self) -> u8 {
        match self {
            Command::Image(c) => c.common.verbose,
            Command::Rebase(c) => c.common.verbose,
        }
    }
}

#[derive(Debug, Args)]
pub struct ImageCmd {
    /// The slug (a gzip or plain tar, rooted at ./ or ./app/).
    #[arg(long, value_name = "FILE")]
    slug: PathBuf,

    /// Where to publish: docker://HOST[:PORT]/REPO[:TAG] (or without
    /// docker://), oci:DIR[:TAG] or oci-archive:FILE[:TAG].
    #[arg(long, value_name = "REF")]
    tag: String,

    #[command(flatten)]
    registry: RegistryArgs,

    /// The commit the slug was built from, for the image's
    /// org.opencontainers.image.revision label.
    #[arg(long, env = "SOURCE_VERSION")]
    source_version: Option<String>,

    /// A buildpack that built the slug, for the image's
    /// io.slugbuilder.buildpacks label. Repeatable, in order.
    #[arg(long = "buildpack", value_name = "URL")]
    buildpacks: Vec<String>,

    /// The image's creation time and the clamp of its files' mtimes, as
    /// in the build. Default: 315532800 (1980-01-01).
    #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS")]
    source_date_epoch: Option<u64>,

    /// gzip level of the slug layer, 0-9. The default, 1, is what
    /// go-containerregistry (pack, kaniko, ko) uses for layers: fast to
    /// make, somewhat larger than level 6.
    #[arg(long, default_value_t = oci::DEFAULT_LAYER_LEVEL, value_parser = clap::value_parser!(u32).range(0..=9))]
    compression_level: u32,

    /// Refuse a slug that unpacks to more than this many bytes.
    #[arg(long, default_value_t = slug_shared::archive::DEFAULT_MAX_BYTES, value_name = "BYTES")]
    max_unpacked_bytes: u64,

    /// Refuse a slug with more entries than this.
    #[arg(long, default_value_t = slug_shared::archive::Limits::default().max_entries, value_name = "N")]
    max_entries: u64,

    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct RebaseCmd {
    /// The app image to rebase; the result goes to the same REF.
    #[arg(long, value_name = "REF")]
    tag: String,

    #[command(flatten)]
    registry: RegistryArgs,

    #[command(flatten)]
    common: CommonArgs,
}

/// Checked settings for `slug_image`. Credentials are read here, once,
/// before any buildpack code runs; they stay in this process's memory.
fn settings(
    registry: &RegistryArgs,
    work_dir: Option<&Path>,
    compression_level: u32,
    limits: slug_shared::archive::Limits,
) -> anyhow::Result<oci::Settings> {
    let run_image = registry.run_image.as_deref().ok_or_else(|| {
        OciError::Reference(oci::BadReference {
            input: String::new(),
            reason: "no run image: give --run-image REF (or SLUG_RUN_IMAGE)".into(),
        })
    })?;
    let run_image = ImageRef::parse(run_image).map_err(OciError::from)?;
    let credentials = Credentials::load_default().map_err(OciError::from)?;
    for warning in &credentials.warnings {
        log::warn(warning);
    }
    Ok(oci::Settings {
        run_image,
        insecure_registries: registry
            .insecure_registries
            .iter()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .collect(),
        credentials,
        work_dir: work_dir.map_or_else(std::env::temp_dir, Path::to_path_buf),
        compression_level,
        limits,
        max_layer_bytes: registry.max_layer_bytes,
    })
}

fn report(published: &Published) {
    log::header(format!(
        "Image: {}@{}",
        published.reference, published.digest
    ));
}

/// A build with `--image`: everything that can fail before the build does
/// so first; the slug is built into a private file, the image published
/// from it, and only then the slug delivered (a failed publish writes no
/// slug, as a failed build does not).
pub fn build_and_publish(
    mut cfg: BuildConfig,
    publish: &PublishArgs,
    image: &str,
    cancel: Arc<Cancel>,
    rec: &Recorder,
) -> anyhow::Result<()> {
    let target = ImageRef::parse(image).map_err(OciError::from)?;
    let settings = settings(
        &publish.registry,
        cfg.tmp_dir.as_deref(),
        oci::DEFAULT_LAYER_LEVEL,
        cfg.limits,
    )?;
    let prepared = oci::prepare(&target, settings, &cancel)?;

    let output = cfg.output.clone();
    let stage_parent = match &output {
        SlugOutput::File(p) if !is_discard(p) => {
            if p.is_dir() {
                return Err(BuildError::Output {
                    path: p.clone(),
                    source: io::Error::new(io::ErrorKind::IsADirectory, "is a directory"),
                }
                .into());
            }
            p.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        }
        _ => cfg.tmp_dir.clone().unwrap_or_else(std::env::temp_dir),
    };
    let stage = tempfile::Builder::new()
        .prefix(".slug-image-")
        .tempdir_in(&stage_parent)
        .map_err(|source| BuildError::Output {
            path: stage_parent.clone(),
            source,
        })?;
    let cleanup = cancel.remove_on_emergency(stage.path());
    let slug = stage.path().join("slug.tgz");
    cfg.output = SlugOutput::File(slug.clone());

    let result = (|| -> anyhow::Result<Published> {
        let built = build::build(&cfg, Arc::clone(&cancel), rec)?;
        let published = prepared.publish(&SlugInput {
            path: slug.clone(),
            source_version: built.source_version,
            buildpacks: built.buildpacks,
            epoch: built.epoch,
        })?;
        deliver(&slug, &output, &cancel)?;
        Ok(published)
    })();
    cancel.forget(cleanup);
    let published = result?;
    rec.update(|r| {
        r.image = Some(ImageReport {
            reference: Some(published.reference.clone()),
            digest: Some(published.digest.clone()),
        })
    });
    report(&published);
    Ok(())
}

fn is_discard(path: &Path) -> bool {
    path == Path::new("/dev/null")
}

/// The slug to where the build would have put it.
fn deliver(slug: &Path, output: &SlugOutput, cancel: &Cancel) -> Result<(), BuildError> {
    let out_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Output { path, source }
    };
    match output {
        // Uploaded only (PUT_URL), or thrown away.
        SlugOutput::Nowhere => Ok(()),
        SlugOutput::File(p) if is_discard(p) => Ok(()),
        SlugOutput::File(p)
            if p.symlink_metadata()
                .is_ok_and(|m| !m.is_file() && !m.is_symlink()) =>
        {
            // A FIFO or device: write into it, never replace it.
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .map_err(out_err(p))?;
            copy(slug, &mut out, cancel).map_err(out_err(p))
        }
        SlugOutput::File(p) => std::fs::rename(slug, p).map_err(out_err(p)),
        SlugOutput::Stdout => {
            let stdout = io::stdout();
            let mut out = stdout.lock();
            copy(slug, &mut out, cancel).map_err(out_err(Path::new("<stdout>")))?;
            out.flush().map_err(out_err(Path::new("<stdout>")))
        }
    }
}

fn copy(from: &Path, to: &mut dyn Write, cancel: &Cancel) -> io::Result<()> {
    use std::io::Read;
    let mut file = std::fs::File::open(from)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if let Some(stop) = cancel.stopped() {
            return Err(io::Error::other(stop.to_string()));
        }
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
}

/// `slugbuilder image` and `slugbuilder rebase`.
pub fn run_command(cmd: Command) -> anyhow::Result<()> {
    let common = match &cmd {
        Command::Image(c) => &c.common,
        Command::Rebase(c) => &c.common,
    };
    let cancel = Cancel::new(Duration::from_secs(common.timeout));
    crate::guard(Arc::clone(&cancel)).context("installing signal handling")?;
    let published = match cmd {
        Command::Image(c) => {
            let limits = slug_shared::archive::Limits {
                max_bytes: c.max_unpacked_bytes,
                max_entries: c.max_entries,
                ..Default::default()
            };
            let settings = settings(
                &c.registry,
                c.common.work_dir.as_deref(),
                c.compression_level,
                limits,
            )?;
            if !c.slug.is_file() {
                return Err(
                    OciError::BadSlug(format!("{}: no such file", c.slug.display())).into(),
                );
            }
            let target = ImageRef::parse(&c.tag).map_err(OciError::from)?;
            let prepared = oci::prepare(&target, settings, &cancel)?;
            prepared.publish(&SlugInput {
                path: c.slug,
                source_version: c.source_version.filter(|s| !s.is_empty()),
                buildpacks: c.buildpacks,
                epoch: c.source_date_epoch.unwrap_or(build::DEFAULT_EPOCH),
            })?
        }
        Command::Rebase(c) => {
            let settings = settings(
                &c.registry,
                c.common.work_dir.as_deref(),
                oci::DEFAULT_LAYER_LEVEL,
                Default::default(),
            )?;
            let target = ImageRef::parse(&c.tag).map_err(OciError::from)?;
            oci::rebase(&target, settings, &cancel)?
        }
    };
    report(&published);
    writeln!(io::stdout().lock(), "{}", published.pullable).context("writing to stdout")?;
    Ok(())
}
