//! End-to-end tests of the bundled rust buildpack: example apps under
//! `examples/` built by the real slugbuilder and served by the real
//! slugrunner. Needs crates.io and a system-wide cargo on the stack (e.g.
//! Debian's `cargo-web`): as root, buildpacks run unprivileged and must not
//! use a toolchain in `/root`.

use std::io::Read;
use std::path::Path;

use e2e::apps::*;
use sha2::{Digest, Sha256};

/// `git archive` dates every file at the commit time: the tar of `dir` with
/// `replace` files (path, content) and every entry's mtime set to `mtime`.
fn tar_at(dir: &Path, replace: &[(&str, &str)], mtime: u64) -> Vec<u8> {
    let source = tar_of(dir, replace);
    let mut out = tar::Builder::new(Vec::new());
    let mut archive = tar::Archive::new(&source[..]);
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let path = entry.path().expect("entry path").into_owned();
        let mut header = entry.header().clone();
        header.set_mtime(mtime);
        out.append_data(&mut header, path, &mut entry)
            .expect("append entry");
    }
    out.into_inner().expect("finish tar")
}

fn example_dir(name: &str) -> std::path::PathBuf {
    e2e::repo_root().join("examples").join(name)
}

fn sha256_of(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read slug");
    format!("{:x}", Sha256::digest(bytes))
}

/// Apply `f` to the entry `path` of the slug `slug`, if it has one.
fn with_slug_entry<T>(
    slug: &Path,
    path: &str,
    f: impl FnOnce(&mut tar::Entry<'_, flate2::read::GzDecoder<std::fs::File>>) -> T,
) -> Option<T> {
    let file = std::fs::File::open(slug).expect("open slug");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in archive.entries().expect("slug entries") {
        let mut entry = entry.expect("slug entry");
        let name = entry.path().expect("entry path").into_owned();
        if name.to_string_lossy().trim_start_matches("./") == path {
            return Some(f(&mut entry));
        }
    }
    None
}

/// The content of `path` in the slug `slug`.
fn slug_file(slug: &Path, path: &str) -> Vec<u8> {
    with_slug_entry(slug, path, |entry| {
        let mut content = Vec::new();
        entry.read_to_end(&mut content).expect("read slug entry");
        content
    })
    .unwrap_or_else(|| panic!("{path} is not in the slug"))
}

/// The symlink target of `path` in the slug `slug`.
fn slug_link(slug: &Path, path: &str) -> Option<String> {
    with_slug_entry(slug, path, |entry| {
        entry
            .link_name()
            .expect("link name")
            .map(|l| l.to_string_lossy().into_owned())
    })
    .flatten()
}

/// What the slug holds under `target/`: nothing but the executables that
/// `cargo build --release` made, where cargo puts them.
fn assert_target_holds_only(entries: &[String], executables: &[&str]) {
    let mut target: Vec<&str> = entries
        .iter()
        .map(String::as_str)
        .filter(|p| *p == "target" || p.starts_with("target/"))
        .collect();
    target.sort_unstable();
    let mut expected = vec!["target", "target/release"];
    for exe in executables {
        expected.push(exe);
    }
    expected.sort_unstable();
    assert_eq!(target, expected, "{entries:?}");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn rust_web_example_serves_from_a_slug_with_only_its_executable() {
    let case = Case::new();
    let log = case.build(example_tar("rust-web"));
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
    assert_target_holds_only(&entries, &["target/release/rust-web"]);
    assert_eq!(
        slug_link(&case.slug(), "bin/rust-web").as_deref(),
        Some("../target/release/rust-web")
    );
    let first = sha256_of(&case.slug());

    // The buildpack's default process, `web: bin/rust-web`.
    let mut web = case.start_web();
    assert_eq!(web.get_ok("/"), "Hello from Rust on slugrunner!\n");
    web.stop();

    // A warm cache gives the same bytes.
    let log = case.build(example_tar("rust-web"));
    assert!(log.contains("Reusing cached build artifacts"), "{log}");
    assert_eq!(sha256_of(&case.slug()), first, "{log}");
}

#[test]
fn heroku_style_app_runs_unchanged_and_its_slug_is_reproducible() {
    let dir = example_dir("rust-heroku");
    let procfile = std::fs::read_to_string(dir.join("Procfile")).expect("Procfile");
    assert_eq!(procfile, "web: ./target/release/rust-heroku\n");
    let source = || tar_at(&dir, &[], 1_700_000_000);

    let case = Case::new();
    let log = case.build(source());
    assert!(log.contains("Compiling httpdate"), "{log}");
    let entries = slug_entries(&case.slug());
    assert_target_holds_only(&entries, &["target/release/rust-heroku"]);
    assert_eq!(
        slug_link(&case.slug(), "bin/rust-heroku").as_deref(),
        Some("../target/release/rust-heroku")
    );
    // httpdate's panic locations would name its source in the cache.
    let binary = slug_file(&case.slug(), "target/release/rust-heroku");
    let cache = case.cache_dir();
    assert!(
        !contains(&binary, cache.to_string_lossy().as_bytes()),
        "the binary embeds the cache path {cache:?}"
    );
    assert!(contains(&binary, b"/cargo/registry/src/"), "no mapped path");
    let cold = sha256_of(&case.slug());

    let mut web = case.start_web();
    assert_eq!(
        web.get_ok("/"),
        "Hello from a Heroku-style Rust app on slugrunner!\n"
    );
    web.stop();

    // Warm cache: the dependency is reused, the bytes are the same.
    let log = case.build(source());
    assert!(log.contains("Reusing cached build artifacts"), "{log}");
    assert!(!log.contains("Compiling httpdate"), "{log}");
    assert_eq!(sha256_of(&case.slug()), cold, "warm build differs\n{log}");

    // Another cache directory (and app dir): still the same bytes.
    let other = Case::new();
    let log = other.build(source());
    assert!(log.contains("Compiling httpdate"), "{log}");
    assert_eq!(
        sha256_of(&other.slug()),
        cold,
        "build in another cache differs\n{log}"
    );
}

/// Build `greeting` into the rust-heroku app with every file dated `mtime`,
/// and return the build log and what the served app answers.
fn build_and_ask(case: &Case, greeting: &str, mtime: u64) -> (String, String) {
    let source = tar_at(
        &example_dir("rust-heroku"),
        &[("src/greeting.txt", greeting)],
        mtime,
    );
    let log = case.build(source);
    let mut web = case.start_web();
    let answer = web.get_ok("/");
    web.stop();
    (log, answer)
}

#[test]
fn rollback_and_same_second_commits_serve_their_own_sources() {
    let case = Case::new();
    let t = 1_700_000_000;
    // Commit A, then B a minute later.
    let (log, answer) = build_and_ask(&case, "commit A\n", t);
    assert_eq!(answer, "commit A\n", "{log}");
    assert!(log.contains("Compiling httpdate"), "{log}");
    let (log, answer) = build_and_ask(&case, "commit B\n", t + 60);
    assert_eq!(answer, "commit B\n", "{log}");
    // Rollback to A: its files are older than the cached build of B.
    let (log, answer) = build_and_ask(&case, "commit A\n", t);
    assert_eq!(answer, "commit A\n", "{log}");
    // A force push of B dated in the same second as A.
    let (log, answer) = build_and_ask(&case, "commit B\n", t);
    assert_eq!(answer, "commit B\n", "{log}");
    // The dependency cache was kept through all of it.
    assert!(!log.contains("Compiling httpdate"), "{log}");
    assert!(log.contains("Compiling rust-heroku"), "{log}");
}

/// The rust-heroku Cargo.lock as it was while Cargo.toml also depended on
/// itoa: the lock still lists the removed dependency.
fn stale_lock() -> String {
    let lock =
        std::fs::read_to_string(example_dir("rust-heroku").join("Cargo.lock")).expect("Cargo.lock");
    let itoa = "[[package]]\nname = \"itoa\"\nversion = \"1.0.19\"\n\
                source = \"registry+https://github.com/rust-lang/crates.io-index\"\n\
                checksum = \"3bd1574e617a9a6c1f8f8181bd7e841e1f20e4277607ef28945765188d6284d4\"\n\n\
                [[package]]\nname = \"rust-heroku\"\n";
    let stale = lock
        .replace("[[package]]\nname = \"rust-heroku\"\n", itoa)
        .replace(" \"httpdate\",\n]", " \"httpdate\",\n \"itoa\",\n]");
    assert!(stale.contains("\"itoa\",\n]"), "{stale}");
    assert!(stale.contains("name = \"itoa\""), "{stale}");
    stale
}

#[test]
fn stale_cargo_lock_builds_with_a_warning_naming_the_change() {
    let case = Case::new();
    let stale = stale_lock();
    let log = case.build(tar_at(
        &example_dir("rust-heroku"),
        &[("Cargo.lock", &stale)],
        1_700_000_000,
    ));
    assert!(
        log.contains("-----> Fetching dependencies with cargo fetch --locked"),
        "{log}"
    );
    assert!(
        log.contains("-----> Warning: Cargo.lock did not match Cargo.toml"),
        "{log}"
    );
    assert!(log.contains("       removed itoa 1.0.19\n"), "{log}");
    // The slug holds the lock that was built.
    let lock = String::from_utf8(slug_file(&case.slug(), "Cargo.lock")).expect("utf-8");
    assert!(!lock.contains("itoa"), "{lock}");
    assert!(lock.contains("name = \"httpdate\""), "{lock}");

    let mut web = case.start_web();
    assert_eq!(
        web.get_ok("/"),
        "Hello from a Heroku-style Rust app on slugrunner!\n"
    );
    web.stop();
}

#[test]
fn broken_cargo_lock_fails_with_one_clear_error() {
    let case = Case::new();
    let lock =
        std::fs::read_to_string(example_dir("rust-heroku").join("Cargo.lock")).expect("Cargo.lock");
    let checksum =
        "checksum = \"df3b46402a9d5adb4c86a0cf463f42e19994e3ee891101b1841f30a545cb49a9\"";
    assert!(lock.contains(checksum), "{lock}");
    let tampered = lock.replace(checksum, &checksum.replace("df3b", "0000"));
    let not_toml = format!("{lock}\n[[package]\n");
    for (bad, cargo_says) in [
        (
            tampered.as_str(),
            "checksum for `httpdate v1.0.3` changed between lock files",
        ),
        (not_toml.as_str(), "failed to parse lock file"),
    ] {
        let mut cmd = case.slugbuilder();
        cmd.arg("-o").arg(case.slug());
        let source = tar_at(
            &example_dir("rust-heroku"),
            &[("Cargo.lock", bad)],
            1_700_000_000,
        );
        let out = run_with_stdin(&mut cmd, source, BUILD_TIMEOUT);
        let log = &out.stderr;
        assert_eq!(out.code(), Some(13), "{log}");
        assert!(!case.slug().exists(), "a slug was written\n{log}");
        assert!(log.contains(cargo_says), "{log}");
        let errors: Vec<&str> = log
            .lines()
            .filter(|l| l.starts_with("-----> Error:"))
            .collect();
        assert_eq!(
            errors,
            ["-----> Error: cargo could not use Cargo.lock"],
            "{log}"
        );
        assert!(!log.contains("Warning: Cargo.lock did not match"), "{log}");
    }
}
