//! The exit codes of both binaries, from one table, so that a PaaS backend
//! can tell failures apart without parsing logs.
//!
//! Each code has a number, a name and, for each binary that uses it, a
//! one-line meaning. Both binaries' `--help` is made from this table
//! ([`help`]), and a test checks docs/cli.md and SECURITY.md against it.
//! The numbers are part of the public interface: they never change.

/// Which binary a meaning is for: the two share numbers, not every code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    Slugbuilder,
    Slugrunner,
}

/// The table: each code once, in numeric order, with its meaning per
/// binary (`None`: that binary never exits with it).
macro_rules! table {
    ($( $name:ident = $code:literal {
        slugbuilder: $builder:expr,
        slugrunner: $runner:expr $(,)?
    } )*) => {
        /// Why a run ended; see the module's table for each code's meaning.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum Exit {
            $( $name = $code, )*
        }

        impl Exit {
            /// Every code, in numeric order.
            pub const ALL: &'static [Exit] = &[$(Exit::$name),*];

            /// The code's name, as documented (`BadInput`).
            pub fn name(self) -> &'static str {
                match self {
                    $( Exit::$name => stringify!($name), )*
                }
            }

            /// What the code means when `binary` exits with it; `None`
            /// when that binary never does.
            pub fn meaning(self, binary: Binary) -> Option<&'static str> {
                match (self, binary) {
                    $(
                        (Exit::$name, Binary::Slugbuilder) => $builder,
                        (Exit::$name, Binary::Slugrunner) => $runner,
                    )*
                }
            }
        }
    };
}

table! {
    Ok = 0 {
        slugbuilder: Some("success"),
        // slugrunner's success is the app's: see RUNNER_OTHERWISE.
        slugrunner: None,
    }
    Internal = 1 {
        slugbuilder: Some("an internal or unexpected I/O error"),
        slugrunner: Some("an internal or unexpected I/O error"),
    }
    Usage = 2 {
        slugbuilder: Some("bad command line (also a malformed image reference)"),
        slugrunner: Some("bad command line (also a --user that does not exist or needs root)"),
    }
    BadInput = 10 {
        slugbuilder: Some(
            "bad input: the source tar (also truncated), Procfile, .slugignore, \
             config var names, a setting such as --app-dir or --build-user, \
             or the slug given to `image`",
        ),
        slugrunner: Some(
            "bad input: the slug, Procfile, .release, env file or env dir, \
             or an empty app dir and no slug",
        ),
    }
    NoBuildpack = 11 {
        slugbuilder: Some("no buildpack applies, or an explicitly chosen one refused the app"),
        slugrunner: None,
    }
    BuildpackFetch = 12 {
        slugbuilder: Some("a buildpack could not be fetched, or the app named one it may not"),
        slugrunner: None,
    }
    CompileFailed = 13 {
        slugbuilder: Some("a buildpack's bin/compile (or its export) failed"),
        slugrunner: None,
    }
    ReleaseInvalid = 14 {
        slugbuilder: Some("a buildpack's bin/release failed or printed invalid (or too deep) YAML"),
        slugrunner: None,
    }
    PackFailed = 15 {
        slugbuilder: Some(
            "the slug could not be packed, written or uploaded (--put-url), \
             or is over --max-slug-size",
        ),
        slugrunner: None,
    }
    Timeout = 16 {
        slugbuilder: Some("the build (or `image`, `rebase`) exceeded its time limit (--timeout)"),
        slugrunner: None,
    }
    Interrupted = 17 {
        slugbuilder: Some("interrupted by SIGTERM, SIGINT or SIGHUP"),
        slugrunner: None,
    }
    Sandbox = 18 {
        slugbuilder: Some(
            "the build sandbox cannot be set up as asked: --sandbox namespaces \
             and the kernel refuses them, a missing --sandbox-ro path, or \
             --network isolated without slirp4netns or /dev/net/tun",
        ),
        slugrunner: None,
    }
    LimitReached = 19 {
        slugbuilder: Some(
            "a build limit (--memory, --pids-limit, --disk-limit) stopped a buildpack step",
        ),
        slugrunner: None,
    }
    Download = 20 {
        slugbuilder: Some("the source could not be downloaded (--source-url)"),
        slugrunner: Some(
            "the slug could not be downloaded (--slug-url), or not within --download-timeout",
        ),
    }
    UnknownProcessType = 21 {
        slugbuilder: None,
        slugrunner: Some("`start TYPE` named a process type the app does not have, or an invalid one"),
    }
    SpawnFailed = 22 {
        slugbuilder: None,
        slugrunner: Some(
            "the process could not be started (exec failed, privileges could not be dropped)",
        ),
    }
    RegistryAuth = 30 {
        slugbuilder: Some("a registry refused the credentials, or wanted some and none were found"),
        slugrunner: None,
    }
    RegistryUnreachable = 31 {
        slugbuilder: Some("a registry could not be reached (connection, DNS, TLS, no answer in time, or slower than 16 KiB per 30 s)"),
        slugrunner: None,
    }
    ImageNotFound = 32 {
        slugbuilder: Some("the run image, or the image to rebase, does not exist"),
        slugrunner: None,
    }
    ImageFailed = 33 {
        slugbuilder: Some(
            "the image could not be made or published (upload refused, run image \
             unusable, layout not writable)",
        ),
        slugrunner: None,
    }
    LayerTooLarge = 34 {
        slugbuilder: Some("an image layer or blob to copy is larger than --max-layer-bytes"),
        slugrunner: None,
    }
}

/// What slugrunner exits with when it is not one of its own codes.
pub const RUNNER_OTHERWISE: &str = "Any other status is the app's own (0 included): 128+N when it \
     was killed by signal N, as when slugrunner is stopped by signal N before the app runs \
     (143 for SIGTERM).";

impl Exit {
    /// The numeric process exit status.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The codes `binary` exits with, and what each means there.
    pub fn of(binary: Binary) -> impl Iterator<Item = (Exit, &'static str)> {
        Exit::ALL
            .iter()
            .filter_map(move |&e| e.meaning(binary).map(|m| (e, m)))
    }
}

/// The exit codes section of `binary`'s `--help`.
pub fn help(binary: Binary) -> String {
    let mut out = String::from("Exit codes:\n");
    for (exit, meaning) in Exit::of(binary) {
        out.push_str(&format!("  {:>2}  {meaning}\n", exit.code()));
    }
    if binary == Binary::Slugrunner {
        out.push('\n');
        out.push_str(RUNNER_OTHERWISE);
    }
    out.trim_end().to_string()
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_numeric_order_and_each_code_is_used() {
        let codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert!(codes.windows(2).all(|w| w[0] < w[1]), "{codes:?}");
        for e in Exit::ALL {
            assert!(
                e.meaning(Binary::Slugbuilder).is_some() || e.meaning(Binary::Slugrunner).is_some(),
                "{e:?} means nothing to either binary"
            );
        }
    }

    #[test]
    fn help_lists_every_code_of_the_binary_once() {
        let help = help(Binary::Slugrunner);
        assert!(help.contains("  21  `start TYPE`"), "{help}");
        assert!(!help.contains("  13  "), "{help}");
        assert!(help.ends_with("(143 for SIGTERM)."), "{help}");
        assert_eq!(help.lines().filter(|l| l.starts_with("  ")).count(), 6);
    }
}
