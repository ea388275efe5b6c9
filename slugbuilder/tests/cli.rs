//! The command line of the real binary (`CARGO_BIN_EXE_slugbuilder`):
//! help, and a usage error that leaves stdout, which carries only slug
//! bytes, empty. Being an integration test of this package, it also makes
//! `cargo test` build the executable that the end-to-end tests drive
//! (`e2e::bin`).

use std::process::{Command, Output, Stdio};

fn slugbuilder(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slugbuilder"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run slugbuilder")
}

#[test]
fn help_is_printed_and_succeeds() {
    let out = slugbuilder(&["--help"]);
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Usage: slugbuilder"), "{help}");
}

#[test]
fn an_unknown_flag_is_a_usage_error_with_nothing_on_stdout() {
    let out = slugbuilder(&["--no-such-flag"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-such-flag"), "{err}");
}
