//! PAX extended header records: the strict parser never panics, and what
//! it accepts, encoded again, parses to the same records.
#![no_main]
use common::archive::parse_pax;
use libfuzzer_sys::fuzz_target;

fn encode(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let body = 1 + key.len() + 1 + value.len() + 1;
        let mut len = body + 1;
        while len.to_string().len() + body != len {
            len = len.to_string().len() + body;
        }
        out.extend_from_slice(format!("{len} {key}=").as_bytes());
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = parse_pax(data) {
        assert_eq!(parse_pax(&encode(&records)).unwrap(), records);
    }
});
