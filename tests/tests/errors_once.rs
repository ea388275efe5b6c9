//! Errors once (issue 26): an error's message says only its own context
//! and leaves its cause to `source()`, so the line a user sees
//! (`slug_shared::log::error_line`, anyhow's `{:#}`) names each fact once.

use std::io;
use std::path::{Path, PathBuf};

use slug_build::buildpack::BuildpackError;
use slug_build::child::StepError;
use slug_build::sandbox::SandboxError;
use slug_build::BuildError;
use slug_run::runtime::RuntimeError;
use slug_shared::archive::ArchiveError;
use slug_shared::http::HttpError;
use slug_shared::log::error_line;
use slug_shared::rootdir::RootError;

const ENOENT: &str = "No such file or directory (os error 2)";
const EACCES: &str = "Permission denied (os error 13)";

fn os(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// `err`'s line is `want`, each of `facts` appears in it exactly once, and
/// anyhow (as the binaries wrap it) prints the same chain.
fn check<E>(err: E, want: &str, facts: &[&str])
where
    E: std::error::Error + Send + Sync + 'static,
{
    let line = error_line(&err);
    assert_eq!(line, want);
    for fact in facts {
        assert_eq!(line.matches(fact).count(), 1, "{fact:?} in {line:?}");
    }
    let wrapped = anyhow::Error::new(err).context("starting");
    assert_eq!(format!("{wrapped:#}"), format!("starting: {want}"));
    assert_eq!(error_line(wrapped.as_ref()), format!("starting: {want}"));
}

#[test]
fn an_io_error_wrapped_twice_is_named_once() {
    let err = RuntimeError::Unpack {
        origin: "/tmp/slug.tgz".into(),
        source: ArchiveError::Write {
            path: "app/bin/web".into(),
            source: os(nix::libc::ENOENT),
        },
    };
    check(
        err,
        &format!("slug /tmp/slug.tgz: writing \"app/bin/web\": {ENOENT}"),
        &[ENOENT, "/tmp/slug.tgz", "app/bin/web"],
    );

    let err = BuildError::Fetch(BuildpackError::Step {
        spec: "https://example.com/bp.tgz".into(),
        source: StepError::Spawn {
            program: "/bp/bin/detect".into(),
            source: os(nix::libc::EACCES),
        },
    });
    check(
        err,
        &format!(
            "buildpack \"https://example.com/bp.tgz\": could not run \"/bp/bin/detect\": {EACCES}"
        ),
        &[EACCES, "bp.tgz", "/bp/bin/detect"],
    );

    let err = RuntimeError::Read {
        path: "/nonexistent".into(),
        source: os(nix::libc::ENOENT),
    };
    check(
        err,
        &format!("cannot read /nonexistent: {ENOENT}"),
        &[ENOENT],
    );
}

#[test]
fn an_archive_error_is_named_once() {
    let err = BuildError::Source(ArchiveError::Unsafe(RootError::Io {
        path: "app/x".into(),
        source: os(nix::libc::EACCES),
    }));
    check(
        err,
        &format!("bad source archive: \"app/x\": {EACCES}"),
        &[EACCES, "app/x", "bad source archive"],
    );

    let err = BuildError::Pack(ArchiveError::Corrupt("unexpected end of file".into()));
    check(
        err,
        "packing the slug: corrupt archive: unexpected end of file",
        &["unexpected end of file", "corrupt archive"],
    );
}

#[test]
fn a_sandbox_error_is_named_once() {
    let err = BuildError::Sandbox(SandboxError::Io {
        context: "creating the build's /tmp".into(),
        source: os(nix::libc::EACCES),
    });
    check(
        err,
        &format!("creating the build's /tmp: {EACCES}"),
        &[EACCES, "/tmp"],
    );
}

#[test]
fn an_http_error_is_named_once() {
    let http = HttpError::Transport {
        what: "slug",
        url: "https://example.com/slug.tgz".into(),
        reason: "connection refused".into(),
        attempts: 3,
    };
    let want = "slug https://example.com/slug.tgz: connection refused (after 3 attempt(s))";
    check(
        RuntimeError::Fetch(http.clone()),
        want,
        &["connection refused", "example.com"],
    );
    check(
        BuildError::Upload(http),
        &format!("uploading the slug: {want}"),
        &["connection refused", "example.com"],
    );
}

/// One `#[error(...)]` attribute and the variant or struct it describes.
struct Described {
    file: PathBuf,
    line: usize,
    format: String,
    item: String,
}

/// Every `#[error(...)]` attribute in `dir` (recursively).
fn error_attributes(dir: &Path, out: &mut Vec<Described>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            error_attributes(&path, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let starts: Vec<usize> = text.match_indices("#[error(").map(|(i, _)| i).collect();
        for (n, &start) in starts.iter().enumerate() {
            let open = start + "#[error".len();
            let close = matching_paren(&text, open);
            let format = text[open + 1..close].to_string();
            // The item runs to the next attribute or the end of its enum.
            let rest = &text[close + 1..];
            let mut end = rest.find("\n}").map_or(rest.len(), |i| i + 2);
            if let Some(&next) = starts.get(n + 1) {
                end = end.min(next - (close + 1));
            }
            out.push(Described {
                file: path.clone(),
                line: text[..start].lines().count() + 1,
                format,
                item: rest[..end].to_string(),
            });
        }
    }
}

/// Index of the `)` closing the `(` at `open`, skipping string literals.
fn matching_paren(text: &str, open: usize) -> usize {
    let bytes = text.as_bytes();
    assert_eq!(bytes[open], b'(');
    let (mut depth, mut i, mut in_str) = (0, open, false);
    loop {
        match (in_str, bytes[i]) {
            (true, b'\\') => i += 1,
            (true, b'"') => in_str = false,
            (false, b'"') => in_str = true,
            (false, b'(') => depth += 1,
            (false, b')') => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
        i += 1;
    }
}

/// The fields of `item` that thiserror makes its source: one named
/// `source`, or marked `#[source]` or `#[from]` (tuple fields by index).
fn source_fields(item: &str) -> Vec<String> {
    let mut fields = Vec::new();
    for marker in ["#[source]", "#[from]"] {
        for (at, _) in item.match_indices(marker) {
            let after = item[at + marker.len()..].trim_start();
            let after = after.strip_prefix("pub ").unwrap_or(after).trim_start();
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let next = after[name.len()..].trim_start();
            if next.starts_with(':') && !next.starts_with("::") {
                fields.push(name);
            } else {
                // A tuple field: its index is the commas before it.
                let open = item[..at].rfind('(').expect("a tuple variant");
                fields.push(item[open..at].matches(',').count().to_string());
            }
        }
    }
    let named_source = item
        .split(['{', ',', '\n'])
        .any(|f| f.trim().trim_start_matches("pub ").starts_with("source:"));
    if named_source && !fields.iter().any(|f| f == "source") {
        fields.push("source".into());
    }
    fields
}

/// Whether the format arguments of `#[error(...)]` print `field`.
fn interpolates(format: &str, field: &str) -> bool {
    ["}", ":"]
        .iter()
        .any(|end| format.contains(&format!("{{{field}{end}")))
        || format.contains(&format!(".{field}"))
}

#[test]
fn no_error_message_repeats_its_source() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut all = Vec::new();
    for dir in e2e::SOURCE_DIRS {
        error_attributes(&root.join(dir), &mut all);
    }
    let with_source: Vec<_> = all
        .iter()
        .filter(|d| !source_fields(&d.item).is_empty())
        .collect();
    // The scan must see the errors it is about (not pass by finding none).
    assert!(all.len() > 100, "only {} #[error] attributes", all.len());
    assert!(
        with_source.len() > 30,
        "only {} errors with a source",
        with_source.len()
    );
    let repeating: Vec<String> = with_source
        .iter()
        .filter(|d| d.format.trim() != "transparent")
        .flat_map(|d| {
            source_fields(&d.item)
                .into_iter()
                .filter(|f| interpolates(&d.format, f))
                .map(|f| {
                    format!(
                        "{}:{}: #[error({})] prints its source `{f}`",
                        d.file.display(),
                        d.line,
                        d.format
                    )
                })
        })
        .collect();
    assert!(repeating.is_empty(), "{}", repeating.join("\n"));
}
