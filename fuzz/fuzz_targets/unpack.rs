//! The tar unpacker on arbitrary bytes (plain or gzip): it may refuse, but
//! must never panic, and nothing may appear outside the destination.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dest");
    let limits = common::archive::Limits {
        max_bytes: 1 << 20,
        max_entries: 1000,
        ..Default::default()
    };
    let opts = common::archive::UnpackOptions { limits, ..Default::default() };
    let _ = common::archive::unpack_slug(std::io::Cursor::new(data.to_vec()), &dest, &opts);
    let beside: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(beside.len() <= 1, "something was created beside the destination: {beside:?}");
});
