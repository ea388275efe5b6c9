//! The env-file parser (`--env-file`): never panics, an error names a line
//! of the input, and what it accepts, printed double-quoted, parses back to
//! the same variables.
#![no_main]
use common::runtime::parse_env_file;
use libfuzzer_sys::fuzz_target;

fn quoted(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\\' | '"' | '$' | '`' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_env_file(text) {
        Ok(vars) => {
            let printed: String = vars.iter().map(|(k, v)| format!("{k}={}\n", quoted(v))).collect();
            assert_eq!(parse_env_file(&printed).unwrap(), vars);
        }
        Err((line, reason)) => {
            assert!(line >= 1 && line <= text.split('\n').count(), "line {line} of {text:?}");
            assert!(!reason.is_empty());
        }
    }
});
