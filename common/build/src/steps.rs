//! Choosing buildpacks and running their steps: detect, compile, export,
//! release.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::workspace::Workspace;
use super::{BuildConfig, BuildError, Phase};
use crate::buildpack::{self, describe_status, Buildpack, Fetcher, Origin};
use crate::child::{Env, Step, StepRunner};
use crate::report::{Recorder, StepName};
use crate::sandbox::Sandbox;
use slug_shared::log;
use slug_shared::release::Release;
use slug_shared::rootdir::{Owner, RootDir, RootError};

/// The bundled catch-all buildpack (apps that only bring a Procfile).
const FALLBACK_BUILDPACK: &str = "procfile";

/// Largest `.buildpacks` file read.
const MAX_LIST_FILE: u64 = 64 << 10;

/// The documented compile environment, and nothing else of ours.
pub fn base_env(cfg: &BuildConfig, sandbox: &Sandbox, source_version: Option<&str>) -> Env {
    let inner = sandbox.inner();
    let mut env = Env::new();
    env.insert("PATH".into(), cfg.path.clone());
    env.insert("HOME".into(), inner.home.clone().into());
    env.insert("TMPDIR".into(), inner.tmp.clone().into());
    env.insert("STACK".into(), cfg.stack.clone().into());
    env.insert("REQUEST_ID".into(), cfg.request_id.clone().into());
    env.insert("APP_DIR".into(), cfg.app_dir.clone().into());
    if let Some(v) = source_version {
        env.insert("SOURCE_VERSION".into(), v.into());
    }
    for (k, v) in &cfg.pass_env {
        env.insert(k.clone(), v.clone());
    }
    env
}

/// What the buildpacks did: which ran (with their index in the report),
/// and the environment their exports left for `bin/release`.
#[derive(Debug)]
pub struct Ran {
    pub buildpacks: Vec<Buildpack>,
    report_index: Vec<usize>,
    env: Env,
}

/// Choose, fetch and run the buildpacks (detect, compile, export), each
/// step timed into `rec`.
pub fn run_buildpacks(
    cfg: &BuildConfig,
    runner: &StepRunner,
    ws: &Workspace,
    bundled: Option<&Path>,
    mut env: Env,
    owner: Owner,
    rec: &Recorder,
) -> Result<Ran, BuildError> {
    let sandbox = runner.sandbox();
    trust_operator_repositories(ws, owner)?;
    let mut fetcher = Fetcher::new(
        runner,
        env.clone(),
        ws.buildpacks.clone(),
        runner.cancel_arc(),
    );
    fetcher.bundled = bundled.map(Path::to_path_buf);
    fetcher.owner = owner;
    fetcher.allow_local = cfg.allow_local_buildpacks;

    let build_inner = sandbox.inner().build.clone();
    let (buildpacks, report_index, detected) = match choose_buildpacks(cfg, &ws.build)? {
        Some(specs) => {
            let (bps, report_index) = fetch_named(&specs, &mut fetcher, runner, &env, rec)?;
            (bps, report_index, None)
        }
        None => {
            let (bp, name, index) = detect_installed_for(cfg, bundled, &mut fetcher, &env, rec)?;
            (vec![bp], vec![index], Some(name))
        }
    };

    for (i, bp) in buildpacks.iter().enumerate() {
        let index = report_index[i];
        let name = match (&detected, i) {
            (Some(n), 0) => n.clone(),
            // No bin/detect: nothing runs, nothing is timed.
            _ if !bp.has("detect") => bp.name.clone(),
            _ => rec.step(index, StepName::Detect, || {
                detect_explicit(runner, bp, &env, &build_inner)
            })?,
        };
        rec.update_buildpack(index, |r| r.name = Some(name.clone()));
        log::header(format!("{name} app detected"));
        rec.step(index, StepName::Compile, || compile(runner, bp, &env))?;
        if let Some(export) = bp.export_file() {
            rec.step(index, StepName::Export, || {
                source_export(runner, bp, &export, &mut env, &build_inner)
            })?;
        }
    }
    Ok(Ran {
        buildpacks,
        report_index,
        env,
    })
}

/// git refuses to clone a repository owned by another user (an
/// operator's file:// buildpack) unless told it is safe; git's local
/// transport drops `-c` options, so it goes into the build's own HOME.
fn trust_operator_repositories(ws: &Workspace, owner: Owner) -> Result<(), BuildError> {
    RootDir::open_existing(&ws.home)
        .and_then(|mut home| {
            home.set_owner(owner);
            home.write_file(
                &[OsStr::new(".gitconfig")],
                b"[safe]\n\tdirectory = *\n",
                0o644,
            )
        })
        .map_err(|e| BuildError::Io {
            context: "writing the build's .gitconfig".into(),
            source: e.into_io(),
        })
}

/// Fetch the buildpacks named for this build, in order, each recorded in
/// the report (with the commit it resolved to); returns them with their
/// report indexes.
fn fetch_named(
    specs: &[(String, Origin)],
    fetcher: &mut Fetcher<'_>,
    runner: &StepRunner,
    env: &Env,
    rec: &Recorder,
) -> Result<(Vec<Buildpack>, Vec<usize>), BuildError> {
    if specs.len() > 1 {
        log::header("Fetching buildpacks");
    }
    let mut bps = Vec::new();
    let mut report_index = Vec::new();
    for (spec, origin) in specs {
        let index = rec.add_buildpack(spec);
        report_index.push(index);
        let bp = fetcher.fetch(spec, *origin)?;
        let commit = resolved_commit(runner, &bp, env);
        rec.update_buildpack(index, |r| {
            r.commit = commit;
            r.digest = bp.digest.clone();
        });
        bps.push(bp);
    }
    Ok((bps, report_index))
}

/// With no buildpack named: the first of the installed ones (the
/// operator's directory, else the bundled ones) whose `bin/detect`
/// accepts the app. Returns it, the name it gave, and its report index.
fn detect_installed_for(
    cfg: &BuildConfig,
    bundled: Option<&Path>,
    fetcher: &mut Fetcher<'_>,
    env: &Env,
    rec: &Recorder,
) -> Result<(Buildpack, String, usize), BuildError> {
    let installed_dir = match (&cfg.buildpacks_dir, bundled) {
        (Some(dir), _) => dir.clone(),
        (None, Some(dir)) => dir.to_path_buf(),
        (None, None) => {
            return Err(BuildError::NoBuildpack {
                tried: "none installed".into(),
            })
        }
    };
    let runner = fetcher.runner;
    let build_inner = runner.sandbox().inner().build.clone();
    let (bp, name, took) = detect_installed(&installed_dir, runner, fetcher, env, &build_inner)?;
    let index = rec.add_buildpack(&bp.spec);
    rec.update_buildpack(index, |r| r.steps.detect = Some(took));
    Ok((bp, name, index))
}

/// Run `bin/release` of every buildpack, in order, and merge what they
/// say (later buildpacks win by process type).
pub fn run_releases(runner: &StepRunner, ran: &Ran, rec: &Recorder) -> Result<Release, BuildError> {
    let build_inner = runner.sandbox().inner().build.clone();
    let mut release = Release::default();
    for (bp, &index) in ran.buildpacks.iter().zip(&ran.report_index) {
        if !bp.has("release") {
            continue;
        }
        let r = rec.step(index, StepName::Release, || {
            run_release(runner, bp, &ran.env, &build_inner)
        })?;
        if let Some(r) = r {
            release.merge(r);
        }
    }
    Ok(release)
}

/// The commit a git buildpack's clone checked out, asked of `git
/// rev-parse` in the sandbox (the clone is the build user's tree, never
/// read by us). `None` for other buildpacks, or when git cannot say.
fn resolved_commit(runner: &StepRunner, bp: &Buildpack, env: &Env) -> Option<String> {
    if !matches!(
        buildpack::Source::parse(&bp.spec),
        Ok(buildpack::Source::Git { .. })
    ) {
        return None;
    }
    let git = slug_shared::exe::find("git", env.get(OsStr::new("PATH")).map(OsString::as_os_str))?;
    let inner = runner.sandbox().to_inner(&bp.dir);
    let args = [
        OsStr::new("-c"),
        OsStr::new("safe.directory=*"),
        OsStr::new("-C"),
        inner.as_os_str(),
        OsStr::new("rev-parse"),
        OsStr::new("--verify"),
        OsStr::new("HEAD^{commit}"),
    ];
    let mut env = env.clone();
    env.insert("GIT_CONFIG_NOSYSTEM".into(), "1".into());
    let cwd = runner.sandbox().inner().buildpacks.clone();
    let out = match runner.run(Step::new(&git, &args, &env, &cwd).capture()) {
        Ok(out) => out,
        Err(e) => {
            tracing::debug!("git rev-parse in {}: {e}", bp.dir.display());
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && super::source::is_commit_id(&text)).then_some(text)
}

/// Buildpacks named explicitly, in priority order, with who named them;
/// `None` means detect.
fn choose_buildpacks(
    cfg: &BuildConfig,
    build: &Path,
) -> Result<Option<Vec<(String, Origin)>>, BuildError> {
    let operator = |list: Vec<String>| list.into_iter().map(|s| (s, Origin::Operator)).collect();
    if !cfg.explicit_buildpacks.is_empty() {
        return Ok(Some(operator(cfg.explicit_buildpacks.clone())));
    }
    let mut root = RootDir::open_existing(build).map_err(|e| BuildError::Io {
        context: "opening the build dir".into(),
        source: e.into_io(),
    })?;
    match root.read_file(&[OsStr::new(".buildpacks")], MAX_LIST_FILE) {
        Ok(Some(text)) => {
            let list = buildpack::parse_list_file(&String::from_utf8_lossy(&text));
            if !list.is_empty() {
                return Ok(Some(list.into_iter().map(|s| (s, Origin::App)).collect()));
            }
        }
        Ok(None) => {}
        Err(e @ (RootError::NotRegular { .. } | RootError::TooLarge { .. })) => {
            return Err(BuildError::ListFile(e))
        }
        Err(e) => {
            return Err(BuildError::Io {
                context: "reading .buildpacks".into(),
                source: e.into_io(),
            })
        }
    }
    if let Some(env) = &cfg.buildpacks_env {
        let list = buildpack::parse_list_env(env);
        if !list.is_empty() {
            return Ok(Some(operator(list)));
        }
    }
    Ok(None)
}

fn step_err(
    bp: &Buildpack,
    phase: Phase,
) -> impl FnOnce(crate::child::StepError) -> BuildError + '_ {
    move |source| match source {
        crate::child::StepError::LimitReached(hit) => BuildError::LimitReached {
            hit,
            phase,
            buildpack: bp.name.clone(),
        },
        source => BuildError::Step {
            buildpack: bp.spec.clone(),
            phase,
            source,
        },
    }
}

/// `program` of `bp` as the sandbox sees it.
fn inner_bin(runner: &StepRunner, bp: &Buildpack, step: &str) -> PathBuf {
    runner.sandbox().to_inner(&bp.bin(step))
}

/// Run `bin/detect`: `Ok(Ok(name))` when it applies, `Ok(Err(status))` when not.
fn run_detect(
    runner: &StepRunner,
    bp: &Buildpack,
    env: &Env,
    build: &Path,
) -> Result<Result<String, String>, BuildError> {
    let program = inner_bin(runner, bp, "detect");
    let out = runner
        .run(Step::new(&program, &[build.as_os_str()], env, build).capture())
        .map_err(step_err(bp, Phase::Detect))?;
    if !out.status.success() {
        return Ok(Err(describe_status(out.status)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let name = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    Ok(Ok(if name.is_empty() {
        bp.name.clone()
    } else {
        name.chars().filter(|c| !c.is_control()).take(100).collect()
    }))
}

fn detect_explicit(
    runner: &StepRunner,
    bp: &Buildpack,
    env: &Env,
    build: &Path,
) -> Result<String, BuildError> {
    if !bp.has("detect") {
        return Ok(bp.name.clone());
    }
    run_detect(runner, bp, env, build)?.map_err(|status| BuildError::Refused {
        buildpack: bp.spec.clone(),
        status,
    })
}

/// The first installed buildpack whose `bin/detect` applies, with the
/// name it printed and how long its detect took (in seconds).
fn detect_installed(
    dir: &Path,
    runner: &StepRunner,
    fetcher: &mut Fetcher<'_>,
    env: &Env,
    build: &Path,
) -> Result<(Buildpack, String, f64), BuildError> {
    let installed = buildpack::installed(dir)?;
    let mut matched: Vec<(Buildpack, String, f64)> = Vec::new();
    for candidate in &installed {
        if !buildpack::is_executable(&candidate.dir.join("bin/detect")) {
            continue;
        }
        let bp = fetcher.copy_installed(candidate)?;
        let start = std::time::Instant::now();
        let detected = run_detect(runner, &bp, env, build)?;
        let took = crate::report::seconds(start.elapsed());
        if let Ok(name) = detected {
            matched.push((bp, name, took));
        }
    }
    let mut matched = matched.into_iter();
    let Some(first) = matched.next() else {
        return Err(BuildError::NoBuildpack {
            tried: installed
                .iter()
                .map(|i| i.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    // The bundled `procfile` buildpack applies to every app with a Procfile:
    // naming it would turn the warning into noise on every build.
    let others: Vec<String> = matched
        .map(|(bp, _, _)| bp.name)
        .filter(|name| name != FALLBACK_BUILDPACK)
        .collect();
    if !others.is_empty() {
        log::warn(format!(
            "Using buildpack {}; these also detected this app: {} (set BUILDPACKS or .buildpacks to use several)",
            first.0.name,
            others.join(", ")
        ));
    }
    Ok(first)
}

fn compile(runner: &StepRunner, bp: &Buildpack, env: &Env) -> Result<(), BuildError> {
    let inner = runner.sandbox().inner();
    let args = [
        inner.build.as_os_str(),
        inner.cache.as_os_str(),
        inner.env.as_os_str(),
    ];
    let program = inner_bin(runner, bp, "compile");
    let out = runner
        .run(Step::new(&program, &args, env, &inner.build))
        .map_err(step_err(bp, Phase::Compile))?;
    if !out.status.success() {
        return Err(BuildError::StepFailed {
            buildpack: bp.spec.clone(),
            phase: Phase::Compile,
            status: describe_status(out.status),
            output: out.tail,
        });
    }
    Ok(())
}

/// Variables that bash sets for itself and that must not leak into the
/// environment of later buildpacks.
const SHELL_VARS: &[&str] = &["_", "SHLVL", "PWD", "OLDPWD"];

/// Source the buildpack's `export` file in a sandboxed bash (never in our
/// own process) and take the variables it exports for the later buildpacks.
fn source_export(
    runner: &StepRunner,
    bp: &Buildpack,
    export: &Path,
    env: &mut Env,
    build: &Path,
) -> Result<(), BuildError> {
    let bash = slug_shared::exe::find_bash();
    let script = OsStr::new(". \"$1\" >&2 && exec env -0");
    let export_inner = runner.sandbox().to_inner(export);
    let out = runner
        .run(
            Step::new(
                &bash,
                &[
                    OsStr::new("-c"),
                    script,
                    OsStr::new("export"),
                    export_inner.as_os_str(),
                ],
                env,
                build,
            )
            .capture(),
        )
        .map_err(step_err(bp, Phase::Export))?;
    if !out.status.success() {
        return Err(BuildError::StepFailed {
            buildpack: bp.spec.clone(),
            phase: Phase::Export,
            status: describe_status(out.status),
            output: out.tail,
        });
    }
    let mut exported = Env::new();
    for record in out.stdout.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        if let Some(eq) = record.iter().position(|&b| b == b'=') {
            let key = OsStr::from_bytes(&record[..eq]).to_os_string();
            if SHELL_VARS.iter().any(|v| OsStr::new(v) == key) {
                continue;
            }
            exported.insert(key, OsString::from(OsStr::from_bytes(&record[eq + 1..])));
        }
    }
    *env = exported;
    Ok(())
}

fn run_release(
    runner: &StepRunner,
    bp: &Buildpack,
    env: &Env,
    build: &Path,
) -> Result<Option<Release>, BuildError> {
    if !bp.has("release") {
        return Ok(None);
    }
    let program = inner_bin(runner, bp, "release");
    let out = runner
        .run(Step::new(&program, &[build.as_os_str()], env, build).capture())
        .map_err(step_err(bp, Phase::Release))?;
    if !out.status.success() {
        return Err(BuildError::StepFailed {
            buildpack: bp.spec.clone(),
            phase: Phase::Release,
            status: describe_status(out.status),
            output: out.tail,
        });
    }
    Release::parse(&out.stdout)
        .map(Some)
        .map_err(|source| BuildError::Release {
            buildpack: bp.spec.clone(),
            source,
        })
}
