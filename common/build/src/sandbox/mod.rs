//! The build sandbox: what a buildpack step may see and how long anything
//! it starts may live.
//!
//! Heroku, CNB and kaniko confine a build with a container per build;
//! slugbuilder does it itself, daemonless, per step:
//!
//! * **Namespaces** (as root, or in a user namespace when unprivileged):
//!   every step (detect, compile, export, release, a buildpack's git clone)
//!   runs as PID 2 of a PID namespace of its own, so nothing it starts
//!   survives it (however it detaches), in a mount namespace whose root is a
//!   fresh tmpfs holding: the system directories read-only (`/usr`, `/bin`,
//!   `/lib*`, `/etc`, `/opt`, `/sys`), this build's own directories at fixed
//!   places (`/workspace/{build,cache,env,home,buildpacks}`), a private
//!   `/tmp`, a private `APP_DIR` (`/app`), its own `/proc` and a minimal
//!   `/dev`. Other builds, the operator's files, `/root`, `/home` and the
//!   host's `/tmp` are not there at all. The root is read-only, every mount
//!   is nosuid and nodev, and `no_new_privs` is set.
//! * **A uid of its own** (as root): each build leases a fresh uid from a
//!   range ([`uids`]), so builds cannot signal or read each other even where
//!   namespaces are missing; the build's directories belong to that uid.
//! * **Subreaper** (the fallback, said loudly in the log): without
//!   namespaces, each step runs under a helper that is a child subreaper and
//!   kills what the step left behind; slugbuilder is a subreaper too, and a
//!   build's uid, when it has one, is swept with `kill(-1)`; TMPDIR is the
//!   build's private tmp, but the host's `/tmp` and `APP_DIR` are shared.
//!
//! Steps are started through a helper process ([`helper`]); see there for
//! the process tree.

// The one module allowed `unsafe`: fork in the single-threaded helper.
#[allow(unsafe_code)]
mod helper;
pub mod limits;
pub mod net;
pub mod uids;

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use helper::{MountOp, Plan, EXEC_ARG, NAMESPACES_REFUSED, PROBE_ARG, SETUP_FAILED};
pub use limits::{BuildCgroup, Hit, Limits};
pub use net::{BuildNetwork, Network};
pub use uids::{UidLease, UidRange};

/// Argument that makes the binary kill every process of its own uid (run
/// as a build's uid to sweep it).
pub const KILL_ALL_ARG: &str = "__sandbox-kill-all";

/// How the operator wants builds confined (`--sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Namespaces when the kernel allows them, else the subreaper fallback
    /// with a warning.
    #[default]
    Auto,
    /// Namespaces or no build.
    Require,
    /// No namespaces (e.g. already one container per build).
    Off,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Policy::Auto),
            "namespaces" | "require" => Ok(Policy::Require),
            "none" | "off" => Ok(Policy::Off),
            other => Err(format!("{other:?}: expected auto, namespaces or none")),
        }
    }
}

/// What a build got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// PID, mount, IPC and UTS namespaces per step (slugbuilder is root).
    Namespaces,
    /// The same inside a user namespace (slugbuilder is not root).
    UserNamespaces,
    /// No namespaces; why not.
    Subreaper { why: String },
}

impl Mode {
    pub fn has_namespaces(&self) -> bool {
        !matches!(self, Mode::Subreaper { .. })
    }
}

/// The user steps run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildUser {
    pub uid: u32,
    pub gid: u32,
    /// Leased for this build alone (so it may be swept with `kill(-1)`).
    pub leased: bool,
}

/// A build's directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Places {
    pub build: PathBuf,
    pub cache: PathBuf,
    pub env: PathBuf,
    pub home: PathBuf,
    pub tmp: PathBuf,
    pub app: PathBuf,
    pub buildpacks: PathBuf,
}

/// Where a build's directories are inside the sandbox.
pub mod inside {
    pub const BUILD: &str = "/workspace/build";
    pub const CACHE: &str = "/workspace/cache";
    pub const ENV: &str = "/workspace/env";
    pub const HOME: &str = "/workspace/home";
    pub const BUILDPACKS: &str = "/workspace/buildpacks";
    pub const TMP: &str = "/tmp";
}

/// Host directories every sandbox sees, read-only (when they exist).
pub const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/sys",
];

/// What the operator configured.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub policy: Policy,
    /// The binary to start as helper (`/proc/self/exe` in slugbuilder);
    /// `None` runs steps directly (no sandbox at all, for library tests).
    pub helper: Option<PathBuf>,
    /// Run steps as this fixed (uid, gid) instead of a leased uid.
    pub fixed_user: Option<(u32, u32)>,
    /// Range of uids leased to builds (as root).
    pub uid_range: UidRange,
    pub lock_dir: PathBuf,
    /// More host paths to show read-only inside.
    pub read_only: Vec<PathBuf>,
    /// How steps reach the network.
    pub network: Network,
    /// Memory, processes and disk of the build.
    pub limits: Limits,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            policy: Policy::Auto,
            helper: None,
            fixed_user: None,
            uid_range: uids::DEFAULT_RANGE,
            lock_dir: PathBuf::from(uids::DEFAULT_LOCK_DIR),
            read_only: Vec::new(),
            network: Network::Isolated,
            limits: Limits::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the build sandbox is required (--sandbox namespaces) but cannot be set up: {0}")]
    Unavailable(String),
    /// An operator's setting the sandbox cannot honour (never a reason to
    /// build without it).
    #[error("the build sandbox cannot be set up: {0}")]
    Misconfigured(String),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

/// One build's sandbox.
#[derive(Debug)]
pub struct Sandbox {
    mode: Mode,
    helper: Option<PathBuf>,
    user: Option<BuildUser>,
    _lease: Option<UidLease>,
    host: Places,
    inner: Places,
    new_root: PathBuf,
    base: Vec<MountOp>,
    network_mode: Network,
    network: Option<BuildNetwork>,
    cgroup: Option<BuildCgroup>,
    limits: Limits,
    /// The workspace's tmpfs, when it is in memory (its use is read with
    /// statvfs instead of walking it), and how the log describes it.
    workspace_tmpfs: Option<PathBuf>,
    workspace_description: String,
    /// Warnings for the build log (a fallback, a shared uid).
    pub warnings: Vec<String>,
}

impl Sandbox {
    /// Set up the sandbox of one build: choose the user, write the files
    /// the sandbox needs into `scratch` (a private directory of the
    /// workspace), and find out what the kernel allows. `host.app` is the
    /// private directory mounted at `app_dir`.
    pub fn create(
        cfg: &SandboxConfig,
        host: Places,
        app_dir: &Path,
        scratch: &Path,
    ) -> Result<Self, SandboxError> {
        let root = nix::unistd::geteuid().is_root();
        let mut sandbox = Self::untried(cfg, host, scratch, root)?;
        // An operator's path that does not exist is a mistake to report,
        // not a kernel that refuses namespaces.
        for path in &cfg.read_only {
            if !path.is_absolute() || std::fs::symlink_metadata(path).is_err() {
                return Err(SandboxError::Misconfigured(format!(
                    "--sandbox-ro {}: no such path (it must be absolute and exist)",
                    path.display()
                )));
            }
        }
        sandbox.cgroup = sandbox.make_cgroup(root, scratch);
        sandbox.inner.app = app_dir.to_path_buf();
        let why_not = match (cfg.policy, &cfg.helper) {
            (Policy::Off, _) => Some("disabled with --sandbox none".to_string()),
            (_, None) => Some("no sandbox helper".to_string()),
            _ => None,
        };
        if let Some(why) = why_not {
            sandbox.mode = Mode::Subreaper { why };
            sandbox.warn_about_fallback(app_dir);
            return Ok(sandbox);
        }
        sandbox.mode = if root {
            Mode::Namespaces
        } else {
            Mode::UserNamespaces
        };
        sandbox.inner = Places {
            build: inside::BUILD.into(),
            cache: inside::CACHE.into(),
            env: inside::ENV.into(),
            home: inside::HOME.into(),
            tmp: inside::TMP.into(),
            app: app_dir.to_path_buf(),
            buildpacks: inside::BUILDPACKS.into(),
        };
        let (network, network_refused) = choose_network(cfg)?;
        sandbox.network_mode = if network.is_some() {
            cfg.network
        } else {
            Network::Host
        };
        sandbox.network = network;
        sandbox.base = sandbox.base_mounts(cfg, scratch)?;
        sandbox.settle_mode(cfg, network_refused, app_dir)?;
        sandbox.warn_about_fallback(app_dir);
        Ok(sandbox)
    }

    /// The sandbox before anything is tried: its user chosen, its root's
    /// directory made, no namespaces, no network, no cgroup.
    fn untried(
        cfg: &SandboxConfig,
        host: Places,
        scratch: &Path,
        root: bool,
    ) -> Result<Self, SandboxError> {
        let mut warnings = Vec::new();
        let (user, lease) = choose_user(cfg, root, &mut warnings);
        let new_root = scratch.join("root");
        std::fs::create_dir_all(&new_root).map_err(|source| SandboxError::Io {
            context: format!("creating {new_root:?}"),
            source,
        })?;
        Ok(Sandbox {
            mode: Mode::Subreaper {
                why: "not tried".into(),
            },
            helper: cfg.helper.clone(),
            user,
            _lease: lease,
            inner: host.clone(),
            host,
            new_root,
            base: Vec::new(),
            network_mode: Network::Host,
            network: None,
            cgroup: None,
            limits: cfg.limits,
            workspace_tmpfs: None,
            workspace_description: String::new(),
            warnings,
        })
    }

    /// Whether the namespaces are used after all. A refused network
    /// namespace, or a probe the kernel refuses, falls back to running
    /// steps as plain children (an error when the sandbox is required);
    /// anything else the probe finds is the operator's to fix.
    fn settle_mode(
        &mut self,
        cfg: &SandboxConfig,
        network_refused: Option<String>,
        app_dir: &Path,
    ) -> Result<(), SandboxError> {
        if let Some(why) = network_refused {
            self.mode = Mode::Subreaper { why };
        } else if let Err((why, refused)) = self.probe() {
            if !refused {
                return Err(SandboxError::Misconfigured(why));
            }
            self.mode = Mode::Subreaper { why };
        }
        if let Mode::Subreaper { why } = &self.mode {
            if cfg.policy == Policy::Require {
                return Err(SandboxError::Unavailable(why.clone()));
            }
            self.inner = self.host.clone();
            self.inner.app = app_dir.to_path_buf();
            self.base.clear();
            self.network = None;
            self.network_mode = Network::Host;
        }
        Ok(())
    }

    /// The build's cgroup, as root; `None` (with a warning) where the host
    /// has no memory and pids controllers we may use.
    fn make_cgroup(&mut self, root: bool, scratch: &Path) -> Option<BuildCgroup> {
        if self.limits.memory == 0 && self.limits.pids == 0 {
            return None;
        }
        if !root {
            self.warnings.push(
                "Memory and process limits are not enforced: slugbuilder is not root and cannot make a cgroup (run it as root, or one build per container with the container's limits)".into(),
            );
            return None;
        }
        // Unique per build: the workspace's name is.
        let name = format!(
            "slugbuilder-{}-{}",
            std::process::id(),
            scratch
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        match BuildCgroup::create(&name, self.limits) {
            Ok(cg) => Some(cg),
            Err(why) => {
                self.warnings
                    .push(format!("Memory and process limits are not enforced: {why}"));
                None
            }
        }
    }

    /// Say where the workspace is: `tmpfs` is its root when it is in
    /// memory, `None` when it is on disk.
    pub fn set_workspace(&mut self, tmpfs: Option<PathBuf>, description: String) {
        self.workspace_tmpfs = tmpfs;
        self.workspace_description = description;
    }

    /// The workspace's tmpfs, when it is in memory.
    pub fn workspace_tmpfs(&self) -> Option<&Path> {
        self.workspace_tmpfs.as_deref()
    }

    /// One line for the log: where the workspace is.
    pub fn workspace_description(&self) -> &str {
        &self.workspace_description
    }

    /// The build's cgroup, when it has one.
    pub fn cgroup(&self) -> Option<&BuildCgroup> {
        self.cgroup.as_ref()
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn network(&self) -> Network {
        self.network_mode
    }

    /// Without namespaces, say what that means for this build.
    fn warn_about_fallback(&mut self, app_dir: &Path) {
        if let Mode::Subreaper { why } = &self.mode {
            let warning = format!(
                "No build sandbox ({why}): buildpacks share the host's /tmp and {}, and processes they leave behind are only swept by the subreaper{}",
                app_dir.display(),
                if self.user.as_ref().is_some_and(|u| u.leased) {
                    " and by uid"
                } else {
                    "; run one build per container or VM to isolate builds from each other"
                }
            );
            self.warnings.push(warning);
        }
    }

    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    pub fn user(&self) -> Option<&BuildUser> {
        self.user.as_ref()
    }

    /// The build's directories as buildpacks see them.
    pub fn inner(&self) -> &Places {
        &self.inner
    }

    /// The build's directories on the host.
    pub fn host(&self) -> &Places {
        &self.host
    }

    /// `path` (on the host, beneath one of the build's directories) as a
    /// buildpack sees it.
    pub fn to_inner(&self, path: &Path) -> PathBuf {
        let pairs = [
            (&self.host.build, &self.inner.build),
            (&self.host.cache, &self.inner.cache),
            (&self.host.env, &self.inner.env),
            (&self.host.home, &self.inner.home),
            (&self.host.tmp, &self.inner.tmp),
            (&self.host.buildpacks, &self.inner.buildpacks),
            (&self.host.app, &self.inner.app),
        ];
        for (host, inner) in pairs {
            if let Ok(rest) = path.strip_prefix(host) {
                return if rest.as_os_str().is_empty() {
                    inner.clone()
                } else {
                    inner.join(rest)
                };
            }
        }
        path.to_path_buf()
    }

    /// One line for the build log.
    pub fn describe(&self) -> String {
        let who = match &self.user {
            Some(u) if u.leased => format!("as uid {} (this build's own)", u.uid),
            Some(u) => format!("as uid {} (shared with other builds)", u.uid),
            None => format!("as uid {}", nix::unistd::geteuid()),
        };
        let net = if self.network.is_some() { ", net" } else { "" };
        let mode = match &self.mode {
            Mode::Namespaces => format!(
                "Build sandbox: namespaces (pid, mount, ipc, uts{net}), {who}; private /tmp and {}",
                self.inner.app.display()
            ),
            Mode::UserNamespaces => format!(
                "Build sandbox: user namespace (pid, mount, ipc, uts{net}), {who}; private /tmp and {}",
                self.inner.app.display()
            ),
            Mode::Subreaper { .. } => format!("Build sandbox: none (subreaper only), {who}"),
        };
        let network = match (&self.mode, self.network_mode) {
            (Mode::Subreaper { .. }, _) => "network: the host's (no namespaces)".to_string(),
            (_, Network::Isolated) => {
                "network: isolated (own namespace, egress through slirp4netns, no host loopback)"
                    .to_string()
            }
            (_, Network::None) => "network: none (own namespace, loopback only)".to_string(),
            (_, Network::Host) => {
                "network: slugbuilder's own (--network host: the host's, unless slugbuilder runs in a container of its own)"
                    .to_string()
            }
        };
        let limit = |n: u64, what: String| if n == 0 { None } else { Some(what) };
        let mut limits: Vec<String> = Vec::new();
        if self.cgroup.is_some() {
            limits.extend(limit(
                self.limits.memory,
                format!("memory {}", limits::human(self.limits.memory)),
            ));
            limits.extend(limit(
                self.limits.pids,
                format!("{} processes", self.limits.pids),
            ));
        }
        limits.extend(limit(
            self.limits.disk,
            format!("disk {}", limits::human(self.limits.disk)),
        ));
        let limits = if limits.is_empty() {
            "limits: none".to_string()
        } else {
            format!("limits: {}", limits.join(", "))
        };
        let context = match self.mode {
            Mode::Subreaper { .. } => {
                "new session, no inherited descriptors, new keyring, seccomp filter"
            }
            _ => "new session, no inherited descriptors, new keyring, seccomp filter, masked /proc",
        };
        format!("{mode}; {network}; {limits}; {context}")
    }

    /// The mounts every step gets, in the order they are made.
    fn base_mounts(
        &self,
        cfg: &SandboxConfig,
        scratch: &Path,
    ) -> Result<Vec<MountOp>, SandboxError> {
        let (mut ops, bound) = system_dirs()?;
        // The operator's extra paths come after the build's own mounts
        // (below): one under /tmp would otherwise be hidden by the private
        // /tmp mounted over it.
        let extras: Vec<PathBuf> = cfg
            .read_only
            .iter()
            .filter(|extra| !bound.iter().any(|b| extra.starts_with(b)))
            .cloned()
            .collect();
        ops.extend(self.resolv_conf(scratch, &bound)?);
        if bound.iter().any(|b| b == Path::new("/etc")) {
            ops.extend(self.identity_mounts(scratch)?);
        }
        ops.extend(self.build_dirs());
        ops.extend(extras.into_iter().map(|extra| MountOp::ReadOnly {
            src: extra.clone(),
            dst: extra,
        }));
        ops.extend([
            MountOp::Proc {
                dst: "/proc".into(),
            },
            MountOp::Dev { dst: "/dev".into() },
        ]);
        Ok(ops)
    }

    /// DNS: resolv.conf is often a link into /run (systemd-resolved).
    /// In the build's own network the host's resolvers may be out of
    /// reach (on its loopback): slirp4netns's forwarder stands in.
    /// `None` when the host's file is already shown by a bound directory.
    fn resolv_conf(
        &self,
        scratch: &Path,
        bound: &[PathBuf],
    ) -> Result<Option<MountOp>, SandboxError> {
        let Ok(resolv) = std::fs::canonicalize("/etc/resolv.conf") else {
            return Ok(None);
        };
        let ours = self.network.as_ref().and_then(BuildNetwork::resolv_conf);
        let src = match ours {
            Some(content) => {
                let path = scratch.join("resolv.conf");
                std::fs::write(&path, content).map_err(|source| SandboxError::Io {
                    context: format!("writing {path:?}"),
                    source,
                })?;
                path
            }
            None => resolv.clone(),
        };
        Ok(
            (src != resolv || !bound.iter().any(|b| resolv.starts_with(b)))
                .then_some(MountOp::ReadOnly { src, dst: resolv }),
        )
    }

    /// The sandbox's `/etc/passwd` and `/etc/group` (see
    /// [`Self::identity_files`]), written to `scratch` and shown over the
    /// host's.
    fn identity_mounts(&self, scratch: &Path) -> Result<Vec<MountOp>, SandboxError> {
        let mut ops = Vec::new();
        for (file, content) in self.identity_files()? {
            let src = scratch.join(file.trim_start_matches("/etc/"));
            std::fs::write(&src, content).map_err(|source| SandboxError::Io {
                context: format!("writing {src:?}"),
                source,
            })?;
            ops.push(MountOp::ReadOnly {
                src,
                dst: PathBuf::from(file),
            });
        }
        Ok(ops)
    }

    /// The build's own directories: writable, except the config vars.
    fn build_dirs(&self) -> [MountOp; 9] {
        let rw = |src: &Path, dst: &Path| MountOp::ReadWrite {
            src: src.into(),
            dst: dst.into(),
        };
        [
            MountOp::Dir { dst: "/var".into() },
            rw(&self.host.tmp, &self.inner.tmp),
            rw(&self.host.tmp, Path::new("/var/tmp")),
            rw(&self.host.build, &self.inner.build),
            rw(&self.host.cache, &self.inner.cache),
            MountOp::ReadOnly {
                src: self.host.env.clone(),
                dst: self.inner.env.clone(),
            },
            rw(&self.host.home, &self.inner.home),
            rw(&self.host.buildpacks, &self.inner.buildpacks),
            rw(&self.host.app, &self.inner.app),
        ]
    }

    /// `/etc/passwd` and `/etc/group` as the sandbox shows them: the host's,
    /// plus an entry for the build user when it has none (tools such as git
    /// and npm look the user up).
    fn identity_files(&self) -> Result<Vec<(&'static str, String)>, SandboxError> {
        let (uid, gid) = match &self.user {
            Some(u) => (u.uid, u.gid),
            None => (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            ),
        };
        let read = |path: &str| -> String {
            std::fs::read(path)
                .ok()
                .filter(|b| b.len() < 8 << 20)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let mut passwd = read("/etc/passwd");
        let mut group = read("/etc/group");
        let has_id = |text: &str, id: u32| {
            text.lines()
                .any(|l| l.split(':').nth(2) == Some(id.to_string().as_str()))
        };
        let name = format!("u{uid}");
        let mut out = Vec::new();
        if !has_id(&passwd, uid) {
            if !passwd.is_empty() && !passwd.ends_with('\n') {
                passwd.push('\n');
            }
            passwd.push_str(&format!(
                "{name}:x:{uid}:{gid}:build:{}:/bin/bash\n",
                self.inner.home.display()
            ));
            out.push(("/etc/passwd", passwd));
        }
        if !has_id(&group, gid) {
            if !group.is_empty() && !group.ends_with('\n') {
                group.push('\n');
            }
            group.push_str(&format!("{name}:x:{gid}:\n"));
            out.push(("/etc/group", group));
        }
        Ok(out)
    }

    /// The helper's plan for running `argv` in `cwd` (inside paths), with
    /// `extra_read_only` host paths shown read-only at the same place.
    pub fn plan(&self, argv: Vec<OsString>, cwd: &Path, extra_read_only: &[PathBuf]) -> Plan {
        let mut mounts = self.base.clone();
        let visible: Vec<PathBuf> = self
            .base
            .iter()
            .filter_map(|op| match op {
                MountOp::ReadOnly { dst, .. } => Some(dst.clone()),
                _ => None,
            })
            .collect();
        if self.mode.has_namespaces() {
            for p in extra_read_only {
                if !visible.iter().any(|v| p.starts_with(v)) {
                    // Before /proc and /dev, which stay last.
                    let at = mounts.len().saturating_sub(2);
                    mounts.insert(
                        at,
                        MountOp::ReadOnly {
                            src: p.clone(),
                            dst: p.clone(),
                        },
                    );
                }
            }
        }
        let user = self.user.as_ref().map(|u| (u.uid, u.gid));
        Plan {
            parent: std::process::id() as i32,
            namespaces: self.mode.has_namespaces(),
            user_namespace: match self.mode {
                Mode::UserNamespaces => Some((
                    nix::unistd::geteuid().as_raw(),
                    nix::unistd::getegid().as_raw(),
                )),
                _ => None,
            },
            new_root: self.mode.has_namespaces().then(|| self.new_root.clone()),
            netns: self
                .network
                .as_ref()
                .filter(|_| self.mode.has_namespaces())
                .map(|n| n.ns_path.clone()),
            cgroups: self
                .cgroup
                .as_ref()
                .map(|c| c.dirs().to_vec())
                .unwrap_or_default(),
            file_size_limit: self.limits.disk,
            shm_size: match (self.limits.memory, self.limits.disk) {
                (0, 0) => 0,
                (0, d) | (d, 0) => d,
                (m, d) => m.min(d),
            },
            mounts: if self.mode.has_namespaces() {
                mounts
            } else {
                Vec::new()
            },
            hostname: self
                .mode
                .has_namespaces()
                .then(|| OsString::from("slugbuilder")),
            user,
            sweep_user: self.user.as_ref().is_some_and(|u| u.leased),
            cwd: cwd.to_path_buf(),
            argv,
            env: Vec::new(),
        }
    }

    /// How to start `argv` in `cwd` (inside paths): `(program, args)`, and
    /// whether our own code must still drop privileges (direct starts).
    pub fn command(&self, argv: Vec<OsString>, cwd: &Path, extra_read_only: &[PathBuf]) -> Launch {
        match &self.helper {
            Some(helper) => {
                let plan = self.plan(argv, cwd, extra_read_only);
                let mut args = vec![OsString::from(EXEC_ARG)];
                args.extend(plan.to_args());
                Launch {
                    program: helper.clone(),
                    args,
                    cwd: PathBuf::from("/"),
                    credentials: None,
                    env_as_data: true,
                }
            }
            None => {
                let mut argv = argv.into_iter();
                Launch {
                    program: PathBuf::from(argv.next().unwrap_or_default()),
                    args: argv.collect(),
                    cwd: cwd.to_path_buf(),
                    credentials: self.user.as_ref().map(|u| (u.uid, u.gid)),
                    env_as_data: false,
                }
            }
        }
    }

    /// See that a sandbox can be made here: run the probe in one.
    /// `Err((why, refused))`: `refused` when the kernel (or the container
    /// slugbuilder runs in) does not allow namespaces, the one reason to
    /// fall back; otherwise a setting that cannot work.
    fn probe(&self) -> Result<(), (String, bool)> {
        let Some(helper) = &self.helper else {
            return Err(("no sandbox helper".into(), true));
        };
        let plan = self.plan(
            vec![OsString::from("/proc/self/exe"), OsString::from(PROBE_ARG)],
            Path::new("/"),
            &[],
        );
        let started = Instant::now();
        let mut child = std::process::Command::new(helper)
            .arg(EXEC_ARG)
            .args(plan.to_args())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| (format!("cannot start the helper: {e}"), false))?;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| (e.to_string(), false))? {
                break status;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(("the sandbox probe did not finish within 20 s".into(), false));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        tracing::debug!(elapsed = ?started.elapsed(), ?status, "sandbox probe");
        if status.success() {
            return Ok(());
        }
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.by_ref().take(4096).read_to_string(&mut stderr);
        }
        let why = stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("the probe failed")
            .trim_start_matches("slugbuilder: sandbox: ")
            .to_string();
        let refused = status.code() == Some(NAMESPACES_REFUSED.into());
        Err((why, refused))
    }

    /// After a step: nothing it started may be left. Kills and reaps every
    /// child of ours (orphans come to us: slugbuilder is a subreaper) and,
    /// without namespaces, every process of the build's own uid.
    pub fn sweep(&self) {
        // Without a helper (library use, tests) steps are plain children
        // and other work of this process may have children of its own.
        if self.helper.is_none() {
            return;
        }
        let keep = self
            .network
            .as_ref()
            .map(BuildNetwork::pids)
            .unwrap_or_default();
        let killed = slug_shared::proctree::sweep_own_children(&keep);
        if killed > 0 {
            tracing::debug!(killed, "swept processes left by a step");
        }
        if let (false, Some(user), Some(helper)) =
            (self.mode.has_namespaces(), &self.user, &self.helper)
        {
            if user.leased {
                kill_all_of(helper, user.uid, user.gid);
            }
        }
    }
}

/// The build's own network, when it has one: `None` for the host's (asked
/// for, or no helper), and the kernel's reason when it refused a network
/// namespace (the caller falls back).
fn choose_network(
    cfg: &SandboxConfig,
) -> Result<(Option<BuildNetwork>, Option<String>), SandboxError> {
    Ok(match (cfg.network, &cfg.helper) {
        (Network::Host, _) | (_, None) => (None, None),
        (mode, Some(helper)) => match BuildNetwork::create(helper, mode) {
            Ok(net) => (Some(net), None),
            // Without slirp4netns: the operator's to fix, never a
            // silent move to the host's network.
            Err(net::NetError::Unusable(why)) => return Err(SandboxError::Misconfigured(why)),
            // The kernel refused a network namespace: like any refused
            // namespace, the fallback.
            Err(net::NetError::Refused(why)) => (None, Some(why)),
        },
    })
}

/// The host's system directories, shown read-only (a link as the same
/// link); returns the mounts and the directories bound.
fn system_dirs() -> Result<(Vec<MountOp>, Vec<PathBuf>), SandboxError> {
    let mut ops = Vec::new();
    let mut bound: Vec<PathBuf> = Vec::new();
    for dir in SYSTEM_DIRS {
        let path = Path::new(dir);
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(path).map_err(|source| SandboxError::Io {
                    context: format!("reading {dir}"),
                    source,
                })?;
                ops.push(MountOp::Symlink {
                    target,
                    dst: path.into(),
                });
            }
            Ok(m) if m.is_dir() => {
                ops.push(MountOp::ReadOnly {
                    src: path.into(),
                    dst: path.into(),
                });
                bound.push(path.into());
            }
            _ => {}
        }
    }
    Ok((ops, bound))
}

impl Drop for Sandbox {
    /// Without a mount namespace the build shared the host's temporary
    /// directories: what its own uid left there goes with it.
    fn drop(&mut self) {
        if let (false, Some(user)) = (self.mode.has_namespaces(), &self.user) {
            if user.leased {
                if let Some(helper) = &self.helper {
                    kill_all_of(helper, user.uid, user.gid);
                }
                for dir in ["/tmp", "/var/tmp", "/dev/shm"] {
                    remove_owned_by(Path::new(dir), user.uid);
                }
            }
        }
    }
}

/// Remove the entries of `dir` that belong to `uid`, by descriptors.
fn remove_owned_by(dir: &Path, uid: u32) {
    use std::os::fd::AsFd;
    let Ok(fd) = slug_shared::tree::open_dir(dir) else {
        return;
    };
    for name in slug_shared::rootdir::list_dir(fd.as_fd()).unwrap_or_default() {
        let owned = nix::sys::stat::fstatat(
            fd.as_fd(),
            name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok_and(|st| st.st_uid == uid);
        if owned {
            if let Err(e) = slug_shared::rootdir::remove_at(fd.as_fd(), &name) {
                tracing::warn!("removing {:?} left in {}: {e}", name, dir.display());
            }
        }
    }
}

/// How to start one step.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Working directory of the started program (the helper enters the
    /// step's own one itself).
    pub cwd: PathBuf,
    /// Drop to these before exec (direct starts only).
    pub credentials: Option<(u32, u32)>,
    /// The program is the sandbox helper: it gets a fixed, empty
    /// environment and reads the step's from its stdin, as data.
    pub env_as_data: bool,
}

/// Start `helper` as `uid` to kill every process of that uid.
pub fn kill_all_of(helper: &Path, uid: u32, gid: u32) {
    use std::os::unix::process::CommandExt;
    let status = std::process::Command::new(helper)
        .arg(KILL_ALL_ARG)
        .uid(uid)
        .gid(gid)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if let Err(e) = status {
        tracing::warn!("sweeping uid {uid}: {e}");
    }
}

/// The build user: a leased uid when root (or the operator's fixed one),
/// none when not root.
fn choose_user(
    cfg: &SandboxConfig,
    root: bool,
    warnings: &mut Vec<String>,
) -> (Option<BuildUser>, Option<UidLease>) {
    if !root {
        return (None, None);
    }
    if let Some((uid, gid)) = cfg.fixed_user {
        if uid == 0 {
            warnings.push(
                "Buildpacks run as root (--build-user root): they can change anything on this host"
                    .into(),
            );
            return (None, None);
        }
        return (
            Some(BuildUser {
                uid,
                gid,
                leased: false,
            }),
            None,
        );
    }
    match uids::lease(cfg.uid_range, &cfg.lock_dir) {
        Ok(lease) => (
            Some(BuildUser {
                uid: lease.uid,
                gid: lease.uid,
                leased: true,
            }),
            Some(lease),
        ),
        Err(e) => {
            let (uid, gid, name) = slug_shared::user::fallback_build_user();
            warnings.push(format!(
                "Cannot give this build a uid of its own ({e}); buildpacks run as {name}, shared with other builds"
            ));
            (
                Some(BuildUser {
                    uid,
                    gid,
                    leased: false,
                }),
                None,
            )
        }
    }
}

/// The kill-all mode: every process of our uid but this one gets SIGKILL.
/// Never as root, where it would mean every process of the host.
fn kill_all_main() -> std::process::ExitCode {
    if nix::unistd::geteuid().is_root() || nix::unistd::getuid().is_root() {
        slug_shared::log::line(format_args!(
            "slugbuilder: {KILL_ALL_ARG} refuses to run as root"
        ));
        return std::process::ExitCode::from(SETUP_FAILED);
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(-1),
        nix::sys::signal::Signal::SIGKILL,
    );
    std::process::ExitCode::SUCCESS
}

/// If this process was started as one of the sandbox's helpers (its first
/// argument says so), do that job and return the exit code; `None` for a
/// normal start. Call it first thing in `main`, before any thread exists.
pub fn dispatch() -> Option<std::process::ExitCode> {
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new(KILL_ALL_ARG)) {
        return Some(kill_all_main());
    }
    helper::dispatch()
}
