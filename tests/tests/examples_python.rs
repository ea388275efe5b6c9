//! End-to-end tests of the bundled python buildpack: example apps under
//! `examples/` built by the real slugbuilder and served by the real
//! slugrunner. Needs PyPI and the stack's python3.

use std::path::Path;
use std::process::Command;

use e2e::apps::*;
use e2e::{bin, repo_root};
use sha2::{Digest, Sha256};

/// slugbuilder as [`Case::slugbuilder`] runs it, but with the cache at
/// `cache`: a second path for the same cache, to show that where the cache
/// lives does not reach the slug.
fn slugbuilder_with_cache(case: &Case, cache: &Path) -> Command {
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
        .arg(case.app_dir());
    cmd
}

fn sha256_of(path: &Path) -> String {
    format!(
        "{:x}",
        Sha256::digest(std::fs::read(path).expect("read slug"))
    )
}

/// Builds `source` twice and checks that both slugs are the same bytes: first
/// with an empty cache at another path (cold), then, with that cache moved to
/// the case's own cache dir, warm. Each build also gets its own random build
/// dir. Returns both logs; the case's slug is the second build's.
fn build_cold_then_warm(case: &Case, source: impl Fn() -> Vec<u8>) -> (String, String) {
    let cold_cache = case.path("cache-cold");
    let cold_slug = case.path("cold.tgz");
    let mut cmd = slugbuilder_with_cache(case, &cold_cache);
    cmd.arg("-o").arg(&cold_slug);
    let out = run_with_stdin(&mut cmd, source(), BUILD_TIMEOUT);
    assert_eq!(
        out.code(),
        Some(0),
        "cold build failed\nstderr: {}",
        out.stderr
    );
    std::fs::rename(&cold_cache, case.cache_dir()).expect("move the cache");
    let warm = case.build(source());
    assert_eq!(
        sha256_of(&cold_slug),
        sha256_of(&case.slug()),
        "the same app gave different slugs with a cold and a warm cache\ncold build:\n{}\nwarm build:\n{warm}",
        out.stderr
    );
    (out.stderr, warm)
}

#[test]
fn django_example_migrates_collects_static_serves_and_rebuilds_identically() {
    let case = Case::new();
    let (log, warm) = build_cold_then_warm(&case, || example_tar("django"));
    assert!(log.contains("-----> Python app detected"), "{log}");
    assert!(log.contains("-----> Running Django collectstatic"), "{log}");
    assert!(log.contains("1 static file copied"), "{log}");
    // The web process is the buildpack's default; the Procfile has `release`.
    assert!(log.contains("Default types for buildpack -> web"), "{log}");
    assert!(warm.contains("wheel cache: 0 new"), "{warm}");

    let release = case.run("release");
    assert_eq!(
        release.code(),
        Some(0),
        "release failed\nstdout: {}\nstderr: {}",
        release.stdout,
        release.stderr
    );
    assert!(
        release.stdout.contains("Applying notes.0001_initial... OK"),
        "stdout: {}\nstderr: {}",
        release.stdout,
        release.stderr
    );

    let mut web = case.start_web();
    assert_eq!(web.get_ok("/"), "Hello from Django on slugrunner!\n");
    assert_eq!(web.get_ok("/static/hello.txt"), "Hello, static world!\n");
    // Writes a row: needs the table the release process created.
    assert_eq!(web.get_ok("/notes/"), "notes: 1\n");
    web.stop();
}

#[test]
fn flask_example_serves_and_a_warm_rebuild_downloads_nothing_and_is_identical() {
    let case = Case::new();
    let (first, second) = build_cold_then_warm(&case, || example_tar("flask"));
    assert!(first.contains("-----> Python app detected"), "{first}");
    assert!(
        first.contains("No cached wheels yet (first build)"),
        "{first}"
    );
    // Current build tools from PyPI, not the stack's ensurepip ones.
    assert!(
        first.contains("Installing pip 26.3, setuptools 84.2.1, wheel 0.48.0"),
        "{first}"
    );

    // Same app, same cache (moved): nothing is downloaded again.
    assert!(
        second.contains("Reusing the cached virtualenv base"),
        "{second}"
    );
    assert!(second.contains("Using the cached wheels"), "{second}");
    assert!(
        second.contains("File was already downloaded") && !second.contains("Downloading "),
        "{second}"
    );
    assert!(second.contains("wheel cache: 0 new"), "{second}");

    let mut web = case.start_web();
    assert_eq!(web.get_ok("/"), "Hello from Flask on slugrunner!\n");
    web.stop();
}

#[test]
fn a_source_package_that_cannot_build_fails_with_pips_error() {
    let case = Case::new();
    let setup = "from setuptools import setup\n\
        raise SystemExit('error: this package needs libfrobnicate, which is not installed')\n\
        setup(name='needs-native-lib', version='1.0')\n";
    let source = tar_of(
        &repo_root().join("examples/flask"),
        &[
            (
                "requirements.txt",
                "Flask==3.1.3\n./vendor/needs-native-lib\n",
            ),
            ("vendor/needs-native-lib/setup.py", setup),
        ],
    );
    let mut cmd = case.slugbuilder();
    let out = run_with_stdin(&mut cmd, source, BUILD_TIMEOUT);
    assert_ne!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(out.stdout.is_empty(), "a slug was written to stdout");
    // pip's own report, with the package's message, then ours.
    assert!(
        out.stderr
            .contains("error: this package needs libfrobnicate, which is not installed"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("subprocess-exited-with-error"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("-----> Error: pip could not download or build the dependencies"),
        "{}",
        out.stderr
    );
}

#[test]
fn collectstatic_that_cannot_load_the_settings_fails_unless_disabled() {
    let case = Case::new();
    let dir = repo_root().join("examples/django");
    let settings = std::fs::read_to_string(dir.join("mysite/settings.py")).expect("settings");
    let settings = format!(
        "{settings}\n# Needs the database URL even to load.\n\
         DATABASES[\"default\"][\"NAME\"] = os.environ[\"DATABASE_URL\"]\n"
    );
    let source = || tar_of(&dir, &[("mysite/settings.py", settings.as_str())]);

    let mut cmd = case.slugbuilder();
    let out = run_with_stdin(&mut cmd, source(), BUILD_TIMEOUT);
    assert_ne!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(out.stdout.is_empty(), "a slug was written to stdout");
    assert!(
        out.stderr.contains("KeyError: 'DATABASE_URL'"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(
            "-----> Error: 'manage.py help collectstatic' failed, so static files cannot be collected"
        ),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("has no collectstatic command"),
        "{}",
        out.stderr
    );

    // As on Heroku, DISABLE_COLLECTSTATIC skips the step.
    let mut cmd = case.slugbuilder();
    cmd.args(["-e", "DISABLE_COLLECTSTATIC=1", "-o"])
        .arg(case.slug());
    let out = run_with_stdin(&mut cmd, source(), BUILD_TIMEOUT);
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(
        out.stderr
            .contains("-----> Skipping Django collectstatic (DISABLE_COLLECTSTATIC is set)"),
        "{}",
        out.stderr
    );
    assert!(case.slug().is_file());
}

#[test]
fn unavailable_python_version_fails_with_a_clear_message_and_no_slug() {
    let case = Case::new();
    let source = tar_of(
        &repo_root().join("examples/flask"),
        &[(".python-version", "2.7\n")],
    );
    let mut cmd = case.slugbuilder();
    let out = run_with_stdin(&mut cmd, source, BUILD_TIMEOUT);
    assert_ne!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(out.stdout.is_empty(), "a slug was written to stdout");
    assert!(
        out.stderr
            .contains("Python 2.7 (requested in .python-version) is not available on this stack"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("Available on this stack: 3."),
        "{}",
        out.stderr
    );
}
