//! `cargo fuzz run procfile`: see [`slug_fuzz::procfile`]. Built without
//! `--cfg fuzzing`, it replays the files named on its command line.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| slug_fuzz::procfile(data));

#[cfg(not(fuzzing))]
fn main() {
    slug_fuzz::replay(slug_fuzz::procfile);
}
