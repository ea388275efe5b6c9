//! A network of the build's own (threat model, invariant 9).
//!
//! Each build gets one network namespace, made by a small holder process
//! (this binary in its [`NETNS_ARG`] mode) that lives as long as the build;
//! every step joins it (`setns`) before making its other namespaces. In
//! `isolated` mode slirp4netns, the userspace NAT rootless podman uses,
//! gives the namespace a route to the internet with the host's loopback
//! switched off (`--disable-host-loopback`): buildpacks reach registries and
//! git hosts, but not services the host binds to 127.0.0.1, the host's or
//! other builds' abstract unix sockets (they belong to a network
//! namespace), or other builds' listeners. `none` is the namespace with
//! only its loopback.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How a build's steps reach the network (`--network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// A namespace of the build's own, with egress through slirp4netns.
    #[default]
    Isolated,
    /// The host's network (only when the operator says so).
    Host,
    /// A namespace of the build's own with nothing but loopback.
    None,
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "isolated" => Ok(Network::Isolated),
            "host" => Ok(Network::Host),
            "none" => Ok(Network::None),
            other => Err(format!("{other:?}: expected isolated, host or none")),
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Network::Isolated => "isolated",
            Network::Host => "host",
            Network::None => "none",
        })
    }
}

/// First argument of the namespace holder mode.
pub const NETNS_ARG: &str = "__sandbox-netns";

/// The address slirp4netns answers DNS on, inside the namespace.
pub const SLIRP_DNS: &str = "10.0.2.3";

/// How long slirp4netns may take to configure the namespace.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a build's network could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetError {
    /// The kernel (or the container slugbuilder runs in) refused a network
    /// namespace: like any refused namespace, a reason to fall back.
    Refused(String),
    /// What the operator must provide is missing (slirp4netns, a usable
    /// /dev/net/tun) or failed: never a reason to use the host's network.
    Unusable(String),
}

/// A build's network namespace and what serves it; both end when dropped.
#[derive(Debug)]
pub struct BuildNetwork {
    holder: Child,
    slirp: Option<Child>,
    /// `/proc/PID/ns/net` of the holder: what steps join.
    pub ns_path: PathBuf,
}

impl BuildNetwork {
    /// Make the namespace (`helper` is this binary) and, for `isolated`,
    /// start slirp4netns for it. `Err` says why, for the log or exit 18.
    pub fn create(helper: &Path, mode: Network) -> Result<Self, NetError> {
        let mut holder = Command::new(helper)
            .arg(NETNS_ARG)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                NetError::Unusable(format!("cannot start the network namespace holder: {e}"))
            })?;
        // The holder says "ready" once its namespace exists and lo is up.
        let mut ready = [0u8; 6];
        let said = holder
            .stdout
            .take()
            .map(|mut out| out.read_exact(&mut ready).is_ok())
            .unwrap_or(false);
        if !said || &ready != b"ready\n" {
            let mut why = String::new();
            if let Some(mut e) = holder.stderr.take() {
                let _ = e.by_ref().take(4096).read_to_string(&mut why);
            }
            let _ = holder.kill();
            let status = holder.wait().ok();
            let why = format!(
                "cannot make the build's network namespace: {}",
                why.trim().trim_start_matches("slugbuilder: sandbox: ")
            );
            // Only the kernel's refusal (the helper's own exit code for it)
            // is a reason to fall back; anything else is to be fixed.
            let refused =
                status.and_then(|s| s.code()) == Some(i32::from(super::helper::NAMESPACES_REFUSED));
            return Err(if refused {
                NetError::Refused(why)
            } else {
                NetError::Unusable(why)
            });
        }
        let ns_path = PathBuf::from(format!("/proc/{}/ns/net", holder.id()));
        let mut net = BuildNetwork {
            holder,
            slirp: None,
            ns_path,
        };
        if mode == Network::Isolated {
            // The namespace could be made, so the kernel allows it: what
            // is missing now is the operator's to provide (checked after
            // the namespace, so that a host without namespaces falls back).
            let slirp = which::which("slirp4netns").map_err(|_| {
                NetError::Unusable(
                    "--network isolated needs slirp4netns (Debian/Ubuntu: apt-get install slirp4netns); \
                     or choose --network none or host"
                        .to_string(),
                )
            })?;
            // slirp4netns opens the tun device as us: say so now rather
            // than let it fail half-way. Distributions ship it mode 0666.
            if let Err(e) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
            {
                return Err(NetError::Unusable(format!(
                    "--network isolated needs /dev/net/tun, which cannot be opened here ({e}); \
                     make it usable (mode 0666, as distributions ship it; in a container, --device /dev/net/tun) \
                     or choose --network none or host"
                )));
            }
            net.slirp = Some(net.start_slirp(&slirp).map_err(NetError::Unusable)?);
        }
        Ok(net)
    }

    fn start_slirp(&self, program: &Path) -> Result<Child, String> {
        let pid = self.holder.id();
        // stdin is a pipe we never write: slirp4netns exits when it closes
        // (--exit-fd), that is when this build or slugbuilder ends, however.
        let root = nix::unistd::geteuid().is_root();
        let mut child = Command::new(program)
            .args([
                "--configure",
                "--mtu=65520",
                "--disable-host-loopback",
                "--enable-seccomp",
                "--exit-fd=0",
            ])
            // As root, slirp4netns confines itself too (its own mount
            // namespace); that needs uid 0 mapped in the build's user
            // namespace, which an unprivileged build does not map (steps
            // keep their own uid), and there it runs unprivileged anyway.
            .args(root.then_some("--enable-sandbox"))
            // Unprivileged, the namespace belongs to the build's user
            // namespace, which slirp4netns must join to reach it.
            .args((!root).then(|| format!("--userns-path=/proc/{pid}/ns/user")))
            .arg(pid.to_string())
            .arg("tap0")
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start slirp4netns: {e}"))?;
        // Configured when the namespace has its default route.
        let route = format!("/proc/{pid}/net/route");
        let started = Instant::now();
        loop {
            let routed = std::fs::read_to_string(&route).is_ok_and(|table| {
                table
                    .lines()
                    .skip(1)
                    .any(|l| l.split_whitespace().nth(1) == Some("00000000"))
            });
            if routed {
                return Ok(child);
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut why = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.by_ref().take(4096).read_to_string(&mut why);
                }
                let last = why.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
                return Err(format!("slirp4netns failed ({status}): {last}"));
            }
            if started.elapsed() > SETUP_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "slirp4netns did not configure the network within {}s",
                    SETUP_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Our processes that serve the namespace (kept by the sweep after
    /// each step).
    pub fn pids(&self) -> Vec<nix::unistd::Pid> {
        std::iter::once(self.holder.id())
            .chain(self.slirp.as_ref().map(Child::id))
            .map(|id| nix::unistd::Pid::from_raw(id as i32))
            .collect()
    }

    /// The `resolv.conf` steps get: slirp4netns's DNS forwarder (the
    /// host's resolvers may be on its loopback, out of reach).
    pub fn resolv_conf(&self) -> Option<String> {
        self.slirp
            .as_ref()
            .map(|_| format!("nameserver {SLIRP_DNS}\noptions edns0\n"))
    }
}

impl Drop for BuildNetwork {
    fn drop(&mut self) {
        if let Some(slirp) = &mut self.slirp {
            let _ = slirp.kill();
            let _ = slirp.wait();
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
