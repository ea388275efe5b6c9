//! `cargo fuzz run buildpacks`: [`slug_fuzz::buildpacks`] (see `slug_fuzz::target!`).
#![cfg_attr(fuzzing, no_main)]
slug_fuzz::target!(buildpacks);
