//! End-to-end tests of slugbuilder: real binary, fixture buildpacks (small
//! shell scripts under tests/fixtures/buildpacks), apps built in code, git
//! repositories made in the test for buildpack URLs, and a loopback HTTP
//! server for tarball URLs. No network.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e::builds::*;
use e2e::{bin, repo_root};
use sha2::{Digest, Sha256};

fn web_app() -> App {
    App::new(&[("app.py", "print('hi')\n"), ("lib/util.py", "x = 1\n")])
}

#[test]
fn builds_a_slug_from_a_tar_on_stdin() {
    let out = Build::new(web_app().tar()).buildpack("recorder").run();
    assert_ok(&out);
    let files = slug_files(&out.stdout);
    assert_eq!(text(&files, "app.py"), "print('hi')\n");
    // Procfile written from default_process_types, web first.
    assert_eq!(
        text(&files, "Procfile"),
        "web: echo \"web on $PORT\"\nworker: sleep 1\n"
    );
    let release = text(&files, ".release");
    assert!(release.contains("FROM_RELEASE"), "{release}");
    let log = stderr(&out);
    assert!(log.contains("-----> Recorder app detected"), "{log}");
    assert!(
        log.contains("-----> Recording the build environment"),
        "{log}"
    );
    assert!(log.contains("\n       plain line from compile\n"), "{log}");
    assert!(log.contains("\n       stderr line from compile\n"), "{log}");
    assert!(
        log.contains("Default types for buildpack -> web, worker"),
        "{log}"
    );
    assert!(log.contains("Compiled slug size is"), "{log}");
    let sha = format!("{:x}", Sha256::digest(&out.stdout));
    assert!(log.contains(&format!("sha256: {sha}")), "{log}");
}

#[test]
fn gzip_input_and_source_dir_and_output_file() {
    let app = web_app();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&app.tar()).unwrap();
    let out = Build::new(gz.finish().unwrap()).buildpack("recorder").run();
    assert_ok(&out);
    assert!(slug_files(&out.stdout).contains_key("app.py"));

    let tmp = tempfile::tempdir().unwrap();
    let slug_path = tmp.path().join("out/slug.tgz");
    std::fs::create_dir_all(slug_path.parent().unwrap()).unwrap();
    let out = Build::new(Vec::new())
        .buildpack("recorder")
        .args([
            std::ffi::OsStr::new("--source"),
            app.path().as_os_str(),
            "-o".as_ref(),
            slug_path.as_os_str(),
        ])
        .run();
    assert_ok(&out);
    assert!(out.stdout.is_empty(), "with -o nothing goes to stdout");
    let slug = std::fs::read(&slug_path).unwrap();
    assert!(slug_files(&slug).contains_key("lib/util.py"));
    // No staging files are left next to the output.
    let names: Vec<_> = std::fs::read_dir(slug_path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [std::ffi::OsString::from("slug.tgz")]);
}

/// The `KEY=value` lines of an `env` dump.
fn env_map(dump: &str) -> BTreeMap<String, String> {
    dump.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// HOME, TMPDIR and the working directory of a step: fixed places inside
/// the sandbox, else the build's own private directories.
fn assert_build_places(env: &BTreeMap<String, String>, cwd: &str, sandboxed: bool) {
    if sandboxed {
        // Fixed places inside the sandbox, the same for every build.
        assert_eq!(env["HOME"], "/workspace/home");
        assert_eq!(env["TMPDIR"], "/tmp");
        assert_eq!(cwd, "/workspace/build");
    } else {
        // The build's own private directories, never the caller's.
        assert!(
            env["HOME"].contains("/slugbuilder-") && env["HOME"].ends_with("/home"),
            "{env:?}"
        );
        assert!(
            env["TMPDIR"].contains("/slugbuilder-") && env["TMPDIR"].ends_with("/tmp"),
            "{env:?}"
        );
        assert!(
            cwd.contains("/slugbuilder-") && cwd.ends_with("/build"),
            "{cwd}"
        );
    }
}

/// Buildpacks start with no signal blocked or ignored by slugbuilder
/// (`signals` holds the `SigBlk:` and `SigIgn:` lines of their status).
fn assert_no_signal_blocked_or_ignored(signals: &str) {
    let mask = |name: &str| {
        signals
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap()
    };
    // The standard signals (1-31); the C library reserves 32 and 33.
    assert_eq!(mask("SigBlk:") & 0x7fff_ffff, 0, "{signals}");
    assert_eq!(mask("SigIgn:") & 0x7fff_ffff, 0, "{signals}");
}

#[test]
fn compile_sees_only_the_documented_environment() {
    let out = Build::new(web_app().tar())
        .buildpack("recorder")
        .env("STACK", "heroku-22")
        .env("SOURCE_VERSION", "0123abcd")
        .env("REQUEST_ID", "req-42")
        .args(["--app-dir", "/srv/app"])
        .run();
    assert_ok(&out);
    let files = slug_files(&out.stdout);
    let env = env_map(&text(&files, ".recorded/env"));
    // Exactly these, plus what bash itself sets for the programs it runs.
    let keys: Vec<&str> = env
        .keys()
        .map(String::as_str)
        .filter(|k| !["PWD", "SHLVL", "_"].contains(k))
        .collect();
    assert_eq!(
        keys,
        [
            "APP_DIR",
            "HOME",
            "PATH",
            "REQUEST_ID",
            "SOURCE_VERSION",
            "STACK",
            "TMPDIR"
        ],
        "{env:?}"
    );
    assert_eq!(env["STACK"], "heroku-22");
    assert_eq!(env["SOURCE_VERSION"], "0123abcd");
    assert_eq!(env["REQUEST_ID"], "req-42");
    assert_eq!(env["APP_DIR"], "/srv/app");
    assert_eq!(env["PATH"], std::env::var("PATH").unwrap());
    let sandboxed = stderr(&out).contains("Build sandbox: namespaces")
        || stderr(&out).contains("Build sandbox: user namespace");
    let cwd = text(&files, ".recorded/cwd").trim().to_string();
    assert_build_places(&env, &cwd, sandboxed);
    assert_no_signal_blocked_or_ignored(&text(&files, ".recorded/signals"));
    // As root, buildpack code runs unprivileged, as a uid of its own.
    if e2e::slugs::require_root("running buildpacks unprivileged") {
        let id = text(&files, ".recorded/id");
        assert!(!id.starts_with("uid=0("), "{id}");
        let out = Build::new(web_app().tar())
            .buildpack("recorder")
            .args(["--build-user", "root"])
            .run();
        assert_ok(&out);
        assert!(text(&slug_files(&out.stdout), ".recorded/id").starts_with("uid=0("));
        assert!(
            stderr(&out).contains("Buildpacks run as root"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn env_dir_holds_config_vars_that_compile_does_not_get_as_env() {
    let envdir = tempfile::tempdir().unwrap();
    std::fs::write(envdir.path().join("DATABASE_URL"), "postgres://x").unwrap();
    std::fs::write(envdir.path().join("not valid"), "skip me").unwrap();
    let out = Build::new(web_app().tar())
        .buildpack("recorder")
        .args([std::ffi::OsStr::new("--env-dir"), envdir.path().as_os_str()])
        .args(["--env", "SECRET_KEY=s3cr3t value"])
        .run();
    assert_ok(&out);
    let files = slug_files(&out.stdout);
    let env_dir = text(&files, ".recorded/env-dir");
    assert!(env_dir.contains("DATABASE_URL=postgres://x"), "{env_dir}");
    assert!(env_dir.contains("SECRET_KEY=s3cr3t value"), "{env_dir}");
    assert!(!env_dir.contains("skip me"));
    let env = text(&files, ".recorded/env");
    assert!(
        !env.contains("s3cr3t"),
        "ENV_DIR values must not be exported:\n{env}"
    );
    assert!(
        !stderr(&out).contains("s3cr3t"),
        "ENV_DIR values must not be logged"
    );
    // The operator's env dir is untouched.
    assert_eq!(std::fs::read_dir(envdir.path()).unwrap().count(), 2);
}

#[test]
fn cache_dir_survives_between_builds() {
    let cache = tempfile::tempdir().unwrap();
    let count = |out: &Output| {
        text(&slug_files(&out.stdout), ".recorded/cache-count")
            .trim()
            .to_string()
    };
    let first = Build::new(web_app().tar())
        .buildpack("recorder")
        .env("CACHE_PATH", cache.path())
        .run();
    assert_ok(&first);
    let second = Build::new(web_app().tar())
        .buildpack("recorder")
        .args([
            std::ffi::OsStr::new("--cache-dir"),
            cache.path().as_os_str(),
        ])
        .run();
    assert_ok(&second);
    assert_eq!(
        (count(&first).as_str(), count(&second).as_str()),
        ("1", "2")
    );
    // Without a cache dir every build starts empty.
    let third = Build::new(web_app().tar()).buildpack("recorder").run();
    assert_eq!(count(&third), "1");
}

#[test]
fn slugignore_applies_before_compile_and_root_git_is_dropped() {
    let app = App::new(&[
        ("app.py", "x"),
        ("design.psd", "big"),
        ("docs/guide.md", "doc"),
        ("src/docs/keep.md", "keep"),
        (".git/config", "git"),
        (".slugignore", "# assets\n*.psd\n/docs\n"),
    ]);
    let out = Build::new(app.tar()).buildpack("recorder").run();
    assert_ok(&out);
    let files = slug_files(&out.stdout);
    let seen = text(&files, ".recorded/files");
    assert!(
        !seen.contains("design.psd") && !seen.contains("./docs/guide.md"),
        "compile saw ignored files:\n{seen}"
    );
    assert!(seen.contains("./src/docs/keep.md"), "{seen}");
    assert!(!seen.contains(".git"), "{seen}");
    assert!(!files.contains_key("design.psd") && !files.contains_key(".git/config"));
}

#[test]
fn multi_buildpack_with_export_via_buildpacks_file() {
    let app = App::new(&[(
        ".buildpacks",
        &format!(
            "# order matters\n{}\n\n{}\n",
            buildpack("exporter").display(),
            buildpack("needs-export").display()
        ),
    )]);
    // Local paths in an app's .buildpacks need the operator's consent.
    let refused = Build::new(app.tar()).run();
    assert_fails_with(&refused, 12);
    assert!(
        stderr(&refused)
            .contains("named in .buildpacks: local paths and file:// URLs are not allowed"),
        "{}",
        stderr(&refused)
    );
    let out = Build::new(app.tar())
        .args(["--allow-local-buildpacks"])
        .run();
    assert_ok(&out);
    let files = slug_files(&out.stdout);
    let seen = text(&files, "seen-export.txt");
    assert!(
        seen.starts_with("hello from export\n/opt/exported/bin:"),
        "{seen}"
    );
    assert_eq!(text(&files, "exporter.txt"), "exporter compiled\n");
    // The last buildpack's web wins; the earlier one's clock survives.
    assert_eq!(
        text(&files, "Procfile"),
        "web: needs-export-web\nclock: exporter-clock\n"
    );
    let log = stderr(&out);
    assert!(
        log.contains("-----> Exporter app detected")
            && log.contains("-----> NeedsExport app detected"),
        "{log}"
    );
}

#[test]
fn buildpacks_env_is_comma_separated_and_cli_wins_over_it() {
    let list = format!(
        "{},{}",
        buildpack("exporter").display(),
        buildpack("needs-export").display()
    );
    let out = Build::new(web_app().tar()).env("BUILDPACKS", &list).run();
    assert_ok(&out);
    assert!(slug_files(&out.stdout).contains_key("seen-export.txt"));

    let out = Build::new(web_app().tar())
        .env("BUILDPACKS", &list)
        .buildpack("recorder")
        .run();
    assert_ok(&out);
    let files = slug_files(&out.stdout);
    assert!(files.contains_key(".recorded/env") && !files.contains_key("exporter.txt"));
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn git_stdout(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A git repo holding the `marker` buildpack at tag v1, and a broken
/// compile on main afterwards, so that only the tag builds.
fn buildpack_repo() -> (tempfile::TempDir, String) {
    // Clones run as the build user: the repository must be readable.
    let tmp = shared_tempdir();
    let repo = tmp.path().join("bp.git");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    let status = Command::new("cp")
        .args([
            "-a",
            &format!("{}/.", buildpack("marker").display()),
            repo.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "v1"]);
    git(&repo, &["tag", "v1"]);
    let commit = git_stdout(&repo, &["rev-parse", "HEAD"]);
    std::fs::write(
        repo.join("bin/compile"),
        "#!/bin/sh\necho broken on main; exit 9\n",
    )
    .unwrap();
    git(&repo, &["commit", "-qam", "break main"]);
    (tmp, commit)
}

#[test]
fn buildpack_url_git_file_with_tag_branch_and_commit() {
    let (tmp, commit) = buildpack_repo();
    let url = format!("file://{}/bp.git", tmp.path().display());
    let app = App::new(&[("marker.txt", "m")]);
    for reference in ["v1", commit.as_str()] {
        let out = Build::new(app.tar())
            .env("BUILDPACK_URL", format!("{url}#{reference}"))
            .run();
        assert_ok(&out);
        assert_eq!(
            text(&slug_files(&out.stdout), "marker-compiled.txt"),
            "marker compiled\n"
        );
    }
    // Default branch is main, which is broken on purpose.
    let out = Build::new(app.tar()).env("BUILDPACK_URL", &url).run();
    assert_fails_with(&out, 13);
    assert!(stderr(&out).contains("broken on main"), "{}", stderr(&out));
    // An unknown ref is a fetch failure.
    let out = Build::new(app.tar())
        .env("BUILDPACK_URL", format!("{url}#nope"))
        .run();
    assert_fails_with(&out, 12);
    let out = Build::new(app.tar())
        .env("BUILDPACK_URL", "file:///nonexistent/bp.git")
        .run();
    assert_fails_with(&out, 12);
    assert!(
        stderr(&out)
            .lines()
            .last()
            .unwrap()
            .starts_with("slugbuilder: buildpack"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn buildpack_tarball_url_over_http() {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    {
        let mut b = tar::Builder::new(&mut gz);
        b.append_dir_all("marker-main", buildpack("marker"))
            .unwrap();
        b.finish().unwrap();
    }
    let body = gz.finish().unwrap();
    let (url, server) = e2e::slugs::serve_http(vec![e2e::slugs::http_response("200 OK", &body)]);
    let app = App::new(&[("marker.txt", "m")]);
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let out = Build::new(app.tar())
        .args(["--buildpack", &format!("{url}/marker.tgz")])
        // Buildpacks are fetched from the build's own network; this
        // server is on the host's loopback.
        .args(["--network", "host"])
        .args([std::ffi::OsStr::new("--report"), report.as_os_str()])
        .run();
    assert_ok(&out);
    assert!(slug_files(&out.stdout).contains_key("marker-compiled.txt"));
    assert_eq!(server.join().unwrap(), ["GET /marker.tgz HTTP/1.1"]);
    // The report names exactly what was downloaded.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(
        report["buildpacks"][0]["digest"],
        format!("sha256:{:x}", Sha256::digest(&body))
    );
}

#[test]
fn detection_over_installed_buildpacks_first_match_wins_and_others_are_named() {
    let dir = shared_tempdir();
    for (link, target) in [
        ("a-never", "never"),
        ("b-marker", "marker"),
        ("c-recorder", "recorder"),
    ] {
        std::os::unix::fs::symlink(buildpack(target), dir.path().join(link)).unwrap();
    }
    let app = App::new(&[("marker.txt", "m")]);
    let out = Build::new(app.tar())
        .args([
            std::ffi::OsStr::new("--buildpacks-dir"),
            dir.path().as_os_str(),
        ])
        .run();
    assert_ok(&out);
    let log = stderr(&out);
    assert!(log.contains("-----> Marker app detected"), "{log}");
    assert!(
        log.contains("these also detected this app: c-recorder"),
        "{log}"
    );
    let files = slug_files(&out.stdout);
    assert!(files.contains_key("marker-compiled.txt") && !files.contains_key("never.txt"));

    // A `.order` file puts a buildpack first.
    std::fs::write(dir.path().join(".order"), "c-recorder\n").unwrap();
    let out = Build::new(app.tar())
        .env("BUILDPACK_PATH", dir.path())
        .run();
    assert_ok(&out);
    assert!(stderr(&out).contains("-----> Recorder app detected"));
}

#[test]
fn no_buildpack_detected_fails_with_empty_stdout() {
    let dir = shared_tempdir();
    std::os::unix::fs::symlink(buildpack("never"), dir.path().join("never")).unwrap();
    let out = Build::new(web_app().tar())
        .args([
            std::ffi::OsStr::new("--buildpacks-dir"),
            dir.path().as_os_str(),
        ])
        .run();
    assert_fails_with(&out, 11);
    assert!(
        stderr(&out).contains("no buildpack applies to this app (tried: never)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_explicit_buildpack_that_does_not_detect_fails_the_build() {
    let out = Build::new(web_app().tar()).buildpack("never").run();
    assert_fails_with(&out, 11);
    assert!(
        stderr(&out).contains("does not apply to this app"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn compile_failure_writes_nothing() {
    let out = Build::new(web_app().tar())
        .buildpack("failing-compile")
        .run();
    assert_fails_with(&out, 13);
    let log = stderr(&out);
    assert!(
        log.contains(" !     Something is wrong with this app"),
        "{log}"
    );
    assert!(log.contains("bin/compile failed (exit status 3)"), "{log}");

    let tmp = tempfile::tempdir().unwrap();
    let slug = tmp.path().join("slug.tgz");
    let out = Build::new(web_app().tar())
        .buildpack("failing-compile")
        .args([std::ffi::OsStr::new("-o"), slug.as_os_str()])
        .run();
    assert_fails_with(&out, 13);
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "nothing may be left at the output"
    );
}

#[test]
fn invalid_release_yaml_fails_with_its_own_code() {
    let out = Build::new(web_app().tar()).buildpack("bad-release").run();
    assert_fails_with(&out, 14);
    assert!(
        stderr(&out).contains("must be a mapping"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_input_fails_with_one_clear_line() {
    for (input, needle) in [
        (Vec::new(), "empty"),
        (b"definitely not a tar archive".repeat(40), "not a tar"),
    ] {
        let out = Build::new(input).buildpack("recorder").run();
        assert_fails_with(&out, 10);
        let log = stderr(&out);
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(log.contains(needle), "{log}");
    }
}

#[test]
fn app_procfile_is_kept_and_validated() {
    let app = App::new(&[("Procfile", "web: ./run\nworker:./w\n")]);
    let out = Build::new(app.tar()).buildpack("recorder").run();
    assert_ok(&out);
    assert_eq!(
        text(&slug_files(&out.stdout), "Procfile"),
        "web: ./run\nworker:./w\n"
    );
    assert!(stderr(&out).contains("Procfile declares types     -> web, worker"));

    let app = App::new(&[("Procfile", "web: a\nweb: b\n")]);
    let out = Build::new(app.tar()).buildpack("recorder").run();
    assert_fails_with(&out, 10);
    assert!(
        stderr(&out).contains("already declared on line 1"),
        "{}",
        stderr(&out)
    );
}

/// The app as a tar whose every entry has `mtime` (a tree archive made at
/// that time).
fn tar_at(app: &App, mtime: u64) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    let mut paths = Vec::new();
    fn collect(dir: &Path, rel: &Path, out: &mut Vec<(PathBuf, PathBuf)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let r = rel.join(e.file_name());
            out.push((e.path(), r.clone()));
            if e.file_type().unwrap().is_dir() {
                collect(&e.path(), &r, out);
            }
        }
    }
    collect(app.path(), Path::new(""), &mut paths);
    for (path, rel) in paths {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        h.set_mtime(mtime);
        if meta.is_dir() {
            b.append_data(&mut h, &rel, std::io::empty()).unwrap();
        } else {
            b.append_data(&mut h, &rel, std::fs::File::open(&path).unwrap())
                .unwrap();
        }
    }
    b.into_inner().unwrap()
}

#[test]
fn builds_are_reproducible() {
    let app = web_app();
    let sha = |out: &Output| format!("{:x}", Sha256::digest(&out.stdout));
    // The same tree archived at two different times (as `git archive
    // HEAD:dir` stamps the current time), and as a directory.
    let early = Build::new(tar_at(&app, 1_000_000_000))
        .buildpack("exporter")
        .run();
    let late = Build::new(tar_at(&app, 1_700_000_000))
        .buildpack("exporter")
        .run();
    let dir = Build::new(Vec::new())
        .buildpack("exporter")
        .args([std::ffi::OsStr::new("--source"), app.path().as_os_str()])
        .run();
    for out in [&early, &late, &dir] {
        assert_ok(out);
    }
    assert_eq!(sha(&early), sha(&late), "archive times must not matter");
    assert_eq!(sha(&early), sha(&dir), "a directory gives the same slug");
    // The default epoch is 1980-01-01, whatever the source's mtimes.
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&early.stdout[..]));
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        assert_eq!(entry.header().mtime().unwrap(), 315_532_800);
        assert_eq!(
            (entry.header().uid().unwrap(), entry.header().gid().unwrap()),
            (0, 0)
        );
    }
    // SOURCE_DATE_EPOCH sets the clamp explicitly, and changes the bytes.
    let epoch = Build::new(tar_at(&app, 1_000_000_000))
        .buildpack("exporter")
        .env("SOURCE_DATE_EPOCH", "86400")
        .run();
    assert_ok(&epoch);
    assert_ne!(sha(&epoch), sha(&early));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&epoch.stdout[..]));
    for entry in archive.entries().unwrap() {
        assert_eq!(entry.unwrap().header().mtime().unwrap(), 86400);
    }
}

#[test]
fn source_version_comes_from_git_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path();
    std::fs::write(repo.join("app.py"), "x").unwrap();
    git(repo, &["init", "-q"]);
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-qm", "app"]);
    let commit = git_stdout(repo, &["rev-parse", "HEAD"]);
    let archive = Command::new("git")
        .current_dir(repo)
        .args(["archive", "HEAD"])
        .output()
        .unwrap()
        .stdout;
    let out = Build::new(archive).buildpack("recorder").run();
    assert_ok(&out);
    let env = text(&slug_files(&out.stdout), ".recorded/env");
    assert!(env.contains(&format!("SOURCE_VERSION={commit}")), "{env}");
}

/// The time limit kills the step's whole process group at once. With
/// namespaces the end of the step's PID namespace would kill the rest
/// anyway, and the sweep after each step catches what is left, so the
/// outcome alone cannot tell a group kill from a kill of the step's main
/// process; the sleeper's watcher can: it is in the group, and says so in
/// the log when it outlives the step's main process. It can only outlive
/// it without namespaces (`--sandbox none`), hence both modes.
#[test]
fn time_limit_kills_the_buildpack_group() {
    for mode in ["auto", "none"] {
        let tag = e2e::slugs::unique_tag();
        let build = Build::new(web_app().tar())
            .buildpack("sleeper")
            .env("SLEEPER_TAG", &tag)
            .args(["--pass-env", "SLEEPER_TAG", "--timeout", "3"])
            .args(["--sandbox", mode]);
        let start = Instant::now();
        let out = build.run();
        let log = stderr(&out);
        assert_fails_with(&out, 16);
        assert!(start.elapsed() < Duration::from_secs(20), "{mode}");
        assert!(log.contains("time limit"), "{mode}: {log}");
        assert!(
            log.contains("watcher started"),
            "{mode}: the sleeper's watcher never ran, so nothing checked how the group ended:\n{log}"
        );
        if mode == "none" {
            assert!(
                log.contains("Build sandbox: none (subreaper only)"),
                "{mode}: {log}"
            );
        }
        assert!(
            !log.contains("the step died before the rest of its group"),
            "{mode}: the time limit killed the step's main process, not its process group:\n{log}"
        );
        // All three sleeps, the one that left the group (setsid) too.
        let left = e2e::slugs::wait_processes_gone(&tag, Duration::from_secs(5));
        assert!(
            left.is_empty(),
            "{mode}: buildpack processes survived: {left:?}"
        );
    }
}

#[test]
fn sigterm_stops_the_build_and_its_buildpack() {
    for signal in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        let tag = e2e::slugs::unique_tag();
        let work = tempfile::tempdir().unwrap();
        let app = web_app();
        let child = e2e::slugs::Guarded::new(
            Command::new(bin("slugbuilder"))
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap())
                .env("SLEEPER_TAG", &tag)
                .args(["--pass-env", "SLEEPER_TAG", "--buildpack"])
                .arg(buildpack("sleeper"))
                .arg("--source")
                .arg(app.path())
                .arg("--work-dir")
                .arg(work.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        assert!(
            e2e::slugs::wait_until(Duration::from_secs(20), || e2e::slugs::processes_with_arg(
                &tag
            )
            .len()
                >= 3),
            "the sleeper did not start"
        );
        nix::sys::signal::kill(child.pid(), signal).unwrap();
        let start = Instant::now();
        let out = child.output(Duration::from_secs(20));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{signal}: took {:?}",
            start.elapsed()
        );
        assert_eq!(out.code(), Some(17), "{signal}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{signal}: a slug was written");
        let left = e2e::slugs::wait_processes_gone(&tag, Duration::from_secs(5));
        assert!(
            left.is_empty(),
            "{signal}: buildpack processes survived: {left:?}"
        );
        // Nothing of the build is left in its work dir.
        let entries: Vec<_> = std::fs::read_dir(work.path()).unwrap().collect();
        assert!(entries.is_empty(), "{signal}: left behind: {entries:?}");
    }
}

#[test]
fn short_names_map_to_bundled_buildpacks() {
    let app = App::new(&[("Procfile", "web: ./bin/web\n")]);
    let out = Build::new(app.tar())
        .args(["--buildpack", "heroku/procfile"])
        .run();
    assert_ok(&out);
    // The bundled procfile buildpack ran (it names itself "Procfile").
    assert!(
        stderr(&out).contains("-----> Procfile app detected"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        text(&slug_files(&out.stdout), "Procfile"),
        "web: ./bin/web\n"
    );
    let out = Build::new(app.tar())
        .args(["--buildpack", "heroku/cobol"])
        .run();
    assert_fails_with(&out, 12);
    assert!(
        stderr(&out).contains("unknown short name"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_readme_example_builds_with_no_configuration() {
    let example = repo_root().join("examples/hello-procfile");
    let out = Build::new(Vec::new())
        .args([std::ffi::OsStr::new("--source"), example.as_os_str()])
        .run();
    assert_ok(&out);
    assert!(
        stderr(&out).contains("-----> Procfile app detected"),
        "{}",
        stderr(&out)
    );
    let files = slug_files(&out.stdout);
    assert!(files.contains_key("bin/web") && files.contains_key("Procfile"));
}

#[test]
fn an_output_in_a_missing_directory_fails_before_the_build() {
    let build = Build::new(web_app().tar())
        .buildpack("sleeper")
        .args(["-o", "/nonexistent/dir/slug.tgz"]);
    let start = Instant::now();
    let out = build.run();
    assert_fails_with(&out, 15);
    let log = stderr(&out);
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.contains("/nonexistent/dir/slug.tgz"), "{log}");
    assert!(!log.contains("sleeping"), "the build ran: {log}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// Errors once (issue 26): the error line names the OS's message once, and
/// the build report's `error` is that same line.
#[test]
fn the_error_line_names_each_cause_once_and_the_report_repeats_it() {
    let tmp = shared_tempdir();
    let report = tmp.path().join("report.json");
    let out = Build::new(web_app().tar())
        .buildpack("sleeper")
        .args(["--source", "/nonexistent/src", "--report"])
        .arg(&report)
        .args(["-o"])
        .arg(tmp.path().join("slug.tgz"))
        .run();
    assert_fails_with(&out, 10);
    let log = stderr(&out);
    assert_eq!(
        log.trim_end(),
        "slugbuilder: cannot open source \"/nonexistent/src\": No such file or directory (os error 2)",
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(
        json["error"].as_str().map(|e| format!("slugbuilder: {e}")),
        Some(log.trim_end().to_string()),
        "{json}"
    );
}

/// `-o /dev/null` (only an image is wanted) and `-o FIFO` are written
/// into, never renamed over: /dev/null stays the device (as root the old
/// rename replaced it with the slug), a FIFO gets the slug, and a FIFO
/// that nobody reads fails at once instead of hanging the build.
#[test]
fn an_output_that_is_a_device_or_a_fifo_is_written_into_never_replaced() {
    use std::os::unix::fs::FileTypeExt;
    let out = Build::new(web_app().tar())
        .buildpack("recorder")
        .args(["-o", "/dev/null"])
        .run();
    assert_ok(&out);
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
    let leftovers: Vec<_> = std::fs::read_dir("/dev")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".slug-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("slug.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let start = Instant::now();
    let out = Build::new(web_app().tar())
        .buildpack("sleeper")
        .args([std::ffi::OsStr::new("-o"), fifo.as_os_str()])
        .run();
    assert_fails_with(&out, 15);
    assert!(
        stderr(&out).contains("a FIFO that nobody reads"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("sleeping"), "the build ran");
    assert!(start.elapsed() < Duration::from_secs(10));

    // A reader that is there before the build starts: the slug of this
    // small app fits in the pipe's buffer, so it is read after the build.
    let reader = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap()
    };
    let out = Build::new(web_app().tar())
        .buildpack("recorder")
        .args([std::ffi::OsStr::new("-o"), fifo.as_os_str()])
        .run();
    assert_ok(&out);
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    let mut slug = Vec::new();
    std::io::Read::read_to_end(&mut &reader, &mut slug).unwrap();
    assert!(slug_files(&slug).contains_key("Procfile"));
}

/// `slugbuilder ... 2>&1 | head -2`: the log's reader goes away; the build
/// goes on, and the exit code is the documented one, not a panic's 101.
#[test]
fn a_closed_stderr_never_panics() {
    for (bp, code) in [("recorder", 0), ("failing-compile", 13)] {
        let app = web_app();
        let dir = tempfile::tempdir().unwrap();
        let slug = dir.path().join("slug.tgz");
        let mut child = Build::new(Vec::new())
            .buildpack(bp)
            .args([std::ffi::OsStr::new("--source"), app.path().as_os_str()])
            .args([std::ffi::OsStr::new("-o"), slug.as_os_str()])
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stderr.take());
        let status = e2e::slugs::wait_timeout(&mut child, Duration::from_secs(60));
        assert_eq!(status.code(), Some(code), "{bp}: {status:?}");
        assert_eq!(slug.exists(), code == 0);
    }
}
