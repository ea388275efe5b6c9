//! `cargo fuzz run unpack`: [`slug_fuzz::unpack`] (see `slug_fuzz::target!`).
#![cfg_attr(fuzzing, no_main)]
slug_fuzz::target!(unpack);
