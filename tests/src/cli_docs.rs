//! docs/cli.md against a binary's own clap definitions, both ways: every
//! flag and environment variable clap knows is documented, and every one
//! documented exists.
//!
//! Not a module of the e2e crate: slugbuilder's and slugrunner's unit tests
//! include this file (`#[path]`), since only they can reach their clap
//! definitions (`Args::command()`). It needs std and clap only.
//!
//! The reference has one `## COMMAND` section per command with flags
//! (`## slugbuilder image`), each with a table whose header starts
//! `| flag | env |`: the first cell holds the flags (`-s, --source FILE`),
//! the second the variables (`SOURCE_URL`, `TAR_URL`).

use std::collections::BTreeSet;

/// Flags (`--long`, `-s`) and environment variables.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub flags: BTreeSet<String>,
    pub envs: BTreeSet<String>,
}

/// What clap defines for `cmd` itself (not its subcommands); positional
/// arguments and the automatic `--help` and `--version` aside.
pub fn defined(cmd: &clap::Command) -> Names {
    let mut names = Names::default();
    for arg in cmd.get_arguments() {
        if arg.is_positional() || ["help", "version"].contains(&arg.get_id().as_str()) {
            continue;
        }
        if let Some(long) = arg.get_long() {
            names.flags.insert(format!("--{long}"));
        }
        if let Some(short) = arg.get_short() {
            names.flags.insert(format!("-{short}"));
        }
        if let Some(env) = arg.get_env() {
            names.envs.insert(env.to_string_lossy().into_owned());
        }
    }
    names
}

/// The text of section `## heading`, up to the next `## `; `None` when the
/// document has no such section.
pub fn section<'a>(doc: &'a str, heading: &str) -> Option<&'a str> {
    let start = doc
        .split_inclusive('\n')
        .scan(0, |at, line| {
            let here = *at;
            *at += line.len();
            Some((here, line))
        })
        .find(|(_, line)| line.trim_end() == format!("## {heading}"))
        .map(|(at, line)| at + line.len())?;
    let rest = &doc[start..];
    let end = rest.find("\n## ").map_or(rest.len(), |i| i + 1);
    Some(&rest[..end])
}

/// The cells of a table row (`\|` inside a cell is not a separator).
pub fn cells(row: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cell = String::new();
    let mut chars = row.trim().trim_start_matches('|').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => cell.push(chars.next().unwrap_or('|')),
            '|' => out.push(std::mem::take(&mut cell).trim().to_string()),
            c => cell.push(c),
        }
    }
    if !cell.trim().is_empty() {
        out.push(cell.trim().to_string());
    }
    out
}

/// The rows of the tables in `text` whose header's first cell is
/// `first_header`, header and separator rows left out.
pub fn rows(text: &str, first_header: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut in_table = false;
    let mut header_seen = false;
    for line in text.lines() {
        if !line.trim_start().starts_with('|') {
            in_table = false;
            header_seen = false;
            continue;
        }
        let cells = cells(line);
        if !header_seen {
            header_seen = true;
            in_table = cells.first().map(String::as_str) == Some(first_header);
            continue;
        }
        if in_table && !cells.iter().all(|c| c.chars().all(|c| "-: ".contains(c))) {
            out.push(cells);
        }
    }
    out
}

/// What section `## heading` of docs/cli.md documents.
pub fn documented(doc: &str, heading: &str) -> Option<Names> {
    let mut names = Names::default();
    for row in rows(section(doc, heading)?, "flag") {
        let words = |cell: Option<&String>| -> Vec<String> {
            cell.map(|c| {
                c.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                    .filter(|w| !w.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
        };
        for word in words(row.first()) {
            let short = word.len() == 2 && word.starts_with('-') && word != "--";
            if word.starts_with("--") && word.len() > 2 || short {
                names.flags.insert(word);
            }
        }
        for word in words(row.get(1)) {
            let upper = word
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if word.len() > 1 && upper && word.starts_with(|c: char| c.is_ascii_uppercase()) {
                names.envs.insert(word);
            }
        }
    }
    Some(names)
}

/// Every disagreement between docs/cli.md (`doc`) and `cmd` and its
/// subcommands that have flags. `outside_clap` names, per command, the
/// variables the code reads itself (`("slugbuilder", &["BUILDPACKS"])`):
/// they must be documented too, and may be.
pub fn check(doc: &str, cmd: &clap::Command, outside_clap: &[(&str, &[&str])]) -> Vec<String> {
    let mut commands = vec![(cmd.get_name().to_string(), cmd)];
    for sub in cmd.get_subcommands() {
        commands.push((format!("{} {}", cmd.get_name(), sub.get_name()), sub));
    }
    let mut problems = Vec::new();
    for (heading, command) in commands {
        let mut want = defined(command);
        for (_, envs) in outside_clap.iter().filter(|(h, _)| *h == heading) {
            want.envs.extend(envs.iter().map(|e| e.to_string()));
        }
        if want == Names::default() {
            continue;
        }
        let Some(have) = documented(doc, &heading) else {
            problems.push(format!("docs/cli.md has no section `## {heading}`"));
            continue;
        };
        for (what, want, have) in [
            ("flag", &want.flags, &have.flags),
            ("variable", &want.envs, &have.envs),
        ] {
            for name in want.difference(have) {
                problems.push(format!(
                    "`{heading}` has the {what} {name}; docs/cli.md does not list it"
                ));
            }
            for name in have.difference(want) {
                problems.push(format!(
                    "docs/cli.md lists the {what} {name} for `{heading}`, which has none such"
                ));
            }
        }
    }
    problems
}
