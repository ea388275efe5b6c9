//! slugbuilder as root against a tenant who plants links, swaps files
//! while they are read, and sends endless input (issue 11): root never
//! follows a link, never reads unbounded data, and every phase is under
//! one deadline and stops within 2 seconds of SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::builds::*;
use e2e::slugs::{self, Guarded};
use nix::sys::signal::{kill, Signal};

fn web_app() -> App {
    App::new(&[("Procfile", "web: ./run\n"), ("run", "#!/bin/sh\n")])
}

/// A root-only directory holding a secret, as /root or /etc/ssl/private.
fn secret_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = shared_tempdir();
    let dir = tmp.path().join("secret");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("secret.txt"), "TOPSECRET root-only content\n").unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(
        dir.join("secret.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    (tmp, dir)
}

/// Every byte of every entry of a slug, as text.
fn slug_dump(slug: &[u8]) -> String {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(slug));
    let mut out = String::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        out.push_str(&entry.path().unwrap().display().to_string());
        out.push('\n');
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.push_str(&String::from_utf8_lossy(&data));
    }
    out
}

/// The buildpack links `.release` to a root-owned script of the host (the
/// victim tree of the hostile tests, beside and above the build's work
/// dir): slugbuilder writes `.release` as root and must replace the link,
/// and nothing outside the build may change or appear.
#[test]
fn links_planted_where_root_writes_are_replaced_never_written_through() {
    let scene = e2e::hostile::Scene::new();
    let victim = scene.victim().join("run.sh");
    let out = Build::new(web_app().tar())
        .buildpack("link-planter")
        .env("VICTIM", &victim)
        .args(["--pass-env", "VICTIM"])
        .args([std::ffi::OsStr::new("--work-dir"), scene.work().as_os_str()])
        .run();
    assert_ok(&out);
    scene.assert_untouched("a .release linked to a host script");
    let files = slug_files(&out.stdout);
    assert!(text(&files, ".release").contains("curl evil.example"));
}

#[test]
fn a_procfile_linked_to_a_root_only_file_is_refused_unread() {
    let (_keep, secret) = secret_dir();
    for target in [
        secret.join("secret.txt"),
        PathBuf::from("/dev/zero"),
        PathBuf::from("/etc/shadow"),
    ] {
        let build = Build::new(web_app().tar())
            .buildpack("link-planter")
            .env("VICTIM", "/nonexistent")
            .env("PROCFILE_TARGET", &target)
            .args(["--pass-env", "VICTIM", "--pass-env", "PROCFILE_TARGET"]);
        let start = Instant::now();
        let out = build.run();
        assert_fails_with(&out, 10);
        let log = stderr(&out);
        assert!(
            log.contains("Procfile is a symbolic link, not a regular file"),
            "{log}"
        );
        assert!(
            !log.contains("TOPSECRET") && !log.contains("root:"),
            "{log}"
        );
        assert!(start.elapsed() < Duration::from_secs(20));
    }
}

/// Exchange `a` and `b` in `dir` (atomically, RENAME_EXCHANGE) as fast as
/// possible until `stop`.
fn swapper(
    dir: PathBuf,
    a: &'static str,
    b: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut swaps = 0;
        while !stop.load(Ordering::SeqCst) {
            let fd = match nix::fcntl::open(
                &dir,
                nix::fcntl::OFlag::O_DIRECTORY,
                nix::sys::stat::Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            };
            for _ in 0..1000 {
                if nix::fcntl::renameat2(&fd, a, &fd, b, nix::fcntl::RenameFlags::RENAME_EXCHANGE)
                    .is_ok()
                {
                    swaps += 1;
                }
            }
        }
        swaps
    })
}

/// The build's log up to the buildpack's "ready" line (or its end).
fn log_until_ready(stderr: &mut impl BufRead) -> String {
    let mut log = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        log.push_str(&line);
        if line.contains("ready") {
            break;
        }
    }
    log
}

/// The build dir of the one workspace in `work` (`--work-dir`).
fn build_dir_in(work: &Path) -> PathBuf {
    std::fs::read_dir(work)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("slugbuilder-")
        })
        .expect("a workspace")
        .join("build")
}

/// A round either packed a slug without the secret, or failed saying why
/// and left no slug.
fn assert_nothing_from_outside(round: usize, packed: bool, slug: &Path, log: &str) {
    if packed {
        let dump = slug_dump(&std::fs::read(slug).unwrap());
        assert!(
            !dump.contains("TOPSECRET"),
            "round {round}: a root-only file was packed"
        );
    } else {
        assert!(
            log.contains("changed while it was packed")
                || log.contains("not readable by the build user"),
            "{log}"
        );
        assert!(!slug.exists(), "a failed build left a slug");
    }
}

/// While the slug is packed, an outside process keeps exchanging a
/// directory with a link to a root-only directory, and a file with a
/// FIFO: packing may fail ("changed while it was packed"), never pack the
/// secret, never block on the FIFO.
#[test]
fn swaps_during_packing_never_pull_in_a_file_from_outside() {
    if !slugs::require_root("a build user that differs from the packer") {
        return;
    }
    let (_keep, secret) = secret_dir();
    let app = web_app();
    let mut results = Vec::new();
    for round in 0..8 {
        let work = tempfile::tempdir().unwrap();
        let slug = work.path().join("slug.tgz");
        let mut child = Build::new(Vec::new())
            .buildpack("pack-target")
            .env("SECRET_DIR", &secret)
            .args(["--pass-env", "SECRET_DIR"])
            .args([std::ffi::OsStr::new("--source"), app.path().as_os_str()])
            .args([std::ffi::OsStr::new("--work-dir"), work.path().as_os_str()])
            // On disk, where this test's swapper (on the host) reaches the
            // tree as a buildpack's leftover process would reach it in the
            // in-memory workspace: packing reads by descriptors either way.
            .args(["--workspace", "disk"])
            .args([std::ffi::OsStr::new("-o"), slug.as_os_str()])
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let child = Guarded::new(child);
        // Start swapping once the buildpack is done: packing follows.
        let mut log = log_until_ready(&mut stderr);
        let build = build_dir_in(work.path());
        assert!(
            build.join("a").is_dir() && build.join("p").exists(),
            "round {round}: the buildpack's tree is not at {build:?}: the swapper would swap nothing\n{log}"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (a, b) = if round % 2 == 0 {
            ("a", "b")
        } else {
            ("f", "p")
        };
        let swaps = swapper(build, a, b, Arc::clone(&stop));
        let start = Instant::now();
        let status = child.wait(Duration::from_secs(60));
        stop.store(true, Ordering::SeqCst);
        let swaps = swaps.join().unwrap();
        let mut rest = String::new();
        stderr.read_to_string(&mut rest).unwrap();
        log.push_str(&rest);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "packing hung: {log}"
        );
        assert!(
            status.success() || status.code() == Some(15),
            "round {round}: {status:?}\n{log}"
        );
        assert_nothing_from_outside(round, status.success(), &slug, &log);
        // Without a swap the round tested nothing (a swapper that cannot
        // reach the build dir spins harmlessly).
        assert!(
            swaps > 0,
            "round {round}: no swap happened while the slug was packed, so the round tested nothing\n{log}"
        );
        results.push((status.code(), swaps));
    }
    eprintln!("(exit code, swaps) per round: {results:?}");
}

/// A git server that accepts and never answers: the time limit and SIGTERM
/// both end the build on time.
#[test]
fn a_black_hole_buildpack_server_meets_the_deadline_and_sigterm() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/bp.git", listener.local_addr().unwrap());
    // The black hole is on the host's loopback, which only a build on the
    // host's network reaches (an isolated one is refused at once).
    let build = Build::new(web_app().tar()).args([
        "--buildpack",
        &url,
        "--timeout",
        "4",
        "--network",
        "host",
    ]);
    let start = Instant::now();
    let out = build.run();
    assert_fails_with(&out, 16);
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "took {:?}",
        start.elapsed()
    );

    // A fresh server: the first build's connection must not count.
    drop(listener);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/bp.git", listener.local_addr().unwrap());
    let app = web_app();
    let child = Build::new(Vec::new())
        .args(["--buildpack", &url, "--network", "host"])
        .args([std::ffi::OsStr::new("--source"), app.path().as_os_str()])
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let child = Guarded::new(child);
    // The clone is running once the server has a connection.
    listener.set_nonblocking(true).unwrap();
    let mut conns = Vec::new();
    assert!(slugs::wait_until(Duration::from_secs(20), || {
        if let Ok((c, _)) = listener.accept() {
            conns.push(c);
        }
        !conns.is_empty()
    }));
    kill(child.pid(), Signal::SIGTERM).unwrap();
    let start = Instant::now();
    let out = child.output(Duration::from_secs(10));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(out.code(), Some(17), "{}", out.stderr);
}

#[test]
fn a_sparse_8_gib_file_fails_the_size_limit_without_being_read() {
    let build = Build::new(web_app().tar())
        .buildpack("sparse")
        .args(["--timeout", "20"]);
    let start = Instant::now();
    let out = build.run();
    assert_fails_with(&out, 15);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert!(stderr(&out).contains("apparent size"), "{}", stderr(&out));
}

#[test]
fn deeply_nested_release_yaml_is_refused_at_once() {
    let build = Build::new(web_app().tar()).buildpack("deep-release");
    let start = Instant::now();
    let out = build.run();
    assert_fails_with(&out, 14);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        stderr(&out).contains("deeper than 64 levels"),
        "{}",
        stderr(&out)
    );
}

/// 1.5 GB of log without a newline: slugbuilder's memory stays small, and
/// the line is cut with a note.
#[test]
fn a_flood_of_log_without_newlines_keeps_memory_bounded() {
    let app = web_app();
    let child = Build::new(Vec::new())
        .buildpack("flood")
        .args([std::ffi::OsStr::new("--source"), app.path().as_os_str()])
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let child = Guarded::new(child);
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watcher = {
        let peak = Arc::clone(&peak);
        std::thread::spawn(move || loop {
            match std::fs::read_to_string(format!("/proc/{pid}/status")) {
                Ok(status) => {
                    if let Some(kb) = status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmHWM:"))
                        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
                    {
                        peak.fetch_max(kb, Ordering::SeqCst);
                    }
                }
                Err(_) => return,
            }
            std::thread::sleep(Duration::from_millis(20));
        })
    };
    let out = child.output(Duration::from_secs(120));
    watcher.join().unwrap();
    assert_eq!(
        out.code(),
        Some(0),
        "{}",
        &out.stderr[..out.stderr.len().min(2000)]
    );
    assert!(
        out.stderr.contains("[line cut: "),
        "no note of the cut line"
    );
    assert!(out.stderr.contains("flood done"));
    assert!(
        out.stderr.len() < 1 << 20,
        "the whole line was logged: {} bytes",
        out.stderr.len()
    );
    let peak_mib = peak.load(Ordering::SeqCst) / 1024;
    eprintln!("slugbuilder peak RSS: {peak_mib} MiB");
    assert!(peak_mib > 0 && peak_mib < 100, "peak RSS {peak_mib} MiB");
}

/// How long slugbuilder's signal thread waits for the build to stop
/// before it cleans up and exits by itself (`STOP_GRACE` in
/// slugbuilder's main, which also exits 17). A stop measured against a
/// longer deadline could be that emergency exit; the stop under test is
/// the stdin reader giving up at the signal.
const EMERGENCY_GRACE: Duration = Duration::from_millis(1500);

#[test]
fn sigterm_while_reading_stdin_stops_at_once_with_exit_17() {
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        let work = tempfile::tempdir().unwrap();
        let mut cmd = Build::new(Vec::new())
            .buildpack("recorder")
            .args([std::ffi::OsStr::new("--work-dir"), work.path().as_os_str()])
            .command();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Half an archive, then silence: the pipe stays open.
        let stdin = child.stdin.take().unwrap();
        let tar = web_app().tar();
        let mut stdin = stdin;
        std::io::Write::write_all(&mut stdin, &tar[..700]).unwrap();
        let child = Guarded::new(child);
        // The workspace exists before the source is read: from then on
        // slugbuilder waits for the rest of the archive.
        assert!(
            e2e::slugs::wait_until(Duration::from_secs(10), || std::fs::read_dir(work.path())
                .unwrap()
                .next()
                .is_some()),
            "{signal}: slugbuilder never made its workspace, so it never read stdin"
        );
        std::thread::sleep(Duration::from_millis(300));
        kill(child.pid(), signal).unwrap();
        let start = Instant::now();
        let out = child.output(Duration::from_secs(10));
        let took = start.elapsed();
        assert!(
            !out.stderr.contains("exiting now"),
            "{signal}: the build did not stop by itself; slugbuilder's emergency exit ended it after {took:?}:\n{}",
            out.stderr
        );
        // The emergency exit comes EMERGENCY_GRACE after the signal at the
        // earliest: a stop before it is the build's own.
        assert!(
            took < EMERGENCY_GRACE,
            "{signal}: took {took:?}, as long as the emergency exit's {EMERGENCY_GRACE:?}:\n{}",
            out.stderr
        );
        assert_eq!(out.code(), Some(17), "{signal}: {}", out.stderr);
        assert!(out.stdout.is_empty());
        assert!(
            std::fs::read_dir(work.path()).unwrap().next().is_none(),
            "{signal}: workspace left"
        );
        drop(stdin);
    }
}

#[test]
fn a_truncated_source_tar_is_refused_unless_accepted() {
    let whole = web_app().tar();
    // Cut right after the first entry's data: no end-of-archive marker.
    let mut archive = tar::Archive::new(&whole[..]);
    let first_end = {
        let mut entries = archive.entries().unwrap();
        let e = entries.next().unwrap().unwrap();
        (e.raw_file_position() + e.header().entry_size().unwrap()).div_ceil(512) * 512
    };
    let cut = whole[..first_end as usize].to_vec();
    let out = Build::new(cut.clone()).buildpack("recorder").run();
    assert_fails_with(&out, 10);
    let log = stderr(&out);
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.contains("truncated"), "{log}");
    let out = Build::new(cut)
        .buildpack("recorder")
        .args(["--allow-truncated-source"])
        .run();
    assert_ok(&out);
}
