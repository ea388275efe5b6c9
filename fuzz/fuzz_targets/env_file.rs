//! `cargo fuzz run env_file`: [`slug_fuzz::env_file`] (see `slug_fuzz::target!`).
#![cfg_attr(fuzzing, no_main)]
slug_fuzz::target!(env_file);
