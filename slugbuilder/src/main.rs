//! slugbuilder: turn an app's source (a tar on stdin) into a Heroku slug by
//! running classic buildpacks.
//!
//! `git archive HEAD | slugbuilder > slug.tgz`. The slug goes to stdout (or
//! `-o FILE`); the build log goes to stderr. The work is done by
//! `common::build`; this binary turns flags into a checked [`BuildConfig`],
//! sets up logging and signals, and maps failures to exit codes.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, Parser};
use common::build::{self, BuildConfig, BuildError, SlugOutput, SourceInput};
use common::child::Interrupt;
use common::exit::Exit;
use nix::sys::signal::Signal;

/// The bundled buildpacks, packed at compile time by build.rs.
static BUNDLED_BUILDPACKS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/buildpacks.tar"));

/// Build a Heroku-style slug from app source, using classic buildpacks.
///
/// Reads the app source as a tar (plain or gzip) on stdin, unless --source is
/// given; writes the slug (a gzip tar) to stdout, unless -o is given. The build
/// log goes to stderr. Nothing is written to the slug destination unless the
/// whole build succeeds.
///
/// Exit codes: 0 ok, 1 internal error, 2 usage, 10 bad input, 11 no buildpack
/// applies, 12 buildpack fetch failed, 13 compile failed, 14 release output
/// invalid, 15 packing failed, 16 build timed out, 17 interrupted.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// App source: a tar file (plain or gzip) or a directory. Default: stdin.
    #[arg(short, long, value_name = "FILE|DIR")]
    source: Option<PathBuf>,

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

    /// Where the app will live at run time (APP_DIR for buildpacks).
    #[arg(long, value_name = "PATH", default_value = "/app")]
    app_dir: String,

    /// Clamp file times in the slug to this Unix time. Default: the newest
    /// mtime in the source archive, so equal sources give equal slugs.
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

    /// When slugbuilder runs as root, run buildpack code as this user
    /// (USER[:GROUP] or UID[:GID]). Default: `slug` if that user exists, else
    /// `nobody`. `root` keeps buildpacks running as root (not recommended).
    #[arg(long, env = "SLUGBUILDER_BUILD_USER", value_name = "USER")]
    build_user: Option<String>,

    /// Fail the build when the compressed slug exceeds this many bytes.
    #[arg(long, default_value_t = build::DEFAULT_MAX_SLUG_SIZE, value_name = "BYTES")]
    max_slug_size: u64,

    /// Warn when the compressed slug exceeds this many bytes.
    #[arg(long, default_value_t = build::DEFAULT_SLUG_SIZE_WARNING, value_name = "BYTES")]
    slug_size_warning: u64,

    /// Refuse a source archive that unpacks to more than this many bytes.
    #[arg(long, default_value_t = common::archive::DEFAULT_MAX_BYTES, value_name = "BYTES")]
    max_unpacked_bytes: u64,

    /// Refuse a source archive with more entries than this.
    #[arg(long, default_value_t = common::archive::Limits::default().max_entries, value_name = "N")]
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
    let args = Args::parse();
    init_logging(args.verbose);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("slugbuilder: {}", common::log::error_line(err.chain()));
            let exit = err
                .downcast_ref::<BuildError>()
                .map_or(Exit::Internal, BuildError::exit);
            exit.into()
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 if std::env::var_os("TRACE").is_some() || std::env::var_os("DEBUG").is_some() => "debug",
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = std::env::var("SLUG_LOG").unwrap_or_else(|_| default.to_string());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_target(false)
        .init();
}

fn run(args: Args) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if args.source.is_none() && std::io::stdin().is_terminal() {
        return Err(BuildError::BadInput(
            "no source: pipe a tar to stdin (git archive HEAD | slugbuilder) or use --source"
                .into(),
        )
        .into());
    }
    if args.output.is_none() && std::io::stdout().is_terminal() {
        return Err(BuildError::BadInput(
            "refusing to write a slug to a terminal: redirect stdout or use -o FILE".into(),
        )
        .into());
    }
    let interrupt = Interrupt::new();
    watch_signals(Arc::clone(&interrupt)).context("installing signal handling")?;

    // The bundled buildpacks are written out only when they are needed.
    let bundled_tmp = tempfile::Builder::new()
        .prefix("slugbuilder-buildpacks-")
        .tempdir()
        .context("creating a directory for the bundled buildpacks")?;
    common::archive::unpack(
        std::io::Cursor::new(BUNDLED_BUILDPACKS),
        bundled_tmp.path(),
        &Default::default(),
    )
    .context("writing out the bundled buildpacks")?;
    let bundled = bundled_tmp.path().to_path_buf();
    // Readable by an unprivileged build user too.
    std::fs::set_permissions(
        &bundled,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .context("opening up the bundled buildpacks directory")?;

    let cfg = BuildConfig {
        source: match args.source {
            None => SourceInput::Stdin,
            Some(p) if p.as_os_str() == "-" => SourceInput::Stdin,
            Some(p) if p.is_dir() => SourceInput::Dir(p),
            Some(p) => SourceInput::File(p),
        },
        output: match args.output {
            Some(p) if p.as_os_str() != "-" => SlugOutput::File(p),
            _ => SlugOutput::Stdout,
        },
        explicit_buildpacks: args.buildpacks,
        buildpacks_env: std::env::var("BUILDPACKS").ok(),
        buildpacks_dir: args.buildpacks_dir.unwrap_or_else(|| bundled.clone()),
        bundled_dir: Some(bundled),
        cache_dir: args.cache_dir,
        env_dir: args.env_dir,
        env_vars: args.env_vars,
        pass_env: args
            .pass_env
            .iter()
            .filter_map(|name| std::env::var_os(name).map(|v| (OsString::from(name), v)))
            .collect(),
        stack: args.stack,
        source_version: args.source_version.filter(|s| !s.is_empty()),
        request_id: args.request_id.unwrap_or_else(build::new_request_id),
        app_dir: args.app_dir,
        path: std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        source_date_epoch: args.source_date_epoch,
        compression_level: args.compression_level,
        timeout: Duration::from_secs(args.timeout),
        tmp_dir: args.work_dir,
        build_user: build_user(args.build_user.as_deref())?,
        limits: common::archive::Limits {
            max_bytes: args.max_unpacked_bytes,
            max_entries: args.max_entries,
            ..Default::default()
        },
        slug_size_warning: args.slug_size_warning,
        max_slug_size: args.max_slug_size,
    };
    tracing::debug!(?cfg, "build configuration");
    build::build(&cfg, interrupt)?;
    Ok(())
}

/// Who runs buildpack code: nobody changes unless we are root, and then
/// never root unless asked for by name.
fn build_user(spec: Option<&str>) -> anyhow::Result<Option<(u32, u32)>> {
    use common::user::{parse_user_spec, NOBODY_ID, SLUG_USER};
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    let user = match spec {
        Some(spec) => {
            parse_user_spec(spec).map_err(|e| BuildError::BadInput(format!("--build-user: {e}")))?
        }
        None => parse_user_spec(SLUG_USER)
            .or_else(|_| parse_user_spec("nobody"))
            .unwrap_or(common::user::RunUser {
                uid: NOBODY_ID,
                gid: NOBODY_ID,
                name: "nobody".into(),
            }),
    };
    if user.uid == 0 {
        return Ok(None);
    }
    tracing::info!(user = %user.name, uid = user.uid, gid = user.gid, "buildpacks run unprivileged");
    Ok(Some((user.uid, user.gid)))
}

/// SIGTERM, SIGINT and SIGHUP end the build: the running buildpack's whole
/// process group is killed and the build fails with exit code 17. A second
/// signal exits at once.
///
/// Handlers, not a blocked mask plus sigwait: a blocked mask would be
/// inherited by buildpack processes (std's spawn keeps it), which could then
/// not be stopped by their own `timeout` or Ctrl-C. Handlers are reset to
/// the default on exec, so children start clean.
fn watch_signals(interrupt: Arc<Interrupt>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut streams = runtime.block_on(async {
        Ok::<_, std::io::Error>([
            (signal(SignalKind::terminate())?, Signal::SIGTERM),
            (signal(SignalKind::interrupt())?, Signal::SIGINT),
            (signal(SignalKind::hangup())?, Signal::SIGHUP),
        ])
    })?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let mut seen = false;
            loop {
                let [(term, _), (int, _), (hup, _)] = &mut streams;
                let sig = tokio::select! {
                    _ = term.recv() => Signal::SIGTERM,
                    _ = int.recv() => Signal::SIGINT,
                    _ = hup.recv() => Signal::SIGHUP,
                };
                if seen {
                    eprintln!("slugbuilder: {sig} again, exiting now");
                    std::process::exit(Exit::Interrupted.code().into());
                }
                seen = true;
                eprintln!("slugbuilder: received {sig}, stopping the build");
                interrupt.trigger(sig);
            }
        })
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Args::command().debug_assert();
    }
}
