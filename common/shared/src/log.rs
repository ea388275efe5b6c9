//! Heroku-style build output on stderr: `-----> ` starts a step, everything
//! else is indented by 7 spaces, ` !     ` marks warnings and errors.
//!
//! This is the build log that operators and app developers read; it is
//! separate from `tracing` diagnostics (enabled with `-v`).
//!
//! Warnings (ours, and the ` !` lines of buildpacks) are also remembered,
//! bounded in number and length, for the build report ([`warnings`]).

use std::io::Write;
use std::sync::Mutex;

pub const HEADER: &str = "-----> ";
pub const INDENT: &str = "       ";
pub const WARNING: &str = " !     ";

/// Print a step header.
pub fn header(msg: impl std::fmt::Display) {
    line(format_args!("{HEADER}{msg}"));
}

/// Print a detail line under the current step.
pub fn info(msg: impl std::fmt::Display) {
    line(format_args!("{INDENT}{msg}"));
}

/// Print a warning.
pub fn warn(msg: impl std::fmt::Display) {
    let text = msg.to_string();
    remember_warning(&text);
    line(format_args!("{WARNING}{text}"));
}

/// At most this many warnings are remembered (a buildpack may print
/// thousands of ` !` lines).
pub const MAX_WARNINGS: usize = 100;
/// Longest warning remembered, in bytes.
pub const MAX_WARNING_BYTES: usize = 1000;

static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn remember_warning(text: &str) {
    let text: String = text.chars().filter(|c| !c.is_control()).collect();
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    let mut end = text.len().min(MAX_WARNING_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut warnings = WARNINGS.lock().unwrap_or_else(|e| e.into_inner());
    if warnings.len() < MAX_WARNINGS {
        warnings.push(text[..end].to_string());
    }
}

/// The warnings printed so far by this process, oldest first.
pub fn warnings() -> Vec<String> {
    WARNINGS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Print one line on stderr. A closed stderr (`slugbuilder 2>&1 | head`) is
/// not an error worth dying for: the line is lost, the build goes on and
/// ends with its documented exit code.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args);
    let _ = err.write_all(b"\n");
}

/// Whether a line printed by a buildpack is already formatted (a header,
/// an indented detail or a warning) and must be passed through as is.
pub fn is_preformatted(line: &[u8]) -> bool {
    line.starts_with(HEADER.as_bytes())
        || line.starts_with(INDENT.as_bytes())
        || line.starts_with(WARNING.as_bytes())
        || line.starts_with(b" !")
}

/// Write one line of buildpack output to `out`, indenting it unless it is
/// already formatted. `line` includes its trailing newline, if any.
pub fn write_indented(out: &mut impl Write, line: &[u8]) -> std::io::Result<()> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    if let Some(warning) = body.strip_prefix(b" !") {
        remember_warning(&String::from_utf8_lossy(warning));
    }
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    let safe = terminal_safe(body);
    if !safe.is_empty() && !is_preformatted(safe.as_bytes()) {
        out.write_all(INDENT.as_bytes())?;
    }
    out.write_all(safe.as_bytes())?;
    out.write_all(b"\n")
}

/// `line` as it may reach an operator's terminal: text, tabs and SGR colour
/// sequences (`ESC [ ... m`, but not "conceal", which hides what follows)
/// as they are; every other control character (other escape sequences,
/// BEL, backspace, a carriage return, C1 controls) shown escaped, as `\x1b`;
/// bytes that are not UTF-8 as U+FFFD. A buildpack cannot clear the
/// screen, hide or overwrite lines, or retitle the window.
pub fn terminal_safe(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_ref();
    while let Some(c) = rest.chars().next() {
        if c == '\u{1b}' {
            if let Some(len) = sgr_len(rest) {
                out.push_str(&rest[..len]);
                rest = &rest[len..];
                continue;
            }
        }
        if c.is_control() && c != '\t' {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Length of the SGR sequence `s` starts with, if it is one we keep.
fn sgr_len(s: &str) -> Option<usize> {
    let params = s.strip_prefix("\u{1b}[")?;
    let end = params.find(|c: char| !(c.is_ascii_digit() || c == ';'))?;
    if !params[end..].starts_with('m') || end > 64 {
        return None;
    }
    let conceals = params[..end].split(';').any(|p| p.parse() == Ok(8u32));
    (!conceals).then_some(2 + end + 1)
}

/// One line for an error and its causes, outermost first, joined by `: `
/// (the same text as anyhow's `{:#}`). Every error here says only its own
/// context and leaves its cause to `source()`, so each fact appears once;
/// this is the one place an error is turned into text for a user (log
/// lines, warnings, the build report, the binaries' last line).
pub fn error_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        line.push_str(": ");
        line.push_str(&e.to_string());
        cause = e.source();
    }
    line.replace('\n', " ")
}

/// Human size like Heroku's `Compiled slug size is 12.3M`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_text_tabs_and_colours_reach_the_terminal() {
        assert_eq!(
            terminal_safe(b"a\tb \x1b[1;32mok\x1b[0m"),
            "a\tb \x1b[1;32mok\x1b[0m"
        );
        assert_eq!(terminal_safe(b"\x1b[2Jx"), "\\x1b[2Jx");
        assert_eq!(terminal_safe(b"\x1b[8mhidden"), "\\x1b[8mhidden");
        assert_eq!(terminal_safe(b"\x1b[0;8mhidden"), "\\x1b[0;8mhidden");
        assert_eq!(terminal_safe(b"\x1b]0;title\x07"), "\\x1b]0;title\\x07");
        assert_eq!(terminal_safe(b"ok\rFAKE"), "ok\\x0dFAKE");
        assert_eq!(terminal_safe(b"back\x08"), "back\\x08");
        assert_eq!(terminal_safe("c1 \u{9b}2J".as_bytes()), "c1 \\x9b2J");
        assert_eq!(terminal_safe(b"bad \xff"), "bad \u{fffd}");
        assert_eq!(terminal_safe("caf\u{e9}".as_bytes()), "caf\u{e9}");
    }

    #[test]
    fn indents_only_unformatted_lines() {
        let mut out = Vec::new();
        for line in [
            &b"-----> Step\n"[..],
            b"plain\n",
            b"       detail\n",
            b"\n",
            b"last",
        ] {
            write_indented(&mut out, line).unwrap();
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "-----> Step\n       plain\n       detail\n\n       last\n"
        );
    }

    #[test]
    fn buildpack_warnings_are_remembered() {
        let mut out = Vec::new();
        write_indented(&mut out, b" !     Python 2 is gone\n").unwrap();
        write_indented(&mut out, b"not a warning\n").unwrap();
        let warnings = warnings();
        assert!(
            warnings.iter().any(|w| w == "Python 2 is gone"),
            "{warnings:?}"
        );
        assert!(!warnings.iter().any(|w| w.contains("not a warning")));
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(1536), "1.5K");
        assert_eq!(human_size(5 << 20), "5.0M");
    }
}
