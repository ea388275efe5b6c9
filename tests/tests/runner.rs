//! End-to-end tests of slugrunner: the real binary, slugs built in code (and
//! one built by slugbuilder), every point of issue 3.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::slugs::{
    http_response, is_root, processes, run_with_timeout, serve_http, wait_output, wait_until,
    Finished, Guarded, Layout, Slug,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A scratch dir (traversable by the unprivileged app user) with an app dir
/// path inside it that does not exist yet.
struct Case {
    dir: tempfile::TempDir,
    app: PathBuf,
}

impl Case {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod tempdir");
        let app = dir.path().join("app");
        Self { dir, app }
    }

    /// slugrunner with a clean runner environment and this case's app dir.
    fn runner(&self) -> Command {
        let mut cmd = Command::new(e2e::bin("slugrunner"));
        cmd.env_remove("SLUG_URL")
            .env_remove("SLUG_LOG")
            .env_remove("PORT")
            .env_remove("DYNO")
            .env_remove("SLUGRUNNER_GRACE_PERIOD")
            .arg("--app-dir")
            .arg(&self.app);
        cmd
    }

    /// slugrunner with `slug` written to a file and passed with --slug.
    fn with_slug(&self, slug: &Slug) -> Command {
        let path = slug.write_to(self.dir.path());
        let mut cmd = self.runner();
        cmd.arg("--slug").arg(path);
        cmd
    }

    fn path(&self, name: &str) -> PathBuf {
        self.app.join(name)
    }
}

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
    let out = run(case.with_slug(&slug).args(["start", "web"]));
    assert_ok(&out);
    let app = case.app.canonicalize().unwrap();
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
    let out = run(case.with_slug(&slug).args(["start", "web"]));
    assert_ok(&out);
    assert_eq!(out.stdout, "from ./app/\n");
    assert!(case.path("Procfile").is_file());
    assert!(!case.path("app").exists());
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
    let out = run(case.with_slug(&slug).args(["start", "worker"]));
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
    let out = run(case.with_slug(&slug).args(["start", "web"]));
    assert_ok(&out);
    assert_eq!(out.stdout, "release-web\n");

    let case = Case::new();
    let slug = slug.file("Procfile", "web: echo procfile-web\n");
    let out = run(case.with_slug(&slug).args(["start", "web"]));
    assert_eq!(out.stdout, "procfile-web\n");
    let out = run(case.runner().args(["start", "clock"]));
    assert_eq!(out.stdout, "release-clock\n");
}

#[test]
fn unknown_process_type_lists_the_known_ones() {
    let case = Case::new();
    let slug = Slug::with_procfile("web: true\nworker: true\n")
        .file(".release", "default_process_types:\n  clock: true\n");
    let out = run(case.with_slug(&slug).args(["start", "nope"]));
    assert_eq!(out.code(), Some(21));
    assert_eq!(out.stdout, "");
    assert_eq!(
        out.stderr.trim(),
        "slugrunner: unknown process type \"nope\"; this app has: web, worker, clock"
    );
    // A name that could be injected never gets near a shell.
    let out = run(case.runner().args(["start", "web;touch pwned"]));
    assert_eq!(out.code(), Some(21));
    assert!(!case.path("pwned").exists());
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
    let out = run(case.with_slug(&slug).args(["start", "web"]));
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
        .with_slug(&slug)
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
    assert!(!case.path("pwned").exists());
}

#[test]
fn bad_env_file_names_the_line() {
    let case = Case::new();
    let env_file = case.dir.path().join("env");
    std::fs::write(&env_file, "A=1\nNOT VALID=2\n").unwrap();
    let out = run(case
        .with_slug(&Slug::with_procfile("web: true"))
        .arg("--env-file")
        .arg(&env_file)
        .args(["start", "web"]));
    assert_eq!(out.code(), Some(10));
    assert!(out.stderr.contains("line 2"), "{}", out.stderr);
    // Checked before the slug is touched.
    assert!(!case.app.exists());
}

#[test]
fn exec_preserves_arguments_exactly() {
    let case = Case::new();
    let slug = Slug::with_procfile("web: true");
    let args = ["printf", "%s\\n", "a b", "$HOME", "\"q\"", "", "it's", "*"];
    let out = run(case.with_slug(&slug).arg("exec").args(args));
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
        case.with_slug(&slug)
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

fn spawn_init(case: &Case, slug: &Slug, extra: &[&str]) -> Guarded {
    Guarded::new(
        case.with_slug(slug)
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
        wait_until(Duration::from_secs(10), || case.path("ready").exists()),
        "the app never started"
    );
    kill(pid, Signal::SIGTERM).unwrap();
    let out = child.output(TIMEOUT);
    assert_eq!(out.code(), Some(42), "{}", out.stderr);
    assert_eq!(read(&case.path("marker")), "got-term\n");
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
        .path("ready")
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
        .path("ready")
        .exists()));
    kill(pid, Signal::SIGUSR1).unwrap();
    assert!(wait_until(Duration::from_secs(10), || read(
        &case.path("log")
    ) == "usr1\n"));
    kill(pid, Signal::SIGHUP).unwrap();
    let out = child.output(TIMEOUT);
    assert_eq!(out.code(), Some(3), "{}", out.stderr);
    assert_eq!(read(&case.path("log")), "usr1\nhup\n");
}

#[test]
fn orphaned_grandchildren_are_reaped() {
    let case = Case::new();
    // Each subshell leaves an orphan that exits soon: re-parented to
    // slugrunner (child subreaper), it is a zombie until slugrunner reaps it.
    let slug = Slug::with_procfile(
        "web: for i in 1 2 3 4 5; do (sleep 0.1 &); done; touch \"$HOME/ready\"; sleep 3",
    );
    let child = spawn_init(&case, &slug, &[]);
    let pid = child.pid().as_raw();
    assert!(wait_until(Duration::from_secs(10), || case
        .path("ready")
        .exists()));
    // Long enough for the orphans to exit and be re-parented.
    std::thread::sleep(Duration::from_millis(800));
    let zombies: Vec<_> = processes()
        .into_iter()
        .filter(|&(_, state, ppid)| state == 'Z' && ppid == pid)
        .collect();
    let status = child.wait(TIMEOUT);
    assert!(
        zombies.is_empty(),
        "zombie children of slugrunner: {zombies:?}"
    );
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
    let bg: i32 = read(&case.path("bg")).trim().parse().unwrap();
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
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let case = Case::new();
    let slug = Slug::with_procfile("web: id -u; id -g");
    let out = run(case.with_slug(&slug).args(["start", "web"]));
    assert_ok(&out);
    let uid: u32 = out.stdout.lines().next().unwrap().parse().unwrap();
    assert_ne!(uid, 0, "ran as root");
    // Files are owned by the app user from the start, the app dir too.
    for path in [case.app.clone(), case.path("Procfile")] {
        assert_eq!(std::fs::metadata(&path).unwrap().uid(), uid, "{path:?}");
    }
    // The app dir's owner is the default from then on.
    let out = run(case.runner().args(["exec", "id", "-u"]));
    assert_eq!(out.stdout.trim(), uid.to_string());

    // --user picks someone else, and root only when asked for.
    let case = Case::new();
    let out = run(case
        .with_slug(&slug)
        .args(["--user", "4242:4343", "start", "web"]));
    assert_ok(&out);
    assert_eq!(out.stdout, "4242\n4343\n");
    assert_eq!(
        std::fs::metadata(case.path("Procfile")).unwrap().uid(),
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
    let unshare_works = is_root()
        && Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "true"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !unshare_works {
        eprintln!("skipped: needs root and unshare(1)");
        return;
    }
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
            .arg(&case.app)
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
        wait_until(Duration::from_secs(10), || read(&case.path("pid1"))
            == "slugrunner\n"),
        "pid 1 is {:?}",
        read(&case.path("pid1"))
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
    assert_eq!(read(&case.path("marker")), "got-term\n");
}
