//! A fresh process context for tenant code: what a container runtime's init
//! (runc, crun, youki) does before it execs a container process, shared by
//! the build sandbox's helper and slugrunner's exec-as helper.
//!
//! The checklist, in the order the callers follow it:
//!
//! 1. The tenant's environment reaches the helper as **data** on a pipe
//!    ([`encode_env`], [`read_handoff`]), never as the helper's own
//!    environment: the helper runs as root, and ld.so and libc read
//!    `LD_PRELOAD`, `LD_AUDIT`, `GCONV_PATH`, `GLIBC_TUNABLES`, ... from the
//!    environment a process starts with. The data is applied only at the
//!    final `execve` of tenant code, after privileges are dropped.
//! 2. Descriptors beyond 0-2 are closed ([`close_inherited_fds`]): a lock or
//!    a root-only file open in the operator's shell never reaches tenant code.
//! 3. A new session ([`new_session`]): no controlling terminal to push input
//!    into (`TIOCSTI`) or to write escape sequences to.
//! 4. A new anonymous session keyring ([`join_new_session_keyring`]), and the
//!    uid's user keyrings emptied ([`clear_user_keyrings`]): nothing of the
//!    operator's keys, nothing left by an earlier holder of a leased uid.
//! 5. (The caller) drops credentials and sets `no_new_privs`.
//! 6. A seccomp filter with the semantics of the Docker/Podman default
//!    profile ([`apply_seccomp`]), installed last, just before `execve`.
//!
//! `unsafe` here is limited to the raw system calls nix does not wrap
//! (`close_range`, `keyctl`); each has a `// SAFETY:` comment.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::libc;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// Largest environment a helper accepts on its handoff pipe.
pub const MAX_HANDOFF: usize = 16 << 20;

/// An environment as handoff data: `KEY=VALUE` entries, each ended by NUL
/// (neither keys nor values of a real environment can hold NUL).
pub fn encode_env<'a>(
    env: impl IntoIterator<Item = (&'a std::ffi::OsStr, &'a std::ffi::OsStr)>,
) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in env {
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

/// The entries [`encode_env`] wrote, in order. An entry without `=` or with
/// an empty key is dropped (it could not have been written).
pub fn decode_env(data: &[u8]) -> Vec<(OsString, OsString)> {
    data.split(|&b| b == 0)
        .filter_map(|entry| {
            let eq = entry.iter().position(|&b| b == b'=')?;
            (eq > 0).then(|| {
                (
                    OsString::from_vec(entry[..eq].to_vec()),
                    OsString::from_vec(entry[eq + 1..].to_vec()),
                )
            })
        })
        .collect()
}

/// Read the handoff pipe `fd` to its end (at most [`MAX_HANDOFF`] bytes),
/// then put `/dev/null` in its place: the step's standard input stays empty.
pub fn read_handoff(fd: RawFd) -> std::io::Result<Vec<u8>> {
    // SAFETY: `fd` is the pipe our parent gave us as this descriptor number;
    // nothing else in this process owns it. `File` closes it when dropped,
    // after which the number is reused for /dev/null below.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut data = Vec::new();
    file.take(MAX_HANDOFF as u64 + 1).read_to_end(&mut data)?;
    if data.len() > MAX_HANDOFF {
        return Err(std::io::Error::other(format!(
            "the environment handed over is larger than {MAX_HANDOFF} bytes"
        )));
    }
    let null = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )?;
    // `null` took the lowest free number, which is `fd` when `fd` is 0.
    if std::os::fd::AsRawFd::as_raw_fd(&null) != fd {
        // SAFETY: dup2 onto a descriptor number we own (the handoff's, now
        // closed); the new descriptor is deliberately left open.
        let r = unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
    } else {
        std::mem::forget(null);
    }
    Ok(data)
}

/// Close every descriptor from 3 up: only stdin, stdout and stderr survive.
pub fn close_inherited_fds() {
    // SAFETY: close_range(2) takes plain integers and only closes
    // descriptors; nothing in this single-threaded, about-to-exec process
    // holds one of them as an owned object it will use again.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r == 0 {
        return;
    }
    // Kernels before 5.9: close what /proc lists.
    for fd in listed_fds() {
        // SAFETY: as above; a number that was the directory listing's own
        // descriptor is already closed and fails harmlessly.
        unsafe { libc::close(fd) };
    }
}

/// Mark every descriptor from 3 up close-on-exec: what our caller left open
/// (a deploy lock, a root-only file) reaches none of our children, while
/// this process may still use descriptors it opens itself later.
pub fn cloexec_inherited_fds() {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only sets a flag on
    // descriptors; it closes none.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if r == 0 {
        return;
    }
    for fd in listed_fds() {
        // SAFETY: F_SETFD on a number; an already closed one fails harmlessly.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// The descriptors above 2 that /proc lists for this process (where
/// close_range(2) is missing: kernels before 5.9 / 5.11).
fn listed_fds() -> Vec<RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|&fd| fd > 2)
                .collect()
        })
        .unwrap_or_default()
}

/// Start a new session (and process group) with no controlling terminal.
pub fn new_session() -> nix::Result<()> {
    nix::unistd::setsid().map(|_| ())
}

const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
const KEYCTL_CLEAR: libc::c_long = 7;
const KEY_SPEC_USER_KEYRING: libc::c_long = -4;
const KEY_SPEC_USER_SESSION_KEYRING: libc::c_long = -5;

fn keyctl(op: libc::c_long, arg: libc::c_long) -> nix::Result<libc::c_long> {
    // SAFETY: keyctl(2) with integer arguments (a NULL name for
    // JOIN_SESSION_KEYRING means an anonymous keyring); no memory of ours
    // is read or written by the kernel.
    let r = unsafe { libc::syscall(libc::SYS_keyctl, op, arg, 0, 0, 0) };
    if r < 0 {
        Err(nix::errno::Errno::last())
    } else {
        Ok(r)
    }
}

/// Join a new anonymous session keyring: the caller's (an operator's login,
/// a systemd service's) is left behind. A kernel without keys (ENOSYS) has
/// nothing to leave behind.
pub fn join_new_session_keyring() -> nix::Result<()> {
    match keyctl(KEYCTL_JOIN_SESSION_KEYRING, 0) {
        Ok(_) | Err(nix::errno::Errno::ENOSYS) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Empty the current uid's user and user-session keyrings: keys an earlier
/// holder of a leased uid added are gone. Best effort: a keyring that does
/// not exist yet is empty.
pub fn clear_user_keyrings() {
    for ring in [KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING] {
        let _ = keyctl(KEYCTL_CLEAR, ring);
    }
}

/// Namespace flags of clone(2) and unshare(2) that the filter refuses.
const NAMESPACE_FLAGS: [u64; 8] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    0x80, // CLONE_NEWTIME
];

/// System calls refused outright (EPERM), as the Docker/Podman default
/// profile refuses them to an unprivileged container: kernel keyrings,
/// mounts and namespaces, module and kexec loading, bpf, perf events,
/// userfaultfd, clock and swap changes, reboot, and reading other
/// processes' memory.
fn refused_syscalls() -> Vec<libc::c_long> {
    let mut calls = vec![
        libc::SYS_acct,
        libc::SYS_add_key,
        libc::SYS_keyctl,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_clock_adjtime,
        libc::SYS_clock_settime,
        libc::SYS_settimeofday,
        libc::SYS_delete_module,
        libc::SYS_finit_module,
        libc::SYS_init_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_lookup_dcookie,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_mount_setattr,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_setns,
        libc::SYS_unshare,
        libc::SYS_open_by_handle_at,
        libc::SYS_perf_event_open,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_kcmp,
        libc::SYS_quotactl,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_syslog,
        libc::SYS_userfaultfd,
        libc::SYS_nfsservctl,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_uselib,
        libc::SYS_ustat,
        libc::SYS_sysfs,
        libc::SYS__sysctl,
    ]);
    calls
}

/// System calls that answer ENOSYS, so that libc and runtimes fall back to
/// what the filter can inspect (clone3's flags are in memory, out of the
/// filter's reach; glibc then uses clone) or to plain reads and writes
/// (io_uring, which Docker's profile also refuses).
fn unavailable_syscalls() -> Vec<libc::c_long> {
    vec![
        libc::SYS_clone3,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ]
}

#[cfg(target_arch = "x86_64")]
const ARCH: seccompiler::TargetArch = seccompiler::TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: seccompiler::TargetArch = seccompiler::TargetArch::aarch64;

/// The x32 ABI's number for a system call (x86_64 kernels that allow x32
/// take the same call with this bit set; the filter refuses both).
#[cfg(target_arch = "x86_64")]
const X32_BIT: i64 = 0x4000_0000;

fn numbers(call: libc::c_long) -> Vec<i64> {
    #[cfg(target_arch = "x86_64")]
    return vec![call, call | X32_BIT];
    #[cfg(not(target_arch = "x86_64"))]
    return vec![call];
}

fn cond(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> SeccompRule {
    let condition = SeccompCondition::new(arg, len, op, value).expect("a valid seccomp condition");
    SeccompRule::new(vec![condition]).expect("a non-empty seccomp rule")
}

/// The two filters the step gets: refused calls (EPERM) and unavailable
/// ones (ENOSYS).
pub fn seccomp_filters() -> Result<Vec<BpfProgram>, seccompiler::Error> {
    let mut refused: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for call in refused_syscalls() {
        for nr in numbers(call) {
            refused.insert(nr, Vec::new());
        }
    }
    // clone(2) that makes a namespace.
    let clone_rules: Vec<SeccompRule> = NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            cond(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )
        })
        .collect();
    for nr in numbers(libc::SYS_clone) {
        refused.insert(nr, clone_rules.clone());
    }
    // ioctl(2) that pushes input into a terminal (the kernel takes the
    // request as 32 bits, so compare those).
    let ioctl_rules: Vec<SeccompRule> = [libc::TIOCSTI, libc::TIOCLINUX]
        .iter()
        .map(|&request| cond(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request))
        .collect();
    for nr in numbers(libc::SYS_ioctl) {
        refused.insert(nr, ioctl_rules.clone());
    }
    let mut unavailable: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for call in unavailable_syscalls() {
        for nr in numbers(call) {
            unavailable.insert(nr, Vec::new());
        }
    }
    let build = |rules, action| -> Result<BpfProgram, seccompiler::Error> {
        let filter = SeccompFilter::new(rules, SeccompAction::Allow, action, ARCH)?;
        Ok(filter.try_into()?)
    };
    Ok(vec![
        build(refused, SeccompAction::Errno(libc::EPERM as u32))?,
        build(unavailable, SeccompAction::Errno(libc::ENOSYS as u32))?,
    ])
}

/// Install the default filter on this thread; needs `no_new_privs` (or
/// CAP_SYS_ADMIN). Call it last before `execve`: it also binds the caller.
pub fn apply_seccomp() -> Result<(), String> {
    let filters = seccomp_filters().map_err(|e| format!("building the seccomp filter: {e}"))?;
    for filter in &filters {
        seccompiler::apply_filter(filter)
            .map_err(|e| format!("installing the seccomp filter: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environments_round_trip_as_data() {
        let env: Vec<(OsString, OsString)> = vec![
            ("LD_PRELOAD".into(), "/x/evil.so".into()),
            ("EMPTY".into(), "".into()),
            ("EQ".into(), "a=b=c".into()),
            ("NL".into(), "line\nnext".into()),
        ];
        let data = encode_env(env.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str())));
        assert_eq!(decode_env(&data), env);
        assert!(decode_env(b"=x\0noeq\0").is_empty());
    }

    #[test]
    fn the_filter_compiles() {
        let filters = seccomp_filters().unwrap();
        assert_eq!(filters.len(), 2);
        assert!(filters.iter().all(|f| !f.is_empty()));
    }
}
