//! Exit codes shared by both binaries, so that a PaaS backend can tell
//! failures apart without parsing logs. Documented in the README.

/// Why a run ended. The numeric values are part of the public interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// An unexpected internal or I/O error.
    Internal = 1,
    /// Bad command line (clap uses 2 as well).
    Usage = 2,
    /// The input (source tar, slug, Procfile, `.release`, env file ...) is malformed or unsafe.
    BadInput = 10,
    /// No buildpack applies to the app, or an explicitly chosen one refused it.
    NoBuildpack = 11,
    /// A buildpack could not be fetched (clone, download, missing directory).
    BuildpackFetch = 12,
    /// A buildpack's `bin/compile` failed.
    CompileFailed = 13,
    /// A buildpack's `bin/release` failed or printed invalid YAML.
    ReleaseInvalid = 14,
    /// The slug could not be packed or written, or is too large.
    PackFailed = 15,
    /// The build ran out of time.
    Timeout = 16,
    /// The build was interrupted by SIGTERM, SIGINT or SIGHUP.
    Interrupted = 17,
    /// The build sandbox could not be set up as asked: namespaces required
    /// (`--sandbox namespaces`) and refused by the kernel, or an operator's
    /// setting that cannot work (a missing `--sandbox-ro` path, no
    /// slirp4netns for `--network isolated`).
    Sandbox = 18,
    /// A build resource limit (`--memory`, `--pids-limit`, `--disk-limit`)
    /// stopped a buildpack step.
    LimitReached = 19,
    /// The slug could not be downloaded (SLUG_URL).
    SlugFetch = 20,
    /// `start TYPE` named a process type the app does not have.
    UnknownProcessType = 21,
    /// The process could not be started (exec failed, privileges could not be dropped).
    SpawnFailed = 22,
    /// A registry refused the credentials, or wanted some and none were found.
    RegistryAuth = 30,
    /// A registry could not be reached (connection, DNS, TLS, no answer in time).
    RegistryUnreachable = 31,
    /// The run image, or the image to rebase, does not exist.
    ImageNotFound = 32,
    /// The image could not be made or published: the registry refused an
    /// upload, the run image is unusable, an image layout is not writable.
    ImageFailed = 33,
    /// A layer or blob to copy is larger than `--max-layer-bytes`.
    LayerTooLarge = 34,
}

impl Exit {
    /// The numeric process exit status.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}
