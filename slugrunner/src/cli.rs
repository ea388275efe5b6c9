//! The command line: raw flags, checked once into what `main` needs.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand};

/// Run a process of a Heroku-style slug the way a dyno runs it.
///
/// The slug comes from --slug (a file, or `-` for stdin), else from SLUG_URL,
/// else the app dir is used as it is (a mounted /app). It is unpacked safely
/// into the app dir; then the process runs with the dyno environment (config
/// vars, HOME, PORT, DYNO), after `.profile.d/*.sh` and `.profile` are
/// sourced by bash.
///
/// When started as root, the process runs as --user, else the app dir's
/// owner, else the user `slug`, else `nobody`; never as root unless asked.
///
/// Any other first word is a command to run as `exec` runs it (herokuish's
/// /exec): `slugrunner rake db:migrate` is `slugrunner exec rake db:migrate`.
///
/// As PID 1 (or with --init) slugrunner stays as an init, keeping the
/// rights the app lacks: it forwards signals to the app, reaps zombies,
/// stops every descendant after the grace period that follows SIGTERM, and
/// exits with the app's status. Otherwise it replaces itself with the
/// process.
///
#[derive(Debug, Parser)]
#[command(
    name = "slugrunner",
    version,
    max_term_width = 100,
    after_help = slug_shared::exit::help(slug_shared::exit::Binary::Slugrunner)
)]
pub struct Args {
    /// Slug to unpack into the app dir: a .tgz or .tar file, or `-` for
    /// standard input. Rooted at `./` or at `./app/`.
    #[arg(long, value_name = "FILE")]
    pub slug: Option<PathBuf>,

    /// http(s) URL of the slug to download when --slug is not given. Retried
    /// on connection errors and 5xx answers. Never passed on to the app.
    #[arg(long, env = "SLUG_URL", value_name = "URL", hide_env_values = true)]
    pub slug_url: Option<String>,

    /// Directory the app lives in and runs from (its HOME).
    #[arg(long, value_name = "DIR", default_value = "/app")]
    pub app_dir: PathBuf,

    /// File of config vars, `KEY=VALUE` per line (`#` comments, optional
    /// `export ` and quotes; never evaluated). Repeatable; later files win,
    /// and they override the caller's environment.
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,

    /// ENV dir of config vars: one file per variable, named after it,
    /// holding its value. Overrides --env-file and the caller's environment.
    #[arg(long, value_name = "DIR")]
    pub env_dir: Option<PathBuf>,

    /// Run the process as USER[:GROUP] or UID[:GID] (needs root). Default
    /// when root: the app dir's owner, else `slug`, else `nobody`.
    #[arg(long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,

    /// Stay as init (signal forwarding, zombie reaping, grace period) even
    /// when not PID 1. Always on as PID 1.
    #[arg(long)]
    pub init: bool,

    /// Keep the terminal for the app when it runs as another user, for
    /// interactive use (`slugrunner --tty bash`). Otherwise such an app gets
    /// a session of its own, without a controlling terminal. Implied as
    /// PID 1 with a terminal on stdin (`docker run -t`). Either way the app
    /// cannot push input into the terminal (TIOCSTI is refused).
    #[arg(long)]
    pub tty: bool,

    /// Seconds between SIGTERM and SIGKILL (init mode), as a dyno's 30 s.
    #[arg(
        long,
        env = "SLUGRUNNER_GRACE_PERIOD",
        hide_env_values = true,
        value_name = "SECS",
        default_value = "30",
        value_parser = parse_seconds
    )]
    pub grace_period: Duration,

    /// Give up downloading SLUG_URL after this many seconds in all (retries
    /// included); a download that stays slower than 16 KiB per 30 s also
    /// fails. Exit code 20.
    #[arg(
        long,
        env = "SLUGRUNNER_DOWNLOAD_TIMEOUT",
        value_name = "SECS",
        default_value = "600",
        value_parser = parse_seconds
    )]
    pub download_timeout: Duration,

    /// Refuse a slug that unpacks to more than this many bytes.
    #[arg(long, default_value_t = slug_shared::archive::DEFAULT_MAX_BYTES, value_name = "BYTES")]
    pub max_unpacked_bytes: u64,

    /// Refuse a slug with more entries than this.
    #[arg(long, default_value_t = slug_shared::archive::Limits::default().max_entries, value_name = "N")]
    pub max_entries: u64,

    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    /// SLUG_LOG (a tracing filter, e.g. `debug`) overrides it.
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run a process type from the Procfile (or the slug's
    /// default_process_types), e.g. `start web`, with bash semantics.
    Start {
        /// Process type name: letters, digits, `_` and `-`.
        #[arg(value_name = "TYPE")]
        process_type: String,
    },
    /// Run a command with its arguments exactly as given (no shell
    /// re-parsing) in the dyno environment. DYNO defaults to run.1.
    Exec {
        #[arg(
            value_name = "COMMAND",
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        argv: Vec<OsString>,
    },
    /// Start an interactive bash in the dyno environment.
    Bash,
    /// Any other first word is a command to exec, as herokuish's /exec.
    #[command(external_subcommand)]
    External(Vec<OsString>),
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is not a valid duration"))
}

/// The check of docs/cli.md against these definitions, shared with the
/// other binary.
#[cfg(test)]
#[path = "../../tests/src/cli_docs.rs"]
mod cli_docs;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn docs_cli_md_lists_every_flag_and_variable_and_no_other() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cli.md"))
            .expect("docs/cli.md");
        // Read by slugrunner itself, not through clap: SLUG_LOG by
        // slug_shared::logging, PORT and DYNO by slug_run::runtime::dyno_env.
        let problems = super::cli_docs::check(
            &doc,
            &Args::command(),
            &[("slugrunner", &["SLUG_LOG", "PORT", "DYNO"])],
        );
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn help_ends_with_the_exit_code_table() {
        use slug_shared::exit::{Binary, Exit};
        // Words only: clap wraps long lines to the terminal.
        let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let help = words(&Args::command().render_long_help().to_string());
        for (exit, meaning) in Exit::of(Binary::Slugrunner) {
            let line = words(&format!("{} {meaning}", exit.code()));
            assert!(help.contains(&line), "no {line:?} in:\n{help}");
        }
    }

    #[test]
    fn unknown_first_word_is_exec() {
        let args = Args::try_parse_from(["slugrunner", "rake", "db:migrate", "--trace"]).unwrap();
        match args.command {
            Cmd::External(argv) => assert_eq!(argv, ["rake", "db:migrate", "--trace"]),
            other => panic!("{other:?}"),
        }
        let args = Args::try_parse_from(["slugrunner", "exec", "ls", "-la"]).unwrap();
        assert!(matches!(args.command, Cmd::Exec { argv } if argv == ["ls", "-la"]));
    }

    #[test]
    fn grace_period_accepts_fractions() {
        assert_eq!(parse_seconds("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
    }
}
