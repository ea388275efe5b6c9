//! How the app itself is started: the last steps between slugrunner and
//! the app's `execve`. The privilege drop, then a container process's fresh
//! context (keyrings, `no_new_privs`, descriptors, seccomp), then the exec
//! ([`exec_app`]); and the exec-as mode ([`EXEC_AS_ARG`]) in which the
//! supervisor re-runs slugrunner to do that for the app it supervises.

use std::path::Path;

use slug_shared::user::{drop_privileges, RunUser, UserError};

/// First argument of the exec-as mode: `BIN __exec-as FD UID GID PROGRAM
/// ARGV0 ARGS...` reads the app's environment from descriptor FD (a pipe,
/// as [`slug_shared::isolate::encode_env`] data), drops to UID:GID for good and
/// execs PROGRAM with that environment in a fresh process context (see
/// [`exec_app`]). The supervisor starts the app this way, so that
/// it keeps its own rights while the app runs unprivileged. The helper
/// itself is started with an empty environment: it runs as root until the
/// drop, and ld.so and libc act on variables such as `LD_PRELOAD` a slug's
/// `.release` may set.
pub const EXEC_AS_ARG: &str = "__exec-as";

/// The helper's arguments after the program name, for the supervisor.
pub fn exec_as_args(env_fd: i32, user: (u32, u32)) -> [String; 4] {
    [
        EXEC_AS_ARG.to_string(),
        env_fd.to_string(),
        user.0.to_string(),
        user.1.to_string(),
    ]
}

/// If this process was started in the exec-as mode, do it (never returns
/// on success); `None` for a normal start. Call it first thing in `main`.
pub fn dispatch_exec_as() -> Option<std::process::ExitCode> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).map(|a| a.as_os_str()) != Some(std::ffi::OsStr::new(EXEC_AS_ARG)) {
        return None;
    }
    let fail = |what: String| {
        slug_shared::log::line(format_args!("slugrunner: {what}"));
        Some(std::process::ExitCode::from(
            slug_shared::exit::Exit::SpawnFailed.code(),
        ))
    };
    let num = |i: usize| {
        args.get(i)
            .and_then(|a| a.to_str())
            .and_then(|a| a.parse::<u32>().ok())
    };
    let (Some(fd), Some(uid), Some(gid), Some(program), Some(argv0)) =
        (num(2), num(3), num(4), args.get(5), args.get(6))
    else {
        return fail(format!(
            "{EXEC_AS_ARG}: expected FD UID GID PROGRAM ARGV0 ARGS..."
        ));
    };
    let env = match i32::try_from(fd)
        .map_err(std::io::Error::other)
        .and_then(slug_shared::isolate::read_handoff)
    {
        Ok(data) => slug_shared::isolate::decode_env(&data),
        Err(e) => return fail(format!("reading the app's environment: {e}")),
    };
    let user = RunUser {
        uid,
        gid,
        name: uid.to_string(),
    };
    let app = AppExec {
        program: program.as_ref(),
        argv0,
        args: &args[7..],
        env: &env,
        // The supervisor moved there before starting us.
        cwd: Path::new("."),
    };
    let err = exec_app(&user, true, &app);
    fail(slug_shared::log::error_line(&err))
}

/// The app's final `execve`: what it runs and the environment it gets.
#[derive(Debug, Clone, Copy)]
pub struct AppExec<'a> {
    pub program: &'a Path,
    pub argv0: &'a std::ffi::OsStr,
    pub args: &'a [std::ffi::OsString],
    pub env: &'a [(std::ffi::OsString, std::ffi::OsString)],
    pub cwd: &'a Path,
}

/// Why the app could not be started.
#[derive(Debug, thiserror::Error)]
pub enum AppExecError {
    #[error(transparent)]
    Drop(#[from] UserError),
    #[error("cannot give the app a fresh process context: {0}")]
    Context(String),
    #[error("cannot start {program}")]
    Exec {
        program: String,
        source: std::io::Error,
    },
}

/// Become `user` and exec `app` (returns only on failure). With `fresh`
/// (the app runs as another user than the one who started slugrunner), it
/// first gets the fresh process context of a container
/// process, in runc's order: the drop, a new session keyring and emptied
/// user keyrings (joined as the app's uid, so that they are its own),
/// `no_new_privs`, descriptors beyond 0-2 closed at exec, and the default
/// seccomp filter last. The session of its own (unless the terminal is
/// kept for interactive use) is the caller's to make before: the supervisor starts the helper in a
/// new session, the plain exec path calls `setsid` itself.
pub fn exec_app(user: &RunUser, fresh: bool, app: &AppExec<'_>) -> AppExecError {
    use std::os::unix::process::CommandExt;
    let ctx_err =
        |what: &str, e: &dyn std::fmt::Display| AppExecError::Context(format!("{what}: {e}"));
    if let Err(e) = drop_privileges(user) {
        return e.into();
    }
    if fresh {
        if let Err(e) = slug_shared::isolate::join_new_session_keyring() {
            return ctx_err("joining a new session keyring", &e);
        }
        slug_shared::isolate::clear_user_keyrings();
        if let Err(e) = nix::sys::prctl::set_no_new_privs() {
            return ctx_err("prctl(PR_SET_NO_NEW_PRIVS)", &e);
        }
        slug_shared::isolate::cloexec_inherited_fds();
        if let Err(e) = slug_shared::isolate::apply_seccomp() {
            return AppExecError::Context(e);
        }
    }
    // slugrunner blocks its stop signals from the start (they go to its
    // guard until the app runs); a blocked mask survives execve, and the
    // app must get them.
    if let Err(e) = nix::sys::signal::SigSet::empty().thread_set_mask() {
        return ctx_err("unblocking signals", &e);
    }
    let source = std::process::Command::new(app.program)
        .arg0(app.argv0)
        .args(app.args)
        .env_clear()
        .envs(app.env.iter().map(|(k, v)| (k, v)))
        .current_dir(app.cwd)
        .exec();
    AppExecError::Exec {
        program: app.program.display().to_string(),
        source,
    }
}
