//! The .slugignore matcher: arbitrary patterns applied to a small tree with
//! a symlink out of it must never remove anything outside.
#![no_main]
use common::slugignore::Slugignore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("build");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(root.join("src/docs")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(root.join("src/docs/a.md"), "a").unwrap();
    std::fs::write(root.join("app.py"), "x").unwrap();
    std::fs::write(outside.join("keep"), "k").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    if let Ok(Some(ignore)) = Slugignore::parse(&root, &text).map(Some) {
        let _ = ignore.matches(std::path::Path::new("src/docs/a.md"), false);
        let _ = ignore.apply(&root);
    }
    assert!(outside.join("keep").exists(), "a pattern removed a file outside the build dir");
});
