//! The manuals against the repository and the code: every relative link
//! points to a file of the repository (and an anchor of it), and the exit
//! codes in docs/cli.md and SECURITY.md are `slug_shared::exit`'s. The flags and
//! variables of docs/cli.md are checked by the binaries' own unit tests,
//! which alone reach their clap definitions.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use e2e::repo_root;
use slug_shared::exit::{Binary, Exit};

/// The manuals: README.md, ARCHITECTURE.md, SECURITY.md, docs/*.md and the READMEs below
/// the root.
fn manuals() -> Vec<PathBuf> {
    let root = repo_root();
    let mut files: Vec<PathBuf> = ["README.md", "ARCHITECTURE.md", "SECURITY.md"]
        .iter()
        .map(|f| root.join(f))
        .collect();
    for dir in ["docs"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("docs/") {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    for readme in [
        "buildpacks/README.md",
        "examples/README.md",
        "stack-images/README.md",
    ] {
        files.push(root.join(readme));
    }
    files.sort();
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The targets of the inline links `[text](target)` of a markdown text,
/// outside code blocks.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            targets.push(rest[..end].trim().to_string());
            rest = &rest[end..];
        }
    }
    targets
}

/// GitHub's anchors of a markdown text's headings.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim().to_lowercase();
        let slug: String = title
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        out.insert(slug);
    }
    out
}

/// Every relative link of a manual names a file or directory inside the
/// repository (a link out of it, such as `../shared/...`, only works on
/// one machine), and its `#anchor`, if any, a heading of that file.
#[test]
fn every_relative_link_of_the_manuals_resolves_inside_the_repository() {
    let root = repo_root().canonicalize().unwrap();
    let mut broken = Vec::new();
    for manual in manuals() {
        let text = read(&manual);
        let shown = manual
            .strip_prefix(&root)
            .unwrap_or(&manual)
            .display()
            .to_string();
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                manual.clone()
            } else {
                manual.parent().unwrap().join(path)
            };
            let Ok(real) = file.canonicalize() else {
                broken.push(format!("{shown}: ({target}): no such file"));
                continue;
            };
            if !real.starts_with(&root) {
                broken.push(format!("{shown}: ({target}): outside the repository"));
                continue;
            }
            if let Some(anchor) = anchor.filter(|_| real.extension().is_some_and(|e| e == "md")) {
                if !anchors(&read(&real)).contains(anchor) {
                    broken.push(format!("{shown}: ({target}): no such heading"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The rows `| code | name | meaning |` of the table under `heading`.
fn exit_rows(doc: &str, heading: &str) -> BTreeSet<(u8, String, String)> {
    let start = doc
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("docs/cli.md has no heading {heading:?}"));
    let mut rows = BTreeSet::new();
    for line in doc[start + heading.len() + 2..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
    {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [code, name, meaning] = cells[..] else {
            panic!("{heading}: not a row of three cells: {line}");
        };
        if let Ok(code) = code.parse() {
            rows.insert((
                code,
                name.trim_matches('`').to_string(),
                meaning.to_string(),
            ));
        }
    }
    rows
}

/// docs/cli.md lists exactly the codes of `slug_shared::exit`'s table, per
/// binary, with their names and meanings: none missing, none extra, none
/// reworded.
#[test]
fn docs_cli_md_lists_each_binarys_exit_codes_from_the_one_table() {
    let doc = read(&repo_root().join("docs/cli.md"));
    let mut problems = Vec::new();
    for (binary, heading) in [
        (Binary::Slugbuilder, "### slugbuilder exit codes"),
        (Binary::Slugrunner, "### slugrunner exit codes"),
    ] {
        let documented = exit_rows(&doc, heading);
        let table: BTreeSet<_> = Exit::of(binary)
            .map(|(e, m)| (e.code(), e.name().to_string(), m.to_string()))
            .collect();
        for row in table.difference(&documented) {
            problems.push(format!("{heading}: missing or different: {row:?}"));
        }
        for row in documented.difference(&table) {
            problems.push(format!("{heading}: not in slug_shared::exit: {row:?}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every exit code SECURITY.md, the README and the manuals in docs/ name
/// (`exit 18`, `exit code 20`) is one of the binaries' codes, or 128+N for
/// a signal N.
#[test]
fn the_manuals_name_only_exit_codes_that_exist() {
    let codes: BTreeSet<u8> = [Binary::Slugbuilder, Binary::Slugrunner]
        .into_iter()
        .flat_map(|b| Exit::of(b).map(|(e, _)| e.code()))
        .collect();
    let mut unknown = Vec::new();
    let mut seen = 0;
    for manual in manuals()
        .iter()
        .filter(|m| !m.ends_with("README.md") || m.parent() == Some(&repo_root()))
    {
        let text = read(manual).to_lowercase().replace('\n', " ");
        for (i, _) in text.match_indices("exit ") {
            let rest = text[i + 5..]
                .trim_start_matches("code ")
                .trim_start_matches("codes ");
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let Ok(code) = digits.parse::<u16>() else {
                continue;
            };
            seen += 1;
            if !(code <= 255 && codes.contains(&(code as u8)) || (129..=192).contains(&code)) {
                unknown.push(format!("{}: exit {code}", manual.display()));
            }
        }
    }
    assert!(
        seen > 10,
        "only {seen} exit codes found: is the search broken?"
    );
    assert!(
        unknown.is_empty(),
        "codes no binary has:\n{}",
        unknown.join("\n")
    );
}
