//! The private directories of one build, and their removal.
//!
//! ```text
//! slugbuilder-XXXXXX/   root-owned, 0711
//!   build/              BUILD_DIR          } owned by the build user, 0700
//!   home/               HOME               }
//!   tmp/                TMPDIR (and /tmp)  }
//!   app/                APP_DIR (/app)     }
//!   buildpacks/         private buildpack copies
//!   env/                ENV_DIR (config vars), 0500, files 0400
//!   scratch/            the sandbox's own files (root only)
//! ```
//!
//! The cache dir (`--cache-dir`, else `cache/` in the workspace) is locked
//! for the build (two builds of one app wait for each other), handed to the
//! build user for the build, and closed again (root-owned, 0700) after it,
//! so that no later holder of the same uid can reach it.
//!
//! Everything is removed when the build ends, however it ends: on return
//! (success or failure), on a panic (unwinding drops the workspace), and on
//! an abrupt exit (the cleanup is registered with [`Cancel::emergency`]).
//!
//! **In memory** (`--workspace memory`, or `auto` when the disk limit fits
//! the host's memory): as root, slugbuilder first moves into a mount
//! namespace of its own ([`enter_private_mount_namespace`], before any
//! thread exists), and the workspace is a tmpfs there, sized to the build's
//! disk limit: creating the source's and the buildpacks' files costs no
//! disk inodes, nothing of it is visible on the host, and it is gone when
//! slugbuilder ends, however it ends. The cache dir stays on disk.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{Flock, FlockArg};

use super::{io_ctx, BuildConfig, BuildError};
use crate::sandbox::{BuildUser, Places};
use slug_shared::cancel::{Cancel, CleanupId, POLL};
use slug_shared::log;

/// Where the workspace lives (`--workspace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkspaceMode {
    /// Memory when the disk limit fits the host's memory, else disk.
    #[default]
    Auto,
    Memory,
    Disk,
}

impl std::str::FromStr for WorkspaceMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(WorkspaceMode::Auto),
            "memory" => Ok(WorkspaceMode::Memory),
            "disk" => Ok(WorkspaceMode::Disk),
            other => Err(format!("{other:?}: expected auto, memory or disk")),
        }
    }
}

/// Whether slugbuilder has a mount namespace of its own, and why not.
static PRIVATE_MOUNTS: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();

/// Move this process into a mount namespace of its own whose mounts do not
/// propagate to the host, so that an in-memory workspace is ours alone and
/// ends with us. Call it before any thread exists (unshare refuses a
/// multi-threaded process); as root only.
pub fn enter_private_mount_namespace() {
    let result = (|| {
        let threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
        if threads > 1 {
            return Err(format!("{threads} threads already run"));
        }
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
            .map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| format!("making / private: {e}"))
    })();
    let _ = PRIVATE_MOUNTS.set(result);
}

/// Bytes of memory of this host.
fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .map_or(0, |kib| kib * 1024)
}

/// Whether the workspace goes into memory, or why not.
fn memory_workspace(cfg: &BuildConfig) -> Result<bool, String> {
    let limit = cfg.sandbox.limits.disk;
    let mounts = || match PRIVATE_MOUNTS.get() {
        Some(Ok(())) => Ok(()),
        Some(Err(why)) => Err(format!("no mount namespace of its own ({why})")),
        None if nix::unistd::geteuid().is_root() => {
            Err("no mount namespace of its own".to_string())
        }
        None => Err("slugbuilder is not root".to_string()),
    };
    match cfg.workspace {
        WorkspaceMode::Disk => Ok(false),
        WorkspaceMode::Memory => mounts().map(|()| true),
        WorkspaceMode::Auto => {
            if limit == 0 {
                return Err("no --disk-limit to size it by".into());
            }
            if limit > mem_total() / 2 {
                return Err(format!(
                    "the disk limit ({}) is more than half of this host's memory",
                    crate::sandbox::limits::human(limit)
                ));
            }
            mounts().map(|()| true)
        }
    }
}

#[derive(Debug)]
pub struct Workspace {
    pub root: PathBuf,
    pub build: PathBuf,
    pub home: PathBuf,
    pub env: PathBuf,
    pub tmp: PathBuf,
    pub app: PathBuf,
    pub buildpacks: PathBuf,
    pub scratch: PathBuf,
    pub cache: PathBuf,
    /// Held for the whole build.
    _cache_lock: Option<Flock<File>>,
    /// Close the cache again at the end (it was handed to a leased uid).
    close_cache: bool,
    /// The root is a tmpfs (in our own mount namespace).
    in_memory: bool,
    /// For the log: where the workspace is, and why.
    pub description: String,
    cancel: Arc<Cancel>,
    cleanup: CleanupId,
}

/// Whether the workspace at `root` lives in memory (a tmpfs mounted on
/// it, sized by the disk limit) or on disk, and the log line that says
/// so. Memory asked for but not possible is an error (`root` is removed);
/// merely preferred, the workspace stays on disk and the line says why.
fn choose_medium(cfg: &BuildConfig, root: &Path) -> Result<(bool, String), BuildError> {
    Ok(match memory_workspace(cfg) {
        Ok(true) => {
            mount_tmpfs(root, cfg.sandbox.limits.disk).inspect_err(|_| {
                let _ = std::fs::remove_dir(root);
            })?;
            let size = match cfg.sandbox.limits.disk {
                0 => "unsized".to_string(),
                n => format!("at most {}", crate::sandbox::limits::human(n)),
            };
            (
                true,
                format!("Workspace: memory (tmpfs, {size}; the cache stays on disk)"),
            )
        }
        Ok(false) => (false, format!("Workspace: disk ({})", root.display())),
        Err(why) if cfg.workspace == WorkspaceMode::Memory => {
            let _ = std::fs::remove_dir(root);
            return Err(BuildError::Sandbox(
                crate::sandbox::SandboxError::Misconfigured(format!("--workspace memory: {why}")),
            ));
        }
        Err(why) => (
            false,
            format!("Workspace: disk ({}; not in memory: {why})", root.display()),
        ),
    })
}

impl Workspace {
    pub fn create(cfg: &BuildConfig, cancel: &Arc<Cancel>) -> Result<Self, BuildError> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("slugbuilder-");
        let dir = match &cfg.tmp_dir {
            Some(dir) => builder.tempdir_in(dir),
            None => builder.tempdir(),
        }
        .map_err(io_ctx("creating the build workspace"))?;
        let root = dir.keep();
        let (in_memory, description) = choose_medium(cfg, &root)?;
        let cleanup = {
            let root = root.clone();
            cancel.on_emergency(move || {
                let _ = remove_workspace(&root, in_memory);
            })
        };
        let mut ws = Workspace {
            build: root.join("build"),
            home: root.join("home"),
            env: root.join("env"),
            tmp: root.join("tmp"),
            app: root.join("app"),
            buildpacks: root.join("buildpacks"),
            scratch: root.join("scratch"),
            cache: root.join("cache"),
            root,
            _cache_lock: None,
            close_cache: false,
            in_memory,
            description,
            cancel: Arc::clone(cancel),
            cleanup,
        };
        for dir in [
            &ws.build,
            &ws.home,
            &ws.env,
            &ws.tmp,
            &ws.app,
            &ws.buildpacks,
            &ws.scratch,
        ] {
            std::fs::create_dir(dir).map_err(io_ctx(format!("creating {}", dir.display())))?;
            set_mode(dir, 0o700)?;
        }
        ws.open_cache(cfg, cancel)?;
        Ok(ws)
    }

    /// The cache: the operator's persistent dir (created if need be, and
    /// locked against concurrent builds), else a fresh private one.
    fn open_cache(&mut self, cfg: &BuildConfig, cancel: &Arc<Cancel>) -> Result<(), BuildError> {
        match &cfg.cache_dir {
            Some(c) => {
                std::fs::create_dir_all(c)
                    .map_err(io_ctx(format!("creating cache dir {}", c.display())))?;
                self.cache = std::path::absolute(c)
                    .map_err(io_ctx(format!("resolving cache dir {}", c.display())))?;
                self._cache_lock = Some(lock_cache(&self.cache, cancel)?);
            }
            None => {
                std::fs::create_dir(&self.cache).map_err(io_ctx("creating a cache dir"))?;
                set_mode(&self.cache, 0o700)?;
            }
        }
        Ok(())
    }

    /// Whether the workspace is a tmpfs.
    pub fn in_memory(&self) -> bool {
        self.in_memory
    }

    /// The build's directories, for the sandbox.
    pub fn places(&self) -> Places {
        Places {
            build: self.build.clone(),
            cache: self.cache.clone(),
            env: self.env.clone(),
            home: self.home.clone(),
            tmp: self.tmp.clone(),
            app: self.app.clone(),
            buildpacks: self.buildpacks.clone(),
        }
    }

    /// Write out the bundled buildpacks (root's, in the scratch dir; builds
    /// get copies).
    pub fn unpack_bundled(
        &self,
        bundled: Option<super::Bundled>,
    ) -> Result<Option<PathBuf>, BuildError> {
        let Some(super::Bundled(tar)) = bundled else {
            return Ok(None);
        };
        let dir = self.scratch.join("bundled");
        slug_shared::archive::unpack(std::io::Cursor::new(tar), &dir, &Default::default())
            .map_err(|e| BuildError::Io {
                context: "writing out the bundled buildpacks".into(),
                source: std::io::Error::other(e),
            })?;
        Ok(Some(dir))
    }

    /// Give the build user its directories and the cache.
    pub fn hand_over(
        &mut self,
        user: Option<&BuildUser>,
        cancel: &Cancel,
    ) -> Result<(), BuildError> {
        let Some(user) = user else {
            return Ok(());
        };
        let owner = (user.uid, user.gid);
        // The build user may pass through the workspace, not list it.
        set_mode(&self.root, 0o711)?;
        for dir in [
            &self.build,
            &self.home,
            &self.tmp,
            &self.app,
            &self.buildpacks,
            &self.env,
        ] {
            chown(dir, owner)?;
        }
        set_mode(&self.env, 0o500)?;
        cancel.check()?;
        let started = std::time::Instant::now();
        let fd = slug_shared::tree::open_dir(&self.cache).map_err(io_ctx(format!(
            "opening cache dir {}",
            self.cache.display()
        )))?;
        let entries =
            slug_shared::tree::chown_tree(fd.as_fd(), user.uid, user.gid).map_err(|e| {
                BuildError::Io {
                    context: format!(
                        "handing the cache dir {} to the build user",
                        self.cache.display()
                    ),
                    source: e.into_io(),
                }
            })?;
        nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::from_bits_truncate(0o700))
            .map_err(|e| io_ctx("setting the mode of the cache dir")(e.into()))?;
        tracing::debug!(entries, elapsed = ?started.elapsed(), "cache handed to the build user");
        self.close_cache = user.leased;
        Ok(())
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Err(e) = remove_workspace(&self.root, self.in_memory) {
            log::warn(format!(
                "could not remove the build workspace {}: {e}",
                self.root.display()
            ));
        }
        if self.close_cache {
            // Root's again: a later build that leases the same uid must not
            // reach this app's cache.
            if let Ok(fd) = slug_shared::tree::open_dir(&self.cache) {
                let _ = nix::unistd::fchown(
                    &fd,
                    Some(nix::unistd::Uid::from_raw(0)),
                    Some(nix::unistd::Gid::from_raw(0)),
                );
                let _ =
                    nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::from_bits_truncate(0o700));
            }
        }
        self.cancel.forget(self.cleanup);
    }
}

/// Take the cache dir for this build; another build of the same app waits
/// (within the deadline).
/// A tmpfs of at most `size` bytes (0: the kernel's default) at `root`,
/// root-only until it is handed over.
fn mount_tmpfs(root: &Path, size: u64) -> Result<(), BuildError> {
    use nix::mount::MsFlags;
    let options = match size {
        0 => "mode=0700".to_string(),
        n => format!("mode=0700,size={n}"),
    };
    nix::mount::mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|e| io_ctx(format!("mounting a tmpfs on {}", root.display()))(e.into()))
}

/// Remove the workspace: a tmpfs is detached (its files go with it), then
/// the directory it was mounted on is removed.
fn remove_workspace(root: &Path, in_memory: bool) -> std::io::Result<()> {
    if in_memory {
        nix::mount::umount2(root, nix::mount::MntFlags::MNT_DETACH)?;
    }
    slug_shared::rootdir::remove_entry(root)
}

fn lock_cache(dir: &Path, cancel: &Cancel) -> Result<Flock<File>, BuildError> {
    let open = || {
        File::options()
            .read(true)
            .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_CLOEXEC)
            .open(dir)
            .map_err(io_ctx(format!("opening cache dir {}", dir.display())))
    };
    let mut said = false;
    let mut file = open()?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                if !said {
                    log::header(format!(
                        "Waiting for another build that uses the cache dir {}",
                        dir.display()
                    ));
                    said = true;
                }
                cancel.check()?;
                std::thread::sleep(POLL);
                file = f;
            }
            Err((_, e)) => {
                return Err(BuildError::Io {
                    context: format!("locking cache dir {}", dir.display()),
                    source: e.into(),
                })
            }
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), BuildError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_ctx(format!("setting the mode of {}", path.display())))
}

fn chown(path: &Path, (uid, gid): (u32, u32)) -> Result<(), BuildError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(io_ctx(format!("changing the owner of {}", path.display())))
}

/// Without a mount namespace APP_DIR is the host's own: say so when the
/// build user will not be able to write it.
pub fn check_app_dir(app_dir: &Path, user: Option<&BuildUser>) {
    use std::os::unix::fs::MetadataExt;
    let writable = match (std::fs::metadata(app_dir), user) {
        (Err(_), _) => false,
        (Ok(m), Some(u)) => {
            m.is_dir()
                && ((m.uid() == u.uid && m.mode() & 0o200 != 0)
                    || (m.gid() == u.gid && m.mode() & 0o020 != 0)
                    || m.mode() & 0o002 != 0)
        }
        (Ok(m), None) => {
            m.is_dir() && nix::unistd::access(app_dir, nix::unistd::AccessFlags::W_OK).is_ok()
        }
    };
    if !writable {
        log::warn(format!(
            "APP_DIR {} does not exist or is not writable here, and without a mount namespace it cannot be provided: buildpacks that build into it (as Heroku's Python buildpack does) will fail",
            app_dir.display()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SlugOutput, SourceInput};

    pub(crate) fn config(tmp: &Path) -> BuildConfig {
        BuildConfig {
            source: SourceInput::Stdin,
            output: SlugOutput::Stdout,
            explicit_buildpacks: Vec::new(),
            buildpacks_env: None,
            buildpacks_dir: None,
            bundled: None,
            allow_local_buildpacks: false,
            cache_dir: None,
            cache_url: None,
            cache_put_url: None,
            put_url: None,
            env_dir: None,
            env_vars: Vec::new(),
            pass_env: Vec::new(),
            stack: "heroku-24".into(),
            source_version: None,
            request_id: "r".into(),
            app_dir: "/app".into(),
            path: "/usr/bin:/bin".into(),
            source_date_epoch: None,
            compression_level: 6,
            tmp_dir: Some(tmp.to_path_buf()),
            workspace: WorkspaceMode::Disk,
            sandbox: Default::default(),
            limits: Default::default(),
            allow_truncated_source: false,
            slug_size_warning: crate::DEFAULT_SLUG_SIZE_WARNING,
            max_slug_size: crate::DEFAULT_MAX_SLUG_SIZE,
        }
    }

    /// A panic half-way through a build unwinds through the workspace,
    /// which removes itself (config vars included).
    #[test]
    fn a_panic_removes_the_workspace() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let cancel = Cancel::new(std::time::Duration::from_secs(60));
        let result = std::panic::catch_unwind(|| {
            let ws = Workspace::create(&cfg, &cancel).unwrap();
            std::fs::write(ws.env.join("SECRET"), "value").unwrap();
            assert!(ws.root.exists());
            panic!("in the middle of a build");
        });
        assert!(result.is_err());
        assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
    }

    /// An abrupt exit runs the registered cleanup instead.
    #[test]
    fn emergency_removes_the_workspace() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let cancel = Cancel::new(std::time::Duration::from_secs(60));
        let ws = Workspace::create(&cfg, &cancel).unwrap();
        std::mem::forget(ws);
        cancel.emergency();
        assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
    }
}
