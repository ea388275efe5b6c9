//! The build side: one build, source archive in, buildpacks run, slug out.
//!
//! The sequence follows Heroku's: unpack the source into a private build
//! directory, drop the root `.git`, apply `.slugignore`, choose buildpacks
//! (explicit list, `BUILDPACK_URL`, `.buildpacks`, `BUILDPACKS`, else
//! detection over the installed ones), then for each: detect, compile,
//! source its `export`; then release, write `.release` (and a Procfile from
//! `default_process_types` when the app has none) and pack the slug. The
//! slug is only written to its destination once everything succeeded.
//!
//! Every buildpack step runs in the build's [`Sandbox`]; every phase is
//! under the build's one deadline ([`Cancel`]); and every file slugbuilder
//! itself reads or writes in the build dir is reached by descriptors
//! beneath it ([`slug_shared::rootdir`]), never through a link.
//!
//! The parts: [`workspace`] (the build's private directories), [`source`]
//! (receiving the app and its config vars), [`steps`] (choosing and running
//! buildpacks), [`slug`] (release metadata, packing and delivery),
//! [`remote`] (object storage: `SOURCE_URL`, `CACHE_URL`, `PUT_URL`).
//!
//! Each phase is timed into the build's [`Recorder`] (the JSON report),
//! and so is each buildpack step.

pub mod buildpack;
pub mod child;
mod remote;
pub mod report;
pub mod sandbox;
mod slug;
pub mod slugignore;
mod source;
mod steps;
mod workspace;
pub use workspace::{enter_private_mount_namespace, WorkspaceMode};

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use slug::{DEFAULT_MAX_SLUG_SIZE, DEFAULT_SLUG_SIZE_WARNING};
pub use source::DEFAULT_EPOCH;

use crate::buildpack::BuildpackError;
use crate::child::{StepError, StepRunner};
use crate::report::{PhaseName, Recorder, SlugReport};
use crate::sandbox::{Sandbox, SandboxConfig, SandboxError};
use crate::slugignore::{Slugignore, SlugignoreError};
use slug_shared::archive::{self, ArchiveError};
use slug_shared::cancel::{Cancel, Stop};
use slug_shared::exit::Exit;
use slug_shared::http::{HttpError, SecretUrl};
use slug_shared::log;
use slug_shared::procfile::ProcfileError;
use slug_shared::release::ReleaseError;
use slug_shared::rootdir::RootError;

/// Where the app source comes from.
#[derive(Debug, Clone)]
pub enum SourceInput {
    /// A tar (plain or gzip) on standard input.
    Stdin,
    /// A tar file.
    File(PathBuf),
    /// A directory, copied as is (minus its root `.git`).
    Dir(PathBuf),
    /// A tar (plain or gzip) downloaded from this URL (`SOURCE_URL`).
    Url(SecretUrl),
}

/// Where the slug goes.
#[derive(Debug, Clone)]
pub enum SlugOutput {
    Stdout,
    File(PathBuf),
    /// Nowhere on this host: only uploaded (`put_url`).
    Nowhere,
}

/// Everything a build needs, checked before any work starts.
#[derive(Debug, Clone)]
pub struct BuildConfig {
    pub source: SourceInput,
    pub output: SlugOutput,
    /// Buildpacks named on the command line (`--buildpack`, in order), or
    /// `BUILDPACK_URL`; highest priority.
    pub explicit_buildpacks: Vec<String>,
    /// `BUILDPACKS` (comma-separated); used when the app has no `.buildpacks`.
    pub buildpacks_env: Option<String>,
    /// Installed buildpacks, for detection; `None`: the bundled ones.
    pub buildpacks_dir: Option<PathBuf>,
    /// Bundled buildpacks (a tar), for detection by default and for short
    /// names like `heroku/python`.
    pub bundled: Option<Bundled>,
    /// Whether the app's `.buildpacks` may name local paths and `file://`.
    pub allow_local_buildpacks: bool,
    pub cache_dir: Option<PathBuf>,
    /// Where the cache tarball lives (`CACHE_URL`): fetched before the
    /// build (404: none yet), stored with a PUT after a successful one.
    pub cache_url: Option<SecretUrl>,
    /// Where to PUT the updated cache when it is not `cache_url` (a
    /// pre-signed URL is signed for one method: GET and PUT need two).
    pub cache_put_url: Option<SecretUrl>,
    /// Upload the finished slug here with a PUT (`PUT_URL`).
    pub put_url: Option<SecretUrl>,
    pub env_dir: Option<PathBuf>,
    /// `--env KEY=VALUE` config vars, written into ENV_DIR.
    pub env_vars: Vec<(String, String)>,
    /// Caller variables passed through to buildpacks (name, value).
    pub pass_env: Vec<(OsString, OsString)>,
    pub stack: String,
    pub source_version: Option<String>,
    pub request_id: String,
    /// Where the app will live at run time (`APP_DIR`).
    pub app_dir: PathBuf,
    /// The caller's PATH, so that stack tools are found.
    pub path: OsString,
    pub source_date_epoch: Option<u64>,
    pub compression_level: u32,
    /// Parent directory for the build's private work directory.
    pub tmp_dir: Option<PathBuf>,
    /// Whether the workspace lives in memory (`--workspace`).
    pub workspace: workspace::WorkspaceMode,
    pub sandbox: SandboxConfig,
    /// Bounds for unpacking the source and for packing the slug.
    pub limits: archive::Limits,
    /// Accept a source tar without its end-of-archive marker.
    pub allow_truncated_source: bool,
    /// Warn when the compressed slug is larger than this.
    pub slug_size_warning: u64,
    /// Fail when the compressed slug is larger than this.
    pub max_slug_size: u64,
}

/// The bundled buildpacks, as a tar embedded in the binary.
#[derive(Clone, Copy)]
pub struct Bundled(pub &'static [u8]);

impl std::fmt::Debug for Bundled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bundled({} bytes)", self.0.len())
    }
}

/// Which buildpack step failed (its exit code follows from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Detect,
    Compile,
    Export,
    Release,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Detect => "bin/detect",
            Phase::Compile => "bin/compile",
            Phase::Export => "export",
            Phase::Release => "bin/release",
        }
    }

    /// The documented exit code of a failure in this phase.
    pub fn exit(self) -> Exit {
        match self {
            Phase::Detect => Exit::NoBuildpack,
            Phase::Compile | Phase::Export => Exit::CompileFailed,
            Phase::Release => Exit::ReleaseInvalid,
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("bad source archive")]
    Source(#[source] ArchiveError),
    #[error(transparent)]
    Slugignore(#[from] SlugignoreError),
    /// A bad command line or setting (no I/O behind it).
    #[error("{0}")]
    BadInput(String),
    #[error("cannot open source {path:?}")]
    SourceOpen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("source {path:?} is not a directory")]
    SourceNotDir { path: PathBuf },
    #[error("cannot read env dir {path:?}")]
    EnvDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("ENV_DIR: {name} is larger than {limit} bytes")]
    EnvValueTooLarge { name: String, limit: u64 },
    #[error("--env {name:?}: not a valid variable name")]
    EnvName { name: String },
    #[error(".buildpacks")]
    ListFile(#[source] RootError),
    #[error("Procfile is {kind}, not a regular file")]
    ProcfileNotRegular { kind: &'static str },
    #[error("no buildpack applies to this app (tried: {tried}); set BUILDPACK_URL or add a .buildpacks file")]
    NoBuildpack { tried: String },
    #[error("buildpack {buildpack} does not apply to this app (bin/detect: {status})")]
    Refused { buildpack: String, status: String },
    #[error(transparent)]
    Fetch(#[from] BuildpackError),
    #[error("buildpack {buildpack}: {phase} failed ({status})")]
    StepFailed {
        buildpack: String,
        phase: Phase,
        status: String,
        /// The step's last log lines (see [`crate::child::Tail`]), config
        /// var values masked: for the report, the log has them already.
        output: Vec<String>,
    },
    #[error("buildpack {buildpack}: bin/release")]
    Release {
        buildpack: String,
        #[source]
        source: ReleaseError,
    },
    #[error("app Procfile")]
    Procfile(#[from] ProcfileError),
    #[error("buildpack {buildpack}: {phase}")]
    Step {
        buildpack: String,
        phase: Phase,
        #[source]
        source: StepError,
    },
    #[error("Build stopped: {hit} in {phase} of {buildpack}")]
    LimitReached {
        hit: crate::sandbox::Hit,
        phase: Phase,
        buildpack: String,
    },
    #[error("{0}")]
    Stopped(Stop),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("packing the slug")]
    Pack(#[source] ArchiveError),
    #[error("the compiled slug is larger than the limit of {} (use .slugignore to leave files out)", log::human_size(*limit))]
    SlugTooLarge { limit: u64 },
    #[error("writing the slug to {path:?}")]
    Output {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Download(HttpError),
    #[error("uploading the slug: {0}")]
    Upload(HttpError),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl BuildError {
    /// The documented exit code for this failure.
    pub fn exit(&self) -> Exit {
        match self {
            BuildError::Stopped(stop) => stop.exit(),
            BuildError::Source(ArchiveError::Stopped(stop))
            | BuildError::Pack(ArchiveError::Stopped(stop))
            | BuildError::Fetch(BuildpackError::Stopped(stop))
            | BuildError::Step {
                source: StepError::Stopped(stop),
                ..
            } => stop.exit(),
            BuildError::Source(e) if !e.is_bad_input() => Exit::Internal,
            BuildError::Source(_)
            | BuildError::Slugignore(_)
            | BuildError::BadInput(_)
            | BuildError::SourceOpen { .. }
            | BuildError::SourceNotDir { .. }
            | BuildError::EnvDir { .. }
            | BuildError::EnvValueTooLarge { .. }
            | BuildError::EnvName { .. }
            | BuildError::ListFile(_)
            | BuildError::ProcfileNotRegular { .. }
            | BuildError::Procfile(_) => Exit::BadInput,
            BuildError::NoBuildpack { .. } | BuildError::Refused { .. } => Exit::NoBuildpack,
            BuildError::Fetch(_) => Exit::BuildpackFetch,
            BuildError::StepFailed { phase, .. } => phase.exit(),
            BuildError::Release { .. } => Exit::ReleaseInvalid,
            BuildError::Step {
                source: StepError::OutputTooLarge { .. },
                phase: Phase::Release,
                ..
            } => Exit::ReleaseInvalid,
            BuildError::Step { phase, .. } => phase.exit(),
            BuildError::LimitReached { .. } => Exit::LimitReached,
            BuildError::Sandbox(SandboxError::Unavailable(_) | SandboxError::Misconfigured(_)) => {
                Exit::Sandbox
            }
            BuildError::Sandbox(_) => Exit::Internal,
            BuildError::Pack(_)
            | BuildError::Output { .. }
            | BuildError::SlugTooLarge { .. }
            | BuildError::Upload(_) => Exit::PackFailed,
            BuildError::Download(_) => Exit::Download,
            BuildError::Io { .. } => Exit::Internal,
        }
    }
}

impl From<Stop> for BuildError {
    fn from(stop: Stop) -> Self {
        BuildError::Stopped(stop)
    }
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> BuildError {
    let context = context.into();
    move |source| BuildError::Io { context, source }
}

/// What a successful build produced.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub slug_bytes: u64,
    pub sha256: String,
    pub buildpacks: Vec<String>,
    pub process_types: Vec<String>,
    pub sandbox: String,
    /// The commit built (given, or recorded by `git archive`), if known.
    pub source_version: Option<String>,
    /// The slug's mtime clamp (`SOURCE_DATE_EPOCH` or the default).
    pub epoch: u64,
}

/// Run a whole build, recording it into `rec`. The slug reaches
/// `cfg.output` (and `cfg.put_url`) only on success.
pub fn build(
    cfg: &BuildConfig,
    cancel: Arc<Cancel>,
    rec: &Recorder,
) -> Result<BuildReport, BuildError> {
    let started = Instant::now();
    // 0. Workspace and sandbox.
    let (ws, sandbox, bundled_dir, staging) =
        rec.phase(PhaseName::Prepare, || prepare(cfg, &cancel))?;
    let runner = StepRunner::new(Arc::clone(&cancel), Arc::clone(&sandbox))
        .map_err(io_ctx("starting the step runner"))?;
    let owner = sandbox.user().map(|u| (u.uid, u.gid));

    // 1. Source, and the cache from object storage.
    let source_version = rec.phase(PhaseName::Source, || {
        receive_source(cfg, &ws, &sandbox, owner, &cancel)
    })?;
    rec.update(|r| r.source_version.clone_from(&source_version));
    if let Some(url) = &cfg.cache_url {
        rec.phase(PhaseName::CacheRestore, || {
            remote::restore_cache(cfg, url.expose(), &ws.cache, owner, &cancel)
        })?;
    }

    // 2. Buildpacks.
    let env = steps::base_env(cfg, &sandbox, source_version.as_deref());
    let ran = rec
        .phase(PhaseName::Buildpacks, || {
            steps::run_buildpacks(cfg, &runner, &ws, bundled_dir.as_deref(), env, owner, rec)
        })
        .map_err(|e| mask_config_values(e, cfg))?;
    cancel.check()?;

    // 3. Release metadata and process types.
    let process_types = rec
        .phase(PhaseName::Release, || {
            let release = steps::run_releases(&runner, &ran, rec)?;
            slug::write_release(&ws.build, &release)
        })
        .map_err(|e| mask_config_values(e, cfg))?;
    rec.update(|r| r.process_types = Some(process_types.clone()));

    // 4. Slug.
    let epoch = cfg.source_date_epoch.unwrap_or(DEFAULT_EPOCH);
    let (slug_bytes, sha256) = pack_slug(cfg, &ws, &staging, epoch, owner, &cancel, rec)?;

    // 5. The cache, before the slug goes out: a build stopped now still
    // leaves no slug behind.
    if let Some(url) = cfg.cache_put_url.as_ref().or(cfg.cache_url.as_ref()) {
        rec.phase(PhaseName::CacheSave, || {
            remote::save_cache(cfg, url.expose(), &ws.cache, &ws.scratch, owner, &cancel)
        })?;
    }

    // 6. Delivery: the upload, then the local destination.
    deliver(cfg, staging, &cancel, rec)?;
    log::header(format!(
        "Compiled slug size is {}",
        log::human_size(slug_bytes)
    ));
    log::info(format!("sha256: {sha256}"));
    tracing::info!(elapsed = ?started.elapsed(), "build done");
    Ok(BuildReport {
        slug_bytes,
        sha256,
        buildpacks: ran.buildpacks.iter().map(|b| b.spec.clone()).collect(),
        process_types,
        sandbox: sandbox.describe(),
        source_version,
        epoch,
    })
}

/// The slug packed into the staging file and recorded as not yet uploaded;
/// returns its size and sha256.
fn pack_slug(
    cfg: &BuildConfig,
    ws: &workspace::Workspace,
    staging: &slug::Staging,
    epoch: u64,
    owner: Option<(u32, u32)>,
    cancel: &Arc<Cancel>,
    rec: &Recorder,
) -> Result<(u64, String), BuildError> {
    let (slug_bytes, sha256) = rec.phase(PhaseName::Pack, || {
        log::header("Compressing...");
        slug::pack(cfg, ws, staging, epoch, owner, cancel)
    })?;
    cancel.check()?;
    log::info(format!("Done: {}", log::human_size(slug_bytes)));
    rec.update(|r| {
        r.slug = Some(SlugReport {
            size: slug_bytes,
            sha256: sha256.clone(),
            uploaded: false,
        })
    });
    Ok((slug_bytes, sha256))
}

/// The slug sent to `cfg.put_url` (when given), then moved to its local
/// destination: the last thing a build does, so that a build stopped
/// before leaves no slug behind.
fn deliver(
    cfg: &BuildConfig,
    staging: slug::Staging,
    cancel: &Arc<Cancel>,
    rec: &Recorder,
) -> Result<(), BuildError> {
    rec.phase(PhaseName::Deliver, || {
        if let Some(url) = &cfg.put_url {
            log::header("Uploading the slug");
            let up = remote::put(url.expose(), "PUT_URL", staging.file(), cancel)?;
            log::info(format!("Uploaded {}", log::human_size(up.bytes)));
            rec.update(|r| {
                if let Some(slug) = &mut r.slug {
                    slug.uploaded = true;
                }
            });
        }
        cancel.check()?;
        staging.deliver()
    })
}

/// The staging file, the workspace handed to the build user, the sandbox
/// and the bundled buildpacks written out.
fn prepare(
    cfg: &BuildConfig,
    cancel: &Arc<Cancel>,
) -> Result<
    (
        workspace::Workspace,
        Arc<Sandbox>,
        Option<PathBuf>,
        slug::Staging,
    ),
    BuildError,
> {
    let started = Instant::now();
    // A wrong destination is found out now, not after the whole build.
    let staging = slug::Staging::create(cfg, cancel)?;
    // Orphans of buildpack steps come to us, to be swept.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!("cannot become a child subreaper: {e}");
    }
    let mut ws = workspace::Workspace::create(cfg, cancel)?;
    let mut sandbox = Sandbox::create(&cfg.sandbox, ws.places(), &cfg.app_dir, &ws.scratch)?;
    sandbox.set_workspace(
        ws.in_memory().then(|| ws.root.clone()),
        ws.description.clone(),
    );
    ws.hand_over(sandbox.user(), cancel)?;
    let bundled_dir = ws.unpack_bundled(cfg.bundled)?;
    tracing::info!(elapsed = ?started.elapsed(), "workspace and sandbox ready");
    Ok((ws, Arc::new(sandbox), bundled_dir, staging))
}

/// Unpack the source, drop its `.git` and what `.slugignore` names, and
/// write ENV_DIR. Returns the source version (the caller's, or the commit
/// `git archive` recorded).
fn receive_source(
    cfg: &BuildConfig,
    ws: &workspace::Workspace,
    sandbox: &Sandbox,
    owner: slug_shared::rootdir::Owner,
    cancel: &Arc<Cancel>,
) -> Result<Option<String>, BuildError> {
    let summary = source::receive(cfg, &ws.build, owner, cancel)?;
    let source_version = cfg
        .source_version
        .clone()
        .or(summary.pax_comment.filter(|c| source::is_commit_id(c)));
    source::remove_root_git(&ws.build)?;
    if let Some(ignore) = Slugignore::load(&ws.build)? {
        for w in &ignore.warnings {
            log::warn(w);
        }
        let removed = ignore.apply(&ws.build)?;
        if !removed.is_empty() {
            log::header(format!(
                "Removed {} path(s) matching .slugignore",
                removed.len()
            ));
        }
    }
    source::prepare_env_dir(cfg, &ws.env, owner)?;
    cancel.check()?;
    // Said once the input is known to be good (a bad archive gets its one
    // error line, nothing more).
    log::header(sandbox.describe());
    log::info(sandbox.workspace_description());
    for warning in &sandbox.warnings {
        log::warn(warning);
    }
    if !sandbox.mode().has_namespaces() {
        workspace::check_app_dir(&cfg.app_dir, sandbox.user());
    }
    Ok(source_version)
}

/// Random request id (hex), like the platform's.
pub fn new_request_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_err()
    {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = (nanos ^ u128::from(std::process::id())).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How long a build may take by default (Heroku's 15 minutes).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);

/// Shortest config var value masked in a failed step's output: shorter
/// ones (`1`, `on`) would mask every other word and hide nothing.
const MIN_MASKED: usize = 4;

/// `err` with every config var value (of `-e` and of the operator's
/// ENV_DIR) in a failed step's output replaced by `***`, so that the
/// report never carries one.
fn mask_config_values(err: BuildError, cfg: &BuildConfig) -> BuildError {
    let BuildError::StepFailed {
        buildpack,
        phase,
        status,
        output,
    } = err
    else {
        return err;
    };
    let mut values: Vec<String> = cfg.env_vars.iter().map(|(_, v)| v.clone()).collect();
    if let Some(dir) = &cfg.env_dir {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            // The operator's files; regular ones only, as they were read.
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() <= 1 << 20) {
                if let Ok(value) = std::fs::read(&path) {
                    values.push(String::from_utf8_lossy(&value).into_owned());
                }
            }
        }
    }
    // Also each line of a value (a line of the log holds at most one), and
    // the value as the log escapes it.
    let mut masks: Vec<String> = Vec::new();
    for value in &values {
        for part in std::iter::once(value.as_str()).chain(value.lines()) {
            let part = part.trim();
            if part.len() >= MIN_MASKED {
                masks.push(part.to_string());
                masks.push(slug_shared::log::terminal_safe(part.as_bytes()));
            }
        }
    }
    masks.sort_by_key(|m| std::cmp::Reverse(m.len()));
    let output = output
        .into_iter()
        .map(|mut line| {
            for mask in &masks {
                if line.contains(mask.as_str()) {
                    line = line.replace(mask.as_str(), "***");
                }
            }
            line
        })
        .collect();
    BuildError::StepFailed {
        buildpack,
        phase,
        status,
        output,
    }
}

impl BuildError {
    /// The last lines of a failed step's output (config var values
    /// masked), if this is a step that failed.
    pub fn step_output(&self) -> Option<&[String]> {
        match self {
            BuildError::StepFailed { output, .. } if !output.is_empty() => Some(output),
            _ => None,
        }
    }
}
