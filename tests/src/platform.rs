//! Real servers for the platform tests (`tests/tests/platform.rs`), each
//! started on 127.0.0.1 by the test and stopped when dropped: moto's S3
//! server (with boto3 for buckets and pre-signed URLs), nginx with WebDAV
//! PUT, and a fault-injecting HTTP server of our own.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::apps::free_port;

/// Whether `program` is on PATH, by [`crate::runnable`]'s rule (a missing
/// tool fails the test in CI, which installs them; elsewhere it skips).
pub fn have(program: &str) -> bool {
    crate::have("this platform test", program)
}

fn wait_port(port: u16, child: &mut Child, what: &str) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A server process stopped when dropped: SIGTERM first, so that it
/// stops its own children (nginx's workers), then SIGKILL.
#[derive(Debug)]
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// moto's S3 server, with a bucket.
#[derive(Debug)]
pub struct Moto {
    _child: Killed,
    pub endpoint: String,
    pub bucket: String,
}

impl Moto {
    pub fn start() -> Self {
        let port = free_port();
        let mut child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        wait_port(port, &mut child, "moto_server");
        let moto = Self {
            _child: Killed(child),
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: "slugs".into(),
        };
        moto.boto(&["mb"]);
        moto
    }

    /// Run the boto3 helper: `mb`, `put KEY FILE`, `get KEY FILE`,
    /// `presign METHOD KEY`, `exists KEY`. Returns its stdout.
    pub fn boto(&self, args: &[&str]) -> String {
        const SCRIPT: &str = r#"
import sys, boto3
from botocore.config import Config
endpoint, bucket, cmd = sys.argv[1:4]
args = sys.argv[4:]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing",
                  config=Config(signature_version="s3v4"))
if cmd == "mb":
    s3.create_bucket(Bucket=bucket)
elif cmd == "put":
    s3.upload_file(args[1], bucket, args[0])
elif cmd == "get":
    s3.download_file(bucket, args[0], args[1])
elif cmd == "exists":
    try:
        s3.head_object(Bucket=bucket, Key=args[0]); print("yes")
    except s3.exceptions.ClientError:
        print("no")
elif cmd == "presign":
    op = {"GET": "get_object", "PUT": "put_object"}[args[0]]
    print(s3.generate_presigned_url(op, Params={"Bucket": bucket, "Key": args[1]}, ExpiresIn=600))
"#;
        let out = Command::new(boto_python())
            .arg("-c")
            .arg(SCRIPT)
            .args([self.endpoint.as_str(), self.bucket.as_str()])
            .args(args)
            .output()
            .expect("run python3 with boto3");
        assert!(
            out.status.success(),
            "boto3 {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn presign(&self, method: &str, key: &str) -> String {
        self.boto(&["presign", method, key])
    }
}

/// The python3 that has boto3: the one beside `moto_server` (its venv's,
/// as scripts/test installs them), else the one on PATH.
fn boto_python() -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", "command -v moto_server"])
        .output()
        .expect("run sh");
    let moto = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    match moto.parent().map(|bin| bin.join("python3")) {
        Some(python) if python.is_file() => python,
        _ => PathBuf::from("python3"),
    }
}

/// nginx serving `root` with WebDAV PUT (the core ngx_http_dav_module).
#[derive(Debug)]
pub struct Nginx {
    _child: Killed,
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub url: String,
}

impl Nginx {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let port = free_port();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "user root root;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{
            dav_methods PUT DELETE;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
    }}
}}
",
                d = dir.path().display(),
                root = root.display()
            ),
        )
        .unwrap();
        let mut child = Command::new("nginx")
            .args(["-c"])
            .arg(&conf)
            .args(["-p"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nginx");
        wait_port(port, &mut child, "nginx");
        Self {
            _child: Killed(child),
            _dir: dir,
            root,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

/// What the fault server does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer normally: store a complete PUT, serve a stored GET (404 if none).
    Serve,
    /// Answer with this status, reading no body.
    Status(u16),
    /// Close the connection after reading this many body bytes (PUT) or
    /// after sending this many body bytes (GET).
    DropAfter(usize),
    /// Read (PUT) or send (GET) the body at about this many bytes a second.
    Slow(usize),
    /// Accept and never answer.
    Hang,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// Body bytes received (PUT).
    pub received: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct FaultState {
    /// Faults for the next requests, in order; then [`Fault::Serve`].
    plan: Vec<Fault>,
    objects: HashMap<String, Vec<u8>>,
    seen: Vec<Seen>,
}

/// An HTTP/1.1 object store on 127.0.0.1 that fails on purpose.
#[derive(Debug)]
pub struct FaultServer {
    pub url: String,
    state: Arc<Mutex<FaultState>>,
    _accept: JoinHandle<()>,
}

impl FaultServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(FaultState::default()));
        let shared = Arc::clone(&state);
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let state = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let _ = handle(conn, &state);
                });
            }
        });
        Self {
            url,
            state,
            _accept: accept,
        }
    }

    /// The next requests meet these faults, in order.
    pub fn plan(&self, faults: &[Fault]) {
        self.state.lock().unwrap().plan = faults.to_vec();
    }

    pub fn put_object(&self, path: &str, data: Vec<u8>) {
        self.state
            .lock()
            .unwrap()
            .objects
            .insert(path.to_string(), data);
    }

    pub fn object(&self, path: &str) -> Option<Vec<u8>> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

/// Answer the requests of one connection, each as the next planned fault
/// says.
fn handle(conn: TcpStream, state: &Mutex<FaultState>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let Some(seen) = read_head(&mut reader)? else {
            return Ok(());
        };
        let path = seen.target.split('?').next().unwrap_or("").to_string();
        let fault = {
            let mut st = state.lock().unwrap();
            if st.plan.is_empty() {
                Fault::Serve
            } else {
                st.plan.remove(0)
            }
        };
        let record = |seen: Seen| state.lock().unwrap().seen.push(seen);
        match fault {
            Fault::Hang => {
                record(seen);
                std::thread::sleep(Duration::from_secs(120));
                return Ok(());
            }
            Fault::Status(code) => {
                record(seen);
                write!(
                    out,
                    "HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )?;
                return Ok(());
            }
            _ => {}
        }
        let keep_going = if seen.method == "PUT" {
            receive_put(&mut reader, &mut out, state, seen, path, fault)?
        } else {
            record(seen);
            serve_get(&mut out, state, &path, fault)?
        };
        if !keep_going {
            return Ok(());
        }
    }
}

/// The request line and headers of the next request (`received` 0);
/// `None` at the end of the connection.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Option<Seen>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some(Seen {
        method,
        target,
        headers,
        received: 0,
    }))
}

/// Store a PUT's body at `path` when it all arrives (as `fault` lets it);
/// returns whether the connection goes on.
fn receive_put(
    reader: &mut impl Read,
    out: &mut TcpStream,
    state: &Mutex<FaultState>,
    seen: Seen,
    path: String,
    fault: Fault,
) -> std::io::Result<bool> {
    let length: Option<usize> = seen
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok());
    let Some(length) = length else {
        // No length (chunked): refused like S3 does.
        state.lock().unwrap().seen.push(seen);
        write!(
            out,
            "HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return Ok(false);
    };
    // Seen at once, its progress updated as the body arrives.
    let index = {
        let mut st = state.lock().unwrap();
        st.seen.push(seen);
        st.seen.len() - 1
    };
    let limit = match fault {
        Fault::DropAfter(n) => n.min(length),
        _ => length,
    };
    let mut body = Vec::with_capacity(limit);
    let mut buf = vec![0u8; 64 << 10];
    while body.len() < limit {
        let want = match fault {
            Fault::Slow(rate) => (rate / 10).clamp(1, buf.len()),
            _ => buf.len(),
        }
        .min(limit - body.len());
        let n = reader.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
        state.lock().unwrap().seen[index].received = body.len();
        if let Fault::Slow(_) = fault {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if body.len() != length {
        // Cut short (by us or by the client): nothing is stored.
        return Ok(false);
    }
    state.lock().unwrap().objects.insert(path, body);
    write!(out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")?;
    Ok(true)
}

/// Send the object stored at `path` (404 if none), as `fault` lets it;
/// returns whether the connection goes on.
fn serve_get(
    out: &mut TcpStream,
    state: &Mutex<FaultState>,
    path: &str,
    fault: Fault,
) -> std::io::Result<bool> {
    let object = state.lock().unwrap().objects.get(path).cloned();
    let Some(object) = object else {
        write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
        return Ok(true);
    };
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
        object.len()
    )?;
    match fault {
        Fault::DropAfter(n) => {
            out.write_all(&object[..n.min(object.len())])?;
            return Ok(false);
        }
        Fault::Slow(rate) => {
            for chunk in object.chunks((rate / 10).max(1)) {
                out.write_all(chunk)?;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        _ => out.write_all(&object)?,
    }
    Ok(true)
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let data = std::fs::read(path).unwrap();
    format!("{:x}", Sha256::digest(&data))
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(data))
}
