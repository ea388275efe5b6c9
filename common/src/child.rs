//! Running one buildpack step (`bin/detect`, `bin/compile`, `bin/release`,
//! an `export` file) as a child process.
//!
//! Each step gets exactly the environment it is given (nothing of ours
//! leaks in), runs in its own process group, and streams its output live to
//! our stderr, indented Heroku-style, with stdout and stderr sharing one
//! pipe so their order is kept. A step that outlives the build's deadline,
//! or a build that is interrupted (SIGTERM/SIGINT, see [`Interrupt`]),
//! has its whole process group killed; so does anything a step leaves
//! running in the background once it exits.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// Largest stdout captured from `bin/detect`, `bin/release` or an export.
pub const MAX_CAPTURE: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("could not run {program:?}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{program:?} did not finish before the build's time limit")]
    TimedOut { program: PathBuf },
    #[error("interrupted by {signal}")]
    Interrupted { signal: Signal },
    #[error("{program:?} printed more than {MAX_CAPTURE} bytes on stdout")]
    OutputTooLarge { program: PathBuf },
    #[error("i/o while running {program:?}: {source}")]
    Io {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The environment of a step, exactly.
pub type Env = BTreeMap<OsString, OsString>;

/// Shared interrupt state: the signal thread records the signal and kills
/// the running step's process group; the build checks it between steps.
#[derive(Debug, Default)]
pub struct Interrupt {
    signal: AtomicI32,
    running_group: AtomicI32,
}

impl Interrupt {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Record `signal` and kill the running step, if any.
    pub fn trigger(&self, signal: Signal) {
        self.signal.store(signal as i32, Ordering::SeqCst);
        let pgid = self.running_group.load(Ordering::SeqCst);
        if pgid > 0 {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }

    /// The signal that interrupted the build, if any.
    pub fn signal(&self) -> Option<Signal> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            n => Signal::try_from(n).ok(),
        }
    }

    /// Fail with [`StepError::Interrupted`] if the build was interrupted.
    pub fn check(&self) -> Result<(), StepError> {
        match self.signal() {
            Some(signal) => Err(StepError::Interrupted { signal }),
            None => Ok(()),
        }
    }
}

/// Runs steps; one per build.
#[derive(Debug)]
pub struct StepRunner {
    runtime: tokio::runtime::Runtime,
    deadline: Instant,
    interrupt: Arc<Interrupt>,
    /// Run steps as this (uid, gid) instead of our own user.
    pub credentials: Option<(u32, u32)>,
}

/// What a step did.
#[derive(Debug)]
pub struct StepOutput {
    pub status: ExitStatus,
    /// Captured stdout (only when capture was asked for).
    pub stdout: Vec<u8>,
}

impl StepRunner {
    pub fn new(deadline: Instant, interrupt: Arc<Interrupt>) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Self {
            runtime,
            deadline,
            interrupt,
            credentials: None,
        })
    }

    pub fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }

    /// Run `program args...` in `cwd` with exactly `env`. Output is streamed
    /// indented to stderr; with `capture_stdout`, stdout is returned instead
    /// and only stderr is streamed.
    pub fn run(
        &self,
        program: &Path,
        args: &[&OsStr],
        env: &Env,
        cwd: &Path,
        capture_stdout: bool,
    ) -> Result<StepOutput, StepError> {
        self.interrupt.check()?;
        let started = Instant::now();
        tracing::debug!(?program, ?args, ?cwd, "running buildpack step");
        let result = self
            .runtime
            .block_on(self.run_async(program, args, env, cwd, capture_stdout));
        tracing::info!(?program, elapsed = ?started.elapsed(), ok = result.as_ref().is_ok_and(|o| o.status.success()), "step finished");
        result
    }

    async fn run_async(
        &self,
        program: &Path,
        args: &[&OsStr],
        env: &Env,
        cwd: &Path,
        capture_stdout: bool,
    ) -> Result<StepOutput, StepError> {
        let io_err = |source| StepError::Io {
            program: program.to_path_buf(),
            source,
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(env)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        if let Some((uid, gid)) = self.credentials {
            cmd.uid(uid).gid(gid);
        }
        // One pipe for both streams keeps their relative order; when stdout
        // is captured it gets a pipe of its own.
        let (log_read, log_write) = std::io::pipe().map_err(io_err)?;
        let log_write: OwnedFd = log_write.into();
        if capture_stdout {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(Stdio::from(log_write.try_clone().map_err(io_err)?));
        }
        cmd.stderr(Stdio::from(log_write));
        let mut child = cmd.spawn().map_err(|source| StepError::Spawn {
            program: program.to_path_buf(),
            source,
        })?;
        // The command (holding our copy of the write end) must be gone so
        // the log pipe reaches EOF when the step's processes close it.
        drop(cmd);
        let pgid = child.id().map(|id| id as i32).unwrap_or(0);
        self.interrupt.running_group.store(pgid, Ordering::SeqCst);

        let log_task = tokio::spawn(stream_log(OwnedFd::from(log_read)));
        let stdout_task = child.stdout.take().map(|out| {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut limited = out.take(MAX_CAPTURE as u64 + 1);
                limited.read_to_end(&mut buf).await.map(|_| buf)
            })
        });

        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let waited = tokio::time::timeout(remaining, child.wait()).await;
        // Whatever happened, nothing of this step may keep running: a
        // daemon left behind could still change the build dir while it is
        // packed.
        if pgid > 0 {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        self.interrupt.running_group.store(0, Ordering::SeqCst);
        let status = match waited {
            Ok(status) => status.map_err(io_err)?,
            Err(_) => {
                let _ = child.wait().await;
                finish_log(log_task).await;
                return Err(StepError::TimedOut {
                    program: program.to_path_buf(),
                });
            }
        };
        finish_log(log_task).await;
        self.interrupt.check()?;
        let stdout = match stdout_task {
            Some(task) => {
                let out = tokio::time::timeout(Duration::from_secs(5), task)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .transpose()
                    .map_err(io_err)?
                    .unwrap_or_default();
                if out.len() > MAX_CAPTURE {
                    return Err(StepError::OutputTooLarge {
                        program: program.to_path_buf(),
                    });
                }
                out
            }
            None => Vec::new(),
        };
        Ok(StepOutput { status, stdout })
    }
}

/// Wait briefly for the log to drain: a process that escaped the group
/// (setsid) could hold the pipe open forever.
async fn finish_log(task: tokio::task::JoinHandle<()>) {
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

async fn stream_log(fd: OwnedFd) {
    let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let mut err = std::io::stderr().lock();
                let _ = crate::log::write_indented(&mut err, &line);
                let _ = err.flush();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(timeout: Duration) -> StepRunner {
        StepRunner::new(Instant::now() + timeout, Interrupt::new()).unwrap()
    }

    fn env() -> Env {
        [("PATH", "/usr/bin:/bin"), ("ONLY", "this")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect()
    }

    #[test]
    fn captures_stdout_with_exactly_the_given_env() {
        let out = runner(Duration::from_secs(10))
            .run(
                Path::new("/bin/sh"),
                &[OsStr::new("-c"), OsStr::new("env; echo log >&2")],
                &env(),
                Path::new("/"),
                true,
            )
            .unwrap();
        assert!(out.status.success());
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(stdout.contains("ONLY=this"));
        assert!(!stdout.contains("HOME="), "{stdout}");
    }

    #[test]
    fn a_step_past_the_deadline_is_killed_with_its_group() {
        let start = Instant::now();
        let err = runner(Duration::from_millis(300))
            .run(
                Path::new("/bin/sh"),
                &[OsStr::new("-c"), OsStr::new("sleep 30 & sleep 30")],
                &env(),
                Path::new("/"),
                false,
            )
            .unwrap_err();
        assert!(matches!(err, StepError::TimedOut { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = runner(Duration::from_secs(5))
            .run(
                Path::new("/nonexistent/bin/compile"),
                &[],
                &env(),
                Path::new("/"),
                false,
            )
            .unwrap_err();
        assert!(matches!(err, StepError::Spawn { .. }));
    }
}
