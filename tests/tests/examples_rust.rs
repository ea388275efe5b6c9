//! End-to-end tests of the bundled rust buildpack: example apps under
//! `examples/` built by the real slugbuilder and served by the real
//! slugrunner. Needs crates.io and the stack's cargo.

use std::os::unix::fs::PermissionsExt;

use e2e::apps::*;

/// Whether the `cargo` on PATH is out of reach of an unprivileged build
/// user (rustup's default install under a mode-700 `/root`).
fn cargo_is_private() -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let Some(cargo) = std::env::split_paths(&path)
        .map(|dir| dir.join("cargo"))
        .find(|p| p.is_file())
    else {
        return false;
    };
    let cargo = cargo.canonicalize().unwrap_or(cargo);
    cargo.ancestors().any(|p| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o001 == 0)
            .unwrap_or(true)
    })
}

#[test]
fn rust_web_example_serves_from_a_slug_without_target_dir() {
    let case = Case::new();
    let mut builder = case.slugbuilder();
    if cargo_is_private() && e2e::slugs::is_root() {
        // Buildpacks run as an unprivileged user by default; this host's
        // toolchain is only usable by root.
        builder.args(["--build-user", "root"]);
    }
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
