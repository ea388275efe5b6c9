//! Embeds the bundled buildpacks (`../buildpacks`) into the binary as a
//! tar, so that a freshly installed slugbuilder detects apps with no
//! configuration at all. `--buildpacks-dir` / `BUILDPACK_PATH` replace them.

use std::path::Path;

fn main() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../buildpacks");
    println!("cargo:rerun-if-changed={}", src.display());
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("buildpacks.tar");
    let file = std::fs::File::create(&out).expect("create buildpacks.tar");
    let mut builder = tar::Builder::new(file);
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    if src.is_dir() {
        builder
            .append_dir_all(".", &src)
            .expect("pack bundled buildpacks");
    }
    builder.finish().expect("finish buildpacks.tar");
}
