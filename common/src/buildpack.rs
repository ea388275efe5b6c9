//! Buildpacks: where they come from and how they are fetched.
//!
//! A buildpack is named by a local directory, a git URL with an optional
//! `#ref` (`file://`, `https://`, `http://`, `git://`, `ssh://`), a tarball
//! URL (`.tgz`, `.tar.gz`, `.tar`), or a short name such as
//! `heroku/python`, which maps to the bundled buildpack of that language
//! (offline) when there is one. Git is the `git` binary found with `which`;
//! tarballs are downloaded over HTTP(S) and unpacked with the safe unpacker.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::archive::{self, UnpackOptions};

#[derive(Debug, thiserror::Error)]
pub enum BuildpackError {
    #[error("buildpack {spec:?}: {path:?} is not a directory")]
    NotADirectory { spec: String, path: PathBuf },
    #[error("buildpack {spec:?} has no executable bin/compile")]
    NoCompile { spec: String },
    #[error("buildpack {spec:?}: git is not installed (needed to clone it)")]
    NoGit { spec: String },
    #[error("buildpack {spec:?}: git {action} failed: {detail}")]
    Git {
        spec: String,
        action: &'static str,
        detail: String,
    },
    #[error("buildpack {spec:?}: download failed: {detail}")]
    Download { spec: String, detail: String },
    #[error("buildpack {spec:?}: bad tarball: {source}")]
    Tarball {
        spec: String,
        #[source]
        source: archive::ArchiveError,
    },
    #[error("buildpack {spec:?}: unknown short name (known: {known})")]
    UnknownName { spec: String, known: String },
    #[error("buildpack {spec:?}: unsupported URL scheme")]
    UnsupportedUrl { spec: String },
    #[error("reading buildpacks directory {path:?}: {source}")]
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
        if let Some(scheme_end) = base.find("://") {
            let scheme = &base[..scheme_end];
            let path_part = base.split(['?']).next().unwrap_or(base);
            let is_tarball = [".tgz", ".tar.gz", ".tar"]
                .iter()
                .any(|ext| path_part.ends_with(ext));
            return match scheme {
                "http" | "https" if is_tarball => Ok(Source::Tarball {
                    url: base.to_string(),
                }),
                "http" | "https" | "file" | "git" | "ssh" => Ok(Source::Git {
                    url: base.to_string(),
                    reference: fragment,
                }),
                _ => Err(BuildpackError::UnsupportedUrl {
                    spec: spec.to_string(),
                }),
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
}

/// A buildpack ready to run: a directory with `bin/`.
#[derive(Debug, Clone)]
pub struct Buildpack {
    /// How the user named it (for messages).
    pub spec: String,
    pub dir: PathBuf,
}

impl Buildpack {
    /// Short display name: the directory's name.
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.spec.clone())
    }

    pub fn bin(&self, step: &str) -> PathBuf {
        self.dir.join("bin").join(step)
    }

    pub fn has(&self, step: &str) -> bool {
        is_executable(&self.bin(step))
    }

    /// The `export` file, sourced after compile for later buildpacks.
    pub fn export_file(&self) -> Option<PathBuf> {
        let path = self.dir.join("export");
        path.is_file().then_some(path)
    }

    fn checked(spec: &str, dir: PathBuf) -> Result<Self, BuildpackError> {
        // Steps run in the build dir, so a relative path must be made absolute.
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        if !dir.is_dir() {
            return Err(BuildpackError::NotADirectory {
                spec: spec.to_string(),
                path: dir,
            });
        }
        let bp = Buildpack {
            spec: spec.to_string(),
            dir,
        };
        if !bp.has("compile") {
            return Err(BuildpackError::NoCompile {
                spec: spec.to_string(),
            });
        }
        Ok(bp)
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The buildpacks installed in `dir`, in detection order: the names listed
/// in `dir/.order` (one per line, `#` comments) first, in that order, then
/// every other subdirectory sorted by name. Entries without `bin/compile`
/// are skipped.
pub fn installed(dir: &Path) -> Result<Vec<Buildpack>, BuildpackError> {
    // Steps run in the build dir: a relative directory must be made absolute.
    let dir = &std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let list_err = |source| BuildpackError::ListDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(list_err)?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let order: Vec<String> = std::fs::read_to_string(dir.join(".order"))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let mut ordered: Vec<String> = order
        .iter()
        .filter(|n| names.contains(n))
        .cloned()
        .collect();
    ordered.extend(names.into_iter().filter(|n| !order.contains(n)));
    Ok(ordered
        .into_iter()
        .map(|name| Buildpack {
            spec: name.clone(),
            dir: dir.join(name),
        })
        .filter(|bp| bp.has("compile"))
        .collect())
}

/// Parse a `.buildpacks` file: one buildpack per line, `#` comments.
pub fn parse_list_file(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_once('#').map_or(l, |(before, _)| before).trim())
        // A `#` is also how a URL names its ref: keep it when it follows a URL.
        .zip(text.lines())
        .map(|(stripped, raw)| {
            let raw = raw.trim();
            if raw.contains("://") || raw.starts_with("git@") {
                raw.split_whitespace().next().unwrap_or("").to_string()
            } else {
                stripped.to_string()
            }
        })
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
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

/// Fetches buildpacks into a work directory.
#[derive(Debug)]
pub struct Fetcher {
    /// Where clones and downloads go.
    pub workdir: PathBuf,
    /// Bundled buildpacks, for short names.
    pub bundled: Option<PathBuf>,
    counter: usize,
}

impl Fetcher {
    pub fn new(workdir: PathBuf, bundled: Option<PathBuf>) -> Self {
        Self {
            workdir,
            bundled,
            counter: 0,
        }
    }

    /// Make the buildpack named by `spec` available locally.
    pub fn fetch(&mut self, spec: &str) -> Result<Buildpack, BuildpackError> {
        match Source::parse(spec)? {
            Source::Dir(dir) => Buildpack::checked(spec, dir),
            Source::Named(name) => self.named(spec, &name),
            Source::Git { url, reference } => {
                let dest = self.next_dest(&url);
                clone(spec, &url, reference.as_deref(), &dest)?;
                Buildpack::checked(spec, dest)
            }
            Source::Tarball { url } => {
                let dest = self.next_dest(&url);
                download_tarball(spec, &url, &dest)?;
                Buildpack::checked(spec, buildpack_root(&dest))
            }
        }
    }

    fn next_dest(&mut self, url: &str) -> PathBuf {
        self.counter += 1;
        let stem: String = url
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("buildpack")
            .trim_end_matches(".git")
            .trim_end_matches(".tgz")
            .trim_end_matches(".tar.gz")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || *c == '.')
            .take(60)
            .collect();
        self.workdir.join(format!(
            "{:02}-{}",
            self.counter,
            if stem.is_empty() { "buildpack" } else { &stem }
        ))
    }

    /// `heroku/python` -> the bundled `python` buildpack.
    fn named(&self, spec: &str, name: &str) -> Result<Buildpack, BuildpackError> {
        let lang = name.rsplit('/').next().unwrap_or(name);
        let lang = lang.strip_prefix("heroku-buildpack-").unwrap_or(lang);
        let lang = match lang {
            "node" | "node.js" => "nodejs",
            other => other,
        };
        let bundled = self
            .bundled
            .as_ref()
            .map(|b| installed(b))
            .transpose()?
            .unwrap_or_default();
        if let Some(bp) = bundled.iter().find(|bp| bp.name() == lang) {
            return Ok(Buildpack {
                spec: spec.to_string(),
                dir: bp.dir.clone(),
            });
        }
        Err(BuildpackError::UnknownName {
            spec: spec.to_string(),
            known: bundled
                .iter()
                .map(|bp| format!("heroku/{}", bp.name()))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// A tarball often wraps the buildpack in one top-level directory (GitHub's
/// archives do): use it when the root itself has no `bin/`.
fn buildpack_root(dest: &Path) -> PathBuf {
    if dest.join("bin").is_dir() {
        return dest.to_path_buf();
    }
    let dirs: Vec<PathBuf> = std::fs::read_dir(dest)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    match dirs.as_slice() {
        [only] if only.join("bin").is_dir() => only.clone(),
        _ => dest.to_path_buf(),
    }
}

fn git_command(spec: &str) -> Result<Command, BuildpackError> {
    let git = which::which("git").map_err(|_| BuildpackError::NoGit {
        spec: spec.to_string(),
    })?;
    let mut cmd = Command::new(git);
    // Never prompt for credentials: a build has no one to answer.
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/false")
        .stdin(std::process::Stdio::null());
    Ok(cmd)
}

fn run_git(spec: &str, action: &'static str, args: &[&OsStr]) -> Result<(), BuildpackError> {
    let out = git_command(spec)?
        .args(args)
        .output()
        .map_err(|e| BuildpackError::Git {
            spec: spec.to_string(),
            action,
            detail: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let detail = stderr
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("exited unsuccessfully")
        .trim()
        .to_string();
    Err(BuildpackError::Git {
        spec: spec.to_string(),
        action,
        detail,
    })
}

/// Clone `url` at `reference` (branch, tag or commit) into `dest`.
fn clone(
    spec: &str,
    url: &str,
    reference: Option<&str>,
    dest: &Path,
) -> Result<(), BuildpackError> {
    let dest_os = dest.as_os_str();
    // Fast path: a shallow clone of a branch or tag.
    let mut shallow: Vec<&OsStr> = vec!["clone".as_ref(), "--quiet".as_ref(), "--depth=1".as_ref()];
    if let Some(r) = reference {
        shallow.extend([OsStr::new("--branch"), OsStr::new(r)]);
    }
    shallow.extend([OsStr::new("--"), url.as_ref(), dest_os]);
    if run_git(spec, "clone", &shallow).is_err() {
        // A commit id cannot be cloned by name: full clone, then check out.
        let _ = crate::rootdir::remove_entry(dest);
        run_git(
            spec,
            "clone",
            &[
                "clone".as_ref(),
                "--quiet".as_ref(),
                "--".as_ref(),
                url.as_ref(),
                dest_os,
            ],
        )?;
        if let Some(r) = reference {
            run_git(
                spec,
                "checkout",
                &[
                    "-C".as_ref(),
                    dest_os,
                    "checkout".as_ref(),
                    "--quiet".as_ref(),
                    "--detach".as_ref(),
                    r.as_ref(),
                ],
            )?;
        }
    }
    if dest.join(".gitmodules").is_file() {
        run_git(
            spec,
            "submodule update",
            &[
                "-C".as_ref(),
                dest_os,
                "submodule".as_ref(),
                "update".as_ref(),
                "--init".as_ref(),
                "--recursive".as_ref(),
                "--depth=1".as_ref(),
            ],
        )?;
    }
    Ok(())
}

fn download_tarball(spec: &str, url: &str, dest: &Path) -> Result<(), BuildpackError> {
    let download_err = |detail: String| BuildpackError::Download {
        spec: spec.to_string(),
        detail,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into();
    let response = agent
        .get(url)
        .call()
        .map_err(|e| download_err(e.to_string()))?;
    let reader = response.into_body().into_reader();
    archive::unpack(reader, dest, &UnpackOptions::default()).map_err(|source| {
        BuildpackError::Tarball {
            spec: spec.to_string(),
            source,
        }
    })?;
    Ok(())
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
    fn list_files_keep_url_refs_and_drop_comments() {
        assert_eq!(
            parse_list_file("# first\nhttps://x/a.git#v1\n\n/opt/b # local\n"),
            ["https://x/a.git#v1", "/opt/b"]
        );
        assert_eq!(parse_list_env(" a, b ,,c"), ["a", "b", "c"]);
    }
}
