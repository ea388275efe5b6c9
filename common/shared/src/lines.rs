//! Line-oriented config files (Procfile, env files, `.slugignore`, a
//! buildpacks directory's `.order`, an app's `.buildpacks`): the rules they
//! share for what counts as a line.

/// The content lines of `text` with their 1-based line numbers: a leading
/// byte-order mark is dropped, CRLF is accepted, the last line may lack a
/// newline, and blank lines and `#` comments are skipped. Lines keep their
/// trailing whitespace and lose their leading whitespace.
pub fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.split('\n').enumerate().filter_map(|(idx, raw)| {
        let line = raw.strip_suffix('\r').unwrap_or(raw).trim_start();
        (!line.is_empty() && !line.starts_with('#')).then_some((idx + 1, line))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_blank_and_comment_lines_and_keeps_numbers() {
        let lines: Vec<_> = content_lines("\u{feff}# c\r\n\n  a: b\r\n\t# d\nlast").collect();
        assert_eq!(lines, [(3, "a: b"), (5, "last")]);
    }
}
