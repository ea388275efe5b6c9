//! The run side: what slugrunner does with a slug. Installing it and
//! building the dyno environment ([`runtime`]), and running the Procfile's
//! process as PID 1 with signals forwarded and children reaped
//! ([`supervise`]), and the app's own start: privilege drop, fresh process
//! context, exec ([`exec_as`]).
//!
//! Depends on the shared ground only.

pub mod exec_as;
pub mod runtime;
pub mod supervise;
