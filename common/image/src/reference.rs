//! Image references, as skopeo names them: `docker://HOST[:PORT]/REPO[:TAG]`
//! or plain `HOST[:PORT]/REPO[:TAG]` (a registry), `oci:DIR[:TAG]` (an OCI
//! image layout), `oci-archive:FILE[:TAG]` (a tar of one).
//!
//! Registry names are parsed by oci-spec's [`Reference`], which applies
//! Docker's normalisation (`ubuntu` is `docker.io/library/ubuntu:latest`).
//! A layout's path ends at the first `:` (as in skopeo), so DIR cannot hold one.

use std::fmt;
use std::path::PathBuf;

use oci_spec::distribution::Reference;

/// The tag an `oci:` or `oci-archive:` reference gets when it names none.
pub const DEFAULT_TAG: &str = "latest";

/// Where an image is, or is to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// A repository of a registry, by tag or digest.
    Registry(Reference),
    /// An OCI image layout directory.
    Layout { dir: PathBuf, tag: Option<String> },
    /// A tar of an OCI image layout (what `podman load` reads).
    Archive { file: PathBuf, tag: Option<String> },
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("image reference {input:?}: {reason}")]
pub struct BadReference {
    pub input: String,
    pub reason: String,
}

impl ImageRef {
    pub fn parse(input: &str) -> Result<Self, BadReference> {
        let bad = |reason: &str| BadReference {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = input.strip_prefix("oci-archive:") {
            let (path, tag) = split_path_tag(rest).map_err(|r| bad(&r))?;
            return Ok(ImageRef::Archive { file: path, tag });
        }
        if let Some(rest) = input.strip_prefix("oci:") {
            let (path, tag) = split_path_tag(rest).map_err(|r| bad(&r))?;
            return Ok(ImageRef::Layout { dir: path, tag });
        }
        let name = input.strip_prefix("docker://").unwrap_or(input);
        if let Some((transport, _)) = name.split_once(':') {
            if [
                "containers-storage",
                "docker-daemon",
                "docker-archive",
                "dir",
                "ostree",
                "sif",
            ]
            .contains(&transport)
            {
                return Err(bad(
                    "this transport is not supported: use docker://, oci: or oci-archive:",
                ));
            }
        }
        if name.is_empty() {
            return Err(bad("empty"));
        }
        let reference = Reference::try_from(name).map_err(|e| bad(&e.to_string()))?;
        // The parser lets an upper-case first component through as a
        // Docker Hub path; registries refuse it.
        if reference
            .repository()
            .bytes()
            .any(|b| b.is_ascii_uppercase())
        {
            return Err(bad("repository name must be lowercase"));
        }
        Ok(ImageRef::Registry(reference))
    }

    /// The tag to use for an `oci:`/`oci-archive:` reference.
    pub fn layout_tag(tag: &Option<String>) -> &str {
        tag.as_deref().unwrap_or(DEFAULT_TAG)
    }

    /// Whether an image can be written here: a registry reference needs a
    /// tag (a digest names content, it cannot be moved).
    pub fn check_writable(&self) -> Result<(), BadReference> {
        match self {
            ImageRef::Registry(r) if r.digest().is_some() => Err(BadReference {
                input: self.to_string(),
                reason: "a digest cannot be published to; name a tag".into(),
            }),
            _ => Ok(()),
        }
    }

    /// The registry host (with port) of a registry reference.
    pub fn registry_host(&self) -> Option<&str> {
        match self {
            ImageRef::Registry(r) => Some(r.registry()),
            _ => None,
        }
    }
}

/// `DIR[:TAG]` split at the first `:`.
fn split_path_tag(rest: &str) -> Result<(PathBuf, Option<String>), String> {
    let (path, tag) = match rest.split_once(':') {
        Some((p, t)) => (p, Some(t.to_string())),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    if let Some(tag) = &tag {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/:@+".contains(&b));
        if !valid {
            return Err(format!("invalid tag {tag:?}"));
        }
    }
    Ok((PathBuf::from(path), tag))
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry(r) => write!(f, "{r}"),
            ImageRef::Layout { dir, tag } => {
                write!(f, "oci:{}:{}", dir.display(), Self::layout_tag(tag))
            }
            ImageRef::Archive { file, tag } => {
                write!(
                    f,
                    "oci-archive:{}:{}",
                    file.display(),
                    Self::layout_tag(tag)
                )
            }
        }
    }
}

impl std::str::FromStr for ImageRef {
    type Err = BadReference;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(s: &str) -> (String, String, Option<String>, Option<String>) {
        match ImageRef::parse(s).unwrap() {
            ImageRef::Registry(r) => (
                r.registry().to_string(),
                r.repository().to_string(),
                r.tag().map(str::to_string),
                r.digest().map(str::to_string),
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn registry_references_in_both_spellings() {
        let want = (
            "127.0.0.1:5000".to_string(),
            "apps/hello".to_string(),
            Some("v1".to_string()),
            None,
        );
        assert_eq!(registry("docker://127.0.0.1:5000/apps/hello:v1"), want);
        assert_eq!(registry("127.0.0.1:5000/apps/hello:v1"), want);
        assert_eq!(
            registry("localhost/run"),
            (
                "localhost".into(),
                "run".into(),
                Some("latest".into()),
                None
            )
        );
        assert_eq!(registry("ubuntu").0, "docker.io");
        assert_eq!(registry("ubuntu").1, "library/ubuntu");
        let digest = format!("sha256:{}", "a".repeat(64));
        let (_, _, tag, d) = registry(&format!("registry.example.com/run@{digest}"));
        assert_eq!((tag, d), (None, Some(digest)));
    }

    #[test]
    fn layouts_and_archives() {
        assert_eq!(
            ImageRef::parse("oci:/tmp/layout:app").unwrap(),
            ImageRef::Layout {
                dir: "/tmp/layout".into(),
                tag: Some("app".into())
            }
        );
        assert_eq!(
            ImageRef::parse("oci-archive:app.tar").unwrap(),
            ImageRef::Archive {
                file: "app.tar".into(),
                tag: None
            }
        );
        assert_eq!(
            ImageRef::parse("oci-archive:app.tar").unwrap().to_string(),
            "oci-archive:app.tar:latest"
        );
    }

    #[test]
    fn bad_references_say_why() {
        for bad in [
            "",
            "oci:",
            "oci:dir:",
            "containers-storage:foo",
            "UPPER/case",
            "host:5000/a:b c",
        ] {
            let err = ImageRef::parse(bad).unwrap_err();
            assert!(err.to_string().contains("image reference"), "{err}");
        }
        let digest = format!("r.example/a@sha256:{}", "b".repeat(64));
        assert!(ImageRef::parse(&digest).unwrap().check_writable().is_err());
    }
}
