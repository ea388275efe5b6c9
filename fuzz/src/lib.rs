//! The fuzz targets' bodies, as plain functions: `cargo fuzz` drives them
//! from the thin wrappers in `fuzz_targets/` (built with `--cfg fuzzing`),
//! and `cargo test` feeds them every seed in `seeds/<target>/`
//! (`tests/seeds.rs`), so they compile and their corpora run on stable in
//! every test run. Each function panics when its property does not hold.

use e2e::hostile::Scene;
use slug_build::buildpack::{parse_list_file, Source};
use slug_build::slugignore::Slugignore;
use slug_run::runtime::parse_env_file;
use slug_shared::procfile::{is_valid_process_type, Procfile};
use slug_shared::release::Release;

/// A target's body: panics when its property does not hold for the input.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/` file and `seeds/` folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("buildpacks", buildpacks),
    ("env_file", env_file),
    ("pax", pax),
    ("procfile", procfile),
    ("release", release),
    ("slugignore", slugignore),
    ("unpack", unpack),
];

/// `.buildpacks` and buildpack specs: the list parser and `Source::parse`
/// never panic; every listed spec is a non-empty, trimmed line of its own,
/// and listing the list again gives the same list.
pub fn buildpacks(data: &[u8]) {
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
}

/// The env-file parser (`--env-file`): never panics, an error names a line
/// of the input, and what it accepts, printed double-quoted, parses back to
/// the same variables.
pub fn env_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_env_file(text) {
        Ok(vars) => {
            let printed: String = vars
                .iter()
                .map(|(k, v)| format!("{k}={}\n", double_quoted(v)))
                .collect();
            assert_eq!(parse_env_file(&printed).unwrap(), vars);
        }
        Err((line, reason)) => {
            assert!(
                line >= 1 && line <= text.split('\n').count(),
                "line {line} of {text:?}"
            );
            assert!(!reason.is_empty());
        }
    }
}

fn double_quoted(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\\' | '"' | '$' | '`' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// PAX extended header records: the strict parser never panics, and what
/// it accepts, encoded again, parses to the same records.
pub fn pax(data: &[u8]) {
    if let Ok(records) = slug_shared::archive::parse_pax(data) {
        let again = e2e::hostile::pax_records(&records);
        assert_eq!(slug_shared::archive::parse_pax(&again).unwrap(), records);
    }
}

/// The Procfile parser: never panics, and what it accepts renders back to
/// a Procfile that parses to the same thing.
pub fn procfile(data: &[u8]) {
    if let Ok(p) = Procfile::parse_bytes(data) {
        for name in p.names() {
            assert!(is_valid_process_type(name));
        }
        assert_eq!(Procfile::parse(&p.to_string()).unwrap(), p);
    }
}

/// The release YAML reader: never panics, and what it accepts round-trips.
pub fn release(data: &[u8]) {
    if let Ok(r) = Release::parse(data) {
        assert_eq!(Release::parse(r.to_yaml().as_bytes()).unwrap(), r);
    }
}

/// The .slugignore matcher: arbitrary patterns applied to a build dir with
/// links out of it must never remove or change anything outside (the
/// victim-tree oracle of the hostile tests), and links stay links.
pub fn slugignore(data: &[u8]) {
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
}

/// The tar unpacker on arbitrary bytes (plain or gzip): it may refuse, but
/// must never panic, and nothing beside or above the destination may
/// change or appear (the victim-tree oracle of the hostile tests).
pub fn unpack(data: &[u8]) {
    let scene = Scene::new();
    let limits = slug_shared::archive::Limits {
        max_bytes: 1 << 20,
        max_entries: 1000,
        ..Default::default()
    };
    let opts = slug_shared::archive::UnpackOptions {
        limits,
        ..Default::default()
    };
    let input = std::io::Cursor::new(data.to_vec());
    let _ = slug_shared::archive::unpack_slug(input, &scene.app(), &opts);
    scene.assert_untouched("fuzzed archive");
}

/// The body of `fuzz_targets/<name>.rs`: under `cargo fuzz` (`--cfg
/// fuzzing`) a libFuzzer target calling `slug_fuzz::<name>`; otherwise a
/// `main` that [`replay`]s the files named on the command line. The file
/// itself starts with `#![cfg_attr(fuzzing, no_main)]`.
#[macro_export]
macro_rules! target {
    ($name:ident) => {
        #[cfg(fuzzing)]
        libfuzzer_sys::fuzz_target!(|data: &[u8]| $crate::$name(data));

        #[cfg(not(fuzzing))]
        fn main() {
            $crate::replay($crate::$name);
        }
    };
}

/// Without libFuzzer (a build without `--cfg fuzzing`): run `target` on
/// each file named on the command line, to replay a crash on stable.
pub fn replay(target: Target) {
    for path in std::env::args_os().skip(1) {
        let data = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", std::path::Path::new(&path).display()));
        target(&data);
    }
}
