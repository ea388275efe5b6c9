//! Driving the real slugbuilder on apps built in code, with the fixture
//! buildpacks of `tests/fixtures/buildpacks`: the harness of
//! `tests/tests/builder.rs`, `sandbox.rs` and `rootsafety.rs`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::{bin, fixtures};

/// A temp dir that an unprivileged build user (slugbuilder as root runs
/// buildpacks as `nobody`) can traverse.
pub fn shared_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

pub fn buildpack(name: &str) -> PathBuf {
    fixtures().join("buildpacks").join(name)
}

/// An app source tree written into a temp dir.
#[derive(Debug)]
pub struct App {
    dir: tempfile::TempDir,
}

impl App {
    pub fn new(files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The tree as a plain tar, like `git archive --format=tar`.
    pub fn tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        b.mode(tar::HeaderMode::Deterministic);
        b.append_dir_all(".", self.path()).unwrap();
        b.into_inner().unwrap()
    }
}

/// One slugbuilder run.
#[derive(Debug)]
pub struct Build {
    cmd: Command,
    stdin: Vec<u8>,
    timeout: Duration,
}

impl Build {
    pub fn new(source_tar: Vec<u8>) -> Self {
        let mut cmd = Command::new(bin("slugbuilder"));
        // A clean, known environment: only what a backend would pass.
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("SLUGBUILDER_TEST_SECRET", "do-not-leak");
        Self {
            cmd,
            stdin: source_tar,
            timeout: Duration::from_secs(60),
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.arg(arg);
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }

    pub fn buildpack(self, name: &str) -> Self {
        let dir = buildpack(name);
        self.args([std::ffi::OsStr::new("--buildpack"), dir.as_os_str()])
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The command as configured so far (to spawn it by hand).
    pub fn command(self) -> Command {
        self.cmd
    }

    pub fn run(mut self) -> Output {
        let input = std::mem::take(&mut self.stdin);
        crate::slugs::run_with_input(&mut self.cmd, input, self.timeout)
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "slugbuilder failed ({:?}):\n{}",
        out.status,
        stderr(out)
    );
}

pub fn assert_fails_with(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "stderr:\n{}", stderr(out));
    assert!(
        out.stdout.is_empty(),
        "a failed build wrote {} bytes to stdout",
        out.stdout.len()
    );
}

/// Unpack a slug's gzip tar into a map of path -> contents (files only).
pub fn slug_files(slug: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(slug));
    let mut files = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        files.insert(path, data);
    }
    files
}

pub fn text(files: &BTreeMap<String, Vec<u8>>, path: &str) -> String {
    String::from_utf8_lossy(
        files
            .get(path)
            .unwrap_or_else(|| panic!("{path} not in slug: {:?}", files.keys())),
    )
    .into_owned()
}
