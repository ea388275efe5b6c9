//! Keeping secrets given on the command line out of `/proc/PID/cmdline`.
//!
//! Anyone on a host can read every process's command line. An operator who
//! passes config vars as `slugbuilder -e DATABASE_URL=...` would show them
//! to every other user (and, without namespaces, to every build). Once the
//! arguments are parsed, [`hide_env_values`] overwrites the values in the
//! process's own argument memory (found through `/proc/self/stat`, written
//! through `/proc/self/mem`), leaving `KEY=***`.

use std::io::{Seek, SeekFrom, Write};

/// Overwrite the value of every `-e KEY=VALUE`, `-eKEY=VALUE`,
/// `--env KEY=VALUE` and `--env=KEY=VALUE` argument with `*`. Returns how
/// many values were hidden. Best effort: an error leaves the arguments as
/// they were.
pub fn hide_env_values() -> std::io::Result<usize> {
    let (start, end) = arg_area()?;
    let cmdline = std::fs::read("/proc/self/cmdline")?;
    if cmdline.len() as u64 != end - start {
        // Already rewritten by someone (setproctitle): leave it alone.
        return Ok(0);
    }
    let mut mem = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/mem")?;
    let mut hidden = 0;
    let mut offset = 0u64;
    let mut value_next = false;
    for arg in cmdline.split(|&b| b == 0) {
        let this = offset;
        offset += arg.len() as u64 + 1;
        let value_at = if value_next {
            value_next = false;
            Some(0)
        } else if arg == b"-e" || arg == b"--env" {
            value_next = true;
            None
        } else if let Some(rest) = arg.strip_prefix(b"--env=") {
            Some(arg.len() - rest.len())
        } else if arg.starts_with(b"-e") && !arg.starts_with(b"--") {
            Some(2)
        } else {
            None
        };
        let Some(at) = value_at else { continue };
        let Some(eq) = arg[at..].iter().position(|&b| b == b'=') else {
            continue;
        };
        let value_start = at + eq + 1;
        let len = arg.len() - value_start;
        if len == 0 {
            continue;
        }
        mem.seek(SeekFrom::Start(start + this + value_start as u64))?;
        mem.write_all(&vec![b'*'; len])?;
        hidden += 1;
    }
    Ok(hidden)
}

/// The start and end addresses of the argument strings (fields 48 and 49
/// of `/proc/self/stat`).
fn arg_area() -> std::io::Result<(u64, u64)> {
    let stat = std::fs::read("/proc/self/stat")?;
    let close = stat
        .iter()
        .rposition(|&b| b == b')')
        .ok_or_else(|| std::io::Error::other("malformed /proc/self/stat"))?;
    let fields: Vec<&[u8]> = stat[close + 2..].split(|&b| b == b' ').collect();
    // fields[0] is field 3 (state).
    let field = |n: usize| -> std::io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| std::str::from_utf8(f).ok())
            .and_then(|f| f.trim().parse().ok())
            .ok_or_else(|| std::io::Error::other("malformed /proc/self/stat"))
    };
    Ok((field(48)?, field(49)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs in a child (this test binary, re-executed) so that the test
    /// harness's own arguments are not touched.
    #[test]
    fn values_disappear_from_proc_cmdline() {
        if std::env::var_os("SLUG_CMDLINE_CHILD").is_some() {
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .env("SLUG_CMDLINE_CHILD", "1")
            .args([
                "cmdline::tests::child",
                "--exact",
                "--nocapture",
                "--",
                "-e",
                "DATABASE_URL=postgres://u:secret1@db",
                "-eTOKEN=secret2",
                "--env=OTHER=secret3",
                "--env",
                "LAST=secret4",
                "-x",
                "KEEP=visible",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("CMDLINE:"),
            "{text}\\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for secret in ["secret1", "secret2", "secret3", "secret4"] {
            assert!(!text.contains(secret), "{secret} still visible: {text}");
        }
        assert!(text.contains("DATABASE_URL=****"), "{text}");
        assert!(text.contains("KEEP=visible"), "{text}");
    }

    #[test]
    fn child() {
        if std::env::var_os("SLUG_CMDLINE_CHILD").is_none() {
            return;
        }
        let hidden = hide_env_values().unwrap();
        let cmdline = std::fs::read("/proc/self/cmdline").unwrap();
        let shown: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        println!("CMDLINE: {hidden} {}", shown.join(" "));
    }
}
