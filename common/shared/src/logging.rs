//! Diagnostics (`tracing`, `-v`, `SLUG_LOG`) of both binaries, on stderr,
//! under one rule for every record: no URL query string and no
//! credential reaches the log, at any verbosity.
//!
//! * Every formatted record, ours and any library's, passes through
//!   [`redact_line`]: a URL loses its user info, query and fragment, and a
//!   request target (`GET /slug.tgz?X-Amz-Signature=...`) its query.
//! * The HTTP client's own records (`ureq`, `ureq_proto`) never pass: at
//!   trace level they are hex dumps of the request, which no text rule can
//!   redact. Our HTTP module logs what matters, redacted.

use std::io::Write;

use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The usual mapping of `-v` counts to a level.
pub fn level_for(verbose: u8) -> &'static str {
    match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    }
}

/// Log to stderr at `default` (a tracing filter), or whatever the variable
/// `filter_var` says. Call once, early.
pub fn init(default: &str, filter_var: &str) {
    use std::io::IsTerminal;
    let filter = std::env::var(filter_var).unwrap_or_else(|_| default.to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(Redacted::default)
        .with_target(false)
        .without_time()
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter_fn(|meta| !is_http_client(meta.target())));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init();
}

fn is_http_client(target: &str) -> bool {
    ["ureq", "ureq_proto"]
        .iter()
        .any(|t| target == *t || target.starts_with(&format!("{t}::")))
}

/// One record being written: kept until it is complete, then redacted and
/// written to stderr in one piece.
#[derive(Default)]
struct Redacted(Vec<u8>);

impl Write for Redacted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Redacted {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let text = redact_line(&String::from_utf8_lossy(&self.0));
        // A closed stderr loses the line, nothing more.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

/// `text` with every URL's user info, query and fragment removed, and the
/// query of any other word that has one (`/path?key=value`).
pub fn redact_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    for c in text.chars() {
        if is_word_end(c) {
            out.push_str(&redact_word(&word));
            word.clear();
            out.push(c);
        } else {
            word.push(c);
        }
    }
    out.push_str(&redact_word(&word));
    out
}

fn is_word_end(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>' | '\\')
}

fn redact_word(word: &str) -> std::borrow::Cow<'_, str> {
    if let Some(i) = word.find("://") {
        // The scheme starts after whatever precedes it (`url=`, `(`).
        let start = word[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |p| p + 1);
        let url_end = word[i..]
            .find([')', ',', ';', ']', '}'])
            .map_or(word.len(), |p| i + p);
        let redacted = crate::http::redact_url(&word[start..url_end]);
        let rest = redact_word(&word[url_end..]);
        return format!("{}{redacted}{rest}", &word[..start]).into();
    }
    match word.find('?') {
        Some(q) if word[q..].contains('=') => word[..q].to_string().into(),
        _ => word.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_request_targets_lose_queries_and_credentials() {
        let cases = [
            (
                "GET http://127.0.0.1:8/slug.tgz?X-Amz-Signature=abc&X-Amz-Credential=k done",
                "GET http://127.0.0.1:8/slug.tgz done",
            ),
            (
                "url=https://user:pw@s3.example/b/s.tgz?sig=1, next",
                "url=https://s3.example/b/s.tgz, next",
            ),
            (
                "Uri(\"http://h/p?a=b\") GET /slug.tgz?X-Amz-Signature=abc HTTP/1.1",
                "Uri(\"http://h/p\") GET /slug.tgz HTTP/1.1",
            ),
            ("(http://h/p?a=b)", "(http://h/p)"),
            ("nothing? here, a=b", "nothing? here, a=b"),
        ];
        for (line, want) in cases {
            assert_eq!(redact_line(line), want, "{line}");
        }
    }

    #[test]
    fn only_the_http_client_is_silenced() {
        assert!(is_http_client("ureq"));
        assert!(is_http_client("ureq_proto::util"));
        assert!(!is_http_client("ureqx"));
        assert!(!is_http_client("slug_shared::http"));
    }
}
