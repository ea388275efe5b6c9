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

/// For tests that only mean something as root: the tests' one skip rule
/// (`e2e::runnable`: a failure in CI, a skip said why elsewhere).
#[cfg(test)]
pub(crate) fn needs_root() -> bool {
    e2e::runnable(
        "this test",
        (!nix::unistd::geteuid().is_root()).then(|| "it needs root".to_string()),
    )
}
