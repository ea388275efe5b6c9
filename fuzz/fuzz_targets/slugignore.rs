//! The .slugignore matcher: arbitrary patterns applied to a build dir with
//! links out of it must never remove or change anything outside (the
//! victim-tree oracle of the hostile tests), and links stay links.
#![no_main]
use common::slugignore::Slugignore;
use e2e::hostile::Scene;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut scene = Scene::new();
    let build = scene.work().join("build");
    std::fs::create_dir_all(build.join("src/docs")).unwrap();
    std::fs::write(build.join("src/docs/a.md"), "a").unwrap();
    std::fs::write(build.join("app.py"), "x").unwrap();
    std::os::unix::fs::symlink(scene.victim(), build.join("link")).unwrap();
    std::os::unix::fs::symlink(scene.root(), build.join("top")).unwrap();
    scene.also_destination("work/build");
    if let Ok(ignore) = Slugignore::parse(&build, &text) {
        let _ = ignore.matches(std::path::Path::new("src/docs/a.md"), false);
        if let Ok(removed) = ignore.apply(&build) {
            for path in removed {
                assert!(path.is_relative() && !path.starts_with(".."), "{path:?}");
            }
        }
    }
    for link in ["link", "top"] {
        if let Ok(meta) = build.join(link).symlink_metadata() {
            assert!(meta.file_type().is_symlink(), "{link} is no longer a link");
        }
    }
    scene.assert_untouched("fuzzed .slugignore");
});
