//! One build: source archive in, buildpacks run, slug out.
//!
//! The sequence follows Heroku's: unpack the source into a private build
//! directory, drop the root `.git`, apply `.slugignore`, choose buildpacks
//! (explicit list, `BUILDPACK_URL`, `.buildpacks`, `BUILDPACKS`, else
//! detection over the installed ones), then for each: detect, compile,
//! source its `export`; then release, write `.release` (and a Procfile from
//! `default_process_types` when the app has none) and pack the slug. The
//! slug is only written to its destination once everything succeeded.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::archive::{self, ArchiveError, PackOptions, UnpackOptions};
use crate::buildpack::{self, Buildpack, BuildpackError, Fetcher};
use crate::child::{Env, Interrupt, StepError, StepRunner};
use crate::exit::Exit;
use crate::log;
use crate::procfile::{Procfile, ProcfileError};
use crate::release::{is_valid_env_name, Release, ReleaseError};
use crate::slugignore::{Slugignore, SlugignoreError};

/// Where the app source comes from.
#[derive(Debug, Clone)]
pub enum SourceInput {
    /// A tar (plain or gzip) on standard input.
    Stdin,
    /// A tar file.
    File(PathBuf),
    /// A directory, copied as is (minus its root `.git`).
    Dir(PathBuf),
}

/// Where the slug goes.
#[derive(Debug, Clone)]
pub enum SlugOutput {
    Stdout,
    File(PathBuf),
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
    /// Installed buildpacks, for detection.
    pub buildpacks_dir: PathBuf,
    /// Bundled buildpacks, for short names like `heroku/python`.
    pub bundled_dir: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub env_dir: Option<PathBuf>,
    /// `--env KEY=VALUE` config vars, written into ENV_DIR.
    pub env_vars: Vec<(String, String)>,
    /// Caller variables passed through to buildpacks (name, value).
    pub pass_env: Vec<(OsString, OsString)>,
    pub stack: String,
    pub source_version: Option<String>,
    pub request_id: String,
    /// Where the app will live at run time (`APP_DIR`).
    pub app_dir: String,
    /// The caller's PATH, so that stack tools are found.
    pub path: OsString,
    pub source_date_epoch: Option<u64>,
    pub compression_level: u32,
    pub timeout: Duration,
    /// Parent directory for the build's private work directory.
    pub tmp_dir: Option<PathBuf>,
    /// Run buildpack code as this (uid, gid); `None` runs it as ourselves.
    /// Set when slugbuilder runs as root, so that buildpacks never do.
    pub build_user: Option<(u32, u32)>,
    /// Bounds for unpacking the source.
    pub limits: archive::Limits,
    /// Warn when the compressed slug is larger than this.
    pub slug_size_warning: u64,
    /// Fail when the compressed slug is larger than this.
    pub max_slug_size: u64,
}

/// The bundled catch-all buildpack (apps that only bring a Procfile).
const FALLBACK_BUILDPACK: &str = "procfile";

/// Heroku's soft limit on compressed slugs.
pub const DEFAULT_SLUG_SIZE_WARNING: u64 = 300 << 20;
/// Heroku's hard limit on compressed slugs (1 GB since 2026).
pub const DEFAULT_MAX_SLUG_SIZE: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("bad source archive: {0}")]
    Source(#[source] ArchiveError),
    #[error("{0}")]
    Slugignore(#[from] SlugignoreError),
    #[error("{0}")]
    BadInput(String),
    #[error("no buildpack applies to this app (tried: {tried}); set BUILDPACK_URL or add a .buildpacks file")]
    NoBuildpack { tried: String },
    #[error("buildpack {buildpack} does not apply to this app (bin/detect exited {status})")]
    Refused { buildpack: String, status: String },
    #[error("{0}")]
    Fetch(#[from] BuildpackError),
    #[error("buildpack {buildpack}: {step} failed ({status})")]
    StepFailed {
        buildpack: String,
        step: &'static str,
        status: String,
        exit: Exit,
    },
    #[error("buildpack {buildpack}: bin/release: {source}")]
    Release {
        buildpack: String,
        #[source]
        source: ReleaseError,
    },
    #[error("app Procfile: {0}")]
    Procfile(#[from] ProcfileError),
    #[error("buildpack {buildpack}: {source}")]
    Step {
        buildpack: String,
        step: &'static str,
        #[source]
        source: StepError,
    },
    #[error("packing the slug: {0}")]
    Pack(#[source] ArchiveError),
    #[error("the compiled slug is larger than the limit of {} (use .slugignore to leave files out)", log::human_size(*limit))]
    SlugTooLarge { limit: u64 },
    #[error("writing the slug to {path:?}: {source}")]
    Output {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{context}: {source}")]
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
            BuildError::Source(e) if !e.is_bad_input() => Exit::Internal,
            BuildError::Source(_)
            | BuildError::Slugignore(_)
            | BuildError::BadInput(_)
            | BuildError::Procfile(_) => Exit::BadInput,
            BuildError::NoBuildpack { .. } | BuildError::Refused { .. } => Exit::NoBuildpack,
            BuildError::Fetch(_) => Exit::BuildpackFetch,
            BuildError::StepFailed { exit, .. } => *exit,
            BuildError::Release { .. } => Exit::ReleaseInvalid,
            BuildError::Step { source, step, .. } => match source {
                StepError::TimedOut { .. } => Exit::Timeout,
                StepError::Interrupted { .. } => Exit::Interrupted,
                StepError::OutputTooLarge { .. } if *step == "release" => Exit::ReleaseInvalid,
                _ if *step == "compile" => Exit::CompileFailed,
                _ if *step == "release" => Exit::ReleaseInvalid,
                _ if *step == "detect" => Exit::NoBuildpack,
                _ => Exit::CompileFailed,
            },
            BuildError::Pack(_) | BuildError::Output { .. } | BuildError::SlugTooLarge { .. } => {
                Exit::PackFailed
            }
            BuildError::Io { .. } => Exit::Internal,
        }
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
}

/// The private directories of one build.
struct Workspace {
    _root: tempfile::TempDir,
    build: PathBuf,
    home: PathBuf,
    env: PathBuf,
    buildpacks: PathBuf,
    cache: PathBuf,
    _cache_tmp: Option<tempfile::TempDir>,
    staging: PathBuf,
}

impl Workspace {
    fn new(cfg: &BuildConfig) -> Result<Self, BuildError> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("slugbuilder-");
        let root = match &cfg.tmp_dir {
            Some(dir) => builder.tempdir_in(dir),
            None => builder.tempdir(),
        }
        .map_err(io_ctx("creating the build workspace"))?;
        let dir = |name: &str| -> Result<PathBuf, BuildError> {
            let p = root.path().join(name);
            std::fs::create_dir(&p).map_err(io_ctx(format!("creating {}", p.display())))?;
            Ok(p)
        };
        let (build, home, env, buildpacks, staging) = (
            dir("build")?,
            dir("home")?,
            dir("env")?,
            dir("buildpacks")?,
            dir("staging")?,
        );
        let (cache, cache_tmp) = match &cfg.cache_dir {
            Some(c) => {
                std::fs::create_dir_all(c)
                    .map_err(io_ctx(format!("creating cache dir {}", c.display())))?;
                (c.clone(), None)
            }
            None => {
                let tmp = tempfile::Builder::new()
                    .prefix("slugbuilder-cache-")
                    .tempdir_in(root.path())
                    .map_err(io_ctx("creating a cache dir"))?;
                (tmp.path().to_path_buf(), Some(tmp))
            }
        };
        if let Some(owner) = cfg.build_user {
            // Buildpacks run as `owner`: they may traverse the workspace but
            // not list it, and own what they must write.
            set_mode(root.path(), 0o711)?;
            for dir in [&build, &home, &env] {
                chown(dir, owner)?;
            }
            set_mode(&env, 0o700)?;
            chown_tree_if_foreign(&cache, owner)?;
        }
        Ok(Self {
            _root: root,
            build,
            home,
            env,
            buildpacks,
            cache,
            _cache_tmp: cache_tmp,
            staging,
        })
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_ctx(format!("setting the mode of {}", path.display())))
}

fn chown(path: &Path, (uid, gid): (u32, u32)) -> Result<(), BuildError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(io_ctx(format!("changing the owner of {}", path.display())))
}

/// Hand the cache to the build user. Only when its top directory belongs to
/// someone else (a cache made before builds ran unprivileged): normally the
/// build user already owns everything in it and nothing is walked.
fn chown_tree_if_foreign(dir: &Path, owner: (u32, u32)) -> Result<(), BuildError> {
    use std::os::unix::fs::MetadataExt;
    let meta = dir
        .symlink_metadata()
        .map_err(io_ctx(format!("inspecting {}", dir.display())))?;
    if (meta.uid(), meta.gid()) == owner {
        return Ok(());
    }
    chown(dir, owner)?;
    if meta.is_dir() {
        let entries =
            std::fs::read_dir(dir).map_err(io_ctx(format!("reading {}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_ctx(format!("reading {}", dir.display())))?;
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                chown_tree_if_foreign(&path, owner)?;
            } else {
                chown(&path, owner)?;
            }
        }
    }
    Ok(())
}

/// Run a whole build. The slug reaches `cfg.output` only on success.
pub fn build(cfg: &BuildConfig, interrupt: Arc<Interrupt>) -> Result<BuildReport, BuildError> {
    let ws = Workspace::new(cfg)?;
    let mut runner = StepRunner::new(Instant::now() + cfg.timeout, interrupt)
        .map_err(io_ctx("starting the step runner"))?;
    runner.credentials = cfg.build_user;

    // 1. Source.
    let summary = receive_source(cfg, &ws.build)?;
    let source_version = cfg
        .source_version
        .clone()
        .or(summary.pax_comment.filter(|c| is_commit_id(c)));
    let epoch = cfg.source_date_epoch.or(summary.newest_mtime).unwrap_or(0);
    let git_dir = ws.build.join(".git");
    crate::rootdir::remove_entry(&git_dir).map_err(io_ctx("removing the source's .git"))?;
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
    prepare_env_dir(cfg, &ws.env)?;

    // 2. Buildpacks.
    let mut env = base_env(cfg, &ws, source_version.as_deref());
    let mut fetcher = Fetcher::new(ws.buildpacks.clone(), cfg.bundled_dir.clone());
    let chosen = choose_buildpacks(cfg, &ws.build)?;
    let (buildpacks, detected_name) = match chosen {
        Some(specs) => {
            if specs.len() > 1 {
                log::header("Fetching buildpacks");
            }
            let mut bps = Vec::new();
            for spec in &specs {
                let bp = fetcher.fetch(spec)?;
                bps.push(bp);
            }
            (bps, None)
        }
        None => {
            let (bp, name) = detect_installed(cfg, &runner, &env, &ws.build)?;
            (vec![bp], Some(name))
        }
    };

    let mut release = Release::default();
    let mut names = Vec::new();
    for (i, bp) in buildpacks.iter().enumerate() {
        let name = match (&detected_name, i) {
            (Some(n), 0) => n.clone(),
            _ => detect_explicit(&runner, bp, &env, &ws.build)?,
        };
        log::header(format!("{name} app detected"));
        names.push(name);
        compile(&runner, bp, &env, &ws)?;
        if let Some(export) = bp.export_file() {
            source_export(&runner, bp, &export, &mut env, &ws.build)?;
        }
    }
    for bp in &buildpacks {
        if let Some(r) = run_release(&runner, bp, &env, &ws.build)? {
            release.merge(r);
        }
    }
    runner
        .interrupt()
        .check()
        .map_err(|source| BuildError::Step {
            buildpack: "-".into(),
            step: "build",
            source,
        })?;

    // 3. Release metadata and process types.
    let process_types = write_release(&ws.build, &release)?;

    // 4. Slug.
    log::header("Compressing...");
    let opts = PackOptions {
        mtime_clamp: Some(epoch),
        skip_root_git: true,
    };
    let (slug_path, slug_bytes, sha256) = pack(cfg, &ws, &opts)?;
    runner
        .interrupt()
        .check()
        .map_err(|source| BuildError::Step {
            buildpack: "-".into(),
            step: "pack",
            source,
        })?;
    deliver(cfg, &slug_path)?;
    log::info(format!("Done: {}", log::human_size(slug_bytes)));
    log::header(format!(
        "Compiled slug size is {}",
        log::human_size(slug_bytes)
    ));
    log::info(format!("sha256: {sha256}"));
    Ok(BuildReport {
        slug_bytes,
        sha256,
        buildpacks: buildpacks.iter().map(|b| b.spec.clone()).collect(),
        process_types,
    })
}

fn is_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn receive_source(cfg: &BuildConfig, build: &Path) -> Result<archive::UnpackSummary, BuildError> {
    let opts = UnpackOptions {
        owner: cfg.build_user,
        limits: cfg.limits,
    };
    match &cfg.source {
        SourceInput::Stdin => {
            archive::unpack(io::stdin(), build, &opts).map_err(BuildError::Source)
        }
        SourceInput::File(path) => {
            let file = File::open(path).map_err(|e| {
                BuildError::BadInput(format!("cannot open source {}: {e}", path.display()))
            })?;
            archive::unpack(file, build, &opts).map_err(BuildError::Source)
        }
        SourceInput::Dir(dir) => {
            if !dir.is_dir() {
                return Err(BuildError::BadInput(format!(
                    "source {} is not a directory",
                    dir.display()
                )));
            }
            // One code path for every source: the directory is streamed as a
            // tar through the same safe unpacker a pushed archive goes through.
            let (reader, writer) = io::pipe().map_err(io_ctx("creating a pipe"))?;
            let dir = dir.clone();
            let packer = std::thread::spawn(move || {
                archive::pack_tar(
                    &dir,
                    writer,
                    &PackOptions {
                        mtime_clamp: None,
                        skip_root_git: true,
                    },
                )
            });
            let unpacked = archive::unpack(reader, build, &opts);
            let packed = packer.join().expect("packer thread does not panic");
            packed.map_err(BuildError::Source)?;
            unpacked.map_err(BuildError::Source)
        }
    }
}

/// Build ENV_DIR: the operator's env dir (copied, so buildpacks cannot
/// change it) plus `--env` values. Values are never printed.
fn prepare_env_dir(cfg: &BuildConfig, env_dir: &Path) -> Result<(), BuildError> {
    if let Some(src) = &cfg.env_dir {
        let entries = std::fs::read_dir(src).map_err(|e| {
            BuildError::BadInput(format!("cannot read env dir {}: {e}", src.display()))
        })?;
        for entry in entries {
            let entry = entry.map_err(io_ctx(format!("reading env dir {}", src.display())))?;
            let name = entry.file_name();
            let name_str = name.to_string_lossy();
            let meta = entry.path().metadata();
            if !meta.is_ok_and(|m| m.is_file()) {
                continue;
            }
            if !is_valid_env_name(&name_str) {
                log::warn(format!(
                    "ENV_DIR: skipping {name_str:?}: not a valid variable name"
                ));
                continue;
            }
            std::fs::copy(entry.path(), env_dir.join(&name))
                .map_err(io_ctx(format!("copying env var {name_str}")))?;
        }
    }
    let finish = |env_dir: &Path| -> Result<(), BuildError> {
        if let Some(owner) = cfg.build_user {
            for entry in std::fs::read_dir(env_dir).map_err(io_ctx("reading ENV_DIR"))? {
                let entry = entry.map_err(io_ctx("reading ENV_DIR"))?;
                chown(&entry.path(), owner)?;
            }
        }
        Ok(())
    };
    for (key, value) in &cfg.env_vars {
        if !is_valid_env_name(key) {
            return Err(BuildError::BadInput(format!(
                "--env {key:?}: not a valid variable name"
            )));
        }
        std::fs::write(env_dir.join(key), value)
            .map_err(io_ctx(format!("writing env var {key}")))?;
    }
    finish(env_dir)
}

/// The documented compile environment, and nothing else of ours.
fn base_env(cfg: &BuildConfig, ws: &Workspace, source_version: Option<&str>) -> Env {
    let mut env = Env::new();
    env.insert("PATH".into(), cfg.path.clone());
    env.insert("HOME".into(), ws.home.clone().into());
    env.insert("STACK".into(), cfg.stack.clone().into());
    env.insert("REQUEST_ID".into(), cfg.request_id.clone().into());
    env.insert("APP_DIR".into(), cfg.app_dir.clone().into());
    if let Some(v) = source_version {
        env.insert("SOURCE_VERSION".into(), v.into());
    }
    for (k, v) in &cfg.pass_env {
        env.insert(k.clone(), v.clone());
    }
    env
}

/// Buildpacks named explicitly, in priority order; `None` means detect.
fn choose_buildpacks(cfg: &BuildConfig, build: &Path) -> Result<Option<Vec<String>>, BuildError> {
    if !cfg.explicit_buildpacks.is_empty() {
        return Ok(Some(cfg.explicit_buildpacks.clone()));
    }
    let list_file = build.join(".buildpacks");
    if list_file.symlink_metadata().is_ok_and(|m| m.is_file()) {
        let text = std::fs::read(&list_file).map_err(io_ctx("reading .buildpacks"))?;
        let list = buildpack::parse_list_file(&String::from_utf8_lossy(&text));
        if !list.is_empty() {
            return Ok(Some(list));
        }
    }
    if let Some(env) = &cfg.buildpacks_env {
        let list = buildpack::parse_list_env(env);
        if !list.is_empty() {
            return Ok(Some(list));
        }
    }
    Ok(None)
}

fn step_err<'a>(
    bp: &'a Buildpack,
    step: &'static str,
) -> impl FnOnce(StepError) -> BuildError + 'a {
    move |source| BuildError::Step {
        buildpack: bp.spec.clone(),
        step,
        source,
    }
}

/// Run `bin/detect`: `Ok(Ok(name))` when it applies, `Ok(Err(status))` when not.
fn run_detect(
    runner: &StepRunner,
    bp: &Buildpack,
    env: &Env,
    build: &Path,
) -> Result<Result<String, String>, BuildError> {
    let out = runner
        .run(&bp.bin("detect"), &[build.as_os_str()], env, build, true)
        .map_err(step_err(bp, "detect"))?;
    if !out.status.success() {
        return Ok(Err(describe_status(out.status)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let name = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    Ok(Ok(if name.is_empty() {
        bp.name()
    } else {
        name.chars().take(100).collect()
    }))
}

fn detect_explicit(
    runner: &StepRunner,
    bp: &Buildpack,
    env: &Env,
    build: &Path,
) -> Result<String, BuildError> {
    if !bp.has("detect") {
        return Ok(bp.name());
    }
    run_detect(runner, bp, env, build)?.map_err(|status| BuildError::Refused {
        buildpack: bp.spec.clone(),
        status,
    })
}

fn detect_installed(
    cfg: &BuildConfig,
    runner: &StepRunner,
    env: &Env,
    build: &Path,
) -> Result<(Buildpack, String), BuildError> {
    let installed = buildpack::installed(&cfg.buildpacks_dir)?;
    let mut matched: Vec<(Buildpack, String)> = Vec::new();
    for bp in installed.iter().filter(|bp| bp.has("detect")) {
        if let Ok(name) = run_detect(runner, bp, env, build)? {
            matched.push((bp.clone(), name));
        }
    }
    let mut matched = matched.into_iter();
    let Some(first) = matched.next() else {
        return Err(BuildError::NoBuildpack {
            tried: installed
                .iter()
                .map(Buildpack::name)
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    // The bundled `procfile` buildpack applies to every app with a Procfile:
    // naming it would turn the warning into noise on every build.
    let others: Vec<String> = matched
        .map(|(bp, _)| bp.name())
        .filter(|name| name != FALLBACK_BUILDPACK)
        .collect();
    if !others.is_empty() {
        log::warn(format!(
            "Using buildpack {}; these also detected this app: {} (set BUILDPACKS or .buildpacks to use several)",
            first.0.name(),
            others.join(", ")
        ));
    }
    Ok(first)
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown status".into(),
    }
}

fn compile(
    runner: &StepRunner,
    bp: &Buildpack,
    env: &Env,
    ws: &Workspace,
) -> Result<(), BuildError> {
    let args = [
        ws.build.as_os_str(),
        ws.cache.as_os_str(),
        ws.env.as_os_str(),
    ];
    let out = runner
        .run(&bp.bin("compile"), &args, env, &ws.build, false)
        .map_err(step_err(bp, "compile"))?;
    if !out.status.success() {
        return Err(BuildError::StepFailed {
            buildpack: bp.spec.clone(),
            step: "bin/compile",
            status: describe_status(out.status),
            exit: Exit::CompileFailed,
        });
    }
    Ok(())
}

/// Variables that bash sets for itself and that must not leak into the
/// environment of later buildpacks.
const SHELL_VARS: &[&str] = &["_", "SHLVL", "PWD", "OLDPWD"];

/// Source the buildpack's `export` file in a bash child (never in our own
/// process) and take the variables it exports for the later buildpacks.
fn source_export(
    runner: &StepRunner,
    bp: &Buildpack,
    export: &Path,
    env: &mut Env,
    build: &Path,
) -> Result<(), BuildError> {
    let bash = which::which("bash").unwrap_or_else(|_| PathBuf::from("/bin/bash"));
    let script = OsStr::new(". \"$1\" >&2 && exec env -0");
    let out = runner
        .run(
            &bash,
            &[
                OsStr::new("-c"),
                script,
                OsStr::new("export"),
                export.as_os_str(),
            ],
            env,
            build,
            true,
        )
        .map_err(step_err(bp, "export"))?;
    if !out.status.success() {
        return Err(BuildError::StepFailed {
            buildpack: bp.spec.clone(),
            step: "export",
            status: describe_status(out.status),
            exit: Exit::CompileFailed,
        });
    }
    let mut exported = Env::new();
    for record in out.stdout.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        if let Some(eq) = record.iter().position(|&b| b == b'=') {
            let key = OsStr::from_bytes(&record[..eq]).to_os_string();
            if SHELL_VARS.iter().any(|v| OsStr::new(v) == key) {
                continue;
            }
            exported.insert(key, OsStr::from_bytes(&record[eq + 1..]).to_os_string());
        }
    }
    *env = exported;
    Ok(())
}

fn run_release(
    runner: &StepRunner,
    bp: &Buildpack,
    env: &Env,
    build: &Path,
) -> Result<Option<Release>, BuildError> {
    if !bp.has("release") {
        return Ok(None);
    }
    let out = runner
        .run(&bp.bin("release"), &[build.as_os_str()], env, build, true)
        .map_err(step_err(bp, "release"))?;
    if !out.status.success() {
        return Err(BuildError::StepFailed {
            buildpack: bp.spec.clone(),
            step: "bin/release",
            status: describe_status(out.status),
            exit: Exit::ReleaseInvalid,
        });
    }
    Release::parse(&out.stdout)
        .map(Some)
        .map_err(|source| BuildError::Release {
            buildpack: bp.spec.clone(),
            source,
        })
}

/// Store `.release`, write a Procfile from the defaults when the app has
/// none, and print the process types. Returns the process type names.
fn write_release(build: &Path, release: &Release) -> Result<Vec<String>, BuildError> {
    std::fs::write(build.join(".release"), release.to_yaml())
        .map_err(io_ctx("writing .release"))?;
    log::header("Discovering process types");
    let procfile_path = build.join("Procfile");
    let procfile = match procfile_path.symlink_metadata() {
        Ok(meta) if meta.is_file() => {
            let bytes = std::fs::read(&procfile_path).map_err(io_ctx("reading Procfile"))?;
            Some(Procfile::parse_bytes(&bytes)?)
        }
        Ok(_) => {
            return Err(BuildError::BadInput(
                "Procfile is not a regular file".into(),
            ))
        }
        Err(_) => None,
    };
    let mut names: Vec<String> = Vec::new();
    match procfile {
        Some(p) => {
            names.extend(p.names().map(str::to_string));
            log::info(format!(
                "Procfile declares types     -> {}",
                list_or_none(&names)
            ));
            let defaults: Vec<String> = release
                .default_process_types
                .keys()
                .filter(|k| p.get(k).is_none())
                .cloned()
                .collect();
            if !defaults.is_empty() {
                log::info(format!(
                    "Default types for buildpack -> {}",
                    defaults.join(", ")
                ));
                names.extend(defaults);
            }
        }
        None => {
            let p = Procfile::from_map(&release.default_process_types);
            names.extend(p.names().map(str::to_string));
            log::info(format!(
                "Default types for buildpack -> {}",
                list_or_none(&names)
            ));
            if !p.is_empty() {
                std::fs::write(&procfile_path, p.to_string())
                    .map_err(io_ctx("writing Procfile"))?;
            }
        }
    }
    Ok(names)
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(", ")
    }
}

/// Counts and hashes what passes through.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
    /// Stop writing past this many bytes: a slug over the hard limit fails
    /// as soon as it gets there, not after filling the disk.
    limit: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes + buf.len() as u64 > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "slug over the size limit",
            ));
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Pack into a staging file (next to the output file when there is one, so
/// the final rename is atomic). Returns (path, size, sha256).
fn pack(
    cfg: &BuildConfig,
    ws: &Workspace,
    opts: &PackOptions,
) -> Result<(tempfile::TempPath, u64, String), BuildError> {
    let staging_dir = match &cfg.output {
        SlugOutput::File(path) => path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        SlugOutput::Stdout => ws.staging.clone(),
    };
    let out_err = |source| BuildError::Output {
        path: staging_dir.clone(),
        source,
    };
    let tmp = tempfile::Builder::new()
        .prefix(".slug-")
        .suffix(".tgz.partial")
        .tempfile_in(&staging_dir)
        .map_err(out_err)?;
    let (file, path) = tmp.into_parts();
    let mut writer = HashingWriter {
        inner: io::BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        bytes: 0,
        limit: cfg.max_slug_size,
    };
    let too_large = |e: &ArchiveError| matches!(e, ArchiveError::Write { source, .. } if source.kind() == io::ErrorKind::FileTooLarge);
    let summary =
        archive::pack_gzip(&ws.build, &mut writer, cfg.compression_level, opts).map_err(|e| {
            if too_large(&e) {
                BuildError::SlugTooLarge {
                    limit: cfg.max_slug_size,
                }
            } else {
                BuildError::Pack(e)
            }
        })?;
    for skipped in &summary.skipped {
        log::warn(format!(
            "left out of the slug (not a file, directory or link): {}",
            skipped.display()
        ));
    }
    writer.flush().map_err(out_err)?;
    let HashingWriter {
        inner,
        hasher,
        bytes,
        ..
    } = writer;
    if bytes > cfg.slug_size_warning {
        log::warn(format!(
            "Your slug size ({}) exceeds the soft limit of {}, which may slow app boot and deploys",
            log::human_size(bytes),
            log::human_size(cfg.slug_size_warning)
        ));
    }
    let file = inner.into_inner().map_err(|e| out_err(e.into_error()))?;
    file.sync_all().map_err(out_err)?;
    Ok((path, bytes, format!("{:x}", hasher.finalize())))
}

/// Move the finished slug to its destination.
fn deliver(cfg: &BuildConfig, slug: &tempfile::TempPath) -> Result<(), BuildError> {
    match &cfg.output {
        SlugOutput::File(path) => {
            std::fs::rename(slug, path).map_err(|source| BuildError::Output {
                path: path.clone(),
                source,
            })?;
            // Files from tempfile are 0600; a slug is meant to be shared.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
            Ok(())
        }
        SlugOutput::Stdout => {
            let mut file = File::open(slug).map_err(|source| BuildError::Output {
                path: slug.to_path_buf(),
                source,
            })?;
            let stdout = io::stdout();
            let mut out = stdout.lock();
            let out_err = |source| BuildError::Output {
                path: PathBuf::from("<stdout>"),
                source,
            };
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf).map_err(out_err)?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n]).map_err(out_err)?;
            }
            out.flush().map_err(out_err)
        }
    }
}

/// Random request id (hex), like the platform's.
pub fn new_request_id() -> String {
    let mut bytes = [0u8; 16];
    if File::open("/dev/urandom")
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
