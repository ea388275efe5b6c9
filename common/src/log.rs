//! Heroku-style build output on stderr: `-----> ` starts a step, everything
//! else is indented by 7 spaces, ` !     ` marks warnings and errors.
//!
//! This is the build log that operators and app developers read; it is
//! separate from `tracing` diagnostics (enabled with `-v`).

use std::io::Write;

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
    line(format_args!("{WARNING}{msg}"));
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
    if !body.is_empty() && !is_preformatted(body) {
        out.write_all(INDENT.as_bytes())?;
    }
    out.write_all(body)?;
    out.write_all(b"\n")
}

/// One line for an error and its causes, leaving out a cause whose text the
/// line already contains (many errors print their source themselves).
pub fn error_line<'a>(
    chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut line = String::new();
    for cause in chain {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
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
    fn sizes() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(1536), "1.5K");
        assert_eq!(human_size(5 << 20), "5.0M");
    }
}
