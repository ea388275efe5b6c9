//! End-to-end test of the container images (issue 7), in real containers:
//! `scripts/container-e2e` builds the debootstrap base, the run and build
//! stacks, `Dockerfile.builder` and `Dockerfile.runner` with podman, pipes
//! `examples/hello-procfile` and `examples/flask` (or the apps named in
//! `SLUG_CONTAINER_APPS`) into the builder container, runs each slug in
//! the runner container (the first app three ways: bind-mounted slug,
//! `SLUG_URL`, an `ONBUILD` app image), asks it over HTTP on a published
//! 127.0.0.1 port and checks that `podman stop` ends it with the forwarded
//! SIGTERM within the grace period.
//!
//! The images get the binaries this test run built. The test skips (and
//! says why) only where podman cannot run at all: not root, or podman,
//! runc or debootstrap not installed. Under CI (`CI` set) nothing is
//! skipped: a missing tool fails the test, since `scripts/test` installs them.

use std::path::Path;
use std::process::Command;

/// Upper bound for the whole flow; a cold run (debootstrap, both stacks
/// from the Debian mirror) took about 10 minutes here on 2 cores, a warm
/// one 4 to 6.
const TIME_LIMIT_SECS: u32 = 45 * 60;

/// Whether `tool` is on PATH or in the sbin directories, which root's PATH
/// may lack (runc and debootstrap live there; the script adds them).
fn installed(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(Into::into))
        .any(|dir| dir.join(tool).is_file())
}

/// Why podman cannot run here, if it cannot.
fn why_containers_cannot_run() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root (podman with vfs storage, debootstrap)".into());
    }
    let missing: Vec<&str> = [
        "podman",
        "runc",
        "debootstrap",
        "curl",
        "python3",
        "timeout",
    ]
    .into_iter()
    .filter(|tool| !installed(tool))
    .collect();
    if !missing.is_empty() {
        return Some(format!(
            "not installed: {} (apt-get install podman runc debootstrap curl python3)",
            missing.join(", ")
        ));
    }
    None
}

#[test]
fn builder_and_runner_images_build_run_and_stop_an_app_in_podman() {
    if !e2e::runnable(
        "builder_and_runner_images_build_run_and_stop_an_app_in_podman",
        why_containers_cannot_run(),
    ) {
        return;
    }

    // hello-procfile needs nothing but the stack; flask runs the python
    // buildpack (venv, pip from PyPI) in the builder container.
    let apps =
        std::env::var("SLUG_CONTAINER_APPS").unwrap_or_else(|_| "hello-procfile flask".to_string());
    let script = e2e::repo_root().join("scripts/container-e2e");
    let builder = e2e::bin("slugbuilder");
    let runner = e2e::bin("slugrunner");
    assert!(Path::new(&builder).is_file() && Path::new(&runner).is_file());

    // The script's phases, timings and image sizes go straight to the test
    // output (inherited stdout/stderr), which is what CI logs show.
    let status = Command::new("timeout")
        .args(["--kill-after=30", &TIME_LIMIT_SECS.to_string()])
        .arg(&script)
        .args(apps.split_whitespace())
        .env("SLUGBUILDER_BIN", &builder)
        .env("SLUGRUNNER_BIN", &runner)
        .current_dir(e2e::repo_root())
        .status()
        .expect("run scripts/container-e2e");
    assert!(
        status.success(),
        "scripts/container-e2e failed ({status}); its output above says which phase"
    );
}

/// Upper bound for the Kubernetes flow, images included (a warm run, the
/// images cached, is about 2 to 3 minutes here; a cold one builds them).
const KUBE_TIME_LIMIT_SECS: u32 = 45 * 60;

/// deploy/kubernetes run, not only validated (issue 25 item 9):
/// `scripts/kube-e2e` tags the builder and runner images with the names the
/// manifests use and plays them with `podman kube play` (the Job's pod
/// template as a Pod: podman 4.3 plays no Job), the build pod fetches the
/// source and PUTs the slug through its Secret's URLs (a loopback store),
/// the Deployment's pod fetches it through SLUG_URL and answers 200, and
/// deletion (SIGTERM, terminationGracePeriodSeconds, then `kube down`)
/// ends slugrunner with 143, not SIGKILL's 137.
#[test]
fn kubernetes_manifests_run_in_podman_kube_play() {
    let why = why_containers_cannot_run().or_else(|| {
        let mut missing: Vec<&str> = ["slirp4netns"]
            .into_iter()
            .filter(|tool| !installed(tool))
            .collect();
        let yaml = Command::new("python3")
            .args(["-c", "import yaml"])
            .status()
            .is_ok_and(|s| s.success());
        if !yaml {
            missing.push("python3-yaml");
        }
        (!missing.is_empty()).then(|| format!("not installed: {}", missing.join(", ")))
    });
    if let Some(reason) = why {
        let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
        assert!(
            !in_ci,
            "CI must run the Kubernetes test, but it cannot: {reason}"
        );
        eprintln!("SKIPPED kubernetes_manifests_run_in_podman_kube_play: {reason}");
        return;
    }
    let builder = e2e::bin("slugbuilder");
    let runner = e2e::bin("slugrunner");
    let started = std::time::Instant::now();
    let status = Command::new("timeout")
        .args(["--kill-after=30", &KUBE_TIME_LIMIT_SECS.to_string()])
        .arg(e2e::repo_root().join("scripts/kube-e2e"))
        .env("SLUGBUILDER_BIN", &builder)
        .env("SLUGRUNNER_BIN", &runner)
        .current_dir(e2e::repo_root())
        .status()
        .expect("run scripts/kube-e2e");
    eprintln!(
        "scripts/kube-e2e took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        status.success(),
        "scripts/kube-e2e failed ({status}); its output above says which phase"
    );
}
