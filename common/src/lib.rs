//! The domain of slugbuilder and slugrunner.
//!
//! One module per concept of the Heroku slug world (see
//! `../shared/reference/buildpack-contract.md`): the slug archive, the
//! buildpack API, the Procfile, the release YAML, the dyno environment and
//! process supervision. The two binaries are thin wrappers around this crate.

pub mod archive;
pub mod build;
pub mod buildpack;
pub mod child;
pub mod exit;
pub mod fetch;
pub mod lines;
pub mod log;
pub mod pgzip;
pub mod procfile;
pub mod release;
pub mod rootdir;
pub mod runtime;
pub mod slugignore;
pub mod supervise;
pub mod user;
