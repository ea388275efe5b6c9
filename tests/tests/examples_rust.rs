//! End-to-end tests of the bundled rust buildpack: example apps under
//! `examples/` built by the real slugbuilder and served by the real
//! slugrunner. Needs crates.io and a system-wide cargo on the stack (e.g.
//! Debian's `cargo-web`): as root, buildpacks run unprivileged and must not
//! use a toolchain in `/root`.

use e2e::apps::*;

#[test]
fn rust_web_example_serves_from_a_slug_without_target_dir() {
    let case = Case::new();
    let mut builder = case.slugbuilder();
    builder.arg("-o").arg(case.slug());
    let out = run_with_stdin(&mut builder, example_tar("rust-web"), BUILD_TIMEOUT);
    assert_eq!(
        out.code(),
        Some(0),
        "slugbuilder failed\nstdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    let log = out.stderr;
    assert!(log.contains("-----> Rust app detected"), "{log}");
    assert!(log.contains("cargo build --release --locked"), "{log}");
    // The stack's system-wide toolchain, never one in root's home, although
    // the tests run as root with rustup's /root/.cargo/bin first on PATH.
    let using = log
        .lines()
        .find(|l| l.starts_with("-----> Using cargo"))
        .unwrap_or_else(|| panic!("no toolchain line\n{log}"));
    assert!(!using.contains("/root/"), "{using}");

    let entries = slug_entries(&case.slug());
    assert!(entries.iter().any(|p| p == "bin/rust-web"), "{entries:?}");
    assert!(
        !entries
            .iter()
            .any(|p| p == "target" || p.starts_with("target/")),
        "{entries:?}"
    );

    let mut web = case.start_web();
    assert_eq!(web.get_ok("/"), "Hello from Rust on slugrunner!\n");
    web.stop();
}
