//! `.buildpacks` and buildpack specs: the list parser and `Source::parse`
//! never panic; every listed spec is a non-empty, trimmed line of its own,
//! and listing the list again gives the same list.
#![no_main]
use common::buildpack::{parse_list_file, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let list = parse_list_file(&text);
    for spec in &list {
        assert!(!spec.is_empty() && spec.trim() == spec, "{spec:?}");
        assert!(!spec.contains('\n'), "{spec:?}");
        let _ = Source::parse(spec);
    }
    // After a blank first line: a byte-order mark is only dropped at the
    // very start of a file, and a spec may begin with one.
    let again = parse_list_file(&format!("\n{}", list.join("\n")));
    assert_eq!(again, list);
    let _ = Source::parse(&text);
});
