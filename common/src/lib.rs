//! The domain of slugbuilder and slugrunner.
//!
//! One module per concept of the Heroku slug world (see
//! `docs/buildpack-contract.md`): the slug archive, the
//! buildpack API, the Procfile, the release YAML, the dyno environment and
//! process supervision. The two binaries are thin wrappers around this crate.

pub mod archive;
pub mod build;
pub mod buildpack;
pub mod cancel;
pub mod child;
pub mod cmdline;
pub mod digest;
pub mod exe;
pub mod exit;
pub mod http;
// The container-init checklist: raw close_range and keyctl calls.
#[allow(unsafe_code)]
pub mod isolate;
pub mod lines;
pub mod log;
pub mod logging;
pub mod oci;
pub mod pgzip;
pub mod procfile;
pub mod proctree;
pub mod release;
pub mod report;
pub mod rootdir;
pub mod runtime;
pub mod sandbox;
pub mod slugignore;
pub mod supervise;
pub mod transfer;
pub mod tree;
pub mod user;

/// For tests that only mean something as root: `false` (skip) when not
/// root, but a failure when `CI` is set, where they must run.
#[cfg(test)]
pub(crate) fn needs_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "this test needs root, and CI is set: run the tests as root"
    );
    eprintln!("skipped: needs root");
    false
}
