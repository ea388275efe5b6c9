//! slugrunner: run a process of a Heroku-style slug as a dyno would.
//!
//! Thin wiring of `common`: CLI and logging here; slug install, dyno
//! environment, privileges and supervision live in `common::{runtime, user,
//! supervise, fetch}`.

mod cli;

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use common::archive::{Limits, UnpackOptions};
use common::exit::Exit;
use common::http::HttpOptions;
use common::runtime::{self, EnvSources, Launch, ProcessSpec, RuntimeError, SlugSource};
use common::supervise::{self, SuperviseError, SuperviseOptions};
use common::user::{self, UserError};

use cli::{Args, Cmd};

fn main() -> ExitCode {
    // The supervisor starts the app through this binary, which drops to the
    // app user and execs it.
    if let Some(code) = user::dispatch_exec_as() {
        return code;
    }
    match run() {
        Ok(code) => code,
        Err(err) => {
            common::log::line(format_args!(
                "slugrunner: {}",
                common::log::error_line(err.chain())
            ));
            exit_for(&err).into()
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    init_logging(args.verbose);

    // Everything that can be checked without the slug is checked first: a
    // bad name or a typo in an env file should not cost a download.
    if let Cmd::Start { process_type } = &args.command {
        runtime::check_process_type(process_type)?;
    }
    let explicit_vars = explicit_config_vars(&args)?;

    // Who runs the app is decided before unpacking, so that files are
    // created with the right owner.
    let run_user = user::resolve_run_user(args.user.as_deref(), &args.app_dir)?;
    let owner = (user::RunUser::current().is_root() && !run_user.is_root())
        .then_some((run_user.uid, run_user.gid));
    tracing::info!(user = %run_user.name, uid = run_user.uid, gid = run_user.gid, "run user");

    let unpack = UnpackOptions {
        owner,
        limits: Limits {
            max_bytes: args.max_unpacked_bytes,
            max_entries: args.max_entries,
            ..Limits::default()
        },
        ..UnpackOptions::default()
    };
    let download = HttpOptions {
        what: "SLUG_URL",
        deadline: Some(std::time::Instant::now() + args.download_timeout),
        ..HttpOptions::default()
    };
    if let Some(summary) =
        runtime::install_slug(&slug_source(&args), &args.app_dir, &unpack, &download)?
    {
        tracing::info!(
            entries = summary.entries,
            bytes = summary.bytes,
            "slug unpacked into {}",
            args.app_dir.display()
        );
    }
    let app_dir = std::fs::canonicalize(&args.app_dir)
        .with_context(|| format!("cannot resolve the app dir {}", args.app_dir.display()))?;

    let release = runtime::load_release(&app_dir)?;
    let (launch, dyno) = match &args.command {
        Cmd::Start { process_type } => {
            let types = runtime::load_process_types(&app_dir, &release)?;
            let command = runtime::find_process_type(&types, process_type)?.to_string();
            tracing::info!("starting {process_type}: {command}");
            (Launch::Start { command }, format!("{process_type}.1"))
        }
        Cmd::Exec { argv } | Cmd::External(argv) => (
            Launch::Exec { argv: argv.clone() },
            runtime::ONE_OFF_DYNO.to_string(),
        ),
        Cmd::Bash => (Launch::Shell, runtime::ONE_OFF_DYNO.to_string()),
    };
    let sources = EnvSources {
        explicit: explicit_vars,
        release_defaults: release.config_vars,
    };
    let env = runtime::dyno_env(std::env::vars_os(), &sources, &app_dir, &dyno);
    let spec = ProcessSpec::launcher(&launch, &app_dir, env);

    let pid1 = nix::unistd::getpid().as_raw() == 1;
    if args.init || pid1 {
        // The supervisor keeps its rights: the app cannot kill or trace it.
        let current = user::RunUser::current();
        let run_as = (current.uid != run_user.uid || current.gid != run_user.gid)
            .then_some((run_user.uid, run_user.gid));
        if run_as.is_some() && !current.is_root() {
            user::drop_privileges(&run_user)?;
        }
        let opts = SuperviseOptions {
            grace: args.grace_period,
            subreaper: !pid1,
            run_as: run_as.filter(|_| current.is_root()),
            helper: Some(std::path::PathBuf::from("/proc/self/exe")),
        };
        let exit = supervise::supervise(&spec, &opts)?;
        tracing::info!(?exit, "process ended");
        Ok(ExitCode::from(exit.exit_code()))
    } else {
        user::drop_privileges(&run_user)?;
        // Nothing stands between the platform and the app.
        let source = spec.command().exec();
        Err(SuperviseError::Spawn {
            program: spec.program.display().to_string(),
            source,
        }
        .into())
    }
}

/// `--env-file`s in order, then `--env-dir`: later ones win.
fn explicit_config_vars(args: &Args) -> anyhow::Result<Vec<(String, OsString)>> {
    let mut vars = Vec::new();
    for path in &args.env_file {
        vars.extend(runtime::read_env_file(path)?);
    }
    if let Some(dir) = &args.env_dir {
        vars.extend(runtime::read_env_dir(dir)?);
    }
    Ok(vars)
}

/// --slug wins over SLUG_URL; with neither the app dir is used as it is.
fn slug_source(args: &Args) -> SlugSource {
    match (&args.slug, &args.slug_url) {
        (Some(path), _) if path.as_os_str() == "-" => SlugSource::Stdin,
        (Some(path), _) => SlugSource::File(path.clone()),
        (None, Some(url)) if !url.is_empty() => SlugSource::Url(url.clone()),
        (None, _) => SlugSource::AppDir,
    }
}

/// The documented exit code for a failure (see `common::exit`).
fn exit_for(err: &anyhow::Error) -> Exit {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<RuntimeError>() {
            return match e {
                RuntimeError::UnknownProcessType { .. }
                | RuntimeError::InvalidProcessType { .. } => Exit::UnknownProcessType,
                RuntimeError::Fetch(_) => Exit::SlugFetch,
                RuntimeError::AppDir { .. } => Exit::Internal,
                _ => Exit::BadInput,
            };
        }
        if let Some(e) = cause.downcast_ref::<UserError>() {
            return match e {
                UserError::Drop { .. } => Exit::SpawnFailed,
                UserError::Lookup { .. } => Exit::Internal,
                _ => Exit::Usage,
            };
        }
        if let Some(e) = cause.downcast_ref::<SuperviseError>() {
            return match e {
                SuperviseError::Spawn { .. } => Exit::SpawnFailed,
                _ => Exit::Internal,
            };
        }
    }
    Exit::Internal
}

/// Logs go to stderr (stdout belongs to the app): warnings by default, more
/// with -v, or whatever SLUG_LOG says.
fn init_logging(verbose: u8) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("SLUG_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .without_time()
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
