//! The harness of the example-app tests (`tests/tests/examples_*.rs`): an
//! app under `examples/` is packed like `git archive`, built by the real
//! slugbuilder with the bundled buildpacks (`buildpacks/`), and run by the
//! real slugrunner on a loopback port, where it must give the expected HTTP
//! answer.
//!
//! Every child process has a deadline; servers run in their own process
//! group, are stopped with SIGTERM by PID, and their group is SIGKILLed if a
//! test fails half-way.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::slugs::{run_with_timeout, Finished, Slug};
use crate::{bin, repo_root};
use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// A build downloads dependencies and compresses the slug (slow in debug).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// A process type such as `release` that runs to completion.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a web process may take to answer its first request.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a web process may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Entries of an app's tree that `git archive` would not ship (ignored build
/// output or local state).
pub const NOT_SOURCE: &[&str] = &[
    ".git",
    "target",
    "node_modules",
    "__pycache__",
    "staticfiles",
    "db.sqlite3",
    ".heroku",
];

/// The example app `name` as a plain tar, like `git archive --format=tar`.
pub fn example_tar(name: &str) -> Vec<u8> {
    tar_of(&repo_root().join("examples").join(name), &[])
}

/// A tar of `dir` plus `extra` files (path, content) added or replaced.
pub fn tar_of(dir: &Path, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    append_tree(&mut builder, dir, Path::new(""), extra);
    for (path, content) in extra {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mtime(0);
        builder
            .append_data(&mut header, path, content.as_bytes())
            .expect("append extra file");
    }
    builder.into_inner().expect("finish tar")
}

fn append_tree(builder: &mut tar::Builder<Vec<u8>>, dir: &Path, rel: &Path, skip: &[(&str, &str)]) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {dir:?}: {e}"))
        .map(|e| e.expect("dir entry"))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        if NOT_SOURCE.contains(&name_str.as_ref()) {
            continue;
        }
        let rel_path = rel.join(&name);
        if skip.iter().any(|(p, _)| Path::new(p) == rel_path) {
            continue;
        }
        let path = entry.path();
        let file_type = entry.file_type().expect("file type");
        if file_type.is_dir() {
            builder
                .append_dir(&rel_path, &path)
                .expect("append dir to tar");
            append_tree(builder, &path, &rel_path, skip);
        } else {
            builder
                .append_path_with_name(&path, &rel_path)
                .expect("append file to tar");
        }
    }
}

/// A scratch dir for one test: cache, slug and an app dir path that the
/// unprivileged app user can reach.
#[derive(Debug)]
pub struct Case {
    pub dir: tempfile::TempDir,
}

impl Default for Case {
    fn default() -> Self {
        Self::new()
    }
}

impl Case {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod tempdir");
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn app_dir(&self) -> PathBuf {
        self.path("app")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.path("cache")
    }

    pub fn slug(&self) -> PathBuf {
        self.path("slug.tgz")
    }

    /// slugbuilder with the bundled buildpacks, this case's cache and app
    /// dir, and none of the caller's buildpack settings.
    pub fn slugbuilder(&self) -> Command {
        self.slugbuilder_with_cache(&self.cache_dir())
    }

    /// [`Case::slugbuilder`] with the cache dir at `cache`.
    pub fn slugbuilder_with_cache(&self, cache: &Path) -> Command {
        let mut cmd = Command::new(bin("slugbuilder"));
        for var in [
            "BUILDPACK_URL",
            "BUILDPACKS",
            "BUILDPACK_PATH",
            "CACHE_PATH",
            "ENV_PATH",
            "STACK",
            "SOURCE_VERSION",
            "SOURCE_DATE_EPOCH",
            "SLUGBUILDER_TIMEOUT",
            "SLUG_LOG",
        ] {
            cmd.env_remove(var);
        }
        cmd.arg("--buildpacks-dir")
            .arg(repo_root().join("buildpacks"))
            .arg("--cache-dir")
            .arg(cache)
            .arg("--app-dir")
            .arg(self.app_dir());
        cmd
    }

    /// Build `source` into this case's slug; returns the build log.
    pub fn build(&self, source: Vec<u8>) -> String {
        let mut cmd = self.slugbuilder();
        cmd.arg("-o").arg(self.slug());
        let out = run_with_stdin(&mut cmd, source, BUILD_TIMEOUT);
        assert_eq!(
            out.code(),
            Some(0),
            "slugbuilder failed\nstdout: {}\nstderr: {}",
            out.stdout,
            out.stderr
        );
        assert!(self.slug().is_file(), "no slug written");
        out.stderr
    }

    /// slugrunner with a clean runner environment and this case's app dir
    /// (no slug named yet).
    pub fn runner(&self) -> Command {
        let mut cmd = Command::new(bin("slugrunner"));
        for var in [
            "SLUG_URL",
            "SLUG_LOG",
            "PORT",
            "DYNO",
            "SLUGRUNNER_GRACE_PERIOD",
        ] {
            cmd.env_remove(var);
        }
        cmd.arg("--app-dir").arg(self.app_dir());
        cmd
    }

    /// slugrunner for this case's slug and app dir.
    pub fn slugrunner(&self) -> Command {
        let mut cmd = self.runner();
        cmd.arg("--slug").arg(self.slug());
        cmd
    }

    /// slugrunner with `slug` written into the scratch dir and passed with
    /// `--slug`.
    pub fn runner_with(&self, slug: &Slug) -> Command {
        let path = slug.write_to(self.dir.path());
        let mut cmd = self.runner();
        cmd.arg("--slug").arg(path);
        cmd
    }

    /// Run a process type to completion (e.g. `release`).
    pub fn run(&self, process_type: &str) -> Finished {
        let mut cmd = self.slugrunner();
        cmd.args(["start", process_type]);
        run_with_timeout(&mut cmd, RUN_TIMEOUT)
    }

    /// Start the web process on a free loopback port.
    pub fn start_web(&self) -> Server {
        let port = free_port();
        let log = self.path("web.log");
        let log_file = std::fs::File::create(&log).expect("create web log");
        let mut cmd = self.slugrunner();
        cmd.env("PORT", port.to_string())
            // As a dyno's init: signals go to the app's whole process group.
            .args(["--init", "--grace-period", "10", "start", "web"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file)
            // Its own process group, so that a failed test can kill it all.
            .process_group(0);
        let child = cmd.spawn().expect("spawn slugrunner");
        Server {
            child: Some(child),
            port,
            log,
        }
    }
}

/// Run `cmd` with `input` on stdin, with a deadline.
pub fn run_with_stdin(cmd: &mut Command, input: Vec<u8>, timeout: Duration) -> Finished {
    let out = crate::slugs::run_with_input(cmd, input, timeout);
    Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A running web process: stopped with SIGTERM by [`Server::stop`], or its
/// process group SIGKILLed when dropped (a failed assertion).
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    log: PathBuf,
}

impl Server {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path`, retrying until the server answers 200 (or the deadline,
    /// or the process exits).
    pub fn get_ok(&mut self, path: &str) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let last = match http_get(self.port, path) {
                Ok((200, body)) => return body,
                Ok((status, body)) => format!("HTTP {status}: {body}"),
                Err(e) => e.to_string(),
            };
            if let Some(status) = self
                .child
                .as_mut()
                .expect("running")
                .try_wait()
                .expect("try_wait")
            {
                panic!(
                    "web process exited ({status}) before answering GET {path}\nlast: {last}\nlog:\n{}",
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "GET {path} on port {} got no 200 within {START_TIMEOUT:?}\nlast: {last}\nlog:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM the runner by PID and wait for it and its process group.
    pub fn stop(mut self) {
        let pid = self.pid();
        kill(pid, Signal::SIGTERM).expect("SIGTERM slugrunner");
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = killpg(pid, Signal::SIGKILL);
                let _ = child.wait();
                panic!(
                    "web process did not exit within {STOP_TIMEOUT:?} of SIGTERM\nlog:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // Nothing of the app may outlive the runner (workers, npm's child).
        let group_gone = crate::slugs::wait_until(Duration::from_secs(10), || {
            matches!(killpg(pid, None), Err(Errno::ESRCH))
        });
        if !group_gone {
            let _ = killpg(pid, Signal::SIGKILL);
            panic!(
                "processes of the app outlived slugrunner ({status})\nlog:\n{}",
                self.log()
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A minimal HTTP/1.0 GET on 127.0.0.1: (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    // No shutdown of our writing side: uvicorn (FastAPI, Streamlit) drops
    // a request whose client half-closed the connection.
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("incomplete response: {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
    Ok((status, body.to_string()))
}

/// Paths in the slug (a gzip tar), without a leading `./`.
pub fn slug_entries(slug: &Path) -> Vec<String> {
    let file = std::fs::File::open(slug).expect("open slug");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    archive
        .entries()
        .expect("slug entries")
        .map(|e| {
            let e = e.expect("slug entry");
            let path = e.path().expect("entry path").to_string_lossy().into_owned();
            path.trim_start_matches("./")
                .trim_end_matches('/')
                .to_string()
        })
        .collect()
}
