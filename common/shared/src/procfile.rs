//! The Procfile: `type: command` per line.
//!
//! Grammar (contract §3): blank lines and `#` comments are ignored; a line is
//! `NAME:` followed by the command, with or without a space after the colon
//! (`web:cmd` is valid, as in foreman). Names are `[A-Za-z0-9_-]+`. The last
//! line may lack a newline; CRLF line endings are accepted. A name declared
//! twice is an error that names both lines: silently picking one is how
//! users lose hours. Nothing here is ever evaluated as shell.

use std::collections::BTreeMap;
use std::fmt;

use crate::lines::content_lines;

/// Longest accepted process type name (Heroku's own limit is far lower in
/// practice; this only keeps hostile input bounded).
pub const MAX_NAME_LEN: usize = 63;
/// Largest Procfile accepted, in bytes.
pub const MAX_PROCFILE_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProcfileError {
    #[error("Procfile line {line}: expected `type: command`, got {text:?}")]
    Malformed { line: usize, text: String },
    #[error("Procfile line {line}: invalid process type {name:?} (allowed: letters, digits, '_' and '-', at most {MAX_NAME_LEN} characters)")]
    InvalidName { line: usize, name: String },
    #[error("Procfile line {line}: process type {name:?} has an empty command")]
    EmptyCommand { line: usize, name: String },
    #[error("Procfile line {line}: process type {name:?} is already declared on line {first}")]
    Duplicate {
        line: usize,
        first: usize,
        name: String,
    },
    #[error("Procfile is not valid UTF-8")]
    NotUtf8,
    #[error("Procfile is larger than {MAX_PROCFILE_BYTES} bytes")]
    TooLarge,
}

/// Whether `name` is a valid process type name. Names are only ever used as
/// map keys and in `DYNO`, never interpolated into shell or code.
pub fn is_valid_process_type(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Process types in declaration order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Procfile {
    entries: Vec<(String, String)>,
}

impl Procfile {
    /// Parse Procfile bytes.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, ProcfileError> {
        if bytes.len() > MAX_PROCFILE_BYTES {
            return Err(ProcfileError::TooLarge);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| ProcfileError::NotUtf8)?;
        Self::parse(text)
    }

    /// Parse Procfile text.
    pub fn parse(text: &str) -> Result<Self, ProcfileError> {
        let mut entries: Vec<(String, String)> = Vec::new();
        let mut first_line: BTreeMap<String, usize> = BTreeMap::new();
        for (line_no, trimmed) in content_lines(text) {
            let Some((name, command)) = trimmed.split_once(':') else {
                return Err(ProcfileError::Malformed {
                    line: line_no,
                    text: truncate(trimmed),
                });
            };
            let name = name.trim_end();
            if !is_valid_process_type(name) {
                return Err(ProcfileError::InvalidName {
                    line: line_no,
                    name: truncate(name),
                });
            }
            let command = command.trim();
            if command.is_empty() {
                return Err(ProcfileError::EmptyCommand {
                    line: line_no,
                    name: name.to_string(),
                });
            }
            if let Some(&first) = first_line.get(name) {
                return Err(ProcfileError::Duplicate {
                    line: line_no,
                    first,
                    name: name.to_string(),
                });
            }
            first_line.insert(name.to_string(), line_no);
            entries.push((name.to_string(), command.to_string()));
        }
        Ok(Self { entries })
    }

    /// Build a Procfile from a map (e.g. `default_process_types`), in the
    /// stable order of [`Procfile::ordered_names`].
    pub fn from_map(map: &BTreeMap<String, String>) -> Self {
        let mut entries: Vec<(String, String)> =
            map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        entries.sort_by(|a, b| order_key(&a.0).cmp(&order_key(&b.0)));
        Self { entries }
    }

    /// The command of a process type.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.as_str())
    }

    /// Process type names, in declaration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// `(name, command)` pairs in declaration order.
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `web` first (it is what users look for), then the rest by name.
fn order_key(name: &str) -> (bool, &str) {
    (name != "web", name)
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

impl fmt::Display for Procfile {
    /// Renders the canonical Procfile text (`name: command\n` per entry).
    /// Commands are single lines by construction, so this round-trips.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, command) in &self.entries {
            writeln!(f, "{name}: {command}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_grammar() {
        let p = Procfile::parse(
            "# comment\n\nweb: gunicorn app:app --bind 0.0.0.0:$PORT\r\nworker:python w.py\n  clock:   echo 'a: b'",
        )
        .unwrap();
        assert_eq!(p.get("web"), Some("gunicorn app:app --bind 0.0.0.0:$PORT"));
        assert_eq!(p.get("worker"), Some("python w.py"));
        assert_eq!(p.get("clock"), Some("echo 'a: b'"));
        assert_eq!(p.names().collect::<Vec<_>>(), ["web", "worker", "clock"]);
    }

    #[test]
    fn duplicate_names_line_numbers() {
        let err = Procfile::parse("web: a\n\nweb: b\n").unwrap_err();
        assert_eq!(
            err,
            ProcfileError::Duplicate {
                line: 3,
                first: 1,
                name: "web".into()
            }
        );
    }

    #[test]
    fn rejects_names_that_could_be_injected() {
        for bad in ["web;id: x", "we b: x", "$(id): x", "web/..: x"] {
            assert!(
                matches!(Procfile::parse(bad), Err(ProcfileError::InvalidName { .. })),
                "{bad}"
            );
        }
        assert!(!is_valid_process_type("web;id"));
        assert!(is_valid_process_type("web-2_x"));
    }

    #[test]
    fn rejects_lines_without_colon_and_empty_commands() {
        assert!(matches!(
            Procfile::parse("web gunicorn"),
            Err(ProcfileError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            Procfile::parse("web:   \n"),
            Err(ProcfileError::EmptyCommand { .. })
        ));
        assert_eq!(
            Procfile::parse_bytes(b"\xff: x"),
            Err(ProcfileError::NotUtf8)
        );
    }

    #[test]
    fn renders_web_first_then_sorted() {
        let map: BTreeMap<String, String> = [("worker", "w"), ("web", "x"), ("clock", "c")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let p = Procfile::from_map(&map);
        assert_eq!(p.to_string(), "web: x\nclock: c\nworker: w\n");
        assert_eq!(Procfile::parse(&p.to_string()).unwrap(), p);
    }
}
