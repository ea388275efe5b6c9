//! End-to-end tests of slugrunner: the real binary, slugs built in code (and
//! one built by slugbuilder), every point of issue 3.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::slugs::{
    http_response, processes, require_root, run_with_timeout, serve_http, wait_output, wait_until,
    Finished, Guarded, Layout, Slug,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The one scratch-dir type of the e2e tests.
use e2e::apps::Case;

const TIMEOUT: Duration = Duration::from_secs(30);

fn run(cmd: &mut Command) -> Finished {
    run_with_timeout(cmd, TIMEOUT)
}

fn assert_ok(out: &Finished) {
    assert_eq!(
        out.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn dot_rooted_slug_runs_procfile_edge_cases() {
    let case = Case::new();
    // A comment, a blank line, `web:cmd` without a space, CRLF, and no
    // trailing newline.
    let slug = Slug::with_procfile(
        "# the app\n\nweb:echo \"web on $PORT as $DYNO in $HOME at $(pwd)\"\r\nworker: echo 'worker: ok' | tr a-z A-Z",
    );
    let out = run(case.runner_with(&slug).args(["start", "web"]));
    assert_ok(&out);
    let app = case.app_dir().canonicalize().unwrap();
    let app = app.display();
    assert_eq!(
        out.stdout,
        format!("web on 5000 as web.1 in {app} at {app}\n")
    );
    let out = run(case.runner().args(["start", "worker"]));
    assert_ok(&out);
    assert_eq!(out.stdout, "WORKER: OK\n");
}

#[test]
fn app_rooted_slug_is_hoisted() {
    let case = Case::new();
    let slug = Slug::new(Layout::App)
        .file("Procfile", "web: cat lib/data.txt")
        .file("lib/data.txt", "from ./app/\n");
    let out = run(case.runner_with(&slug).args(["start", "web"]));
    assert_ok(&out);
    assert_eq!(out.stdout, "from ./app/\n");
    assert!(case.app_dir().join("Procfile").is_file());
    assert!(!case.app_dir().join("app").exists());
}

#[test]
fn slug_on_stdin() {
    let case = Case::new();
    let slug = Slug::with_procfile("web: echo stdin slug");
    let mut child = case
        .runner()
        .args(["--slug", "-", "start", "web"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&slug.tgz()).unwrap();
    }
    let out = wait_output(child, TIMEOUT);
    assert_ok(&out);
    assert_eq!(out.stdout, "stdin slug\n");
}

#[test]
fn duplicate_process_types_are_reported() {
    let case = Case::new();
    let slug = Slug::with_procfile("web: a\nworker: b\n\nweb: c\n");
    let out = run(case.runner_with(&slug).args(["start", "worker"]));
    assert_eq!(out.code(), Some(10), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("line 4") && out.stderr.contains("line 1"),
        "{}",
        out.stderr
    );
}

#[test]
fn default_process_types_fill_in_and_procfile_wins() {
    let case = Case::new();
    let slug = Slug::new(Layout::Dot).file(
        ".release",
        "---\ndefault_process_types:\n  web: echo release-web\n  clock: echo release-clock\n",
    );
    let out = run(case.runner_with(&slug).args(["start", "web"]));
    assert_ok(&out);
    assert_eq!(out.stdout, "release-web\n");

    let case = Case::new();
    let slug = slug.file("Procfile", "web: echo procfile-web\n");
    let out = run(case.runner_with(&slug).args(["start", "web"]));
    assert_eq!(out.stdout, "procfile-web\n");
    let out = run(case.runner().args(["start", "clock"]));
    assert_eq!(out.stdout, "release-clock\n");
}

#[test]
fn unknown_process_type_lists_the_known_ones() {
    let case = Case::new();
    let slug = Slug::with_procfile("web: true\nworker: true\n")
        .file(".release", "default_process_types:\n  clock: true\n");
    let out = run(case.runner_with(&slug).args(["start", "nope"]));
    assert_eq!(out.code(), Some(21));
    assert_eq!(out.stdout, "");
    assert_eq!(
        out.stderr.trim(),
        "slugrunner: unknown process type \"nope\"; this app has: web, worker, clock"
    );
    // A name that could be injected never gets near a shell.
    let out = run(case.runner().args(["start", "web;touch pwned"]));
    assert_eq!(out.code(), Some(21));
    assert!(!case.app_dir().join("pwned").exists());
}

#[test]
fn profile_d_in_byte_order_then_profile() {
    let case = Case::new();
    let log = "echo \"$(basename \"${BASH_SOURCE[0]}\")\" >> \"$HOME/order\"\n";
    let slug = Slug::with_procfile("web: cat order; echo \"$FROM_D $PLAIN $FROM_PROFILE\"")
        .file(".profile.d/b.sh", log)
        .file(".profile.d/a.sh", format!("{log}export FROM_D=d\n"))
        .file(".profile.d/B.sh", log)
        .file(".profile.d/10-x.sh", format!("{log}PLAIN=plain\n"))
        .file(".profile.d/notes.txt", "exit 1\n")
        .file(".profile", format!("{log}export FROM_PROFILE=profile\n"));
    let out = run(case.runner_with(&slug).args(["start", "web"]));
    assert_ok(&out);
    assert_eq!(
        out.stdout,
        "10-x.sh\nB.sh\na.sh\nb.sh\n.profile\nd plain profile\n"
    );
}

#[test]
fn config_vars_do_not_override() {
    let case = Case::new();
    let slug = Slug::with_procfile("web: echo \"$FROM_CALLER|$FROM_FILE|$FROM_DIR|$ONLY_RELEASE|$TRICKY\"")
        .file(
            ".release",
            "config_vars:\n  FROM_CALLER: release\n  FROM_FILE: release\n  FROM_DIR: release\n  ONLY_RELEASE: release\n",
        );
    let env_file = case.dir.path().join("env");
    std::fs::write(
        &env_file,
        "# config\nexport FROM_FILE=file\nTRICKY='$(touch pwned); `id` \"x\"'\n",
    )
    .unwrap();
    let env_dir = case.dir.path().join("envdir");
    std::fs::create_dir(&env_dir).unwrap();
    std::fs::write(env_dir.join("FROM_DIR"), "dir\n").unwrap();
    let out = run(case
        .runner_with(&slug)
        .env("FROM_CALLER", "caller")
        .arg("--env-file")
        .arg(&env_file)
        .arg("--env-dir")
        .arg(&env_dir)
        .args(["start", "web"]));
    assert_ok(&out);
    assert_eq!(
        out.stdout,
        "caller|file|dir|release|$(touch pwned); `id` \"x\"\n"
    );
    assert!(!case.app_dir().join("pwned").exists());
}

#[test]
fn bad_env_file_names_the_line() {
    let case = Case::new();
    let env_file = case.dir.path().join("env");
    std::fs::write(&env_file, "A=1\nNOT VALID=2\n").unwrap();
    let out = run(case
        .runner_with(&Slug::with_procfile("web: true"))
        .arg("--env-file")
        .arg(&env_file)
        .args(["start", "web"]));
    assert_eq!(out.code(), Some(10));
    assert!(out.stderr.contains("line 2"), "{}", out.stderr);
    // Checked before the slug is touched.
    assert!(!case.app_dir().exists());
}

#[test]
fn exec_preserves_arguments_exactly() {
    let case = Case::new();
    let slug = Slug::with_procfile("web: true");
    let args = ["printf", "%s\\n", "a b", "$HOME", "\"q\"", "", "it's", "*"];
    let out = run(case.runner_with(&slug).arg("exec").args(args));
    assert_ok(&out);
    assert_eq!(out.stdout, "a b\n$HOME\n\"q\"\n\nit's\n*\n");
    // Any other first word is exec, as herokuish's /exec.
    let out = run(case.runner().args(args));
    assert_ok(&out);
    assert_eq!(out.stdout, "a b\n$HOME\n\"q\"\n\nit's\n*\n");
    // One-off dynos are run.1 and get PORT too; the caller's DYNO wins.
    let out = run(case.runner().args(["exec", "sh", "-c", "echo $DYNO $PORT"]));
    assert_eq!(out.stdout, "run.1 5000\n");
    let out = run(case
        .runner()
        .env("DYNO", "web.7")
        .env("PORT", "8080")
        .args(["exec", "sh", "-c", "echo $DYNO $PORT"]));
    assert_eq!(out.stdout, "web.7 8080\n");
    // A missing command: one line, and bash's 127.
    let out = run(case.runner().args(["exec", "no-such-command-xyz", "arg"]));
    assert_eq!(out.code(), Some(127));
    assert_eq!(
        out.stderr,
        "slugrunner: no-such-command-xyz: command not found\n"
    );
    // The exit status of the command is slugrunner's.
    let out = run(case.runner().args(["exec", "sh", "-c", "exit 7"]));
    assert_eq!(out.code(), Some(7));
}

#[test]
fn slug_url_is_never_passed_to_the_app() {
    let case = Case::new();
    let slug = Slug::with_procfile("web: echo \"url=${SLUG_URL-unset}\"");
    let (url, server) = serve_http(vec![http_response("200 OK", &slug.tgz())]);
    let out = run(case
        .runner()
        .env("SLUG_URL", format!("{url}/slug.tgz?X-Signature=secret"))
        .args(["start", "web"]));
    assert_ok(&out);
    assert_eq!(out.stdout, "url=unset\n");
    assert_eq!(server.join().unwrap().len(), 1);
}

#[test]
fn slug_url_is_retried_after_a_503() {
    let case = Case::new();
    let slug = Slug::new(Layout::App).file("Procfile", "web: echo downloaded");
    let (url, server) = serve_http(vec![
        http_response("503 Service Unavailable", b"busy"),
        http_response("200 OK", &slug.tgz()),
    ]);
    let out = run(case
        .runner()
        .env("SLUG_URL", format!("{url}/slugs/abc.tgz"))
        .args(["start", "web"]));
    assert_ok(&out);
    assert_eq!(out.stdout, "downloaded\n");
    let requests = server.join().unwrap();
    assert_eq!(
        requests,
        ["GET /slugs/abc.tgz HTTP/1.1", "GET /slugs/abc.tgz HTTP/1.1"]
    );
}

#[test]
fn bad_slug_url_is_a_fetch_error() {
    let case = Case::new();
    let (url, server) = serve_http(vec![http_response("404 Not Found", b"")]);
    let out = run(case
        .runner()
        .env("SLUG_URL", format!("{url}/missing.tgz?sig=secret"))
        .args(["start", "web"]));
    assert_eq!(out.code(), Some(20), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("404"), "{}", out.stderr);
    assert!(!out.stderr.contains("secret"), "{}", out.stderr);
    server.join().unwrap();

    let out = run(case
        .runner()
        .env("SLUG_URL", "ftp://example.invalid/slug.tgz")
        .args(["start", "web"]));
    assert_eq!(out.code(), Some(20), "{}", out.stderr);
}

#[test]
fn missing_app_and_hostile_slug_are_bad_input() {
    let case = Case::new();
    let out = run(case.runner().args(["start", "web"]));
    assert_eq!(out.code(), Some(10));
    assert!(out.stderr.contains("nothing to run"), "{}", out.stderr);

    // A slug entry that climbs out of the app dir.
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(4);
    let name = b"./../escaped";
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_cksum();
    builder.append(&header, &b"evil"[..]).unwrap();
    let tar = builder.into_inner().unwrap();
    let path = case.dir.path().join("evil.tar");
    std::fs::write(&path, tar).unwrap();
    let out = run(case
        .runner()
        .arg("--slug")
        .arg(&path)
        .args(["start", "web"]));
    assert_eq!(out.code(), Some(10), "{}", out.stderr);
    assert!(!case.dir.path().join("escaped").exists());
}

/// `web: sleep` replaces bash: the process slugrunner started is `sleep`
/// itself, so signals reach the app and nothing stands in between.
#[test]
fn simple_command_replaces_bash_and_slugrunner() {
    let case = Case::new();
    let slug = Slug::with_procfile("web: sleep 30\n").file(".profile.d/x.sh", "export X=1\n");
    let child = Guarded::new(
        case.runner_with(&slug)
            .args(["start", "web"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let comm = format!("/proc/{}/comm", child.pid());
    let became_sleep = wait_until(Duration::from_secs(10), || {
        read(Path::new(&comm)).trim() == "sleep"
    });
    assert!(became_sleep, "comm is {:?}", read(Path::new(&comm)));
}

/// Without `--init`, slugrunner becomes the app: the stop signals it
/// blocks for itself while it installs must not stay blocked in the app
/// (a mask survives execve), or `docker stop` waits out its grace period.
#[test]
fn sigterm_reaches_an_app_started_without_init() {
    let case = Case::new();
    let slug = Slug::with_procfile(
        "web: trap 'echo got-term > \"$HOME/marker\"; exit 42' TERM; touch \"$HOME/ready\"; while :; do sleep 0.05; done",
    );
    let child = Guarded::new(
        case.runner_with(&slug)
            .args(["start", "web"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = child.pid();
    assert!(
        wait_until(Duration::from_secs(10), || case
            .app_dir()
            .join("ready")
            .exists()),
        "the app never started"
    );
    let status = read(Path::new(&format!("/proc/{pid}/status")));
    let blocked = status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .expect("SigBlk in /proc/PID/status");
    // SIGHUP, SIGINT, SIGTERM (bash itself blocks SIGCHLD at moments).
    let stop_signals = (1 << (1 - 1)) | (1 << (2 - 1)) | (1 << (15 - 1));
    assert_eq!(
        blocked & stop_signals,
        0,
        "the app starts with stop signals blocked: {blocked:#x}"
    );
    kill(pid, Signal::SIGTERM).unwrap();
    let out = child.output(TIMEOUT);
    assert_eq!(out.code(), Some(42), "{}", out.stderr);
    assert_eq!(read(&case.app_dir().join("marker")), "got-term\n");
}

fn spawn_init(case: &Case, slug: &Slug, extra: &[&str]) -> Guarded {
    Guarded::new(
        case.runner_with(slug)
            .arg("--init")
            .args(extra)
            .args(["start", "web"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn sigterm_reaches_the_app_and_its_status_comes_back() {
    let case = Case::new();
    let slug = Slug::with_procfile(
        "web: trap 'echo got-term > \"$HOME/marker\"; exit 42' TERM; touch \"$HOME/ready\"; while :; do sleep 0.05; done",
    );
    let child = spawn_init(&case, &slug, &[]);
    let pid = child.pid();
    assert!(
        wait_until(Duration::from_secs(10), || case
            .app_dir()
            .join("ready")
            .exists()),
        "the app never started"
    );
    kill(pid, Signal::SIGTERM).unwrap();
    let out = child.output(TIMEOUT);
    assert_eq!(out.code(), Some(42), "{}", out.stderr);
    assert_eq!(read(&case.app_dir().join("marker")), "got-term\n");
}

#[test]
fn app_ignoring_sigterm_is_killed_after_the_grace_period() {
    let case = Case::new();
    let slug = Slug::with_procfile(
        "web: trap '' TERM; touch \"$HOME/ready\"; while :; do sleep 0.05; done",
    );
    let child = spawn_init(&case, &slug, &["--grace-period", "1"]);
    let pid = child.pid();
    assert!(wait_until(Duration::from_secs(10), || case
        .app_dir()
        .join("ready")
        .exists()));
    let start = Instant::now();
    kill(pid, Signal::SIGTERM).unwrap();
    let out = child.output(TIMEOUT);
    let took = start.elapsed();
    assert_eq!(out.code(), Some(137), "{}", out.stderr);
    assert!(
        took >= Duration::from_millis(900),
        "killed too early: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "killed too late: {took:?}");
}

#[test]
fn other_signals_are_forwarded() {
    let case = Case::new();
    let slug = Slug::with_procfile(
        "web: trap 'echo usr1 >> \"$HOME/log\"' USR1; trap 'echo hup >> \"$HOME/log\"; exit 3' HUP; touch \"$HOME/ready\"; while :; do sleep 0.05; done",
    );
    let child = spawn_init(&case, &slug, &[]);
    let pid = child.pid();
    assert!(wait_until(Duration::from_secs(10), || case
        .app_dir()
        .join("ready")
        .exists()));
    kill(pid, Signal::SIGUSR1).unwrap();
    assert!(wait_until(Duration::from_secs(10), || read(
        &case.app_dir().join("log")
    ) == "usr1\n"));
    kill(pid, Signal::SIGHUP).unwrap();
    let out = child.output(TIMEOUT);
    assert_eq!(out.code(), Some(3), "{}", out.stderr);
    assert_eq!(read(&case.app_dir().join("log")), "usr1\nhup\n");
}

/// Orphans of the app come to the supervisor (it is a child subreaper)
/// and are reaped when they exit: while they live their parent is
/// slugrunner (not the machine's init), and afterwards no zombie is left.
#[test]
fn orphaned_grandchildren_are_reaped() {
    let case = Case::new();
    // A sleep of about 2 s whose exact duration tells ours apart.
    let tag = format!(
        "2.{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let slug = Slug::with_procfile(&format!(
        "web: for i in 1 2 3; do (sleep {tag} &); done; touch \"$HOME/ready\"; sleep 6"
    ));
    let child = spawn_init(&case, &slug, &[]);
    let pid = child.pid().as_raw();
    assert!(wait_until(Duration::from_secs(10), || case
        .app_dir()
        .join("ready")
        .exists()));
    assert!(wait_until(Duration::from_secs(5), || {
        e2e::slugs::processes_with_arg(&tag).len() == 3
    }));
    let orphans = e2e::slugs::processes_with_arg(&tag);
    let parents = || -> Vec<i32> {
        processes()
            .into_iter()
            .filter(|(p, _, _)| orphans.contains(p))
            .map(|(_, _, ppid)| ppid)
            .collect()
    };
    // Their subshells exit at once; then their parent is slugrunner.
    assert!(
        wait_until(Duration::from_secs(2), || parents() == [pid, pid, pid]),
        "orphans were not re-parented to slugrunner ({pid}): {:?}",
        parents()
    );
    // Once they exit, slugrunner reaps them: no zombie child of it stays.
    assert!(wait_until(Duration::from_secs(10), || {
        e2e::slugs::processes_with_arg(&tag).is_empty()
            && !processes()
                .into_iter()
                .any(|(p, state, ppid)| ppid == pid && state == 'Z' && orphans.contains(&p))
    }));
    let status = child.wait(TIMEOUT);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn init_exit_code_and_leftover_group_members_are_cleaned_up() {
    let case = Case::new();
    // The main process exits while a background member of its group lives
    // on and ignores nothing: it gets SIGTERM and slugrunner returns 5.
    let slug = Slug::with_procfile("web: sleep 60 & echo $! > \"$HOME/bg\"; sleep 0.2; exit 5");
    let child = spawn_init(&case, &slug, &["--grace-period", "5"]);
    let out = child.output(TIMEOUT);
    assert_eq!(out.code(), Some(5), "{}", out.stderr);
    let bg: i32 = read(&case.app_dir().join("bg")).trim().parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !Path::new(&format!(
            "/proc/{bg}"
        ))
        .exists()
            || read(Path::new(&format!("/proc/{bg}/stat"))).contains(") Z")),
        "background process {bg} survived"
    );
}

#[test]
fn runs_unprivileged_when_started_as_root() {
    if !require_root("dropping privileges") {
        return;
    }
    let case = Case::new();
    let slug = Slug::with_procfile("web: id -u; id -g");
    let out = run(case.runner_with(&slug).args(["start", "web"]));
    assert_ok(&out);
    let uid: u32 = out.stdout.lines().next().unwrap().parse().unwrap();
    assert_ne!(uid, 0, "ran as root");
    // Files are owned by the app user from the start, the app dir too.
    for path in [case.app_dir().clone(), case.app_dir().join("Procfile")] {
        assert_eq!(std::fs::metadata(&path).unwrap().uid(), uid, "{path:?}");
    }
    // The app dir's owner is the default from then on.
    let out = run(case.runner().args(["exec", "id", "-u"]));
    assert_eq!(out.stdout.trim(), uid.to_string());

    // --user picks someone else, and root only when asked for.
    let case = Case::new();
    let out = run(case
        .runner_with(&slug)
        .args(["--user", "4242:4343", "start", "web"]));
    assert_ok(&out);
    assert_eq!(out.stdout, "4242\n4343\n");
    assert_eq!(
        std::fs::metadata(case.app_dir().join("Procfile"))
            .unwrap()
            .uid(),
        4242
    );
    let out = run(case.runner().args(["--user", "root", "exec", "id", "-u"]));
    assert_eq!(out.stdout, "0\n");
    // No supplementary groups of root survive the drop.
    let out = run(case.runner().args(["--user", "4242", "exec", "id", "-G"]));
    assert_eq!(out.stdout.trim(), "4242");
    // The same in init mode.
    let out = run(case
        .runner()
        .args(["--init", "--user", "4242", "exec", "id", "-u"]));
    assert_eq!(out.stdout, "4242\n");
    let out = run(case
        .runner()
        .args(["--user", "no-such-user-xyz", "exec", "true"]));
    assert_eq!(out.code(), Some(2));
}

#[test]
fn slug_built_by_slugbuilder_runs() {
    let builder = e2e::bin("slugbuilder");
    let case = Case::new();
    // A buildpack in a few lines of shell: detect anything, compile writes
    // a script, release declares the web process and a config var.
    let bp = case.dir.path().join("bp");
    std::fs::create_dir_all(bp.join("bin")).unwrap();
    let scripts = [
        ("detect", "#!/bin/sh\necho Shell\n"),
        (
            "compile",
            "#!/bin/sh\nset -e\nmkdir -p \"$1/bin\" \"$1/.profile.d\"\nprintf '#!/bin/sh\\necho \"built: $GREETING on $PORT\"\\n' > \"$1/bin/hello\"\nchmod +x \"$1/bin/hello\"\necho 'export PATH=\"$HOME/bin:$PATH\"' > \"$1/.profile.d/path.sh\"\n",
        ),
        (
            "release",
            "#!/bin/sh\ncat <<EOF\n---\nconfig_vars:\n  GREETING: hello\ndefault_process_types:\n  web: hello\nEOF\n",
        ),
    ];
    for (name, body) in scripts {
        let path = bp.join("bin").join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let source = Slug::new(Layout::Dot).file("README", "an app\n").tar();
    let slug_path = case.dir.path().join("built.tgz");
    let mut build = Command::new(builder)
        .arg("--buildpack")
        .arg(&bp)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&slug_path).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = build.stdin.take().unwrap();
        // A failing slugbuilder may close stdin early: its stderr says why.
        let _ = stdin.write_all(&source);
    }
    let built = wait_output(build, Duration::from_secs(120));
    assert_eq!(
        built.code(),
        Some(0),
        "slugbuilder failed: {}",
        built.stderr
    );

    let out = run(case
        .runner()
        .arg("--slug")
        .arg(&slug_path)
        .args(["start", "web"]));
    assert_ok(&out);
    assert_eq!(out.stdout, "built: hello on 5000\n");
}

/// The real PID 1 case: in a new PID namespace slugrunner is init without
/// being asked, and SIGTERM from outside still reaches the app.
#[test]
fn pid_1_in_a_pid_namespace() {
    if !require_root("a PID namespace") {
        return;
    }
    let unshare_works = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        unshare_works,
        "unshare --pid --fork --mount-proc does not work here (as root)"
    );
    let case = Case::new();
    let slug = Slug::with_procfile(
        "web: cat /proc/1/comm > \"$HOME/pid1\"; trap 'echo got-term > \"$HOME/marker\"; exit 42' TERM; while :; do sleep 0.05; done",
    );
    let path = slug.write_to(case.dir.path());
    let child = Guarded::new(
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(e2e::bin("slugrunner"))
            .arg("--app-dir")
            .arg(case.app_dir())
            .arg("--slug")
            .arg(&path)
            .args(["start", "web"])
            .env_remove("SLUG_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(10), || read(
            &case.app_dir().join("pid1")
        ) == "slugrunner\n"),
        "pid 1 is {:?}",
        read(&case.app_dir().join("pid1"))
    );
    let unshare = child.pid().as_raw();
    let runner = processes()
        .into_iter()
        .find(|&(_, _, ppid)| ppid == unshare)
        .map(|(pid, _, _)| Pid::from_raw(pid))
        .expect("slugrunner under unshare");
    kill(runner, Signal::SIGTERM).unwrap();
    let out = child.output(TIMEOUT);
    assert_eq!(out.code(), Some(42), "{}", out.stderr);
    assert_eq!(read(&case.app_dir().join("marker")), "got-term\n");
}

// --- Hostile slugs and apps (issue 11) ---------------------------------------

/// Write a raw tar (from `e2e::hostile::RawTar`) as the case's slug.
fn raw_slug(case: &Case, tar: Vec<u8>) -> Command {
    let path = case.dir.path().join("raw-slug.tar");
    std::fs::write(&path, tar).unwrap();
    let mut cmd = case.runner();
    cmd.arg("--slug").arg(path);
    cmd
}

/// A root-only secret file beside the case.
fn root_only_secret(case: &Case) -> PathBuf {
    let dir = case.dir.path().join("secret");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("shadow");
    std::fs::write(&file, "root-password: hunter2\nweb: cat /etc/shadow\n").unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    file
}

/// A slug whose only entry is a link `app` to a directory of the host:
/// installing it must not move (or touch) anything of that directory.
#[test]
fn an_app_link_slug_moves_nothing_of_the_host() {
    let case = Case::new();
    let victim = e2e::hostile::make_victim(case.dir.path());
    let before = e2e::hostile::snapshot(&victim);
    let tar = e2e::hostile::RawTar::new()
        .symlink("app", victim.to_str().unwrap())
        .finish();
    let out = run(raw_slug(&case, tar).args(["start", "web"]));
    assert_ne!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(
        e2e::hostile::snapshot(&victim),
        before,
        "the host dir changed"
    );
    assert!(
        !case.app_dir().join("file").exists(),
        "a host file was moved into the app"
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
}

/// A Procfile or .release that links to a root-only file, or to
/// /dev/zero: slugrunner, still root, must not read it, print it, run it,
/// or eat memory.
#[test]
fn linked_procfile_and_release_are_refused_unread() {
    let case = Case::new();
    let secret = root_only_secret(&case);
    for (name, target) in [
        ("Procfile", secret.to_str().unwrap()),
        ("Procfile", "/dev/zero"),
        (".release", secret.to_str().unwrap()),
        (".release", "/dev/zero"),
    ] {
        let case = Case::new();
        let mut tar = e2e::hostile::RawTar::new().symlink(name, target);
        if name == ".release" {
            tar = tar.file("Procfile", b"web: echo hi\n");
        }
        let mut cmd = raw_slug(&case, tar.finish());
        let start = Instant::now();
        let out = run(cmd.args(["start", "web"]));
        assert_eq!(out.code(), Some(10), "{name} -> {target}: {}", out.stderr);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{name} -> {target}"
        );
        assert!(out.stderr.contains("symbolic link"), "{}", out.stderr);
        assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
        assert!(!out.stdout.contains("hunter2"), "{}", out.stdout);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    }
}

#[test]
fn a_deeply_nested_release_is_refused_at_once() {
    let case = Case::new();
    let slug = Slug::with_procfile("web: echo hi\n").file(".release", "[".repeat(200_000));
    let mut cmd = case.runner_with(&slug);
    let start = Instant::now();
    let out = run(cmd.args(["start", "web"]));
    assert_eq!(out.code(), Some(10), "{}", out.stderr);
    assert!(out.stderr.contains("deeper than"), "{}", out.stderr);
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// With --init the supervisor keeps its rights: an app that kills its
/// parent cannot, and one that leaves its session is still stopped.
#[test]
fn the_supervisor_cannot_be_killed_or_escaped_by_the_app() {
    if !require_root("a supervisor the app cannot kill") {
        return;
    }
    let case = Case::new();
    let tag = e2e::slugs::unique_tag();
    let slug = Slug::with_procfile(&format!(
        "web: setsid sleep {tag} </dev/null >/dev/null 2>&1 & kill -9 $PPID; echo \"kill:$?\" > \"$HOME/killed\"; exec sleep {tag}\n"
    ));
    let child = spawn_init(&case, &slug, &["--grace-period", "3"]);
    assert!(wait_until(Duration::from_secs(10), || case
        .app_dir()
        .join("killed")
        .exists()));
    assert!(
        wait_until(Duration::from_secs(5), || e2e::slugs::processes_with_arg(
            &tag
        )
        .len()
            >= 2),
        "the app did not start both sleeps"
    );
    assert!(
        read(&case.app_dir().join("killed")).starts_with("kill:1"),
        "{}",
        read(&case.app_dir().join("killed"))
    );
    // The supervisor is alive and stops everything, the setsid one too.
    assert!(Path::new(&format!("/proc/{}", child.pid())).exists());
    kill(child.pid(), Signal::SIGTERM).unwrap();
    let out = child.output(TIMEOUT);
    assert_eq!(out.code(), Some(143), "{}", out.stderr);
    let left = e2e::slugs::wait_processes_gone(&tag, Duration::from_secs(5));
    assert!(
        left.is_empty(),
        "processes of the app outlived slugrunner: {left:?}"
    );
}

/// A server that sends one byte every second: the download's deadline and
/// its minimum-progress rule end it, exit 20, and the app dir is left as
/// it was (here: not there).
#[test]
fn a_trickling_slug_url_fails_within_its_deadline() {
    let case = Case::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/slug.tgz", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 2048];
        let _ = conn.read(&mut buf);
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n\x1f\x8b");
        for _ in 0..30 {
            std::thread::sleep(Duration::from_secs(1));
            if conn.write_all(b"x").is_err() {
                return;
            }
        }
    });
    let mut cmd = case.runner();
    cmd.env("SLUG_URL", &url)
        .args(["--download-timeout", "3", "start", "web"]);
    let start = Instant::now();
    let out = run(&mut cmd);
    assert_eq!(out.code(), Some(20), "{}", out.stderr);
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "took {:?}",
        start.elapsed()
    );
    assert!(out.stderr.contains("time limit"), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(
        !case.app_dir().exists(),
        "a failed download left an app dir"
    );
    drop(server);
}

/// Errors quote the OS's message once, not twice.
#[test]
fn errors_do_not_repeat_the_os_message() {
    let case = Case::new();
    let out = run(case
        .runner()
        .args(["--slug", "/nonexistent/slug.tgz", "start", "web"]));
    assert_ne!(out.code(), Some(0));
    assert_eq!(
        out.stderr.matches("os error 2").count(),
        1,
        "{}",
        out.stderr
    );
    let out = run(case
        .runner()
        .args(["--env-file", "/nonexistent/env", "start", "web"]));
    assert_eq!(
        out.stderr.matches("os error 2").count(),
        1,
        "{}",
        out.stderr
    );
}

// --- The root boundary and stopping in every phase (issue 22) ----------------

/// Compile C `source` with cc into `out` (extra flags after the source).
fn cc(case: &Case, name: &str, source: &str, flags: &[&str]) -> Vec<u8> {
    let src = case.dir.path().join(format!("{name}.c"));
    let out = case.dir.path().join(name);
    std::fs::write(&src, source).unwrap();
    let status = Command::new("cc")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("cc is installed");
    assert!(status.success(), "cc {name}.c failed");
    std::fs::read(&out).unwrap()
}

/// `cmd` as PID 1 of a new PID namespace (and its own /proc).
fn as_pid_1(cmd: &Command) -> Command {
    let mut outer = Command::new("unshare");
    outer
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => outer.env(key, v),
            None => outer.env_remove(key),
        };
    }
    outer
}

/// The process unshare forked (slugrunner as PID 1), once it exists.
fn child_of(parent: Pid) -> Pid {
    let mut found = None;
    wait_until(Duration::from_secs(10), || {
        found = processes()
            .into_iter()
            .find(|&(_, _, ppid)| ppid == parent.as_raw())
            .map(|(pid, _, _)| Pid::from_raw(pid));
        found.is_some()
    });
    found.expect("a child of unshare")
}

/// A slug whose `.release` sets LD_PRELOAD to a library it ships, whose
/// constructor leaves a marker named after the uid that loaded it.
fn ld_preload_slug(case: &Case, procfile: &str) -> (Slug, PathBuf) {
    let markers = case.dir.path().join("markers");
    std::fs::create_dir(&markers).unwrap();
    std::fs::set_permissions(&markers, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let source = r#"
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void mark(void) {
    char path[4096];
    snprintf(path, sizeof path, "%s/uid-%d", MARKER_DIR, (int)getuid());
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0666);
    if (fd >= 0) { (void)write(fd, "x", 1); close(fd); }
}
"#;
    let define = format!("-DMARKER_DIR=\"{}\"", markers.display());
    let lib = cc(case, "evil.so", source, &["-shared", "-fPIC", &define]);
    let release = format!(
        "config_vars:\n  LD_PRELOAD: {}\n",
        case.app_dir().join("evil.so").display()
    );
    let slug = Slug::with_procfile(procfile)
        .file_mode("evil.so", lib, 0o755)
        .file(".release", release);
    (slug, markers)
}

fn markers(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Issue 22: a slug's LD_PRELOAD (from `.release`) is loaded by the app,
/// as the app user, and never by anything of slugrunner that runs as
/// root: not with --init, not as PID 1, not on the plain exec path.
#[test]
fn issue_22_a_slug_ld_preload_never_runs_as_root() {
    if !require_root("starting the app as another user") {
        return;
    }
    let mut as_root = Vec::new();
    for mode in ["plain", "--init", "pid 1"] {
        let case = Case::new();
        let (slug, dir) = ld_preload_slug(&case, "web: echo \"preload=$LD_PRELOAD\"\n");
        let mut cmd = case.runner_with(&slug);
        if mode == "--init" {
            cmd.arg("--init");
        }
        cmd.args(["start", "web"]);
        let out = match mode {
            "pid 1" => run(&mut as_pid_1(&cmd)),
            _ => run(&mut cmd),
        };
        assert_ok(&out);
        let mut seen = markers(&dir);
        if let Some(i) = seen.iter().position(|m| m == "uid-0") {
            as_root.push(mode);
            seen.remove(i);
        }
        // The positive side: the app still gets the preload, as itself.
        assert_eq!(
            out.stdout,
            format!("preload={}\n", case.app_dir().join("evil.so").display()),
            "{mode}"
        );
        assert_eq!(seen.len(), 1, "{mode}: {seen:?}");
    }
    assert!(
        as_root.is_empty(),
        "the slug's library ran as root: {as_root:?}"
    );
}

/// Issue 22: `.profile.d` linking to a root-only directory: root never
/// lists it, so no name of it reaches the app or the log; the app runs.
#[test]
fn issue_22_a_profile_d_link_is_never_listed() {
    if !require_root("a root-only directory") {
        return;
    }
    let case = Case::new();
    let secret = case.dir.path().join("root-only");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("secret-name-4711.sh"), "export LEAK=1\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
    let tar = e2e::hostile::RawTar::new()
        .file("Procfile", b"web: echo \"ran:${LEAK:-no}\"\n")
        .symlink(".profile.d", secret.to_str().unwrap())
        .finish();
    for extra in [&[][..], &["--init"][..]] {
        let out = run(raw_slug(&case, tar.clone())
            .args(extra)
            .args(["start", "web"]));
        assert_ok(&out);
        assert_eq!(out.stdout, "ran:no\n", "{extra:?}");
        assert!(
            !out.stderr.contains("secret-name"),
            "{extra:?}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(".profile.d"),
            "{extra:?}: {}",
            out.stderr
        );
        let _ = std::fs::remove_dir_all(case.app_dir());
    }
}

/// Bytes gzip cannot shrink, so that a slug is as large on the wire.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A server on 127.0.0.1 that sends `body` (with its length) in 4 KiB
/// pieces 50 ms apart, to one client; it stops when the client goes or
/// after 30 s.
fn trickling_server(body: Vec<u8>) -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/slug.tgz", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let handle = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let start = Instant::now();
        let mut conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(_) if start.elapsed() < Duration::from_secs(30) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(_) => return,
            }
        };
        conn.set_nonblocking(false).unwrap();
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        if conn.write_all(head.as_bytes()).is_err() {
            return;
        }
        for piece in body.chunks(4096) {
            if start.elapsed() > Duration::from_secs(30) || conn.write_all(piece).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    (url, handle)
}

/// Issue 22: SIGTERM 0.5 s into a slow SLUG_URL download ends slugrunner
/// within a second, as PID 1 and not: exit 143, the line says where, and
/// nothing of the slug stays behind.
#[test]
fn issue_22_sigterm_while_a_slug_trickles_in_ends_within_a_second() {
    let modes: &[&str] = if e2e::slugs::is_root() || require_root("a PID namespace") {
        &["plain", "pid 1"]
    } else {
        &["plain"]
    };
    for &mode in modes {
        let case = Case::new();
        let slug = Slug::with_procfile("web: echo started\n").file("big.bin", noise(2 << 20));
        let (url, server) = trickling_server(slug.tgz());
        let mut cmd = case.runner();
        cmd.env("SLUG_URL", &url).args(["start", "web"]);
        let mut cmd = if mode == "pid 1" { as_pid_1(&cmd) } else { cmd };
        let started = Instant::now();
        let child = Guarded::new(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let target = if mode == "pid 1" {
            child_of(child.pid())
        } else {
            child.pid()
        };
        std::thread::sleep(Duration::from_millis(500).saturating_sub(started.elapsed()));
        assert!(case.app_dir().exists(), "{mode}: unpacking had not begun");
        kill(target, Signal::SIGTERM).unwrap();
        let signalled = Instant::now();
        let out = child.output(Duration::from_secs(10));
        let took = signalled.elapsed();
        assert_eq!(out.code(), Some(143), "{mode}: {}", out.stderr);
        assert!(took < Duration::from_secs(1), "{mode}: took {took:?}");
        assert!(
            out.stderr
                .contains("slugrunner: stopped by SIGTERM while unpacking the slug"),
            "{mode}: {}",
            out.stderr
        );
        assert!(
            !case.app_dir().exists(),
            "{mode}: the half-unpacked slug stayed"
        );
        server.join().unwrap();
    }
}

/// Issue 22: no signature or credential of SLUG_URL in the log, even at
/// trace level, where the HTTP client has most to say.
#[test]
fn issue_22_a_signed_slug_url_never_reaches_the_log() {
    let case = Case::new();
    let slug = Slug::with_procfile("web: echo ok\n");
    let (base, server) = serve_http(vec![http_response("200 OK", &slug.tgz())]);
    let url = format!(
        "http://user:pass-77@{}/slug.tgz?X-Amz-Credential=AKIAEXAMPLE77&X-Amz-Signature=5ec12e7deadbeef",
        base.trim_start_matches("http://")
    );
    let out = run(case
        .runner()
        .env("SLUG_URL", &url)
        .env("SLUG_LOG", "trace")
        .args(["start", "web"]));
    assert_ok(&out);
    assert!(out.stderr.contains("/slug.tgz"), "{}", out.stderr);
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let packed: String = out.stderr.split_whitespace().collect();
    for secret in ["5ec12e7deadbeef", "AKIAEXAMPLE77", "X-Amz-", "pass-77"] {
        assert!(!out.stderr.contains(secret), "{secret}: {}", out.stderr);
        assert!(!packed.contains(&hex(&secret[..4])), "{secret} as hex");
    }
    server.join().unwrap();
}

/// Issue 22: run as root with a dropped user from an operator's terminal
/// (`script` gives it one), the app cannot push input into it, inherits
/// no descriptor beyond 0-2, and with --init has a session of its own.
#[test]
fn issue_22_the_app_cannot_use_the_operators_terminal() {
    if !require_root("a dropped user") {
        return;
    }
    let case = Case::new();
    let probe = cc(
        &case,
        "probe",
        r#"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
int main(void) {
    char c = '#';
    int r = ioctl(0, TIOCSTI, &c);
    printf("tiocsti:%s\n", r == 0 ? "pushed" : strerror(errno));
    printf("fd7:%s\n", fcntl(7, F_GETFD) == -1 ? "closed" : "open");
    printf("own-session:%s\n", getsid(0) == getpid() ? "yes" : "no");
    return 0;
}
"#,
        &[],
    );
    let slug = Slug::with_procfile("web: ./probe\n").file_mode("probe", probe, 0o755);
    let path = slug.write_to(case.dir.path());
    for extra in ["", "--init", "--init --tty"] {
        let line = format!(
            "exec 7</etc/hostname; exec {} --app-dir {} --slug {} {extra} exec ./probe",
            e2e::bin("slugrunner").display(),
            case.app_dir().display(),
            path.display()
        );
        let out = run(Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .stdin(Stdio::null()));
        assert!(
            out.stdout.contains("tiocsti:Operation not permitted"),
            "{extra}: {}",
            out.stdout
        );
        assert!(out.stdout.contains("fd7:closed"), "{extra}: {}", out.stdout);
        if extra == "--init" {
            assert!(
                out.stdout.contains("own-session:yes"),
                "{extra}: {}",
                out.stdout
            );
        }
        let _ = std::fs::remove_dir_all(case.app_dir());
    }
}
