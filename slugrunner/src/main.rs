//! slugrunner: run a process of a Heroku-style slug as a dyno would.
//!
//! Thin wiring of the run side: CLI, logging and the choice of exit code
//! here; slug install and the dyno environment (`slug_run::runtime`),
//! supervision (`slug_run::supervise`) and the app's start
//! (`slug_run::exec_as`) live in `common/run`, on the shared ground
//! (`slug_shared`).

mod cli;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use slug_run::exec_as::{self, AppExecError};
use slug_run::runtime::{self, EnvSources, Launch, ProcessSpec, RuntimeError, SlugSource};
use slug_run::supervise::{self, SuperviseError, SuperviseOptions};
use slug_shared::archive::{Limits, UnpackOptions};
use slug_shared::cancel::{Cancel, SignalGuard, Stop};
use slug_shared::exit::Exit;
use slug_shared::http::HttpOptions;
use slug_shared::user::{self, UserError};

use cli::{Args, Cmd};

fn main() -> ExitCode {
    // The supervisor starts the app through this binary, which drops to the
    // app user and execs it.
    if let Some(code) = exec_as::dispatch_exec_as() {
        return code;
    }
    // Blocked before any thread exists, so that every thread inherits the
    // mask: the stop signals go to the guard until the app runs, then to
    // the supervisor's signalfd (or to the app: the plain path unblocks
    // them just before its execve, which would keep the mask).
    // As PID 1 a signal without a handler would be dropped instead.
    if let Err(e) = supervise::blocked_signals().thread_block() {
        slug_shared::log::line(format_args!("slugrunner: cannot block signals: {e}"));
        return Exit::Internal.into();
    }
    match run() {
        Ok(code) => code,
        Err(err) => {
            let _last = LAST_WORD.lock();
            slug_shared::log::line(format_args!(
                "slugrunner: {}",
                slug_shared::log::error_line(err.as_ref())
            ));
            exit_for(&err).into()
        }
    }
}

/// Held by whoever prints slugrunner's last line and ends it: the main
/// thread or the signal guard, never both.
static LAST_WORD: Mutex<()> = Mutex::new(());

/// What slugrunner is doing before the app runs, for the line that says
/// where a signal stopped it.
static PHASE: Mutex<&str> = Mutex::new("starting");

fn set_phase(what: &'static str) {
    *PHASE.lock().unwrap_or_else(|e| e.into_inner()) = what;
}

/// End slugrunner, stopped by `stop` before the app ran: exit 128+N for
/// signal N (143 for SIGTERM, 130 for SIGINT), as a shell would report it.
fn stopped(stop: Stop) -> ! {
    let _last = LAST_WORD.lock();
    let phase = *PHASE.lock().unwrap_or_else(|e| e.into_inner());
    let (code, why) = match stop {
        Stop::Interrupted(sig) => (128 + sig as i32, format!("stopped by {sig}")),
        Stop::TimedOut => (Exit::Download.code().into(), stop.to_string()),
    };
    slug_shared::log::line(format_args!("slugrunner: {why} while {phase}"));
    std::process::exit(code)
}

/// Exit at once when a stop signal has arrived.
fn check_signals(cancel: &Cancel) {
    if let Some(stop @ Stop::Interrupted(_)) = cancel.stopped() {
        stopped(stop);
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    slug_shared::logging::init(slug_shared::logging::level_for(args.verbose), "SLUG_LOG");

    // SIGTERM, SIGINT and SIGHUP stop every phase before the app runs
    // within a second: the work in progress notices the cancel; should it
    // not (a connection stuck), the guard cleans up and exits itself.
    let install_deadline = match slug_source(&args) {
        SlugSource::Url(_) => args.download_timeout + Duration::from_secs(1),
        _ => Duration::MAX,
    };
    let cancel = Cancel::new(install_deadline);
    let guard = SignalGuard::start(Arc::clone(&cancel), STOP_GRACE, |stop| stopped(stop))
        .context("installing signal handling")?;
    set_phase("checking the command line");

    // Everything that can be checked without the slug is checked first: a
    // bad name or a typo in an env file should not cost a download.
    if let Cmd::Start { process_type } = &args.command {
        runtime::check_process_type(process_type)?;
    }
    let explicit_vars = explicit_config_vars(&args)?;

    // Who runs the app is decided before unpacking, so that files are
    // created with the right owner.
    let run_user = user::resolve_run_user(args.user.as_deref(), &args.app_dir)?;
    let current = user::RunUser::current();
    let owner = (current.is_root() && !run_user.is_root()).then_some((run_user.uid, run_user.gid));
    tracing::info!(user = %run_user.name, uid = run_user.uid, gid = run_user.gid, "run user");

    install(&args, owner, &cancel)?;
    set_phase("reading the slug's .release and Procfile");
    let app_dir = std::fs::canonicalize(&args.app_dir)
        .with_context(|| format!("cannot resolve the app dir {}", args.app_dir.display()))?;

    let release = runtime::load_release(&app_dir)?;
    let (launch, dyno) = what_to_launch(&args.command, &app_dir, &release)?;
    set_phase("preparing the app's environment");
    let sources = EnvSources {
        explicit: explicit_vars,
        release_defaults: release.config_vars,
    };
    let env = runtime::dyno_env(std::env::vars_os(), &sources, &app_dir, &dyno);
    let spec = ProcessSpec::launcher(&launch, &app_dir, env);

    // From here on signals are the app's: pending ones reach it.
    guard.stop();
    check_signals(&cancel);
    let pid1 = nix::unistd::getpid().as_raw() == 1;
    let users = Users { run_user, current };
    // An interactive shell keeps the terminal: asked for, or the one a
    // container runtime gave its PID 1 (`docker run -t`).
    let keep_terminal = args.tty || (pid1 && std::io::stdin().is_terminal());
    if args.init || pid1 {
        supervised(&spec, &users, &args, pid1, keep_terminal)
    } else {
        Err(exec_directly(&spec, &users, keep_terminal))
    }
}

/// Install the slug into the app dir (downloaded, unpacked, or the app dir
/// as it is), its files owned by `owner`.
fn install(args: &Args, owner: Option<(u32, u32)>, cancel: &Arc<Cancel>) -> anyhow::Result<()> {
    let unpack = UnpackOptions {
        owner,
        limits: Limits {
            max_bytes: args.max_unpacked_bytes,
            max_entries: args.max_entries,
            ..Limits::default()
        },
        cancel: Some(Arc::clone(cancel)),
        ..UnpackOptions::default()
    };
    let download = HttpOptions {
        what: "SLUG_URL",
        deadline: Some(std::time::Instant::now() + args.download_timeout),
        cancel: Some(Arc::clone(cancel)),
        ..HttpOptions::default()
    };
    let installed = runtime::install_slug(
        &slug_source(args),
        &args.app_dir,
        &unpack,
        &download,
        &set_phase,
    );
    check_signals(cancel);
    if let Some(summary) = installed? {
        tracing::info!(
            entries = summary.entries,
            bytes = summary.bytes,
            "slug unpacked into {}",
            args.app_dir.display()
        );
    }
    Ok(())
}

/// What the command line asks to run, and the dyno name it runs as.
fn what_to_launch(
    command: &Cmd,
    app_dir: &std::path::Path,
    release: &slug_shared::release::Release,
) -> anyhow::Result<(Launch, String)> {
    Ok(match command {
        Cmd::Start { process_type } => {
            let types = runtime::load_process_types(app_dir, release)?;
            let command = runtime::find_process_type(&types, process_type)?.to_string();
            tracing::info!("starting {process_type}: {command}");
            (Launch::Start { command }, format!("{process_type}.1"))
        }
        Cmd::Exec { argv } | Cmd::External(argv) => (
            Launch::Exec { argv: argv.clone() },
            runtime::ONE_OFF_DYNO.to_string(),
        ),
        Cmd::Bash => (Launch::Shell, runtime::ONE_OFF_DYNO.to_string()),
    })
}

/// Who runs the app, and who slugrunner runs as.
struct Users {
    run_user: user::RunUser,
    current: user::RunUser,
}

impl Users {
    fn changes_user(&self) -> bool {
        self.current.uid != self.run_user.uid || self.current.gid != self.run_user.gid
    }
}

/// Run the app under slugrunner's supervisor (`--init`, or as PID 1) and
/// exit as it did.
fn supervised(
    spec: &ProcessSpec,
    users: &Users,
    args: &Args,
    pid1: bool,
    keep_terminal: bool,
) -> anyhow::Result<ExitCode> {
    let Users { run_user, current } = users;
    // The supervisor keeps its rights: the app cannot kill or trace it.
    let run_as = users.changes_user().then_some((run_user.uid, run_user.gid));
    if run_as.is_some() && !current.is_root() {
        user::drop_privileges(run_user)?;
    }
    let opts = SuperviseOptions {
        grace: args.grace_period,
        subreaper: !pid1,
        run_as: run_as.filter(|_| current.is_root()),
        helper: Some(std::path::PathBuf::from("/proc/self/exe")),
        keep_terminal,
    };
    let exit = supervise::supervise(spec, &opts)?;
    tracing::info!(?exit, "process ended");
    Ok(ExitCode::from(exit.exit_code()))
}

/// Become the app: nothing stands between the platform and it. Returns
/// only when that failed.
fn exec_directly(spec: &ProcessSpec, users: &Users, keep_terminal: bool) -> anyhow::Error {
    let fresh = users.changes_user() && users.current.is_root();
    if fresh && !keep_terminal {
        if let Err(e) = slug_shared::isolate::new_session() {
            // Only a process group leader cannot (a job of an
            // interactive shell): the seccomp filter still refuses
            // TIOCSTI; --init gives the app a session of its own.
            tracing::info!("the app stays in slugrunner's session (setsid: {e})");
        }
    }
    let env: Vec<_> = spec.env.clone().into_iter().collect();
    let arg0 = spec.arg0();
    let app = exec_as::AppExec {
        program: &spec.program,
        argv0: &arg0,
        args: &spec.args,
        env: &env,
        cwd: &spec.cwd,
    };
    exec_as::exec_app(&users.run_user, fresh, &app).into()
}

/// How long the work in progress has to notice a stop signal before the
/// guard ends slugrunner itself: well within the second promised.
const STOP_GRACE: Duration = Duration::from_millis(600);

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

/// The documented exit code for a failure (see `slug_shared::exit`).
fn exit_for(err: &anyhow::Error) -> Exit {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<RuntimeError>() {
            return match e {
                RuntimeError::UnknownProcessType { .. }
                | RuntimeError::InvalidProcessType { .. } => Exit::UnknownProcessType,
                RuntimeError::Fetch(_) => Exit::Download,
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
        if cause.downcast_ref::<AppExecError>().is_some() {
            return Exit::SpawnFailed;
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
