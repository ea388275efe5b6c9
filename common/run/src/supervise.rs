//! slugrunner as init (PID 1, or `--init`): what a container's first
//! process owes the processes under it, done with a signalfd and no signal
//! handlers (so no unsafe code).
//!
//! * The supervisor keeps the rights the app lacks: started as root, it
//!   stays root and only the app runs as the app user, so the app can
//!   neither kill it (`kill -9 $PPID`) nor trace it.
//! * It is PID 1 or a child subreaper, so every descendant of the app, even
//!   one that called `setsid`, stays below it; every one that exits is
//!   reaped, so no zombie stays behind.
//! * The app runs in its own process group; SIGINT, SIGHUP, SIGQUIT,
//!   SIGUSR1, SIGUSR2 and SIGWINCH are forwarded to that group; SIGTERM goes
//!   to every descendant (as a dyno's SIGTERM goes to every process).
//! * SIGTERM starts the grace period; every descendant is SIGKILLed when it
//!   ends, as a dyno is 30 seconds after SIGTERM.
//! * When the app's main process exits, every descendant left gets SIGTERM,
//!   then SIGKILL after the grace period; then we exit with the main
//!   process's status (its code, or 128+N when killed by signal N).
//! * With a terminal on stdin the app's group becomes the foreground group,
//!   so an interactive `slugrunner bash` works under init.

use std::ffi::{CString, OsStr};
use std::io::IsTerminal;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::spawn::{posix_spawn, PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
use nix::sys::signal::{killpg, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::runtime::ProcessSpec;
use slug_shared::proctree;

/// Signals passed on to the app's process group.
pub const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// After the final SIGKILL, how long to wait for the group to disappear.
const KILL_SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("cannot set up signal handling: {call}")]
    Signals {
        call: &'static str,
        source: nix::Error,
    },
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{what} contains a NUL byte")]
    Nul { what: String },
    #[error("waiting for the app failed")]
    Wait(#[source] nix::Error),
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    Code(i32),
    Signal(i32),
}

impl ChildExit {
    /// The shell convention: the exit code, or 128+N for signal N.
    pub fn exit_code(self) -> u8 {
        match self {
            ChildExit::Code(c) => (c & 0xff) as u8,
            ChildExit::Signal(s) => (128 + s).clamp(0, 255) as u8,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SuperviseOptions {
    /// Time between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Register as child subreaper (needed when not PID 1 for orphans to
    /// come to us).
    pub subreaper: bool,
    /// Run the app as this (uid, gid), the supervisor keeping its own.
    pub run_as: Option<(u32, u32)>,
    /// The binary that drops privileges for the app (slugrunner itself).
    pub helper: Option<std::path::PathBuf>,
    /// Keep the terminal as the app's controlling terminal when it runs as
    /// another user (interactive use); otherwise it gets a session of its
    /// own.
    pub keep_terminal: bool,
}

/// Where the exec-as helper finds the app's environment.
const HANDOFF_FD: i32 = 3;

fn sig_err(call: &'static str) -> impl FnOnce(nix::Error) -> SuperviseError {
    move |source| SuperviseError::Signals { call, source }
}

fn cstring(bytes: &OsStr, what: &str) -> Result<CString, SuperviseError> {
    CString::new(bytes.as_bytes()).map_err(|_| SuperviseError::Nul {
        what: what.to_string(),
    })
}

/// Start `spec` in a new process group with an empty signal mask and default
/// dispositions (posix_spawn: std's `Command` would pass on the mask that
/// the supervisor blocks). When it must run as another user, what is
/// started is `helper` in its exec-as mode ([`crate::exec_as::EXEC_AS_ARG`]),
/// in a session of its own unless the terminal is kept: the helper runs as
/// root until it drops to that user, so it starts with an empty
/// environment and gets the app's on a pipe, as data. The supervisor
/// itself keeps its rights. Its own cwd moves to `spec.cwd`.
fn spawn(
    spec: &ProcessSpec,
    reset: &SigSet,
    opts: &SuperviseOptions,
) -> Result<Pid, SuperviseError> {
    let spawn_err = |source: std::io::Error| SuperviseError::Spawn {
        program: spec.program.display().to_string(),
        source,
    };
    let io = |e: nix::Error| spawn_err(e.into());
    std::env::set_current_dir(&spec.cwd).map_err(spawn_err)?;
    let mut env = Vec::with_capacity(spec.env.len());
    for (k, v) in &spec.env {
        let mut pair = k.clone();
        pair.push("=");
        pair.push(v);
        env.push(cstring(
            &pair,
            &format!("variable {}", k.to_string_lossy()),
        )?);
    }
    let mut attr = PosixSpawnAttr::init().map_err(io)?;
    let mut flags =
        PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF;
    let mut actions = PosixSpawnFileActions::init().map_err(io)?;
    let (program, mut args, handoff) = match (opts.run_as, &opts.helper) {
        (None, _) => {
            flags |= PosixSpawnFlags::POSIX_SPAWN_SETPGROUP;
            (
                spec.program.clone(),
                vec![cstring(&spec.arg0(), "the program name")?],
                None,
            )
        }
        (Some(user), Some(helper)) => {
            flags |= if opts.keep_terminal {
                PosixSpawnFlags::POSIX_SPAWN_SETPGROUP
            } else {
                // A new session is a new process group with the same id.
                PosixSpawnFlags::from_bits_retain(nix::libc::POSIX_SPAWN_SETSID as i32)
            };
            let (read, write) = handoff_pipe().map_err(spawn_err)?;
            actions.add_dup2(read.as_raw_fd(), HANDOFF_FD).map_err(io)?;
            let mut args = vec![cstring(OsStr::new("slugrunner"), "the program name")?];
            for arg in crate::exec_as::exec_as_args(HANDOFF_FD, user) {
                args.push(cstring(OsStr::new(&arg), "an argument")?);
            }
            args.push(cstring(spec.program.as_os_str(), "the program")?);
            args.push(cstring(&spec.arg0(), "the program name")?);
            let data = slug_shared::isolate::encode_env(
                spec.env.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str())),
            );
            // Only the helper's own, fixed environment.
            env.clear();
            (helper.clone(), args, Some((read, write, data)))
        }
        (Some(_), None) => {
            return Err(spawn_err(std::io::Error::other(
                "no helper to start the app as another user",
            )))
        }
    };
    for arg in &spec.args {
        args.push(cstring(arg, "an argument")?);
    }
    attr.set_flags(flags).map_err(io)?;
    attr.set_pgroup(Pid::from_raw(0)).map_err(io)?;
    attr.set_sigmask(&SigSet::empty()).map_err(io)?;
    attr.set_sigdefault(reset).map_err(io)?;
    let pid = posix_spawn(program.as_path(), &actions, &attr, &args, &env).map_err(io)?;
    if let Some((read, write, data)) = handoff {
        drop(read);
        // The helper reads it all before anything else; should it have
        // died, its exit status tells why.
        if let Err(e) = std::fs::File::from(write).write_all(&data) {
            tracing::debug!("handing the environment to the app's helper: {e}");
        }
    }
    Ok(pid)
}

/// A pipe for the helper's environment whose read end is not the number
/// it must get in the helper (posix_spawn's dup2 onto the same number
/// would leave it close-on-exec).
fn handoff_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    if read.as_raw_fd() != HANDOFF_FD {
        return Ok((read, write));
    }
    // A copy made while the number is still held gets another one.
    Ok((read.try_clone()?, write))
}

/// The signals the supervisor takes from its signalfd: forwarded ones,
/// SIGCHLD, and those a background process touching the terminal
/// (tcsetpgrp) gets. Blocked in every thread of the process, they cannot
/// reach another thread's default action instead.
pub fn blocked_signals() -> SigSet {
    let mut mask = SigSet::empty();
    for &sig in FORWARDED {
        mask.add(sig);
    }
    mask.add(Signal::SIGCHLD);
    mask.add(Signal::SIGTTOU);
    mask.add(Signal::SIGTTIN);
    mask
}

/// Run `spec` under supervision until it and its process group are gone.
/// Privileges are whatever this process has (drop them before calling).
pub fn supervise(spec: &ProcessSpec, opts: &SuperviseOptions) -> Result<ChildExit, SuperviseError> {
    let mask = blocked_signals();
    // Blocked before the child exists, so nothing is lost in between; std
    // resets the mask in the child before exec.
    mask.thread_block().map_err(sig_err("sigprocmask"))?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(sig_err("signalfd"))?;
    if opts.subreaper {
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(sig_err("prctl(PR_SET_CHILD_SUBREAPER)"))?;
    }

    // The child starts with default dispositions for everything we block,
    // and for SIGPIPE, which the Rust runtime ignores.
    let mut reset = mask;
    reset.add(Signal::SIGPIPE);
    let main = spawn(spec, &reset, opts)?;
    give_terminal(main);
    let me = nix::unistd::getpid();

    let mut main_exit: Option<ChildExit> = None;
    let mut kill_at: Option<Instant> = None;
    let mut killed_at: Option<Instant> = None;
    loop {
        reap(main, &mut main_exit)?;
        let now = Instant::now();
        if let Some(exit) = main_exit {
            if !group_alive(main) && proctree::descendants(me).is_empty() {
                return Ok(exit);
            }
            if kill_at.is_none() {
                tracing::debug!("main process exited; terminating what is left of the app");
                let _ = killpg(main, Signal::SIGTERM);
                proctree::signal_descendants(me, Signal::SIGTERM);
                kill_at = Some(now + opts.grace);
            }
            if killed_at.is_some_and(|t| now >= t + KILL_SETTLE) {
                tracing::warn!("processes of the app survived SIGKILL; exiting anyway");
                return Ok(exit);
            }
        }
        if let Some(deadline) = kill_at {
            if killed_at.is_none() && now >= deadline {
                tracing::warn!("grace period over; sending SIGKILL to every process of the app");
                let _ = killpg(main, Signal::SIGKILL);
                proctree::signal_descendants(me, Signal::SIGKILL);
                killed_at = Some(now);
            }
        }

        let wait = next_look(main_exit.is_some(), kill_at, killed_at, now);
        wait_for_signals(&sfd, wait)?;
        forward_signals(&sfd, main, me, &mut kill_at, opts.grace)?;
    }
}

/// How long to wait for a signal before looking at the children again:
/// a second while the app runs, a tenth once its main process is gone,
/// never past the end of the grace period.
fn next_look(
    main_exited: bool,
    kill_at: Option<Instant>,
    killed_at: Option<Instant>,
    now: Instant,
) -> Duration {
    let mut wait = Duration::from_secs(1);
    if main_exited {
        wait = Duration::from_millis(100);
    }
    if let (Some(deadline), None) = (kill_at, killed_at) {
        wait = wait.min(deadline.saturating_duration_since(now));
    }
    wait
}

/// Sleep until a signal arrives or `wait` has passed.
fn wait_for_signals(sfd: &SignalFd, wait: Duration) -> Result<(), SuperviseError> {
    let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, timeout) {
        Ok(_) | Err(Errno::EINTR) => Ok(()),
        Err(e) => Err(sig_err("poll")(e)),
    }
}

/// Pass the pending signals that are the app's to its process group; a
/// SIGTERM also to every process of the dyno, and it starts the grace
/// period (`kill_at`) if nothing has yet.
fn forward_signals(
    sfd: &SignalFd,
    main: Pid,
    me: Pid,
    kill_at: &mut Option<Instant>,
    grace: Duration,
) -> Result<(), SuperviseError> {
    while let Some(info) = sfd.read_signal().map_err(sig_err("read(signalfd)"))? {
        let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
            continue;
        };
        if !FORWARDED.contains(&sig) {
            continue;
        }
        tracing::debug!("forwarding {sig} to the app's process group");
        let _ = killpg(main, sig);
        if sig == Signal::SIGTERM {
            // Every process of the dyno gets it, also those that left
            // the group.
            proctree::signal_descendants(me, sig);
            if kill_at.is_none() {
                *kill_at = Some(Instant::now() + grace);
            }
        }
    }
    Ok(())
}

/// Reap every exited child; note the main one's status.
fn reap(main: Pid, main_exit: &mut Option<ChildExit>) -> Result<(), SuperviseError> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => {
                if pid == main {
                    *main_exit = Some(ChildExit::Code(code));
                } else {
                    tracing::debug!(%pid, code, "reaped");
                }
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                if pid == main {
                    *main_exit = Some(ChildExit::Signal(sig as i32));
                } else {
                    tracing::debug!(%pid, %sig, "reaped");
                }
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(()),
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(e) => return Err(SuperviseError::Wait(e)),
        }
    }
}

fn group_alive(pgid: Pid) -> bool {
    !matches!(killpg(pgid, None), Err(Errno::ESRCH))
}

/// If our stdin is the terminal and we are its foreground group, hand it to
/// the app's group (and wake it, should it have stopped on SIGTTIN first).
fn give_terminal(pgid: Pid) {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return;
    }
    let Ok(foreground) = nix::unistd::tcgetpgrp(stdin.as_fd()) else {
        return;
    };
    if foreground != nix::unistd::getpgrp() {
        return;
    }
    match nix::unistd::tcsetpgrp(stdin.as_fd(), pgid) {
        Ok(()) => {
            let _ = killpg(pgid, Signal::SIGCONT);
        }
        Err(e) => tracing::debug!("cannot give the terminal to the app: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_mapping() {
        assert_eq!(ChildExit::Code(0).exit_code(), 0);
        assert_eq!(ChildExit::Code(42).exit_code(), 42);
        assert_eq!(ChildExit::Code(255).exit_code(), 255);
        assert_eq!(ChildExit::Signal(9).exit_code(), 137);
        assert_eq!(ChildExit::Signal(15).exit_code(), 143);
    }
}
