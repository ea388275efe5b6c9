//! The platform side (issue 15), with real servers started and stopped by
//! each test on 127.0.0.1: object storage URLs against moto's S3 server
//! (boto3 pre-signed GET/PUT), nginx WebDAV PUT and a fault-injecting
//! server of ours; the JSON build report; the git-push receiver
//! (`deploy/git-push`) over file:// and ssh; the Kubernetes manifests
//! validated with kubernetes-validate.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::apps::{free_port, http_get};
use e2e::builds::{assert_ok, shared_tempdir, stderr, App, Build};
use e2e::platform::{have, sha256, sha256_file, Fault, FaultServer, Moto, Nginx};
use e2e::slugs::{require_root, wait_until, Guarded};
use e2e::{bin, repo_root};
use serde_json::Value;

/// A buildpack that counts its builds in CACHE_DIR (so a restored cache
/// shows), leaves the count in the slug, prints a warning and declares a
/// web process serving the app dir.
fn counter_buildpack(dir: &Path) -> PathBuf {
    let bp = dir.join("counter");
    std::fs::create_dir_all(bp.join("bin")).unwrap();
    let files = [
        ("detect", "#!/usr/bin/env bash\necho Counter\n"),
        (
            "compile",
            r#"#!/usr/bin/env bash
set -euo pipefail
build=$1 cache=$2
n=0
if [[ -f $cache/count ]]; then n=$(<"$cache/count"); fi
n=$((n + 1))
echo "$n" >"$cache/count"
mkdir -p "$cache/deep/dir"
head -c 200000 /dev/urandom >"$cache/deep/dir/blob"
echo "-----> Counting"
echo "build number $n"
echo " !     counter warning $n"
echo "$n" >"$build/count"
"#,
        ),
        (
            "release",
            "#!/usr/bin/env bash\nprintf -- '---\\ndefault_process_types:\\n  web: python3 -m http.server $PORT\\n'\n",
        ),
    ];
    for (name, text) in files {
        let path = bp.join("bin").join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    bp
}

fn app() -> App {
    App::new(&[("index.html", "hello from object storage\n")])
}

fn read_report(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("no report at {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("report is not JSON ({e}): {text}"))
}

/// No pre-signed query string (or its signature) in anything printed.
fn assert_no_secrets(log: &str, urls: &[&str]) {
    for url in urls {
        if let Some((_, query)) = url.split_once('?') {
            assert!(
                !log.contains(query),
                "a URL query string was logged:\n{log}"
            );
            for part in query.split('&') {
                if let Some(("X-Amz-Signature" | "sig", value)) = part.split_once('=') {
                    assert!(!log.contains(value), "a signature was logged:\n{log}");
                }
            }
        }
    }
}

/// Run the slug at `slug_url` with slugrunner and GET `path` from it.
fn serve_slug_url(slug_url: &str, path: &str) -> String {
    let case = shared_tempdir();
    let port = free_port();
    let child = Command::new(bin("slugrunner"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("SLUG_URL", slug_url)
        .env("PORT", port.to_string())
        .arg("--app-dir")
        .arg(case.path().join("app"))
        .args(["--init", "--grace-period", "5", "start", "web"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let guard = Guarded::new(child);
    let mut body = None;
    wait_until(Duration::from_secs(30), || match http_get(port, path) {
        Ok((200, b)) => {
            body = Some(b);
            true
        }
        _ => false,
    });
    let _ = nix::sys::signal::kill(guard.pid(), nix::sys::signal::Signal::SIGTERM);
    let out = guard.output(Duration::from_secs(15));
    assert_no_secrets(&out.stderr, &[slug_url]);
    body.unwrap_or_else(|| panic!("slugrunner with SLUG_URL never answered:\n{}", out.stderr))
}

/// moto's S3 with boto3 pre-signed URLs: the source comes from a GET, the
/// slug goes up with a PUT, the cache goes down and up; the second build
/// finds the first one's cache; slugrunner runs the slug from its
/// pre-signed GET. No signature ever reaches the log.
#[test]
fn s3_presigned_source_slug_and_cache() {
    if !have("moto_server") {
        return;
    }
    let moto = Moto::start();
    let tmp = shared_tempdir();
    let bp = counter_buildpack(tmp.path());
    let src = tmp.path().join("src.tar");
    std::fs::write(&src, app().tar()).unwrap();
    moto.boto(&["put", "sources/app.tar", src.to_str().unwrap()]);
    let source_get = moto.presign("GET", "sources/app.tar");
    let slug_put = moto.presign("PUT", "slugs/app.tgz");
    let slug_get = moto.presign("GET", "slugs/app.tgz");
    let cache_get = moto.presign("GET", "caches/app.tgz");
    let cache_put = moto.presign("PUT", "caches/app.tgz");
    let urls = [
        source_get.as_str(),
        slug_put.as_str(),
        slug_get.as_str(),
        cache_get.as_str(),
        cache_put.as_str(),
    ];
    let report = tmp.path().join("report.json");
    for round in 1..=2 {
        let out = Build::new(Vec::new())
            .env("SOURCE_URL", &source_get)
            .env("PUT_URL", &slug_put)
            .env("CACHE_URL", &cache_get)
            .env("CACHE_PUT_URL", &cache_put)
            .env("SLUGBUILDER_REPORT", &report)
            .args(["-vv", "--buildpack"])
            .arg(&bp)
            .run();
        assert_ok(&out);
        let log = stderr(&out);
        assert!(log.contains(&format!("build number {round}")), "{log}");
        if round == 1 {
            assert!(log.contains("No cache yet"), "{log}");
        } else {
            assert!(log.contains("Restored"), "{log}");
        }
        assert!(
            out.stdout.is_empty(),
            "with PUT_URL and no -o, stdout stays empty"
        );
        assert_no_secrets(&log, &urls);
        let fetched = tmp.path().join(format!("slug-{round}.tgz"));
        moto.boto(&["get", "slugs/app.tgz", fetched.to_str().unwrap()]);
        let json = read_report(&report);
        assert_eq!(json["result"], "succeeded");
        assert_eq!(
            json["slug"]["sha256"].as_str().unwrap(),
            sha256_file(&fetched)
        );
        assert_eq!(
            json["slug"]["size"].as_u64().unwrap(),
            std::fs::metadata(&fetched).unwrap().len()
        );
        assert_eq!(json["slug"]["uploaded"], true);
        assert!(json["phases"]["cache_restore"].is_number());
        assert!(json["phases"]["cache_save"].is_number());
        assert_eq!(moto.boto(&["exists", "caches/app.tgz"]), "yes");
    }
    assert_eq!(serve_slug_url(&slug_get, "/count"), "2\n");
}

/// nginx WebDAV: PUT of the slug and of the cache, a 404 cache at first.
/// The stored slug is the very file `-o` wrote, and the cache is packed
/// deterministically (the same tree twice gives the same bytes).
#[test]
fn webdav_slug_and_cache() {
    if !have("nginx") {
        return;
    }
    let nginx = Nginx::start();
    let tmp = shared_tempdir();
    let bp = counter_buildpack(tmp.path());
    let slug_url = format!("{}/slugs/app/1.tgz?token=sekrit", nginx.url);
    let cache_url = format!("{}/caches/app.tgz?token=sekrit", nginx.url);
    let local = tmp.path().join("slug.tgz");
    for round in 1..=2 {
        let out = Build::new(app().tar())
            .args(["--buildpack"])
            .arg(&bp)
            .args(["--put-url", &slug_url, "--cache-url", &cache_url, "-o"])
            .arg(&local)
            .run();
        assert_ok(&out);
        let log = stderr(&out);
        assert!(log.contains(&format!("build number {round}")), "{log}");
        assert!(!log.contains("sekrit"), "{log}");
        assert_eq!(
            sha256_file(&nginx.root.join("slugs/app/1.tgz")),
            sha256_file(&local)
        );
    }
    // The cache tarball unpacks to what the buildpack left, and packing
    // is deterministic: rebuild it from its own contents.
    let cache = std::fs::read(nginx.root.join("caches/app.tgz")).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&cache[..]));
    let mut names = Vec::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        assert_eq!(entry.header().uid().unwrap(), 0);
        names.push(entry.path().unwrap().to_string_lossy().into_owned());
    }
    assert!(names.iter().any(|n| n.ends_with("count")), "{names:?}");
    assert!(
        names.iter().any(|n| n.ends_with("deep/dir/blob")),
        "{names:?}"
    );
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "cache entries are sorted");
}

/// Uploads survive a 500 and a connection dropped half-way (each retried
/// from the first byte, with Content-Length, never chunked); the source
/// download survives a 503; a cut-short upload is never stored.
#[test]
fn faults_are_retried_and_uploads_send_their_length() {
    let server = FaultServer::start();
    let tmp = shared_tempdir();
    let bp = counter_buildpack(tmp.path());
    server.put_object("/src.tar", app().tar());
    let source = format!("{}/src.tar?sig=SOURCESECRET", server.url);
    let put = format!("{}/slug.tgz?sig=PUTSECRET", server.url);
    // GET source: 503 then served. PUT slug: 500, dropped after 100
    // bytes, then served.
    server.plan(&[
        Fault::Status(503),
        Fault::Serve,
        Fault::Status(500),
        Fault::DropAfter(100),
    ]);
    let local = tmp.path().join("slug.tgz");
    let report = tmp.path().join("report.json");
    let out = Build::new(Vec::new())
        .args(["-vv", "--buildpack"])
        .arg(&bp)
        .args(["--source-url", &source, "--put-url", &put, "--report"])
        .arg(&report)
        .arg("-o")
        .arg(&local)
        .run();
    assert_ok(&out);
    let log = stderr(&out);
    assert_no_secrets(&log, &[&source, &put]);
    let stored = server.object("/slug.tgz").expect("slug stored");
    assert_eq!(sha256(&stored), sha256_file(&local));
    let puts: Vec<_> = server
        .seen()
        .into_iter()
        .filter(|s| s.method == "PUT")
        .collect();
    assert_eq!(puts.len(), 3, "{puts:?}");
    for p in &puts {
        assert_eq!(
            p.header("content-length"),
            Some(stored.len().to_string().as_str()),
            "{p:?}"
        );
        assert!(p.header("transfer-encoding").is_none(), "{p:?}");
        assert!(
            p.target.ends_with("sig=PUTSECRET"),
            "the query is sent as is"
        );
    }
    assert_eq!(read_report(&report)["slug"]["sha256"], sha256(&stored));

    // Deis's TAR_URL names the source too.
    let out = Build::new(Vec::new())
        .env("TAR_URL", &source)
        .args(["--buildpack"])
        .arg(&bp)
        .run();
    assert_ok(&out);
    assert!(!out.stdout.is_empty(), "the slug goes to stdout");
}

/// A source URL that keeps failing is exit 20 with the URL redacted; a
/// slug upload that keeps failing is exit 15 and nothing is stored.
#[test]
fn failed_transfers_fail_the_build() {
    let server = FaultServer::start();
    let tmp = shared_tempdir();
    let bp = counter_buildpack(tmp.path());
    let report = tmp.path().join("report.json");
    let missing = format!("{}/none.tar?sig=SECRET1", server.url);
    let out = Build::new(Vec::new())
        .args(["--buildpack"])
        .arg(&bp)
        .args(["--source-url", &missing, "--report"])
        .arg(&report)
        .run();
    assert_eq!(out.status.code(), Some(20), "{}", stderr(&out));
    assert!(stderr(&out).contains("/none.tar"), "{}", stderr(&out));
    assert_no_secrets(&stderr(&out), &[&missing]);
    let json = read_report(&report);
    assert_eq!(json["exit_code"], 20);
    assert!(
        json["error"].as_str().unwrap().contains("HTTP 404"),
        "{json}"
    );
    assert!(!json.to_string().contains("SECRET1"));

    let put = format!("{}/slug.tgz?sig=SECRET2", server.url);
    server.plan(&[Fault::Status(500), Fault::Status(502), Fault::Status(503)]);
    let out = Build::new(app().tar())
        .args(["--buildpack"])
        .arg(&bp)
        .args(["--put-url", &put])
        .run();
    assert_eq!(out.status.code(), Some(15), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("uploading the slug"),
        "{}",
        stderr(&out)
    );
    assert_no_secrets(&stderr(&out), &[&put]);
    assert!(server.object("/slug.tgz").is_none());
}

/// SIGTERM during a slow upload ends the build within 2 s (exit 17), the
/// store keeps no half object, and the report says what happened; a
/// server that never answers meets the build's deadline (exit 16).
#[test]
fn slow_uploads_stop_on_sigterm_and_at_the_deadline() {
    let server = FaultServer::start();
    let tmp = shared_tempdir();
    let bp = counter_buildpack(tmp.path());
    let put = format!("{}/slug.tgz", server.url);
    let report = tmp.path().join("report.json");
    // A slug big enough not to fit in socket buffers at once.
    let big: String = (0..400_000)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    let mut files = vec![("index.html", "x")];
    let noise = format!("{big}{}", sha256(big.as_bytes()));
    files.push(("noise.txt", noise.as_str()));
    let tar = App::new(&files).tar();
    server.plan(&[Fault::Slow(20_000)]);
    let mut cmd = Build::new(Vec::new())
        .args(["--buildpack"])
        .arg(&bp)
        .args(["--compression-level", "0", "--put-url", &put, "--report"])
        .arg(&report)
        .command();
    let src = tmp.path().join("src.tar");
    std::fs::write(&src, tar).unwrap();
    cmd.arg("--source").arg(&src);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = Guarded::new(child);
    assert!(
        wait_until(Duration::from_secs(60), || server
            .seen()
            .iter()
            .any(|s| s.method == "PUT" && s.received > 0)),
        "the upload never started"
    );
    let sent = Instant::now();
    nix::sys::signal::kill(guard.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = guard.output(Duration::from_secs(10));
    let took = sent.elapsed();
    assert_eq!(out.code(), Some(17), "{}", out.stderr);
    assert!(took < Duration::from_secs(2), "took {took:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.object("/slug.tgz").is_none(),
        "a half upload was stored"
    );
    let json = read_report(&report);
    assert_eq!(json["result"], "failed");
    assert_eq!(json["exit_code"], 17);
    assert_eq!(json["slug"]["uploaded"], false);

    server.plan(&[Fault::Hang]);
    let start = Instant::now();
    let out = Build::new(app().tar())
        .args(["--buildpack"])
        .arg(&bp)
        .args(["--timeout", "8", "--put-url", &put])
        .run();
    assert_eq!(out.status.code(), Some(16), "{}", stderr(&out));
    assert!(start.elapsed() < Duration::from_secs(12));
}

/// A cache that cannot be had or is not a tarball is a warning and a cold
/// build; a cache download cut short leaves no half cache behind.
#[test]
fn a_broken_cache_means_a_cold_build() {
    let server = FaultServer::start();
    let tmp = shared_tempdir();
    let bp = counter_buildpack(tmp.path());
    let cache = format!("{}/cache.tgz", server.url);
    // A build that warns its cache could not be restored and starts cold.
    let cold_build = || {
        let out = Build::new(app().tar())
            .args(["--buildpack"])
            .arg(&bp)
            .args(["--cache-url", &cache])
            .run();
        assert_ok(&out);
        let log = stderr(&out);
        assert!(log.contains("could not be restored"), "{log}");
        assert!(log.contains("build number 1"), "{log}");
    };
    server.put_object("/cache.tgz", b"this is not a tarball".to_vec());
    cold_build();
    // The good cache the build stored; then a download dropped half-way.
    let good = server.object("/cache.tgz").unwrap();
    assert!(good.len() > 1000);
    server.plan(&[Fault::DropAfter(good.len() / 2)]);
    cold_build();
}

/// `object` has exactly the keys `want`. serde_json's map is sorted:
/// compare as sets.
fn assert_same_keys(object: &Value, want: &[&str]) {
    let mut keys: Vec<&str> = object
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut want = want.to_vec();
    want.sort_unstable();
    assert_eq!(keys, want);
}

/// Every phase of a build without a remote cache is timed, the cache's
/// are `null`, and the build's duration covers them.
fn assert_phases_of_a_build_without_cache(json: &Value) {
    let phases = json["phases"].as_object().unwrap();
    assert_same_keys(
        &json["phases"],
        &[
            "prepare",
            "source",
            "cache_restore",
            "buildpacks",
            "release",
            "pack",
            "cache_save",
            "deliver",
        ],
    );
    for name in [
        "prepare",
        "source",
        "buildpacks",
        "release",
        "pack",
        "deliver",
    ] {
        assert!(phases[name].as_f64().unwrap() >= 0.0, "{name}");
    }
    assert!(phases["cache_restore"].is_null() && phases["cache_save"].is_null());
    let total = json["duration"].as_f64().unwrap();
    let sum: f64 = phases.values().filter_map(Value::as_f64).sum();
    assert!(total >= sum - 0.01, "{total} < {sum}");
}

/// A failing compile: the report is still written, with the error.
fn assert_a_failing_compile_is_reported(report: &Path) {
    let out = Build::new(app().tar())
        .buildpack("failing-compile")
        .args(["--report"])
        .arg(report)
        .run();
    assert_eq!(out.status.code(), Some(13), "{}", stderr(&out));
    let json = read_report(report);
    assert_eq!(json["result"], "failed");
    assert_eq!(json["exit_code"], 13);
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("bin/compile failed"),
        "{json}"
    );
    assert!(json["slug"].is_null());
    assert!(json["phases"]["pack"].is_null());
    assert!(json["phases"]["buildpacks"].is_number());
    assert!(json["buildpacks"][0]["steps"]["compile"].is_number());
    assert!(json["buildpacks"][0]["steps"]["release"].is_null());
    let warnings = json["warnings"].to_string();
    assert!(
        warnings.contains("Something is wrong with this app"),
        "{warnings}"
    );
}

/// Every field of the report, on success and on failure.
#[test]
fn the_report_has_every_field() {
    let tmp = shared_tempdir();
    let bp = counter_buildpack(tmp.path());
    let report = tmp.path().join("report.json");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let local = tmp.path().join("slug.tgz");
    let out = Build::new(app().tar())
        .args(["--buildpack"])
        .arg(&bp)
        .args(["--source-version", commit, "--request-id", "req-1", "-o"])
        .arg(&local)
        .args(["--report"])
        .arg(&report)
        .run();
    assert_ok(&out);
    let json = read_report(&report);
    // In the order of the README.
    assert_same_keys(
        &json,
        &[
            "schema_version",
            "result",
            "exit_code",
            "error",
            "stack",
            "request_id",
            "source_version",
            "buildpacks",
            "process_types",
            "slug",
            "image",
            "warnings",
            "phases",
            "duration",
        ],
    );
    assert_eq!(json["schema_version"], 1);
    assert_eq!(json["result"], "succeeded");
    assert_eq!(json["exit_code"], 0);
    assert!(json["error"].is_null());
    assert_eq!(json["stack"], "heroku-24");
    assert_eq!(json["request_id"], "req-1");
    assert_eq!(json["source_version"], commit);
    let bps = json["buildpacks"].as_array().unwrap();
    assert_eq!(bps.len(), 1);
    assert_eq!(bps[0]["spec"], bp.to_str().unwrap());
    assert_eq!(bps[0]["name"], "Counter");
    assert!(bps[0]["commit"].is_null() && bps[0]["digest"].is_null());
    for step in ["detect", "compile", "release"] {
        assert!(bps[0]["steps"][step].as_f64().unwrap() >= 0.0, "{step}");
    }
    assert!(bps[0]["steps"]["export"].is_null());
    assert_eq!(json["process_types"], serde_json::json!(["web"]));
    assert_eq!(json["slug"]["sha256"], sha256_file(&local));
    assert_eq!(
        json["slug"]["size"].as_u64().unwrap(),
        std::fs::metadata(&local).unwrap().len()
    );
    assert_eq!(json["slug"]["uploaded"], false);
    assert!(json["image"].is_null());
    let warnings: Vec<&str> = json["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(warnings.contains(&"counter warning 1"), "{warnings:?}");
    assert_phases_of_a_build_without_cache(&json);

    assert_a_failing_compile_is_reported(&report);
}

/// A git buildpack's resolved commit is in the report.
/// A failed build's report: what it did not reach is `null`, and the
/// error carries the failed step's last lines (pip's own error here),
/// never a config var's value.
#[test]
fn the_report_of_a_failed_pip_install_names_pips_error() {
    let tmp = shared_tempdir();
    let bp = tmp.path().join("pip");
    std::fs::create_dir_all(bp.join("bin")).unwrap();
    for (name, text) in [
        ("detect", "#!/bin/sh\necho Pip\n"),
        (
            "compile",
            "#!/bin/sh\nset -e\ncd \"$1\"\necho \"token is $(cat \"$3/SECRET_TOKEN\")\"\n\
             /usr/bin/python3 -m pip install --break-system-packages --no-index -r requirements.txt\n",
        ),
    ] {
        let path = bp.join("bin").join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let app = App::new(&[
        ("requirements.txt", "no-such-package==1.0 !!\n"),
        ("Procfile", "web: python3 app.py\n"),
    ]);
    let report = tmp.path().join("report.json");
    let out = Build::new(app.tar())
        .args(["--buildpack"])
        .arg(&bp)
        .args(["-e", "SECRET_TOKEN=hunter2-very-secret", "--report"])
        .arg(&report)
        .args(["-o"])
        .arg(tmp.path().join("slug.tgz"))
        .run();
    assert!(!out.status.success(), "{}", stderr(&out));
    let json = read_report(&report);
    assert_eq!(json["result"], "failed");
    assert!(json["process_types"].is_null(), "{json}");
    assert!(json["slug"].is_null(), "{json}");
    let error = json["error"].as_str().unwrap();
    assert!(error.contains("compile failed"), "{error}");
    assert!(
        error.contains("ERROR: Invalid requirement"),
        "no pip error: {error}"
    );
    assert!(!error.contains("hunter2-very-secret"), "a secret: {error}");
    assert!(error.contains("token is ***"), "{error}");
    assert!(error.len() <= 4096 + 200, "{error}");
}

#[test]
fn the_report_names_a_git_buildpacks_commit() {
    let tmp = shared_tempdir();
    let bp = counter_buildpack(tmp.path());
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .current_dir(&bp)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "bp"]);
    let head = git(&["rev-parse", "HEAD"]);
    let report = tmp.path().join("report.json");
    let out = Build::new(app().tar())
        .args(["--buildpack", &format!("file://{}", bp.display())])
        .args(["--report"])
        .arg(&report)
        .run();
    assert_ok(&out);
    assert_eq!(read_report(&report)["buildpacks"][0]["commit"], head);
}

/// With `--image`, the report names the published image: its reference,
/// and the manifest digest the OCI layout's index holds for its tag.
#[test]
fn the_report_names_the_published_image() {
    if !have("umoci") {
        return;
    }
    let tmp = shared_tempdir();
    let run = tmp.path().join("run");
    let umoci = |args: &[&str]| {
        let out = Command::new("umoci").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "umoci {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let layout = run.to_str().unwrap();
    umoci(&["init", "--layout", layout]);
    umoci(&["new", "--image", &format!("{layout}:empty")]);
    umoci(&[
        "config",
        "--image",
        &format!("{layout}:empty"),
        "--tag",
        "base",
        "--config.user",
        "1000:1000",
    ]);
    let out_layout = tmp.path().join("out");
    let reference = format!("oci:{}:app", out_layout.display());
    let report = tmp.path().join("report.json");
    let out = Build::new(app().tar())
        .args(["--buildpack"])
        .arg(counter_buildpack(tmp.path()))
        .args(["--image", &reference, "--run-image"])
        .arg(format!("oci:{layout}:base"))
        .arg("--report")
        .arg(&report)
        .arg("-o")
        .arg(tmp.path().join("slug.tgz"))
        .run();
    assert_ok(&out);
    let index: Value =
        serde_json::from_slice(&std::fs::read(out_layout.join("index.json")).unwrap()).unwrap();
    let tagged = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "app")
        .unwrap_or_else(|| panic!("no manifest tagged app: {index}"));
    let json = read_report(&report);
    assert_eq!(json["image"]["reference"], reference.as_str());
    assert_eq!(json["image"]["digest"], tagged["digest"]);
    assert!(
        stderr(&out).contains(&format!(
            "Image: {reference}@{}",
            tagged["digest"].as_str().unwrap()
        )),
        "{}",
        stderr(&out)
    );
}

// ---------------------------------------------------------------------------
// git push

/// An app (a work tree) whose web process answers with `greeting`.
fn write_app(dir: &Path, greeting: &str) {
    std::fs::write(dir.join("Procfile"), "web: python3 -m http.server $PORT\n").unwrap();
    std::fs::write(dir.join("index.html"), format!("{greeting}\n")).unwrap();
}

fn git_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=dev", "-c", "user.email=dev@example.com"])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn commit(dir: &Path, message: &str) {
    for args in [&["add", "-A"][..], &["commit", "-q", "-m", message]] {
        let out = git_in(dir, args, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// GET / until it answers `want` (the restart is done when the push is,
/// but allow a moment).
fn wait_for_body(port: u16, want: &str) {
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(20), || match http_get(port, "/") {
        Ok((200, body)) => {
            last = body.clone();
            body == want
        }
        Ok((status, body)) => {
            last = format!("{status} {body}");
            false
        }
        Err(e) => {
            last = e.to_string();
            false
        }
    });
    assert!(ok, "port {port} never answered {want:?}; last: {last}");
}

/// A deployed app and its host, removed (app stopped) when dropped.
struct Deployed {
    dir: tempfile::TempDir,
    port: u16,
}

impl Deployed {
    fn install(grace: u32) -> Self {
        Self::install_with(grace, &[], &[])
    }

    /// `install` with more options, and more slugbuilder arguments (an app
    /// of its own host: its own registry of uids and ports).
    fn install_with(grace: u32, options: &[&str], build_args: &[&std::ffi::OsStr]) -> Self {
        let dir = shared_tempdir();
        let registry = dir.path().join("registry");
        Self::install_app("myapp", dir, &registry, grace, options, build_args)
    }

    /// `install APP` into `dir`, recorded in `registry` (apps sharing one
    /// registry share a host).
    fn install_app(
        name: &str,
        dir: tempfile::TempDir,
        registry: &Path,
        grace: u32,
        options: &[&str],
        build_args: &[&std::ffi::OsStr],
    ) -> Self {
        let port = free_port();
        // The app's processes get internal ports of their own block (one
        // apart from other tests' hosts, below the ephemeral ports, which
        // connections take); nginx listens on `port`, on 127.0.0.1 alone.
        // No deploy user unless the test asks for one.
        let internal = 20000 + (free_port() % 1000) * 10;
        let mut options = options.to_vec();
        if !options.contains(&"--deploy-user") {
            options.extend(["--deploy-user", "none"]);
        }
        let out = Command::new(repo_root().join("deploy/git-push/install"))
            .arg(name)
            .arg(dir.path().join("myapp.git"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--registry")
            .arg(registry)
            .args(["--port", &port.to_string(), "--keep", "2"])
            .args(["--grace-period", &grace.to_string()])
            .args([
                "--internal-range",
                &format!("{internal}-{}", internal + 9),
                "--listen",
                "127.0.0.1",
            ])
            .args(&options)
            .arg("--slugbuilder")
            .arg(bin("slugbuilder"))
            .arg("--slugrunner")
            .arg(bin("slugrunner"))
            .args(["--", "--buildpacks-dir"])
            .arg(repo_root().join("buildpacks"))
            .args(build_args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir, port }
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("myapp.git")
    }

    fn slugapp(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.dir.path().join("state/bin/slugapp"))
            .arg("--state")
            .arg(self.dir.path().join("state"))
            .args(args)
            .output()
            .unwrap()
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Where a ref of the app's repository points (None: nowhere).
    fn rev(&self, name: &str) -> Option<String> {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(self.repo())
            .args(["rev-parse", "-q", "--verify", name])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8(out.stdout).unwrap().trim().to_string())
    }

    fn pid(&self) -> i32 {
        std::fs::read_to_string(self.dir.path().join("state/app.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// The internal port the running release listens on (nginx's upstream).
    fn internal_port(&self) -> u16 {
        std::fs::read_to_string(self.dir.path().join("state/app.port"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// The running release's app dir (the one its uid owns).
    fn app_dir(&self) -> PathBuf {
        self.state().join(format!("app-{}", self.internal_port()))
    }
}

impl Drop for Deployed {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .arg("60")
            .arg(self.dir.path().join("state/bin/slugapp"))
            .arg("--state")
            .arg(self.dir.path().join("state"))
            .arg("stop")
            .status();
    }
}

/// Push, then check the hook's output reached the pusher as it happened.
fn push(work: &Path, remote: &str, env: &[(&str, &str)]) -> (bool, String) {
    let out = git_in(work, &["push", "-q", remote, "HEAD:main"], env);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), log)
}

/// The whole git-push flow over `remote`: deploy, redeploy (the old
/// process gets SIGTERM), a broken push refused while the old release
/// still answers, a rollback, and the kept slugs pruned.
fn git_push_flow(deployed: &Deployed, remote: &str, env: &[(&str, &str)]) {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    assert!(git_in(w, &["init", "-q", "-b", "main"], &[])
        .status
        .success());
    write_app(w, "version one");
    commit(w, "one");
    let (ok, log) = push(w, remote, env);
    assert!(ok, "first push refused:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.starts_with("remote: -----> ") && l.trim_end().ends_with("app detected")),
        "{log}"
    );
    assert!(log.contains("remote: -----> Deployed v1"), "{log}");
    wait_for_body(deployed.port, "version one\n");
    let first_pid = deployed.pid();

    write_app(w, "version two");
    commit(w, "two");
    let (ok, log) = push(w, remote, env);
    assert!(ok, "second push refused:\n{log}");
    assert!(
        log.contains(&format!("Stopping pid {first_pid} (SIGTERM")),
        "{log}"
    );
    wait_for_body(deployed.port, "version two\n");
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(first_pid), None).is_err(),
        "the first release's slugrunner still runs"
    );

    // A broken build: the push is refused, v2 keeps answering.
    std::fs::write(w.join(".buildpacks"), "https://127.0.0.1:1/nope.tgz\n").unwrap();
    commit(w, "broken");
    let running = deployed.pid();
    let (ok, log) = push(w, remote, env);
    assert!(!ok, "a broken build was accepted:\n{log}");
    assert!(
        log.contains("remote: -----> Build failed: push rejected"),
        "{log}"
    );
    assert!(log.contains("v2 is still running"), "{log}");
    assert_eq!(deployed.pid(), running, "the app was restarted");
    assert_eq!(http_get(deployed.port, "/").unwrap().1, "version two\n");

    // Rollback to v1.
    let out = deployed.slugapp(&["rollback"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_body(deployed.port, "version one\n");
    let releases = String::from_utf8(deployed.slugapp(&["releases"]).stdout).unwrap();
    assert!(
        releases.lines().any(|l| l.starts_with("* v1-")),
        "{releases}"
    );

    // A third release: only two slugs are kept (--keep 2).
    std::fs::remove_file(w.join(".buildpacks")).unwrap();
    write_app(w, "version three");
    commit(w, "three");
    let (ok, log) = push(w, remote, env);
    assert!(ok, "third push refused:\n{log}");
    wait_for_body(deployed.port, "version three\n");
    let releases = String::from_utf8(deployed.slugapp(&["releases"]).stdout).unwrap();
    let kept: Vec<&str> = releases.lines().collect();
    assert_eq!(kept.len(), 2, "{releases}");
    assert!(kept[1].starts_with("* v3-"), "{releases}");
}

#[test]
fn git_push_over_file_url() {
    // The hook runs slugbuilder and slugrunner as root (they drop to build
    // and run users), like a backend's git user with sudo would.
    if !require_root("the git push hook") {
        return;
    }
    let deployed = Deployed::install(5);
    let remote = format!("file://{}", deployed.repo().display());
    git_push_flow(&deployed, &remote, &[]);
}

/// The same over ssh to an sshd of the test's own on 127.0.0.1.
#[test]
fn git_push_over_ssh() {
    if !require_root("the git push hook") || !have("/usr/sbin/sshd") || !have("ssh-keygen") {
        return;
    }
    let deployed = Deployed::install(5);
    let dir = shared_tempdir();
    let d = dir.path();
    for (key, kind) in [("host_key", "ed25519"), ("client_key", "ed25519")] {
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-N", "", "-f"])
            .arg(d.join(key))
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
    let port = free_port();
    // The sshd's own PATH reaches git-receive-pack in the session.
    let git_dir = Command::new("sh")
        .args(["-c", "dirname \"$(command -v git)\""])
        .output()
        .unwrap();
    let git_dir = String::from_utf8(git_dir.stdout)
        .unwrap()
        .trim()
        .to_string();
    std::fs::write(
        d.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile {d}/sshd.pid\n\
             SetEnv PATH={git_dir}:/usr/local/bin:/usr/bin:/bin\n",
            hk = d.join("host_key").display(),
            ak = d.join("authorized_keys").display(),
            d = d.display(),
        ),
    )
    .unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let sshd = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(d.join("sshd_config"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _sshd = Guarded::new(sshd);
    assert!(
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "sshd did not listen"
    );
    let ssh = format!(
        "ssh -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -p {port}",
        d.join("client_key").display()
    );
    let remote = format!("ssh://root@127.0.0.1:{port}{}", deployed.repo().display());
    git_push_flow(&deployed, &remote, &[("GIT_SSH_COMMAND", &ssh)]);
}

/// A host user made by `install --deploy-user`, removed with its sudoers
/// rule when dropped.
struct DeployUser(String);

impl Drop for DeployUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).status();
        let _ = std::fs::remove_file(format!("/etc/sudoers.d/slugapps-{}", self.0));
    }
}

/// ssh end to end as `install` sets it up: a deploy user of its own (not
/// root), created by install with the key given, pushes over ssh to an
/// sshd of the test's own (strict modes: install's owners and modes must
/// please it); the hooks deploy through the one sudo rule, and the key
/// runs nothing else.
#[test]
fn git_push_over_ssh_as_the_deploy_user() {
    if !require_root("the git push hook")
        || !have("/usr/sbin/sshd")
        || !have("ssh-keygen")
        || !have("sudo")
    {
        return;
    }
    let dir = shared_tempdir();
    let d = dir.path();
    for key in ["host_key", "client_key"] {
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(d.join(key))
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let user = format!("slugt{}", std::process::id() % 100_000);
    let _user = DeployUser(user.clone());
    let home = d.join("home");
    let key = d.join("client_key.pub");
    let bps = shared_tempdir();
    let bp = steered_buildpack(bps.path());
    let deployed = Deployed::install_with(
        5,
        &[
            "--deploy-user",
            user.as_str(),
            "--deploy-home",
            home.to_str().unwrap(),
            "--ssh-key",
            key.to_str().unwrap(),
        ],
        &["--buildpack".as_ref(), bp.as_os_str()],
    );
    // What install made: the user (not root), its keys root's.
    let out = Command::new("id").args(["-u", &user]).output().unwrap();
    assert!(out.status.success(), "install made no user {user}");
    assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    let keys = home.join(".ssh/authorized_keys");
    assert_eq!(mode_and_owner(&keys), (0o644, 0));
    assert_eq!(mode_and_owner(&home.join(".ssh")), (0o755, 0));
    assert_eq!(mode_and_owner(&deployed.repo()), (0o700, 0));

    let port = free_port();
    std::fs::write(
        d.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile .ssh/authorized_keys\n\
             AllowUsers {user}\nPermitRootLogin no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes yes\nPidFile {d}/sshd.pid\n",
            hk = d.join("host_key").display(),
            d = d.display(),
        ),
    )
    .unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let sshd = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(d.join("sshd_config"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _sshd = Guarded::new(sshd);
    assert!(
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "sshd did not listen"
    );
    let ssh = format!(
        "ssh -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -p {port}",
        d.join("client_key").display()
    );
    let env = [("GIT_SSH_COMMAND", ssh.as_str())];
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    assert!(git_in(w, &["init", "-q", "-b", "main"], &[])
        .status
        .success());
    write_app(w, "pushed by the deploy user");
    commit(w, "one");
    let remote = format!("ssh://{user}@127.0.0.1:{port}{}", deployed.repo().display());
    let (ok, log) = push(w, &remote, &env);
    assert!(ok, "the push over ssh was refused:\n{log}");
    assert!(log.contains("remote: -----> Deployed v1"), "{log}");
    wait_for_body(deployed.port, "pushed by the deploy user\n");
    // The app's name is a remote too (git@host:myapp).
    write_app(w, "pushed again");
    commit(w, "two");
    let (ok, log) = push(w, &format!("ssh://{user}@127.0.0.1:{port}/myapp"), &env);
    assert!(ok, "{log}");
    wait_for_body(deployed.port, "pushed again\n");

    // The key runs git-serve and nothing else: no shell, no other command,
    // no other repository.
    for command in [
        "id",
        "sh -c id",
        "git-receive-pack '/etc'",
        "git-receive-pack '/x'; id",
    ] {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{ssh} {user}@127.0.0.1 \"$0\"",))
            .arg(command)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{command:?} ran: {text}");
        assert!(!text.contains("uid="), "{command:?} ran: {text}");
        assert!(text.contains("git-serve:"), "{command:?}: {text}");
    }
    // As the deploy user, sudo grants that one command only.
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--init-groups",
            "sudo",
            "-n",
            "true",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "sudo true ran as root for {user}");
}

/// A buildpack whose build the pushed app steers: `build-sleep N` makes
/// the compile print a line a second for N seconds, `build-fail` fails it.
/// The web process serves the app dir.
fn steered_buildpack(dir: &Path) -> PathBuf {
    let bp = dir.join("steered");
    std::fs::create_dir_all(bp.join("bin")).unwrap();
    let files = [
        ("detect", "#!/usr/bin/env bash\necho Steered\n"),
        (
            "compile",
            r#"#!/usr/bin/env bash
set -euo pipefail
build=$1
if [[ -f $build/build-sleep ]]; then
    n=$(<"$build/build-sleep")
    for ((i = 1; i <= n; i++)); do echo "compiling $i"; sleep 1; done
fi
if [[ -f $build/build-fail ]]; then echo "this build fails"; exit 1; fi
echo "compiled"
"#,
        ),
        (
            "release",
            "#!/usr/bin/env bash\nprintf -- '---\\ndefault_process_types:\\n  web: python3 -m http.server $PORT\\n'\n",
        ),
    ];
    for (name, text) in files {
        let path = bp.join("bin").join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bp
}

/// A host with the steered buildpack (and `install` options).
fn steered_host(options: &[&str]) -> (Deployed, tempfile::TempDir) {
    let bps = shared_tempdir();
    let bp = steered_buildpack(bps.path());
    let deployed = Deployed::install_with(5, options, &["--buildpack".as_ref(), bp.as_os_str()]);
    (deployed, bps)
}

/// A work tree with one commit answering `greeting`, pushed to main.
fn first_push(deployed: &Deployed) -> (tempfile::TempDir, String) {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    assert!(git_in(w, &["init", "-q", "-b", "main"], &[])
        .status
        .success());
    write_app(w, "version one");
    commit(w, "one");
    let remote = format!("file://{}", deployed.repo().display());
    let (ok, log) = push(w, &remote, &[]);
    assert!(ok, "first push refused:\n{log}");
    wait_for_body(deployed.port, "version one\n");
    (work, remote)
}

fn head(dir: &Path) -> String {
    let out = git_in(dir, &["rev-parse", "HEAD"], &[]);
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Only the deploy branch deploys, and only when git accepts every ref of
/// the push: a ref git refuses after the hook (its lock is taken) undoes
/// the deploy, and the running release stays the commit `main` names.
#[test]
fn git_push_is_atomic() {
    if !require_root("the git push hook") {
        return;
    }
    let (deployed, _bps) = steered_host(&[]);
    let (work, remote) = first_push(&deployed);
    let w = work.path();
    let v1 = head(w);

    // main builds; `other` cannot be updated (git finds its lock taken).
    write_app(w, "version two");
    commit(w, "two");
    let lock = deployed.repo().join("refs/heads/other.lock");
    std::fs::write(&lock, "").unwrap();
    let out = git_in(
        w,
        &["push", remote.as_str(), "HEAD:main", "HEAD:other"],
        &[],
    );
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the push was accepted whole:\n{log}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        http_get(deployed.port, "/").unwrap().1,
        "version one\n",
        "a push git did not accept whole went live:\n{log}"
    );
    assert_eq!(
        deployed.rev("refs/heads/main").as_deref(),
        Some(v1.as_str()),
        "main does not name the running release:\n{log}"
    );
    assert!(log.contains("is not deployed"), "{log}");
    std::fs::remove_file(&lock).unwrap();

    // A broken commit on another branch is stored, main deploys.
    std::fs::write(w.join("build-fail"), "").unwrap();
    commit(w, "broken");
    let out = git_in(
        w,
        &["push", remote.as_str(), "HEAD~1:main", "HEAD:master"],
        &[],
    );
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "only main deploys:\n{log}");
    assert!(log.contains("not the deploy branch"), "{log}");
    wait_for_body(deployed.port, "version two\n");
    assert_eq!(deployed.rev("refs/heads/master"), Some(head(w)));
}

/// Spawn `git push` with its stderr in a file (read while it runs).
fn spawn_push(dir: &Path, remote: &str, log: &Path) -> Guarded {
    let child = Command::new("git")
        .current_dir(dir)
        .args(["push", remote, "HEAD:main"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Guarded::new(child)
}

fn wait_for_log(log: &Path, want: &str) {
    assert!(
        wait_until(Duration::from_secs(120), || std::fs::read_to_string(log)
            .is_ok_and(|l| l.contains(want))),
        "never saw {want:?} in:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Two pushes to one app at once: the second one waits, saying for whom,
/// and what runs in the end is the commit main points to.
#[test]
fn concurrent_pushes_are_serialized() {
    if !require_root("the git push hook") {
        return;
    }
    let (deployed, _bps) = steered_host(&[]);
    let (work, remote) = first_push(&deployed);
    let clone = |name: &str, greeting: &str, sleep: Option<&str>| {
        let dir = work.path().join(name);
        let out = Command::new("git")
            .args(["clone", "-q", work.path().to_str().unwrap()])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success());
        write_app(&dir, greeting);
        if let Some(n) = sleep {
            std::fs::write(dir.join("build-sleep"), n).unwrap();
        }
        commit(&dir, greeting);
        dir
    };
    let a = clone("a", "version a", Some("6"));
    let b = clone("b", "version b", None);
    let logs = tempfile::tempdir().unwrap();
    let (log_a, log_b) = (logs.path().join("a"), logs.path().join("b"));
    let push_a = spawn_push(&a, &remote, &log_a);
    wait_for_log(&log_a, "compiling 1");
    let push_b = spawn_push(&b, &remote, &log_b);
    let a_ok = push_a.wait(Duration::from_secs(180)).success();
    let b_ok = push_b.wait(Duration::from_secs(180)).success();
    let (log_a, log_b) = (
        std::fs::read_to_string(&log_a).unwrap(),
        std::fs::read_to_string(&log_b).unwrap(),
    );
    let main = deployed.rev("refs/heads/main").unwrap();
    let want = if main == head(&a) {
        "version a\n"
    } else if main == head(&b) {
        "version b\n"
    } else {
        panic!("main is at neither push:\nA:\n{log_a}\nB:\n{log_b}")
    };
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        http_get(deployed.port, "/").unwrap().1,
        want,
        "the app does not run the commit main points to:\nA:\n{log_a}\nB:\n{log_b}"
    );
    assert!(a_ok, "{log_a}");
    assert!(!b_ok, "B was based on the old main:\n{log_b}");
    assert!(
        log_b.contains(&format!(
            "waiting for the deploy of {} to finish",
            &head(&a)[..12]
        )),
        "{log_b}"
    );
    assert!(log_b.contains("main moved to"), "{log_b}");
}

/// slugbuilder processes of this app (its cache dir on their command line).
fn builds_of(deployed: &Deployed) -> Vec<String> {
    let cache = deployed.state().join("cache");
    let cache = cache.to_str().unwrap();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(cache) && cmdline.contains("slugbuilder") {
                found.push(cmdline);
            }
        }
    }
    found
}

/// A pusher that disconnects mid-build: the build is stopped at once, the
/// lock is free for the next push; a build that overruns its deadline is
/// stopped and refused.
#[test]
fn an_abandoned_build_is_stopped() {
    if !require_root("the git push hook") {
        return;
    }
    let (deployed, _bps) = steered_host(&["--build-timeout", "20"]);
    let (work, remote) = first_push(&deployed);
    let w = work.path();
    std::fs::write(w.join("build-sleep"), "300").unwrap();
    write_app(w, "version two");
    commit(w, "slow");
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("push");
    let pusher = spawn_push(w, &remote, &log);
    wait_for_log(&log, "compiling 2");
    nix::sys::signal::kill(pusher.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = pusher.wait(Duration::from_secs(10));
    assert!(
        wait_until(Duration::from_secs(15), || builds_of(&deployed).is_empty()),
        "the build runs on after its pusher left: {:?}",
        builds_of(&deployed)
    );
    // The next push is not held up by the abandoned one, and a build over
    // its deadline (20 s) is stopped.
    let started = Instant::now();
    let (ok, log) = push(w, &remote, &[]);
    assert!(!ok, "a build over its deadline was accepted:\n{log}");
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "took {:?}:\n{log}",
        started.elapsed()
    );
    assert!(log.contains("Build failed: push rejected"), "{log}");
    assert!(log.contains("time limit"), "{log}");
    assert!(builds_of(&deployed).is_empty());
    assert_eq!(http_get(deployed.port, "/").unwrap().1, "version one\n");
    let out = deployed.slugapp(&["status"]);
    assert!(out.status.success());
}

/// The release phase: a `release:` process runs once from the new slug
/// before it serves; when it fails the push is refused and the old release
/// keeps serving.
#[test]
fn the_release_phase_runs_before_the_switch() {
    if !require_root("the git push hook") {
        return;
    }
    let (deployed, _bps) = steered_host(&[]);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    assert!(git_in(w, &["init", "-q", "-b", "main"], &[])
        .status
        .success());
    let remote = format!("file://{}", deployed.repo().display());
    let procfile = |release: &str| {
        std::fs::write(
            w.join("Procfile"),
            format!("web: python3 -m http.server $PORT\nrelease: {release}\n"),
        )
        .unwrap();
    };
    std::fs::write(w.join("index.html"), "version one\n").unwrap();
    procfile("echo migrating from $PWD");
    commit(w, "one");
    let (ok, log) = push(w, &remote, &[]);
    assert!(ok, "{log}");
    assert!(
        log.contains("remote: migrating from"),
        "no release phase:\n{log}"
    );
    wait_for_body(deployed.port, "version one\n");
    let running = deployed.pid();

    std::fs::write(w.join("index.html"), "version two\n").unwrap();
    procfile("echo migration failed; exit 3");
    commit(w, "two");
    let (ok, log) = push(w, &remote, &[]);
    assert!(!ok, "a failed release command was deployed:\n{log}");
    assert!(log.contains("remote: migration failed"), "{log}");
    assert!(
        log.contains("Release command failed: push rejected"),
        "{log}"
    );
    assert!(log.contains("v1 is still running"), "{log}");
    assert_eq!(deployed.pid(), running, "the app was restarted");
    assert_eq!(http_get(deployed.port, "/").unwrap().1, "version one\n");
}

/// The process slugrunner (pid `init`) started: the app itself.
fn app_process(init: i32) -> i32 {
    let mut found = None;
    let ok = wait_until(Duration::from_secs(10), || {
        found = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid: i32 = stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()?;
            (ppid == init).then_some(pid)
        });
        found.is_some()
    });
    assert!(ok, "slugrunner {init} has no child");
    found.unwrap()
}

/// The real uid of a process.
fn uid_of(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Run `script` with `sh -c` as uid (and gid) `uid`, no other groups:
/// what that app's processes may do. Returns whether it succeeded.
fn as_uid(uid: u32, script: &str) -> bool {
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn mode_and_owner(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).unwrap();
    (meta.mode() & 0o7777, meta.uid())
}

/// Apps are tenants (threat model, invariant 11): two apps on one host run
/// as uids of their own, and neither can read, write or signal the
/// other's files and processes, nor rewrite its own config or the
/// receiver's files.
#[test]
fn apps_on_one_host_are_isolated() {
    if !require_root("the git push hook") || !have("setpriv") {
        return;
    }
    let bps = shared_tempdir();
    let bp = steered_buildpack(bps.path());
    let host = shared_tempdir();
    let registry = host.path().join("registry");
    let install = |name: &str| {
        Deployed::install_app(
            name,
            shared_tempdir(),
            &registry,
            5,
            &[],
            &["--buildpack".as_ref(), bp.as_os_str()],
        )
    };
    let apps = [install("app-a"), install("app-b")];
    let mut procs = vec![];
    for (app, secret) in apps.iter().zip(["secret-of-a", "secret-of-b"]) {
        std::fs::write(app.state().join("env/SECRET_TOKEN"), secret).unwrap();
        let _work = first_push(app);
        let pid = app_process(app.pid());
        procs.push((pid, uid_of(pid)));
    }
    let (ua, ub) = (procs[0].1, procs[1].1);
    assert_ne!(ua, ub, "both apps run as uid {ua}");
    for uid in [ua, ub] {
        assert!(uid != 0 && uid != 65534, "an app runs as {uid}");
    }
    for (i, app) in apps.iter().enumerate() {
        let (pid, uid) = procs[i];
        let state = app.state();
        assert_eq!(mode_and_owner(&app.app_dir()), (0o700, uid));
        for file in ["config", "app.log"] {
            assert_eq!(mode_and_owner(&state.join(file)), (0o600, 0), "{file}");
        }
        // What an app may do to itself (the probes work).
        let own = app.app_dir();
        assert!(as_uid(uid, &format!("touch {}/mine", own.display())));
        assert!(as_uid(uid, &format!("kill -0 {pid}")));
        // Its own config, logs and the receiver's files are not its own.
        for file in [
            state.join("config"),
            state.join("app.log"),
            state.join("bin/slugapp"),
            app.repo().join("hooks/pre-receive"),
            // The front proxy's config and this app's route.
            registry.join("proxy/nginx.conf"),
            registry.join("proxy/apps/app-a.conf"),
        ] {
            assert!(
                !as_uid(uid, &format!("echo x >>{}", file.display())),
                "app {i} wrote {file:?}"
            );
        }
        assert!(
            !as_uid(
                uid,
                &format!("cat {}", state.join("env/SECRET_TOKEN").display())
            ),
            "app {i} read its config var file"
        );
        // Nothing of the other app.
        let other = &apps[1 - i];
        let (other_pid, _) = procs[1 - i];
        let os = other.state();
        let other_app = other.app_dir();
        for (what, script) in [
            (
                "read the config var",
                format!("cat {}/env/SECRET_TOKEN", os.display()),
            ),
            ("read the config", format!("cat {}/config", os.display())),
            ("read the log", format!("cat {}/app.log", os.display())),
            ("listed the app dir", format!("ls {}", other_app.display())),
            (
                "read the app",
                format!("cat {}/index.html", other_app.display()),
            ),
            (
                "wrote the app dir",
                format!("touch {}/pwned", other_app.display()),
            ),
            (
                "wrote the config",
                format!("echo x >>{}/config", os.display()),
            ),
            (
                "wrote the log",
                format!("echo x >>{}/app.log", os.display()),
            ),
            (
                "wrote the hook",
                format!("echo x >>{}/hooks/pre-receive", other.repo().display()),
            ),
            (
                "read the source",
                format!("ls {}/objects", other.repo().display()),
            ),
            ("signalled the app", format!("kill -0 {other_pid}")),
            (
                "read the app's environment",
                format!("cat /proc/{other_pid}/environ"),
            ),
        ] {
            assert!(
                !as_uid(uid, &script),
                "app {i} {what} of the other: {script}"
            );
        }
    }
    // Both still serve their own.
    for app in &apps {
        assert_eq!(http_get(app.port, "/").unwrap().1, "version one\n");
    }
}

/// Something that answers any HTTP request with 200 on 127.0.0.1:`port`
/// (a squatter that would pass a check by HTTP alone), until dropped.
struct Squatter {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Squatter {
    fn bind(port: u16) -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::io::{Read, Write};
            for mut conn in listener.incoming().flatten() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nsquatted\n");
            }
        });
        Ok(Self {
            port,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        // Wake the accept up: the thread ends, and the port is free.
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The port of the `Started vN as pid P on port X` line of a push log.
fn started_on(log: &str, release: &str) -> Option<u16> {
    let line = log
        .lines()
        .find(|l| l.contains(&format!("Started {release} as pid ")))?;
    line.rsplit_once("on port ")?.1.trim().parse().ok()
}

/// The boot check wants the new release's own process on its fresh port,
/// answering HTTP: a release that never listens (`web: sleep 600`) is
/// refused even while something else answers HTTP on that port, and the
/// old release keeps serving; a block whose every port is held refuses
/// the deploy before it starts anything.
#[test]
fn a_release_must_answer_on_its_own_port() {
    if !require_root("the git push hook") {
        return;
    }
    let (deployed, _bps) = steered_host(&["--boot-timeout", "5"]);
    let (work, remote) = first_push(&deployed);
    let w = work.path();
    let serving = deployed.pid();
    std::fs::write(w.join("Procfile"), "web: sleep 600\n").unwrap();
    commit(w, "never listens");

    // The port taken (by something answering HTTP) while the release boots.
    let log = work.path().join("push.log");
    let pushing = spawn_push(w, &remote, &log);
    wait_for_log(&log, "Started v2");
    let text = std::fs::read_to_string(&log).unwrap();
    let port = started_on(&text, "v2").unwrap_or_else(|| panic!("{text}"));
    assert_ne!(port, deployed.port, "the release got the public port");
    let squatter = Squatter::bind(port).unwrap();
    let status = pushing.wait(Duration::from_secs(120));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !status.success(),
        "a release that never listens was deployed:\n{text}"
    );
    assert!(text.contains("did not answer on port"), "{text}");
    assert!(text.contains("v1 is still running"), "{text}");
    assert_eq!(deployed.pid(), serving, "the old release was replaced");
    assert_eq!(http_get(deployed.port, "/").unwrap().1, "version one\n");
    drop(squatter);

    // Every internal port of the app held (but the running release's).
    let config = std::fs::read_to_string(deployed.state().join("config")).unwrap();
    let range = config
        .lines()
        .find_map(|l| l.strip_prefix("INTERNAL="))
        .unwrap();
    let (a, b) = range.split_once('-').unwrap();
    let (a, b): (u16, u16) = (a.parse().unwrap(), b.parse().unwrap());
    let _held: Vec<_> = (a..=b)
        .filter(|&p| p != deployed.internal_port())
        .map(|p| Squatter::bind(p).map_err(|e| format!("{p}: {e}")))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("a port of {range} is in use: {e}"));
    commit_empty(w, "again");
    let (ok, text) = push(w, &remote, &[]);
    assert!(!ok, "a release with no port was deployed:\n{text}");
    assert!(text.contains("is held by another process"), "{text}");
    assert_eq!(http_get(deployed.port, "/").unwrap().1, "version one\n");
    assert_eq!(deployed.pid(), serving);
}

/// What a client saw on the public port while a deploy ran.
#[derive(Debug, Default)]
struct Traffic {
    requests: usize,
    failed: Vec<String>,
    server_errors: usize,
    /// Each change of the body, with when its request was sent.
    bodies: Vec<(Instant, String)>,
}

impl Traffic {
    fn bodies(&self) -> Vec<&str> {
        self.bodies.iter().map(|(_, b)| b.as_str()).collect()
    }

    /// Whether every request sent after `done` got `want` (nginx's old
    /// workers, finishing, may answer from the old release until the
    /// switch is done; not after).
    fn only_after(&self, done: Instant, want: &str) -> bool {
        let before = self.bodies.iter().rev().find(|(t, _)| *t <= done);
        before.is_some_and(|(_, b)| b == want)
            && self.bodies.iter().all(|(t, b)| *t <= done || b == want)
    }
}

/// GET / on `port` in a loop until `stop` (one connection per request).
fn watch(port: u16, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Traffic {
    let mut seen = Traffic::default();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        seen.requests += 1;
        let sent = Instant::now();
        match http_get(port, "/") {
            Ok((status, body)) => {
                if status >= 500 {
                    seen.server_errors += 1;
                }
                if seen.bodies.last().map(|(_, b)| b) != Some(&body) {
                    seen.bodies.push((sent, body));
                }
            }
            Err(e) => seen.failed.push(e.to_string()),
        }
    }
    seen
}

/// Run `deploy` while a client loops on the public port; returns what the
/// client saw, how long the deploy took and when it was done.
fn under_traffic<T>(port: u16, deploy: impl FnOnce() -> T) -> (T, Traffic, Duration, Instant) {
    use std::sync::{atomic::AtomicBool, Arc};
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || watch(port, stop))
    };
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let result = deploy();
    let took = started.elapsed();
    let done = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    (result, client.join().unwrap(), took, done)
}

/// A redeploy (and a rollback, the same path) under a client's loop: the
/// new release starts beside the old one, nginx switches to it, and the
/// client sees no refused connection and no 5xx, then the new body.
#[test]
fn redeploys_drop_no_request() {
    if !require_root("the git push hook") {
        return;
    }
    let (deployed, _bps) = steered_host(&[]);
    let (work, remote) = first_push(&deployed);
    let w = work.path();
    let first = deployed.internal_port();
    write_app(w, "version two");
    commit(w, "two");
    let ((ok, log), seen, took, done) = under_traffic(deployed.port, || push(w, &remote, &[]));
    assert!(ok, "{log}");
    eprintln!(
        "redeploy (push to deployed): {took:?}, {} requests, {} failed, {} 5xx, bodies {:?}",
        seen.requests,
        seen.failed.len(),
        seen.server_errors,
        seen.bodies()
    );
    assert!(seen.failed.is_empty(), "refused: {:?}\n{log}", seen.failed);
    assert_eq!(seen.server_errors, 0, "5xx during the deploy:\n{log}");
    assert_eq!(seen.bodies()[0], "version one\n", "{log}");
    assert!(
        seen.only_after(done, "version two\n"),
        "the old release answered after the deploy: {:?}\n{log}",
        seen.bodies()
    );
    assert!(seen.requests > 20, "too few requests to tell: {seen:?}");
    assert_ne!(deployed.internal_port(), first, "not a fresh port");
    assert!(log.contains("Port "), "{log}");

    let (out, seen, took, done) = under_traffic(deployed.port, || deployed.slugapp(&["rollback"]));
    assert!(out.status.success(), "{}", stderr(&out));
    eprintln!(
        "rollback: {took:?}, {} requests, {} failed, {} 5xx",
        seen.requests,
        seen.failed.len(),
        seen.server_errors
    );
    assert!(seen.failed.is_empty(), "refused: {:?}", seen.failed);
    assert_eq!(seen.server_errors, 0);
    assert_eq!(seen.bodies()[0], "version two\n");
    assert!(
        seen.only_after(done, "version one\n"),
        "{:?}",
        seen.bodies()
    );
}

fn commit_empty(dir: &Path, message: &str) {
    let out = git_in(dir, &["commit", "-q", "--allow-empty", "-m", message], &[]);
    assert!(out.status.success());
}

// ---------------------------------------------------------------------------
// Kubernetes

/// The Kubernetes version the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.30.0";

/// The manifests are valid for the named Kubernetes version (strict: no
/// unknown fields), and keep the settings the README promises.
#[test]
fn kubernetes_manifests_validate() {
    if !have("kubernetes-validate") {
        return;
    }
    let dir = repo_root().join("deploy/kubernetes");
    let files = [dir.join("build-job.yaml"), dir.join("run-deployment.yaml")];
    let validate = |paths: &[PathBuf]| {
        Command::new("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
            .args(paths)
            .output()
            .unwrap()
    };
    let out = validate(&files);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("passed").count(), 5, "{text}");

    // The validator does reject a wrong field (it is not a no-op).
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("broken.yaml");
    let job = std::fs::read_to_string(&files[0]).unwrap();
    std::fs::write(
        &broken,
        job.replace("activeDeadlineSeconds: 960", "activeDeadlineSecond: 960"),
    )
    .unwrap();
    assert!(!validate(&[broken]).status.success());

    let deployment = std::fs::read_to_string(&files[1]).unwrap();
    for needed in [
        "automountServiceAccountToken: false",
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "activeDeadlineSeconds: 960",
        "SLUGBUILDER_TIMEOUT",
        "memory: 4Gi",
    ] {
        assert!(job.contains(needed), "build-job.yaml lacks {needed}");
    }
    for needed in [
        "terminationGracePeriodSeconds: 40",
        "SLUGRUNNER_GRACE_PERIOD",
        "readinessProbe",
        "SLUG_URL",
        "automountServiceAccountToken: false",
    ] {
        assert!(
            deployment.contains(needed),
            "run-deployment.yaml lacks {needed}"
        );
    }
}
