//! Every buildpack step starts the way a container runtime starts a
//! container (issue 21, threat model invariants 7-10), tested from the
//! attacker's side with the `attacker` fixture buildpack: each attack runs
//! in a real build and says what it got; the host checks that it got
//! nothing. Where an attack can succeed when the operator allows it
//! (`--network host`), the test shows that too, so that it cannot pass by
//! testing nothing. Run as root (CI does).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e::builds::*;
use e2e::slugs::{self, unique_tag};

fn require_root() -> bool {
    slugs::require_root("build isolation")
}

fn app() -> App {
    App::new(&[("Procfile", "web: ./run\n"), ("run", "#!/bin/sh\n")])
}

/// The `ATTACK name: result` lines of a log, as (name, result).
fn attacks(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|l| l.trim_start().strip_prefix("ATTACK "))
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The result of attack `name`; fails the test when it did not run.
fn result(log: &str, name: &str) -> String {
    attacks(log)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("attack {name:?} did not run:\n{log}"))
}

/// A build with the attacker buildpack running `attack`, with `vars`
/// passed to it.
fn attack(attack: &str, vars: &[(&str, &str)]) -> Build {
    let mut build = Build::new(app().tar())
        .buildpack("attacker")
        .env("ATTACK", attack)
        .args(["--pass-env", "ATTACK"]);
    for (k, v) in vars {
        build = build.env(k, v).args(["--pass-env", k]);
    }
    build
}

fn need_tool(tool: &str) -> bool {
    e2e::have("this isolation test", tool)
}

/// Run slugbuilder `args` through `bash -c SCRIPT`, where the script ends
/// with `exec "$@"` (it may open descriptors or keyrings first), with
/// `vars` in its environment; the source comes from `--source DIR`.
fn wrapped(script: &str, script_args: &[&str], vars: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .envs(vars.iter().copied())
        .arg("-c")
        .arg(script)
        .arg("bash")
        .args(script_args)
        .arg(e2e::bin("slugbuilder"))
        .args(args);
    slugs::run_with_input(&mut cmd, Vec::new(), Duration::from_secs(60))
}

/// A shared library whose constructor records the uid that loaded it as a
/// file `uid-N` in `marks` (a directory only the host sees).
fn evil_library(dir: &Path, marks: &Path) -> PathBuf {
    let src = dir.join("evil.c");
    std::fs::write(
        &src,
        format!(
            r#"#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void evil(void) {{
    char p[512];
    snprintf(p, sizeof p, "{}/uid-%d", (int)getuid());
    FILE *f = fopen(p, "a");
    if (f) {{ fputs("loaded\n", f); fclose(f); }}
}}
"#,
            marks.display()
        ),
    )
    .unwrap();
    let lib = dir.join("evil.so");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .status()
        .expect("cc");
    assert!(status.success(), "cc failed");
    lib
}

#[test]
fn an_exported_ld_preload_never_runs_in_a_root_process() {
    if !require_root() || !need_tool("cc") {
        return;
    }
    let dir = shared_tempdir();
    let marks = dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    std::fs::set_permissions(&marks, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let lib = evil_library(dir.path(), &marks);
    for mode in ["auto", "none"] {
        let source = shared_tempdir();
        std::fs::write(source.path().join("Procfile"), "web: ./run\n").unwrap();
        std::fs::copy(&lib, source.path().join("evil.so")).unwrap();
        let slug = dir.path().join(format!("{mode}.tgz"));
        // The attacker exports LD_PRELOAD and LD_AUDIT naming its library
        // both as the step sees it and by the build dir's host path; the
        // recorder, the next buildpack, is started with that environment.
        let out = Build::new(Vec::new())
            .buildpack("attacker")
            .buildpack("recorder")
            .env("ATTACK", "preload")
            .env("EVIL_LIB", "evil.so")
            .args(["--pass-env", "ATTACK", "--pass-env", "EVIL_LIB"])
            .args(["--sandbox", mode])
            .arg("--source")
            .arg(source.path())
            .arg("-o")
            .arg(&slug)
            .run();
        let log = stderr(&out);
        assert_ok(&out);
        assert!(result(&log, "preload").starts_with("exported "), "{log}");
        let root_marks: Vec<_> = std::fs::read_dir(&marks)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n == "uid-0")
            .collect();
        assert!(
            root_marks.is_empty(),
            "{mode}: the tenant's library ran as root\n{log}"
        );
        // What buildpacks export still reaches the next one.
        let files = slug_files(&std::fs::read(&slug).unwrap());
        let env = text(&files, ".recorded/env");
        assert!(
            env.contains("LD_PRELOAD=") && env.contains("evil.so"),
            "{env}"
        );
    }
}

#[test]
fn a_step_has_no_terminal_to_type_into() {
    if !require_root() || !need_tool("script") {
        return;
    }
    let source = app();
    let src = source.path().to_str().unwrap().to_string();
    let bp = buildpack("attacker");
    let out_dir = shared_tempdir();
    // slugbuilder with a controlling terminal, as an operator's shell has.
    let cmd = format!(
        "ATTACK=tty {} --pass-env ATTACK --buildpack {} --source {src} -o {}/slug.tgz",
        e2e::bin("slugbuilder").display(),
        bp.display(),
        out_dir.path().display()
    );
    let mut script = Command::new("script");
    script
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("SHELL", "/bin/sh")
        .args(["-qec", &cmd, "/dev/null"]);
    let out = slugs::run_with_input(&mut script, Vec::new(), Duration::from_secs(60));
    let log = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(result(&log, "tty").starts_with("refused"), "{log}");
    for fd in ["tiocsti0", "tiocsti1", "tiocsti2"] {
        assert!(result(&log, fd).starts_with("refused"), "{log}");
    }
    assert!(!log.contains("injected"), "{log}");
}

#[test]
fn the_callers_keys_and_descriptors_stay_behind() {
    if !require_root() || !need_tool("keyctl") {
        return;
    }
    let dir = shared_tempdir();
    let secret = dir.path().join("root-only");
    std::fs::write(&secret, "root-only-secret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let source = app();
    let tag = unique_tag();
    let desc = format!("slugtest-{tag}");
    for mode in ["auto", "none"] {
        // A session keyring holding a key, and a descriptor 9 open on a
        // root-only file, as an operator's shell or a deploy hook has them.
        let slug = dir.path().join("slug.tgz");
        let out = wrapped(
            r#"exec keyctl session - bash -c 'keyctl add user "$1" operator-key @s >/dev/null && exec 9<"$2" && shift 2 && exec "$@"' _ "$@""#,
            &[&desc, secret.to_str().unwrap()],
            &[("ATTACK", "keys,fds"), ("KEY_DESC", &desc)],
            &[
                "--buildpack",
                buildpack("attacker").to_str().unwrap(),
                "--pass-env",
                "ATTACK",
                "--pass-env",
                "KEY_DESC",
                "--sandbox",
                mode,
                "--source",
                source.path().to_str().unwrap(),
                "-o",
                slug.to_str().unwrap(),
            ],
        );
        let log = stderr(&out);
        assert!(out.status.success(), "{log}");
        assert!(log.contains("attacker app detected"), "{log}");
        assert!(
            result(&log, "key_search").starts_with("refused"),
            "{mode}\n{log}"
        );
        assert!(
            result(&log, "key_add").starts_with("refused"),
            "{mode}\n{log}"
        );
        assert!(result(&log, "fd9").starts_with("refused"), "{mode}\n{log}");
        // Only stdin, stdout, stderr (and the listing's own descriptor).
        assert_eq!(result(&log, "fds"), "0,1,2,3", "{mode}\n{log}");
        assert!(!log.contains("root-only-secret"), "{log}");
        assert!(!log.contains("operator-key"), "{log}");
    }
}

/// A service on the host's loopback and on an abstract unix socket, each
/// answering `secret` to whoever connects, until dropped.
struct HostService {
    port: u16,
    name: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HostService {
    fn start(secret: &str) -> HostService {
        use std::os::linux::net::SocketAddrExt;
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        let name = format!("slugtest-{}", unique_tag());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let uds = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        tcp.set_nonblocking(true).unwrap();
        uds.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, secret) = (stop.clone(), format!("{secret}\n"));
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !flag.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
                if let Ok((mut c, _)) = tcp.accept() {
                    let _ = c.write_all(secret.as_bytes());
                }
                if let Ok((mut c, _)) = uds.accept() {
                    let _ = c.write_all(secret.as_bytes());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        HostService { port, name, stop }
    }
}

impl Drop for HostService {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn the_hosts_loopback_services_and_abstract_sockets_are_out_of_reach() {
    if !require_root() {
        return;
    }
    let secret = format!("host-only-{}", unique_tag());
    let service = HostService::start(&secret);
    let port = service.port.to_string();
    let vars = [
        ("HOST_PORT", port.as_str()),
        ("ABSTRACT", service.name.as_str()),
    ];
    let out = attack("network", &vars).run();
    let log = stderr(&out);
    assert_ok(&out);
    assert!(log.contains("network: isolated"), "{log}");
    for name in ["tcp 127.0.0.1", "tcp 10.0.2.2", "abstract"] {
        assert!(result(&log, name).starts_with("refused"), "{name}\n{log}");
    }
    assert!(!log.contains(&secret), "{log}");
    // The same attack with the host's network (the operator's choice,
    // named in the log) reaches both: the test sees what it guards.
    let out = attack("network", &vars).args(["--network", "host"]).run();
    let log = stderr(&out);
    assert_ok(&out);
    assert!(
        log.contains("network: slugbuilder's own (--network host"),
        "{log}"
    );
    assert_eq!(
        result(&log, "tcp 127.0.0.1"),
        format!("got {secret}"),
        "{log}"
    );
    assert_eq!(result(&log, "abstract"), format!("got {secret}"), "{log}");
}

/// Build A serves its database password on loopback and on an abstract
/// socket; build B, at the same time, tries both.
#[test]
fn two_builds_cannot_talk_over_loopback() {
    if !require_root() {
        return;
    }
    for network in ["isolated", "host"] {
        let secret = format!("db-password-{}", unique_tag());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string();
        let name = format!("slugtest-peer-{}", unique_tag());
        let vars = [
            ("PEER_PORT", port.as_str()),
            ("PEER_ABSTRACT", name.as_str()),
            ("SECRET", secret.as_str()),
            ("LISTEN_FOR", "8"),
            ("PEER_WAIT", "3"),
        ];
        let out_dir = shared_tempdir();
        let mut a = attack("listen", &vars)
            .args(["--network", network])
            .arg("-o")
            .arg(out_dir.path().join("a.tgz"))
            .command();
        let mut a = a
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(a.stdin.take().map(|mut s| s.write_all(&app().tar())));
        // Wait for A to listen.
        let mut a_err = a.stderr.take().unwrap();
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !String::from_utf8_lossy(&seen).contains("ATTACK listen: listening") {
            assert!(
                Instant::now() < deadline,
                "{}",
                String::from_utf8_lossy(&seen)
            );
            let mut buf = [0u8; 4096];
            let n = a_err.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "build A ended early: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
        let out = attack("peer", &vars).args(["--network", network]).run();
        let log = stderr(&out);
        // Ended as an operator would, so that it cleans up after itself.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(a.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = a.wait();
        assert_ok(&out);
        if network == "isolated" {
            assert!(result(&log, "peer tcp").starts_with("refused"), "{log}");
            assert!(
                result(&log, "peer abstract").starts_with("refused"),
                "{log}"
            );
            assert!(!log.contains(&secret), "{log}");
        } else {
            assert!(log.contains(&secret), "the host network control run: {log}");
        }
    }
}

#[test]
fn namespaces_mounts_and_kernel_keys_are_out_of_reach() {
    if !require_root() {
        return;
    }
    let out = attack("kernel", &[]).run();
    let log = stderr(&out);
    assert_ok(&out);
    assert!(result(&log, "unshare").starts_with("refused"), "{log}");
    assert_eq!(result(&log, "proc_keys"), "read 0 bytes", "{log}");
}

/// Build cgroups (`slugbuilder-PID-...`) whose slugbuilder is gone.
fn cgroup_leftovers() -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) && !e.path().is_symlink() {
                if let Some(rest) = name.strip_prefix("slugbuilder-") {
                    let pid = rest.split('-').next().unwrap_or("");
                    if !Path::new("/proc").join(pid).exists() {
                        found.push(e.path().display().to_string());
                    }
                } else if stack.len() < 10_000 {
                    stack.push(e.path());
                }
            }
        }
    }
    found
}

#[test]
fn limits_stop_the_build_with_a_line_that_names_them() {
    if !require_root() {
        return;
    }
    // (attack, its variables, the limit's flags, the last line of the log)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let cases: [Case; 4] = [
        (
            "memory",
            &[("ALLOC_MB", "600")],
            &["--memory", "256M"],
            "Build stopped: memory limit 256 MiB reached in bin/compile of attacker",
        ),
        (
            "pids",
            &[("FORKS", "200")],
            &["--pids-limit", "64"],
            "Build stopped: process limit 64 reached in bin/compile of attacker",
        ),
        (
            "disk",
            &[("WRITE_MB", "200")],
            &["--disk-limit", "64M"],
            "Build stopped: disk limit 64 MiB reached in bin/compile of attacker",
        ),
        (
            "disk",
            &[("WRITE_MB", "1024"), ("WRITE_TO", "/dev/shm")],
            &["--memory", "256M"],
            "Build stopped: memory limit 256 MiB reached in bin/compile of attacker",
        ),
    ];
    for (what, vars, limit, line) in cases {
        let work = shared_tempdir();
        let out = attack(what, vars)
            .args(limit)
            .arg("--work-dir")
            .arg(work.path())
            .run();
        let log = stderr(&out);
        assert_fails_with(&out, 19);
        assert_eq!(
            log.lines().last(),
            Some(format!("slugbuilder: {line}").as_str()),
            "{log}"
        );
        // Nothing is left: no workspace, no cgroup.
        let left: Vec<_> = std::fs::read_dir(work.path()).unwrap().collect();
        assert!(left.is_empty(), "{what}: left behind {left:?}");
    }
    let left = cgroup_leftovers();
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
    // The limits are the build's: the same attack under them, sized to
    // fit, builds.
    let out = attack("memory", &[("ALLOC_MB", "64")])
        .args(["--memory", "512M"])
        .run();
    assert_ok(&out);
    assert!(stderr(&out).contains("memory 512 MiB"), "{}", stderr(&out));
}

#[test]
fn buildpack_output_cannot_drive_the_terminal() {
    let out = attack("escapes", &[]).run();
    let log = stderr(&out);
    assert_ok(&out);
    let line = log
        .lines()
        .find(|l| l.contains("before"))
        .unwrap_or_else(|| panic!("{log}"));
    // Colours stay; everything else is shown, not obeyed.
    assert!(line.contains("\x1b[1;32mgreen\x1b[0m"), "{line:?}");
    for raw in ["\x1b[2J", "\x1b[8m", "\x1b]", "\x07", "\r"] {
        assert!(
            !line.contains(raw),
            "{raw:?} reached the terminal: {line:?}"
        );
    }
    for shown in ["\\x1b[2J", "\\x1b[8m", "\\x1b]0;pwned\\x07", "ok\\x0dFAKE"] {
        assert!(line.contains(shown), "{shown:?} not shown: {line:?}");
    }
}

/// The builds of real apps download from their registries through the
/// build's own network.
#[test]
fn an_isolated_build_reaches_the_registries() {
    if !require_root() {
        return;
    }
    let bp = shared_tempdir();
    std::fs::create_dir(bp.path().join("bin")).unwrap();
    for (name, body) in [
        ("detect", "#!/bin/sh\necho egress\n"),
        (
            "compile",
            "#!/bin/sh\nset -e\npython3 -c \"import urllib.request; print('registry answered', urllib.request.urlopen('https://pypi.org/simple/six/', timeout=30).status)\"\n",
        ),
    ] {
        let path = bp.path().join("bin").join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = Build::new(app().tar())
        .arg("--buildpack")
        .arg(bp.path())
        .run();
    let log = stderr(&out);
    assert_ok(&out);
    assert!(log.contains("network: isolated"), "{log}");
    assert!(log.contains("registry answered 200"), "{log}");
}

/// `build` run as uid 65534 (as the builder image's `slug` user, or a
/// rootless operator, would run it), on a source directory and a work dir
/// that user can use.
fn as_nobody(build: Build) -> Output {
    use std::os::unix::process::CommandExt;
    let out_dir = shared_tempdir();
    std::fs::set_permissions(out_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let src = shared_tempdir();
    std::fs::write(src.path().join("Procfile"), "web: ./run\n").unwrap();
    let mut cmd = build
        .arg("--source")
        .arg(src.path())
        .arg("--work-dir")
        .arg(out_dir.path())
        .arg("-o")
        .arg(out_dir.path().join("slug.tgz"))
        .command();
    cmd.uid(65534).gid(65534);
    slugs::run_with_input(&mut cmd, Vec::new(), Duration::from_secs(60))
}

/// Unprivileged (the builder image's `slug` user, a rootless operator), the
/// default network is the build's own when the host lets the user open
/// /dev/net/tun, and otherwise the build fails with exit 18 saying so: it
/// never quietly shares the host's network.
#[test]
fn an_unprivileged_build_gets_its_own_network_or_fails_saying_why() {
    if !require_root() {
        return;
    }
    let secret = format!("host-only-{}", unique_tag());
    let service = HostService::start(&secret);
    let port = service.port.to_string();
    let out = as_nobody(attack(
        "network",
        &[("HOST_PORT", &port), ("ABSTRACT", &service.name)],
    ));
    let log = stderr(&out);
    use std::os::unix::process::CommandExt;
    let tun_usable = Command::new("sh")
        .args(["-c", "exec 3<>/dev/net/tun"])
        .uid(65534)
        .gid(65534)
        .status()
        .is_ok_and(|s| s.success());
    let userns = log.contains("Build sandbox: user namespace");
    if tun_usable || !log.contains("/dev/net/tun") {
        assert!(out.status.success(), "{log}");
        if userns {
            assert!(log.contains("network: isolated"), "{log}");
            assert!(
                result(&log, "tcp 127.0.0.1").starts_with("refused"),
                "{log}"
            );
            assert!(!log.contains(&secret), "{log}");
        } else {
            // No user namespaces here: the kernel's refusal, said loudly.
            assert!(log.contains("network: the host's (no namespaces)"), "{log}");
        }
    } else {
        assert_fails_with(&out, 18);
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(
            log.contains("--network isolated needs /dev/net/tun"),
            "{log}"
        );
    }
}

/// The workspace in memory (issue 24): the log says where it is, the host
/// never sees it (it is a tmpfs in slugbuilder's own mount namespace), it
/// is gone after the build, and the slug is the same bytes as on disk.
#[test]
fn the_workspace_in_memory_is_private_and_gives_the_same_slug() {
    if !require_root() {
        return;
    }
    let mut slugs = Vec::new();
    for (mode, line) in [
        ("memory", "Workspace: memory (tmpfs, at most 8 GiB"),
        ("disk", "Workspace: disk ("),
    ] {
        let work = shared_tempdir();
        let out = attack("disk", &[("WRITE_MB", "1")])
            .args(["--workspace", mode])
            .arg("--work-dir")
            .arg(work.path())
            .arg("--source-date-epoch")
            .arg("1700000000")
            .run();
        let log = stderr(&out);
        assert_ok(&out);
        assert!(log.contains(line), "{mode}: {log}");
        let left: Vec<_> = std::fs::read_dir(work.path()).unwrap().collect();
        assert!(left.is_empty(), "{mode}: left behind {left:?}");
        slugs.push(out.stdout);
    }
    assert!(!slugs[0].is_empty());
    assert_eq!(slugs[0], slugs[1], "the slugs of the two workspaces differ");
    // Nothing of a build's tmpfs is mounted on the host.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains("/slugbuilder-"), "{mounts}");
}

/// Asked for explicitly, a workspace in memory that cannot be had is an
/// error (exit 18), never a quiet move to disk.
#[test]
fn a_memory_workspace_that_cannot_be_had_fails_saying_why() {
    if !require_root() {
        return;
    }
    let out = as_nobody(Build::new(Vec::new()).buildpack("recorder").args([
        "--workspace",
        "memory",
        "--network",
        "none",
    ]));
    let log = stderr(&out);
    assert_fails_with(&out, 18);
    assert!(
        log.contains("--workspace memory: slugbuilder is not root"),
        "{log}"
    );
}
