//! The build sandbox, tested from the attacker's side (issue 10): each
//! test is a buildpack doing what a hostile tenant would, and checks from
//! the host that it got nowhere. Run as root (CI does); most also run with
//! `--sandbox none`, the fallback, where a uid of the build's own must hold
//! the line.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use e2e::builds::*;
use e2e::slugs::{self, processes_with_arg, unique_tag, wait_processes_gone};

fn web_app() -> App {
    App::new(&[("Procfile", "web: ./run\n"), ("run", "#!/bin/sh\n")])
}

/// Both modes a root build can be in.
const MODES: &[&str] = &["auto", "none"];

/// The sandbox line of the log: which mode the build ran in.
fn sandbox_line(log: &str) -> &str {
    log.lines()
        .find(|l| l.starts_with("-----> Build sandbox:"))
        .unwrap_or_else(|| panic!("the log does not say which sandbox the build got:\n{log}"))
}

fn require_root() -> bool {
    slugs::require_root("the sandbox")
}

#[test]
fn nothing_a_step_starts_outlives_it_however_it_detaches() {
    if !require_root() {
        return;
    }
    for mode in MODES {
        let tag = unique_tag();
        let out = Build::new(web_app().tar())
            .buildpack("daemonizer")
            .env("DAEMON_TAG", &tag)
            .args(["--pass-env", "DAEMON_TAG", "--sandbox", mode])
            .run();
        assert_ok(&out);
        let log = stderr(&out);
        assert!(log.contains("daemons started"), "{log}");
        let line = sandbox_line(&log);
        if *mode == "none" {
            assert!(line.contains("none (subreaper only)"), "{line}");
            assert!(
                log.contains("No build sandbox (disabled with --sandbox none)"),
                "{log}"
            );
        } else {
            assert!(
                line.contains("namespaces (pid, mount, ipc, uts, net)"),
                "{line}"
            );
        }
        // Not one of the detached sleeps is left, the moment the build ends.
        let left = processes_with_arg(&tag);
        assert!(
            left.is_empty(),
            "{mode}: processes outlived their step: {left:?}"
        );
    }
}

/// Build A keeps a secret in its cache, its config vars and its command
/// line, and stays busy; build B, a spy, looks for all of it and tries to
/// write into A's cache. B must find nothing.
#[test]
fn a_build_cannot_reach_another_builds_workspace_cache_or_secrets() {
    if !require_root() {
        return;
    }
    for mode in MODES {
        let work = shared_tempdir();
        let cache = shared_tempdir();
        let victim_cache = cache.path().join("victim");
        let tag = unique_tag();
        let victim_app = web_app();
        let victim = Build::new(Vec::new())
            .buildpack("victim")
            .env("VICTIM_TAG", &tag)
            .args(["--pass-env", "VICTIM_TAG", "--sandbox", mode])
            .args(["-e", "DATABASE_URL=postgres://u:victim-secret-var@db/x"])
            .args([
                std::ffi::OsStr::new("--cache-dir"),
                victim_cache.as_os_str(),
            ])
            .args([std::ffi::OsStr::new("--work-dir"), work.path().as_os_str()])
            .args([
                std::ffi::OsStr::new("--source"),
                victim_app.path().as_os_str(),
            ])
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let victim = slugs::Guarded::new(victim);
        assert!(
            slugs::wait_until(Duration::from_secs(30), || !processes_with_arg(&tag)
                .is_empty()),
            "the victim build did not start"
        );
        let spy = Build::new(web_app().tar())
            .buildpack("spy")
            .env("VICTIM_CACHE", &victim_cache)
            .env("VICTIM_WORK", work.path())
            .args(["--pass-env", "VICTIM_CACHE", "--pass-env", "VICTIM_WORK"])
            .args(["--sandbox", mode])
            .run();
        assert_ok(&spy);
        let files = slug_files(&spy.stdout);
        for (name, content) in &files {
            if !name.starts_with(".spy/") {
                continue;
            }
            let content = String::from_utf8_lossy(content);
            assert!(
                !content.contains("victim-secret"),
                "{mode}: the spy read a secret of the other build in {name}:\n{content}"
            );
        }
        assert_eq!(text(&files, ".spy/poisoned").trim(), "no", "{mode}");
        assert!(
            !victim_cache.join("poison").exists(),
            "{mode}: cache poisoned"
        );
        // The victim's own build still works, and its secrets are its own.
        nix::sys::signal::kill(victim.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
        let done = victim.output(Duration::from_secs(10));
        assert_eq!(done.code(), Some(17), "{}", done.stderr);
        assert!(
            !done.stderr.contains("victim-secret-var"),
            "{}",
            done.stderr
        );
        assert_eq!(
            std::fs::read_to_string(victim_cache.join("victim-secret-cache")).unwrap(),
            "victim-secret-in-cache\n"
        );
    }
}

#[test]
fn the_hosts_tmp_gets_nothing_and_each_build_has_a_private_empty_one() {
    if !require_root() {
        return;
    }
    for mode in MODES {
        let tag = unique_tag();
        let out = Build::new(web_app().tar())
            .buildpack("tmp-litterer")
            .env("LITTER_TAG", &tag)
            .args(["--pass-env", "LITTER_TAG", "--sandbox", mode])
            .run();
        assert_ok(&out);
        let files = slug_files(&out.stdout);
        assert_eq!(
            text(&files, ".tmp/tmpdir-at-start"),
            "",
            "{mode}: TMPDIR was not empty"
        );
        if *mode != "none" {
            // With a mount namespace /tmp itself is the build's own.
            assert_eq!(
                text(&files, ".tmp/tmp-at-start"),
                "",
                "{mode}: /tmp was not empty"
            );
            assert_eq!(text(&files, ".tmp/tmpdir"), "/tmp\n");
        }
        let mktemp = text(&files, ".tmp/mktemp");
        let tmpdir = text(&files, ".tmp/tmpdir");
        assert!(
            mktemp.starts_with(tmpdir.trim()),
            "{mode}: {mktemp} not in {tmpdir}"
        );
        for dir in ["/tmp", "/var/tmp", "/dev/shm"] {
            let left: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.contains(&tag)
                        || (*mode == "none"
                            && n.starts_with(mktemp.trim().rsplit('/').next().unwrap_or("-")))
                })
                .collect();
            assert!(left.is_empty(), "{mode}: left in {dir}: {left:?}");
        }
    }
}

/// Heroku's Python buildpack starts with `mkdir -p /app/.heroku` and links
/// the build dir into it: that must work on a bare host, without touching
/// the host's own /app.
#[test]
fn app_dir_is_private_and_writable() {
    if !require_root() {
        return;
    }
    let host_app = Path::new("/app");
    let before = host_app.exists().then(|| e2e::hostile::snapshot(host_app));
    let out = Build::new(web_app().tar()).buildpack("app-dir-user").run();
    assert_ok(&out);
    let files = slug_files(&out.stdout);
    let listing = text(&files, "app-dir-listing");
    assert!(
        listing.contains("python -> /workspace/build/.heroku/python"),
        "{listing}"
    );
    assert_eq!(text(&files, ".heroku/python/bin/marker"), "built in /app\n");
    let after = host_app.exists().then(|| e2e::hostile::snapshot(host_app));
    assert_eq!(before, after, "the host's /app changed");
}

/// A buildpack writes its `export` into its own directory; the operator's
/// copy is never changed, and no build sees an export of an earlier one.
#[test]
fn buildpacks_write_their_export_into_a_private_copy() {
    let dir = buildpack("self-exporter");
    let before = e2e::hostile::snapshot(&dir);
    for _ in 0..2 {
        let out = Build::new(web_app().tar())
            .buildpack("self-exporter")
            .buildpack("needs-self-export")
            .run();
        assert_ok(&out);
        assert_eq!(
            text(&slug_files(&out.stdout), "self-exported.txt"),
            "from 01-self-exporter\n"
        );
    }
    assert_eq!(
        e2e::hostile::snapshot(&dir),
        before,
        "the operator's buildpack changed"
    );
}

/// The system is there to use, read-only; what is not the build's is not
/// there at all.
#[test]
fn the_sandbox_shows_the_system_read_only_and_hides_the_rest() {
    if !require_root() {
        return;
    }
    let dir = shared_tempdir();
    let bp = dir.path().join("prober");
    std::fs::create_dir_all(bp.join("bin")).unwrap();
    let compile = bp.join("bin/compile");
    std::fs::write(
        &compile,
        "#!/bin/bash\nout=$1/probe\ntouch $out\n\
         touch /usr/pwned 2>/dev/null && echo usr-writable >> $out\n\
         touch /etc/pwned 2>/dev/null && echo etc-writable >> $out\n\
         touch /pwned 2>/dev/null && echo root-writable >> $out\n\
         test -e /root && echo root-home-visible >> $out\n\
         test -e /home && echo home-visible >> $out\n\
         cat /etc/shadow >/dev/null 2>&1 && echo shadow-readable >> $out\n\
         test \"$(ls /proc | grep -c '^[0-9]*$')\" -lt 10 || echo host-processes-visible >> $out\n\
         git --version >/dev/null 2>&1 || echo no-git >> $out\n\
         id -un >/dev/null 2>&1 || echo no-user-name >> $out\n\
         ping -c1 -W1 127.0.0.1 >/dev/null 2>&1 && echo can-ping >> $out\n\
         exit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &compile,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = Build::new(web_app().tar())
        .args([std::ffi::OsStr::new("--buildpack"), bp.as_os_str()])
        .run();
    assert_ok(&out);
    let found = text(&slug_files(&out.stdout), "probe");
    assert_eq!(found, "", "the sandbox let through: {found}");
}

/// The workspace (with the config vars) is gone after every kind of end.
#[test]
fn the_workspace_is_removed_on_every_exit() {
    let cases: &[(&str, &[&str], Option<i32>)] = &[
        ("recorder", &[], Some(0)),
        ("failing-compile", &[], Some(13)),
        ("sleeper", &["--timeout", "2"], Some(16)),
    ];
    for (bp, extra, code) in cases {
        let work = tempfile::tempdir().unwrap();
        let out = Build::new(web_app().tar())
            .buildpack(bp)
            .args(["-e", "SECRET=workspace-secret"])
            .args([std::ffi::OsStr::new("--work-dir"), work.path().as_os_str()])
            .args(*extra)
            .run();
        assert_eq!(out.status.code(), *code, "{bp}: {}", stderr(&out));
        let left: Vec<_> = std::fs::read_dir(work.path()).unwrap().collect();
        assert!(left.is_empty(), "{bp}: left behind: {left:?}");
    }
    // A second SIGTERM makes slugbuilder exit at once: still clean.
    let work = tempfile::tempdir().unwrap();
    let tag = unique_tag();
    let app = web_app();
    let child = Build::new(Vec::new())
        .buildpack("sleeper")
        .env("SLEEPER_TAG", &tag)
        .args(["--pass-env", "SLEEPER_TAG"])
        .args([std::ffi::OsStr::new("--work-dir"), work.path().as_os_str()])
        .args([std::ffi::OsStr::new("--source"), app.path().as_os_str()])
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let child = slugs::Guarded::new(child);
    assert!(slugs::wait_until(
        Duration::from_secs(30),
        || processes_with_arg(&tag).len() >= 3
    ));
    for _ in 0..2 {
        nix::sys::signal::kill(child.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    }
    let out = child.output(Duration::from_secs(10));
    assert_eq!(out.code(), Some(17), "{}", out.stderr);
    let left: Vec<_> = std::fs::read_dir(work.path()).unwrap().collect();
    assert!(left.is_empty(), "double SIGTERM left behind: {left:?}");
    assert!(wait_processes_gone(&tag, Duration::from_secs(5)).is_empty());
}

/// Whether the kernel lets uid 65534 make the namespaces an unprivileged
/// build asks for (user, pid, mount with its own /proc, ipc, uts), asked
/// of util-linux's `unshare` rather than of slugbuilder. `Err` when that
/// cannot be told.
fn kernel_allows_unprivileged_namespaces() -> Result<bool, String> {
    let out = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--pid", "--mount", "--ipc"])
        .args(["--uts", "--fork", "--mount-proc", "true"])
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run unshare(1) from util-linux: {e}"))?;
    if !out.status.success() {
        eprintln!(
            "unshare as uid 65534: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.status.success())
}

/// As another user than root (the builder image runs as `slug`), a build
/// still works, in the user-namespace mode where the kernel allows it (as
/// `unshare` tells independently), else in the fallback, and says which.
#[test]
fn an_unprivileged_build_works_and_says_how_it_is_confined() {
    if !require_root() {
        return;
    }
    let out_dir = shared_tempdir();
    let slug = out_dir.path().join("slug.tgz");
    std::fs::set_permissions(
        out_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let src = shared_tempdir();
    for (name, content) in [("Procfile", "web: ./run\n"), ("run", "#!/bin/sh\n")] {
        std::fs::write(src.path().join(name), content).unwrap();
    }
    let mut cmd = Build::new(Vec::new())
        .buildpack("daemonizer")
        .env("DAEMON_TAG", "6543.21")
        .args(["--pass-env", "DAEMON_TAG"])
        // Unprivileged, slirp4netns needs /dev/net/tun usable by the user,
        // which not every host gives (isolation.rs tests that case).
        .args(["--network", "none"])
        .args([std::ffi::OsStr::new("--source"), src.path().as_os_str()])
        .args([std::ffi::OsStr::new("-o"), slug.as_os_str()])
        .args([
            std::ffi::OsStr::new("--work-dir"),
            out_dir.path().as_os_str(),
        ])
        .command();
    cmd.uid(65534).gid(65534);
    let out = slugs::run_with_input(&mut cmd, Vec::new(), Duration::from_secs(60));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let line = sandbox_line(&log);
    let allowed = kernel_allows_unprivileged_namespaces()
        .unwrap_or_else(|e| panic!("cannot tell which mode the build should get: {e}"));
    if allowed {
        assert!(
            line.contains("Build sandbox: user namespace"),
            "the kernel lets uid 65534 make user, pid and mount namespaces (unshare could), but the build did not get them: {line}\n{log}"
        );
    } else {
        eprintln!("this kernel allows no unprivileged namespaces: the fallback is checked");
        assert!(line.contains("none (subreaper only)"), "{line}");
    }
    assert!(slug.exists());
    assert!(wait_processes_gone("6543.21", Duration::from_secs(5)).is_empty());
}

/// A sandbox setting that cannot work (here: a read-only path the operator
/// asked for does not exist) is the operator's mistake: under `auto` as
/// under `namespaces` the build fails with exit code 18 and says why; it
/// never runs without the sandbox (issue 21).
#[test]
fn a_sandbox_that_cannot_be_set_up_is_never_a_silent_downgrade() {
    if !require_root() {
        return;
    }
    let broken = ["--sandbox-ro", "/nonexistent/slugbuilder-test-path"];
    for policy in ["auto", "namespaces"] {
        let out = Build::new(web_app().tar())
            .buildpack("recorder")
            .args(broken)
            .args(["--sandbox", policy])
            .run();
        assert_fails_with(&out, 18);
        let log = stderr(&out);
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(log.contains("the build sandbox cannot be set up"), "{log}");
        assert!(log.contains("nonexistent/slugbuilder-test-path"), "{log}");
        assert!(!log.contains("Recording"), "{log}");
    }

    let out = Build::new(web_app().tar())
        .buildpack("recorder")
        .args(["--sandbox", "bogus"])
        .run();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = Build::new(web_app().tar())
        .buildpack("recorder")
        .args(["--network", "bogus"])
        .run();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn an_apps_buildpacks_file_may_not_name_local_repositories() {
    let repo = shared_tempdir();
    let app = App::new(&[
        ("Procfile", "web: ./run\n"),
        (
            ".buildpacks",
            &format!("file://{}/bp.git#main\n", repo.path().display()),
        ),
    ]);
    let out = Build::new(app.tar()).run();
    assert_fails_with(&out, 12);
    let log = stderr(&out);
    let last = log.lines().last().unwrap_or("");
    assert!(last.starts_with("slugbuilder: buildpack"), "{log}");
    assert!(
        last.contains("file:// URLs are not allowed for apps"),
        "{log}"
    );
    assert_eq!(log.matches("slugbuilder:").count(), 1, "{log}");
    // A ref is never an option to git.
    let out = Build::new(web_app().tar())
        .args([
            "--buildpack",
            "https://example.invalid/bp.git#--upload-pack=touch /tmp/x",
        ])
        .run();
    assert_fails_with(&out, 12);
    assert!(
        stderr(&out).contains("must not start with '-'"),
        "{}",
        stderr(&out)
    );
}
