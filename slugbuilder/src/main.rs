//! slugbuilder: turn an app's source (a tar on stdin) into a Heroku slug by
//! running classic buildpacks.
//!
//! `git archive HEAD | slugbuilder > slug.tgz`. The slug goes to stdout (or
//! `-o FILE`); the build log goes to stderr. The work is done by
//! `slug_build`; this binary turns flags into a checked [`BuildConfig`],
//! sets up logging and signals, and maps failures to exit codes.

mod image;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, Parser};
use nix::sys::signal::Signal;
use slug_build::report::Recorder;
use slug_build::sandbox::{Network, Policy, SandboxConfig, UidRange};
use slug_build::{self as build, BuildConfig, BuildError, Bundled, SlugOutput, SourceInput};
use slug_shared::cancel::{Cancel, Stop};
use slug_shared::exit::{Binary, Exit};
use slug_shared::http::SecretUrl;

/// The bundled buildpacks, packed at compile time by build.rs.
static BUNDLED_BUILDPACKS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/buildpacks.tar"));

/// Build a Heroku-style slug from app source, using classic buildpacks.
///
/// Reads the app source as a tar (plain or gzip) on stdin, unless --source is
/// given; writes the slug (a gzip tar) to stdout, unless -o is given. The build
/// log goes to stderr. Nothing is written to the slug destination unless the
/// whole build succeeds.
///
/// Buildpack code runs in a sandbox: as a uid of the build's own (when
/// root), in PID and mount namespaces of its own per step (when the kernel
/// allows), with a private /tmp and APP_DIR, a network namespace of the
/// build's own, memory, process and disk limits, a new session and keyring
/// and a seccomp filter; nothing it starts outlives its step. The build log
/// says which sandbox a build got.
///
/// With --image, an image of the slug on --run-image is published too;
/// `slugbuilder image` publishes an existing slug, `slugbuilder rebase`
/// moves an app image to a newer run image.
///
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    long_about,
    args_conflicts_with_subcommands = true,
    after_help = slug_shared::exit::help(Binary::Slugbuilder)
)]
struct Args {
    #[command(subcommand)]
    command: Option<image::Command>,

    #[command(flatten)]
    publish: image::PublishArgs,

    /// App source: a tar file (plain or gzip) or a directory. Default: stdin.
    #[arg(short, long, value_name = "FILE|DIR", conflicts_with = "source_url")]
    source: Option<PathBuf>,

    /// Download the source tar (plain or gzip) from this http(s) URL, e.g.
    /// a pre-signed object storage GET, instead of reading stdin. Deis's
    /// TAR_URL is honoured too.
    #[arg(long, value_name = "URL", env = "SOURCE_URL", hide_env_values = true)]
    source_url: Option<String>,

    /// After a successful build, upload the slug here with an HTTP PUT
    /// (e.g. a pre-signed object storage URL). Without -o, the slug is then
    /// not written to stdout.
    #[arg(long, value_name = "URL", env = "PUT_URL", hide_env_values = true)]
    put_url: Option<String>,

    /// The build cache as a tarball at this URL: fetched before the build
    /// (404: no cache yet), stored with a PUT after a successful build.
    #[arg(long, value_name = "URL", env = "CACHE_URL", hide_env_values = true)]
    cache_url: Option<String>,

    /// Store the updated cache here instead of at --cache-url (pre-signed
    /// URLs are signed for one method, so S3 needs a GET and a PUT URL).
    #[arg(
        long,
        value_name = "URL",
        env = "CACHE_PUT_URL",
        hide_env_values = true
    )]
    cache_put_url: Option<String>,

    /// Write a JSON build report to FILE, whatever the outcome (schema in
    /// the README, "Build report").
    #[arg(long, value_name = "FILE", env = "SLUGBUILDER_REPORT")]
    report: Option<PathBuf>,

    /// Write the slug to FILE (atomically) instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,

    /// Buildpack to use: a directory, a git URL with optional #ref, a .tgz
    /// URL, or a short name like heroku/python. Repeat for several, in order.
    /// Takes precedence over .buildpacks and BUILDPACKS.
    #[arg(short, long = "buildpack", value_name = "URL", env = "BUILDPACK_URL")]
    buildpacks: Vec<String>,

    /// Directory of installed buildpacks, detected in order (a `.order` file
    /// lists names to try first, others follow sorted by name). Default: the
    /// buildpacks bundled in this binary.
    #[arg(long, value_name = "DIR", env = "BUILDPACK_PATH")]
    buildpacks_dir: Option<PathBuf>,

    /// Let the app's .buildpacks name local paths and file:// URLs (they
    /// are then read with the build user's rights). Off by default: the
    /// operator's own --buildpack and BUILDPACK_PATH are always allowed.
    #[arg(
        long,
        env = "SLUGBUILDER_ALLOW_LOCAL_BUILDPACKS",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    allow_local_buildpacks: bool,

    /// Cache directory kept between builds of the same app (CACHE_DIR).
    /// Default: a temporary one.
    #[arg(long, value_name = "DIR", env = "CACHE_PATH")]
    cache_dir: Option<PathBuf>,

    /// Directory of config vars for buildpacks (ENV_DIR): one file per
    /// variable, the file name is the key and its content the value.
    #[arg(long, value_name = "DIR", env = "ENV_PATH")]
    env_dir: Option<PathBuf>,

    /// A config var for buildpacks (added to ENV_DIR). Repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    env_vars: Vec<(String, String)>,

    /// Pass this variable of slugbuilder's own environment through to
    /// buildpacks (by default they see only the documented ones). Repeatable.
    #[arg(long, value_name = "NAME")]
    pass_env: Vec<String>,

    /// Stack name given to buildpacks.
    #[arg(long, env = "STACK", default_value = "heroku-24")]
    stack: String,

    /// Commit being built (SOURCE_VERSION). Default: the commit id that
    /// `git archive` records in the tar, if any.
    #[arg(long, env = "SOURCE_VERSION")]
    source_version: Option<String>,

    /// Request id given to buildpacks. Default: random.
    #[arg(long, env = "REQUEST_ID")]
    request_id: Option<String>,

    /// Where the app will live at run time (APP_DIR for buildpacks). In the
    /// sandbox it is a private, writable directory for the build's steps.
    #[arg(long, value_name = "PATH", default_value = "/app")]
    app_dir: PathBuf,

    /// Clamp file times in the slug to this Unix time. Default: 315532800
    /// (1980-01-01), so the same tree gives the same slug bytes however it
    /// was archived (commit, tree or directory).
    #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS")]
    source_date_epoch: Option<u64>,

    /// gzip level of the slug, 0-9.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(0..=9))]
    compression_level: u32,

    /// Time limit for the whole build, in seconds.
    #[arg(
        long,
        env = "SLUGBUILDER_TIMEOUT",
        default_value_t = 900,
        value_name = "SECONDS"
    )]
    timeout: u64,

    /// Parent directory for the build's private work directory. Default: $TMPDIR.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,

    /// When slugbuilder runs as root, run buildpack code as this fixed user
    /// (USER[:GROUP] or UID[:GID]) instead of a uid of the build's own from
    /// --build-uid-range. Builds then share a uid. `root` keeps buildpacks
    /// running as root (not recommended).
    #[arg(long, env = "SLUGBUILDER_BUILD_USER", value_name = "USER")]
    build_user: Option<String>,

    /// When slugbuilder runs as root, each build runs its buildpacks as a
    /// uid of its own from this range (FIRST-LAST; gid = uid). Set aside a
    /// range no user or container of the host uses.
    #[arg(long, env = "SLUGBUILDER_BUILD_UID_RANGE", value_name = "FIRST-LAST", default_value_t = slug_build::sandbox::uids::DEFAULT_RANGE)]
    build_uid_range: UidRange,

    /// Where the uid leases of running builds are kept (root-owned).
    #[arg(long, env = "SLUGBUILDER_UID_LOCK_DIR", value_name = "DIR", default_value = slug_build::sandbox::uids::DEFAULT_LOCK_DIR)]
    uid_lock_dir: PathBuf,

    /// How buildpack steps are confined: `auto` (namespaces when the kernel
    /// allows, else a subreaper and a warning), `namespaces` (required:
    /// fail with exit 18 without them) or `none` (e.g. one container per
    /// build already).
    #[arg(
        long,
        env = "SLUGBUILDER_SANDBOX",
        value_name = "MODE",
        default_value = "auto"
    )]
    sandbox: Policy,

    /// Also show this host path read-only inside the sandbox (the system
    /// directories /usr, /bin, /lib*, /etc, /opt, /sys always are).
    /// Repeatable.
    #[arg(long, value_name = "PATH")]
    sandbox_ro: Vec<PathBuf>,

    /// How buildpack steps reach the network: `isolated` (a network
    /// namespace of the build's own; egress through slirp4netns, the host's
    /// loopback and other builds out of reach), `none` (loopback only) or
    /// `host` (the host's network, shared with every build).
    #[arg(
        long,
        env = "SLUGBUILDER_NETWORK",
        value_name = "MODE",
        default_value = "isolated"
    )]
    network: Network,

    /// Where the build's workspace (source, build dir, tmp, buildpack
    /// copies) lives: `memory` (a tmpfs sized to --disk-limit, in a mount
    /// namespace of slugbuilder's own; root only), `disk` (under --work-dir),
    /// or `auto`: memory when the disk limit is at most half of the host's
    /// memory and slugbuilder is root, else disk. The cache stays on disk.
    #[arg(
        long,
        env = "SLUGBUILDER_WORKSPACE",
        value_name = "MODE",
        default_value = "auto"
    )]
    workspace: slug_build::WorkspaceMode,

    /// Memory of the whole build (every step and what it starts, tmpfs
    /// included), in bytes or with K/M/G; 0 for none. Enforced with a cgroup
    /// (v1 or v2) when slugbuilder is root.
    #[arg(long, env = "SLUGBUILDER_MEMORY", value_name = "BYTES", default_value = "2G", value_parser = slug_build::sandbox::limits::parse_size)]
    memory: u64,

    /// Processes (and threads) of the whole build at once; 0 for none.
    #[arg(long, env = "SLUGBUILDER_PIDS_LIMIT", value_name = "N", default_value_t = slug_build::sandbox::limits::DEFAULT_PIDS)]
    pids_limit: u64,

    /// Disk of the build: build dir, cache, home, tmp and /dev/shm together,
    /// in bytes or with K/M/G; 0 for none.
    #[arg(long, env = "SLUGBUILDER_DISK_LIMIT", value_name = "BYTES", default_value = "8G", value_parser = slug_build::sandbox::limits::parse_size)]
    disk_limit: u64,

    /// Accept a source tar that ends without its end-of-archive marker
    /// (refused by default: it is what a `git archive` that died half-way
    /// leaves).
    #[arg(long)]
    allow_truncated_source: bool,

    /// Fail the build when the compressed slug exceeds this many bytes.
    #[arg(long, default_value_t = build::DEFAULT_MAX_SLUG_SIZE, value_name = "BYTES")]
    max_slug_size: u64,

    /// Warn when the compressed slug exceeds this many bytes.
    #[arg(long, default_value_t = build::DEFAULT_SLUG_SIZE_WARNING, value_name = "BYTES")]
    slug_size_warning: u64,

    /// Refuse a source archive that unpacks to more than this many bytes,
    /// and a slug that would (apparent sizes, as slugrunner counts them).
    #[arg(long, default_value_t = slug_shared::archive::DEFAULT_MAX_BYTES, value_name = "BYTES")]
    max_unpacked_bytes: u64,

    /// Refuse a source archive or a slug with more entries than this.
    #[arg(long, default_value_t = slug_shared::archive::Limits::default().max_entries, value_name = "N")]
    max_entries: u64,

    /// More diagnostics on stderr (-v, -vv). SLUG_LOG=<filter> also works.
    #[arg(short, long, action = ArgAction::Count)]
    verbose: u8,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn main() -> ExitCode {
    // A sandbox helper (this same binary, started for one buildpack step)
    // does its job and nothing else; before any thread exists.
    if let Some(code) = slug_build::sandbox::dispatch() {
        return code;
    }
    // A buildpack tarball is fetched by this binary too, as a sandboxed
    // step with the build user's rights.
    if let Some(code) = slug_build::buildpack::dispatch_fetch() {
        return code;
    }
    // Nothing our caller left open (a deploy lock, a root-only file)
    // reaches a child of ours.
    slug_shared::isolate::cloexec_inherited_fds();
    let args = Args::parse();
    // An in-memory workspace is a tmpfs in a mount namespace of our own,
    // which must be entered while this process has one thread.
    if args.workspace != slug_build::WorkspaceMode::Disk && nix::unistd::geteuid().is_root() {
        slug_build::enter_private_mount_namespace();
    }
    init_logging(
        args.command
            .as_ref()
            .map_or(args.verbose, image::Command::verbose),
    );
    // Config vars given as -e KEY=VALUE are visible to every user in
    // /proc/PID/cmdline: hide them now that they are parsed.
    if !args.env_vars.is_empty() {
        if let Err(e) = slug_shared::cmdline::hide_env_values() {
            tracing::warn!("cannot hide -e values from /proc/self/cmdline: {e}");
        }
    }
    let recorder = Recorder::new(&args.stack, args.request_id.as_deref().unwrap_or_default());
    let report_path = args.report.clone();
    let outcome = run(args, &recorder);
    let (exit, error) = match &outcome {
        Ok(()) => (Exit::Ok, None),
        Err(err) => {
            let line = slug_shared::log::error_line(err.as_ref());
            slug_shared::log::line(format_args!("slugbuilder: {line}"));
            let exit = exit_for(err);
            // The report also carries the failed step's last lines (the log
            // has them above the error line already).
            let tail = err
                .chain()
                .find_map(|e| e.downcast_ref::<BuildError>())
                .and_then(BuildError::step_output);
            let error = match tail {
                Some(lines) => format!("{line}; its last lines:\n{}", lines.join("\n")),
                None => line,
            };
            (exit, Some(error))
        }
    };
    if let Some(path) = report_path {
        if let Err(e) = recorder.finish(exit.code(), error).write(&path) {
            slug_shared::log::line(format_args!(
                "slugbuilder: writing the build report {}: {e}",
                path.display()
            ));
            if exit == Exit::Ok {
                return Exit::Internal.into();
            }
        }
    }
    exit.into()
}

/// The documented exit code for a failure (the table is `slug_shared::exit`):
/// the build's and the image's errors know theirs, anything else is
/// internal.
fn exit_for(err: &anyhow::Error) -> Exit {
    match (
        err.downcast_ref::<BuildError>(),
        err.downcast_ref::<slug_image::OciError>(),
    ) {
        (Some(e), _) => e.exit(),
        (None, Some(e)) => e.exit(),
        (None, None) => Exit::Internal,
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 if std::env::var_os("TRACE").is_some() || std::env::var_os("DEBUG").is_some() => "debug",
        n => slug_shared::logging::level_for(n),
    };
    // The one redaction rule of both binaries (the HTTP library's own
    // records included).
    slug_shared::logging::init(default, "SLUG_LOG");
}

fn run(mut args: Args, recorder: &Recorder) -> anyhow::Result<()> {
    if let Some(command) = args.command.take() {
        return image::run_command(command);
    }
    let source_url = source_url(args.source_url.take());
    refuse_unusable_streams(&args, source_url.is_some())?;
    let cache = cache_location(args.cache_url.take(), args.cache_dir.take());
    let cancel = Cancel::new(Duration::from_secs(args.timeout));
    guard(Arc::clone(&cancel)).context("installing signal handling")?;
    if let Some(path) = args.report.clone() {
        report_on_emergency(&cancel, recorder, path);
    }
    let publish = args.publish.clone();
    let cfg = build_config(args, source_url, cache, recorder)?;
    tracing::debug!(?cfg, "build configuration");
    match &publish.image {
        Some(image) => image::build_and_publish(cfg, &publish, image, cancel, recorder)?,
        None => {
            build::build(&cfg, cancel, recorder)?;
        }
    }
    Ok(())
}

/// The source URL: --source-url or SOURCE_URL, else Deis's name for it;
/// an empty one is none.
fn source_url(flag: Option<String>) -> Option<String> {
    flag.or_else(|| std::env::var("TAR_URL").ok())
        .filter(|u| !u.is_empty())
}

/// Refuse, before any work, a build that would wait on a terminal for its
/// source, write slug bytes to a terminal, or put the app nowhere fixed.
fn refuse_unusable_streams(args: &Args, has_source_url: bool) -> Result<(), BuildError> {
    use std::io::IsTerminal;
    if args.source.is_none() && !has_source_url && std::io::stdin().is_terminal() {
        return Err(BuildError::BadInput(
            "no source: pipe a tar to stdin (git archive HEAD | slugbuilder) or use --source"
                .into(),
        ));
    }
    if args.output.is_none() && args.put_url.is_none() && std::io::stdout().is_terminal() {
        return Err(BuildError::BadInput(
            "refusing to write a slug to a terminal: redirect stdout or use -o FILE".into(),
        ));
    }
    if !args.app_dir.is_absolute() {
        return Err(BuildError::BadInput(format!(
            "--app-dir {}: must be an absolute path",
            args.app_dir.display()
        )));
    }
    Ok(())
}

/// Where the build cache lives: at a URL or in a directory (empty values
/// are unset).
struct CacheLocation {
    url: Option<String>,
    dir: Option<PathBuf>,
}

/// A CACHE_URL wins over a cache dir, and says so.
fn cache_location(url: Option<String>, dir: Option<PathBuf>) -> CacheLocation {
    let url = url.filter(|u| !u.is_empty());
    let mut dir = dir.filter(|d| !d.as_os_str().is_empty());
    if let (Some(_), Some(d)) = (&url, &dir) {
        // The builder image sets CACHE_PATH; a CACHE_URL replaces it.
        slug_shared::log::info(format!(
            "CACHE_URL is set: the cache dir {} is not used",
            d.display()
        ));
        dir = None;
    }
    CacheLocation { url, dir }
}

/// A build that must end at once (a second signal, a step that will not
/// die) still leaves its report at `path`.
fn report_on_emergency(cancel: &Arc<Cancel>, recorder: &Recorder, path: PathBuf) {
    let recorder = recorder.clone();
    let stop_cancel = Arc::clone(cancel);
    cancel.on_emergency(move || {
        let exit = stop_cancel.stopped().map_or(Exit::Internal, Stop::exit);
        let error = stop_cancel.stopped().map(|s| s.to_string());
        let _ = recorder.finish(exit.code(), error).write(&path);
    });
}

/// The checked settings of the build, from its flags (already refused if
/// unusable) and the environment slugbuilder passes on.
fn build_config(
    args: Args,
    source_url: Option<String>,
    cache: CacheLocation,
    recorder: &Recorder,
) -> anyhow::Result<BuildConfig> {
    let source = source_input(args.source, source_url);
    let output = slug_output(args.output, args.put_url.is_some());
    // Before the build user is checked: a report written after that
    // failure carries the id.
    let request_id = request_id(args.request_id, recorder);
    let sandbox = SandboxConfig {
        policy: args.sandbox,
        helper: Some(PathBuf::from("/proc/self/exe")),
        fixed_user: build_user(args.build_user.as_deref())?,
        uid_range: args.build_uid_range,
        lock_dir: args.uid_lock_dir,
        read_only: args.sandbox_ro,
        network: args.network,
        limits: slug_build::sandbox::Limits {
            memory: args.memory,
            pids: args.pids_limit,
            disk: args.disk_limit,
        },
    };
    Ok(BuildConfig {
        source,
        output,
        put_url: args.put_url.filter(|u| !u.is_empty()).map(SecretUrl::new),
        cache_url: cache.url.map(SecretUrl::new),
        cache_put_url: args
            .cache_put_url
            .filter(|u| !u.is_empty())
            .map(SecretUrl::new),
        explicit_buildpacks: args.buildpacks,
        buildpacks_env: std::env::var("BUILDPACKS").ok(),
        buildpacks_dir: args.buildpacks_dir,
        bundled: Some(Bundled(BUNDLED_BUILDPACKS)),
        allow_local_buildpacks: args.allow_local_buildpacks,
        cache_dir: cache.dir,
        env_dir: args.env_dir,
        env_vars: args.env_vars,
        pass_env: passed_env(&args.pass_env),
        stack: args.stack,
        source_version: args.source_version.filter(|s| !s.is_empty()),
        request_id,
        app_dir: args.app_dir,
        path: std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        source_date_epoch: args.source_date_epoch,
        compression_level: args.compression_level,
        tmp_dir: args.work_dir,
        workspace: args.workspace,
        sandbox,
        limits: slug_shared::archive::Limits {
            max_bytes: args.max_unpacked_bytes,
            max_entries: args.max_entries,
            ..Default::default()
        },
        allow_truncated_source: args.allow_truncated_source,
        slug_size_warning: args.slug_size_warning,
        max_slug_size: args.max_slug_size,
    })
}

/// Where the app's source comes from: --source (`-` is stdin, a directory
/// or a tar file), else the source URL, else stdin.
fn source_input(source: Option<PathBuf>, url: Option<String>) -> SourceInput {
    match (source, url) {
        (None, Some(url)) => SourceInput::Url(SecretUrl::new(url)),
        (None, None) => SourceInput::Stdin,
        (Some(p), _) if p.as_os_str() == "-" => SourceInput::Stdin,
        (Some(p), _) if p.is_dir() => SourceInput::Dir(p),
        (Some(p), _) => SourceInput::File(p),
    }
}

/// Where the slug goes: -o FILE (`-` is stdout); without -o, nowhere when
/// it is uploaded, else stdout.
fn slug_output(output: Option<PathBuf>, uploaded: bool) -> SlugOutput {
    match output {
        Some(p) if p.as_os_str() != "-" => SlugOutput::File(p),
        Some(_) => SlugOutput::Stdout,
        None if uploaded => SlugOutput::Nowhere,
        None => SlugOutput::Stdout,
    }
}

/// The request id given, or a new one, which the report then carries.
fn request_id(given: Option<String>, recorder: &Recorder) -> String {
    match given {
        Some(id) => id,
        None => {
            let id = build::new_request_id();
            recorder.update(|r| r.request_id.clone_from(&id));
            id
        }
    }
}

/// The variables of slugbuilder's own environment named by --pass-env
/// (those that are set).
fn passed_env(names: &[String]) -> Vec<(OsString, OsString)> {
    names
        .iter()
        .filter_map(|name| std::env::var_os(name).map(|v| (OsString::from(name), v)))
        .collect()
}

/// The operator's fixed build user, if named (only meaningful as root).
fn build_user(spec: Option<&str>) -> anyhow::Result<Option<(u32, u32)>> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    let user = slug_shared::user::parse_user_spec(spec).map_err(|e| {
        BuildError::BadInput(format!(
            "--build-user: {}",
            slug_shared::log::error_line(&e)
        ))
    })?;
    Ok(Some((user.uid, user.gid)))
}

/// How long the build may take to clean up after SIGTERM (or its time
/// limit) before the process ends anyway: within the 2 seconds promised.
const STOP_GRACE: Duration = Duration::from_millis(1500);

/// SIGTERM, SIGINT and SIGHUP end the build, and so does its time limit:
/// the running buildpack step is killed at once and the build stops at its
/// next check, exiting 17 (interrupted) or 16 (timed out). Should it not
/// be done within [`STOP_GRACE`] (blocked on a pipe, say), or on a second
/// signal, this thread cleans up (workspace, half-written slug) and exits
/// itself.
///
/// Handlers, not a blocked mask plus sigwait: a blocked mask would be
/// inherited by buildpack processes, which could then not be stopped by
/// their own `timeout` or Ctrl-C. Handlers are reset to the default on
/// exec, so children start clean.
fn guard(cancel: Arc<Cancel>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut streams = runtime.block_on(async {
        Ok::<_, std::io::Error>([
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::hangup())?,
        ])
    })?;
    let deadline = tokio::time::Instant::from_std(cancel.deadline());
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                let [term, int, hup] = &mut streams;
                let stop = tokio::select! {
                    _ = term.recv() => Stop::Interrupted(Signal::SIGTERM),
                    _ = int.recv() => Stop::Interrupted(Signal::SIGINT),
                    _ = hup.recv() => Stop::Interrupted(Signal::SIGHUP),
                    _ = tokio::time::sleep_until(deadline) => Stop::TimedOut,
                };
                match stop {
                    Stop::Interrupted(sig) => slug_shared::log::line(format_args!(
                        "slugbuilder: received {sig}, stopping the build"
                    )),
                    Stop::TimedOut => slug_shared::log::line(format_args!(
                        "slugbuilder: the build's time limit is reached, stopping it"
                    )),
                }
                cancel.trigger(stop);
                let again = tokio::select! {
                    _ = term.recv() => Some(Signal::SIGTERM),
                    _ = int.recv() => Some(Signal::SIGINT),
                    _ = hup.recv() => Some(Signal::SIGHUP),
                    _ = tokio::time::sleep(STOP_GRACE) => None,
                };
                match again {
                    Some(sig) => slug_shared::log::line(format_args!(
                        "slugbuilder: {sig} again, exiting now"
                    )),
                    None => {
                        slug_shared::log::line(format_args!("slugbuilder: {}; exiting now", stop))
                    }
                }
                cancel.emergency();
                std::process::exit(stop.exit().code().into());
            })
        })?;
    Ok(())
}

/// The check of docs/cli.md against these definitions, shared with the
/// other binary.
#[cfg(test)]
#[path = "../../tests/src/cli_docs.rs"]
mod cli_docs;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Args::command().debug_assert();
    }

    /// Registry credentials: the auth files `slug_image::auth` looks for.
    const AUTH: [&str; 5] = [
        "REGISTRY_AUTH_FILE",
        "XDG_RUNTIME_DIR",
        "XDG_CONFIG_HOME",
        "DOCKER_CONFIG",
        "HOME",
    ];

    #[test]
    fn docs_cli_md_lists_every_flag_and_variable_and_no_other() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cli.md"))
            .expect("docs/cli.md");
        // Read by slugbuilder itself, not through clap: BUILDPACKS, TAR_URL,
        // TRACE and DEBUG in this file, SLUG_LOG by slug_shared::logging, TMPDIR
        // by std::env::temp_dir (the default --work-dir).
        let builder: Vec<&str> = [
            "BUILDPACKS",
            "TAR_URL",
            "TRACE",
            "DEBUG",
            "SLUG_LOG",
            "TMPDIR",
        ]
        .into_iter()
        .chain(AUTH)
        .collect();
        let subcommand: Vec<&str> = ["SLUG_LOG", "TMPDIR"].into_iter().chain(AUTH).collect();
        let problems = super::cli_docs::check(
            &doc,
            &Args::command(),
            &[
                ("slugbuilder", &builder),
                ("slugbuilder image", &subcommand),
                ("slugbuilder rebase", &subcommand),
            ],
        );
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn help_ends_with_the_exit_code_table() {
        // Words only: clap wraps long lines to the terminal.
        let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let help = words(&Args::command().render_long_help().to_string());
        for (exit, meaning) in Exit::of(Binary::Slugbuilder) {
            let line = words(&format!("{} {meaning}", exit.code()));
            assert!(help.contains(&line), "no {line:?} in:\n{help}");
        }
    }
}
