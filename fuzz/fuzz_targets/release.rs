//! `cargo fuzz run release`: [`slug_fuzz::release`] (see `slug_fuzz::target!`).
#![cfg_attr(fuzzing, no_main)]
slug_fuzz::target!(release);
