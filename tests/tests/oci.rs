//! Images of slugs (issue 14), end to end with real parts: Debian's
//! `docker-registry` (the CNCF distribution registry) started on
//! 127.0.0.1 with a temporary storage dir and htpasswd auth; run images
//! made here with umoci from the host's bash, coreutils and Python plus
//! the slugrunner this test run built, pushed with skopeo; app images
//! published by the real slugbuilder, inspected with skopeo, pulled, run
//! and stopped with podman.
//!
//! Needs root and `apt-get install podman skopeo umoci runc
//! docker-registry`. Without them the tests skip and say why; with `CI`
//! set they fail instead.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use e2e::apps::{example_tar, free_port, http_get, run_with_stdin};
use e2e::slugs::{run_with_timeout, Finished};
use e2e::{bin, repo_root};

const USER: &str = "tester";
const PASSWORD: &str = "e2e-secret";
/// bcrypt (cost 4, the registry checks it on every request) of PASSWORD.
const PASSWORD_BCRYPT: &str = "$2b$04$zfoLgt229NH58SZGBvFmaOtFr.THmaEtYItPnEAL9A3ODxwiL3FlW";
const TOOL_TIMEOUT: Duration = Duration::from_secs(300);
/// A fixed commit id, for the revision label.
const REVISION: &str = "0123456789abcdef0123456789abcdef01234567";

// ---------------------------------------------------------------------------
// Preconditions

fn installed(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(Into::into))
        .any(|dir| dir.join(tool).is_file())
}

/// Whether the test can run, by `e2e::runnable`'s rule (a failure in CI,
/// a skip said why elsewhere).
fn can_run(test: &str) -> bool {
    let reason = if !nix::unistd::Uid::effective().is_root() {
        Some("needs root (podman with vfs storage, files owned by the run user)".to_string())
    } else {
        let missing: Vec<&str> = [
            "docker-registry",
            "skopeo",
            "umoci",
            "podman",
            "runc",
            "strip",
            "ldd",
        ]
        .into_iter()
        .filter(|t| !installed(t))
        .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "not installed: {} (apt-get install podman skopeo umoci runc docker-registry binutils)",
                missing.join(", ")
            )
        })
    };
    e2e::runnable(test, reason)
}

fn run(cmd: &mut Command) -> Finished {
    run_with_timeout(cmd, TOOL_TIMEOUT)
}

fn ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    assert_eq!(
        out.code(),
        Some(0),
        "{shown} failed\nstdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

// ---------------------------------------------------------------------------
// The registry

/// A distribution registry on 127.0.0.1, stopped on drop.
struct Registry {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

#[derive(Debug, Clone)]
struct Request {
    method: String,
    uri: String,
    status: u64,
    agent: String,
}

impl Registry {
    fn start(auth: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: json\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if auth {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{USER}:{PASSWORD_BCRYPT}\n")).unwrap();
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: e2e\n    path: {}\n",
                htpasswd.display()
            ));
        }
        std::fs::write(&config, yaml).unwrap();
        let log = dir.path().join("registry.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("start docker-registry");
        let registry = Self {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((status, _)) = http_get(port, "/v2/") {
                if status == 200 || status == 401 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the registry did not answer: {}",
                std::fs::read_to_string(&registry.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every request the registry answered, oldest first.
    fn requests(&self) -> Vec<Request> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["msg"] == "response completed")
            .map(|v| Request {
                method: v["http.request.method"].as_str().unwrap_or("").to_string(),
                uri: v["http.request.uri"].as_str().unwrap_or("").to_string(),
                status: v["http.response.status"].as_u64().unwrap_or(0),
                agent: v["http.request.useragent"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            })
            .collect()
    }

    /// Requests made by slugbuilder since `from` (an index into requests()).
    fn ours_since(&self, from: usize) -> Vec<Request> {
        self.requests()
            .into_iter()
            .skip(from)
            .filter(|r| r.agent.starts_with("slugtools/"))
            .collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An auth file (podman's format) with `password` for these registries.
fn auth_file(dir: &Path, name: &str, hosts: &[String], password: &str) -> PathBuf {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
    let auths: serde_json::Map<String, serde_json::Value> = hosts
        .iter()
        .map(|h| (h.clone(), serde_json::json!({ "auth": encoded })))
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, serde_json::json!({ "auths": auths }).to_string()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

// ---------------------------------------------------------------------------
// Run images, made once per test process

struct RunImages {
    /// An OCI layout (lowercase path: podman names images after it) with
    /// tags `run1` (USER 1000:1000) and `run2` (one more layer, USER slug).
    layout: PathBuf,
}

/// Made in target/tmp, removed by the next test process.
fn run_images() -> &'static RunImages {
    static IMAGES: OnceLock<RunImages> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let started = Instant::now();
        let dir = fresh_fixture_dir();
        let layout = dir.join("runimages");
        let bundle = dir.join("bundle");
        let layout_s = layout.display().to_string();
        ok(Command::new("umoci").args(["init", "--layout", &layout_s]));
        ok(Command::new("umoci").args(["new", "--image", &format!("{layout_s}:empty")]));
        ok(Command::new("umoci")
            .args(["unpack", "--image", &format!("{layout_s}:empty")])
            .arg(&bundle));
        make_rootfs(&bundle.join("rootfs"));
        ok(Command::new("umoci")
            .args(["repack", "--image", &format!("{layout_s}:files")])
            .arg(&bundle));
        ok(Command::new("umoci").args([
            "config",
            "--image",
            &format!("{layout_s}:files"),
            "--tag",
            "run1",
            "--config.user",
            "1000:1000",
            "--config.entrypoint",
            "/usr/local/bin/slugrunner",
            "--config.cmd",
            "start",
            "--config.cmd",
            "web",
            "--config.workingdir",
            "/app",
            "--config.env",
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "--config.env",
            "PORT=5000",
            "--config.env",
            "LANG=C.UTF-8",
            "--config.exposedports",
            "5000/tcp",
            "--config.stopsignal",
            "SIGTERM",
            "--config.label",
            "org.opencontainers.image.title=e2e-run-stack",
        ]));
        // run2: a stack update (one more layer) whose user is a name.
        let update = dir.join("stack-update.tar");
        write_stack_update(&update);
        ok(Command::new("umoci")
            .args([
                "raw",
                "add-layer",
                "--image",
                &format!("{layout_s}:run1"),
                "--tag",
                "run2",
            ])
            .arg(&update));
        ok(Command::new("umoci").args([
            "config",
            "--image",
            &format!("{layout_s}:run2"),
            "--config.user",
            "slug",
        ]));
        std::fs::remove_dir_all(&bundle).unwrap();
        eprintln!("run images made in {:.1?}", started.elapsed());
        RunImages { layout }
    })
}

/// This test process's directory for its run images, empty; earlier
/// runs' directories are removed unless their process is still alive.
fn fresh_fixture_dir() -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("oci-run-images");
    if let Ok(entries) = std::fs::read_dir(&base) {
        for e in entries.flatten() {
            let pid = e.file_name().to_string_lossy().parse::<i32>().unwrap_or(0);
            if pid > 0 && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = base.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// run2's extra layer, written here: umoci 0.4.7's `insert` writes a tar
/// without its padding and end-of-archive marker.
fn write_stack_update(path: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let data = b"stack-2\n";
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, "etc/stack-version", &data[..])
        .unwrap();
    b.into_inner().unwrap();
}

/// A tiny stack: bash, env, cat, python3 with its standard library, the
/// libraries they link, the user `slug` (1000) owning /app, slugrunner.
fn make_rootfs(root: &Path) {
    make_skeleton(root);
    let mut elves: Vec<PathBuf> = Vec::new();
    for tool in ["bash", "env", "cat", "python3.11"] {
        let src = Path::new("/usr/bin").join(tool);
        std::fs::copy(&src, root.join("usr/bin").join(tool)).unwrap();
        elves.push(src);
    }
    std::os::unix::fs::symlink("python3.11", root.join("usr/bin/python3")).unwrap();
    std::os::unix::fs::symlink("bash", root.join("usr/bin/sh")).unwrap();
    ok(Command::new("strip")
        .arg("-o")
        .arg(root.join("usr/local/bin/slugrunner"))
        .arg(bin("slugrunner")));
    elves.push(bin("slugrunner"));
    let skip = [
        "__pycache__",
        "test",
        "tests",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "pydoc_data",
        "dist-packages",
        "site-packages",
        "config-3.11-x86_64-linux-gnu",
    ];
    copy_tree(
        Path::new("/usr/lib/python3.11"),
        &root.join("usr/lib/python3.11"),
        &skip,
        &mut elves,
    );
    copy_libraries(&elves, root);
}

/// The directories, links, users and groups of the stack.
fn make_skeleton(root: &Path) {
    for d in [
        "usr/bin",
        "usr/local/bin",
        "usr/lib",
        "usr/lib64",
        "usr/sbin",
        "etc",
        "tmp",
        "app",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("sbin", "usr/sbin"),
    ] {
        std::os::unix::fs::symlink(target, root.join(link)).unwrap();
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    nix::unistd::chown(&root.join("app"), Some(1000.into()), Some(1000.into())).unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\nslug:x:1000:1000::/app:/bin/bash\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nslug:x:1000:\n").unwrap();
}

/// The shared libraries (and the loader) of every program and module in
/// `elves`, at their canonical places under `root`.
fn copy_libraries(elves: &[PathBuf], root: &Path) {
    let mut libs = BTreeSet::new();
    for elf in elves {
        let out = Command::new("ldd").arg(elf).output().unwrap();
        for word in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if word.starts_with('/') {
                libs.insert(PathBuf::from(word));
            }
        }
    }
    for lib in libs {
        let dir = std::fs::canonicalize(lib.parent().unwrap()).unwrap();
        let dest = root
            .join(dir.strip_prefix("/").unwrap())
            .join(lib.file_name().unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        if !dest.exists() {
            std::fs::copy(&lib, &dest).unwrap();
        }
    }
}

fn copy_tree(src: &Path, dest: &Path, skip: &[&str], elves: &mut Vec<PathBuf>) {
    std::fs::create_dir_all(dest).unwrap();
    for entry in std::fs::read_dir(src).unwrap().flatten() {
        let name = entry.file_name();
        if skip.contains(&name.to_string_lossy().as_ref()) {
            continue;
        }
        let path = entry.path();
        let ft = entry.file_type().unwrap();
        if ft.is_dir() {
            copy_tree(&path, &dest.join(&name), skip, elves);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&path).unwrap(), dest.join(&name))
                .unwrap();
        } else if ft.is_file() {
            std::fs::copy(&path, dest.join(&name)).unwrap();
            if name.to_string_lossy().ends_with(".so") {
                elves.push(path);
            }
        }
    }
}

/// skopeo, reading no auth file of the machine (each call names one).
fn skopeo() -> Command {
    let mut cmd = Command::new("skopeo");
    cmd.env_remove("REGISTRY_AUTH_FILE");
    cmd
}

fn push_run_image(tag: &str, dest: &str, auth: &Path) {
    let layout = run_images().layout.display().to_string();
    ok(skopeo().args([
        "copy",
        "--dest-tls-verify=false",
        "--authfile",
        &auth.display().to_string(),
        &format!("oci:{layout}:{tag}"),
        &format!("docker://{dest}"),
    ]));
}

/// `skopeo inspect` (config: `--config`; raw manifest: `--raw`) as JSON.
fn inspect(reference: &str, auth: &Path, mode: &str) -> serde_json::Value {
    let mut cmd = skopeo();
    cmd.arg("inspect");
    if !mode.is_empty() {
        cmd.arg(mode);
    }
    if reference.starts_with("docker://") {
        cmd.args(["--tls-verify=false", "--authfile"]).arg(auth);
    }
    let out = ok(cmd.arg(reference));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("skopeo inspect {reference}: {e}: {out}"))
}

fn layer_digests(manifest: &serde_json::Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// slugbuilder

/// slugbuilder with nothing of the caller's registry settings: HOME is
/// the test's, so no auth file of the machine is read.
fn slugbuilder(home: &Path) -> Command {
    let mut cmd = Command::new(bin("slugbuilder"));
    for var in [
        "SLUGBUILDER_IMAGE",
        "SLUG_RUN_IMAGE",
        "SLUGBUILDER_INSECURE_REGISTRIES",
        "SLUGBUILDER_MAX_LAYER_BYTES",
        "REGISTRY_AUTH_FILE",
        "XDG_RUNTIME_DIR",
        "XDG_CONFIG_HOME",
        "DOCKER_CONFIG",
        "BUILDPACK_URL",
        "BUILDPACKS",
        "BUILDPACK_PATH",
        "CACHE_PATH",
        "ENV_PATH",
        "SOURCE_VERSION",
        "SOURCE_DATE_EPOCH",
        "SLUGBUILDER_TIMEOUT",
        "SLUG_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", home)
        .env("XDG_RUNTIME_DIR", home.join("run"));
    cmd
}

/// Build examples/hello-procfile; `extra` adds flags (e.g. --image).
fn build_hello(home: &Path, auth: Option<&Path>, slug: &Path, extra: &[&str]) -> Finished {
    let mut cmd = slugbuilder(home);
    if let Some(auth) = auth {
        cmd.env("REGISTRY_AUTH_FILE", auth);
    }
    cmd.arg("--buildpacks-dir")
        .arg(repo_root().join("buildpacks"))
        .arg("--source-version")
        .arg(REVISION)
        .arg("-o")
        .arg(slug)
        .args(extra);
    run_with_stdin(
        &mut cmd,
        example_tar("hello-procfile"),
        Duration::from_secs(600),
    )
}

/// The digest in the report line `-----> Image: REF@sha256:...`.
fn reported_digest(stderr: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("-----> Image: "))
        .unwrap_or_else(|| panic!("no report line in:\n{stderr}"));
    line.rsplit('@').next().unwrap().trim().to_string()
}

fn assert_one_error_line(out: &Finished, code: i32, contains: &str) {
    assert_eq!(
        out.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, not:\n{}", out.stderr);
    assert!(lines[0].starts_with("slugbuilder: "), "{}", lines[0]);
    assert!(
        lines[0].contains(contains),
        "{:?} lacks {contains:?}",
        lines[0]
    );
    assert!(!out.stderr.contains(PASSWORD), "a password in the log");
    assert!(out.stdout.is_empty(), "nothing on stdout: {}", out.stdout);
}

// ---------------------------------------------------------------------------
// podman

/// podman with storage of its own (vfs, runc, explicit rlimits: see
/// stack-images/README.md), removed with every container on drop.
struct Podman {
    dir: tempfile::TempDir,
    containers: Vec<String>,
}

impl Podman {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            containers: Vec::new(),
        }
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("runroot"))
            .args(["--storage-driver", "vfs", "--runtime", "runc"]);
        cmd
    }

    /// Pull `reference` (docker://, oci:); returns the image id.
    fn pull(&self, reference: &str, auth: Option<&Path>) -> String {
        let mut cmd = self.cmd();
        cmd.args(["pull", "-q", "--tls-verify=false"]);
        if let Some(auth) = auth {
            cmd.arg("--authfile").arg(auth);
        }
        ok(cmd.arg(reference))
            .trim()
            .lines()
            .last()
            .unwrap()
            .to_string()
    }

    /// Start the image's default command with port 5000 on a loopback port.
    fn start(&mut self, image: &str) -> (String, u16) {
        let port = free_port();
        let id = ok(self.cmd().args([
            "run",
            "-d",
            "--pull=never",
            "--ulimit",
            "nofile=16384:16384",
            "--ulimit",
            "nproc=16384:16384",
            "-p",
            &format!("127.0.0.1:{port}:5000"),
            image,
        ]))
        .trim()
        .to_string();
        self.containers.push(id.clone());
        (id, port)
    }

    /// Run `args` in `image` to completion; its stdout.
    fn run_once(&self, image: &str, args: &[&str]) -> String {
        ok(self
            .cmd()
            .args([
                "run",
                "--rm",
                "--pull=never",
                "--ulimit",
                "nofile=16384:16384",
                "--ulimit",
                "nproc=16384:16384",
                image,
            ])
            .args(args))
    }

    /// Ask the app for `/` until it answers 200; its body.
    fn wait_http(&self, id: &str, port: u16) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok((200, body)) = http_get(port, "/") {
                return body;
            }
            let running = ok(self
                .cmd()
                .args(["inspect", "--format", "{{.State.Running}}", id]));
            if running.trim() == "false" || Instant::now() > deadline {
                let logs = run(self.cmd().args(["logs", id]));
                panic!(
                    "the app did not answer on {port}\n{}{}",
                    logs.stdout, logs.stderr
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `podman stop`: the forwarded SIGTERM ends the app within the grace
    /// period; returns (exit code, seconds taken).
    fn stop(&self, id: &str) -> (i64, f64) {
        let started = Instant::now();
        ok(self.cmd().args(["stop", "-t", "10", id]));
        let took = started.elapsed().as_secs_f64();
        let code = ok(self
            .cmd()
            .args(["inspect", "--format", "{{.State.ExitCode}}", id]));
        (code.trim().parse().unwrap(), took)
    }

    /// Start, get 200 from the app, stop quickly with SIGTERM forwarded.
    fn serve_and_stop(&mut self, image: &str) -> String {
        let (id, port) = self.start(image);
        let body = self.wait_http(&id, port);
        let (code, took) = self.stop(&id);
        assert_eq!(code, 143, "the app ended on the forwarded SIGTERM");
        assert!(took < 8.0, "podman stop took {took:.1}s");
        eprintln!("       {image}: answered {body:?}, podman stop: {code} after {took:.1}s");
        body
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for id in &self.containers {
            let _ = self
                .cmd()
                .args(["rm", "-f", "-t", "0", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A directory whose path is all lower case: podman names an image
/// pulled from `oci:DIR` after DIR, and image names must be lower case.
struct LowerDir(PathBuf);

impl LowerDir {
    fn new() -> Self {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = Path::new("/tmp").join(format!("oci-e2e-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        Self(path)
    }
}

impl Drop for LowerDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let v = f();
    eprintln!("{what}: {:.1?}", started.elapsed());
    v
}

// ---------------------------------------------------------------------------
// The tests

/// The whole flow against a registry: build with --image, inspect, pull,
/// run, stop; publish again (same digest); rebase onto a newer run image
/// (slug layer kept, base changed, runs).
#[test]
fn publish_run_and_rebase_through_a_registry() {
    if !can_run("publish_run_and_rebase_through_a_registry") {
        return;
    }
    let started = Instant::now();
    let case = tempfile::tempdir().unwrap();
    let home = case.path();
    let registry = Registry::start(true);
    let host = registry.host();
    let auth = auth_file(home, "auth.json", std::slice::from_ref(&host), PASSWORD);
    timed("push run images", || {
        push_run_image("run1", &format!("{host}/stack/run:1"), &auth);
        push_run_image("run2", &format!("{host}/stack/run:2"), &auth);
    });
    let flow = Flow {
        home,
        registry: &registry,
        app: format!("{host}/apps/hello:1"),
        slug: home.join("slug.tgz"),
        host,
        auth,
    };
    // 1. and 2.
    let published = build_and_publish_the_app(&flow);
    // 3.
    same_inputs_give_the_same_digest(&flow, &published);
    // 4. podman pulls it and runs it; podman stop ends it at once.
    let mut podman = Podman::new();
    let image = timed("podman pull", || {
        podman.pull(&format!("docker://{}", flow.app), Some(&flow.auth))
    });
    let body = timed("run, HTTP, stop", || podman.serve_and_stop(&image));
    assert_eq!(body, "Hello from web.1!\n");
    // /app belongs to the run user: the app can write there, no chown at boot.
    assert_eq!(
        podman.run_once(
            &image,
            &["exec", "bash", "-c", ": > /app/written && echo writable"]
        ),
        "writable\n"
    );
    // 5.
    rebase_onto_run2(&flow, &published);
    let image = podman.pull(&format!("docker://{}", flow.app), Some(&flow.auth));
    assert_eq!(
        podman.run_once(&image, &["exec", "cat", "/etc/stack-version"]),
        "stack-2\n"
    );
    podman.serve_and_stop(&image);
    eprintln!(
        "publish_run_and_rebase_through_a_registry: {:.1?}",
        started.elapsed()
    );
}

/// What every step of the registry flow shares.
struct Flow<'a> {
    home: &'a Path,
    registry: &'a Registry,
    host: String,
    auth: PathBuf,
    /// The app image's tag.
    app: String,
    slug: PathBuf,
}

/// What the first publish gave.
struct Published {
    digest: String,
    slug_layer: String,
    buildpacks: Vec<String>,
}

impl Flow<'_> {
    fn run_image(&self, n: u32) -> String {
        format!("{}/stack/run:{n}", self.host)
    }

    /// A build of hello that also publishes it as `image` on run:1.
    fn build_and_publish(&self, slug: &Path, image: &str) -> Finished {
        build_hello(
            self.home,
            Some(&self.auth),
            slug,
            &[
                "--image",
                image,
                "--run-image",
                &self.run_image(1),
                "--insecure-registry",
                &self.host,
                "--source-date-epoch",
                "1700000000",
            ],
        )
    }

    /// `slugbuilder image` of the slug as `tag` on `run_image`, with the
    /// metadata the build gave it.
    fn publish_slug(&self, tag: &str, run_image: &str, buildpacks: &[String]) -> Finished {
        let mut cmd = slugbuilder(self.home);
        cmd.env("REGISTRY_AUTH_FILE", &self.auth)
            .args(["image", "--slug"])
            .arg(&self.slug)
            .args([
                "--tag",
                tag,
                "--run-image",
                run_image,
                "--insecure-registry",
                &self.host,
                "--source-date-epoch",
                "1700000000",
                "--source-version",
                REVISION,
            ]);
        for bp in buildpacks {
            cmd.args(["--buildpack", bp]);
        }
        run(&mut cmd)
    }
}

/// Steps 1 and 2: a build publishes the image too (the slug still goes
/// to -o), moving only the slug layer, the config and the manifest; then
/// what skopeo sees.
fn build_and_publish_the_app(flow: &Flow) -> Published {
    let (auth, host) = (&flow.auth, &flow.host);
    let run1 = inspect(&format!("docker://{host}/stack/run:1"), auth, "--raw");
    let run1_digest = inspect(&format!("docker://{host}/stack/run:1"), auth, "")["Digest"]
        .as_str()
        .unwrap()
        .to_string();
    let run1_layers = layer_digests(&run1);
    let before = flow.registry.requests().len();
    let out = timed("build + publish", || {
        flow.build_and_publish(&flow.slug, &flow.app)
    });
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(flow.slug.is_file(), "the slug is delivered as well");
    assert!(!out.stderr.contains(PASSWORD));
    let digest = reported_digest(&out.stderr);
    eprintln!(
        "{}",
        out.stderr
            .lines()
            .filter(|l| l.contains("layer") || l.contains("Image"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_only_the_app_moved(&flow.registry.ours_since(before), &run1_layers);
    let config = inspect(&format!("docker://{}", flow.app), auth, "--config");
    assert_app_config(&config, host, &run1_digest);
    let manifest = inspect(&format!("docker://{}", flow.app), auth, "--raw");
    let layers = layer_digests(&manifest);
    assert_eq!(&layers[..layers.len() - 1], &run1_layers[..]);
    let labels = &config["config"]["Labels"];
    Published {
        digest,
        slug_layer: layers.last().unwrap().clone(),
        buildpacks: serde_json::from_str(labels["io.slugbuilder.buildpacks"].as_str().unwrap())
            .unwrap(),
    }
}

/// Only the slug layer, the config and the manifest moved: the run
/// image's layers were mounted from stack/run, never downloaded or
/// uploaded.
fn assert_only_the_app_moved(ours: &[Request], run1_layers: &[String]) {
    for layer in run1_layers {
        let hex = layer.trim_start_matches("sha256:");
        let moved: Vec<&Request> = ours
            .iter()
            .filter(|r| {
                r.uri.contains(hex)
                    && (r.method == "GET" || r.method == "PUT" || r.method == "PATCH")
            })
            .collect();
        assert!(moved.is_empty(), "base layer {layer} moved: {moved:?}");
    }
    let uploads: Vec<&Request> = ours
        .iter()
        .filter(|r| r.method == "PUT" && r.uri.contains("/blobs/uploads/"))
        .collect();
    assert_eq!(
        uploads.len(),
        2,
        "the slug layer and the config: {uploads:?}"
    );
    let mounts = ours
        .iter()
        .filter(|r| r.method == "POST" && r.uri.contains("mount=") && r.status == 201)
        .count();
    assert_eq!(mounts, run1_layers.len(), "{ours:?}");
}

/// The app image's config as skopeo sees it: the run image's, with the
/// app's labels, user, command and creation time.
fn assert_app_config(config: &serde_json::Value, host: &str, run1_digest: &str) {
    let labels = &config["config"]["Labels"];
    assert_eq!(
        labels["io.slugbuilder.process.web"], "./bin/web",
        "{config}"
    );
    assert_eq!(labels["org.opencontainers.image.revision"], REVISION);
    assert_eq!(labels["org.opencontainers.image.base.digest"], run1_digest);
    assert_eq!(
        labels["org.opencontainers.image.base.name"],
        format!("{host}/stack/run:1")
    );
    assert_eq!(labels["org.opencontainers.image.title"], "e2e-run-stack");
    assert!(labels["io.slugbuilder.buildpacks"]
        .as_str()
        .unwrap()
        .contains("procfile"));
    assert_eq!(config["config"]["User"], "1000:1000");
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["start", "web"]));
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/slugrunner"])
    );
    assert_eq!(config["config"]["WorkingDir"], "/app");
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
}

/// Step 3: the same slug, run image and epoch give the same digest: a
/// second build, and the existing slug published by `slugbuilder image`.
fn same_inputs_give_the_same_digest(flow: &Flow, published: &Published) {
    let (home, host) = (flow.home, &flow.host);
    let before = flow.registry.requests().len();
    let again =
        flow.build_and_publish(&home.join("slug2.tgz"), &format!("{host}/apps/hello:again"));
    assert_eq!(again.code(), Some(0), "{}", again.stderr);
    assert_eq!(
        reported_digest(&again.stderr),
        published.digest,
        "two builds, one digest"
    );
    assert_eq!(
        std::fs::read(&flow.slug).unwrap(),
        std::fs::read(home.join("slug2.tgz")).unwrap()
    );
    let uploads = flow
        .registry
        .ours_since(before)
        .into_iter()
        .filter(|r| r.method == "PUT" && r.uri.contains("/blobs/"))
        .count();
    assert_eq!(uploads, 0, "everything was there already");
    let out = flow.publish_slug(
        &format!("{host}/apps/hello:from-slug"),
        &flow.run_image(1),
        &published.buildpacks,
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!("{host}/apps/hello@{}", published.digest)
    );
}

/// Step 5, a rebase onto run:2: the slug layer stays, the base changes,
/// and the result is what a fresh publish on run:2 gives.
fn rebase_onto_run2(flow: &Flow, published: &Published) {
    let (auth, host, app) = (&flow.auth, &flow.host, &flow.app);
    let run2 = inspect(&format!("docker://{host}/stack/run:2"), auth, "--raw");
    let run2_layers = layer_digests(&run2);
    let mut rebase = slugbuilder(flow.home);
    rebase.env("REGISTRY_AUTH_FILE", auth).args([
        "rebase",
        "--tag",
        app,
        "--run-image",
        &flow.run_image(2),
        "--insecure-registry",
        host,
    ]);
    let t = Instant::now();
    let out = run(&mut rebase);
    let rebase_secs = t.elapsed().as_secs_f64();
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    eprintln!("rebase: {rebase_secs:.2}s\n{}", out.stderr);
    let rebased = inspect(&format!("docker://{app}"), auth, "--raw");
    let rebased_layers = layer_digests(&rebased);
    assert_eq!(
        rebased_layers.last().unwrap(),
        &published.slug_layer,
        "the slug layer is kept"
    );
    assert_eq!(
        &rebased_layers[..rebased_layers.len() - 1],
        &run2_layers[..]
    );
    let rebased_digest = out.stdout.trim().rsplit('@').next().unwrap().to_string();
    assert_ne!(rebased_digest, published.digest);
    let rebased_config = inspect(&format!("docker://{app}"), auth, "--config");
    assert_eq!(
        rebased_config["config"]["Labels"]["io.slugbuilder.process.web"],
        "./bin/web"
    );
    // A rebase gives what a fresh publish on run:2 gives.
    let out = flow.publish_slug(
        &format!("{host}/apps/hello:fresh"),
        &flow.run_image(2),
        &published.buildpacks,
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout.trim().rsplit('@').next().unwrap(),
        rebased_digest
    );
}

/// `podman load` of the `oci-archive:` output gives the image pulled
/// from the layout (`from_layout`), named after its tag, and it serves.
fn load_archive_of_the_same_image(podman: &mut Podman, archive: &Path, from_layout: &str) {
    let loaded = ok(podman.cmd().args(["load", "-i"]).arg(archive));
    let name = loaded
        .lines()
        .find_map(|l| l.strip_prefix("Loaded image: "))
        .unwrap_or_else(|| panic!("podman load said {loaded:?}"))
        .trim()
        .to_string();
    assert_eq!(name, "localhost/hello:latest", "named after the tag");
    let loaded_id = ok(podman
        .cmd()
        .args(["image", "inspect", "--format", "{{.Id}}", &name]));
    assert_eq!(loaded_id.trim(), from_layout, "one image, two containers");
    podman.serve_and_stop(&name);
}

/// `oci:` and `oci-archive:` outputs (from a layout and an archive run
/// image, no registry at all) load into podman and run.
#[test]
fn layout_and_archive_outputs_load_into_podman_and_run() {
    if !can_run("layout_and_archive_outputs_load_into_podman_and_run") {
        return;
    }
    let started = Instant::now();
    let case = tempfile::tempdir().unwrap();
    let home = case.path();
    let layout = run_images().layout.display().to_string();
    let slug = home.join("slug.tgz");
    let out = build_hello(home, None, &slug, &[]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);

    // The run image as an archive too (made by skopeo, read by us).
    let run_archive = home.join("run.tar");
    ok(skopeo().args([
        "copy",
        &format!("oci:{layout}:run1"),
        &format!("oci-archive:{}:run1", run_archive.display()),
    ]));

    let publish = |tag: &str, run_image: &str| -> Finished {
        let mut cmd = slugbuilder(home);
        cmd.args(["image", "--slug"])
            .arg(&slug)
            .args(["--tag", tag, "--run-image", run_image]);
        run(&mut cmd)
    };
    let scratch = LowerDir::new();
    let out_dir = scratch.0.join("layout");
    let layout_tag = format!("oci:{}:hello", out_dir.display());
    let out = publish(&layout_tag, &format!("oci:{layout}:run1"));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let layout_digest = out.stdout.trim().rsplit('@').next().unwrap().to_string();
    let archive = scratch.0.join("hello.tar");
    let archive_tag = format!("oci-archive:{}:hello", archive.display());
    let out = publish(
        &archive_tag,
        &format!("oci-archive:{}:run1", run_archive.display()),
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let archive_digest = out.stdout.trim().rsplit('@').next().unwrap().to_string();
    assert_eq!(
        layout_digest, archive_digest,
        "the same image, whatever the container"
    );

    // skopeo reads both.
    let config = inspect(&layout_tag, Path::new("/dev/null"), "--config");
    assert_eq!(
        config["config"]["Labels"]["io.slugbuilder.process.web"],
        "./bin/web"
    );
    inspect(&archive_tag, Path::new("/dev/null"), "");

    let mut podman = Podman::new();
    let from_layout = podman.pull(&layout_tag, None);
    podman.serve_and_stop(&from_layout);
    load_archive_of_the_same_image(&mut podman, &archive, &from_layout);

    // A rebase of the layout image onto run2 (read from the same layout).
    let mut rebase = slugbuilder(home);
    rebase.args([
        "rebase",
        "--tag",
        &layout_tag,
        "--run-image",
        &format!("oci:{layout}:run2"),
    ]);
    let out = run(&mut rebase);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let rebased = podman.pull(&layout_tag, None);
    assert_eq!(
        podman.run_once(&rebased, &["exec", "cat", "/etc/stack-version"]),
        "stack-2\n"
    );
    eprintln!(
        "layout_and_archive_outputs_load_into_podman_and_run: {:.1?}",
        started.elapsed()
    );
}

/// A build of hello-procfile that publishes it as `app` (on `run:1` of
/// `host`) with the credentials in `auth`, its slug to `slug`.
fn build_and_publish(home: &Path, auth: &Path, slug: &Path, app: &str, host: &str) -> Finished {
    let mut cmd = slugbuilder(home);
    cmd.env("REGISTRY_AUTH_FILE", auth)
        .arg("--buildpacks-dir")
        .arg(repo_root().join("buildpacks"))
        .arg("-o")
        .arg(slug)
        .args([
            "--image",
            app,
            "--run-image",
            &format!("{host}/stack/run:1"),
            "--insecure-registry",
            host,
        ]);
    run_with_stdin(
        &mut cmd,
        example_tar("hello-procfile"),
        Duration::from_secs(600),
    )
}

/// The digest `app` (a registry reference) points at now.
fn digest_of_tag(app: &str, auth: &Path) -> String {
    inspect(&format!("docker://{app}"), auth, "")["Digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// No manifest was pushed to `registry` since its request number `before`.
fn assert_no_manifest_pushed(registry: &Registry, before: usize) {
    let manifests: Vec<Request> = registry
        .ours_since(before)
        .into_iter()
        .filter(|r| r.method == "PUT" && r.uri.contains("/manifests/"))
        .collect();
    assert!(manifests.is_empty(), "{manifests:?}");
}

/// A wrong password, an unreachable registry and a missing run image:
/// one clear line each, distinct exit codes, and the tag stays put.
#[test]
fn failures_are_one_line_with_their_own_exit_code_and_move_no_tag() {
    if !can_run("failures_are_one_line_with_their_own_exit_code_and_move_no_tag") {
        return;
    }
    let started = Instant::now();
    let case = tempfile::tempdir().unwrap();
    let home = case.path();
    let registry = Registry::start(true);
    let host = registry.host();
    let good = auth_file(home, "good.json", std::slice::from_ref(&host), PASSWORD);
    let wrong = auth_file(
        home,
        "wrong.json",
        std::slice::from_ref(&host),
        "not-the-password",
    );
    push_run_image("run1", &format!("{host}/stack/run:1"), &good);
    let slug = home.join("slug.tgz");
    let out = build_hello(home, None, &slug, &[]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);

    let app = format!("{host}/apps/fail:1");
    let publish = |auth: &Path, run_image: &str, target: &str| -> Finished {
        let mut cmd = slugbuilder(home);
        cmd.env("REGISTRY_AUTH_FILE", auth)
            .args(["image", "--slug"])
            .arg(&slug)
            .args([
                "--tag",
                target,
                "--run-image",
                run_image,
                "--insecure-registry",
                &host,
            ]);
        run(&mut cmd)
    };
    let first = publish(&good, &format!("{host}/stack/run:1"), &app);
    assert_eq!(first.code(), Some(0), "{}", first.stderr);
    let original = digest_of_tag(&app, &good);
    let before = registry.requests().len();

    // A wrong password: 30.
    let out = publish(&wrong, &format!("{host}/stack/run:1"), &app);
    assert_one_error_line(&out, 30, "refused the credentials of user \"tester\"");
    // No auth file at all: 30 too, saying where it looked.
    let out = publish(
        &home.join("missing.json"),
        &format!("{host}/stack/run:1"),
        &app,
    );
    assert_one_error_line(&out, 30, "no auth file has credentials");
    // An unreachable registry: 31.
    let closed = format!("127.0.0.1:{}", free_port());
    let out = publish(&good, &format!("{closed}/stack/run:1"), &app);
    assert_one_error_line(&out, 31, "cannot be reached");
    // A missing run image: 32 (in a registry and as a layout).
    let out = publish(&good, &format!("{host}/stack/nope:1"), &app);
    assert_one_error_line(&out, 32, "run image");
    let out = publish(
        &good,
        &format!("oci:{}:run1", home.join("no-layout").display()),
        &app,
    );
    assert_one_error_line(&out, 32, "does not exist");
    // A build with --image and a wrong password: no buildpack runs, no slug.
    let no_slug = home.join("none.tgz");
    let out = build_and_publish(home, &wrong, &no_slug, &app, &host);
    assert_one_error_line(&out, 30, "refused the credentials");
    assert!(!no_slug.exists(), "no slug after a failed publish");

    assert_eq!(digest_of_tag(&app, &good), original, "the tag did not move");
    assert_no_manifest_pushed(&registry, before);
    eprintln!(
        "failures_are_one_line_with_their_own_exit_code_and_move_no_tag: {:.1?}",
        started.elapsed()
    );
}

/// A run image in another registry: its layers are streamed through (read
/// from one, written to the other), and its user, a name, is looked up in
/// its own /etc/passwd.
#[test]
fn a_run_image_from_another_registry_is_copied_and_its_user_looked_up() {
    if !can_run("a_run_image_from_another_registry_is_copied_and_its_user_looked_up") {
        return;
    }
    let started = Instant::now();
    let case = tempfile::tempdir().unwrap();
    let home = case.path();
    let source = Registry::start(false);
    let target = Registry::start(true);
    let auth = auth_file(home, "auth.json", &[target.host()], PASSWORD);
    push_run_image("run2", &format!("{}/stack/run:2", source.host()), &auth);
    let run2 = inspect(
        &format!("docker://{}/stack/run:2", source.host()),
        &auth,
        "--raw",
    );
    let slug = home.join("slug.tgz");
    let out = build_hello(home, None, &slug, &[]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);

    let app = format!("{}/apps/copied:1", target.host());
    let mut cmd = slugbuilder(home);
    cmd.env("REGISTRY_AUTH_FILE", &auth)
        .args(["image", "--slug"])
        .arg(&slug)
        .args([
            "--tag",
            &app,
            "--run-image",
            &format!("{}/stack/run:2", source.host()),
            "--insecure-registry",
            &format!("{},{}", source.host(), target.host()),
        ]);
    let out = run(&mut cmd);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("looking it up in its /etc/passwd"),
        "{}",
        out.stderr
    );
    let config = inspect(&format!("docker://{app}"), &auth, "--config");
    assert_eq!(
        config["config"]["User"], "1000:1000",
        "slug is 1000:1000 in its passwd"
    );
    let manifest = inspect(&format!("docker://{app}"), &auth, "--raw");
    let layers = layer_digests(&manifest);
    assert_eq!(&layers[..layers.len() - 1], &layer_digests(&run2)[..]);
    let uploaded = target
        .ours_since(0)
        .into_iter()
        .filter(|r| r.method == "PUT" && r.uri.contains("/blobs/uploads/"))
        .count();
    assert_eq!(uploaded, layers.len() + 1, "every layer and the config");
    eprintln!(
        "a_run_image_from_another_registry_is_copied_and_its_user_looked_up: {:.1?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// Hostile registries (issue 25 item 7): tiny HTTP servers of our own on
// 127.0.0.1, one answer per connection, serving a run image `stack/run:1`
// and accepting uploads to `apps/x`. They need neither root nor tools.

/// What is wrong with a [`HostileRegistry`].
#[derive(Debug, Clone, Copy)]
enum Hostility {
    /// The run image's layer claims 10 GiB, and its GET would stream them.
    HugeLayer,
    /// The layer (1 MiB, honestly described) comes one byte per pause.
    TrickledLayer(Duration),
    /// The run image's manifest comes one byte per pause.
    TrickledManifest(Duration),
}

/// A registry that holds a run image in `stack/run` and takes uploads in
/// `apps/x` (a mount attempt opens an upload session, as distribution
/// does when it cannot mount). Every request is recorded as
/// `METHOD PATH`; stops when dropped.
struct HostileRegistry {
    port: u16,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The layer's descriptor, config and manifest of the run image.
struct FakeRunImage {
    layer_digest: String,
    layer_size: u64,
    config: Vec<u8>,
    config_digest: String,
    manifest: Vec<u8>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

impl FakeRunImage {
    fn new(hostility: Hostility) -> Self {
        let layer_size = match hostility {
            Hostility::HugeLayer => 10 << 30,
            _ => 1 << 20,
        };
        // The digest of nothing we can send: these layers never verify.
        let layer_digest = sha256_hex(b"a layer that never arrives whole");
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "User": "1000:1000", "Entrypoint": ["/usr/local/bin/slugrunner"] },
            "rootfs": { "type": "layers", "diff_ids": [layer_digest.clone()] },
        })
        .to_string()
        .into_bytes();
        let config_digest = sha256_hex(&config);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest,
                "size": layer_size,
            }],
        })
        .to_string()
        .into_bytes();
        Self {
            layer_digest,
            layer_size,
            config,
            config_digest,
            manifest,
        }
    }
}

impl HostileRegistry {
    fn start(hostility: Hostility) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let image = Arc::new(FakeRunImage::new(hostility));
        let sessions = Arc::new(AtomicUsize::new(0));
        let (log, stopping) = (Arc::clone(&requests), Arc::clone(&stop));
        std::thread::spawn(move || {
            // Ends by itself at the latest after ten minutes.
            let until = Instant::now() + Duration::from_secs(600);
            while !stopping.load(Ordering::SeqCst) && Instant::now() < until {
                let conn = match listener.accept() {
                    Ok((conn, _)) => conn,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                };
                let (log, image, sessions, stopping) = (
                    Arc::clone(&log),
                    Arc::clone(&image),
                    Arc::clone(&sessions),
                    Arc::clone(&stopping),
                );
                std::thread::spawn(move || {
                    let _ = conn.set_nonblocking(false);
                    let _ = serve_one(conn, hostility, &image, &log, &sessions, &stopping);
                });
            }
        });
        Self {
            port,
            requests,
            stop,
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Read one request, record it, answer it as `hostility` wants.
fn serve_one(
    conn: std::net::TcpStream,
    hostility: Hostility,
    image: &FakeRunImage,
    log: &std::sync::Mutex<Vec<String>>,
    sessions: &std::sync::atomic::AtomicUsize,
    stopping: &std::sync::atomic::AtomicBool,
) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader, Read, Write};
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut length = 0u64;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut words = request_line.split_whitespace();
    let method = words.next().unwrap_or("").to_string();
    let path = words.next().unwrap_or("").to_string();
    log.lock().unwrap().push(format!("{method} {path}"));
    // Take the whole body (an upload), whatever its fate.
    std::io::copy(&mut (&mut reader).take(length), &mut std::io::sink())?;
    let mut conn = conn;
    let mut answer = |status: &str, headers: &str, body: &[u8]| -> std::io::Result<()> {
        write!(
            conn,
            "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        conn.write_all(body)
    };
    let session = || {
        let n = sessions.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        format!("Location: /v2/apps/x/blobs/uploads/session-{n}\r\n")
    };
    let layer = format!("/v2/stack/run/blobs/{}", image.layer_digest);
    let config = format!("/v2/stack/run/blobs/{}", image.config_digest);
    match (method.as_str(), path.as_str()) {
        ("GET", "/v2/") => answer("200 OK", "", b"{}"),
        ("GET", "/v2/stack/run/manifests/1") => match hostility {
            Hostility::TrickledManifest(pause) => {
                write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    image.manifest.len()
                )?;
                trickle(&mut conn, &image.manifest, pause, stopping)
            }
            _ => answer(
                "200 OK",
                "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n",
                &image.manifest,
            ),
        },
        ("GET", p) if p == config => answer("200 OK", "", &image.config),
        ("GET", p) if p == layer => {
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                image.layer_size
            )?;
            match hostility {
                Hostility::TrickledLayer(pause) => trickle(&mut conn, &[0u8; 100], pause, stopping),
                _ => {
                    let zeros = vec![0u8; 64 << 10];
                    let mut sent = 0;
                    while sent < image.layer_size
                        && !stopping.load(std::sync::atomic::Ordering::SeqCst)
                    {
                        conn.write_all(&zeros)?;
                        sent += zeros.len() as u64;
                    }
                    Ok(())
                }
            }
        }
        ("HEAD", p) if p.starts_with("/v2/apps/x/blobs/") => answer("404 Not Found", "", b""),
        ("POST", p) if p.starts_with("/v2/apps/x/blobs/uploads/") => {
            answer("202 Accepted", &session(), b"")
        }
        ("PUT", p) if p.starts_with("/v2/apps/x/blobs/uploads/session-") => {
            answer("201 Created", "", b"")
        }
        ("DELETE", p) if p.starts_with("/v2/apps/x/blobs/uploads/session-") => {
            answer("204 No Content", "", b"")
        }
        ("PUT", p) if p.starts_with("/v2/apps/x/manifests/") => answer("201 Created", "", b""),
        _ => answer("404 Not Found", "", b""),
    }
}

/// Send `bytes` one at a time, `pause` apart, until the client leaves.
fn trickle(
    conn: &mut std::net::TcpStream,
    bytes: &[u8],
    pause: Duration,
    stopping: &std::sync::atomic::AtomicBool,
) -> std::io::Result<()> {
    use std::io::Write;
    for byte in bytes {
        if stopping.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        conn.write_all(std::slice::from_ref(byte))?;
        std::thread::sleep(pause);
    }
    Ok(())
}

/// A small slug made here: a Procfile and the script it names.
fn tiny_slug(dir: &Path) -> PathBuf {
    let path = dir.join("tiny-slug.tgz");
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::fast(),
    );
    let mut tar = tar::Builder::new(gz);
    for (name, mode, data) in [
        ("Procfile", 0o644, &b"web: ./run\n"[..]),
        ("run", 0o755, &b"#!/bin/sh\nexec sleep 1000\n"[..]),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mtime(315532800);
        tar.append_data(&mut header, name, data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
    path
}

/// `slugbuilder image` of a tiny slug onto the hostile registry's run
/// image, published to the same registry.
fn publish_to(
    registry: &HostileRegistry,
    home: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Finished, Duration) {
    let slug = tiny_slug(home);
    let host = registry.host();
    let mut cmd = slugbuilder(home);
    cmd.args(["image", "--slug"]).arg(&slug).args([
        "--tag",
        &format!("{host}/apps/x:1"),
        "--run-image",
        &format!("{host}/stack/run:1"),
        "--insecure-registry",
        &host,
    ]);
    cmd.args(extra).envs(env.iter().copied());
    let started = Instant::now();
    let out = run(&mut cmd);
    (out, started.elapsed())
}

/// The error line: the last one, after the log of the steps.
fn error_line(out: &Finished) -> String {
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("slugbuilder: "), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "nothing on stdout: {}", out.stdout);
    last.to_string()
}

/// The DELETEs of upload sessions the registry was sent.
fn cancelled_uploads(registry: &HostileRegistry) -> Vec<String> {
    registry
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("DELETE /v2/apps/x/blobs/uploads/session-"))
        .collect()
}

#[test]
fn issue_25_a_layer_claiming_10_gib_fails_the_cap_at_once_and_its_upload_is_cancelled() {
    let case = tempfile::tempdir().unwrap();
    let registry = HostileRegistry::start(Hostility::HugeLayer);
    let (out, took) = publish_to(&registry, case.path(), &["--timeout", "120"], &[]);
    let line = error_line(&out);
    assert_eq!(out.code(), Some(34), "{}", out.stderr);
    assert!(
        line.contains("is 10737418240 bytes") && line.contains("--max-layer-bytes"),
        "{line}"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    let requests = registry.requests();
    let layer = FakeRunImage::new(Hostility::HugeLayer).layer_digest;
    assert!(
        !requests
            .iter()
            .any(|r| r.starts_with("GET ") && r.contains(&layer)),
        "the layer was not even asked for: {requests:?}"
    );
    // The mount attempt opened an upload session: it is cancelled.
    assert_eq!(cancelled_uploads(&registry).len(), 1, "{requests:?}");

    // The variable sets the cap as the flag would.
    let (out, _) = publish_to(
        &registry,
        case.path(),
        &["--timeout", "120"],
        &[("SLUGBUILDER_MAX_LAYER_BYTES", "1000")],
    );
    assert_eq!(out.code(), Some(34), "{}", out.stderr);
    assert!(
        error_line(&out).contains("limit of 1000 bytes"),
        "{}",
        out.stderr
    );
}

#[test]
fn issue_25_a_trickling_registry_fails_the_minimum_progress_rule_before_the_timeout() {
    let case = tempfile::tempdir().unwrap();
    let registry = HostileRegistry::start(Hostility::TrickledLayer(Duration::from_secs(3)));
    let (out, took) = publish_to(&registry, case.path(), &["--timeout", "150"], &[]);
    let line = error_line(&out);
    assert_eq!(out.code(), Some(31), "{}", out.stderr);
    assert!(line.contains("too slow"), "{line}");
    // 16 KiB per 30 s: the first window ends it, far from --timeout.
    assert!(took < Duration::from_secs(75), "{took:?}");
    // The upload of the layer had begun: its session is cancelled.
    let requests = registry.requests();
    assert!(
        requests.iter().any(
            |r| r.starts_with("PUT /v2/apps/x/blobs/uploads/session-") && r.contains("digest=")
        ),
        "{requests:?}"
    );
    assert!(!cancelled_uploads(&registry).is_empty(), "{requests:?}");
}

#[test]
fn issue_25_the_deadline_during_a_registry_transfer_is_exit_16() {
    let case = tempfile::tempdir().unwrap();
    let registry = HostileRegistry::start(Hostility::TrickledManifest(Duration::from_millis(200)));
    let (out, took) = publish_to(&registry, case.path(), &["--timeout", "3"], &[]);
    let line = error_line(&out);
    assert_eq!(out.code(), Some(16), "{}", out.stderr);
    assert!(line.contains("time limit"), "{line}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}
