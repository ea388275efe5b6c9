//! The end of a build: release metadata (`.release`, the Procfile), the
//! slug packed into a staging file, and its delivery.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use slug_shared::digest::Hashed;

use super::workspace::Workspace;
use super::{BuildConfig, BuildError, SlugOutput};
use slug_shared::archive::{self, ArchiveError, PackOptions};
use slug_shared::cancel::{Cancel, CleanupId};
use slug_shared::log;
use slug_shared::procfile::{Procfile, ProcfileError, MAX_PROCFILE_BYTES};
use slug_shared::release::Release;
use slug_shared::rootdir::{components, Owner, RootDir, RootError};

/// Heroku's soft limit on compressed slugs.
pub const DEFAULT_SLUG_SIZE_WARNING: u64 = 300 << 20;
/// Heroku's hard limit on compressed slugs (1 GB since 2026).
pub const DEFAULT_MAX_SLUG_SIZE: u64 = 1 << 30;

/// The file the slug is packed into before it goes to its destination:
/// next to the output file (so the final rename is atomic), or in the
/// work dir for stdout and for an output that is not a regular file
/// (`-o /dev/null`, a FIFO: written into, never replaced). Made before the
/// build starts, so that a wrong destination fails at once; removed unless
/// delivered.
#[derive(Debug)]
pub struct Staging {
    path: tempfile::TempPath,
    file: Option<File>,
    target: Target,
    cancel: Arc<Cancel>,
    cleanup: CleanupId,
}

/// Open an existing device or FIFO for writing, without blocking: a FIFO
/// that nobody reads fails at once (ENXIO) instead of hanging the build.
fn open_special(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ENXIO) => io::Error::new(e.kind(), "a FIFO that nobody reads"),
            _ => e,
        })?;
    let flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL)?;
    let mut flags = nix::fcntl::OFlag::from_bits_retain(flags);
    flags.remove(nix::fcntl::OFlag::O_NONBLOCK);
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(file)
}

/// Where a finished slug goes.
#[derive(Debug)]
enum Target {
    /// Renamed over this path (a regular file, or nothing yet).
    Rename(PathBuf),
    /// Copied into this already existing special file (a device, a FIFO),
    /// opened when the build starts.
    Into(PathBuf, File),
    Stdout,
    /// Nowhere on this host: the slug is only uploaded (`PUT_URL`).
    Nowhere,
}

impl Staging {
    pub fn create(cfg: &BuildConfig, cancel: &Arc<Cancel>) -> Result<Self, BuildError> {
        let work_dir = || cfg.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
        let (target, dir) = match &cfg.output {
            SlugOutput::Stdout => (Target::Stdout, work_dir()),
            SlugOutput::Nowhere => (Target::Nowhere, work_dir()),
            SlugOutput::File(path) => {
                let out_err = |source| BuildError::Output {
                    path: path.clone(),
                    source,
                };
                // Followed: the operator's path may be a link to where the
                // slug goes; what counts is what it names.
                match std::fs::metadata(path) {
                    Ok(m) if m.is_dir() => {
                        return Err(out_err(io::Error::new(
                            io::ErrorKind::IsADirectory,
                            "is a directory",
                        )))
                    }
                    Ok(m) if !m.is_file() => {
                        let file = open_special(path).map_err(out_err)?;
                        (Target::Into(path.clone(), file), work_dir())
                    }
                    _ => {
                        let parent = path
                            .parent()
                            .filter(|p| !p.as_os_str().is_empty())
                            .map(Path::to_path_buf)
                            .unwrap_or_else(|| PathBuf::from("."));
                        (Target::Rename(path.clone()), parent)
                    }
                }
            }
        };
        let tmp = tempfile::Builder::new()
            .prefix(".slug-")
            .suffix(".tgz.partial")
            .tempfile_in(&dir)
            .map_err(|source| BuildError::Output {
                path: match &target {
                    Target::Rename(p) | Target::Into(p, _) => p.clone(),
                    Target::Stdout | Target::Nowhere => dir.clone(),
                },
                source,
            })?;
        let (file, path) = tmp.into_parts();
        let cleanup = cancel.remove_on_emergency(&path);
        Ok(Self {
            path,
            file: Some(file),
            target,
            cancel: Arc::clone(cancel),
            cleanup,
        })
    }

    /// The staged slug, complete once [`pack`] returned.
    pub fn file(&self) -> &File {
        self.file
            .as_ref()
            .expect("staging file is open until delivery")
    }

    /// Move the finished slug to its destination.
    pub fn deliver(mut self) -> Result<(), BuildError> {
        drop(self.file.take());
        match &self.target {
            // Uploaded only (PUT_URL): the staged file goes with us.
            Target::Nowhere => Ok(()),
            Target::Rename(path) => {
                // Files from tempfile are 0600; a slug is meant to be shared.
                use std::os::unix::fs::PermissionsExt;
                let out_err = |source| BuildError::Output {
                    path: path.clone(),
                    source,
                };
                std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o644))
                    .map_err(out_err)?;
                std::fs::rename(&self.path, path).map_err(out_err)
            }
            Target::Into(path, out) => self.copy_to(out, path),
            Target::Stdout => self.copy_to(io::stdout().lock(), Path::new("<stdout>")),
        }
    }

    /// Stream the staged slug into `out`, stopping when the build must.
    fn copy_to(&self, mut out: impl Write, shown: &Path) -> Result<(), BuildError> {
        let out_err = |source| BuildError::Output {
            path: shown.to_path_buf(),
            source,
        };
        let mut file = File::open(&self.path).map_err(out_err)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            self.cancel.check()?;
            let n = file.read(&mut buf).map_err(out_err)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(out_err)?;
        }
        out.flush().map_err(out_err)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // TempPath removes the file if it is still there.
        self.cancel.forget(self.cleanup);
    }
}

/// Pack the build dir into the staging file. Returns (size, sha256).
pub fn pack(
    cfg: &BuildConfig,
    ws: &Workspace,
    staging: &Staging,
    epoch: u64,
    reader: Owner,
    cancel: &Arc<Cancel>,
) -> Result<(u64, String), BuildError> {
    let out_err = |source| BuildError::Output {
        path: staging.path.to_path_buf(),
        source,
    };
    let file = staging.file().try_clone().map_err(out_err)?;
    let mut writer = Hashed::with_limit(
        io::BufWriter::with_capacity(1 << 20, file),
        cfg.max_slug_size,
    );
    let blocks = last_blocks(cfg);
    let opts = PackOptions {
        mtime_clamp: Some(epoch),
        skip_root_git: true,
        max_bytes: cfg.limits.max_bytes,
        max_entries: cfg.limits.max_entries,
        max_depth: cfg.limits.max_depth,
        reader,
        cancel: Some(Arc::clone(cancel)),
        blocks: blocks
            .clone()
            .map(|b| b as Arc<dyn slug_shared::pgzip::BlockCache>),
    };
    let summary = archive::pack_gzip(&ws.build, &mut writer, cfg.compression_level, &opts)
        .map_err(|e| pack_error(e, cfg))?;
    for skipped in &summary.skipped {
        log::warn(format!(
            "left out of the slug (not a file, directory or link): {}",
            skipped.display()
        ));
    }
    writer.flush().map_err(out_err)?;
    let (inner, bytes, sha256) = writer.finish();
    if bytes > cfg.slug_size_warning {
        log::warn(format!(
            "Your slug size ({}) exceeds the soft limit of {}, which may slow app boot and deploys",
            log::human_size(bytes),
            log::human_size(cfg.slug_size_warning)
        ));
    }
    let file = inner.into_inner().map_err(|e| out_err(e.into_error()))?;
    file.sync_all().map_err(out_err)?;
    drop(opts);
    if let Some(blocks) = blocks {
        keep_blocks(blocks);
    }
    Ok((bytes, sha256))
}

/// The last slug's compressed blocks, kept beside a persistent cache dir
/// (for reuse, and to be replaced by this slug's); `None` without one, or
/// when they cannot be opened (the slug is then compressed afresh).
fn last_blocks(cfg: &BuildConfig) -> Option<Arc<archive::blocks::BlockFile>> {
    cfg.cache_dir
        .as_deref()
        .and_then(|dir| std::path::absolute(dir).ok())
        .and_then(|dir| archive::blocks::path_for(&dir))
        .and_then(|path| match archive::blocks::BlockFile::open(&path) {
            Ok(file) => Some(Arc::new(file)),
            Err(e) => {
                tracing::info!("not keeping the slug's blocks at {}: {e}", path.display());
                None
            }
        })
}

/// Why packing failed, as the build reports it: the size limit and a stop
/// have exit codes of their own.
fn pack_error(e: ArchiveError, cfg: &BuildConfig) -> BuildError {
    let too_large = |e: &ArchiveError| matches!(e, ArchiveError::Write { source, .. } if source.kind() == io::ErrorKind::FileTooLarge);
    if too_large(&e) {
        BuildError::SlugTooLarge {
            limit: cfg.max_slug_size,
        }
    } else if let ArchiveError::Stopped(stop) = e {
        BuildError::Stopped(stop)
    } else {
        BuildError::Pack(e)
    }
}

/// Say how many of the last slug's blocks were reused, and keep this
/// slug's in their place (a failure only costs the next build time).
fn keep_blocks(blocks: Arc<archive::blocks::BlockFile>) {
    let (reused, total) = blocks.reuse();
    if reused > 0 {
        log::info(format!(
            "Reused {reused} of {total} compressed blocks of the last slug"
        ));
    }
    match Arc::try_unwrap(blocks) {
        Ok(file) => {
            if let Err(e) = file.commit() {
                tracing::info!("not keeping the slug's blocks: {e}");
            }
        }
        Err(_) => tracing::warn!("the slug's blocks are still in use: not kept"),
    }
}

fn root_io(context: &str) -> impl FnOnce(RootError) -> BuildError + '_ {
    move |e| BuildError::Io {
        context: context.to_string(),
        source: e.into_io(),
    }
}

/// Store `.release`, write a Procfile from the defaults when the app has
/// none, and print the process types. Returns the process type names.
/// Every file is reached beneath the build dir by descriptors: a link
/// named `.release` or `Procfile` is replaced, never written through, and
/// a Procfile that is not a regular file is refused, never read.
pub fn write_release(build: &Path, release: &Release) -> Result<Vec<String>, BuildError> {
    let mut root = RootDir::open_existing(build).map_err(root_io("opening the build dir"))?;
    root.write_file(
        &[OsStr::new(".release")],
        release.to_yaml().as_bytes(),
        0o644,
    )
    .map_err(root_io("writing .release"))?;
    log::header("Discovering process types");
    let procfile = match root.read_file(&[OsStr::new("Procfile")], MAX_PROCFILE_BYTES as u64) {
        Ok(Some(bytes)) => Some(Procfile::parse_bytes(&bytes)?),
        Ok(None) => None,
        Err(RootError::TooLarge { .. }) => return Err(ProcfileError::TooLarge.into()),
        Err(RootError::NotRegular { kind, .. }) => {
            return Err(BuildError::ProcfileNotRegular { kind })
        }
        Err(e) => return Err(root_io("reading the Procfile")(e)),
    };
    let mut types: Vec<(String, String)> = Vec::new();
    match &procfile {
        Some(p) => {
            types.extend(p.entries().iter().cloned());
            log::info(format!(
                "Procfile declares types     -> {}",
                list_or_none(p.names())
            ));
            let defaults: Vec<(String, String)> = release
                .default_process_types
                .iter()
                .filter(|(k, _)| p.get(k).is_none())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !defaults.is_empty() {
                log::info(format!(
                    "Default types for buildpack -> {}",
                    list_or_none(defaults.iter().map(|(k, _)| k.as_str()))
                ));
                types.extend(defaults);
            }
        }
        None => {
            let p = Procfile::from_map(&release.default_process_types);
            types.extend(p.entries().iter().cloned());
            log::info(format!(
                "Default types for buildpack -> {}",
                list_or_none(p.names())
            ));
            if !p.is_empty() {
                root.write_file(&[OsStr::new("Procfile")], p.to_string().as_bytes(), 0o644)
                    .map_err(root_io("writing the Procfile"))?;
            }
        }
    }
    for (name, command) in &types {
        if let Some(path) = missing_program(&mut root, command) {
            log::warn(format!(
                "Process type {name}: {path} is not in the slug (the command is `{command}`)"
            ));
        } else if name == "web" {
            if let Some(program) = unknown_program(&mut root, command, STACK_PATH) {
                log::warn(format!(
                    "Process type web: {program} is neither in the slug nor on the stack, so it will fail with `{program}: command not found` (the command is `{command}`)"
                ));
            }
        }
    }
    if !types.iter().any(|(n, _)| n == "web") {
        log::warn(
            "This app has no web process type: `slugrunner start web` will fail. Add a Procfile with a `web:` line (e.g. `web: gunicorn app:app --bind 0.0.0.0:$PORT`)",
        );
    }
    Ok(types.into_iter().map(|(n, _)| n).collect())
}

/// If `command` starts with a relative path to a program (`./bin/web`,
/// `target/release/app`) that is not in the build dir, that path. Looked
/// up by descriptors, without following links (a link counts as present).
fn missing_program(root: &mut RootDir, command: &str) -> Option<String> {
    let mut words = command.split_whitespace();
    let mut first = words.next()?;
    // `exec ./x`, `VAR=value ./x`
    while first == "exec" || (first.contains('=') && !first.contains('/')) {
        first = words.next()?;
    }
    if first.starts_with('/')
        || !first.contains('/')
        || first.contains(['$', '`', '"', '\'', '~', '*'])
    {
        return None;
    }
    let comps = components(first.as_bytes()).ok()?;
    if comps.is_empty() {
        return None;
    }
    let (name, parents) = comps.split_last()?;
    let present = root
        .open_subdir(parents)
        .ok()
        .and_then(|dir| {
            nix::sys::stat::fstatat(&dir, *name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).ok()
        })
        .is_some();
    (!present).then(|| {
        String::from_utf8_lossy(first.as_bytes())
            .chars()
            .take(200)
            .collect()
    })
}

/// Where a program that a process runs by name is found on the stack.
const STACK_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Directories of the slug that the bundled buildpacks put on `PATH`; those
/// any buildpack adds in `.profile.d` (`$HOME/...`) are read from there.
const SLUG_PATH: &[&str] = &[
    "bin",
    ".heroku/python/bin",
    ".heroku/node/bin",
    ".heroku/yarn/bin",
    "node_modules/.bin",
];

/// Shell keywords and builtins that a command may start with.
const SHELL_WORDS: &[&str] = &[
    "exec", "cd", "echo", "printf", "export", "source", ".", "eval", "set", "test", "[", "[[",
    "if", "for", "while", "until", "case", "true", "false", ":", "command", "builtin", "trap",
    "ulimit", "umask", "wait", "read", "unset", "declare", "local", "type", "time", "{", "(", "!",
    "shift", "let",
];

/// If `command` starts with a program named without a path (`gunicorn
/// app:app`) that is in none of the slug's `PATH` directories (the usual
/// ones and those `.profile.d` adds) nor in `stack_path`, its name.
fn unknown_program(root: &mut RootDir, command: &str, stack_path: &[&str]) -> Option<String> {
    let mut words = command.split_whitespace();
    let mut first = words.next()?;
    while first == "exec" || (first.contains('=') && !first.contains('/')) {
        first = words.next()?;
    }
    if first.contains('/')
        || SHELL_WORDS.contains(&first)
        || !first
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
    {
        return None;
    }
    let name = OsStr::new(first);
    let mut dirs: Vec<String> = SLUG_PATH.iter().map(|d| d.to_string()).collect();
    dirs.extend(profile_path_dirs(root));
    for dir in &dirs {
        let Ok(comps) = components(dir.as_bytes()) else {
            continue;
        };
        let found = root.open_subdir(&comps).ok().and_then(|fd| {
            nix::sys::stat::fstatat(&fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).ok()
        });
        if found.is_some() {
            return None;
        }
    }
    if stack_path
        .iter()
        .any(|d| Path::new(d).join(name).symlink_metadata().is_ok())
    {
        return None;
    }
    Some(first.to_string())
}

/// The slug directories that `.profile.d/*.sh` names as `$HOME/DIR` or
/// `${HOME}/DIR` (e.g. `export PATH="$HOME/.heroku/php/bin:$PATH"`).
fn profile_path_dirs(root: &mut RootDir) -> Vec<String> {
    let profile = OsStr::new(".profile.d");
    let Ok(fd) = root.open_subdir(&[profile]) else {
        return Vec::new();
    };
    let Ok(mut names) = slug_shared::rootdir::list_dir(std::os::fd::AsFd::as_fd(&fd)) else {
        return Vec::new();
    };
    names.sort();
    let mut dirs = Vec::new();
    for file in names.iter().take(100) {
        let Ok(Some(text)) = root.read_file(&[profile, file], 64 * 1024) else {
            continue;
        };
        let text = String::from_utf8_lossy(&text);
        for prefix in ["$HOME/", "${HOME}/"] {
            for (at, _) in text.match_indices(prefix) {
                let dir: String = text[at + prefix.len()..]
                    .chars()
                    .take_while(|c| {
                        !matches!(c, ':' | '"' | '\'' | '}' | '$' | ';') && !c.is_whitespace()
                    })
                    .collect();
                if !dir.is_empty() {
                    dirs.push(dir.trim_end_matches('/').to_string());
                }
            }
        }
    }
    dirs
}

fn list_or_none<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_procfile_program_missing_from_the_slug_is_found() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("bin")).unwrap();
        std::fs::write(tmp.path().join("bin/web"), "").unwrap();
        std::os::unix::fs::symlink("web", tmp.path().join("bin/link")).unwrap();
        let mut root = RootDir::open_existing(tmp.path()).unwrap();
        let mut missing = |c: &str| missing_program(&mut root, c);
        assert_eq!(missing("./bin/web --port $PORT"), None);
        assert_eq!(missing("bin/link"), None);
        assert_eq!(missing("exec ./bin/web"), None);
        assert_eq!(
            missing("./target/release/app"),
            Some("./target/release/app".into())
        );
        assert_eq!(missing("FOO=1 bin/nope"), Some("bin/nope".into()));
        assert_eq!(missing("gunicorn app:app"), None);
        assert_eq!(missing("/usr/bin/env python"), None);
        assert_eq!(missing("$HOME/bin/x"), None);
        assert_eq!(missing("../outside/x"), None);
    }

    #[test]
    fn a_web_program_on_neither_the_slug_path_nor_the_stack_is_found() {
        let tmp = tempfile::tempdir().unwrap();
        let stack = tmp.path().join("stack");
        let build = tmp.path().join("build");
        for dir in [
            &stack,
            &build.join(".heroku/python/bin"),
            &build.join(".profile.d"),
            &build.join("vendor/php/bin"),
        ] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(stack.join("node"), "").unwrap();
        std::fs::write(build.join(".heroku/python/bin/gunicorn"), "").unwrap();
        std::fs::write(build.join("vendor/php/bin/php"), "").unwrap();
        std::fs::write(
            build.join(".profile.d/php.sh"),
            "export PATH=\"${HOME}/vendor/php/bin:$PATH\"\n",
        )
        .unwrap();
        let stack_path = [stack.to_str().unwrap()];
        let mut root = RootDir::open_existing(&build).unwrap();
        let mut unknown = |c: &str| unknown_program(&mut root, c, &stack_path);
        assert_eq!(unknown("gunicorn app:app"), None);
        assert_eq!(unknown("exec node server.js"), None);
        assert_eq!(unknown("FOO=1 php -S 0.0.0.0:$PORT"), None);
        assert_eq!(unknown("python app.py"), Some("python".into()));
        assert_eq!(unknown("PORT=1 uvicorn main:app"), Some("uvicorn".into()));
        assert_eq!(unknown("cd src && ./run"), None);
        assert_eq!(unknown("./bin/web"), None);
        assert_eq!(unknown("$CMD"), None);
    }

    #[test]
    fn release_and_procfile_links_are_replaced_not_written_through() {
        let tmp = tempfile::tempdir().unwrap();
        let build = tmp.path().join("build");
        std::fs::create_dir(&build).unwrap();
        let victim = tmp.path().join("victim.sh");
        std::fs::write(&victim, "#!/bin/sh\necho safe\n").unwrap();
        std::os::unix::fs::symlink(&victim, build.join(".release")).unwrap();
        let release = Release::parse(b"default_process_types:\n  web: run\n").unwrap();
        write_release(&build, &release).unwrap();
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "#!/bin/sh\necho safe\n"
        );
        assert!(std::fs::read_to_string(build.join(".release"))
            .unwrap()
            .contains("web: run"));
        assert_eq!(
            std::fs::read_to_string(build.join("Procfile")).unwrap(),
            "web: run\n"
        );
    }

    #[test]
    fn a_procfile_link_is_refused_unread() {
        let tmp = tempfile::tempdir().unwrap();
        let build = tmp.path().join("build");
        std::fs::create_dir(&build).unwrap();
        let secret = tmp.path().join("secret");
        std::fs::write(&secret, "root-password: hunter2\n").unwrap();
        std::os::unix::fs::symlink(&secret, build.join("Procfile")).unwrap();
        let err = write_release(&build, &Release::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
