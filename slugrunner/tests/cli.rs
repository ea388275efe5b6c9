//! The command line of the real binary: help, usage errors and the exit
//! codes that need no slug.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

struct Output {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Run slugrunner; none of these cases runs an app, so 20 s is plenty, and
/// a hang is killed and fails the test.
fn slugrunner(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_slugrunner"))
        .args(args)
        .env_remove("SLUG_URL")
        .env_remove("SLUGRUNNER_GRACE_PERIOD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run slugrunner");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("slugrunner {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Output is small (help text at most): it fits in the pipe buffers.
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

#[test]
fn help_documents_subcommands_and_exit_codes() {
    let out = slugrunner(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "start",
        "exec",
        "bash",
        "--slug",
        "SLUG_URL",
        "--grace-period",
    ] {
        assert!(help.contains(needle), "help lacks {needle:?}:\n{help}");
    }
    // The exit codes, from the one table (words only: clap wraps lines).
    use slug_shared::exit::{Binary, Exit};
    let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let meaning = Exit::UnknownProcessType
        .meaning(Binary::Slugrunner)
        .expect("slugrunner exits 21");
    let line = words(&format!("21 {meaning}"));
    assert!(words(&help).contains(&line), "help lacks {line:?}:\n{help}");
    assert!(slugrunner(&["--version"]).status.success());
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["start"],
        &["exec"],
        &["--grace-period", "soon", "bash"],
        &["--no-such-flag", "start", "web"],
    ] {
        let out = slugrunner(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn invalid_process_type_fails_before_any_slug_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    let out = slugrunner(&["--app-dir", app.to_str().unwrap(), "start", "a;b"]);
    assert_eq!(out.status.code(), Some(21));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("slugrunner: invalid process type"),
        "{stderr}"
    );
    assert!(!app.exists());
}

#[test]
fn empty_app_dir_without_slug_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = slugrunner(&["--app-dir", dir.path().to_str().unwrap(), "exec", "true"]);
    assert_eq!(out.status.code(), Some(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is empty"), "{stderr}");
}

#[test]
fn missing_slug_file_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.tgz");
    let out = slugrunner(&[
        "--app-dir",
        dir.path().join("app").to_str().unwrap(),
        "--slug",
        missing.to_str().unwrap(),
        "start",
        "web",
    ]);
    assert_eq!(out.status.code(), Some(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open slug"));
}
