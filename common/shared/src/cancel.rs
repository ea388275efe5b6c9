//! One deadline and one interrupt for a whole build.
//!
//! Every phase of a build (receiving the source, fetching buildpacks, each
//! buildpack step, packing, delivering) checks the same [`Cancel`]: it ends
//! the build when its time limit is reached or when SIGTERM, SIGINT or
//! SIGHUP arrives. Blocking work that cannot check it itself (a read from
//! stdin, a network call) runs where the build can stop waiting for it
//! ([`Cancel::recv`], [`Cancel::run_blocking`]).
//!
//! As a last resort, whoever watches signals calls [`Cancel::emergency`]:
//! it kills the running step and runs the cleanups registered by the build
//! (its workspace, a half-written slug), so that a process that must exit
//! at once still leaves nothing behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How often blocking waits look at the deadline and the interrupt flag:
/// well within the 2 seconds a build has to react to SIGTERM.
pub const POLL: Duration = Duration::from_millis(100);

/// Why a build stopped before it was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Stop {
    #[error("the build exceeded its time limit")]
    TimedOut,
    #[error("the build was interrupted by {0}")]
    Interrupted(Signal),
}

impl Stop {
    /// The documented exit code.
    pub fn exit(self) -> crate::exit::Exit {
        match self {
            Stop::TimedOut => crate::exit::Exit::Timeout,
            Stop::Interrupted(_) => crate::exit::Exit::Interrupted,
        }
    }
}

/// Value of `stop` meaning "timed out" (signals are positive).
const TIMED_OUT: i32 = -1;

type Cleanup = Box<dyn FnOnce() + Send>;

/// The shared stop state of one build.
pub struct Cancel {
    deadline: Instant,
    /// 0: running; [`TIMED_OUT`]; else the signal number.
    stop: AtomicI32,
    /// Process group of the step that is running, if any (killed on stop).
    running_group: AtomicI32,
    cleanups: Mutex<Vec<(u64, Cleanup)>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancel")
            .field("deadline", &self.deadline)
            .field("stop", &self.stopped())
            .finish_non_exhaustive()
    }
}

/// A registered cleanup; dropping it does not run it (see [`Cancel::forget`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupId(u64);

impl Cancel {
    /// A build that must be done within `timeout` from now.
    pub fn new(timeout: Duration) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            deadline: now
                .checked_add(timeout)
                .unwrap_or(now + Duration::from_secs(1 << 40)),
            stop: AtomicI32::new(0),
            running_group: AtomicI32::new(0),
            cleanups: Mutex::new(Vec::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
        })
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Stop the build (the first reason wins) and kill the running step.
    pub fn trigger(&self, why: Stop) {
        let code = match why {
            Stop::TimedOut => TIMED_OUT,
            Stop::Interrupted(sig) => sig as i32,
        };
        let _ = self
            .stop
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
        self.kill_running_group();
    }

    /// Why the build must stop, if it must: a recorded reason, or the
    /// deadline having passed (whether or not anyone noticed it yet).
    pub fn stopped(&self) -> Option<Stop> {
        match self.stop.load(Ordering::SeqCst) {
            0 if Instant::now() >= self.deadline => Some(Stop::TimedOut),
            0 => None,
            TIMED_OUT => Some(Stop::TimedOut),
            n => Some(Signal::try_from(n).map_or(Stop::TimedOut, Stop::Interrupted)),
        }
    }

    /// `Err` when the build must stop.
    pub fn check(&self) -> Result<(), Stop> {
        match self.stopped() {
            Some(stop) => Err(stop),
            None => Ok(()),
        }
    }

    /// Remember the process group of the step being run, so that a stop
    /// kills it at once; 0 when none runs.
    pub fn set_running_group(&self, pgid: i32) {
        self.running_group.store(pgid, Ordering::SeqCst);
        if pgid > 0 && self.stopped().is_some() {
            self.kill_running_group();
        }
    }

    fn kill_running_group(&self) {
        let pgid = self.running_group.load(Ordering::SeqCst);
        if pgid > 0 {
            // A sandbox helper makes its group itself (setsid, first thing
            // it does): in the instant before, only its pid exists.
            if killpg(Pid::from_raw(pgid), Signal::SIGKILL) == Err(nix::errno::Errno::ESRCH) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pgid), Signal::SIGKILL);
            }
        }
    }

    /// Wait for the next message of `rx`, giving up when the build must
    /// stop. `Ok(None)` when the sender is gone.
    pub fn recv<T>(&self, rx: &Receiver<T>) -> Result<Option<T>, Stop> {
        loop {
            self.check()?;
            match rx.recv_timeout(POLL.min(self.remaining().max(Duration::from_millis(1)))) {
                Ok(v) => return Ok(Some(v)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
            }
        }
    }

    /// Run blocking `work` on a thread of its own and wait for it, unless the
    /// build must stop first: then the thread is left behind (the process
    /// is about to end) and the stop reason is returned.
    pub fn run_blocking<T: Send + 'static>(
        &self,
        name: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Stop> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let _ = tx.send(work());
            })
            .expect("starting a worker thread");
        match self.recv(&rx)? {
            Some(v) => Ok(v),
            None => panic!("worker thread {name} ended without a result"),
        }
    }

    /// Register `cleanup` to run if the process must end abruptly
    /// ([`Cancel::emergency`]). The owner calls [`Cancel::forget`] once it
    /// has cleaned up itself.
    pub fn on_emergency(&self, cleanup: impl FnOnce() + Send + 'static) -> CleanupId {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        self.lock().push((id, Box::new(cleanup)));
        CleanupId(id)
    }

    /// Register the removal of `path` (a directory tree or a file).
    pub fn remove_on_emergency(&self, path: &Path) -> CleanupId {
        let path: PathBuf = path.to_path_buf();
        self.on_emergency(move || {
            let _ = crate::rootdir::remove_entry(&path);
        })
    }

    pub fn forget(&self, id: CleanupId) {
        self.lock().retain(|(i, _)| *i != id.0);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Cleanup)>> {
        self.cleanups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Kill the running step and run every registered cleanup, newest
    /// first. For a process about to exit without unwinding.
    pub fn emergency(&self) {
        self.kill_running_group();
        let cleanups: Vec<_> = std::mem::take(&mut *self.lock());
        for (_, cleanup) in cleanups.into_iter().rev() {
            cleanup();
        }
    }
}

/// The signals that stop a build, or slugrunner before the app runs.
pub const STOP_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// A thread that watches [`STOP_SIGNALS`] for a process that keeps them
/// blocked in every thread (block them first thing, before any thread
/// exists: a process without handlers loses them as PID 1, and one with
/// handlers could not hand them over to a later signalfd). The first one
/// triggers the [`Cancel`]; if the process has not ended by itself within
/// `grace` after it, the guard runs the emergency cleanups and calls
/// `give_up`, which must end the process.
#[derive(Debug)]
pub struct SignalGuard {
    thread: Option<std::thread::JoinHandle<()>>,
    /// Dropping it wakes the thread for good.
    wake: Option<std::os::fd::OwnedFd>,
}

impl SignalGuard {
    pub fn start(
        cancel: Arc<Cancel>,
        grace: Duration,
        give_up: impl FnOnce(Stop) + Send + 'static,
    ) -> std::io::Result<Self> {
        use nix::sys::signalfd::{SfdFlags, SignalFd};
        let mut set = nix::sys::signal::SigSet::empty();
        for sig in STOP_SIGNALS {
            set.add(sig);
        }
        let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        let (woken, wake) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let Some(sig) = wait_signal(&sfd, &woken, None) else {
                    return;
                };
                let stop = Stop::Interrupted(sig);
                cancel.trigger(stop);
                // Done when the process ends (or its owner stops the guard)
                // within the grace time; otherwise end it here.
                let _ = wait_signal(&sfd, &woken, Some(grace));
                if wait_closed(&woken) {
                    return;
                }
                cancel.emergency();
                give_up(stop);
            })?;
        Ok(Self {
            thread: Some(thread),
            wake: Some(wake),
        })
    }

    /// Stop watching: signals that arrive from now on stay pending for
    /// whoever takes them over (a supervisor's signalfd, or the default
    /// action once an exec unblocks them).
    pub fn stop(mut self) {
        self.wake.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Wait for a stop signal (or for `woken` to be closed, or `timeout`).
fn wait_signal(
    sfd: &nix::sys::signalfd::SignalFd,
    woken: &std::os::fd::OwnedFd,
    timeout: Option<Duration>,
) -> Option<Signal> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let until = timeout.map(|t| Instant::now() + t);
    loop {
        if let Ok(Some(info)) = sfd.read_signal() {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                return Some(sig);
            }
        }
        let left = until.map(|u| u.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) || wait_closed(woken) {
            return None;
        }
        let wait = left.map_or(PollTimeout::NONE, |l| {
            PollTimeout::try_from(l).unwrap_or(PollTimeout::MAX)
        });
        let mut fds = [
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(woken.as_fd(), PollFlags::POLLIN),
        ];
        let _ = poll(&mut fds, wait);
    }
}

/// Whether the other end of the wake pipe is gone.
fn wait_closed(woken: &std::os::fd::OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(woken.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_stops_without_anyone_triggering_it() {
        let cancel = Cancel::new(Duration::from_millis(50));
        assert_eq!(cancel.check(), Ok(()));
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(cancel.check(), Err(Stop::TimedOut));
    }

    #[test]
    fn the_first_reason_wins() {
        let cancel = Cancel::new(Duration::from_secs(60));
        cancel.trigger(Stop::Interrupted(Signal::SIGTERM));
        cancel.trigger(Stop::TimedOut);
        assert_eq!(cancel.check(), Err(Stop::Interrupted(Signal::SIGTERM)));
    }

    #[test]
    fn a_blocked_wait_gives_up_when_interrupted() {
        let cancel = Cancel::new(Duration::from_secs(60));
        let c = Arc::clone(&cancel);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            c.trigger(Stop::Interrupted(Signal::SIGINT));
        });
        let start = Instant::now();
        let got = cancel.run_blocking("sleeper", || std::thread::sleep(Duration::from_secs(30)));
        assert_eq!(got, Err(Stop::Interrupted(Signal::SIGINT)));
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn emergency_runs_cleanups_newest_first_and_forgotten_ones_not() {
        let cancel = Cancel::new(Duration::from_secs(60));
        let log = Arc::new(Mutex::new(Vec::new()));
        for i in 0..3 {
            let log = Arc::clone(&log);
            let id = cancel.on_emergency(move || log.lock().unwrap().push(i));
            if i == 1 {
                cancel.forget(id);
            }
        }
        cancel.emergency();
        assert_eq!(*log.lock().unwrap(), [2, 0]);
    }
}
