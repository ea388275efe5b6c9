//! The dyno environment: what a process started from a slug sees (contract §4).
//!
//! * Config vars: the caller's environment, then `--env-file` files
//!   (`KEY=VALUE` lines, never evaluated as shell), then an ENV dir (one file
//!   per variable, as herokuish and the buildpack API use), then `config_vars`
//!   from the slug's `.release` only where nothing set them already.
//! * `HOME` is the app dir, `PORT` defaults to 5000, `DYNO` is `TYPE.1`
//!   (`run.1` for one-off commands) unless given.
//! * The process runs through a fixed bash launcher that sources
//!   `.profile.d/*.sh` (byte order) and `.profile`, then `exec`s the command.
//!   File names and commands reach the launcher only as arguments, never as
//!   part of its script text, so no value can inject shell code.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use slug_shared::archive::{unpack_slug, ArchiveError, UnpackOptions, UnpackSummary};
use slug_shared::http::{self, HttpError, HttpOptions};
use slug_shared::procfile::{is_valid_process_type, Procfile, ProcfileError};
use slug_shared::release::{is_valid_env_name, Release, ReleaseError};

/// `PORT` when the caller sets none (Deis/Drycc use 5000 as well).
pub const DEFAULT_PORT: &str = "5000";
/// The `DYNO` prefix of one-off processes (`exec`, `bash`), as on Heroku.
pub const ONE_OFF_DYNO: &str = "run.1";
/// Largest env file accepted, in bytes.
pub const MAX_ENV_FILE_BYTES: u64 = 1 << 20;
/// Variables of the runner itself that never reach the app: a slug URL is
/// often pre-signed and works as a credential.
pub const RUNNER_ONLY_VARS: &[&str] = &["SLUG_URL"];

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{path}: line {line}: {reason}")]
    EnvFile {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}")]
    InSlug {
        path: PathBuf,
        source: slug_shared::rootdir::RootError,
    },
    #[error("env dir {dir}: {name:?} is not a valid variable name")]
    EnvDirName { dir: PathBuf, name: String },
    #[error("env dir {dir}: {name} is not a regular file")]
    EnvDirEntry { dir: PathBuf, name: String },
    #[error("{path}: value contains a NUL byte")]
    NulInValue { path: PathBuf },
    #[error("{path} is larger than {MAX_ENV_FILE_BYTES} bytes")]
    EnvFileTooLarge { path: PathBuf },
    #[error("{path}")]
    Procfile {
        path: PathBuf,
        source: ProcfileError,
    },
    #[error("{path}")]
    Release { path: PathBuf, source: ReleaseError },
    #[error("invalid process type {name:?} (allowed: letters, digits, '_' and '-')")]
    InvalidProcessType { name: String },
    #[error("unknown process type {name:?}; {}", known_list(.known))]
    UnknownProcessType { name: String, known: Vec<String> },
    #[error("nothing to run: no --slug and no SLUG_URL given, and the app dir {dir} is {state}")]
    NoApp { dir: PathBuf, state: &'static str },
    #[error("cannot open slug {path}")]
    OpenSlug { path: PathBuf, source: io::Error },
    #[error("slug {origin}")]
    Unpack {
        origin: String,
        source: ArchiveError,
    },
    #[error(transparent)]
    Fetch(#[from] HttpError),
    #[error("cannot prepare the app dir {path}")]
    AppDir { path: PathBuf, source: io::Error },
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "this app has none (no Procfile and no default_process_types in .release)".to_string()
    } else {
        format!("this app has: {}", known.join(", "))
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, RuntimeError> {
    use std::io::Read;
    let read_err = |source| RuntimeError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_ENV_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_ENV_FILE_BYTES {
        return Err(RuntimeError::EnvFileTooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Parse env file text: `KEY=VALUE` per line. Blank lines and lines starting
/// with `#` are ignored, an `export ` prefix is allowed, and a value wholly
/// enclosed in `'...'` (literal) or `"..."` (with `\\`, `\"`, `\n`, `\$`
/// escapes) loses its quotes. Anything else is taken literally: `#` after a
/// value is part of it, and `$X` is not expanded. On error returns the
/// 1-based line number and the reason.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut vars = Vec::new();
    for (line_no, trimmed) in slug_shared::lines::content_lines(text) {
        let body = trimmed
            .strip_prefix("export")
            .filter(|rest| rest.starts_with([' ', '\t']))
            .map(str::trim_start)
            .unwrap_or(trimmed);
        let Some((name, value)) = body.split_once('=') else {
            return Err((line_no, "expected KEY=VALUE".to_string()));
        };
        if !is_valid_env_name(name) {
            let shown: String = name.chars().take(80).collect();
            return Err((line_no, format!("invalid variable name {shown:?}")));
        }
        let value = unquote(value).map_err(|reason| (line_no, reason))?;
        if value.contains('\0') {
            return Err((line_no, "value contains a NUL byte".to_string()));
        }
        vars.push((name.to_string(), value));
    }
    Ok(vars)
}

fn unquote(value: &str) -> Result<String, String> {
    let quoted = |q: char| value.len() >= 2 && value.starts_with(q) && value.ends_with(q);
    if quoted('\'') {
        return Ok(value[1..value.len() - 1].to_string());
    }
    if !quoted('"') {
        if value.starts_with(['"', '\'']) {
            return Err("unterminated quoted value".to_string());
        }
        return Ok(value.to_string());
    }
    let inner = &value[1..value.len() - 1];
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some(e @ ('\\' | '"' | '$' | '`')) => out.push(e),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => return Err("value ends with a lone backslash".to_string()),
            },
            '"' => return Err("unescaped '\"' inside a double-quoted value".to_string()),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Read an env file (see [`parse_env_file`]).
pub fn read_env_file(path: &Path) -> Result<Vec<(String, OsString)>, RuntimeError> {
    let bytes = read_limited(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| RuntimeError::EnvFile {
        path: path.to_path_buf(),
        line: bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1,
        reason: "not valid UTF-8".to_string(),
    })?;
    let vars = parse_env_file(text).map_err(|(line, reason)| RuntimeError::EnvFile {
        path: path.to_path_buf(),
        line,
        reason,
    })?;
    Ok(vars
        .into_iter()
        .map(|(k, v)| (k, OsString::from(v)))
        .collect())
}

/// Read an ENV dir: each regular file is a variable named after the file,
/// its content (less trailing newlines, as `$(cat file)` gives) the value.
/// Hidden files are skipped; other names must be valid variable names.
pub fn read_env_dir(dir: &Path) -> Result<Vec<(String, OsString)>, RuntimeError> {
    let read_err = |source| RuntimeError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut vars = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name();
        if name.as_bytes().starts_with(b".") {
            continue;
        }
        let name = name.to_string_lossy().into_owned();
        if !is_valid_env_name(&name) {
            return Err(RuntimeError::EnvDirName {
                dir: dir.to_path_buf(),
                name,
            });
        }
        let path = entry.path();
        if !path.is_file() {
            return Err(RuntimeError::EnvDirEntry {
                dir: dir.to_path_buf(),
                name,
            });
        }
        let mut value = read_limited(&path)?;
        while value.last() == Some(&b'\n') {
            value.pop();
        }
        if value.contains(&0) {
            return Err(RuntimeError::NulInValue { path });
        }
        vars.push((name, OsString::from_vec(value)));
    }
    vars.sort();
    Ok(vars)
}

/// Where the app comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlugSource {
    /// A slug file (gzip or plain tar).
    File(PathBuf),
    /// A slug on standard input.
    Stdin,
    /// A slug at an http(s) URL.
    Url(String),
    /// No slug: the app dir already holds the app (a mounted `/app`).
    AppDir,
}

/// Put the app into `app_dir`: unpack the slug (files owned by `owner` as
/// they are created, and the app dir itself too), or check that an app dir
/// used as it is holds something. Returns what was unpacked, if anything.
/// A slug that fails to install leaves the app dir as it found it (removed
/// if it did not exist, emptied if it was empty), and so does a process
/// ended by `opts.cancel`'s emergency (a signal the install does not
/// notice in time). `phase` hears what is being done (for the line that
/// says where a signal stopped it).
pub fn install_slug(
    source: &SlugSource,
    app_dir: &Path,
    opts: &UnpackOptions,
    http_opts: &HttpOptions,
    phase: &dyn Fn(&'static str),
) -> Result<Option<UnpackSummary>, RuntimeError> {
    if *source == SlugSource::AppDir {
        let state = match std::fs::read_dir(app_dir).map(|mut e| e.next().is_some()) {
            Ok(true) => return Ok(None),
            Ok(false) => "empty",
            Err(e) if e.kind() == io::ErrorKind::NotFound => "missing",
            Err(source) => {
                return Err(RuntimeError::AppDir {
                    path: app_dir.to_path_buf(),
                    source,
                })
            }
        };
        return Err(RuntimeError::NoApp {
            dir: app_dir.to_path_buf(),
            state,
        });
    }
    let before = match std::fs::read_dir(app_dir).map(|mut e| e.next().is_none()) {
        Ok(true) => Before::Empty,
        Ok(false) => Before::NotEmpty,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Before::Missing,
        Err(source) => {
            return Err(RuntimeError::AppDir {
                path: app_dir.to_path_buf(),
                source,
            })
        }
    };
    let emergency = opts.cancel.as_ref().map(|cancel| {
        let dir = app_dir.to_path_buf();
        cancel.on_emergency(move || undo_install(&dir, before))
    });
    let installed = unpack_source(source, app_dir, opts, http_opts, phase);
    if installed.is_err() {
        undo_install(app_dir, before);
    }
    if let (Some(cancel), Some(id)) = (&opts.cancel, emergency) {
        cancel.forget(id);
    }
    let summary = installed?;
    if let Some((uid, gid)) = opts.owner {
        std::os::unix::fs::chown(app_dir, Some(uid), Some(gid)).map_err(|source| {
            RuntimeError::AppDir {
                path: app_dir.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(Some(summary))
}

/// What the app dir was before a slug was unpacked into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Before {
    Missing,
    Empty,
    NotEmpty,
}

fn undo_install(app_dir: &Path, before: Before) {
    match before {
        Before::Missing => {
            let _ = slug_shared::rootdir::remove_entry(app_dir);
        }
        Before::Empty => {
            if let Ok(dir) = slug_shared::tree::open_dir(app_dir) {
                use std::os::fd::AsFd;
                for name in slug_shared::rootdir::list_dir(dir.as_fd()).unwrap_or_default() {
                    let _ = slug_shared::rootdir::remove_at(dir.as_fd(), &name);
                }
            }
        }
        // Someone else's files are there (a reused app dir): leave them.
        Before::NotEmpty => {}
    }
}

fn unpack_source(
    source: &SlugSource,
    app_dir: &Path,
    opts: &UnpackOptions,
    http_opts: &HttpOptions,
    phase: &dyn Fn(&'static str),
) -> Result<UnpackSummary, RuntimeError> {
    phase(match source {
        SlugSource::Url(_) => "downloading the slug",
        _ => "unpacking the slug",
    });
    match source {
        SlugSource::AppDir => unreachable!("handled by install_slug"),
        SlugSource::File(path) => {
            let file = std::fs::File::open(path).map_err(|source| RuntimeError::OpenSlug {
                path: path.clone(),
                source,
            })?;
            unpack_slug(file, app_dir, opts).map_err(|source| RuntimeError::Unpack {
                origin: path.display().to_string(),
                source,
            })
        }
        SlugSource::Stdin => {
            unpack_slug(io::stdin(), app_dir, opts).map_err(|source| RuntimeError::Unpack {
                origin: "on stdin".to_string(),
                source,
            })
        }
        SlugSource::Url(url) => {
            let download = http::get(url, http_opts)?;
            phase("unpacking the slug");
            let watch = download.watch();
            let mut opts = opts.clone();
            // The unpacker stops waiting for bytes at the download's
            // deadline, even while a read from the network is stuck (a
            // caller's own cancel has that deadline already).
            if let (Some(deadline), None) = (http_opts.deadline, &opts.cancel) {
                opts.cancel = Some(slug_shared::cancel::Cancel::new(
                    deadline.saturating_duration_since(std::time::Instant::now())
                        + std::time::Duration::from_secs(1),
                ));
            }
            unpack_slug(download, app_dir, &opts).map_err(|source| match watch.network_error() {
                Some(fetch_error) => RuntimeError::Fetch(fetch_error),
                None if matches!(
                    source,
                    ArchiveError::Stopped(slug_shared::cancel::Stop::TimedOut)
                ) =>
                {
                    RuntimeError::Fetch(HttpError::TimedOut {
                        what: http_opts.what,
                        url: watch.url().to_string(),
                        limit: http_opts.deadline.map_or(std::time::Duration::ZERO, |d| {
                            d.saturating_duration_since(std::time::Instant::now())
                        }),
                        bytes: watch.bytes(),
                    })
                }
                None => RuntimeError::Unpack {
                    origin: watch.url().to_string(),
                    source,
                },
            })
        }
    }
}

/// Read a file of the slug (`.release`, `Procfile`) beneath the app dir:
/// never through a link, never a FIFO or device, at most `limit` bytes.
fn read_slug_file(app_dir: &Path, name: &str, limit: u64) -> Result<Option<Vec<u8>>, RuntimeError> {
    let path = app_dir.join(name);
    let mut root =
        slug_shared::rootdir::RootDir::open_existing(app_dir).map_err(|e| RuntimeError::Read {
            path: app_dir.to_path_buf(),
            source: e.into_io(),
        })?;
    root.read_file(&[OsStr::new(name)], limit)
        .map_err(|source| RuntimeError::InSlug { path, source })
}

/// Load the slug's `.release`, if it has one.
pub fn load_release(app_dir: &Path) -> Result<Release, RuntimeError> {
    let path = app_dir.join(".release");
    match read_slug_file(
        app_dir,
        ".release",
        slug_shared::release::MAX_RELEASE_BYTES as u64,
    )? {
        Some(bytes) => {
            Release::parse(&bytes).map_err(|source| RuntimeError::Release { path, source })
        }
        None => Ok(Release::default()),
    }
}

/// The app's process types: the Procfile's entries (in file order), then the
/// `default_process_types` of `.release` that the Procfile does not name.
pub fn load_process_types(
    app_dir: &Path,
    release: &Release,
) -> Result<Vec<(String, String)>, RuntimeError> {
    let path = app_dir.join("Procfile");
    let procfile = match read_slug_file(
        app_dir,
        "Procfile",
        slug_shared::procfile::MAX_PROCFILE_BYTES as u64,
    )? {
        Some(bytes) => Procfile::parse_bytes(&bytes)
            .map_err(|source| RuntimeError::Procfile { path, source })?,
        None => Procfile::default(),
    };
    let mut types = procfile.entries().to_vec();
    let defaults = Procfile::from_map(&release.default_process_types);
    for (name, command) in defaults.entries() {
        if procfile.get(name).is_none() {
            types.push((name.clone(), command.clone()));
        }
    }
    Ok(types)
}

/// Whether `name` can be a process type at all (checked before the slug is
/// fetched).
pub fn check_process_type(name: &str) -> Result<(), RuntimeError> {
    if is_valid_process_type(name) {
        Ok(())
    } else {
        Err(RuntimeError::InvalidProcessType {
            name: name.chars().take(80).collect(),
        })
    }
}

/// The command of process type `name`, or an error listing the known types.
pub fn find_process_type<'a>(
    types: &'a [(String, String)],
    name: &str,
) -> Result<&'a str, RuntimeError> {
    check_process_type(name)?;
    types
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, c)| c.as_str())
        .ok_or_else(|| RuntimeError::UnknownProcessType {
            name: name.to_string(),
            known: types.iter().map(|(n, _)| n.clone()).collect(),
        })
}

/// Everything that decides a dyno's environment.
#[derive(Debug, Clone, Default)]
pub struct EnvSources {
    /// Config vars given explicitly (env files, then ENV dir; later wins).
    /// They override the caller's environment.
    pub explicit: Vec<(String, OsString)>,
    /// `config_vars` from `.release`: only used where nothing else set a value.
    pub release_defaults: BTreeMap<String, String>,
}

/// Build the complete environment of the process.
pub fn dyno_env(
    caller: impl IntoIterator<Item = (OsString, OsString)>,
    sources: &EnvSources,
    app_dir: &Path,
    dyno: &str,
) -> BTreeMap<OsString, OsString> {
    let mut env: BTreeMap<OsString, OsString> = caller
        .into_iter()
        .filter(|(k, _)| !RUNNER_ONLY_VARS.iter().any(|r| OsStr::new(r) == k))
        .collect();
    for (k, v) in &sources.explicit {
        env.insert(k.into(), v.clone());
    }
    for (k, v) in &sources.release_defaults {
        env.entry(k.into()).or_insert_with(|| v.into());
    }
    env.insert("HOME".into(), app_dir.as_os_str().to_owned());
    env.entry("PORT".into())
        .or_insert_with(|| DEFAULT_PORT.into());
    env.entry("DYNO".into()).or_insert_with(|| dyno.into());
    env
}

/// The scripts the launcher sources, in order: `.profile.d/*.sh` sorted by
/// bytes (as bash's glob with `LC_COLLATE=C`; hidden files excluded, as the
/// glob does), then `.profile`. Only regular files count, looked at by
/// descriptor beneath the app dir without following links (root lists
/// them): a link, as `.profile.d` or in it, is skipped with a warning.
pub fn profile_scripts(app_dir: &Path) -> Vec<PathBuf> {
    use std::os::fd::AsFd;
    let mut root = match slug_shared::rootdir::RootDir::open_existing(app_dir) {
        Ok(root) => root,
        Err(e) => {
            tracing::warn!(
                "cannot open the app dir {}: {}; no profile scripts are sourced",
                app_dir.display(),
                slug_shared::log::error_line(&e)
            );
            return Vec::new();
        }
    };
    let profile_d = app_dir.join(".profile.d");
    let mut scripts = Vec::new();
    match root.open_subdir(&[OsStr::new(".profile.d")]) {
        Ok(dir) => {
            let names = slug_shared::rootdir::list_dir(dir.as_fd()).unwrap_or_else(|e| {
                tracing::warn!(
                    "cannot list {}: {e}; its scripts are not sourced",
                    profile_d.display()
                );
                Vec::new()
            });
            for name in names {
                let bytes = name.as_bytes();
                if bytes.starts_with(b".") || !bytes.ends_with(b".sh") {
                    continue;
                }
                let path = profile_d.join(&name);
                if is_regular_beneath(dir.as_fd(), &name, &path) {
                    scripts.push(path);
                }
            }
        }
        Err(slug_shared::rootdir::RootError::Io { source, .. })
            if source.kind() == io::ErrorKind::NotFound => {}
        // Deliberately not fatal (the app may still start), but never
        // silent: its environment will lack what those scripts set.
        Err(e) => tracing::warn!(
            "{}: {}; its scripts are not sourced",
            profile_d.display(),
            slug_shared::log::error_line(&e)
        ),
    }
    let profile = app_dir.join(".profile");
    if is_regular_beneath(root.fd(), OsStr::new(".profile"), &profile) {
        scripts.push(profile);
    }
    scripts
}

/// Whether `name` in `dir` is a regular file (never following a link;
/// a link or other kind is reported and skipped).
fn is_regular_beneath(dir: std::os::fd::BorrowedFd<'_>, name: &OsStr, shown: &Path) -> bool {
    use nix::sys::stat::{fstatat, SFlag};
    match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG => true,
        Ok(st) => {
            tracing::warn!(
                "{} is {}, not a regular file: not sourced",
                shown.display(),
                slug_shared::rootdir::kind_name(st.st_mode)
            );
            false
        }
        Err(nix::errno::Errno::ENOENT) => false,
        Err(e) => {
            tracing::warn!("{}: {e}: not sourced", shown.display());
            false
        }
    }
}

/// What the launcher runs once the profile scripts are sourced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// A Procfile command line, run as `bash -c` runs it.
    Start { command: String },
    /// A command and its arguments, passed on exactly.
    Exec { argv: Vec<OsString> },
    /// An interactive shell.
    Shell,
}

/// The fixed launcher script. Its arguments: mode, number of profile scripts,
/// the scripts, then the command (one string for `start`, argv for `exec`).
///
/// While the scripts are sourced `set -a` is on, so plain assignments in
/// `.profile.d` are exported: on Heroku the command line runs in the shell
/// that sourced them, so it sees them; here it runs in a fresh `bash -c`
/// (that is what lets a simple command replace bash), which only sees
/// exported variables. The launcher's own variables are unset before `exec`.
pub const LAUNCHER_SCRIPT: &str = r#"__slugrunner_mode=$1 __slugrunner_n=$2
shift 2
__slugrunner_scripts=("${@:1:__slugrunner_n}")
shift "$__slugrunner_n"
__slugrunner_args=("$@")
set --
set -a
for __slugrunner_f in "${__slugrunner_scripts[@]}"; do
  . "$__slugrunner_f"
done
set +a
set -- "${__slugrunner_args[@]}"
case $__slugrunner_mode in
  start)
    unset __slugrunner_mode __slugrunner_n __slugrunner_scripts __slugrunner_args __slugrunner_f
    exec bash -c "$1" ;;
  exec)
    unset __slugrunner_mode __slugrunner_n __slugrunner_scripts __slugrunner_args __slugrunner_f
    case $1 in
      */*) ;;
      *) if ! type -P -- "$1" >/dev/null; then
           printf 'slugrunner: %s: command not found\n' "$1" >&2
           exit 127
         fi ;;
    esac
    exec "$@" ;;
  *)
    unset __slugrunner_mode __slugrunner_n __slugrunner_scripts __slugrunner_args __slugrunner_f
    exec bash ;;
esac
"#;

/// Program the launcher runs under.
pub const LAUNCHER_SHELL: &str = "bash";

/// A process to start: program, arguments, complete environment, working
/// directory. Both the exec path and the supervisor start it from this.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// Absolute path of the program.
    pub program: PathBuf,
    /// Arguments after `argv[0]` (which is the program's file name).
    pub args: Vec<OsString>,
    pub env: BTreeMap<OsString, OsString>,
    pub cwd: PathBuf,
}

impl ProcessSpec {
    /// The launcher for `launch` in the app dir, with `env`. `bash` is looked
    /// up in the `PATH` of `env` (then `/bin/bash`, `/usr/bin/bash`).
    pub fn launcher(launch: &Launch, app_dir: &Path, env: BTreeMap<OsString, OsString>) -> Self {
        let scripts = profile_scripts(app_dir);
        let program = slug_shared::exe::find(
            LAUNCHER_SHELL,
            env.get(OsStr::new("PATH")).map(OsString::as_os_str),
        )
        .unwrap_or_else(|| PathBuf::from("/bin/bash"));
        Self {
            program,
            args: launcher_args(launch, &scripts),
            env,
            cwd: app_dir.to_path_buf(),
        }
    }

    /// `argv[0]`.
    pub fn arg0(&self) -> OsString {
        self.program
            .file_name()
            .map_or_else(|| self.program.as_os_str().to_owned(), OsStr::to_owned)
    }

    /// A std `Command` for it (for exec without supervision).
    pub fn command(&self) -> std::process::Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(&self.program);
        cmd.arg0(self.arg0())
            .args(&self.args)
            .env_clear()
            .envs(&self.env)
            .current_dir(&self.cwd);
        cmd
    }
}

/// The launcher's arguments (after the program name `bash`).
pub fn launcher_args(launch: &Launch, scripts: &[PathBuf]) -> Vec<OsString> {
    let mode = match launch {
        Launch::Start { .. } => "start",
        Launch::Exec { .. } => "exec",
        Launch::Shell => "shell",
    };
    let mut args: Vec<OsString> = vec![
        "-c".into(),
        LAUNCHER_SCRIPT.into(),
        "slugrunner".into(),
        mode.into(),
        scripts.len().to_string().into(),
    ];
    args.extend(scripts.iter().map(|p| p.as_os_str().to_owned()));
    match launch {
        Launch::Start { command } => args.push(command.into()),
        Launch::Exec { argv } => args.extend(argv.iter().cloned()),
        Launch::Shell => {}
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_grammar() {
        let vars = parse_env_file(
            "# comment\n\nA=1\nexport B=two words\r\nC='single $X \"q\"'\nD=\"l1\\nl2 \\\"q\\\" \\$X\"\nE=\nF=a=b # not a comment\n  G=x",
        )
        .unwrap();
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("A"), Some("1"));
        assert_eq!(get("B"), Some("two words"));
        assert_eq!(get("C"), Some("single $X \"q\""));
        assert_eq!(get("D"), Some("l1\nl2 \"q\" $X"));
        assert_eq!(get("E"), Some(""));
        assert_eq!(get("F"), Some("a=b # not a comment"));
        assert_eq!(get("G"), Some("x"));
    }

    #[test]
    fn env_file_errors_name_the_line() {
        assert_eq!(parse_env_file("A=1\nB C=2\n").unwrap_err().0, 2);
        assert_eq!(parse_env_file("A=1\n\nnovalue\n").unwrap_err().0, 3);
        assert_eq!(parse_env_file("$(id)=x").unwrap_err().0, 1);
        assert_eq!(parse_env_file("A=\"open\n").unwrap_err().0, 1);
        assert_eq!(parse_env_file("1A=x").unwrap_err().0, 1);
        // `exportFOO=1` is a variable named exportFOO, not an export.
        assert_eq!(
            parse_env_file("exportFOO=1").unwrap(),
            [("exportFOO".to_string(), "1".to_string())]
        );
    }

    #[test]
    fn env_dir_strips_trailing_newlines_and_rejects_bad_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("A"), "x y\n\n").unwrap();
        std::fs::write(dir.path().join(".hidden"), "ignored").unwrap();
        std::fs::write(dir.path().join("B"), "$(id)").unwrap();
        let vars = read_env_dir(dir.path()).unwrap();
        assert_eq!(
            vars,
            [("A".into(), "x y".into()), ("B".into(), "$(id)".into())]
        );
        std::fs::write(dir.path().join("bad-name"), "1").unwrap();
        assert!(matches!(
            read_env_dir(dir.path()),
            Err(RuntimeError::EnvDirName { .. })
        ));
    }

    #[test]
    fn release_config_vars_never_override() {
        let sources = EnvSources {
            explicit: vec![("FROM_FILE".into(), "file".into())],
            release_defaults: [("FROM_FILE", "rel"), ("CALLER", "rel"), ("NEW", "rel")]
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        };
        let caller = [
            ("CALLER", "caller"),
            ("HOME", "/root"),
            ("SLUG_URL", "http://secret"),
        ]
        .map(|(a, b)| (OsString::from(a), OsString::from(b)));
        let env = dyno_env(caller, &sources, Path::new("/app"), "web.1");
        let get = |k: &str| env.get(OsStr::new(k)).map(|v| v.to_str().unwrap());
        assert_eq!(get("FROM_FILE"), Some("file"));
        assert_eq!(get("CALLER"), Some("caller"));
        assert_eq!(get("NEW"), Some("rel"));
        assert_eq!(get("HOME"), Some("/app"));
        assert_eq!(get("PORT"), Some("5000"));
        assert_eq!(get("DYNO"), Some("web.1"));
        assert_eq!(get("SLUG_URL"), None);
    }

    #[test]
    fn procfile_wins_over_release_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Procfile"), "worker: w\nweb:p").unwrap();
        std::fs::write(
            dir.path().join(".release"),
            "default_process_types:\n  web: r\n  clock: c\n",
        )
        .unwrap();
        let release = load_release(dir.path()).unwrap();
        let types = load_process_types(dir.path(), &release).unwrap();
        assert_eq!(find_process_type(&types, "web").unwrap(), "p");
        assert_eq!(find_process_type(&types, "clock").unwrap(), "c");
        let err = find_process_type(&types, "nope").unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown process type \"nope\"; this app has: worker, web, clock"
        );
        assert!(matches!(
            find_process_type(&types, "a;b"),
            Err(RuntimeError::InvalidProcessType { .. })
        ));
    }

    #[test]
    fn profile_scripts_sorted_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let pd = dir.path().join(".profile.d");
        std::fs::create_dir(&pd).unwrap();
        for name in ["b.sh", "A.sh", "a.sh", "_x.sh", ".hidden.sh", "c.txt"] {
            std::fs::write(pd.join(name), "").unwrap();
        }
        std::fs::write(dir.path().join(".profile"), "").unwrap();
        let names: Vec<String> = profile_scripts(dir.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["A.sh", "_x.sh", "a.sh", "b.sh", ".profile"]);
    }

    /// The launcher passes arguments through unchanged, and names of profile
    /// scripts with shell metacharacters stay names.
    #[test]
    fn launcher_never_interpolates() {
        let dir = tempfile::tempdir().unwrap();
        let pd = dir.path().join(".profile.d");
        std::fs::create_dir(&pd).unwrap();
        std::fs::write(
            pd.join("$(touch pwned) x.sh"),
            "export FROM_PROFILE=1\nPLAIN=2\n",
        )
        .unwrap();
        let argv: Vec<OsString> = [
            "sh",
            "-c",
            "printf '<%s>' \"$@\" \"$FROM_PROFILE$PLAIN\"",
            "x",
            "a b",
            "$HOME",
            "\"q\"",
            "",
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        let env = std::env::vars_os().collect();
        let spec = ProcessSpec::launcher(&Launch::Exec { argv }, dir.path(), env);
        assert!(spec.program.is_absolute());
        let out = spec.command().output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "<a b><$HOME><\"q\"><><12>"
        );
        assert!(!dir.path().join("pwned").exists());
    }
}
