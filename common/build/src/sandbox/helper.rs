//! The sandbox helper: the process that puts one buildpack step into its
//! sandbox and runs it. slugbuilder starts it as a fresh exec of its own
//! binary (`slugbuilder __sandbox-exec ...`, see [`Plan::to_args`]), so it
//! is single-threaded and free to fork and allocate, unlike slugbuilder
//! itself, whose threads rule out most work between fork and exec.
//!
//! With namespaces (root, or a user namespace when unprivileged):
//!
//! ```text
//! slugbuilder ── helper ── init (PID 1 of a new PID namespace) ── step (PID 2)
//! ```
//!
//! The helper unshares mount, PID, IPC and UTS namespaces and forks `init`,
//! which builds a new root (a tmpfs holding read-only binds of the system
//! directories and the build's own directories), pivots into it, drops to
//! the build user and forks the step. When the step's main process exits,
//! init reports its status to the helper through a pipe and exits; the
//! kernel then kills every other process of the namespace, however it
//! detached itself. The helper dies with slugbuilder (parent-death
//! signal), init with the helper.
//!
//! Without namespaces the helper is a child subreaper instead: orphans of
//! the step come to it, and when the step's main process exits it kills
//! them all (and, when the build has a uid of its own, every process of
//! that uid).
//!
//! This is the one module with `unsafe` code: `fork` in a single-threaded
//! process.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, signal, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Gid, Pid, Uid};

/// First argument that makes the binary a sandbox helper.
pub const EXEC_ARG: &str = "__sandbox-exec";
/// First argument of the probe: exits 0 at once (run inside a sandbox to
/// see that one can be made).
pub const PROBE_ARG: &str = "__sandbox-probe";

/// Exit status of the helper when it could not set the sandbox up (it has
/// printed why on stderr, which is the step's log).
pub const SETUP_FAILED: u8 = 125;
/// Exit status of the helper when the kernel (or the container slugbuilder
/// runs in) refused a namespace or a mount: the one case in which
/// `--sandbox auto` falls back to running without namespaces.
pub const NAMESPACES_REFUSED: u8 = 124;

/// One thing to put into the new root, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOp {
    /// Bind `src` read-only at `dst` (with what is mounted beneath it).
    ReadOnly { src: PathBuf, dst: PathBuf },
    /// Bind `src` read-write at `dst`.
    ReadWrite { src: PathBuf, dst: PathBuf },
    /// An empty directory (a mount point, or a place to write nothing).
    Dir { dst: PathBuf },
    /// A symlink (e.g. `/bin -> usr/bin` on merged-/usr systems).
    Symlink { target: PathBuf, dst: PathBuf },
    /// A fresh tmpfs.
    Tmpfs { dst: PathBuf },
    /// procfs of the new PID namespace.
    Proc { dst: PathBuf },
    /// A minimal /dev: null, zero, full, random, urandom, tty, shm, pts.
    Dev { dst: PathBuf },
}

/// Everything the helper does, as one value that round-trips through
/// command-line arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// slugbuilder's pid: the helper gives up if its parent is already gone.
    pub parent: i32,
    /// Make namespaces (else: subreaper mode).
    pub namespaces: bool,
    /// Unprivileged: first a user namespace mapping (uid, gid) to itself.
    pub user_namespace: Option<(u32, u32)>,
    /// Join this network namespace (the build's own, see [`super::net`]).
    pub netns: Option<PathBuf>,
    /// Join these cgroups (the build's own, see [`super::limits`]).
    pub cgroups: Vec<PathBuf>,
    /// RLIMIT_FSIZE of the step (bytes; 0: unlimited).
    pub file_size_limit: u64,
    /// Size of the step's /dev/shm (bytes; 0: the kernel's default).
    pub shm_size: u64,
    /// Where the new root's tmpfs is mounted before the pivot.
    pub new_root: Option<PathBuf>,
    pub mounts: Vec<MountOp>,
    pub hostname: Option<OsString>,
    /// Run the step as this (uid, gid).
    pub user: Option<(u32, u32)>,
    /// After the step, kill every process of `user` (subreaper mode).
    pub sweep_user: bool,
    pub cwd: PathBuf,
    /// Program and arguments.
    pub argv: Vec<OsString>,
    /// The step's environment: not an argument (it would show in
    /// `/proc/PID/cmdline`) but read from stdin as data, and applied only
    /// at the step's `execve`.
    pub env: Vec<(OsString, OsString)>,
}

impl Plan {
    /// The helper's command line after [`EXEC_ARG`].
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |parts: &[&OsStr]| a.extend(parts.iter().map(|p| p.to_os_string()));
        push(&["--parent".as_ref(), self.parent.to_string().as_ref()]);
        if self.namespaces {
            push(&["--ns".as_ref()]);
        }
        if let Some((u, g)) = self.user_namespace {
            push(&[
                "--userns".as_ref(),
                u.to_string().as_ref(),
                g.to_string().as_ref(),
            ]);
        }
        if let Some(ns) = &self.netns {
            push(&["--netns".as_ref(), ns.as_os_str()]);
        }
        for cgroup in &self.cgroups {
            push(&["--cgroup".as_ref(), cgroup.as_os_str()]);
        }
        if self.file_size_limit > 0 {
            push(&[
                "--fsize".as_ref(),
                self.file_size_limit.to_string().as_ref(),
            ]);
        }
        if self.shm_size > 0 {
            push(&["--shm-size".as_ref(), self.shm_size.to_string().as_ref()]);
        }
        if let Some(root) = &self.new_root {
            push(&["--root".as_ref(), root.as_os_str()]);
        }
        for op in &self.mounts {
            match op {
                MountOp::ReadOnly { src, dst } => {
                    push(&["--ro".as_ref(), src.as_os_str(), dst.as_os_str()])
                }
                MountOp::ReadWrite { src, dst } => {
                    push(&["--rw".as_ref(), src.as_os_str(), dst.as_os_str()])
                }
                MountOp::Dir { dst } => push(&["--dir".as_ref(), dst.as_os_str()]),
                MountOp::Symlink { target, dst } => {
                    push(&["--symlink".as_ref(), target.as_os_str(), dst.as_os_str()])
                }
                MountOp::Tmpfs { dst } => push(&["--tmpfs".as_ref(), dst.as_os_str()]),
                MountOp::Proc { dst } => push(&["--proc".as_ref(), dst.as_os_str()]),
                MountOp::Dev { dst } => push(&["--dev".as_ref(), dst.as_os_str()]),
            }
        }
        if let Some(h) = &self.hostname {
            push(&["--hostname".as_ref(), h.as_os_str()]);
        }
        if let Some((u, g)) = self.user {
            push(&[
                "--user".as_ref(),
                u.to_string().as_ref(),
                g.to_string().as_ref(),
            ]);
        }
        if self.sweep_user {
            push(&["--sweep-user".as_ref()]);
        }
        push(&["--cwd".as_ref(), self.cwd.as_os_str(), "--".as_ref()]);
        a.extend(self.argv.iter().cloned());
        a
    }

    /// Parse what [`Plan::to_args`] wrote.
    pub fn from_args(args: &[OsString]) -> Result<Self, String> {
        let mut plan = Plan::default();
        let mut it = args.iter();
        let next = |what: &str, it: &mut std::slice::Iter<'_, OsString>| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{what}: missing value"))
        };
        let num64 = |v: OsString| -> Result<u64, String> {
            v.to_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("not a number: {v:?}"))
        };
        let num = |v: OsString| -> Result<u32, String> {
            v.to_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("not a number: {v:?}"))
        };
        while let Some(arg) = it.next() {
            let path = |v: OsString| PathBuf::from(v);
            match arg.to_str().unwrap_or("") {
                "--parent" => plan.parent = num(next("--parent", &mut it)?)? as i32,
                "--ns" => plan.namespaces = true,
                "--userns" => {
                    plan.user_namespace = Some((
                        num(next("--userns", &mut it)?)?,
                        num(next("--userns", &mut it)?)?,
                    ))
                }
                "--root" => plan.new_root = Some(path(next("--root", &mut it)?)),
                "--netns" => plan.netns = Some(path(next("--netns", &mut it)?)),
                "--cgroup" => plan.cgroups.push(path(next("--cgroup", &mut it)?)),
                "--fsize" => plan.file_size_limit = num64(next("--fsize", &mut it)?)?,
                "--shm-size" => plan.shm_size = num64(next("--shm-size", &mut it)?)?,
                "--ro" => plan.mounts.push(MountOp::ReadOnly {
                    src: path(next("--ro", &mut it)?),
                    dst: path(next("--ro", &mut it)?),
                }),
                "--rw" => plan.mounts.push(MountOp::ReadWrite {
                    src: path(next("--rw", &mut it)?),
                    dst: path(next("--rw", &mut it)?),
                }),
                "--dir" => plan.mounts.push(MountOp::Dir {
                    dst: path(next("--dir", &mut it)?),
                }),
                "--symlink" => plan.mounts.push(MountOp::Symlink {
                    target: path(next("--symlink", &mut it)?),
                    dst: path(next("--symlink", &mut it)?),
                }),
                "--tmpfs" => plan.mounts.push(MountOp::Tmpfs {
                    dst: path(next("--tmpfs", &mut it)?),
                }),
                "--proc" => plan.mounts.push(MountOp::Proc {
                    dst: path(next("--proc", &mut it)?),
                }),
                "--dev" => plan.mounts.push(MountOp::Dev {
                    dst: path(next("--dev", &mut it)?),
                }),
                "--hostname" => plan.hostname = Some(next("--hostname", &mut it)?),
                "--user" => {
                    plan.user = Some((
                        num(next("--user", &mut it)?)?,
                        num(next("--user", &mut it)?)?,
                    ))
                }
                "--sweep-user" => plan.sweep_user = true,
                "--cwd" => plan.cwd = path(next("--cwd", &mut it)?),
                "--" => {
                    plan.argv = it.cloned().collect();
                    break;
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if plan.argv.is_empty() {
            return Err("no program to run".into());
        }
        Ok(plan)
    }
}

/// If this process was started as a sandbox helper (or probe), do that job
/// and return its exit code; `None` for a normal start. Call it first thing
/// in `main`, before any thread exists.
pub fn dispatch() -> Option<ExitCode> {
    let mut args = std::env::args_os();
    let _argv0 = args.next();
    let first = args.next()?;
    if first == PROBE_ARG {
        return Some(ExitCode::SUCCESS);
    }
    if first == super::net::NETNS_ARG {
        netns_holder()
    }
    if first != EXEC_ARG {
        return None;
    }
    let rest: Vec<OsString> = args.collect();
    let plan = match Plan::from_args(&rest) {
        Ok(plan) => plan,
        Err(e) => fail("bad helper arguments", e),
    };
    run(&plan)
}

/// Print why the sandbox could not be made and exit.
fn fail(what: &str, why: impl std::fmt::Display) -> ! {
    slug_shared::log::line(format_args!("slugbuilder: sandbox: {what}: {why}"));
    std::process::exit(SETUP_FAILED.into())
}

/// Like [`fail`], for a namespace or mount call: a refusal by the kernel
/// (no rights, no namespaces compiled in, too many) exits with
/// [`NAMESPACES_REFUSED`], anything else with [`SETUP_FAILED`].
fn fail_ns(what: &str, errno: Errno) -> ! {
    slug_shared::log::line(format_args!("slugbuilder: sandbox: {what}: {errno}"));
    let refused = matches!(
        errno,
        Errno::EPERM
            | Errno::EACCES
            | Errno::EINVAL
            | Errno::ENOSPC
            | Errno::EUSERS
            | Errno::ENOSYS
    );
    std::process::exit(
        if refused {
            NAMESPACES_REFUSED
        } else {
            SETUP_FAILED
        }
        .into(),
    )
}

fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO))
}

/// A user namespace in which this process's (uid, gid) maps to itself.
fn enter_own_user_namespace(uid: u32, gid: u32, also: CloneFlags) {
    if let Err(e) = unshare(CloneFlags::CLONE_NEWUSER | also) {
        fail_ns("unshare(CLONE_NEWUSER)", e);
    }
    let maps = [
        ("/proc/self/setgroups", "deny".to_string()),
        ("/proc/self/uid_map", format!("{uid} {uid} 1")),
        ("/proc/self/gid_map", format!("{gid} {gid} 1")),
    ];
    for (file, content) in maps {
        if let Err(e) = std::fs::write(file, content) {
            fail_ns(file, errno_of(&e));
        }
    }
}

fn run(plan: &Plan) -> ! {
    // A fresh process context, as a container runtime's init makes one:
    // nothing our caller's caller left open, no controlling terminal.
    slug_shared::isolate::close_inherited_fds();
    if let Err(e) = slug_shared::isolate::new_session() {
        fail("setsid", e);
    }
    // The mount points we make must be enterable whatever umask the
    // operator's shell had, and steps start with the usual one (runc's).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let mut plan = plan.clone();
    plan.env = match slug_shared::isolate::read_handoff(0) {
        Ok(data) => slug_shared::isolate::decode_env(&data),
        Err(e) => fail("reading the step's environment", e),
    };
    let plan = &plan;
    // Die with slugbuilder; and do not start if it is already gone.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        fail("prctl(PR_SET_PDEATHSIG)", e);
    }
    if nix::unistd::getppid().as_raw() != plan.parent {
        fail("slugbuilder is gone", "parent changed");
    }
    // The build's memory and process limits, before anything is forked.
    for cgroup in &plan.cgroups {
        let procs = cgroup.join("cgroup.procs");
        if let Err(e) = std::fs::write(&procs, std::process::id().to_string()) {
            fail(
                &format!("joining the build's cgroup {}", cgroup.display()),
                e,
            );
        }
    }
    if plan.namespaces {
        with_namespaces(plan)
    } else {
        as_subreaper(plan)
    }
}

/// How the step's main process ended, as sent from init to the helper.
fn encode(status: WaitStatus) -> [u8; 8] {
    let (kind, value) = match status {
        WaitStatus::Exited(_, code) => (0u32, code as u32),
        WaitStatus::Signaled(_, sig, _) => (1u32, sig as i32 as u32),
        _ => (0, 1),
    };
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&kind.to_le_bytes());
    out[4..].copy_from_slice(&value.to_le_bytes());
    out
}

/// End this process the way the step ended: same code, or same signal.
fn reproduce(kind: u32, value: u32) -> ! {
    if kind == 1 {
        if let Ok(sig) = Signal::try_from(value as i32) {
            // SAFETY: resetting a disposition to the default has no
            // preconditions; no handler is installed.
            let _ = unsafe { signal(sig, SigHandler::SigDfl) };
            let mut set = SigSet::empty();
            set.add(sig);
            let _ = set.thread_unblock();
            let _ = kill(nix::unistd::getpid(), sig);
        }
        std::process::exit(128 + (value as i32 & 0x7f));
    }
    std::process::exit(value as i32)
}

/// Join the namespace of `kind` at `path`.
fn join(path: &Path, kind: CloneFlags) -> Result<(), Errno> {
    let fd = std::fs::File::open(path).map_err(|e| errno_of(&e))?;
    nix::sched::setns(fd, kind)
}

fn with_namespaces(plan: &Plan) -> ! {
    match (plan.user_namespace, &plan.netns) {
        // Unprivileged with a network of the build's own: that namespace
        // belongs to the holder's user namespace, which we join first.
        (Some(_), Some(ns)) => {
            let userns = ns.with_file_name("user");
            if let Err(e) = join(&userns, CloneFlags::CLONE_NEWUSER) {
                fail_ns(&format!("joining the build's user namespace {userns:?}"), e);
            }
        }
        (Some((uid, gid)), None) => enter_own_user_namespace(uid, gid, CloneFlags::empty()),
        (None, _) => {}
    }
    if let Some(ns) = &plan.netns {
        if let Err(e) = join(ns, CloneFlags::CLONE_NEWNET) {
            fail_ns(&format!("joining the build's network namespace {ns:?}"), e);
        }
    }
    let flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if let Err(e) = unshare(flags) {
        fail_ns("unshare(mount, pid, ipc, uts namespaces)", e);
    }
    let (status_read, status_write) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => fail("pipe", e),
    };
    // SAFETY: the helper is single-threaded (a fresh exec that started no
    // thread), so the child may allocate and run any code.
    match unsafe { fork() } {
        Err(e) => fail("fork", e),
        Ok(ForkResult::Child) => {
            drop(status_read);
            init(plan, status_write)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(status_write);
            let init_status = wait_for(child);
            let mut buf = [0u8; 8];
            let n = nix::unistd::read(status_read.as_fd(), &mut buf).unwrap_or(0);
            if n == 8 {
                let kind = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
                let value = u32::from_le_bytes(buf[4..].try_into().expect("4 bytes"));
                reproduce(kind, value)
            }
            // init ended before the step did (it failed to set up, and said
            // why, or was killed).
            match init_status {
                WaitStatus::Exited(_, code) => std::process::exit(code),
                WaitStatus::Signaled(_, sig, _) => reproduce(1, sig as i32 as u32),
                _ => std::process::exit(SETUP_FAILED.into()),
            }
        }
    }
}

/// The network namespace holder: makes the build's network namespace, with
/// its loopback up, says `ready` on stdout and keeps the namespace alive
/// until its stdin closes (the build is over, or slugbuilder is gone).
fn netns_holder() -> ! {
    // No parent-death signal: it follows the thread that started us, not
    // slugbuilder. The end of stdin says slugbuilder is gone.
    slug_shared::isolate::close_inherited_fds();
    let _ = slug_shared::isolate::new_session();
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    if uid.is_root() {
        if let Err(e) = unshare(CloneFlags::CLONE_NEWNET) {
            fail_ns("unshare(CLONE_NEWNET)", e);
        }
    } else {
        // Unprivileged: the namespace belongs to a user namespace of the
        // build's, which every step joins (and slirp4netns too).
        enter_own_user_namespace(uid.as_raw(), gid.as_raw(), CloneFlags::CLONE_NEWNET);
    }
    if let Err(e) = loopback_up() {
        fail("bringing up lo", e);
    }
    use std::io::{Read, Write};
    let mut out = std::io::stdout();
    if out.write_all(b"ready\n").and_then(|_| out.flush()).is_err() {
        std::process::exit(SETUP_FAILED.into());
    }
    let mut sink = [0u8; 64];
    while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
    std::process::exit(0)
}

/// `ip link set lo up` in the current network namespace.
fn loopback_up() -> Result<(), Errno> {
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: an all-zero ifreq is a valid value (a C struct of integers
    // and arrays).
    let mut req: nix::libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as nix::libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write the ifreq we
    // own, for the lifetime of the call.
    unsafe {
        if nix::libc::ioctl(socket.as_raw_fd(), nix::libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(Errno::last());
        }
        req.ifr_ifru.ifru_flags |=
            (nix::libc::IFF_UP | nix::libc::IFF_RUNNING) as nix::libc::c_short;
        if nix::libc::ioctl(socket.as_raw_fd(), nix::libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(Errno::last());
        }
    }
    Ok(())
}

/// Wait for `pid` to end.
fn wait_for(pid: Pid) -> WaitStatus {
    loop {
        match waitpid(pid, None) {
            Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => return s,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return WaitStatus::Exited(pid, SETUP_FAILED.into()),
        }
    }
}

/// PID 1 of the step's namespace.
fn init(plan: &Plan, status: OwnedFd) -> ! {
    let Some(new_root) = &plan.new_root else {
        fail("plan", "namespaces without a new root");
    };
    if let Err((what, e)) = build_root(new_root, &plan.mounts, plan.shm_size) {
        fail_ns(&what, e);
    }
    if let Some(name) = &plan.hostname {
        let _ = nix::unistd::sethostname(name);
    }
    drop_to_step_user(plan);
    let step = spawn_step(plan);
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(s @ (WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)))
                if pid == step =>
            {
                let _ = nix::unistd::write(&status, &encode(s));
                // Leaving PID 1 ends the namespace: the kernel kills every
                // process the step left behind.
                std::process::exit(0)
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => fail("waitpid", e),
        }
    }
}

fn become_user(uid: u32, gid: u32) -> Result<(), (&'static str, Errno)> {
    let g = Gid::from_raw(gid);
    nix::unistd::setgroups(&[g]).map_err(|e| ("setgroups", e))?;
    nix::unistd::setgid(g).map_err(|e| ("setgid", e))?;
    nix::unistd::setuid(Uid::from_raw(uid)).map_err(|e| ("setuid", e))?;
    Ok(())
}

/// Become the step's user (when there is one), then make sure the step
/// dies with its parent and can never gain privileges. Fails the helper.
fn drop_to_step_user(plan: &Plan) {
    if let Some((uid, gid)) = plan.user {
        if let Err((what, e)) = become_user(uid, gid) {
            fail(what, e);
        }
    }
    // Nothing of the operator's keys: an empty user keyring (an earlier
    // holder of a leased uid may have filled it) and a new session keyring.
    // Where keyctl is refused (a container's own seccomp profile), the step
    // cannot reach any keyring either.
    slug_shared::isolate::clear_user_keyrings();
    match slug_shared::isolate::join_new_session_keyring() {
        Ok(()) | Err(Errno::EPERM | Errno::EACCES | Errno::ENOSYS) => {}
        Err(e) => fail("joining a new session keyring", e),
    }
    // After the change of credentials, which clears it.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if let Err(e) = nix::sys::prctl::set_no_new_privs() {
        fail("prctl(PR_SET_NO_NEW_PRIVS)", e);
    }
}

/// Fork and exec the step; returns its pid.
fn spawn_step(plan: &Plan) -> Pid {
    // SAFETY: still single-threaded (see `with_namespaces`).
    match unsafe { fork() } {
        Err(e) => fail("fork", e),
        Ok(ForkResult::Parent { child }) => child,
        Ok(ForkResult::Child) => exec_here(plan),
    }
}

/// Every signal at its default disposition and none blocked, as a program
/// expects to start: ignored signals survive exec, and the Rust runtime of
/// this helper ignores SIGPIPE.
fn reset_signals() {
    for signo in 1..nix::libc::SIGRTMAX() {
        if signo == nix::libc::SIGKILL || signo == nix::libc::SIGSTOP {
            continue;
        }
        // SAFETY: setting a disposition to the default installs no handler;
        // numbers the kernel does not accept just fail.
        unsafe {
            nix::libc::signal(signo, nix::libc::SIG_DFL);
        }
    }
    let _ = SigSet::empty().thread_set_mask();
}

/// An absolute or relative path as it is; a bare name looked up in PATH.
fn resolve_program(name: &OsStr, path: Option<&OsStr>) -> Option<CString> {
    if name.as_bytes().contains(&b'/') {
        return CString::new(name.as_bytes()).ok();
    }
    let path = path.unwrap_or(OsStr::new("/usr/bin:/bin"));
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            nix::unistd::access(candidate, nix::unistd::AccessFlags::X_OK).is_ok()
                && candidate.is_file()
        })
        .and_then(|p| CString::new(p.into_os_string().into_vec()).ok())
}

/// Without namespaces: run the step as our child, collect its orphans as a
/// subreaper, and kill them all when it ends.
fn as_subreaper(plan: &Plan) -> ! {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        fail("prctl(PR_SET_CHILD_SUBREAPER)", e);
    }
    // SAFETY: single-threaded (see `with_namespaces`).
    let step = match unsafe { fork() } {
        Err(e) => fail("fork", e),
        Ok(ForkResult::Parent { child }) => child,
        Ok(ForkResult::Child) => {
            drop_to_step_user(plan);
            exec_here(plan)
        }
    };
    let status = loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(s @ (WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)))
                if pid == step =>
            {
                break s
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => fail("waitpid", e),
        }
    };
    slug_shared::proctree::sweep_own_children(&[]);
    if let (true, Some((uid, gid))) = (plan.sweep_user, plan.user) {
        kill_all_of(uid, gid);
        slug_shared::proctree::sweep_own_children(&[]);
    }
    let [k0, k1, k2, k3, v0, v1, v2, v3] = encode(status);
    reproduce(
        u32::from_le_bytes([k0, k1, k2, k3]),
        u32::from_le_bytes([v0, v1, v2, v3]),
    )
}

/// In the child that is the step: enter the cwd and exec.
fn exec_here(plan: &Plan) -> ! {
    let argv: Vec<CString> = plan
        .argv
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_else(|_| fail("argument", "contains NUL")))
        .collect();
    let env: Vec<CString> = plan
        .env
        .iter()
        .map(|(k, v)| {
            let mut pair = k.clone().into_vec();
            pair.push(b'=');
            pair.extend(v.as_bytes());
            CString::new(pair).unwrap_or_else(|_| fail("environment", "contains NUL"))
        })
        .collect();
    reset_signals();
    if let Err(e) = nix::unistd::chdir(&plan.cwd) {
        slug_shared::log::line(format_args!(
            "slugbuilder: sandbox: cannot enter {:?}: {e}",
            plan.cwd
        ));
        std::process::exit(127);
    }
    let path = plan
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_os_str());
    let Some(program) = resolve_program(&plan.argv[0], path) else {
        slug_shared::log::line(format_args!(
            "slugbuilder: sandbox: {:?}: command not found",
            plan.argv[0]
        ));
        std::process::exit(127);
    };
    slug_shared::isolate::close_inherited_fds();
    if plan.file_size_limit > 0 {
        let limit = plan.file_size_limit;
        if let Err(e) =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_FSIZE, limit, limit)
        {
            fail("setrlimit(RLIMIT_FSIZE)", e);
        }
    }
    if let Err(e) = slug_shared::isolate::apply_seccomp() {
        fail("seccomp", e);
    }
    let err = nix::unistd::execve(&program, &argv, &env).unwrap_err();
    slug_shared::log::line(format_args!(
        "slugbuilder: sandbox: cannot run {program:?}: {err}"
    ));
    std::process::exit(if err == Errno::ENOENT { 127 } else { 126 })
}

/// Kill every process running as `uid` (but this one): a process of the
/// build's own uid sends SIGKILL to all it may signal.
pub fn kill_all_of(uid: u32, gid: u32) {
    // SAFETY: single-threaded (see `with_namespaces`).
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            if become_user(uid, gid).is_ok() {
                let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
            }
            std::process::exit(0)
        }
        Ok(ForkResult::Parent { child }) => {
            wait_for(child);
        }
        Err(_) => {}
    }
}

// --- The new root -------------------------------------------------------------

type SetupError = (String, Errno);

fn ctx<T>(what: impl FnOnce() -> String, r: nix::Result<T>) -> Result<T, SetupError> {
    r.map_err(|e| (what(), e))
}

/// `dst` (absolute, as seen inside) under the new root.
fn inside(root: &Path, dst: &Path) -> PathBuf {
    root.join(dst.strip_prefix("/").unwrap_or(dst))
}

fn mkdir_p(path: &Path) -> Result<(), SetupError> {
    std::fs::create_dir_all(path).map_err(|e| {
        (
            format!("creating {path:?}"),
            Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)),
        )
    })
}

/// An empty file or directory to mount `src` on.
fn mount_point_for(src: &Path, target: &Path) -> Result<(), SetupError> {
    if std::fs::metadata(src).is_ok_and(|m| m.is_dir()) {
        return mkdir_p(target);
    }
    if let Some(parent) = target.parent() {
        mkdir_p(parent)?;
    }
    if std::fs::symlink_metadata(target).is_err() {
        std::fs::File::create(target).map_err(|e| {
            (
                format!("creating {target:?}"),
                Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)),
            )
        })?;
    }
    Ok(())
}

const NONE: Option<&str> = None;

/// Build the sandbox's root at `root` from `ops`, in their order, then
/// make it the root. The order of the system calls is part of the
/// sandbox's promise: keep it.
fn build_root(root: &Path, ops: &[MountOp], shm_size: u64) -> Result<(), SetupError> {
    mount_new_root(root)?;
    for op in ops {
        apply(root, op, shm_size)?;
    }
    pivot_into(root)
}

/// An empty tmpfs at `root`, after making every mount private so that
/// nothing we mount propagates back to the host.
fn mount_new_root(root: &Path) -> Result<(), SetupError> {
    ctx(
        || "making / private".into(),
        mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE),
    )?;
    ctx(
        || format!("mounting the new root on {root:?}"),
        mount(
            Some("tmpfs"),
            root,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            // Mount points and a few small files; read-only once built.
            Some("mode=0755,size=4m"),
        ),
    )?;
    Ok(())
}

/// One entry of the new root.
fn apply(root: &Path, op: &MountOp, shm_size: u64) -> Result<(), SetupError> {
    match op {
        MountOp::ReadOnly { src, dst } => bind_host_path(root, src, dst, true),
        MountOp::ReadWrite { src, dst } => bind_host_path(root, src, dst, false),
        MountOp::Dir { dst } => mkdir_p(&inside(root, dst)),
        MountOp::Symlink { target, dst } => {
            let link = inside(root, dst);
            if let Some(parent) = link.parent() {
                mkdir_p(parent)?;
            }
            std::os::unix::fs::symlink(target, &link).map_err(|e| {
                (
                    format!("symlink {dst:?}"),
                    Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)),
                )
            })
        }
        MountOp::Tmpfs { dst } => {
            let target = inside(root, dst);
            mkdir_p(&target)?;
            ctx(
                || format!("tmpfs on {dst:?}"),
                mount(
                    Some("tmpfs"),
                    &target,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some("mode=1777"),
                ),
            )
        }
        MountOp::Proc { dst } => mount_proc(root, dst),
        MountOp::Dev { dst } => build_dev(&inside(root, dst), shm_size),
    }
}

/// A host path shown at `dst`. /sys is a convenience (CPU counts and the
/// like), not something a build needs: where it cannot be shown read-only
/// (a user namespace inside a container refuses it), the sandbox goes
/// without it.
fn bind_host_path(root: &Path, src: &Path, dst: &Path, read_only: bool) -> Result<(), SetupError> {
    let target = inside(root, dst);
    mount_point_for(src, &target)?;
    let bound = bind(src, &target, dst, read_only);
    if dst == Path::new("/sys") {
        if bound.is_err() {
            let _ = umount2(&target, MntFlags::MNT_DETACH);
        }
        Ok(())
    } else {
        bound
    }
}

/// A /proc of the sandbox's PID namespace (masked), or the container's
/// own where a fresh one is refused.
fn mount_proc(root: &Path, dst: &Path) -> Result<(), SetupError> {
    let target = inside(root, dst);
    mkdir_p(&target)?;
    let fresh = mount(
        Some("proc"),
        &target,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        NONE,
    );
    match fresh {
        Ok(()) => mask_proc(root),
        // Inside a container /proc has masked paths, and a user
        // namespace may not mount a procfs that would unmask
        // them: show the container's own /proc instead (with
        // its masks). The PID namespace still ends every
        // process of the step; only `ps` shows the container's.
        Err(Errno::EPERM) => ctx(
            || "mounting /proc (and binding the container's)".into(),
            mount(
                Some("/proc"),
                &target,
                NONE,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                NONE,
            ),
        ),
        Err(e) => Err(("mounting /proc".into(), e)),
    }
}

/// Make `root` the root, leave the old one behind, and make the top of
/// the new one read-only: nothing may be created there.
fn pivot_into(root: &Path) -> Result<(), SetupError> {
    ctx(|| format!("entering {root:?}"), nix::unistd::chdir(root))?;
    ctx(|| "pivot_root".into(), nix::unistd::pivot_root(".", "."))?;
    ctx(
        || "detaching the old root".into(),
        umount2(".", MntFlags::MNT_DETACH),
    )?;
    ctx(|| "chdir /".into(), nix::unistd::chdir("/"))?;
    ctx(
        || "making the new root read-only".into(),
        mount(
            NONE,
            "/",
            NONE,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            NONE,
        ),
    )?;
    Ok(())
}

/// Bind `src` at `target` (shown as `dst`) with what is mounted beneath
/// it, then make all of it nosuid, nodev and, when asked, read-only.
fn bind(src: &Path, target: &Path, dst: &Path, read_only: bool) -> Result<(), SetupError> {
    ctx(
        || format!("binding {src:?} at {dst:?}"),
        mount(
            Some(src),
            target,
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            NONE,
        ),
    )?;
    let mut remount = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if read_only {
        remount |= MsFlags::MS_RDONLY;
    }
    remount_tree(target, remount).map_err(|(what, e)| (format!("{dst:?}: {what}"), e))
}

/// Remount `target` and every mount beneath it with `flags` added, keeping
/// the flags each already has (in a user namespace they are locked, and a
/// remount that drops one is refused).
fn remount_tree(target: &Path, flags: MsFlags) -> Result<(), SetupError> {
    let mut points = vec![target.to_path_buf()];
    if let Ok(info) = std::fs::read("/proc/self/mountinfo") {
        for line in info.split(|&b| b == b'\n') {
            let Some(point) = line.split(|&b| b == b' ').nth(4) else {
                continue;
            };
            let point = PathBuf::from(OsString::from_vec(unescape_mountinfo(point)));
            if point != target && point.starts_with(target) && !points.contains(&point) {
                points.push(point);
            }
        }
    }
    for point in points {
        let existing = nix::sys::statvfs::statvfs(&point)
            .map(|s| ms_flags(s.flags()))
            .unwrap_or(MsFlags::empty());
        ctx(
            || format!("remounting {point:?}"),
            mount(
                NONE,
                &point,
                NONE,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | existing,
                NONE,
            ),
        )?;
    }
    Ok(())
}

fn ms_flags(fs: nix::sys::statvfs::FsFlags) -> MsFlags {
    use nix::sys::statvfs::FsFlags as F;
    let pairs = [
        (F::ST_RDONLY, MsFlags::MS_RDONLY),
        (F::ST_NOSUID, MsFlags::MS_NOSUID),
        (F::ST_NODEV, MsFlags::MS_NODEV),
        (F::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (F::ST_NOATIME, MsFlags::MS_NOATIME),
        (F::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (F::ST_RELATIME, MsFlags::MS_RELATIME),
    ];
    pairs
        .iter()
        .filter(|(f, _)| fs.contains(*f))
        .fold(MsFlags::empty(), |acc, (_, m)| acc | *m)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        let value = octal.map(|d| d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0')));
        if let (b'\\', Some(v @ 0..=255)) = (field[i], value) {
            out.push(v as u8);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

/// Paths of a fresh /proc (and /sys) hidden from steps, as runc hides them
/// from a container: kernel memory, keys of every user, timers and
/// scheduler details of the host.
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/key-users",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
/// Paths of a fresh /proc shown read-only (kernel tunables and triggers).
const READ_ONLY_PROC: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Mask and write-protect what a container runtime masks: files get
/// `/dev/null` bound over them, directories an empty read-only tmpfs.
fn mask_proc(root: &Path) -> Result<(), SetupError> {
    for path in MASKED {
        let target = inside(root, Path::new(path));
        let Ok(meta) = std::fs::symlink_metadata(&target) else {
            continue;
        };
        let masked = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                &target,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=0"),
            )
        } else {
            mount(Some("/dev/null"), &target, NONE, MsFlags::MS_BIND, NONE)
        };
        ctx(|| format!("masking {path}"), masked)?;
    }
    for path in READ_ONLY_PROC {
        let target = inside(root, Path::new(path));
        if std::fs::symlink_metadata(&target).is_err() {
            continue;
        }
        ctx(
            || format!("binding {path} read-only"),
            mount(
                Some(&target),
                &target,
                NONE,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                NONE,
            ),
        )?;
        remount_tree(
            &target,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        )?;
    }
    Ok(())
}

fn build_dev(dev: &Path, shm_size: u64) -> Result<(), SetupError> {
    mkdir_p(dev)?;
    ctx(
        || "tmpfs on /dev".into(),
        mount(
            Some("tmpfs"),
            dev,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=0755,size=64k"),
        ),
    )?;
    // No `tty`: a step has no controlling terminal (it runs in a session of
    // its own), and the operator's must not be reachable by name.
    for node in ["null", "zero", "full", "random", "urandom"] {
        let host = Path::new("/dev").join(node);
        if std::fs::symlink_metadata(&host).is_err() {
            continue;
        }
        let target = dev.join(node);
        mount_point_for(&host, &target)?;
        ctx(
            || format!("binding /dev/{node}"),
            mount(Some(host.as_path()), &target, NONE, MsFlags::MS_BIND, NONE),
        )?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let _ = std::os::unix::fs::symlink(target, dev.join(name));
    }
    let shm = dev.join("shm");
    mkdir_p(&shm)?;
    // Sized: what a step keeps there is memory, and counts as disk.
    let shm_options = if shm_size > 0 {
        format!("mode=1777,size={shm_size}")
    } else {
        "mode=1777".to_string()
    };
    ctx(
        || "tmpfs on /dev/shm".into(),
        mount(
            Some("tmpfs"),
            &shm,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(shm_options.as_str()),
        ),
    )?;
    // A private pty instance, for the rare build tool that wants one; not
    // every kernel lets a user namespace mount it, and no build needs it.
    let pts = dev.join("pts");
    mkdir_p(&pts)?;
    let _ = mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=620"),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_round_trip_through_arguments() {
        let plan = Plan {
            parent: 42,
            namespaces: true,
            user_namespace: Some((1000, 1000)),
            netns: Some("/proc/7/ns/net".into()),
            cgroups: vec![
                "/sys/fs/cgroup/memory/x".into(),
                "/sys/fs/cgroup/pids/x".into(),
            ],
            file_size_limit: 1 << 33,
            shm_size: 1 << 28,
            new_root: Some("/ws/root".into()),
            mounts: vec![
                MountOp::ReadOnly {
                    src: "/usr".into(),
                    dst: "/usr".into(),
                },
                MountOp::ReadWrite {
                    src: "/ws/with space".into(),
                    dst: "/workspace/build".into(),
                },
                MountOp::Symlink {
                    target: "usr/bin".into(),
                    dst: "/bin".into(),
                },
                MountOp::Dir { dst: "/var".into() },
                MountOp::Tmpfs { dst: "/run".into() },
                MountOp::Proc {
                    dst: "/proc".into(),
                },
                MountOp::Dev { dst: "/dev".into() },
            ],
            hostname: Some("x".into()),
            user: Some((7, 8)),
            sweep_user: true,
            cwd: "/workspace/build".into(),
            argv: vec!["bin/compile".into(), "--".into(), "-x".into()],
            env: Vec::new(),
        };
        assert_eq!(Plan::from_args(&plan.to_args()).unwrap(), plan);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(br"/a\040b\134c"), b"/a b\\c");
        assert_eq!(unescape_mountinfo(br"/x\04"), br"/x\04");
        assert_eq!(unescape_mountinfo(br"/x\777"), br"/x\777");
    }
}
