//! Bounded resources per build (threat model, invariant 10): memory and
//! processes through a cgroup of the build's own (cgroup v2, or the v1
//! `memory` and `pids` hierarchies), disk through sized tmpfs mounts and a
//! watch over the build's directories ([`DiskWatch`]).
//!
//! Every step's helper joins the build's cgroups before it forks anything,
//! so the limits hold for the whole build: all steps, and everything they
//! start. When a limit stops a step, the cgroup's event counters say which
//! one ([`BuildCgroup::hit`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Default `--memory`: 2 GiB.
pub const DEFAULT_MEMORY: u64 = 2 << 30;
/// Default `--pids-limit`.
pub const DEFAULT_PIDS: u64 = 4096;
/// Default `--disk-limit`: 8 GiB.
pub const DEFAULT_DISK: u64 = 8 << 30;

/// The operator's limits for one build (0 = no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory: u64,
    pub pids: u64,
    pub disk: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: DEFAULT_MEMORY,
            pids: DEFAULT_PIDS,
            disk: DEFAULT_DISK,
        }
    }
}

/// Which limit stopped a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    Memory(u64),
    Pids(u64),
    Disk(u64),
}

impl std::fmt::Display for Hit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hit::Memory(n) => write!(f, "memory limit {} reached", human(*n)),
            Hit::Pids(n) => write!(f, "process limit {n} reached"),
            Hit::Disk(n) => write!(f, "disk limit {} reached", human(*n)),
        }
    }
}

/// Bytes as the operator wrote them, roughly: `256 MiB`, `2 GiB`.
pub fn human(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size && n.is_multiple_of(size) {
            return format!("{} {unit}", n / size);
        }
    }
    for (unit, size) in UNITS {
        if n >= size {
            return format!("{:.1} {unit}", n as f64 / size as f64);
        }
    }
    format!("{n} bytes")
}

/// Parse a size: bytes, or with a K/M/G/T suffix (powers of 1024; `KiB`,
/// `MB` and the like are read the same way).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a size such as 2G, 512M or 1048576"))?;
    let shift = match unit
        .trim()
        .to_ascii_lowercase()
        .trim_end_matches(['b', 'i'])
    {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("{s:?}: unknown unit (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?}: too large"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// A build's cgroups; removed (after killing what is left in them) when
/// dropped.
#[derive(Debug)]
pub struct BuildCgroup {
    version: Version,
    /// The directories a step's helper joins (one on v2; memory and pids
    /// on v1).
    dirs: Vec<PathBuf>,
    memory_dir: Option<PathBuf>,
    pids_dir: Option<PathBuf>,
    limits: Limits,
}

/// The cgroup's event counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    oom_kills: u64,
    pids_refused: u64,
}

/// Where the controller `name` of this process's cgroup is (v1), or the
/// unified hierarchy (v2, `name` = "").
fn own_cgroup(controller: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        if matches {
            let base = if controller.is_empty() {
                PathBuf::from("/sys/fs/cgroup")
            } else {
                Path::new("/sys/fs/cgroup").join(controller)
            };
            return Some(base.join(path.trim_start_matches('/')));
        }
    }
    None
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))
}

fn read_u64_field(path: &Path, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
        })
        .unwrap_or(0)
}

/// Remove the cgroups of builds whose slugbuilder was killed before it
/// could (`slugbuilder-PID-...` with PID gone). Their steps died with it.
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("slugbuilder-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let dir = entry.path();
            let empty = std::fs::read_to_string(dir.join("cgroup.procs"))
                .is_ok_and(|p| p.trim().is_empty());
            if empty {
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }
}

impl BuildCgroup {
    /// Make the build's cgroup(s) beneath this process's own, named
    /// `name`, with `limits` set. `Err` says why not (no controller, no
    /// rights): the caller decides whether that fails the build.
    pub fn create(name: &str, limits: Limits) -> Result<Self, String> {
        let unified = Path::new("/sys/fs/cgroup/cgroup.controllers");
        let v2 = std::fs::read_to_string(unified).is_ok_and(|c| {
            let c: Vec<&str> = c.split_whitespace().collect();
            c.contains(&"memory") && c.contains(&"pids")
        });
        let mut cg = BuildCgroup {
            version: if v2 { Version::V2 } else { Version::V1 },
            dirs: Vec::new(),
            memory_dir: None,
            pids_dir: None,
            limits,
        };
        if v2 {
            let parent = own_cgroup("").ok_or("no cgroup v2 path in /proc/self/cgroup")?;
            // Controllers must be delegated to children; refused while the
            // parent has processes of its own (the "no internal processes"
            // rule), unless it is the root.
            let control = parent.join("cgroup.subtree_control");
            let enabled = std::fs::read_to_string(&control).unwrap_or_default();
            if !(enabled.contains("memory") && enabled.contains("pids"))
                && write(&control, "+memory +pids").is_err()
            {
                // Usually slugbuilder itself is the process in the way (a
                // systemd service's cgroup): it moves into a leaf of its
                // own, removed by a later build once it is gone.
                let own = parent.join(format!("slugbuilder-{}-self", std::process::id()));
                std::fs::create_dir_all(&own)
                    .map_err(|e| format!("creating cgroup {}: {e}", own.display()))?;
                write(&own.join("cgroup.procs"), &std::process::id().to_string())?;
                write(&control, "+memory +pids")?;
            }
            remove_stale(&parent);
            let dir = parent.join(name);
            std::fs::create_dir(&dir)
                .map_err(|e| format!("creating cgroup {}: {e}", dir.display()))?;
            cg.dirs.push(dir.clone());
            cg.memory_dir = Some(dir.clone());
            cg.pids_dir = Some(dir.clone());
            if limits.memory > 0 {
                write(&dir.join("memory.max"), &limits.memory.to_string())?;
                let _ = write(&dir.join("memory.swap.max"), "0");
            }
            if limits.pids > 0 {
                write(&dir.join("pids.max"), &limits.pids.to_string())?;
            }
        } else {
            for controller in ["memory", "pids"] {
                let parent = own_cgroup(controller)
                    .filter(|p| p.exists())
                    .ok_or(format!("no cgroup {controller} controller (v1 or v2)"))?;
                remove_stale(&parent);
                let dir = parent.join(name);
                std::fs::create_dir(&dir)
                    .map_err(|e| format!("creating cgroup {}: {e}", dir.display()))?;
                cg.dirs.push(dir.clone());
                if controller == "memory" {
                    cg.memory_dir = Some(dir.clone());
                    if limits.memory > 0 {
                        write(
                            &dir.join("memory.limit_in_bytes"),
                            &limits.memory.to_string(),
                        )?;
                        // Swap counts too, where the kernel accounts it.
                        let memsw = dir.join("memory.memsw.limit_in_bytes");
                        if memsw.exists() {
                            let _ = write(&memsw, &limits.memory.to_string());
                        }
                    }
                } else {
                    cg.pids_dir = Some(dir.clone());
                    if limits.pids > 0 {
                        write(&dir.join("pids.max"), &limits.pids.to_string())?;
                    }
                }
            }
        }
        Ok(cg)
    }

    /// The directories a step's helper joins.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    fn oom_kills(&self) -> u64 {
        let Some(dir) = &self.memory_dir else {
            return 0;
        };
        match self.version {
            Version::V2 => read_u64_field(&dir.join("memory.events"), "oom_kill"),
            // Kernels before 4.13 have no count: a limit reached there
            // shows as the step's own failure.
            Version::V1 => read_u64_field(&dir.join("memory.oom_control"), "oom_kill"),
        }
    }

    fn pids_refusals(&self) -> u64 {
        self.pids_dir
            .as_ref()
            .map(|dir| read_u64_field(&dir.join("pids.events"), "max"))
            .unwrap_or(0)
    }

    /// The counters now, to compare with after a step.
    pub fn counters(&self) -> Counters {
        Counters {
            oom_kills: self.oom_kills(),
            pids_refused: self.pids_refusals(),
        }
    }

    /// Which limit, if any, was reached since `before`.
    pub fn hit_since(&self, before: Counters) -> Option<Hit> {
        let now = self.counters();
        if self.limits.memory > 0 && now.oom_kills > before.oom_kills {
            return Some(Hit::Memory(self.limits.memory));
        }
        if self.limits.pids > 0 && now.pids_refused > before.pids_refused {
            return Some(Hit::Pids(self.limits.pids));
        }
        None
    }

    /// Kill what is left in the build's cgroups.
    pub fn kill_all(&self) {
        for dir in &self.dirs {
            if self.version == Version::V2 && dir.join("cgroup.kill").exists() {
                let _ = std::fs::write(dir.join("cgroup.kill"), "1");
                continue;
            }
            for _ in 0..50 {
                let pids = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                if pids.trim().is_empty() {
                    break;
                }
                for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for BuildCgroup {
    fn drop(&mut self) {
        self.kill_all();
        for dir in &self.dirs {
            // rmdir succeeds once the last process has left.
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Watches the disk a build uses: the apparent blocks of its directories,
/// summed every [`DiskWatch::INTERVAL`] while a step runs. Over the limit,
/// `on_exceed` runs once (it stops the step). A step can overshoot by what
/// it writes within one interval; no single file can exceed the limit
/// (the step's RLIMIT_FSIZE).
#[derive(Debug)]
pub struct DiskWatch {
    stop: Arc<AtomicBool>,
    exceeded: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    dirs: Vec<PathBuf>,
    tmpfs: Option<PathBuf>,
    limit: u64,
}

/// Whether the build's disk is over `limit`: the trees of `dirs` walked,
/// plus what the workspace's tmpfs holds (and a full tmpfs, sized to the
/// limit, is the limit reached).
fn over(dirs: &[PathBuf], tmpfs: Option<&Path>, limit: u64) -> bool {
    let (in_memory, full) = tmpfs
        .and_then(|t| nix::sys::statvfs::statvfs(t).ok())
        .map(|st| {
            let block: u64 = st.fragment_size();
            let used = st.blocks().saturating_sub(st.blocks_free()) * block;
            (used, st.blocks_available() * block < (1 << 20))
        })
        .unwrap_or((0, false));
    full || in_memory
        + dirs
            .iter()
            .map(|d| slug_shared::tree::disk_usage(d))
            .sum::<u64>()
        > limit
}

impl DiskWatch {
    pub const INTERVAL: Duration = Duration::from_millis(250);

    pub fn start(
        dirs: Vec<PathBuf>,
        tmpfs: Option<PathBuf>,
        limit: u64,
        on_exceed: impl Fn() + Send + 'static,
    ) -> DiskWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let exceeded = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, exceeded, dirs, tmpfs) =
                (stop.clone(), exceeded.clone(), dirs.clone(), tmpfs.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let started = std::time::Instant::now();
                    if over(&dirs, tmpfs.as_deref(), limit) {
                        exceeded.store(true, Ordering::SeqCst);
                        on_exceed();
                        return;
                    }
                    // A big tree takes a while to walk: keep the watch
                    // under a tenth of one core.
                    std::thread::park_timeout(Self::INTERVAL.max(started.elapsed() * 10));
                }
            })
        };
        DiskWatch {
            stop,
            exceeded,
            thread: Some(thread),
            dirs,
            tmpfs,
            limit,
        }
    }

    /// Stop watching; whether the limit was exceeded, then or now (a step
    /// that failed at once on a full disk ends before a look).
    /// `recheck`: look once more now (only worth it for a failed step).
    pub fn finish(mut self, recheck: bool) -> bool {
        self.end();
        self.exceeded.load(Ordering::SeqCst)
            || (recheck && over(&self.dirs, self.tmpfs.as_deref(), self.limit))
    }

    fn end(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for DiskWatch {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert!(parse_size("2X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(human(256 << 20), "256 MiB");
        assert_eq!(human(2 << 30), "2 GiB");
        assert_eq!(
            Hit::Memory(256 << 20).to_string(),
            "memory limit 256 MiB reached"
        );
    }
}
