//! The release YAML that `bin/release` prints and that slugs carry as
//! `.release`: `default_process_types`, `config_vars`, `addons`.
//!
//! Parsing is strict about shape (a map of string keys to scalar values) and
//! lenient about what real buildpacks print (empty output, `null` sections,
//! numbers and booleans as values, unknown keys). Nothing is evaluated.

use std::collections::BTreeMap;

use serde_yaml::Value;

use crate::procfile::is_valid_process_type;

/// Largest release document accepted, in bytes.
pub const MAX_RELEASE_BYTES: usize = 1 << 20;

/// Deepest nesting of flow collections (`[`, `{`) accepted. The YAML
/// parser takes time quadratic in that depth (100,000 nested `[` cost half
/// a minute), so it is checked before parsing; real release documents nest
/// two or three levels.
pub const MAX_FLOW_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("release YAML is not valid")]
    Yaml(#[from] serde_yaml::Error),
    #[error("release YAML must be a mapping at the top level")]
    NotAMapping,
    #[error("release YAML: `{section}` must be a mapping of names to strings")]
    SectionShape { section: &'static str },
    #[error("release YAML: `{section}` entry {key:?} must have a scalar value")]
    ValueShape { section: &'static str, key: String },
    #[error("release YAML: invalid process type {0:?}")]
    InvalidProcessType(String),
    #[error("release YAML: invalid config var name {0:?}")]
    InvalidConfigVar(String),
    #[error("release YAML: `addons` must be a list of strings")]
    AddonsShape,
    #[error("release YAML is larger than {MAX_RELEASE_BYTES} bytes")]
    TooLarge,
    #[error("release YAML nests `[`/`{{` deeper than {MAX_FLOW_DEPTH} levels")]
    TooDeep,
}

/// What `bin/release` declares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Release {
    pub default_process_types: BTreeMap<String, String>,
    pub config_vars: BTreeMap<String, String>,
    pub addons: Vec<String>,
}

/// Whether `name` may be an environment variable name.
pub fn is_valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl Release {
    /// Parse a release document. Empty or whitespace-only input is an empty release.
    pub fn parse(bytes: &[u8]) -> Result<Self, ReleaseError> {
        if bytes.len() > MAX_RELEASE_BYTES {
            return Err(ReleaseError::TooLarge);
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        if flow_depth_exceeds(bytes, MAX_FLOW_DEPTH) {
            return Err(ReleaseError::TooDeep);
        }
        let doc: Value = serde_yaml::from_slice(bytes)?;
        let map = match doc {
            Value::Null => return Ok(Self::default()),
            Value::Mapping(m) => m,
            _ => return Err(ReleaseError::NotAMapping),
        };
        let mut release = Release::default();
        for (key, value) in map {
            match key.as_str() {
                Some("default_process_types") => {
                    release.default_process_types = string_map(value, "default_process_types")?;
                    if let Some(bad) = release
                        .default_process_types
                        .keys()
                        .find(|k| !is_valid_process_type(k))
                    {
                        return Err(ReleaseError::InvalidProcessType(bad.clone()));
                    }
                }
                Some("config_vars") => {
                    release.config_vars = string_map(value, "config_vars")?;
                    if let Some(bad) = release.config_vars.keys().find(|k| !is_valid_env_name(k)) {
                        return Err(ReleaseError::InvalidConfigVar(bad.clone()));
                    }
                }
                Some("addons") => release.addons = addons(value)?,
                _ => {}
            }
        }
        Ok(release)
    }

    /// Merge a later buildpack's release over this one, as Heroku does for
    /// multi-buildpack apps: the later buildpack's process types and config
    /// vars win by name, earlier ones survive where the later gives none.
    pub fn merge(&mut self, later: Release) {
        self.default_process_types
            .extend(later.default_process_types);
        self.config_vars.extend(later.config_vars);
        for addon in later.addons {
            if !self.addons.contains(&addon) {
                self.addons.push(addon);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.default_process_types.is_empty()
            && self.config_vars.is_empty()
            && self.addons.is_empty()
    }

    /// Serialize to YAML (stable: maps are sorted).
    pub fn to_yaml(&self) -> String {
        let mut root = serde_yaml::Mapping::new();
        let map_value = |m: &BTreeMap<String, String>| {
            Value::Mapping(
                m.iter()
                    .map(|(k, v)| (Value::String(k.clone()), Value::String(v.clone())))
                    .collect(),
            )
        };
        root.insert(
            "addons".into(),
            Value::Sequence(self.addons.iter().cloned().map(Value::String).collect()),
        );
        root.insert("config_vars".into(), map_value(&self.config_vars));
        root.insert(
            "default_process_types".into(),
            map_value(&self.default_process_types),
        );
        serde_yaml::to_string(&Value::Mapping(root))
            .expect("a mapping of strings always serializes")
    }
}

/// Whether `[`/`{` nest deeper than `limit`, counted in one linear pass
/// over every byte (quotes and comments included: over-counting can only
/// refuse a document with brackets unbalanced inside strings, while
/// following YAML's quoting rules here could be fooled into under-counting).
fn flow_depth_exceeds(bytes: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    for &b in bytes {
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn scalar_to_string(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn string_map(
    value: Value,
    section: &'static str,
) -> Result<BTreeMap<String, String>, ReleaseError> {
    match value {
        Value::Null => Ok(BTreeMap::new()),
        Value::Mapping(m) => m
            .into_iter()
            .map(|(k, v)| {
                let key = scalar_to_string(k).ok_or(ReleaseError::SectionShape { section })?;
                let val = scalar_to_string(v).ok_or_else(|| ReleaseError::ValueShape {
                    section,
                    key: key.clone(),
                })?;
                Ok((key, val))
            })
            .collect(),
        _ => Err(ReleaseError::SectionShape { section }),
    }
}

fn addons(value: Value) -> Result<Vec<String>, ReleaseError> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Sequence(items) => items
            .into_iter()
            .map(|v| scalar_to_string(v).ok_or(ReleaseError::AddonsShape))
            .collect(),
        _ => Err(ReleaseError::AddonsShape),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_real_buildpacks_print() {
        let r = Release::parse(
            b"---\naddons: []\nconfig_vars:\n  LANG: en_US.UTF-8\n  WEB_CONCURRENCY: 2\ndefault_process_types:\n  web: gunicorn app:app\n",
        )
        .unwrap();
        assert_eq!(r.default_process_types["web"], "gunicorn app:app");
        assert_eq!(r.config_vars["WEB_CONCURRENCY"], "2");
        assert!(Release::parse(b"").unwrap().is_empty());
        assert!(Release::parse(b"---\ndefault_process_types:\n")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(matches!(
            Release::parse(b"- a\n"),
            Err(ReleaseError::NotAMapping)
        ));
        assert!(matches!(
            Release::parse(b"default_process_types: [a]"),
            Err(ReleaseError::SectionShape { .. })
        ));
        assert!(matches!(
            Release::parse(b"default_process_types:\n  web;id: x\n"),
            Err(ReleaseError::InvalidProcessType(_))
        ));
        assert!(matches!(
            Release::parse(b"config_vars:\n  'A B': x\n"),
            Err(ReleaseError::InvalidConfigVar(_))
        ));
        assert!(matches!(
            Release::parse(b"a: [\n"),
            Err(ReleaseError::Yaml(_))
        ));
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let start = std::time::Instant::now();
        for doc in [
            "[".repeat(100_000),
            format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000)),
            "{a: ".repeat(100_000),
        ] {
            assert!(matches!(
                Release::parse(doc.as_bytes()),
                Err(ReleaseError::TooDeep)
            ));
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        // Brackets balanced inside commands are fine.
        let r =
            Release::parse(b"default_process_types:\n  web: bash -c '[[ -f x ]] && exec ./run'\n")
                .unwrap();
        assert_eq!(
            r.default_process_types["web"],
            "bash -c '[[ -f x ]] && exec ./run'"
        );
    }

    #[test]
    fn later_buildpack_wins_and_earlier_types_survive() {
        let mut a = Release::parse(b"default_process_types:\n  web: a\n  worker: w\n").unwrap();
        a.merge(Release::parse(b"default_process_types:\n  web: b\n").unwrap());
        assert_eq!(a.default_process_types["web"], "b");
        assert_eq!(a.default_process_types["worker"], "w");
    }

    #[test]
    fn yaml_round_trips() {
        let r = Release::parse(
            b"config_vars:\n  X: \"a: 'b'\\n\"\ndefault_process_types:\n  web: echo \"$PORT\"\n",
        )
        .unwrap();
        assert_eq!(Release::parse(r.to_yaml().as_bytes()).unwrap(), r);
    }
}
