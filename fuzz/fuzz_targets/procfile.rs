//! `cargo fuzz run procfile`: [`slug_fuzz::procfile`] (see `slug_fuzz::target!`).
#![cfg_attr(fuzzing, no_main)]
slug_fuzz::target!(procfile);
