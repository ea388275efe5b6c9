//! The cases of Heroku's Cloud Native Buildpacks' own integration-test
//! fixtures (heroku/buildpacks-python `tests/fixtures/`, heroku/buildpacks-nodejs
//! `tests/fixtures/`), re-created here as small apps under
//! `tests/fixtures/apps/` (issue 23 item 7): each is built by the real
//! slugbuilder with the bundled buildpacks and must end as Heroku's does
//! (or as the "differs from Heroku's buildpacks" table in buildpacks/README.md
//! says), with the log line that says why. Cases Heroku has that are covered
//! elsewhere are named in the comment of each table.
//!
//! One table per language, one loop: every case runs and every failure is
//! reported at the end, not only the first.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use e2e::apps::*;
use e2e::fixtures;

/// What a build of the fixture must come to.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// Builds, and the web process answers `GET /` with 200 and a body that
    /// starts with this.
    Serves(&'static str),
    /// Builds (serving would need more than the case is about).
    Builds,
    /// Refused: slugbuilder fails and writes no slug.
    Refused,
}

/// One peer fixture: our app, what Heroku's buildpack does with its own app
/// of the same case, and what ours must do.
struct Peer {
    /// The app: a directory under `tests/fixtures/apps`.
    fixture: &'static str,
    /// Files added to (or replacing files of) the fixture. `{stack-python}`
    /// in a file's content is replaced with the stack's Python version.
    files: &'static [(&'static str, &'static str)],
    /// Heroku's fixture of the case and its outcome there.
    heroku: &'static str,
    outcome: Outcome,
    /// Text the build log (slugbuilder's stderr) must contain.
    log: &'static [&'static str],
    /// Text it must not contain.
    not_in_log: &'static [&'static str],
    /// Cases with the same name share a cache dir (in table order), so
    /// that, e.g., Django is downloaded once; `None`: an empty cache.
    cache: Option<&'static str>,
}

/// The stack's Python (`3.11.2`), as the python buildpack finds it: the
/// newest `python3.X` in `/usr/local/bin` or `/usr/bin`.
fn stack_python() -> String {
    let out = Command::new("sh")
        .args([
            "-c",
            "for d in /usr/local/bin /usr/bin; do ls $d/python3.[0-9]* 2>/dev/null; done \
             | grep -E '/python3\\.[0-9]+$' | sort -t. -k2 -n | tail -n1",
        ])
        .output()
        .expect("run sh");
    let python = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!python.is_empty(), "no python3.X on this stack");
    let out = Command::new(&python)
        .args(["-c", "import platform; print(platform.python_version())"])
        .output()
        .expect("run the stack's python");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Build every case; return one message per case that did not end as
/// expected, and print how long each took.
fn run_cases(cases: &[Peer]) -> Vec<String> {
    let scratch = tempfile::tempdir().expect("tempdir");
    let python = stack_python();
    let mut failures = Vec::new();
    for peer in cases {
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| run_case(peer, &scratch, &python)));
        let what = format!(
            "{} {:?} (Heroku: {})",
            peer.fixture,
            peer.files.iter().map(|f| f.0).collect::<Vec<_>>(),
            peer.heroku
        );
        eprintln!("{what}: {:.1?}", started.elapsed());
        match result {
            Ok(problems) if problems.is_empty() => {}
            Ok(problems) => failures.push(format!("{what}:\n  {}", problems.join("\n  "))),
            Err(panic) => failures.push(format!("{what}:\n  {}", panic_message(panic))),
        }
    }
    failures
}

/// Build one case; what did not match, with the log.
fn run_case(peer: &Peer, scratch: &tempfile::TempDir, python: &str) -> Vec<String> {
    let case = Case::new();
    let files: Vec<(String, String)> = peer
        .files
        .iter()
        .map(|(p, c)| (p.to_string(), c.replace("{stack-python}", python)))
        .collect();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let source = tar_of(&fixtures().join("apps").join(peer.fixture), &files);
    let cache: PathBuf = match peer.cache {
        Some(name) => scratch.path().join(name),
        None => case.cache_dir(),
    };
    let mut cmd = case.slugbuilder_with_cache(&cache);
    cmd.arg("-o").arg(case.slug());
    let out = run_with_stdin(&mut cmd, source, BUILD_TIMEOUT);
    let log = &out.stderr;
    let mut problems = Vec::new();
    let built = out.code() == Some(0) && case.slug().is_file();
    match (peer.outcome, built) {
        (Outcome::Refused, true) => problems.push("built, but must be refused".to_string()),
        (Outcome::Refused, false) => {
            if out.code() == Some(0) {
                problems.push("exit 0 without a slug".to_string());
            }
        }
        (_, false) => problems.push(format!("not built (exit {:?})", out.code())),
        (_, true) => {}
    }
    for text in peer.log {
        let text = text.replace("{stack-python}", python);
        if !log.contains(&text) {
            problems.push(format!("no {text:?} in the log"));
        }
    }
    for text in peer.not_in_log {
        if log.contains(text) {
            problems.push(format!("{text:?} in the log"));
        }
    }
    if let (Outcome::Serves(body), true) = (peer.outcome, built) {
        // A web process that does not answer panics: one more problem.
        let served = catch_unwind(AssertUnwindSafe(|| {
            let mut web = case.start_web();
            let got = web.get_ok("/");
            web.stop();
            got
        }));
        match served {
            Ok(got) if got.starts_with(body) => {}
            Ok(got) => problems.push(format!("GET / answered {got:?}, not {body:?}...")),
            Err(panic) => problems.push(panic_message(panic)),
        }
    }
    if !problems.is_empty() {
        problems.push(format!("log:\n{log}"));
    }
    problems
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn assert_all(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} case(s) did not end as expected:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// heroku/buildpacks-python's fixtures. Covered elsewhere:
/// `python_version_requests_follow_heroku_and_uv_rules` (examples_python.rs:
/// python_version_non_existent_major/_minor, python_version_eol,
/// python_version_file_no_version, _multiple_versions, _invalid_version,
/// uv/poetry_mismatched_python_version), the flask, fastapi-uv and
/// flask-poetry examples (pip/uv/poetry basic), the django example
/// (django_staticfiles_latest_django). `multiple_package_managers`,
/// `pyproject_toml_only` and `runtime_txt` are deliberate differences
/// (buildpacks/README.md), kept here so that they stay deliberate.
#[test]
fn heroku_python_fixtures_end_as_there() {
    let cases = [
        Peer {
            fixture: "python-pip-basic",
            files: &[],
            heroku: "pip_basic: builds",
            outcome: Outcome::Serves("six 1.17.0\n"),
            log: &[
                "-----> Python app detected",
                "-----> Installing dependencies with pip (requirements.txt)",
                "Successfully installed six-1.17.0",
            ],
            not_in_log: &["Warning"],
            cache: Some("python"),
        },
        Peer {
            fixture: "python-pip-basic",
            files: &[(".python-version", "3.11\n")],
            heroku: "python_3.11: builds with the newest 3.11",
            outcome: Outcome::Builds,
            log: &["-----> Using Python 3.11.", "from .python-version)"],
            not_in_log: &["Warning"],
            cache: Some("python"),
        },
        Peer {
            fixture: "python-pip-basic",
            files: &[(".python-version", "# the exact release\n{stack-python}\n")],
            heroku: "python_version_file with X.Y.Z: builds with that release",
            outcome: Outcome::Builds,
            log: &["-----> Using Python {stack-python} (", "from .python-version)"],
            not_in_log: &["Warning"],
            cache: Some("python"),
        },
        Peer {
            fixture: "python-pip-basic",
            files: &[(
                "pyproject.toml",
                "[project]\nname = \"x\"\nversion = \"1\"\nrequires-python = \">=3.11\"\n",
            )],
            heroku: "python_version_unspecified: builds with a default version",
            outcome: Outcome::Builds,
            log: &["-----> Using Python 3.11.", "the newest available"],
            not_in_log: &["Warning"],
            cache: Some("python"),
        },
        Peer {
            fixture: "python-pip-basic",
            files: &[("requirements.txt", "an-invalid-requirement!\n")],
            heroku: "pip_invalid_requirement: refused with pip's error",
            outcome: Outcome::Refused,
            log: &[
                "ERROR: Invalid requirement: 'an-invalid-requirement!'",
                "-----> Error: pip could not download or build the dependencies",
            ],
            not_in_log: &[],
            cache: Some("python"),
        },
        Peer {
            fixture: "python-version-invalid-unicode",
            files: &[],
            heroku: "python_version_file_invalid_unicode: refused, not UTF-8",
            outcome: Outcome::Refused,
            log: &["-----> Error: Invalid Python version '3.1\\xff\\xfe2' in .python-version", "Available on this stack: 3."],
            not_in_log: &["Installing"],
            cache: None,
        },
        Peer {
            fixture: "python-uv-stale-lock",
            files: &[],
            heroku: "uv_lockfile_out_of_sync: refused with uv's error",
            outcome: Outcome::Refused,
            log: &[
                "The lockfile at `uv.lock` needs to be updated, but `--locked` was provided.",
                "-----> Error: uv sync failed",
            ],
            not_in_log: &[],
            cache: Some("python"),
        },
        Peer {
            fixture: "python-poetry-stale-lock",
            files: &[],
            heroku: "poetry_lockfile_out_of_sync: refused, run poetry lock",
            outcome: Outcome::Refused,
            log: &["six is a dependency in pyproject.toml but is not in poetry.lock: run 'poetry lock'"],
            not_in_log: &["Successfully installed"],
            cache: Some("python"),
        },
        Peer {
            fixture: "empty",
            files: &[],
            heroku: "empty: no buildpack detects it",
            outcome: Outcome::Refused,
            log: &["no buildpack applies to this app"],
            not_in_log: &[],
            cache: None,
        },
        Peer {
            fixture: "python-django-checks",
            files: &[],
            heroku: "django_staticfiles_legacy_django: collectstatic runs",
            outcome: Outcome::Builds,
            log: &["-----> Running Django collectstatic", "1 static file copied"],
            not_in_log: &[],
            cache: Some("django"),
        },
        Peer {
            fixture: "python-django-checks",
            files: &[(
                "testproject/settings.py",
                "SECRET_KEY = 'x'\nINSTALLED_APPS = []\nROOT_URLCONF = 'testproject.urls'\n",
            )],
            heroku: "django_staticfiles_app_not_enabled: builds, skips collectstatic",
            outcome: Outcome::Builds,
            log: &["-----> Skipping Django collectstatic (django.contrib.staticfiles is not in INSTALLED_APPS)"],
            not_in_log: &["-----> Running Django collectstatic"],
            cache: Some("django"),
        },
        Peer {
            fixture: "python-django-checks",
            files: &[(
                "testproject/settings.py",
                "SECRET_KEY = 'x'\nINSTALLED_APPS = ['django.contrib.staticfiles']\n\
                 ROOT_URLCONF = 'testproject.urls'\n",
            )],
            heroku: "django_staticfiles_misconfigured: refused, collectstatic fails",
            outcome: Outcome::Refused,
            log: &[
                "You're using the staticfiles app without having set the required STATIC_URL setting.",
                "-----> Error: collectstatic failed",
            ],
            not_in_log: &[],
            cache: Some("django"),
        },
        Peer {
            fixture: "python-django-checks",
            files: &[(
                "manage.py",
                "import os, sys\nos.environ['DJANGO_SETTINGS_MODULE'] = 'nonexistent-module'\n\
                 from django.core.management import execute_from_command_line\n\
                 execute_from_command_line(sys.argv)\n",
            )],
            heroku: "django_invalid_settings_module: refused, settings do not load",
            outcome: Outcome::Refused,
            log: &[
                "No module named 'nonexistent-module'",
                "-----> Error: 'manage.py help collectstatic' failed",
            ],
            not_in_log: &[],
            cache: Some("django"),
        },
        Peer {
            fixture: "python-django-no-manage",
            files: &[],
            heroku: "django_no_manage_py: builds, no collectstatic",
            outcome: Outcome::Builds,
            log: &["-----> Python app detected"],
            not_in_log: &["collectstatic"],
            cache: Some("django"),
        },
        // Deliberate differences (buildpacks/README.md).
        Peer {
            fixture: "python-pip-basic",
            files: &[("Pipfile.lock", "{}\n"), ("uv.lock", "version = 1\n")],
            heroku: "multiple_package_managers: refused",
            outcome: Outcome::Serves("six 1.17.0\n"),
            log: &[
                "-----> Warning: uv.lock is not used: dependencies come from requirements.txt",
                "-----> Warning: Pipfile.lock is not used: dependencies come from requirements.txt",
            ],
            not_in_log: &[],
            cache: Some("python"),
        },
        Peer {
            fixture: "python-pyproject-only",
            files: &[],
            heroku: "pyproject_toml_only: refused, no package manager file",
            outcome: Outcome::Serves("six 1.17.0\n"),
            log: &["-----> Installing the app and its dependencies with pip (pip install .)"],
            not_in_log: &[],
            cache: Some("python"),
        },
        Peer {
            fixture: "python-pip-basic",
            files: &[("runtime.txt", "python-3.11\n")],
            heroku: "runtime_txt: refused, replaced by .python-version",
            outcome: Outcome::Builds,
            log: &["-----> Using Python 3.11.", "from runtime.txt)"],
            not_in_log: &[],
            cache: Some("python"),
        },
    ];
    assert_all(run_cases(&cases));
}

/// heroku/buildpacks-nodejs's fixtures. Covered elsewhere (examples_node.rs):
/// engines.node ranges and versions (`semver_ranges_are_read_as_npm_reads_them`,
/// `engines_node_*`, `unknown_or_invalid_versions_fail_with_one_clear_line`),
/// npm-engine-project (`engines_npm_installs_that_npm`), pnpm-7/8/9 and
/// yarn-2/3/4 modules and PnP (`pnpm_7_and_8_...`, `a_checked_in_yarn_release_...`).
/// `dependencies-missing-lockfile` and the build scripts are deliberate
/// differences (buildpacks/README.md), kept here so that they stay deliberate.
#[test]
fn heroku_nodejs_fixtures_end_as_there() {
    let cases = [
        Peer {
            fixture: "node-indexjs",
            files: &[],
            heroku: "node-with-indexjs: builds, web is node index.js",
            outcome: Outcome::Serves("index.js on v"),
            log: &[
                "-----> Default web process: node index.js (from index.js in the app)",
                "package.json declares no dependencies: there is nothing to pin",
            ],
            not_in_log: &["Warning"],
            cache: Some("node"),
        },
        Peer {
            fixture: "node-serverjs",
            files: &[],
            heroku: "node-with-serverjs: builds, web is node server.js",
            outcome: Outcome::Serves("server.js on v"),
            log: &["-----> Default web process: node server.js (from server.js in the app)"],
            not_in_log: &[],
            cache: Some("node"),
        },
        Peer {
            fixture: "node-yarn1",
            files: &[],
            heroku: "yarn-project: builds with yarn 1",
            outcome: Outcome::Serves("one minute is 60000 ms\n"),
            log: &[
                "-----> Installing dependencies with yarn 1.22.",
                "yarn install v1.22.",
            ],
            not_in_log: &[],
            cache: Some("node"),
        },
        Peer {
            fixture: "node-pnpm-workspace",
            files: &[],
            heroku: "pnpm-10-workspace: builds, serves from a workspace package",
            outcome: Outcome::Serves(
                "hello web from the greeting workspace package\nms: pruned\n",
            ),
            log: &[
                "-----> Installing dependencies with pnpm 9.15.0",
                "Scope: all 3 workspace projects",
                "Running: pnpm install --prod --frozen-lockfile --ignore-scripts",
            ],
            not_in_log: &[],
            cache: Some("node"),
        },
        Peer {
            fixture: "node-indexjs",
            files: &[("package.json", "{\"name\": \"broken\",\n")],
            heroku: "invalid package.json: refused",
            outcome: Outcome::Refused,
            log: &["-----> Error: package.json is not valid JSON"],
            not_in_log: &["Installing dependencies"],
            cache: None,
        },
        // Deliberate differences (buildpacks/README.md).
        Peer {
            fixture: "node-npm-scripts",
            files: &[],
            heroku: "npm-project + build scripts: npm ci; heroku-prebuild, build and heroku-postbuild all run",
            outcome: Outcome::Serves("prebuild prebuild-ran\nbuild none\npostbuild 1m\n"),
            log: &[
                "(npm ci)",
                "-----> Running heroku-prebuild",
                "-----> Running heroku-postbuild",
            ],
            // As Heroku's classic buildpack: heroku-postbuild replaces build.
            not_in_log: &["-----> Running build"],
            cache: Some("node"),
        },
        Peer {
            fixture: "node-no-lockfile",
            files: &[],
            heroku: "dependencies-missing-lockfile: refused",
            outcome: Outcome::Serves("one minute is 60000 ms\n"),
            log: &[
                "(npm install, no lockfile)",
                "-----> Warning: No package-lock.json: dependency versions are not pinned",
            ],
            not_in_log: &[],
            cache: Some("node"),
        },
    ];
    assert_all(run_cases(&cases));
}
