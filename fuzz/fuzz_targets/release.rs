//! The release YAML reader: never panics, and what it accepts round-trips.
#![no_main]
use common::release::Release;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Release::parse(data) {
        assert_eq!(Release::parse(r.to_yaml().as_bytes()).unwrap(), r);
    }
});
