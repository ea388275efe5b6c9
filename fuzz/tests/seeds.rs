//! Every seed of every fuzz target, through the function the target calls:
//! the corpora are ordinary tests on stable, and a target without seeds
//! (or seeds without a target) fails.

use std::path::Path;

#[test]
fn every_seed_passes_its_target() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let mut dirs: Vec<String> = std::fs::read_dir(&seeds)
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let names: Vec<&str> = slug_fuzz::TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(dirs, names, "seeds/ and the targets must match");
    for (name, target) in slug_fuzz::TARGETS {
        let mut files: Vec<_> = std::fs::read_dir(seeds.join(name))
            .unwrap()
            .map(|f| f.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "seeds/{name} is empty");
        for file in files {
            eprintln!("{name}: {}", file.display());
            target(&std::fs::read(&file).unwrap());
        }
    }
}
