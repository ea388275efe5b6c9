//! `cargo fuzz run pax`: [`slug_fuzz::pax`] (see `slug_fuzz::target!`).
#![cfg_attr(fuzzing, no_main)]
slug_fuzz::target!(pax);
