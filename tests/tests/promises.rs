//! Promises of README.md, docs/, SECURITY.md and buildpacks/README.md that no
//! other test checks (issue 16): each test names the claim it keeps.
//!
//! The buildpack tests build small fixture apps (`tests/fixtures/apps/`)
//! with the bundled buildpacks. The Python one needs no network (its app
//! has no dependencies); the Node.js one installs one local package and
//! uses the stack's node when there is one (else it downloads Node.js from
//! the npm registry, and says so when that fails); the Rust one compiles a
//! crate without dependencies with the stack's cargo.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::apps::{tar_of, Case};
use e2e::builds::*;
use e2e::fixtures;
use e2e::slugs::{wait_until, Guarded, Slug};
use nix::sys::signal::{kill, Signal};

/// Incompressible bytes (a xorshift stream): a slug of a known size.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// docs/sandbox.md "Bounded resources" (SECURITY.md 3): the compressed slug gets a
/// warning above `--slug-size-warning` and fails the build (exit 15,
/// nothing written) above `--max-slug-size`.
#[test]
fn slug_size_warning_and_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Procfile"), "web: true\n").unwrap();
    std::fs::write(dir.path().join("blob.bin"), noise(200_000, 7)).unwrap();
    let source = tar_of(dir.path(), &[]);

    let out = Build::new(source.clone())
        .buildpack("recorder")
        .args(["--slug-size-warning", "100000", "--max-slug-size", "400000"])
        .run();
    assert_ok(&out);
    let log = stderr(&out);
    assert!(out.stdout.len() > 200_000, "{} bytes", out.stdout.len());
    assert!(
        log.contains("exceeds the soft limit of"),
        "no size warning:\n{log}"
    );

    let quiet = Build::new(source.clone()).buildpack("recorder").run();
    assert_ok(&quiet);
    assert!(!stderr(&quiet).contains("soft limit"), "{}", stderr(&quiet));

    let tmp = tempfile::tempdir().unwrap();
    let slug = tmp.path().join("slug.tgz");
    let out = Build::new(source)
        .buildpack("recorder")
        .args(["--max-slug-size", "150000", "-o"])
        .args([slug.as_os_str()])
        .run();
    assert_fails_with(&out, 15);
    let log = stderr(&out);
    assert!(
        log.lines()
            .last()
            .unwrap_or("")
            .contains("larger than the limit"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "a slug over the limit was written"
    );
}

/// SECURITY.md 3: "Unpacking streams: memory is bounded by a few 256 KiB
/// chunks whatever the input." slugrunner unpacks a slug of 384 MiB of
/// content (a few files, highly compressible, so the test stays small);
/// the app, started by the supervisor (`--init`) once the unpack is done,
/// reads its supervisor's peak RSS (VmHWM).
#[test]
fn slugrunner_unpack_memory_is_bounded() {
    let case = Case::new();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    {
        let mut tar = tar::Builder::new(&mut gz);
        let mut add = |name: &str, data: &mut dyn Read, size: u64| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(size);
            h.set_mtime(1);
            tar.append_data(&mut h, name, data).unwrap();
        };
        let procfile = b"web: grep VmHWM /proc/$PPID/status\n";
        add("./Procfile", &mut &procfile[..], procfile.len() as u64);
        for i in 0..3u64 {
            let size = 128 << 20;
            add(
                &format!("./big-{i}.bin"),
                &mut std::io::repeat(i as u8).take(size),
                size,
            );
        }
        tar.finish().unwrap();
    }
    let slug = gz.finish().unwrap();
    let path = case.path("slug.tgz");
    std::fs::write(&path, &slug).unwrap();
    let mut cmd = Command::new(e2e::bin("slugrunner"));
    cmd.arg("--slug")
        .arg(&path)
        .arg("--app-dir")
        .arg(case.app_dir())
        .args(["--init", "start", "web"]);
    let out = e2e::slugs::run_with_timeout(&mut cmd, Duration::from_secs(120));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let kib: u64 = out
        .stdout
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {:?}", out.stdout));
    assert_eq!(
        std::fs::metadata(case.app_dir().join("big-2.bin"))
            .unwrap()
            .len(),
        128 << 20
    );
    // The binary itself, its runtime and a few chunks: far below the 384
    // MiB it wrote.
    assert!(
        kib < 48 * 1024,
        "slugrunner peaked at {kib} KiB while unpacking"
    );
}

/// docs/slugrunner.md (5): SIGQUIT and SIGWINCH are forwarded to the app.
#[test]
fn sigquit_and_sigwinch_are_forwarded() {
    let case = Case::new();
    let slug = Slug::with_procfile(
        "web: trap 'echo winch >> \"$HOME/log\"' WINCH; trap 'echo quit >> \"$HOME/log\"; exit 4' QUIT; touch \"$HOME/ready\"; while :; do sleep 0.05; done",
    );
    let path = slug.write_to(case.dir.path());
    let child = Guarded::new(
        Command::new(e2e::bin("slugrunner"))
            .arg("--slug")
            .arg(&path)
            .arg("--app-dir")
            .arg(case.app_dir())
            .args(["--init", "start", "web"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let log = case.app_dir().join("log");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(20), || case
            .app_dir()
            .join("ready")
            .exists()),
        "the app never started"
    );
    kill(child.pid(), Signal::SIGWINCH).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || read() == "winch\n"),
        "SIGWINCH did not reach the app: {:?}",
        read()
    );
    kill(child.pid(), Signal::SIGQUIT).unwrap();
    let out = child.output(Duration::from_secs(20));
    assert_eq!(out.code(), Some(4), "{}", out.stderr);
    assert_eq!(read(), "winch\nquit\n");
}

/// docs/slugbuilder.md (4) and the builds_are_reproducible test's other
/// half: `--source DIR` gives the same slug bytes as the tar of that
/// directory, and reports the unpacker's own error for a bad tree.
#[test]
fn source_dir_reports_the_unpackers_error() {
    let app = App::new(&[("Procfile", "web: true\n")]);
    // A path deeper than the limit: refused by the unpacker, whose message
    // must reach the user (not "Broken pipe" from the packing side).
    let deep = app.path().join("d/".repeat(20));
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("f"), "x").unwrap();
    let out = Build::new(Vec::new())
        .buildpack("recorder")
        .args([std::ffi::OsStr::new("--source"), app.path().as_os_str()])
        .args(["--max-entries", "5"])
        .run();
    assert_fails_with(&out, 10);
    let log = stderr(&out);
    assert!(log.contains("limit of 5 entries"), "{log}");
    assert!(!log.to_lowercase().contains("broken pipe"), "{log}");
}

/// Build `app` (a fixture under tests/fixtures/apps) with the bundled
/// buildpacks; returns (exit code, log) and leaves the slug in the case.
fn build_fixture(case: &Case, app: &str, args: &[&str]) -> (Option<i32>, String) {
    let source = tar_of(&fixtures().join("apps").join(app), &[]);
    let mut cmd = case.slugbuilder();
    cmd.args(args).arg("-o").arg(case.slug());
    let out = e2e::apps::run_with_stdin(&mut cmd, source, e2e::apps::BUILD_TIMEOUT);
    (out.code(), out.stderr)
}

fn slug_has(case: &Case, path: &str) -> bool {
    e2e::apps::slug_entries(&case.slug())
        .iter()
        .any(|e| e == path)
}

fn slug_text(case: &Case, path: &str) -> String {
    let slug = std::fs::read(case.slug()).unwrap();
    text(&slug_files(&slug), path)
}

/// buildpacks/README.md (python, Django): collectstatic runs unless
/// DISABLE_COLLECTSTATIC is set to anything but `0`/`false`/`no` (or
/// empty, as unset). Every value of the buildpack's rule is tried, and a
/// few that disable it. The app (`python-collectstatic`) is a manage.py
/// with a collectstatic command and no dependencies to download; its
/// `django` package is the app's own, so `import django` holds as the
/// buildpack checks it. One case (one cache) for all: the builds after the
/// first reuse the virtualenv.
#[test]
fn disable_collectstatic_skips_collectstatic() {
    let case = Case::new();
    let values = [
        (None, true),
        (Some(""), true),
        (Some("0"), true),
        (Some("false"), true),
        (Some("no"), true),
        (Some("1"), false),
        (Some("yes"), false),
    ];
    for (value, runs) in values {
        let set = value.map(|v| format!("DISABLE_COLLECTSTATIC={v}"));
        let args: Vec<&str> = set.iter().flat_map(|s| ["-e", s.as_str()]).collect();
        let var = set.as_deref().unwrap_or("DISABLE_COLLECTSTATIC unset");
        let (code, log) = build_fixture(&case, "python-collectstatic", &args);
        assert_eq!(code, Some(0), "{var}:\n{log}");
        assert_eq!(
            log.contains("-----> Running Django collectstatic"),
            runs,
            "{var}:\n{log}"
        );
        assert_eq!(
            log.contains("-----> Skipping Django collectstatic (DISABLE_COLLECTSTATIC is set)"),
            !runs,
            "{var}:\n{log}"
        );
        assert_eq!(
            slug_has(&case, "staticfiles/collected.txt"),
            runs,
            "{var}: collectstatic's output"
        );
    }
}

/// buildpacks/README.md (nodejs): `heroku-prebuild` runs before the
/// install, `heroku-postbuild` instead of `build`, `heroku-cleanup` after
/// the prune; devDependencies are pruned unless NPM_CONFIG_PRODUCTION=false.
/// The app's one devDependency is a local package (`file:`), so npm needs
/// no registry.
#[test]
fn node_hooks_run_in_order_and_npm_config_production_keeps_dev_dependencies() {
    let case = Case::new();
    let (code, log) = build_fixture(&case, "node-hooks", &[]);
    assert_eq!(
        code,
        Some(0),
        "(a stack without node downloads it from the npm registry: this needs the network)\n{log}"
    );
    // Each hook appends its name and whether the devDependency is installed.
    assert_eq!(
        slug_text(&case, "hooks.log"),
        "prebuild dev=no\npostbuild dev=yes\ncleanup dev=no\n",
        "{log}"
    );
    assert!(!slug_has(&case, "node_modules/dev-only"), "not pruned");
    assert!(!slug_has(&case, "build-ran"), "build ran beside postbuild");

    let case = Case::new();
    let (code, log) = build_fixture(&case, "node-hooks", &["-e", "NPM_CONFIG_PRODUCTION=false"]);
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        slug_text(&case, "hooks.log"),
        "prebuild dev=no\npostbuild dev=yes\ncleanup dev=yes\n",
        "{log}"
    );
    assert!(slug_has(&case, "node_modules/dev-only"), "pruned anyway");
}

/// buildpacks/README.md (rust): a `rust-toolchain.toml` asking for another
/// Rust only gets a warning, and the stack's toolchain builds the app.
#[test]
fn rust_toolchain_toml_is_a_warning_not_a_download() {
    let case = Case::new();
    let (code, log) = build_fixture(&case, "rust-toolchain", &[]);
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("-----> Warning: The app asks for Rust 1.31.0; this stack has rustc"),
        "{log}"
    );
    assert!(slug_has(&case, "bin/toolchain-app"), "{log}");
}

/// buildpacks/README.md: config vars are exported into the compile
/// environment of every bundled buildpack except PATH, GIT_DIR, CPATH,
/// CPPATH, LD_PRELOAD, LIBRARY_PATH and LD_LIBRARY_PATH (and, for python,
/// PYTHONHOME and PYTHONPATH). Each buildpack that compiles anything is
/// checked with an app that records the environment its code is built in:
/// the node app's heroku-prebuild hook, the Django app's collectstatic and
/// the Rust app's build script. (procfile runs no code of the app's and
/// exports nothing.)
#[test]
fn env_dir_names_that_break_builds_are_kept_out_of_compile() {
    const EVERY_BUILDPACK: &[&str] = &[
        "PATH",
        "GIT_DIR",
        "CPATH",
        "CPPATH",
        "LD_PRELOAD",
        "LIBRARY_PATH",
        "LD_LIBRARY_PATH",
    ];
    // (buildpack as its log names it, fixture app, where the app records
    // its environment, names kept out besides EVERY_BUILDPACK)
    let cases: &[(&str, &str, &str, &[&str])] = &[
        ("Node.js", "node-hooks", "prebuild-env.txt", &[]),
        (
            "Python",
            "python-collectstatic",
            "staticfiles/env.txt",
            &["PYTHONHOME", "PYTHONPATH"],
        ),
        ("Rust", "rust-build-env", "build-env.txt", &[]),
    ];
    for (buildpack, app, record, own) in cases {
        let case = Case::new();
        let mut args = vec!["-e".to_string(), "KEPT_VAR=kept".to_string()];
        for name in EVERY_BUILDPACK.iter().chain(own.iter()) {
            args.push("-e".into());
            args.push(format!("{name}=/from-config-var"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, log) = build_fixture(&case, app, &args);
        assert_eq!(code, Some(0), "{buildpack}: {log}");
        assert!(
            log.contains(&format!("-----> {buildpack} app detected")),
            "{buildpack}: the app was built by another buildpack:\n{log}"
        );
        let seen = slug_text(&case, record);
        assert!(
            seen.contains("KEPT_VAR=kept\n"),
            "{buildpack}: config vars never reached compile, so nothing was checked:\n{seen}"
        );
        let leaked: Vec<&str> = seen
            .lines()
            .filter(|l| l.contains("/from-config-var"))
            .collect();
        assert!(
            leaked.is_empty(),
            "{buildpack}: a config var of the excluded names reached compile: {leaked:?}"
        );
    }
}

/// docs/slugrunner.md (5): "With a terminal on stdin the app's group gets
/// the terminal" when asked for with `--tty` (or as slugrunner's own
/// user); an app run as another user without it gets none (issue 22).
/// Under `script` (a pseudo-terminal), the supervised app (`cat`, exec'd
/// as the app) reads its own process group and the terminal's foreground
/// group from /proc.
#[test]
fn with_a_terminal_the_apps_group_gets_it() {
    let case = Case::new();
    let slug = Slug::with_procfile("web: true\n");
    let path = slug.write_to(case.dir.path());
    let root = nix::unistd::geteuid().is_root();
    for tty in [true, false] {
        let runner = format!(
            "{} --slug {} --app-dir {} --init {} exec cat /proc/self/stat",
            e2e::bin("slugrunner").display(),
            path.display(),
            case.app_dir().display(),
            if tty { "--tty" } else { "" }
        );
        let mut cmd = Command::new("script");
        cmd.args(["-q", "-e", "-c", &runner, "/dev/null"]);
        let out = e2e::slugs::run_with_timeout(&mut cmd, Duration::from_secs(60));
        assert_eq!(
            out.code(),
            Some(0),
            "(needs script(1) from util-linux)\n{}{}",
            out.stdout,
            out.stderr
        );
        // `pid (comm) state ppid pgrp session tty_nr tpgid ...`
        let stat = out.stdout.trim();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        assert!(fields.len() > 5, "{stat:?}");
        let (pgrp, tty_nr, tpgid) = (fields[2], fields[4], fields[5]);
        if tty || !root {
            assert_ne!(tty_nr, "0", "no terminal: {stat:?}");
            assert_eq!(
                pgrp, tpgid,
                "the app's group {pgrp} is not the terminal's foreground group {tpgid}"
            );
        } else {
            // As root, the app runs as another user: no terminal of ours.
            assert_eq!(
                tty_nr, "0",
                "the app kept the operator's terminal: {stat:?}"
            );
        }
    }
}

/// Each bundled buildpack is self-contained (it is copied alone into a
/// build, and works when named by URL), so a helper shared by several
/// exists once per buildpack that uses it: the copies must not drift apart.
fn assert_same_copies(helper: &str, buildpacks: &[&str]) {
    let root = e2e::repo_root().join("buildpacks");
    let copies: Vec<Vec<u8>> = buildpacks
        .iter()
        .map(|bp| {
            let path = root.join(bp).join(helper);
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect();
    assert!(
        copies.windows(2).all(|w| w[0] == w[1]),
        "buildpacks/{{{}}}/{helper} differ: change them together",
        buildpacks.join(",")
    );
}

#[test]
fn the_buildpacks_copies_of_the_cache_digest_helper_are_the_same() {
    assert_same_copies("lib/cachedigest.py", &["nodejs", "python"]);
}

/// The shell helpers (`lib/common.sh`): one text, whatever a buildpack
/// adds to it is passed as arguments (`export_env_dir "$ENV_DIR" NAME...`).
#[test]
fn the_buildpacks_copies_of_the_shell_helpers_are_the_same() {
    assert_same_copies("lib/common.sh", &["nodejs", "python", "rust"]);
}

/// Longest function (in lines, signature to closing brace) the code keeps.
const MAX_FUNCTION_LINES: usize = 80;

/// house-style.md, issue 26: "no function longer than a screen", and no
/// `too_many_arguments` allowance (arguments that go together are a
/// struct that names them). Test code is not held to it.
#[test]
fn functions_are_short_and_take_few_arguments() {
    let root = e2e::repo_root();
    let mut broken = Vec::new();
    for crate_dir in e2e::SOURCE_DIRS {
        for path in rust_files(&root.join(crate_dir)) {
            let rel = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            for f in code_shape::functions(&text) {
                if f.lines > MAX_FUNCTION_LINES {
                    broken.push(format!("{rel}:{} {} is {} lines", f.line, f.name, f.lines));
                }
                if f.allows_too_many_arguments {
                    broken.push(format!(
                        "{rel}:{} {} allows too_many_arguments",
                        f.line, f.name
                    ));
                }
            }
            if code_shape::allows_too_many_arguments_module_wide(&text) {
                broken.push(format!("{rel}: allows too_many_arguments module-wide"));
            }
        }
    }
    for config in [
        "Cargo.toml",
        "common/Cargo.toml",
        "slugbuilder/Cargo.toml",
        "slugrunner/Cargo.toml",
        "clippy.toml",
        ".clippy.toml",
    ] {
        let text = std::fs::read_to_string(root.join(config)).unwrap_or_default();
        if text.contains("too_many_arguments") || text.contains("too-many-arguments") {
            broken.push(format!("{config} relaxes too_many_arguments"));
        }
    }
    assert!(
        broken.is_empty(),
        "split these by what each part decides (at most {MAX_FUNCTION_LINES} lines, \
         arguments that go together in a struct):\n{}",
        broken.join("\n")
    );
}

/// The shape check above finds what it should: a long function, one
/// allowing too many arguments, and not braces in strings, comments or
/// test code.
#[test]
fn the_function_length_check_can_fail() {
    let body = ["    x += 1;"; MAX_FUNCTION_LINES - 1].join("\n");
    // One line each, quoted so that no line of this file starts an item.
    let src = [
        "fn short() { let s = \"}}\"; let c = '{'; }",
        "// fn commented() {",
        "#[allow(clippy::too_many_arguments)]",
        "pub(crate) fn many<'a>(a: &'a str) {",
        "    let r = r#\"{\"#;",
        "}",
        "fn long() {",
        body.as_str(),
        "}",
        "trait T {",
        "    fn declared(&self);",
        "}",
        "#[cfg(test)]",
        "mod tests {",
        "    fn long_test() {",
        body.as_str(),
        "    }",
        "}",
    ]
    .join("\n");
    let found = code_shape::functions(&src);
    let shape: Vec<(&str, usize, bool)> = found
        .iter()
        .map(|f| (f.name.as_str(), f.lines, f.allows_too_many_arguments))
        .collect();
    assert_eq!(
        shape,
        [
            ("short", 1, false),
            ("many", 3, true),
            ("long", MAX_FUNCTION_LINES + 1, false),
        ]
    );
    assert!(code_shape::allows_too_many_arguments_module_wide(
        "#![allow(clippy::too_many_arguments)]\n"
    ));
}

fn rust_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Just enough of Rust's lexical shape to measure functions: strings,
/// characters and comments blanked out, then braces counted.
mod code_shape {
    pub struct Function {
        pub name: String,
        /// 1-based line of its signature.
        pub line: usize,
        pub lines: usize,
        pub allows_too_many_arguments: bool,
    }

    /// Every function with a body outside test code (items under
    /// `#[cfg(test)]` or `#[test]`), nested ones included.
    pub fn functions(text: &str) -> Vec<Function> {
        let code = blank_literals(text);
        let lines: Vec<&str> = code.lines().collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            let trimmed = lines[i].trim();
            if trimmed == "#[cfg(test)]" || trimmed == "#[test]" {
                i = item_end(&lines, i + 1) + 1;
                continue;
            }
            if let Some(name) = fn_name(trimmed) {
                let end = item_end(&lines, i);
                if lines[i..=end].iter().any(|l| l.contains('{')) {
                    // Its attributes (comments are blank lines by now).
                    let attrs = lines[..i].iter().rev().take_while(|l| {
                        let l = l.trim();
                        l.starts_with("#[") || l.is_empty()
                    });
                    out.push(Function {
                        name,
                        line: i + 1,
                        lines: end - i + 1,
                        allows_too_many_arguments: attrs
                            .into_iter()
                            .any(|l| l.contains("too_many_arguments")),
                    });
                }
            }
            i += 1;
        }
        out
    }

    pub fn allows_too_many_arguments_module_wide(text: &str) -> bool {
        blank_literals(text)
            .lines()
            .any(|l| l.trim_start().starts_with("#![") && l.contains("too_many_arguments"))
    }

    /// The name of the function a line declares, if it does.
    fn fn_name(line: &str) -> Option<String> {
        let mut words = line.split_whitespace().skip_while(|w| {
            w.starts_with("pub")
                || w.starts_with('"')
                || ["const", "async", "unsafe", "extern", "default"].contains(w)
        });
        if words.next()? != "fn" {
            return None;
        }
        let name: String = words
            .next()?
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        (!name.is_empty()).then_some(name)
    }

    /// The last line of the item starting at `start`: where its braces
    /// close, or where it ends with `;` before any brace opens.
    fn item_end(lines: &[&str], start: usize) -> usize {
        let mut depth = 0i64;
        let mut opened = false;
        for (j, line) in lines.iter().enumerate().skip(start) {
            if !opened && line.contains(';') && !line.contains('{') {
                return j;
            }
            for c in line.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if opened && depth <= 0 {
                return j;
            }
        }
        lines.len().saturating_sub(1)
    }

    /// `text` with the insides of comments, strings (raw and byte ones
    /// too) and character literals replaced by spaces; lines are kept.
    fn blank_literals(text: &str) -> String {
        let chars: Vec<char> = text.chars().collect();
        let mut out = String::with_capacity(text.len());
        let mut i = 0;
        let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
        while i < chars.len() {
            let c = chars[i];
            let next = chars.get(i + 1).copied();
            if c == '/' && next == Some('/') {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            } else if c == '/' && next == Some('*') {
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        blank(&mut out, chars[i]);
                        i += 1;
                    }
                }
            } else if let Some(hashes) = raw_string_start(&chars, i) {
                // r"..", r#".."#, br".." : no escapes inside.
                while chars[i] != '"' {
                    i += 1;
                }
                i += 1;
                out.push('"');
                let close: Vec<char> = format!("\"{}", "#".repeat(hashes)).chars().collect();
                while i < chars.len() && !chars[i..].starts_with(&close) {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
                i += close.len();
                out.push('"');
            } else if c == '"' {
                out.push('"');
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        blank(&mut out, chars[i]);
                        i += 1;
                    }
                    if let Some(&ch) = chars.get(i) {
                        blank(&mut out, ch);
                    }
                    i += 1;
                }
                out.push('"');
                i += 1;
            } else if c == '\'' && (next == Some('\\') || chars.get(i + 2) == Some(&'\'')) {
                // A character literal ('x', '\n', '\u{7f}'), not a lifetime.
                i += 1;
                if chars.get(i) == Some(&'\\') {
                    i += 1;
                }
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        }
        out
    }

    /// At `i`, the start of a raw string (`r"`, `r#"`, `br"`...): how many
    /// `#` it uses.
    fn raw_string_start(chars: &[char], i: usize) -> Option<usize> {
        let prev_is_ident = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if prev_is_ident {
            return None;
        }
        let mut j = i;
        if chars.get(j) == Some(&'b') {
            j += 1;
        }
        if chars.get(j) != Some(&'r') {
            return None;
        }
        j += 1;
        let hashes = chars[j..].iter().take_while(|&&c| c == '#').count();
        (chars.get(j + hashes) == Some(&'"')).then_some(hashes)
    }
}

/// ARCHITECTURE.md's one direction: the binaries and sides depend on the
/// shared ground, never on each other, and slugrunner links neither the
/// build side (sandbox, buildpacks) nor the image side (OCI).
#[test]
fn the_crates_depend_one_way() {
    let root = e2e::repo_root();
    let deps = |manifest: &str| -> Vec<String> {
        let text = std::fs::read_to_string(root.join(manifest)).expect(manifest);
        let normal = text.split("[dev-dependencies]").next().unwrap_or_default();
        ["slug-shared", "slug-build", "slug-run", "slug-image"]
            .iter()
            .filter(|name| normal.lines().any(|l| l.trim_start().starts_with(*name)))
            .map(|name| name.to_string())
            .collect()
    };
    let allowed: &[(&str, &[&str])] = &[
        ("common/shared/Cargo.toml", &[]),
        ("common/build/Cargo.toml", &["slug-shared"]),
        ("common/run/Cargo.toml", &["slug-shared"]),
        ("common/image/Cargo.toml", &["slug-shared"]),
        ("slugrunner/Cargo.toml", &["slug-shared", "slug-run"]),
    ];
    for (manifest, may) in allowed {
        let extra: Vec<String> = deps(manifest)
            .into_iter()
            .filter(|d| !may.contains(&d.as_str()))
            .collect();
        assert!(
            extra.is_empty(),
            "{manifest} depends on {extra:?}: see ARCHITECTURE.md"
        );
    }
}
