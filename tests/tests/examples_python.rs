//! End-to-end tests of the bundled python buildpack: example apps under
//! `examples/` built by the real slugbuilder and served by the real
//! slugrunner. Needs PyPI and the stack's python3.

use e2e::apps::*;
use e2e::repo_root;
#[test]
fn django_example_migrates_collects_static_and_serves() {
    let case = Case::new();
    let log = case.build(example_tar("django"));
    assert!(log.contains("-----> Python app detected"), "{log}");
    assert!(log.contains("-----> Running Django collectstatic"), "{log}");
    assert!(log.contains("1 static file copied"), "{log}");
    // The web process is the buildpack's default; the Procfile has `release`.
    assert!(log.contains("Default types for buildpack -> web"), "{log}");

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
fn flask_example_serves_and_second_build_uses_the_pip_cache() {
    let case = Case::new();
    let first = case.build(example_tar("flask"));
    assert!(first.contains("-----> Python app detected"), "{first}");
    assert!(
        first.contains("No cached wheels yet (first build)"),
        "{first}"
    );

    let mut web = case.start_web();
    assert_eq!(web.get_ok("/"), "Hello from Flask on slugrunner!\n");
    web.stop();

    // Same app, same cache: nothing is downloaded again.
    let second = case.build(example_tar("flask"));
    assert!(second.contains("Using the cached wheels"), "{second}");
    assert!(
        second.contains("File was already downloaded") && !second.contains("Downloading "),
        "{second}"
    );
    assert!(second.contains("wheel cache: 0 new"), "{second}");
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
