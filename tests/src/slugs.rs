//! Slugs built in code, and running slugrunner with a deadline.
//!
//! Every wait here has a timeout: a test that would hang kills the process
//! it started (by its PID) and fails instead.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use flate2::Compression;

/// Where a slug's files sit in the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `./Procfile` (herokuish, Deis).
    Dot,
    /// `./app/Procfile` (Heroku's platform API).
    App,
}

/// A slug under construction: files with modes, written as a gzip tar.
#[derive(Debug, Clone)]
pub struct Slug {
    layout: Layout,
    files: Vec<(String, Vec<u8>, u32)>,
}

impl Slug {
    pub fn new(layout: Layout) -> Self {
        Self {
            layout,
            files: Vec::new(),
        }
    }

    /// A slug whose Procfile is `procfile`.
    pub fn with_procfile(procfile: &str) -> Self {
        Self::new(Layout::Dot).file("Procfile", procfile)
    }

    /// Add a file (mode 0644); parent directories are implied.
    pub fn file(self, path: &str, content: impl AsRef<[u8]>) -> Self {
        self.file_mode(path, content, 0o644)
    }

    pub fn file_mode(mut self, path: &str, content: impl AsRef<[u8]>, mode: u32) -> Self {
        self.files
            .push((path.to_string(), content.as_ref().to_vec(), mode));
        self
    }

    /// The archive as a plain tar.
    pub fn tar(&self) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let root = match self.layout {
            Layout::Dot => "./".to_string(),
            Layout::App => "./app/".to_string(),
        };
        let mut dirs: Vec<String> = vec![root.clone()];
        for (path, _, _) in &self.files {
            let mut prefix = root.clone();
            let parts: Vec<&str> = path.split('/').collect();
            for part in &parts[..parts.len() - 1] {
                prefix.push_str(part);
                prefix.push('/');
                if !dirs.contains(&prefix) {
                    dirs.push(prefix.clone());
                }
            }
        }
        for dir in &dirs {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            header.set_mtime(1);
            builder
                .append_data(&mut header, dir, std::io::empty())
                .expect("append dir");
        }
        for (path, content, mode) in &self.files {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(*mode);
            header.set_size(content.len() as u64);
            header.set_mtime(1);
            builder
                .append_data(&mut header, format!("{root}{path}"), content.as_slice())
                .expect("append file");
        }
        builder.into_inner().expect("finish tar")
    }

    /// The archive as a gzip tar (what slugs are).
    pub fn tgz(&self) -> Vec<u8> {
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&self.tar()).expect("gzip");
        gz.finish().expect("gzip finish")
    }

    /// Write the slug as `dir/slug.tgz` and return its path.
    pub fn write_to(&self, dir: &Path) -> PathBuf {
        let path = dir.join("slug.tgz");
        std::fs::write(&path, self.tgz()).expect("write slug");
        path
    }
}

/// What a finished process left.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Spawn `cmd` with piped output, wait at most `timeout`, kill it on
/// timeout (and panic).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Finished {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_output(child, timeout)
}

/// Wait for a spawned child (stdout/stderr piped) with a deadline.
pub fn wait_output(mut child: Child, timeout: Duration) -> Finished {
    let out = reader_thread(child.stdout.take());
    let err = reader_thread(child.stderr.take());
    let status = wait_timeout(&mut child, timeout);
    Finished {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

fn reader_thread(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    })
}

/// Wait for `child` at most `timeout`; on timeout SIGKILL its process
/// group (if it leads one) and itself, then panic.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {pid} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Poll `cond` every 20 ms for at most `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// `(pid, state, ppid)` of every process, from `/proc/*/stat`.
pub fn processes() -> Vec<(i32, char, i32)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parens.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = after.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        found.push((pid, state, ppid));
    }
    found
}

/// Pids of the processes with an argument equal to `arg` (their command
/// line, as /proc shows it to the host).
pub fn processes_with_arg(arg: &str) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|&b| b == 0).any(|a| a == arg.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

/// A tag no other test uses (e.g. a `sleep` duration to find a process by).
pub fn unique_tag() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}.{}{:03}",
        7000 + std::process::id() % 1000,
        N.fetch_add(1, Ordering::SeqCst),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_millis())
    )
}

/// Wait until no process has `arg` on its command line; the ones left.
pub fn wait_processes_gone(arg: &str, timeout: Duration) -> Vec<i32> {
    wait_until(timeout, || processes_with_arg(arg).is_empty());
    processes_with_arg(arg)
}

/// A one-shot HTTP server on 127.0.0.1: answers the given responses in
/// order, one per connection, then stops. Returns the base URL and a handle
/// that yields the request lines it saw.
pub fn serve_http(responses: Vec<Vec<u8>>) -> (String, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let url = format!("http://{}", listener.local_addr().expect("local_addr"));
    listener.set_nonblocking(true).expect("nonblocking");
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        for response in responses {
            let mut conn = loop {
                match listener.accept() {
                    Ok((conn, _)) => break conn,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            return seen;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => return seen,
                }
            };
            conn.set_nonblocking(false).expect("blocking");
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("read timeout");
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&request);
            seen.push(text.lines().next().unwrap_or("").to_string());
            let _ = conn.write_all(&response);
        }
        seen
    });
    (url, handle)
}

/// An HTTP response with a body.
pub fn http_response(status: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Whether the tests run as root (privilege tests need it).
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// For a test (or part of one) that means something only as root: `true`
/// as root; otherwise [`crate::runnable`]'s rule (a failure in CI, which
/// runs as root; a skip elsewhere).
pub fn require_root(what: &str) -> bool {
    crate::runnable(what, (!is_root()).then(|| "it needs root".to_string()))
}

/// A child process that is killed (its process group too, when it leads
/// one) if the test panics before waiting for it.
#[derive(Debug)]
pub struct Guarded(Option<Child>);

impl Guarded {
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.0.as_ref().expect("child").id() as i32)
    }

    /// Wait with a deadline, collecting piped output.
    pub fn output(mut self, timeout: Duration) -> Finished {
        wait_output(self.0.take().expect("child"), timeout)
    }

    /// Wait with a deadline.
    pub fn wait(mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.0.take().expect("child");
        wait_timeout(&mut child, timeout)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Spawn `cmd` with `input` on its stdin and stdout/stderr captured as
/// bytes; wait at most `timeout` (then kill it and panic).
pub fn run_with_input(
    cmd: &mut Command,
    input: Vec<u8>,
    timeout: Duration,
) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    // A process that fails early stops reading: a broken pipe is expected.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let stdout = bytes_thread(child.stdout.take());
    let stderr = bytes_thread(child.stderr.take());
    let status = wait_timeout(&mut child, timeout);
    writer.join().expect("stdin writer");
    std::process::Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn bytes_thread(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}
