//! `cargo fuzz run slugignore`: [`slug_fuzz::slugignore`] (see `slug_fuzz::target!`).
#![cfg_attr(fuzzing, no_main)]
slug_fuzz::target!(slugignore);
