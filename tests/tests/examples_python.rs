//! End-to-end tests of the bundled python buildpack: example apps under
//! `examples/` built by the real slugbuilder and served by the real
//! slugrunner. Needs PyPI and the stack's python3.

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::apps::*;
use e2e::repo_root;
use e2e::slugs::run_with_timeout;
use sha2::{Digest, Sha256};

fn sha256_of(path: &Path) -> String {
    format!(
        "{:x}",
        Sha256::digest(std::fs::read(path).expect("read slug"))
    )
}

/// Builds `source` twice and checks that both slugs are the same bytes: first
/// with an empty cache at another path (cold), then, with that cache moved to
/// the case's own cache dir, warm. Each build also gets its own random build
/// dir. Returns both logs; the case's slug is the second build's.
fn build_cold_then_warm(case: &Case, source: impl Fn() -> Vec<u8>) -> (String, String) {
    let cold_cache = case.path("cache-cold");
    let cold_slug = case.path("cold.tgz");
    let mut cmd = case.slugbuilder_with_cache(&cold_cache);
    cmd.arg("-o").arg(&cold_slug);
    let out = run_with_stdin(&mut cmd, source(), BUILD_TIMEOUT);
    assert_eq!(
        out.code(),
        Some(0),
        "cold build failed\nstderr: {}",
        out.stderr
    );
    std::fs::rename(&cold_cache, case.cache_dir()).expect("move the cache");
    let warm = case.build(source());
    assert_eq!(
        sha256_of(&cold_slug),
        sha256_of(&case.slug()),
        "the same app gave different slugs with a cold and a warm cache\ncold build:\n{}\nwarm build:\n{warm}",
        out.stderr
    );
    (out.stderr, warm)
}

/// Paths of the slug's installed distributions (`name-version.dist-info`).
fn installed_dists(slug: &Path) -> Vec<String> {
    slug_entries(slug)
        .into_iter()
        .filter(|p| p.starts_with(".heroku/python/lib/") && p.ends_with(".dist-info"))
        .filter_map(|p| p.rsplit('/').next().map(str::to_lowercase))
        .collect()
}

#[test]
fn django_example_migrates_collects_static_serves_and_rebuilds_identically() {
    let case = Case::new();
    let (log, warm) = build_cold_then_warm(&case, || example_tar("django"));
    assert!(log.contains("-----> Python app detected"), "{log}");
    assert!(log.contains("-----> Running Django collectstatic"), "{log}");
    assert!(log.contains("1 static file copied"), "{log}");
    // The web process is the buildpack's default; the Procfile has `release`.
    assert!(
        log.contains(
            "Inferred web process: gunicorn mysite.wsgi --bind 0.0.0.0:$PORT (from mysite/wsgi.py)"
        ),
        "{log}"
    );
    assert!(log.contains("Default types for buildpack -> web"), "{log}");
    // Nothing changed: the installed dependencies are reused, pip does not
    // run, and collectstatic still does (its output is the app's).
    assert!(
        warm.contains("-----> Reusing the installed dependencies (key "),
        "{warm}"
    );
    assert!(!warm.contains("Installing dependencies with pip"), "{warm}");
    assert!(
        warm.contains("-----> Running Django collectstatic"),
        "{warm}"
    );

    let release = case.run("release");
    assert_eq!(
        release.code(),
        Some(0),
        "release failed\nstdout: {}\nstderr: {}",
        release.stdout,
        release.stderr
    );
    assert!(
        release.stdout.contains("Applying notes.0001_initial... OK"),
        "stdout: {}\nstderr: {}",
        release.stdout,
        release.stderr
    );

    let mut web = case.start_web();
    assert_eq!(web.get_ok("/"), "Hello from Django on slugrunner!\n");
    assert_eq!(web.get_ok("/static/hello.txt"), "Hello, static world!\n");
    // Writes a row: needs the table the release process created.
    assert_eq!(web.get_ok("/notes/"), "notes: 1\n");
    web.stop();
}

#[test]
fn flask_example_serves_and_a_warm_rebuild_downloads_nothing_and_is_identical() {
    let case = Case::new();
    let (first, second) = build_cold_then_warm(&case, || example_tar("flask"));
    assert!(first.contains("-----> Python app detected"), "{first}");
    assert!(
        first.contains("No cached wheels yet (first build)"),
        "{first}"
    );
    // Current build tools from PyPI, not the stack's ensurepip ones.
    assert!(
        first.contains("Installing pip 26.3, setuptools 81.0.0, wheel 0.48.0"),
        "{first}"
    );
    // The Procfile declares web: nothing is inferred.
    assert!(!first.contains("Inferred web process"), "{first}");

    assert!(
        first.contains("Kept the installed dependencies for the next build (key "),
        "{first}"
    );
    // Same app, same cache (moved): the installed virtualenv is reused, pip
    // does not run.
    assert!(
        second.contains("-----> Reusing the installed dependencies (key "),
        "{second}"
    );
    assert!(
        !second.contains("Installing dependencies with pip"),
        "{second}"
    );
    assert!(!second.contains("Downloading "), "{second}");

    // Old packages (gunicorn 20) import pkg_resources at run time without
    // declaring setuptools: the virtualenv's setuptools still has it.
    let mut cmd = case.slugrunner();
    cmd.args([
        "exec",
        "python",
        "-W",
        "ignore",
        "-c",
        "import pkg_resources",
    ]);
    let imported = run_with_timeout(&mut cmd, std::time::Duration::from_secs(60));
    assert!(imported.status.success(), "{}", imported.stderr);

    let mut web = case.start_web();
    assert_eq!(web.get_ok("/"), "Hello from Flask on slugrunner!\n");
    web.stop();
}

#[test]
fn fastapi_uv_example_installs_the_lock_with_uv_and_infers_uvicorn() {
    let case = Case::new();
    let (log, warm) = build_cold_then_warm(&case, || example_tar("fastapi-uv"));
    assert!(
        log.contains("Installing uv 0.13.9 from the package index"),
        "{log}"
    );
    assert!(
        log.contains("-----> Installing dependencies with uv (uv.lock)"),
        "{log}"
    );
    assert!(log.contains("+ fastapi==0.165.0"), "{log}");
    assert!(
        log.contains(
            "Inferred web process: uvicorn main:app --host 0.0.0.0 --port $PORT (from main.py)"
        ),
        "{log}"
    );
    // Nothing changed: the installed environment is reused, uv not run.
    assert!(
        warm.contains("-----> Reusing the installed dependencies (key "),
        "{warm}"
    );
    assert!(!warm.contains("Installing dependencies with uv"), "{warm}");
    assert!(!warm.contains("Downloading "), "{warm}");
    // A config var is part of the layer's key: with one set, uv installs
    // again, from the cached uv and its cache, downloading nothing.
    let mut cmd = case.slugbuilder();
    cmd.args(["-e", "LAYER_KEY_TEST=1", "-o"]).arg(case.slug());
    let out = run_with_stdin(&mut cmd, example_tar("fastapi-uv"), BUILD_TIMEOUT);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let rekeyed = out.stderr;
    assert!(
        rekeyed.contains("-----> Installing dependencies with uv (uv.lock)"),
        "{rekeyed}"
    );
    assert!(rekeyed.contains("Using the cached uv 0.13.9"), "{rekeyed}");
    assert!(!rekeyed.contains("Downloading "), "{rekeyed}");
    // Exactly the lock's versions; the dev group (pytest) is not installed.
    let dists = installed_dists(&case.slug());
    for pinned in [
        "fastapi-0.165.0.dist-info",
        "starlette-1.10.0.dist-info",
        "uvicorn-0.54.0.dist-info",
    ] {
        assert!(dists.iter().any(|d| d == pinned), "{pinned}: {dists:?}");
    }
    assert!(!dists.iter().any(|d| d.starts_with("pytest-")), "{dists:?}");

    let mut web = case.start_web();
    assert_eq!(web.get_ok("/"), "Hello from FastAPI (uv) on slugrunner!\n");
    web.stop();
}

#[test]
fn flask_poetry_example_installs_the_main_group_with_hashes_and_builds_an_sdist() {
    let case = Case::new();
    let log = case.build(example_tar("flask-poetry"));
    assert!(
        log.contains("-----> Installing dependencies with pip (poetry.lock, main group)"),
        "{log}"
    );
    // langdetect is published only as an sdist (setup.py): it is built.
    assert!(log.contains("Building wheel for langdetect"), "{log}");
    assert!(
        log.contains("Inferred web process: gunicorn app:app --bind 0.0.0.0:$PORT (from app.py)"),
        "{log}"
    );
    let dists = installed_dists(&case.slug());
    for pinned in [
        "flask-3.1.3.dist-info",
        "langdetect-1.0.9.dist-info",
        "gunicorn-23.0.0.dist-info",
    ] {
        assert!(dists.iter().any(|d| d == pinned), "{pinned}: {dists:?}");
    }
    assert!(!dists.iter().any(|d| d.starts_with("pytest-")), "{dists:?}");

    let mut web = case.start_web();
    assert_eq!(
        web.get_ok("/"),
        "Hello from Flask (Poetry) on slugrunner!\n"
    );
    assert_eq!(
        web.get_ok("/detect?text=Bonjour%20tout%20le%20monde%2C%20comment%20allez-vous"),
        "fr\n"
    );
    web.stop();
    // slugrunner unpacked the slug, virtualenv included, into the app dir.
    check_poetry_lock_without_groups(&case.app_dir().join(".heroku/python/bin/python"));

    // A lock whose hash does not match what the index serves is refused,
    // even when the cache already holds the file.
    let lock = std::fs::read_to_string(repo_root().join("examples/flask-poetry/poetry.lock"))
        .expect("read poetry.lock");
    let mut tampered = lock.clone();
    for six_file in [
        "sha256:4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274",
        "sha256:ff70335d468e7eb6ec65b95b99d3a2836546063f63acc5171de367e834932a81",
    ] {
        assert!(lock.contains(six_file), "six's hashes are in the lock");
        tampered = tampered.replace(six_file, &format!("sha256:{}", "0".repeat(64)));
    }
    let source = tar_of(
        &repo_root().join("examples/flask-poetry"),
        &[("poetry.lock", tampered.as_str())],
    );
    let mut cmd = case.slugbuilder();
    let out = run_with_stdin(&mut cmd, source, BUILD_TIMEOUT);
    assert_ne!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(out.stdout.is_empty(), "a slug was written to stdout");
    assert!(
        out.stderr.contains("DO NOT MATCH THE HASHES"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("-----> Error: pip could not download or build the dependencies"),
        "{}",
        out.stderr
    );
}

/// A lock-version 2.0 lock (Poetry 1.x) records no groups: the main group is
/// what the pyproject's main dependencies reach. Checked with the converter
/// and the virtualenv (it needs pip's `packaging`) of a built slug.
fn check_poetry_lock_without_groups(venv_python: &Path) {
    let dir = repo_root().join("examples/flask-poetry");
    let lock = std::fs::read_to_string(dir.join("poetry.lock")).expect("read poetry.lock");
    let old_lock: String = lock
        .lines()
        .filter(|l| !l.starts_with("groups = ") && !l.starts_with("markers = "))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replace("lock-version = \"2.1\"", "lock-version = \"2.0\"");
    let pyproject = "[tool.poetry]\nname = \"x\"\nversion = \"0.1.0\"\ndescription = \"\"\n\
        authors = []\npackage-mode = false\n\n[tool.poetry.dependencies]\npython = \"^3.11\"\n\
        Flask = \"^3.1\"\ngunicorn = \"^23\"\nlangdetect = \"1.0.9\"\n\n\
        [tool.poetry.group.dev.dependencies]\npytest = \"^9\"\n";
    let app = tempfile::tempdir().expect("tempdir");
    std::fs::write(app.path().join("poetry.lock"), old_lock).expect("write lock");
    std::fs::write(app.path().join("pyproject.toml"), pyproject).expect("write pyproject");
    let out = |name: &str| app.path().join(name);
    let run = run_with_timeout(
        Command::new(venv_python)
            .arg("-I")
            .arg("-B")
            .arg(repo_root().join("buildpacks/python/lib/poetry_lock.py"))
            .arg(app.path())
            .arg(out("hashed.txt"))
            .arg(out("plain.txt")),
        RUN_TIMEOUT,
    );
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    let plain = std::fs::read_to_string(out("plain.txt")).expect("plain requirements");
    assert_eq!(
        plain,
        "blinker==1.9.0\nclick==8.5.1\nflask==3.1.3\ngunicorn==23.0.0\nitsdangerous==2.2.0\n\
         jinja2==3.1.6\nlangdetect==1.0.9\nmarkupsafe==3.0.4\npackaging==26.4\nsix==1.17.0\n\
         werkzeug==3.1.9\n"
    );
    let hashed = std::fs::read_to_string(out("hashed.txt")).expect("hashed requirements");
    assert!(
        hashed.contains(
            "six==1.17.0 --hash=sha256:4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274"
        ),
        "{hashed}"
    );
}

#[test]
fn streamlit_example_without_procfile_is_run_with_streamlit() {
    let started = std::time::Instant::now();
    let case = Case::new();
    let log = case.build(example_tar("streamlit"));
    assert!(
        log.contains(
            "Inferred web process: streamlit run streamlit_app.py --server.port $PORT \
             --server.address 0.0.0.0 --server.headless true (from streamlit_app.py)"
        ),
        "{log}"
    );
    let built = started.elapsed();
    let mut web = case.start_web();
    assert_eq!(web.get_ok("/_stcore/health"), "ok");
    assert!(web.get_ok("/").contains("Streamlit"));
    web.stop();
    eprintln!("streamlit: build {built:?}, total {:?}", started.elapsed());
}

#[test]
fn source_packages_build_from_hashed_requirements_and_one_that_cannot_build_fails() {
    let case = Case::new();
    let setup = "from setuptools import setup\n\
        raise SystemExit('error: this package needs libfrobnicate, which is not installed')\n\
        setup(name='needs-native-lib', version='1.0')\n";
    let source = tar_of(
        &repo_root().join("examples/flask"),
        &[
            (
                "requirements.txt",
                "Flask==3.1.3\n./vendor/needs-native-lib\n",
            ),
            ("vendor/needs-native-lib/setup.py", setup),
        ],
    );
    let mut cmd = case.slugbuilder();
    let out = run_with_stdin(&mut cmd, source, BUILD_TIMEOUT);
    assert_ne!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(out.stdout.is_empty(), "a slug was written to stdout");
    // pip's own report, with the package's message, then ours.
    assert!(
        out.stderr
            .contains("error: this package needs libfrobnicate, which is not installed"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("subprocess-exited-with-error"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("-----> Error: pip could not download or build the dependencies"),
        "{}",
        out.stderr
    );

    // pip-compile --generate-hashes style, with langdetect, which PyPI has
    // only as an sdist: the hashes are checked on download, and the wheel
    // built from the sdist (whose hash is not in the file) still installs
    // from the wheel cache.
    let hashed = "langdetect==1.0.9 \\\n    \
        --hash=sha256:7cbc0746252f19e76f77c0b1690aadf01963be835ef0cd4b56dddf2a8f1dfc2a \\\n    \
        --hash=sha256:cbc1fef89f8d062739774bd51eda3da3274006b3661d199c2655f6b3f6d605a0\n\
        six==1.17.0 \\\n    \
        --hash=sha256:4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274 \\\n    \
        --hash=sha256:ff70335d468e7eb6ec65b95b99d3a2836546063f63acc5171de367e834932a81\n";
    let log = case.build(tar_of(
        &repo_root().join("examples/flask"),
        &[("requirements.txt", hashed)],
    ));
    assert!(log.contains("Building wheel for langdetect"), "{log}");
    assert!(
        log.contains("Successfully installed langdetect-1.0.9 six-1.17.0"),
        "{log}"
    );
    assert!(!log.contains("DO NOT MATCH THE HASHES"), "{log}");
    assert!(!log.contains("Retrying with the package index"), "{log}");
}

#[test]
fn collectstatic_that_cannot_load_the_settings_fails_unless_disabled() {
    let case = Case::new();
    let dir = repo_root().join("examples/django");
    let settings = std::fs::read_to_string(dir.join("mysite/settings.py")).expect("settings");
    let settings = format!(
        "{settings}\n# Needs the database URL even to load.\n\
         DATABASES[\"default\"][\"NAME\"] = os.environ[\"DATABASE_URL\"]\n"
    );
    let source = || tar_of(&dir, &[("mysite/settings.py", settings.as_str())]);

    let mut cmd = case.slugbuilder();
    let out = run_with_stdin(&mut cmd, source(), BUILD_TIMEOUT);
    assert_ne!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(out.stdout.is_empty(), "a slug was written to stdout");
    assert!(
        out.stderr.contains("KeyError: 'DATABASE_URL'"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(
            "-----> Error: 'manage.py help collectstatic' failed, so static files cannot be collected"
        ),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("has no collectstatic command"),
        "{}",
        out.stderr
    );

    // As on Heroku, DISABLE_COLLECTSTATIC skips the step.
    let mut cmd = case.slugbuilder();
    cmd.args(["-e", "DISABLE_COLLECTSTATIC=1", "-o"])
        .arg(case.slug());
    let out = run_with_stdin(&mut cmd, source(), BUILD_TIMEOUT);
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(
        out.stderr
            .contains("-----> Skipping Django collectstatic (DISABLE_COLLECTSTATIC is set)"),
        "{}",
        out.stderr
    );
    assert!(case.slug().is_file());
}

/// An app tree for [`infer`]: files, console scripts in the virtualenv and
/// installed distributions.
struct Layout<'a> {
    files: &'a [(&'a str, &'a str)],
    scripts: &'a [&'a str],
    dists: &'a [&'a str],
    flask_app: Option<&'a str>,
}

/// What lib/infer_web.py prints for an app laid out as `layout`.
fn infer(layout: &Layout) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |rel: &str, content: &str| {
        let path: PathBuf = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).expect("mkdir");
        std::fs::write(path, content).expect("write");
    };
    for (rel, content) in layout.files {
        write(rel, content);
    }
    for script in layout.scripts {
        write(&format!(".heroku/python/bin/{script}"), "#!/bin/sh\n");
    }
    for dist in layout.dists {
        write(
            &format!(".heroku/python/lib/python3.11/site-packages/{dist}-1.0.dist-info/METADATA"),
            "",
        );
    }
    let mut cmd = Command::new("python3");
    cmd.arg("-I")
        .arg("-B")
        .arg(repo_root().join("buildpacks/python/lib/infer_web.py"))
        .arg(dir.path())
        .env_remove("FLASK_APP");
    if let Some(value) = layout.flask_app {
        cmd.env("FLASK_APP", value);
    }
    let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    out.stdout.trim_end().to_string()
}

/// `manage.py` of a Django project named mysite.
const MANAGE_PY: &str =
    "import os\nos.environ.setdefault(\"DJANGO_SETTINGS_MODULE\", \"mysite.settings\")\n";
const FLASK_APP_PY: &str = "from flask import Flask\napp = Flask(__name__)\n";
const FLASK_FACTORY: &str =
    "from flask import Flask\n\ndef create_app():\n    return Flask(__name__)\n";
const FASTAPI_APP: &str = "from fastapi import FastAPI\napp = FastAPI()\n";
const STREAMLIT_APP: &str = "import streamlit as st\nst.title('hi')\n";
const NO_LAYOUT: Layout<'static> = Layout {
    files: &[],
    scripts: &[],
    dists: &[],
    flask_app: None,
};

/// A layout, what it is, and what [`infer`] must print for it.
type InferenceCase = (&'static str, Layout<'static>, &'static str);

/// Django projects: WSGI or ASGI, by the server installed.
fn django_cases() -> Vec<InferenceCase> {
    vec![
        (
            "Django, WSGI and ASGI, gunicorn installed",
            Layout {
                files: &[
                    ("manage.py", MANAGE_PY),
                    ("mysite/wsgi.py", ""),
                    ("mysite/asgi.py", ""),
                ],
                scripts: &["gunicorn", "uvicorn"],
                ..NO_LAYOUT
            },
            "web\tgunicorn mysite.wsgi --bind 0.0.0.0:$PORT\tmysite/wsgi.py",
        ),
        (
            "Django, ASGI only, uvicorn",
            Layout {
                files: &[("manage.py", MANAGE_PY), ("mysite/asgi.py", "")],
                scripts: &["uvicorn", "gunicorn"],
                ..NO_LAYOUT
            },
            "web\tuvicorn mysite.asgi:application --host 0.0.0.0 --port $PORT\tmysite/asgi.py",
        ),
        (
            "Django, ASGI only, daphne",
            Layout {
                files: &[("manage.py", MANAGE_PY), ("mysite/asgi.py", "")],
                scripts: &["daphne"],
                ..NO_LAYOUT
            },
            "web\tdaphne --bind 0.0.0.0 --port $PORT mysite.asgi:application\tmysite/asgi.py",
        ),
        (
            "Django, no server installed",
            Layout {
                files: &[("manage.py", MANAGE_PY), ("mysite/wsgi.py", "")],
                ..NO_LAYOUT
            },
            "warn\tthe Django project mysite has no server installed to run it: add gunicorn \
         (or waitress) to the dependencies, or declare web in a Procfile",
        ),
    ]
}

/// Flask apps: an app object, a factory, an import from the project, FLASK_APP.
fn flask_cases() -> Vec<InferenceCase> {
    vec![
        (
            "Flask app object in app.py",
            Layout {
                files: &[("app.py", FLASK_APP_PY)],
                scripts: &["gunicorn", "flask"],
                ..NO_LAYOUT
            },
            "web\tgunicorn app:app --bind 0.0.0.0:$PORT\tapp.py",
        ),
        (
            "Flask factory in wsgi.py, waitress",
            Layout {
                files: &[("wsgi.py", FLASK_FACTORY)],
                scripts: &["waitress-serve"],
                ..NO_LAYOUT
            },
            "web\twaitress-serve --listen=0.0.0.0:$PORT --call wsgi:create_app\twsgi.py",
        ),
        (
            "wsgi.py importing the app from the project, Flask installed",
            Layout {
                files: &[
                    (
                        "wsgi.py",
                        "from hello import create_app\napp = create_app()\n",
                    ),
                    ("hello/__init__.py", FLASK_FACTORY),
                ],
                scripts: &["gunicorn"],
                dists: &["flask"],
                ..NO_LAYOUT
            },
            "web\tgunicorn wsgi:app --bind 0.0.0.0:$PORT\twsgi.py",
        ),
        (
            "FLASK_APP names a package with a factory",
            Layout {
                files: &[
                    ("hello/__init__.py", FLASK_FACTORY),
                    ("app.py", FASTAPI_APP),
                ],
                scripts: &["gunicorn", "uvicorn"],
                flask_app: Some("hello"),
                ..NO_LAYOUT
            },
            "web\tgunicorn 'hello:create_app()' --bind 0.0.0.0:$PORT\thello/__init__.py, FLASK_APP",
        ),
        (
            "FLASK_APP names a package in src/ (installed from pyproject.toml)",
            Layout {
                files: &[("src/hello/__init__.py", FLASK_APP_PY)],
                scripts: &["gunicorn"],
                flask_app: Some("hello"),
                ..NO_LAYOUT
            },
            "web\tgunicorn hello:app --bind 0.0.0.0:$PORT\tsrc/hello/__init__.py, FLASK_APP",
        ),
        (
            "FLASK_APP calls a factory with arguments",
            Layout {
                files: &[("hello/__init__.py", FLASK_FACTORY)],
                scripts: &["gunicorn"],
                flask_app: Some("hello:create_app('prod')"),
                ..NO_LAYOUT
            },
            "web\tgunicorn 'hello:create_app('\"'\"'prod'\"'\"')' --bind 0.0.0.0:$PORT\t\
         hello/__init__.py, FLASK_APP",
        ),
    ]
}

/// FastAPI and Streamlit apps, and an app with nothing to serve.
fn asgi_and_streamlit_cases() -> Vec<InferenceCase> {
    vec![
        (
            "FastAPI in main.py",
            Layout {
                files: &[("main.py", FASTAPI_APP)],
                scripts: &["uvicorn"],
                ..NO_LAYOUT
            },
            "web\tuvicorn main:app --host 0.0.0.0 --port $PORT\tmain.py",
        ),
        (
            "FastAPI in app/main.py, hypercorn",
            Layout {
                files: &[("app/__init__.py", ""), ("app/main.py", FASTAPI_APP)],
                scripts: &["hypercorn"],
                ..NO_LAYOUT
            },
            "web\thypercorn app.main:app --bind 0.0.0.0:$PORT\tapp/main.py",
        ),
        (
            "FastAPI, no server installed",
            Layout {
                files: &[("main.py", FASTAPI_APP)],
                ..NO_LAYOUT
            },
            "warn\tthe ASGI app `app` (main.py) has no server installed to run it: add uvicorn \
         (or hypercorn, daphne) to the dependencies, or declare web in a Procfile",
        ),
        (
            "Streamlit (which installs uvicorn too)",
            Layout {
                files: &[("streamlit_app.py", STREAMLIT_APP)],
                scripts: &["streamlit", "uvicorn"],
                dists: &["streamlit", "starlette"],
                ..NO_LAYOUT
            },
            "web\tstreamlit run streamlit_app.py --server.port $PORT --server.address 0.0.0.0 \
         --server.headless true\tstreamlit_app.py",
        ),
        (
            "Streamlit in a file of another name",
            Layout {
                files: &[("dashboard.py", STREAMLIT_APP), ("helpers.py", "X = 1\n")],
                scripts: &["streamlit"],
                ..NO_LAYOUT
            },
            "web\tstreamlit run dashboard.py --server.port $PORT --server.address 0.0.0.0 \
         --server.headless true\tdashboard.py",
        ),
        (
            "nothing to serve",
            Layout {
                files: &[("worker.py", "print('working')\n")],
                scripts: &["gunicorn"],
                ..NO_LAYOUT
            },
            "",
        ),
    ]
}

#[test]
fn web_process_inference_for_django_flask_fastapi_and_streamlit_layouts() {
    let cases = [django_cases(), flask_cases(), asgi_and_streamlit_cases()];
    for (what, layout, expected) in cases.into_iter().flatten() {
        assert_eq!(infer(&layout), expected, "{what}");
    }
}

#[test]
fn unavailable_python_version_fails_with_a_clear_message_and_no_slug() {
    let case = Case::new();
    let fails = |extra: &[(&str, &str)], args: &[&str], expected: &[&str]| {
        let source = tar_of(&repo_root().join("examples/flask"), extra);
        let mut cmd = case.slugbuilder();
        cmd.args(args);
        let out = run_with_stdin(&mut cmd, source, BUILD_TIMEOUT);
        assert_ne!(out.code(), Some(0), "stderr: {}", out.stderr);
        assert!(out.stdout.is_empty(), "a slug was written to stdout");
        for text in expected {
            assert!(out.stderr.contains(text), "{text:?} in {}", out.stderr);
        }
        assert!(!out.stderr.contains("Installing"), "{}", out.stderr);
    };
    // End of life (as on Heroku since January 2026): never replaced.
    fails(
        &[(".python-version", "2.7\n")],
        &[],
        &[
            "Python 2.7 (requested in .python-version) has reached its upstream end-of-life",
            "Available on this stack: 3.",
        ],
    );
    // The operator (or the app) asks for the exact version or nothing.
    fails(
        &[(".python-version", "3.14\n")],
        &["-e", "PYTHON_VERSION_STRICT=1"],
        &["Python 3.14 (requested in .python-version) is not available on this stack"],
    );
    // requires-python rules out every interpreter the stack has.
    fails(
        &[
            (".python-version", "3.14\n"),
            (
                "pyproject.toml",
                "[project]\nname = \"x\"\nversion = \"1\"\nrequires-python = \">=3.14\"\n",
            ),
        ],
        &[],
        &[
            "the app's requires-python",
            "'>=3.14' (pyproject.toml) allows none of them",
        ],
    );
}

/// A `.python-version` that names a release the stack lacks (uv init and
/// pyenv write the developer's own; Heroku's getting-started app asks for
/// 3.14, which the Debian 12 stack lacks) builds with the nearest interpreter its requires-python allows,
/// with a warning, and serves.
#[test]
fn an_unavailable_minor_version_builds_with_the_stack_python_and_a_warning() {
    let case = Case::new();
    let source = tar_of(
        &repo_root().join("examples/flask"),
        &[
            (".python-version", "3.14\n"),
            (
                "pyproject.toml",
                "[project]\nname = \"x\"\nversion = \"1\"\nrequires-python = \">=3.8\"\n",
            ),
        ],
    );
    let log = case.build(source);
    assert!(
        log.contains("Python 3.14 (requested in .python-version) is not available on this stack: building with Python 3."),
        "{log}"
    );
    assert!(
        log.contains("which requires-python '>=3.8' (pyproject.toml) allows"),
        "{log}"
    );
    assert!(
        log.contains("instead of 3.14 from .python-version"),
        "{log}"
    );
    let mut web = case.start_web();
    assert_eq!(web.get_ok("/"), "Hello from Flask on slugrunner!\n");
    web.stop();
}

/// A minimal Python app: `files` in an otherwise empty tree.
fn small_app(files: &[(&str, &str)]) -> Vec<u8> {
    let empty = tempfile::tempdir().expect("tempdir");
    tar_of(empty.path(), files)
}

/// A small app asking for Python `version` in `.python-version` and
/// `requires` in pyproject.toml's requires-python (each when given).
fn version_request_app(version: Option<&str>, requires: Option<&str>) -> Vec<u8> {
    let pyproject = requires
        .map(|r| format!("[project]\nname = \"x\"\nversion = \"1\"\nrequires-python = \"{r}\"\n"));
    let mut files = vec![("requirements.txt", ""), ("app.py", "print('hi')\n")];
    if let Some(v) = version {
        files.push((".python-version", v));
    }
    if let Some(p) = &pyproject {
        files.push(("pyproject.toml", p.as_str()));
    }
    small_app(&files)
}

/// The build of `source` fails before anything is installed, writes no
/// slug, and says each of `expected` (escaped: no raw escape reaches the
/// log).
fn fails_before_installing(case: &Case, source: Vec<u8>, expected: &[&str]) {
    let mut cmd = case.slugbuilder();
    let out = run_with_stdin(&mut cmd, source, BUILD_TIMEOUT);
    assert_ne!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(out.stdout.is_empty(), "a slug was written to stdout");
    for text in expected {
        assert!(out.stderr.contains(text), "{text:?} in {}", out.stderr);
    }
    assert!(!out.stderr.contains("Installing"), "{}", out.stderr);
    assert!(
        !out.stderr.contains('\u{1b}'),
        "a raw escape in {:?}",
        out.stderr
    );
}

/// Version requests as Heroku's buildpack and uv read them (issue 23):
/// versions never released, end of life or without a version line fail
/// before anything is installed; `.python-version` specifiers pick the
/// newest interpreter that satisfies them; requires-python (wildcards
/// included) is always read and a conflict fails; what the app wrote is
/// printed escaped. The stack is Debian 12's: Python 3.11 only.
#[test]
fn python_version_requests_follow_heroku_and_uv_rules() {
    let case = Case::new();
    let app = version_request_app;
    let fails = |source: Vec<u8>, expected: &[&str]| {
        fails_before_installing(&case, source, expected);
    };
    fails(
        app(Some("3.99\n"), None),
        &[
            "Python 3.99 (requested in .python-version) has never been released",
            "Available on this stack: 3.11.",
        ],
    );
    fails(
        app(Some("3.12.999\n"), None),
        &[
            "Python 3.12.999 (requested in .python-version) has never been released",
            "the newest 3.12 release is 3.12.",
        ],
    );
    fails(
        app(Some("3.9\n"), None),
        &["Python 3.9 (requested in .python-version) has reached its upstream end-of-life"],
    );
    fails(
        app(Some("# the version is set elsewhere\n\n"), None),
        &[
            "Invalid Python version in .python-version",
            "No Python version was found",
        ],
    );
    fails(
        app(Some("3.11\n3.12\n"), None),
        &["It names more than one Python version: '3.11', '3.12'."],
    );
    fails(
        app(Some("3.1\u{1b}[31m1\n"), None),
        &["Invalid Python version '3.1\\x1b[31m1' in .python-version"],
    );
    fails(
        app(Some("3.12.*\n"), None),
        &["No Python on this stack satisfies '3.12.*' (from .python-version)"],
    );
    fails(
        app(None, Some("3.12.*")),
        &["None of the Pythons on this stack satisfies the app's requires-python '3.12.*' (pyproject.toml)"],
    );
    fails(
        app(Some(">=3.10\n"), Some("<3.11")),
        &[
            "Python 3.11.",
            "does not satisfy the app's requires-python '<3.11' (pyproject.toml)",
        ],
    );
    fails(
        app(Some("3.11\n"), Some(">=3.8,\\u0007<4")),
        &["Invalid requires-python in pyproject.toml: '>=3.8,\\x07<4'"],
    );
    // Specifiers as uv reads them: the newest interpreter that satisfies them.
    for spec in [">=3.10", "~=3.11", "3.11.*", ">=3.10,<3.13"] {
        let log = case.build(app(Some(&format!("{spec}\n")), Some(">=3.8")));
        assert!(
            log.contains(&format!(
                "the newest available that '{spec}' from .python-version allows)"
            )),
            "{log}"
        );
        assert!(log.contains("-----> Using Python 3.11."), "{log}");
    }
}

/// An app with Python sources and a Procfile that runs `python`, and no
/// package-manager file, gets Python (with a warning that it declares no
/// dependencies) and serves, where it used to be built as a Procfile-only
/// app that failed at run time with `python: command not found`. A web
/// program that is neither in the slug nor on the stack is named in a
/// warning.
#[test]
fn a_python_app_without_a_package_manager_gets_python_and_unknown_web_programs_warn() {
    let case = Case::new();
    let server = "import http.server, os\n\
        class H(http.server.BaseHTTPRequestHandler):\n\
        \x20   def do_GET(self):\n\
        \x20       self.send_response(200)\n\
        \x20       self.end_headers()\n\
        \x20       self.wfile.write(b'plain python\\n')\n\
        http.server.HTTPServer(('0.0.0.0', int(os.environ['PORT'])), H).serve_forever()\n";
    let log = case.build(small_app(&[
        ("app.py", server),
        ("Procfile", "web: python app.py\n"),
    ]));
    assert!(log.contains("-----> Python app detected"), "{log}");
    assert!(
        log.contains("No dependencies declared: the app gets Python and its standard library only"),
        "{log}"
    );
    assert!(!log.contains("neither in the slug"), "{log}");
    let mut web = case.start_web();
    assert_eq!(web.get_ok("/"), "plain python\n");
    web.stop();

    // Not Python: a Procfile-only app whose web program exists nowhere.
    let other = Case::new();
    let log = other.build(small_app(&[
        ("Procfile", "web: FOO=1 my-server --port $PORT\n"),
        ("README", "prebuilt elsewhere\n"),
    ]));
    assert!(log.contains("-----> Procfile app detected"), "{log}");
    assert!(
        log.contains("Process type web: my-server is neither in the slug nor on the stack"),
        "{log}"
    );
}

/// Plant a `.pth` in the cached virtualenv base and in the layer of
/// installed dependencies, a wheel in the wheel cache and a file in pip's
/// cache (when there is one); returns the cache trees planted in.
fn plant_in_python_cache(case: &Case) -> Vec<&'static str> {
    let cache = case.cache_dir();
    let site_packages = |venv: PathBuf| {
        std::fs::read_dir(venv.join("lib"))
            .expect("venv lib")
            .next()
            .expect("a python3.X dir")
            .expect("dir entry")
            .path()
            .join("site-packages")
    };
    let base_site = site_packages(cache.join("python/base-venv"));
    std::fs::write(base_site.join("zz_planted.pth"), "import os\n").expect("plant .pth");
    // The layer is one tar of `python/`: a .pth appended to it.
    let planted_dir = case.path("planted");
    let python_x = base_site
        .parent()
        .and_then(Path::file_name)
        .expect("python3.X");
    let rel_site = Path::new("python/lib").join(python_x).join("site-packages");
    std::fs::create_dir_all(planted_dir.join(&rel_site)).expect("mkdir");
    std::fs::write(
        planted_dir.join(&rel_site).join("zz_layer.pth"),
        "import os\n",
    )
    .expect("plant .pth");
    let appended = Command::new("tar")
        .arg("-rf")
        .arg(cache.join("python/venv-layer/venv.tar"))
        .arg("-C")
        .arg(&planted_dir)
        .arg(rel_site.join("zz_layer.pth"))
        .status()
        .expect("run tar");
    assert!(appended.success());
    std::fs::write(
        cache.join("python/wheels/six-99.0-py2.py3-none-any.whl"),
        "not a wheel",
    )
    .expect("plant wheel");
    let mut planted = vec!["python/venv-layer", "python/base-venv", "python/wheels"];
    if cache.join("pip").is_dir() {
        std::fs::write(cache.join("pip/planted"), "x").expect("plant pip cache file");
        planted.push("pip");
    }
    planted
}

/// What a shared or leaked cache holds never reaches the slug: a `.pth`
/// planted in the layer of installed dependencies and in the cached
/// virtualenv base (it would run at every Python start), a wheel planted in
/// the wheel cache and a file in pip's cache are noticed by the digests
/// recorded when the trees were made, the trees are made again, and the
/// slug is the cold build's, byte for byte. Untouched, the layer is reused
/// without running pip; a changed requirements.txt installs again, from
/// the cached wheels plus the one that was added.
#[test]
fn files_planted_in_the_python_cache_never_reach_the_slug() {
    let case = Case::new();
    let source = |requirements: &str| {
        small_app(&[
            ("requirements.txt", requirements),
            ("app.py", "import six\n"),
        ])
    };
    let first = case.build(source("six==1.17.0\n"));
    assert!(
        first.contains("Kept the installed dependencies for the next build (key "),
        "{first}"
    );
    let cold = sha256_of(&case.slug());
    let planted = plant_in_python_cache(&case);
    let log = case.build(source("six==1.17.0\n"));
    for tree in planted {
        assert!(
            log.contains(&format!(
                "Cache {tree} does not match the digest recorded when it was made: discarded"
            )),
            "{tree} in {log}"
        );
    }
    assert!(!log.contains("Reusing the installed dependencies"), "{log}");
    assert!(
        !slug_entries(&case.slug())
            .iter()
            .any(|p| p.ends_with("zz_planted.pth") || p.ends_with("zz_layer.pth")),
        "a planted .pth is in the slug"
    );
    assert_eq!(sha256_of(&case.slug()), cold, "{log}");
    // Untouched, the layer made again is reused: pip does not run.
    let log = case.build(source("six==1.17.0\n"));
    assert!(!log.contains("discarded"), "{log}");
    assert!(
        log.contains("-----> Reusing the installed dependencies (key "),
        "{log}"
    );
    assert!(!log.contains("Installing dependencies with pip"), "{log}");
    assert_eq!(sha256_of(&case.slug()), cold, "{log}");
    // One dependency added: pip installs again, downloading only that one.
    let log = case.build(source("six==1.17.0\ntoml==0.10.2\n"));
    assert!(!log.contains("Reusing the installed dependencies"), "{log}");
    assert!(log.contains("Reusing the cached virtualenv base"), "{log}");
    assert!(log.contains("wheel cache: 1 new, 1 reused"), "{log}");
    let dists = installed_dists(&case.slug());
    assert!(
        dists.iter().any(|d| d.starts_with("toml-0.10.2"))
            && dists.iter().any(|d| d.starts_with("six-1.17.0")),
        "{dists:?}"
    );
}
