//! Running one buildpack step (`bin/detect`, `bin/compile`, `bin/release`,
//! an `export` file, a buildpack's `git clone`) as a child process in the
//! build's [`Sandbox`].
//!
//! Each step gets exactly the environment it is given (nothing of ours
//! leaks in), runs in its own process group under the sandbox helper, and
//! streams its output live to our stderr, indented Heroku-style, with
//! stdout and stderr sharing one pipe so their order is kept. Lines longer
//! than [`MAX_LOG_LINE`] are cut, with a note: memory stays bounded
//! whatever a buildpack prints. When the step ends, the build's deadline
//! passes or the build is interrupted, the step's process group is killed
//! and the sandbox sweeps whatever else the step left behind.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

use crate::sandbox::limits::{Counters, DiskWatch};
use crate::sandbox::{Launch, Sandbox};
use slug_shared::cancel::{Cancel, Stop};

/// Largest stdout captured from `bin/detect`, `bin/release` or an export.
pub const MAX_CAPTURE: usize = 4 << 20;
/// Longest log line shown; the rest of a longer line is left out (and
/// counted in a note).
pub const MAX_LOG_LINE: usize = 16 << 10;

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("could not run {program:?}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Stopped(#[from] Stop),
    #[error("{program:?} printed more than {MAX_CAPTURE} bytes on stdout")]
    OutputTooLarge { program: PathBuf },
    /// A build resource limit stopped the step.
    #[error("{0}")]
    LimitReached(crate::sandbox::Hit),
    #[error("i/o while running {program:?}")]
    Io {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The environment of a step, exactly.
pub type Env = BTreeMap<OsString, OsString>;

/// One step to run.
#[derive(Debug, Clone)]
pub struct Step<'a> {
    /// Program (as the sandbox sees it) and its arguments.
    pub argv: Vec<OsString>,
    pub env: &'a Env,
    /// Working directory, as the sandbox sees it.
    pub cwd: &'a Path,
    /// Return stdout instead of streaming it to the log.
    pub capture_stdout: bool,
    /// Host paths the step may read that the sandbox does not show anyway
    /// (an operator's `file://` buildpack repository).
    pub read_only: &'a [PathBuf],
}

impl<'a> Step<'a> {
    /// `program args...` in `cwd` with `env`, output streamed to the log.
    pub fn new(program: &Path, args: &[&OsStr], env: &'a Env, cwd: &'a Path) -> Self {
        let mut argv = vec![program.as_os_str().to_os_string()];
        argv.extend(args.iter().map(|a| a.to_os_string()));
        Self {
            argv,
            env,
            cwd,
            capture_stdout: false,
            read_only: &[],
        }
    }

    pub fn capture(mut self) -> Self {
        self.capture_stdout = true;
        self
    }

    pub fn read_only(mut self, paths: &'a [PathBuf]) -> Self {
        self.read_only = paths;
        self
    }

    fn program(&self) -> PathBuf {
        PathBuf::from(&self.argv[0])
    }
}

/// Runs steps; one per build.
#[derive(Debug)]
pub struct StepRunner {
    runtime: tokio::runtime::Runtime,
    cancel: Arc<Cancel>,
    sandbox: Arc<Sandbox>,
}

/// What a step did.
#[derive(Debug)]
pub struct StepOutput {
    pub status: ExitStatus,
    /// Captured stdout (only when capture was asked for).
    pub stdout: Vec<u8>,
    /// The last non-blank lines of its log (stderr, and stdout when not
    /// captured), as logged: at most [`TAIL_LINES`] lines and
    /// [`TAIL_BYTES`] bytes, control characters escaped.
    pub tail: Vec<String>,
}

/// How many of a step's last log lines [`StepOutput::tail`] keeps.
pub const TAIL_LINES: usize = 20;
/// How many bytes of them at most.
pub const TAIL_BYTES: usize = 4096;

/// The last non-blank lines of a log, bounded in lines and bytes.
#[derive(Debug, Default)]
pub struct Tail {
    lines: std::collections::VecDeque<String>,
    bytes: usize,
}

impl Tail {
    pub fn push(&mut self, line: &[u8]) {
        let text = slug_shared::log::terminal_safe(line.strip_suffix(b"\r").unwrap_or(line));
        let text = text.trim_end();
        if text.trim().is_empty() {
            return;
        }
        let mut text = text.to_string();
        if text.len() > TAIL_BYTES {
            let mut end = TAIL_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        self.bytes += text.len();
        self.lines.push_back(text);
        while self.lines.len() > TAIL_LINES || self.bytes > TAIL_BYTES {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.len();
            }
        }
    }

    pub fn into_lines(self) -> Vec<String> {
        self.lines.into()
    }
}

impl StepRunner {
    pub fn new(cancel: Arc<Cancel>, sandbox: Arc<Sandbox>) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Self {
            runtime,
            cancel,
            sandbox,
        })
    }

    pub fn cancel(&self) -> &Cancel {
        &self.cancel
    }

    pub fn cancel_arc(&self) -> Arc<Cancel> {
        Arc::clone(&self.cancel)
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Run `step` to its end (or the build's). Whatever happens, nothing of
    /// it is left running afterwards.
    pub fn run(&self, step: Step<'_>) -> Result<StepOutput, StepError> {
        self.cancel.check()?;
        let started = Instant::now();
        tracing::debug!(argv = ?step.argv, cwd = ?step.cwd, "running buildpack step");
        let result = self.runtime.block_on(self.run_async(&step));
        self.sandbox.sweep();
        tracing::info!(program = ?step.program(), elapsed = ?started.elapsed(), ok = result.as_ref().is_ok_and(|o| o.status.success()), "step finished");
        result
    }

    async fn run_async(&self, step: &Step<'_>) -> Result<StepOutput, StepError> {
        let program = step.program();
        let io_err = |source| StepError::Io {
            program: program.clone(),
            source,
        };
        let launch = self
            .sandbox
            .command(step.argv.clone(), step.cwd, step.read_only);
        let counters = self.sandbox.cgroup().map(|cg| cg.counters());
        let mut cmd = command(&launch, step.env);
        let log_read = route_output(&mut cmd, step.capture_stdout).map_err(io_err)?;
        let mut child = cmd.spawn().map_err(|source| StepError::Spawn {
            program: program.clone(),
            source,
        })?;
        // The command (holding our copy of the write end) must be gone so
        // the log pipe reaches EOF when the step's processes close it.
        drop(cmd);
        hand_over_env(&mut child, step.env);
        let pgid = child.id().map(|id| id as i32).unwrap_or(0);
        self.cancel.set_running_group(pgid);
        let watch = self.watch_disk(&launch, pgid);

        let log_task = tokio::spawn(stream_log(OwnedFd::from(log_read)));
        let stdout_task = child.stdout.take().map(|out| {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut limited = out.take(MAX_CAPTURE as u64 + 1);
                limited.read_to_end(&mut buf).await.map(|_| buf)
            })
        });

        let Some(status) = self
            .wait_then_kill(&mut child, pgid)
            .await
            .map_err(io_err)?
        else {
            finish_log(log_task).await;
            return Err(StepError::Stopped(Stop::TimedOut));
        };
        let tail = finish_log(log_task).await;
        self.cancel.check()?;
        self.check_limits(watch, status, counters)?;
        let stdout = match stdout_task {
            Some(task) => captured(task, program).await?,
            None => Vec::new(),
        };
        Ok(StepOutput {
            status,
            stdout,
            tail,
        })
    }

    /// Which directories count towards the build's disk limit while the
    /// step runs, and a watch over them that kills the step's group when
    /// they exceed it. Only for steps under the helper (`env_as_data`)
    /// with a limit set.
    fn watch_disk(&self, launch: &Launch, pgid: i32) -> Option<DiskWatch> {
        let disk_limit = self.sandbox.limits().disk;
        (launch.env_as_data && disk_limit > 0 && pgid > 0).then(|| {
            let host = self.sandbox.host();
            // In memory, the workspace's use is the tmpfs's: only the cache
            // (on disk) is walked.
            let tmpfs = self.sandbox.workspace_tmpfs().map(Path::to_path_buf);
            let mut dirs = vec![host.cache.clone()];
            if tmpfs.is_none() {
                dirs.extend([
                    host.build.clone(),
                    host.home.clone(),
                    host.tmp.clone(),
                    host.app.clone(),
                    host.buildpacks.clone(),
                ]);
            }
            DiskWatch::start(dirs, tmpfs, disk_limit, move || {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            })
        })
    }

    /// Wait for the step until the build's deadline; `None` when the
    /// deadline came first.
    async fn wait_then_kill(
        &self,
        child: &mut tokio::process::Child,
        pgid: i32,
    ) -> std::io::Result<Option<ExitStatus>> {
        let waited = tokio::time::timeout(self.cancel.remaining(), child.wait()).await;
        // Whatever happened, nothing of this step may keep running: a
        // daemon left behind could still change the build dir while it is
        // packed.
        if pgid > 0 {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        self.cancel.set_running_group(0);
        match waited {
            Ok(status) => status.map(Some),
            Err(_) => {
                let _ = child.wait().await;
                Ok(None)
            }
        }
    }

    /// Whether a build limit, rather than the step itself, decided how the
    /// step ended: then the build fails naming the limit.
    fn check_limits(
        &self,
        watch: Option<DiskWatch>,
        status: ExitStatus,
        counters: Option<Counters>,
    ) -> Result<(), StepError> {
        // Over the disk limit fails the build even when the step itself
        // succeeded: the limit is the build's, not the step's.
        if watch.is_some_and(|w| w.finish(true)) {
            return Err(StepError::LimitReached(crate::sandbox::Hit::Disk(
                self.sandbox.limits().disk,
            )));
        }
        if !status.success() {
            // Stopped by a limit rather than by its own failure: say which.
            if let Some(hit) = self
                .sandbox
                .cgroup()
                .zip(counters)
                .and_then(|(cg, before)| cg.hit_since(before))
            {
                return Err(StepError::LimitReached(hit));
            }
        }
        Ok(())
    }
}

/// What the step's process starts with: the helper's command line, and the
/// step's environment either as data on stdin (under the helper) or as
/// the process's own (without it).
fn command(launch: &Launch, env: &Env) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&launch.program);
    cmd.args(&launch.args)
        .env_clear()
        .current_dir(&launch.cwd)
        .kill_on_drop(true);
    if launch.env_as_data {
        // The helper runs as root: the step's environment (which a
        // buildpack's `export` shapes) must never be its own, where
        // ld.so and libc would read it. It reads it from stdin as data,
        // and starts a session (and group) of its own.
        cmd.stdin(Stdio::piped());
    } else {
        cmd.envs(env).stdin(Stdio::null()).process_group(0);
    }
    if let Some((uid, gid)) = launch.credentials {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// Where the step's output goes: one pipe for both streams keeps their
/// relative order; when stdout is captured it gets a pipe of its own.
/// Returns the read end of the log pipe.
fn route_output(
    cmd: &mut tokio::process::Command,
    capture_stdout: bool,
) -> std::io::Result<std::io::PipeReader> {
    let (log_read, log_write) = std::io::pipe()?;
    let log_write: OwnedFd = log_write.into();
    if capture_stdout {
        cmd.stdout(Stdio::piped());
    } else {
        cmd.stdout(Stdio::from(log_write.try_clone()?));
    }
    cmd.stderr(Stdio::from(log_write));
    Ok(log_read)
}

/// Write the step's environment to the helper's stdin, when it reads it
/// there (see [`command`]).
fn hand_over_env(child: &mut tokio::process::Child, env: &Env) {
    if let Some(mut stdin) = child.stdin.take() {
        let data = slug_shared::isolate::encode_env(
            env.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str())),
        );
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // A helper that failed early does not read it: nothing to do.
            let _ = stdin.write_all(&data).await;
        });
    }
}

/// The captured stdout, once the step is over: refused when larger than
/// [`MAX_CAPTURE`].
async fn captured(
    task: tokio::task::JoinHandle<std::io::Result<Vec<u8>>>,
    program: PathBuf,
) -> Result<Vec<u8>, StepError> {
    let out = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .ok()
        .and_then(Result::ok)
        .transpose()
        .map_err(|source| StepError::Io {
            program: program.clone(),
            source,
        })?
        .unwrap_or_default();
    if out.len() > MAX_CAPTURE {
        return Err(StepError::OutputTooLarge { program });
    }
    Ok(out)
}

/// Wait briefly for the log to drain: a process that escaped the group
/// (only possible without namespaces, until the sweep) could hold the pipe
/// open.
/// Returns the log's last lines (none if it did not drain in time).
async fn finish_log(task: tokio::task::JoinHandle<Vec<String>>) -> Vec<String> {
    match tokio::time::timeout(Duration::from_secs(2), task).await {
        Ok(Ok(tail)) => tail,
        _ => Vec::new(),
    }
}

/// Relay a step's log to ours, line by line; returns its last lines.
async fn stream_log(fd: OwnedFd) -> Vec<String> {
    let mut tail = Tail::default();
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return tail.into_lines();
    };
    let mut lines = LineCutter::new(MAX_LOG_LINE);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut err = std::io::stderr().lock();
                lines.feed(&buf[..n], &mut |line| {
                    let _ = slug_shared::log::write_indented(&mut err, line);
                    tail.push(line);
                });
                let _ = err.flush();
            }
        }
    }
    let mut err = std::io::stderr().lock();
    lines.finish(&mut |line| {
        let _ = slug_shared::log::write_indented(&mut err, line);
        tail.push(line);
    });
    let _ = err.flush();
    tail.into_lines()
}

/// Splits a byte stream into lines of at most `max` bytes: the rest of a
/// longer line is dropped and counted, and the line ends with a note
/// saying how much was left out. Holds at most `max` bytes.
#[derive(Debug)]
pub struct LineCutter {
    max: usize,
    line: Vec<u8>,
    dropped: u64,
}

impl LineCutter {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            line: Vec::new(),
            dropped: 0,
        }
    }

    /// Feed bytes; `emit` gets each complete line (without its newline).
    pub fn feed(&mut self, mut bytes: &[u8], emit: &mut dyn FnMut(&[u8])) {
        while !bytes.is_empty() {
            let (part, rest, ends) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &bytes[bytes.len()..], false),
            };
            let room = self.max.saturating_sub(self.line.len());
            let keep = part.len().min(room);
            self.line.extend_from_slice(&part[..keep]);
            self.dropped += (part.len() - keep) as u64;
            if ends {
                self.emit_line(emit);
            }
            bytes = rest;
        }
    }

    /// The last line, if it had no newline.
    pub fn finish(&mut self, emit: &mut dyn FnMut(&[u8])) {
        if !self.line.is_empty() || self.dropped > 0 {
            self.emit_line(emit);
        }
    }

    fn emit_line(&mut self, emit: &mut dyn FnMut(&[u8])) {
        if self.dropped > 0 {
            let note = format!(" [line cut: {} more bytes not shown]", self.dropped);
            self.line.extend_from_slice(note.as_bytes());
        }
        emit(&self.line);
        self.line.clear();
        self.dropped = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{Places, SandboxConfig};

    fn runner(timeout: Duration) -> StepRunner {
        let tmp = std::env::temp_dir();
        let places = Places {
            build: tmp.clone(),
            cache: tmp.clone(),
            env: tmp.clone(),
            home: tmp.clone(),
            tmp: tmp.clone(),
            app: tmp.clone(),
            buildpacks: tmp.clone(),
        };
        let scratch = tempfile::tempdir().unwrap();
        let cfg = SandboxConfig {
            fixed_user: Some((65534, 65534)),
            ..SandboxConfig::default()
        };
        let sandbox = Sandbox::create(&cfg, places, Path::new("/app"), scratch.path()).unwrap();
        StepRunner::new(Cancel::new(timeout), Arc::new(sandbox)).unwrap()
    }

    fn env() -> Env {
        [("PATH", "/usr/bin:/bin"), ("ONLY", "this")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect()
    }

    fn sh<'a>(script: &str, env: &'a Env) -> Step<'a> {
        Step::new(
            Path::new("/bin/sh"),
            &[OsStr::new("-c"), OsStr::new(script)],
            env,
            Path::new("/"),
        )
    }

    #[test]
    fn captures_stdout_with_exactly_the_given_env() {
        let env = env();
        let out = runner(Duration::from_secs(10))
            .run(sh("env; echo log >&2", &env).capture())
            .unwrap();
        assert!(out.status.success());
        let stdout = String::from_utf8(out.stdout).unwrap();
        let mut keys: Vec<&str> = stdout
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .filter(|k| *k != "PWD" && *k != "SHLVL" && *k != "_")
            .collect();
        keys.sort();
        assert_eq!(keys, ["ONLY", "PATH"], "{stdout}");
    }

    /// The deadline kills the step and everything in its group: the
    /// background sleeper must be gone too, not only the shell.
    #[test]
    fn a_step_past_the_deadline_is_killed_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        // The step may run as an unprivileged user.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let pids = dir.path().join("pids");
        let env = env();
        let start = Instant::now();
        let script = format!("sleep 30 & echo $! > {}; sleep 30", pids.display());
        let err = runner(Duration::from_millis(500))
            .run(sh(&script, &env))
            .unwrap_err();
        assert!(matches!(err, StepError::Stopped(Stop::TimedOut)), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
        let pid: i32 = std::fs::read_to_string(&pids)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            nix::sys::signal::kill(Pid::from_raw(pid), None).is_err()
        });
        assert!(gone, "background process {pid} outlived the step");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let env = env();
        let err = runner(Duration::from_secs(5))
            .run(Step::new(
                Path::new("/nonexistent/bin/compile"),
                &[],
                &env,
                Path::new("/"),
            ))
            .unwrap_err();
        assert!(matches!(err, StepError::Spawn { .. }), "{err}");
    }

    #[test]
    fn long_lines_are_cut_with_a_note_and_memory_stays_bounded() {
        let mut cutter = LineCutter::new(8);
        let mut lines: Vec<String> = Vec::new();
        let mut emit = |l: &[u8]| lines.push(String::from_utf8_lossy(l).into_owned());
        cutter.feed(b"short\n0123456789", &mut emit);
        cutter.feed(b"abcdef\nlast", &mut emit);
        assert!(cutter.line.capacity() < 64);
        cutter.finish(&mut emit);
        assert_eq!(
            lines,
            [
                "short",
                "01234567 [line cut: 8 more bytes not shown]",
                "last"
            ]
        );
    }
}
