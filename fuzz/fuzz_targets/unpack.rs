//! The tar unpacker on arbitrary bytes (plain or gzip): it may refuse, but
//! must never panic, and nothing beside or above the destination may change
//! or appear (the victim-tree oracle of the hostile tests, `e2e::hostile::Scene`).
#![no_main]
use e2e::hostile::Scene;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let scene = Scene::new();
    let limits = common::archive::Limits {
        max_bytes: 1 << 20,
        max_entries: 1000,
        ..Default::default()
    };
    let opts = common::archive::UnpackOptions { limits, ..Default::default() };
    let _ = common::archive::unpack_slug(std::io::Cursor::new(data.to_vec()), &scene.app(), &opts);
    scene.assert_untouched("fuzzed archive");
});
