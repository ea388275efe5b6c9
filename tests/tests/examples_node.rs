//! End-to-end tests of the bundled nodejs buildpack: example apps under
//! `examples/` built by the real slugbuilder and served by the real
//! slugrunner. Needs the npm registry and the stack's node/npm.

use e2e::apps::*;

#[test]
fn express_example_serves_and_second_build_uses_the_npm_cache() {
    let case = Case::new();
    let first = case.build(example_tar("express"));
    assert!(first.contains("-----> Node.js app detected"), "{first}");
    assert!(first.contains("(npm ci)"), "{first}");
    assert!(first.contains("Empty cache (first build)"), "{first}");
    assert!(
        first.contains("Default types for buildpack -> web"),
        "{first}"
    );

    let mut web = case.start_web();
    assert_eq!(web.get_ok("/"), "Hello from Express on slugrunner!\n");
    web.stop();

    let second = case.build(example_tar("express"));
    assert!(second.contains("- npm cache ("), "{second}");
    assert!(!second.contains("Empty cache"), "{second}");
}
