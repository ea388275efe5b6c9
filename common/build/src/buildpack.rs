//! Buildpacks: where they come from and how they are fetched.
//!
//! A buildpack is named by a local directory, a git URL with an optional
//! `#ref` (`file://`, `https://`, `http://`, `git://`, `ssh://`), a tarball
//! URL (`.tgz`, `.tar.gz`, `.tar`), or a short name such as
//! `heroku/python`, which maps to the bundled buildpack of that language
//! (offline) when there is one.
//!
//! Every buildpack a build uses is a private, writable copy in the build's
//! workspace, owned by the build user: buildpacks write their `export`
//! file into their own directory, and the operator's directories are never
//! modified (nor is an `export` of an earlier build ever sourced). Copies of
//! the operator's directories are made by slugbuilder; everything a tenant
//! names is fetched with the build user's rights: `git clone` runs as a
//! sandboxed step, a tarball is unpacked through the safe unpacker as the
//! build user's files. A tenant's `.buildpacks` may not name a local path or
//! a `file://` URL unless the operator allows it.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::child::{Env, Step, StepError, StepRunner};
use slug_shared::archive::{self, UnpackOptions};
use slug_shared::cancel::{Cancel, Stop};
use slug_shared::http::{self, redact_url, HttpOptions};
use slug_shared::rootdir::{Owner, RootDir};

#[derive(Debug, thiserror::Error)]
pub enum BuildpackError {
    #[error("buildpack {spec:?}: {path:?} is not a directory")]
    NotADirectory { spec: String, path: PathBuf },
    #[error("buildpack {spec:?} has no executable bin/compile")]
    NoCompile { spec: String },
    #[error("buildpack {spec:?}: git is not installed (needed to clone it)")]
    NoGit { spec: String },
    #[error("buildpack {spec:?}: git {action} failed ({status}); see the log above")]
    Git {
        spec: String,
        action: &'static str,
        status: String,
    },
    #[error("buildpack {spec:?}: download failed: {detail}")]
    Download { spec: String, detail: String },
    #[error("buildpack {spec:?}: unknown short name (known: {known})")]
    UnknownName { spec: String, known: String },
    #[error("buildpack {spec:?}: unsupported URL scheme")]
    UnsupportedUrl { spec: String },
    #[error("buildpack {spec:?} named in .buildpacks: local paths and file:// URLs are not allowed for apps (the operator can allow them with --allow-local-buildpacks)")]
    LocalNotAllowed { spec: String },
    #[error("buildpack {spec:?}: the ref after '#' must not start with '-'")]
    BadRef { spec: String },
    #[error("buildpack {spec:?}: copying it: {detail}")]
    Copy { spec: String, detail: String },
    #[error("buildpack {spec:?}")]
    Step {
        spec: String,
        #[source]
        source: StepError,
    },
    #[error(transparent)]
    Stopped(Stop),
    #[error("reading buildpacks directory {path:?}")]
    ListDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where a buildpack comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Dir(PathBuf),
    Git {
        url: String,
        reference: Option<String>,
    },
    Tarball {
        url: String,
    },
    /// `owner/name` short name, resolved against the bundled buildpacks.
    Named(String),
}

impl Source {
    /// Classify a buildpack specification as users write it.
    pub fn parse(spec: &str) -> Result<Self, BuildpackError> {
        let spec = spec.trim();
        let (base, fragment) = match spec.split_once('#') {
            Some((b, f)) if !f.is_empty() => (b, Some(f.to_string())),
            Some((b, _)) => (b, None),
            None => (spec, None),
        };
        if fragment.as_deref().is_some_and(|f| f.starts_with('-')) {
            return Err(BuildpackError::BadRef { spec: shown(spec) });
        }
        if let Some(scheme_end) = base.find("://") {
            let scheme = base[..scheme_end].to_ascii_lowercase();
            let path_part = base.split(['?']).next().unwrap_or(base);
            let is_tarball = [".tgz", ".tar.gz", ".tar"]
                .iter()
                .any(|ext| path_part.ends_with(ext));
            return match scheme.as_str() {
                "http" | "https" if is_tarball => Ok(Source::Tarball {
                    url: base.to_string(),
                }),
                "http" | "https" | "file" | "git" | "ssh" => Ok(Source::Git {
                    url: base.to_string(),
                    reference: fragment,
                }),
                _ => Err(BuildpackError::UnsupportedUrl { spec: shown(spec) }),
            };
        }
        if base.starts_with("git@") {
            return Ok(Source::Git {
                url: base.to_string(),
                reference: fragment,
            });
        }
        let looks_like_name = !base.starts_with(['/', '.', '~'])
            && base.matches('/').count() == 1
            && base
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
        if looks_like_name && !Path::new(base).exists() {
            return Ok(Source::Named(base.to_string()));
        }
        Ok(Source::Dir(PathBuf::from(base)))
    }

    /// Whether it reads the machine's own files (a path, a `file://` URL).
    pub fn is_local(&self) -> bool {
        match self {
            Source::Dir(_) => true,
            Source::Git { url, .. } => url.to_ascii_lowercase().starts_with("file://"),
            Source::Tarball { .. } | Source::Named(_) => false,
        }
    }
}

/// A spec as it may be shown: URL credentials and query strings removed.
pub fn shown(spec: &str) -> String {
    if spec.contains("://") {
        let (base, fragment) = match spec.split_once('#') {
            Some((b, f)) => (b, Some(f)),
            None => (spec, None),
        };
        let mut out = redact_url(base);
        if let Some(f) = fragment {
            out.push('#');
            out.push_str(f);
        }
        out
    } else {
        spec.to_string()
    }
}

/// Who named a buildpack: the operator (`--buildpack`, `BUILDPACK_URL`,
/// `BUILDPACKS`, the installed buildpacks) or the app (`.buildpacks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Operator,
    App,
}

/// A buildpack ready to run: a private directory with `bin/`.
#[derive(Debug, Clone)]
pub struct Buildpack {
    /// How it was named (for messages; credentials removed).
    pub spec: String,
    /// Short display name.
    pub name: String,
    /// The private copy (host path).
    pub dir: PathBuf,
    /// `sha256:...` of the archive, for a downloaded (tarball) buildpack.
    pub digest: Option<String>,
}

impl Buildpack {
    pub fn bin(&self, step: &str) -> PathBuf {
        self.dir.join("bin").join(step)
    }

    pub fn has(&self, step: &str) -> bool {
        is_executable(&self.bin(step))
    }

    /// The `export` file, sourced after compile for later buildpacks.
    pub fn export_file(&self) -> Option<PathBuf> {
        let path = self.dir.join("export");
        path.symlink_metadata()
            .is_ok_and(|m| m.is_file())
            .then_some(path)
    }

    fn checked(spec: &str, name: String, dir: PathBuf) -> Result<Self, BuildpackError> {
        if !dir.is_dir() {
            return Err(BuildpackError::NotADirectory {
                spec: shown(spec),
                path: dir,
            });
        }
        let bp = Buildpack {
            spec: shown(spec),
            name,
            dir,
            digest: None,
        };
        if !bp.has("compile") {
            return Err(BuildpackError::NoCompile { spec: bp.spec });
        }
        Ok(bp)
    }
}

pub use slug_shared::exe::is_executable;

/// An operator's installed buildpack, not yet copied.
#[derive(Debug, Clone)]
pub struct Installed {
    pub name: String,
    pub dir: PathBuf,
}

/// The buildpacks installed in `dir`, in detection order: the names listed
/// in `dir/.order` (one per line, `#` comments) first, in that order, then
/// every other subdirectory sorted by name. Entries without `bin/compile`
/// are skipped.
pub fn installed(dir: &Path) -> Result<Vec<Installed>, BuildpackError> {
    let list_err = |source| BuildpackError::ListDir {
        path: dir.to_path_buf(),
        source,
    };
    // Steps run elsewhere: a relative directory must be made absolute.
    let dir = &std::path::absolute(dir).map_err(list_err)?;
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(list_err)?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let order_path = dir.join(".order");
    let order: Vec<String> = match std::fs::read_to_string(&order_path) {
        Ok(text) => slug_shared::lines::content_lines(&text)
            .map(|(_, l)| l.trim().to_string())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(BuildpackError::ListDir {
                path: order_path,
                source,
            })
        }
    };
    let mut ordered: Vec<String> = order
        .iter()
        .filter(|n| names.contains(n))
        .cloned()
        .collect();
    ordered.extend(names.into_iter().filter(|n| !order.contains(n)));
    Ok(ordered
        .into_iter()
        .map(|name| Installed {
            dir: dir.join(&name),
            name,
        })
        .filter(|i| is_executable(&i.dir.join("bin/compile")))
        .collect())
}

/// Parse a `.buildpacks` file: one buildpack per line, `#` comments (a `#`
/// right after a URL names its ref and is kept).
pub fn parse_list_file(text: &str) -> Vec<String> {
    slug_shared::lines::content_lines(text)
        .filter_map(|(_, line)| {
            let line = line.trim();
            if line.contains("://") || line.starts_with("git@") {
                line.split_whitespace().next().map(str::to_string)
            } else {
                let before = line.split_once('#').map_or(line, |(b, _)| b).trim();
                (!before.is_empty()).then(|| before.to_string())
            }
        })
        .collect()
}

/// Parse `BUILDPACKS` (comma-separated).
pub fn parse_list_env(value: &str) -> Vec<String> {
    value
        .split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Fetches buildpacks into the build's workspace.
#[derive(Debug)]
pub struct Fetcher<'a> {
    pub runner: &'a StepRunner,
    /// Environment of fetch steps (PATH, HOME, the operator's proxies).
    pub env: Env,
    /// Where copies, clones and downloads go (host path).
    pub workdir: PathBuf,
    /// Bundled buildpacks, for short names.
    pub bundled: Option<PathBuf>,
    /// Owner of what slugbuilder itself writes there.
    pub owner: Owner,
    /// Whether the app may name local paths and `file://` URLs.
    pub allow_local: bool,
    pub cancel: Arc<Cancel>,
    counter: usize,
}

impl<'a> Fetcher<'a> {
    pub fn new(runner: &'a StepRunner, env: Env, workdir: PathBuf, cancel: Arc<Cancel>) -> Self {
        Self {
            runner,
            env,
            workdir,
            bundled: None,
            owner: None,
            allow_local: false,
            cancel,
            counter: 0,
        }
    }

    /// Make the buildpack named by `spec` available as a private copy.
    pub fn fetch(&mut self, spec: &str, origin: Origin) -> Result<Buildpack, BuildpackError> {
        self.cancel.check().map_err(BuildpackError::Stopped)?;
        let source = Source::parse(spec)?;
        if origin == Origin::App && source.is_local() && !self.allow_local {
            return Err(BuildpackError::LocalNotAllowed { spec: shown(spec) });
        }
        match source {
            Source::Dir(dir) if origin == Origin::Operator => {
                let name = dir_name(&dir, spec);
                self.copy_trusted(spec, &name, &dir)
            }
            Source::Dir(dir) => {
                let name = dir_name(&dir, spec);
                self.copy_as_build_user(spec, &name, &dir)
            }
            Source::Named(name) => self.named(spec, &name),
            Source::Git { url, reference } => {
                let name = url_stem(&url);
                let dest = self.next_dest(&name);
                self.clone(spec, &url, reference.as_deref(), &dest)?;
                Buildpack::checked(spec, name, dest)
            }
            Source::Tarball { url } => {
                let name = url_stem(&url);
                let dest = self.next_dest(&name);
                let digest = self.download(spec, &url, &dest)?;
                let mut bp = Buildpack::checked(spec, name, buildpack_root(&dest))?;
                bp.digest = Some(digest);
                Ok(bp)
            }
        }
    }

    /// A private copy of an operator's installed buildpack.
    pub fn copy_installed(&mut self, bp: &Installed) -> Result<Buildpack, BuildpackError> {
        self.cancel.check().map_err(BuildpackError::Stopped)?;
        self.copy_trusted(&bp.name, &bp.name, &bp.dir)
    }

    fn next_dest(&mut self, name: &str) -> PathBuf {
        self.counter += 1;
        self.workdir.join(format!("{:02}-{name}", self.counter))
    }

    /// Copy an operator's directory (trusted) into the workspace.
    fn copy_trusted(
        &mut self,
        spec: &str,
        name: &str,
        src: &Path,
    ) -> Result<Buildpack, BuildpackError> {
        // The operator's path may be (or go through) a link: trusted. A
        // missing one is reported as such below; any other failure to
        // resolve it is an error of its own.
        let resolved = match std::fs::canonicalize(src) {
            Ok(path) => path,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => src.to_path_buf(),
            Err(e) => {
                return Err(BuildpackError::Copy {
                    spec: shown(spec),
                    detail: format!("resolving {}: {e}", src.display()),
                })
            }
        };
        let src = resolved.as_path();
        if !src.is_dir() {
            return Err(BuildpackError::NotADirectory {
                spec: shown(spec),
                path: src.to_path_buf(),
            });
        }
        let dest = self.next_dest(name);
        let copy_err = |detail: String| BuildpackError::Copy {
            spec: shown(spec),
            detail,
        };
        let mut root = RootDir::open(&dest, self.owner)
            .map_err(|e| copy_err(slug_shared::log::error_line(&e)))?;
        slug_shared::tree::copy_tree(src, &mut root)
            .map_err(|e| copy_err(slug_shared::log::error_line(&e)))?;
        Buildpack::checked(spec, name.to_string(), dest)
    }

    /// Copy a directory the app named (with `--allow-local-buildpacks`) with
    /// the build user's rights: only what that user may read is copied.
    fn copy_as_build_user(
        &mut self,
        spec: &str,
        name: &str,
        src: &Path,
    ) -> Result<Buildpack, BuildpackError> {
        let src = std::path::absolute(src).unwrap_or_else(|_| src.to_path_buf());
        let dest = self.next_dest(name);
        let inner_dest = self.runner.sandbox().to_inner(&dest);
        let mut from = src.clone().into_os_string();
        from.push("/.");
        let argv: Vec<&OsStr> = vec![
            OsStr::new("-R"),
            OsStr::new("-P"),
            OsStr::new("--preserve=mode"),
            OsStr::new("--"),
            from.as_os_str(),
            inner_dest.as_os_str(),
        ];
        let read_only = [src.clone()];
        let env = self.env.clone();
        let cwd = self.runner.sandbox().inner().buildpacks.clone();
        let copy_err = |what: &str, e: std::io::Error| BuildpackError::Copy {
            spec: shown(spec),
            detail: format!("{what} {}: {e}", dest.display()),
        };
        std::fs::create_dir_all(&dest).map_err(|e| copy_err("creating", e))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::lchown(&dest, Some(uid), Some(gid))
                .map_err(|e| copy_err("handing over", e))?;
        }
        let out = self
            .runner
            .run(Step::new(Path::new("cp"), &argv, &env, &cwd).read_only(&read_only))
            .map_err(|source| step_error(spec, source))?;
        if !out.status.success() {
            return Err(BuildpackError::Copy {
                spec: shown(spec),
                detail: format!("cp {}", describe_status(out.status)),
            });
        }
        Buildpack::checked(spec, name.to_string(), dest)
    }

    /// `heroku/python` -> the bundled `python` buildpack.
    fn named(&mut self, spec: &str, name: &str) -> Result<Buildpack, BuildpackError> {
        let lang = name.rsplit('/').next().unwrap_or(name);
        let lang = lang.strip_prefix("heroku-buildpack-").unwrap_or(lang);
        let lang = match lang {
            "node" | "node.js" => "nodejs",
            other => other,
        };
        let bundled = match &self.bundled {
            Some(b) => installed(b)?,
            None => Vec::new(),
        };
        if let Some(bp) = bundled.iter().find(|bp| bp.name == lang) {
            let mut copy = self.copy_trusted(spec, &bp.name, &bp.dir)?;
            copy.spec = spec.to_string();
            return Ok(copy);
        }
        Err(BuildpackError::UnknownName {
            spec: spec.to_string(),
            known: bundled
                .iter()
                .map(|bp| format!("heroku/{}", bp.name))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// One `git` step in the sandbox, as the build user.
    fn git(
        &self,
        spec: &str,
        action: &'static str,
        args: &[&OsStr],
        read_only: &[PathBuf],
    ) -> Result<(), BuildpackError> {
        let git = slug_shared::exe::find(
            "git",
            self.env.get(OsStr::new("PATH")).map(OsString::as_os_str),
        )
        .ok_or_else(|| BuildpackError::NoGit { spec: shown(spec) })?;
        let mut argv: Vec<&OsStr> = vec![
            // The repository belongs to someone else (the operator, or the
            // build user's own fresh clone): git must not refuse it.
            OsStr::new("-c"),
            OsStr::new("safe.directory=*"),
            OsStr::new("-c"),
            OsStr::new("advice.detachedHead=false"),
        ];
        argv.extend_from_slice(args);
        let mut env = self.env.clone();
        // Never prompt for credentials: a build has no one to answer.
        env.insert("GIT_TERMINAL_PROMPT".into(), "0".into());
        env.insert("GIT_ASKPASS".into(), "/bin/false".into());
        env.insert("GIT_CONFIG_NOSYSTEM".into(), "1".into());
        let cwd = self.runner.sandbox().inner().buildpacks.clone();
        let out = self
            .runner
            .run(Step::new(&git, &argv, &env, &cwd).read_only(read_only))
            .map_err(|source| step_error(spec, source))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(BuildpackError::Git {
                spec: shown(spec),
                action,
                status: describe_status(out.status),
            })
        }
    }

    /// Clone `url` at `reference` (branch, tag or commit) into `dest`, as the
    /// build user. A ref never reaches git as an option.
    fn clone(
        &self,
        spec: &str,
        url: &str,
        reference: Option<&str>,
        dest: &Path,
    ) -> Result<(), BuildpackError> {
        self.prepare_dest(spec, dest)?;
        let inner = self.runner.sandbox().to_inner(dest);
        let read_only: Vec<PathBuf> = url
            .strip_prefix("file://")
            .map(|p| vec![PathBuf::from(p)])
            .unwrap_or_default();
        let branch = reference.map(|r| OsString::from(format!("--branch={r}")));
        let mut shallow: Vec<&OsStr> =
            vec!["clone".as_ref(), "--quiet".as_ref(), "--depth=1".as_ref()];
        if let Some(b) = &branch {
            shallow.push(b.as_os_str());
        }
        shallow.extend([OsStr::new("--"), url.as_ref(), inner.as_os_str()]);
        if self.git(spec, "clone", &shallow, &read_only).is_err() {
            // A commit id cannot be cloned by name: full clone, then check out.
            self.cancel.check().map_err(BuildpackError::Stopped)?;
            empty_dir(dest);
            log_info(format!(
                "Cloning {} in full to find {}",
                shown(url),
                reference.unwrap_or("HEAD")
            ));
            self.git(
                spec,
                "clone",
                &[
                    "clone".as_ref(),
                    "--quiet".as_ref(),
                    "--".as_ref(),
                    url.as_ref(),
                    inner.as_os_str(),
                ],
                &read_only,
            )?;
            if let Some(r) = reference {
                self.git(
                    spec,
                    "checkout",
                    &[
                        "-C".as_ref(),
                        inner.as_os_str(),
                        "checkout".as_ref(),
                        "--quiet".as_ref(),
                        "--detach".as_ref(),
                        r.as_ref(),
                        "--".as_ref(),
                    ],
                    &read_only,
                )?;
            }
        }
        if dest
            .join(".gitmodules")
            .symlink_metadata()
            .is_ok_and(|m| m.is_file())
        {
            self.git(
                spec,
                "submodule update",
                &[
                    "-C".as_ref(),
                    inner.as_os_str(),
                    "submodule".as_ref(),
                    "update".as_ref(),
                    "--init".as_ref(),
                    "--recursive".as_ref(),
                    "--depth=1".as_ref(),
                ],
                &read_only,
            )?;
        }
        Ok(())
    }

    /// The directory a clone or download lands in, handed to the build user
    /// (who writes it from the sandbox). Failing to hand it over is an
    /// error here, not an obscure permission error in the step.
    fn prepare_dest(&self, spec: &str, dest: &Path) -> Result<(), BuildpackError> {
        let copy_err = |what: &str, e: std::io::Error| BuildpackError::Copy {
            spec: shown(spec),
            detail: format!("{what} {}: {e}", dest.display()),
        };
        std::fs::create_dir_all(dest).map_err(|e| copy_err("creating", e))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::lchown(dest, Some(uid), Some(gid))
                .map_err(|e| copy_err("handing over", e))?;
        }
        Ok(())
    }

    /// Download a tarball and unpack it through the safe unpacker, as a
    /// sandboxed step: with the build user's rights (and network rules), not
    /// root's, within the build's deadline.
    /// Returns the `sha256:...` digest of the downloaded archive.
    fn download(&self, spec: &str, url: &str, dest: &Path) -> Result<String, BuildpackError> {
        self.prepare_dest(spec, dest)?;
        let inner = self.runner.sandbox().to_inner(dest);
        let mut env = self.env.clone();
        // In the environment, not on the command line: a URL may carry a
        // token, and command lines are public.
        env.insert(FETCH_URL_ENV.into(), url.into());
        env.insert(
            FETCH_DEADLINE_ENV.into(),
            self.cancel.remaining().as_millis().to_string().into(),
        );
        let cwd = self.runner.sandbox().inner().buildpacks.clone();
        let out = self
            .runner
            .run(
                Step::new(
                    Path::new("/proc/self/exe"),
                    &[OsStr::new(FETCH_TARBALL_ARG), inner.as_os_str()],
                    &env,
                    &cwd,
                )
                .capture(),
            )
            .map_err(|source| step_error(spec, source))?;
        let said = String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            return said
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .filter(|l| l.len() == 71 && l.starts_with("sha256:"))
                .map(str::to_string)
                .ok_or_else(|| BuildpackError::Download {
                    spec: shown(spec),
                    detail: "the fetch step reported no digest".into(),
                });
        }
        let detail = said
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| describe_status(out.status));
        Err(BuildpackError::Download {
            spec: shown(spec),
            detail,
        })
    }
}

/// First argument of the tarball-fetching mode (run as a sandboxed step).
pub const FETCH_TARBALL_ARG: &str = "__fetch-buildpack-tarball";
const FETCH_URL_ENV: &str = "SLUGBUILDER_FETCH_URL";
const FETCH_DEADLINE_ENV: &str = "SLUGBUILDER_FETCH_DEADLINE_MS";

/// If this process was started to fetch a buildpack tarball (by
/// [`Fetcher`], as a sandboxed step), do it and return the exit code:
/// download `$SLUGBUILDER_FETCH_URL` and unpack it into the directory
/// given as argument, through the safe unpacker. On failure the reason is
/// the last line printed on stdout.
pub fn dispatch_fetch() -> Option<std::process::ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(OsStr::new(FETCH_TARBALL_ARG)) {
        return None;
    }
    let fail = |why: String| {
        println!("{why}");
        Some(std::process::ExitCode::FAILURE)
    };
    let (Some(dest), Some(url)) = (args.next(), std::env::var(FETCH_URL_ENV).ok()) else {
        return fail(format!(
            "{FETCH_TARBALL_ARG}: expected DEST and ${FETCH_URL_ENV}"
        ));
    };
    let deadline = std::env::var(FETCH_DEADLINE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| std::time::Instant::now() + std::time::Duration::from_millis(ms));
    let opts = HttpOptions {
        what: "buildpack",
        deadline,
        ..HttpOptions::default()
    };
    let body = match http::get(&url, &opts) {
        Ok(body) => body,
        Err(e) => return fail(e.to_string()),
    };
    // Whole into a file beside the destination first, hashed on the way:
    // the digest is then of exactly what was downloaded (the unpacker may
    // stop reading at the end-of-archive marker), for the build report.
    let dest = PathBuf::from(dest);
    let parent = dest.parent().unwrap_or(Path::new("."));
    let mut file = match tempfile::tempfile_in(parent) {
        Ok(file) => file,
        Err(e) => return fail(format!("a temporary file in {}: {e}", parent.display())),
    };
    let watch = body.watch();
    let mut hashing = slug_shared::digest::Hashed::new(body.take(MAX_TARBALL_BYTES + 1));
    if let Err(e) = std::io::copy(&mut hashing, &mut file) {
        return fail(
            watch
                .network_error()
                .map_or(e.to_string(), |n| n.to_string()),
        );
    }
    if hashing.size() > MAX_TARBALL_BYTES {
        return fail(format!(
            "the download is larger than {} MiB",
            MAX_TARBALL_BYTES >> 20
        ));
    }
    let digest = format!("sha256:{}", hashing.finish().2);
    if let Err(e) = file.seek(std::io::SeekFrom::Start(0)) {
        return fail(e.to_string());
    }
    let reader: Box<dyn Read + Send> = Box::new(file);
    match archive::unpack(reader, &dest, &UnpackOptions::default()) {
        Ok(_) => {
            println!("{digest}");
            Some(std::process::ExitCode::SUCCESS)
        }
        Err(e) => fail(format!("bad tarball: {}", slug_shared::log::error_line(&e))),
    }
}

/// A buildpack archive larger than this is refused (real ones are a few MB).
const MAX_TARBALL_BYTES: u64 = 512 << 20;

fn step_error(spec: &str, source: StepError) -> BuildpackError {
    match source {
        StepError::Stopped(stop) => BuildpackError::Stopped(stop),
        source => BuildpackError::Step {
            spec: shown(spec),
            source,
        },
    }
}

fn log_info(msg: String) {
    slug_shared::log::info(msg);
}

/// Remove everything in `dir`, keeping `dir`.
fn empty_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = slug_shared::rootdir::remove_entry(&e.path());
        }
    }
}

/// How a process ended, for messages.
pub fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!(
            "killed by signal {}",
            nix::sys::signal::Signal::try_from(sig).map_or(sig.to_string(), |s| s.to_string())
        ),
        _ => "unknown status".into(),
    }
}

fn dir_name(dir: &Path, spec: &str) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .map(|n| sanitize_name(&n))
        .unwrap_or_else(|| sanitize_name(spec))
}

/// A directory name for a URL: its last path component, without
/// `.git`/`.tgz`.
fn url_stem(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let stem = path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("buildpack");
    let stem = stem
        .trim_end_matches(".git")
        .trim_end_matches(".tgz")
        .trim_end_matches(".tar.gz")
        .trim_end_matches(".tar");
    sanitize_name(stem)
}

fn sanitize_name(s: &str) -> String {
    let name: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || *c == '.')
        .take(60)
        .collect();
    let name = name.trim_start_matches('.').to_string();
    if name.is_empty() {
        "buildpack".into()
    } else {
        name
    }
}

/// A tarball often wraps the buildpack in one top-level directory (GitHub's
/// archives do): use it when the root itself has no `bin/`.
fn buildpack_root(dest: &Path) -> PathBuf {
    let is_dir = |p: &Path| p.symlink_metadata().is_ok_and(|m| m.is_dir());
    if is_dir(&dest.join("bin")) {
        return dest.to_path_buf();
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(dest)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    match entries.as_slice() {
        [only] if is_dir(only) && is_dir(&only.join("bin")) => only.clone(),
        _ => dest.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_sources() {
        assert_eq!(
            Source::parse("https://github.com/heroku/heroku-buildpack-python.git#v1.2").unwrap(),
            Source::Git {
                url: "https://github.com/heroku/heroku-buildpack-python.git".into(),
                reference: Some("v1.2".into())
            }
        );
        assert_eq!(
            Source::parse("file:///srv/bp.git#main").unwrap(),
            Source::Git {
                url: "file:///srv/bp.git".into(),
                reference: Some("main".into())
            }
        );
        assert_eq!(
            Source::parse("https://example.com/bp.tgz").unwrap(),
            Source::Tarball {
                url: "https://example.com/bp.tgz".into()
            }
        );
        assert_eq!(
            Source::parse("heroku/python").unwrap(),
            Source::Named("heroku/python".into())
        );
        assert_eq!(
            Source::parse("/opt/bp").unwrap(),
            Source::Dir("/opt/bp".into())
        );
        assert!(Source::parse("ftp://x/y").is_err());
    }

    #[test]
    fn refs_that_look_like_options_are_refused() {
        for spec in [
            "https://x/bp.git#--upload-pack=touch /tmp/pwned",
            "file:///srv/bp.git#-c",
            "git@host:bp.git#-x",
        ] {
            assert!(
                matches!(Source::parse(spec), Err(BuildpackError::BadRef { .. })),
                "{spec}"
            );
        }
    }

    #[test]
    fn local_sources_are_told_apart() {
        assert!(Source::parse("/opt/bp").unwrap().is_local());
        assert!(Source::parse("FILE:///srv/bp.git").unwrap().is_local());
        assert!(!Source::parse("https://x/bp.git").unwrap().is_local());
        assert!(!Source::parse("heroku/python").unwrap().is_local());
    }

    #[test]
    fn shown_specs_carry_no_credentials() {
        assert_eq!(
            shown("https://user:token@git.example/bp.git#v1"),
            "https://git.example/bp.git#v1"
        );
        assert_eq!(
            shown("https://s3.example/bp.tgz?X-Amz-Signature=abc"),
            "https://s3.example/bp.tgz"
        );
    }

    #[test]
    fn list_files_keep_url_refs_and_drop_comments() {
        assert_eq!(
            parse_list_file("# first\nhttps://x/a.git#v1\n\n/opt/b # local\n"),
            ["https://x/a.git#v1", "/opt/b"]
        );
        assert_eq!(parse_list_env(" a, b ,,c"), ["a", "b", "c"]);
    }

    #[test]
    fn names_are_safe_directory_names() {
        assert_eq!(
            url_stem("https://x/heroku-buildpack-python.git"),
            "heroku-buildpack-python"
        );
        assert_eq!(url_stem("https://x/../..?a=b"), "buildpack");
        assert_eq!(sanitize_name("../../etc"), "etc");
    }
}
