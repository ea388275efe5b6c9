//! The Procfile parser: never panics, and what it accepts renders back to a
//! Procfile that parses to the same thing.
#![no_main]
use common::procfile::{is_valid_process_type, Procfile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Procfile::parse_bytes(data) {
        for name in p.names() {
            assert!(is_valid_process_type(name));
        }
        assert_eq!(Procfile::parse(&p.to_string()).unwrap(), p);
    }
});
