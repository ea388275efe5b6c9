//! Registry credentials from the usual auth files, read by slugbuilder
//! itself before any buildpack code runs and kept only in its memory.
//!
//! Files, in the order podman and skopeo look (the first that has an entry
//! for the registry wins): `$REGISTRY_AUTH_FILE`;
//! `$XDG_RUNTIME_DIR/containers/auth.json` (podman's, else
//! `/run/containers/UID/auth.json`); `$XDG_CONFIG_HOME/containers/auth.json`
//! (else `~/.config/containers/auth.json`); `$DOCKER_CONFIG/config.json`
//! (else `~/.docker/config.json`). Entries are `"auths": {KEY: {"auth":
//! base64("user:password")}}`, KEY being `host[:port]`, `host/namespace[/repo]`
//! (the most specific wins) or a legacy `https://host/v1/` URL.
//! Credential helpers (`credHelpers`, `credsStore`) are not run.
//!
//! A [`Credential`] never prints its secret: its `Debug` shows the user only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;

/// Largest auth file read.
const MAX_AUTH_FILE: u64 = 1 << 20;

/// A user name and its password (or token).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
    /// The file it came from, for messages.
    pub source: PathBuf,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

impl Credential {
    /// The value of an `Authorization: Basic` header.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("auth file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// One parsed auth file.
#[derive(Debug, Clone, Default)]
struct AuthFile {
    path: PathBuf,
    /// Normalised key -> credential.
    entries: BTreeMap<String, Credential>,
    /// Registries that have a credential helper configured.
    helpers: Vec<String>,
}

/// Every credential of the auth files that exist, in lookup order.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    files: Vec<AuthFile>,
    /// Auth files that were looked for (for messages).
    pub searched: Vec<PathBuf>,
    /// Things the operator should know (a file others can read).
    pub warnings: Vec<String>,
}

/// Where to look, in order, given the environment.
pub fn auth_file_paths(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(p) = env("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        paths.push(PathBuf::from(p));
    }
    match env("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(dir) => paths.push(Path::new(&dir).join("containers/auth.json")),
        None => paths.push(PathBuf::from(format!(
            "/run/containers/{}/auth.json",
            nix::unistd::geteuid()
        ))),
    }
    let home = env("HOME").filter(|h| !h.is_empty());
    match (env("XDG_CONFIG_HOME").filter(|p| !p.is_empty()), &home) {
        (Some(dir), _) => paths.push(Path::new(&dir).join("containers/auth.json")),
        (None, Some(home)) => paths.push(Path::new(home).join(".config/containers/auth.json")),
        (None, None) => {}
    }
    match (env("DOCKER_CONFIG").filter(|p| !p.is_empty()), &home) {
        (Some(dir), _) => paths.push(Path::new(&dir).join("config.json")),
        (None, Some(home)) => paths.push(Path::new(home).join(".docker/config.json")),
        (None, None) => {}
    }
    paths
}

impl Credentials {
    /// Read the auth files of this process's environment.
    pub fn load_default() -> Result<Self, AuthFileError> {
        Self::load(&auth_file_paths(&|k| std::env::var(k).ok()))
    }

    /// Read these auth files (missing ones are skipped; a file named by
    /// `REGISTRY_AUTH_FILE` that is unreadable or invalid is an error, as
    /// is any invalid file: a typo should not silently mean "anonymous").
    pub fn load(paths: &[PathBuf]) -> Result<Self, AuthFileError> {
        let mut creds = Credentials {
            searched: paths.to_vec(),
            ..Default::default()
        };
        for path in paths {
            let bytes = match read_capped(path) {
                Ok(Some(b)) => b,
                Ok(None) => continue,
                Err(reason) => {
                    return Err(AuthFileError::Invalid {
                        path: path.clone(),
                        reason,
                    })
                }
            };
            if let Some(warning) = loose_permissions(path) {
                creds.warnings.push(warning);
            }
            creds.files.push(parse_auth_file(path, &bytes)?);
        }
        Ok(creds)
    }

    /// Credentials for `repository` (`host[:port]/path`) on `host`: the
    /// most specific key of the first file that has one.
    pub fn find(&self, host: &str, repository: &str) -> Option<&Credential> {
        let full = format!("{host}/{repository}");
        let mut candidates: Vec<&str> = Vec::new();
        let mut prefix = full.as_str();
        loop {
            candidates.push(prefix);
            match prefix.rfind('/') {
                Some(i) => prefix = &prefix[..i],
                None => break,
            }
        }
        let hub_aliases = ["docker.io", "index.docker.io", "registry-1.docker.io"];
        for file in &self.files {
            for c in &candidates {
                if let Some(cred) = file.entries.get(*c) {
                    return Some(cred);
                }
            }
            if hub_aliases.contains(&host) {
                for alias in hub_aliases {
                    if let Some(cred) = file.entries.get(alias) {
                        return Some(cred);
                    }
                }
            }
        }
        None
    }

    /// Whether some file configures a credential helper for `host` (which
    /// we do not run): said in the error when the registry wants a login.
    pub fn helper_for(&self, host: &str) -> Option<&Path> {
        self.files
            .iter()
            .find(|f| f.helpers.iter().any(|h| h == host))
            .map(|f| f.path.as_path())
    }
}

/// The file's bytes; `None` when it does not exist.
fn read_capped(path: &Path) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut bytes = Vec::new();
    file.take(MAX_AUTH_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_AUTH_FILE {
        return Err(format!("larger than {MAX_AUTH_FILE} bytes"));
    }
    Ok(Some(bytes))
}

/// A warning when users other than the owner may read the file.
fn loose_permissions(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(path).ok()?.mode();
    (mode & 0o044 != 0).then(|| {
        format!(
            "auth file {} can be read by other users (mode {:o}): chmod 600 it",
            path.display(),
            mode & 0o777
        )
    })
}

/// `https://index.docker.io/v1/` -> `index.docker.io`; `host/ns` stays.
fn normalise_key(key: &str) -> String {
    match key.split_once("://") {
        Some((_, rest)) => rest.split('/').next().unwrap_or(rest).to_string(),
        None => key.trim_end_matches('/').to_string(),
    }
}

fn parse_auth_file(path: &Path, bytes: &[u8]) -> Result<AuthFile, AuthFileError> {
    let invalid = |reason: String| AuthFileError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    // Never put serde's message in the error: it may quote the file.
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|_| invalid("not valid JSON".into()))?;
    let mut file = AuthFile {
        path: path.to_path_buf(),
        ..Default::default()
    };
    if let Some(auths) = doc.get("auths") {
        let auths = auths
            .as_object()
            .ok_or_else(|| invalid("`auths` is not an object".into()))?;
        for (key, entry) in auths {
            let key_n = normalise_key(key);
            let user_pass = match entry.get("auth").and_then(|a| a.as_str()) {
                Some(encoded) if !encoded.is_empty() => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(encoded.trim())
                        .ok()
                        .and_then(|d| String::from_utf8(d).ok())
                        .ok_or_else(|| {
                            invalid(format!("the entry for {key_n}: `auth` is not base64"))
                        })?;
                    let (u, p) = decoded.split_once(':').ok_or_else(|| {
                        invalid(format!(
                            "the entry for {key_n}: `auth` is not user:password"
                        ))
                    })?;
                    Some((u.to_string(), p.to_string()))
                }
                _ => match (
                    entry.get("username").and_then(|u| u.as_str()),
                    entry.get("password").and_then(|p| p.as_str()),
                ) {
                    (Some(u), Some(p)) => Some((u.to_string(), p.to_string())),
                    _ => None,
                },
            };
            if let Some((username, password)) = user_pass {
                file.entries.insert(
                    key_n,
                    Credential {
                        username,
                        password,
                        source: path.to_path_buf(),
                    },
                );
            }
        }
    }
    if let Some(helpers) = doc.get("credHelpers").and_then(|h| h.as_object()) {
        file.helpers
            .extend(helpers.keys().map(|k| normalise_key(k)));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn the_most_specific_key_of_the_first_file_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let first = tmp.path().join("auth.json");
        let second = tmp.path().join("config.json");
        std::fs::write(
            &first,
            format!(
                r#"{{"auths": {{"reg.example:5000": {{"auth": "{}"}},
                    "reg.example:5000/team": {{"auth": "{}"}}}}}}"#,
                b64("host:h-pw"),
                b64("team:t-pw")
            ),
        )
        .unwrap();
        std::fs::write(
            &second,
            format!(
                r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{}"}},
                    "reg.example:5000": {{"auth": "{}"}}}}}}"#,
                b64("hub:hub-pw"),
                b64("other:o-pw")
            ),
        )
        .unwrap();
        let creds = Credentials::load(&[first, tmp.path().join("missing.json"), second]).unwrap();
        let user = |host: &str, repo: &str| creds.find(host, repo).map(|c| c.username.clone());
        assert_eq!(
            user("reg.example:5000", "team/app").as_deref(),
            Some("team")
        );
        assert_eq!(
            user("reg.example:5000", "teams/app").as_deref(),
            Some("host")
        );
        assert_eq!(user("docker.io", "library/ubuntu").as_deref(), Some("hub"));
        assert_eq!(user("elsewhere", "x"), None);
        let c = creds.find("reg.example:5000", "team/app").unwrap();
        assert_eq!(c.password, "t-pw");
        // Passwords never print.
        assert!(!format!("{c:?}").contains("t-pw"));
        assert!(!c.basic_header().contains("t-pw"));
    }

    #[test]
    fn an_invalid_file_is_one_clear_error_without_its_content() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("auth.json");
        std::fs::write(&path, r#"{"auths": {"h": {"auth": "c2VjcmV0LXB3"}}"#).unwrap();
        let err = Credentials::load(std::slice::from_ref(&path))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid JSON"), "{err}");
        std::fs::write(&path, r#"{"auths": {"h": {"auth": "c2VjcmV0LXB3"}}}"#).unwrap();
        let err = Credentials::load(std::slice::from_ref(&path))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not user:password"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn lookup_order_follows_podman() {
        let env = |k: &str| match k {
            "REGISTRY_AUTH_FILE" => Some("/etc/slug/auth.json".to_string()),
            "XDG_RUNTIME_DIR" => Some("/run/user/7".to_string()),
            "HOME" => Some("/home/op".to_string()),
            _ => None,
        };
        assert_eq!(
            auth_file_paths(&env),
            [
                PathBuf::from("/etc/slug/auth.json"),
                "/run/user/7/containers/auth.json".into(),
                "/home/op/.config/containers/auth.json".into(),
                "/home/op/.docker/config.json".into(),
            ]
        );
    }
}
