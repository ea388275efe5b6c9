//! The shared ground of slugbuilder and slugrunner: what both sides stand
//! on and neither owns. Archives and compression ([`archive`], [`pgzip`],
//! [`digest`]), root-safe file access ([`rootdir`], [`tree`]), cancellation
//! and deadlines ([`cancel`]), HTTP ([`http`]) with the one retry policy
//! and guarded reader of every transfer ([`transfer`]), logging ([`log`],
//! [`logging`]), exit codes ([`exit`]), users and privilege drops
//! ([`user`]), the container-init checklist ([`isolate`]), programs and
//! processes ([`exe`], [`cmdline`], [`proctree`], [`lines`]), and the
//! slug's own files that both sides read ([`procfile`], [`release`]).
//!
//! Nothing here depends on the build, run or image side.

pub mod archive;
pub mod cancel;
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
pub mod pgzip;
pub mod procfile;
pub mod proctree;
pub mod release;
pub mod rootdir;
pub mod transfer;
pub mod tree;
pub mod user;
