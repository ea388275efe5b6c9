//! `cargo fuzz run buildpacks`: see [`slug_fuzz::buildpacks`]. Built without
//! `--cfg fuzzing`, it replays the files named on its command line.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| slug_fuzz::buildpacks(data));

#[cfg(not(fuzzing))]
fn main() {
    slug_fuzz::replay(slug_fuzz::buildpacks);
}
