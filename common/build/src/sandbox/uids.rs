//! A uid of its own for every build (when slugbuilder runs as root).
//!
//! Builds that share a uid can signal, trace and read each other's
//! processes and write each other's files; so each build leases a uid from
//! a range the operator sets aside (default [`DEFAULT_RANGE`]), for as long
//! as it runs. The lease is an exclusive `flock` on a file named after the
//! uid in a root-owned directory: the kernel releases it when slugbuilder
//! exits, however it exits, so a crashed build never keeps its uid.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{Uid, User};

/// The uids handed to builds unless the operator chooses others: far above
/// the ranges of system and human users and of container subuids.
pub const DEFAULT_RANGE: UidRange = UidRange {
    first: 2_000_000_000,
    last: 2_000_999_999,
};

/// Where the lease files live by default (a tmpfs, emptied at boot).
pub const DEFAULT_LOCK_DIR: &str = "/run/slugbuilder/uids";

/// An inclusive range of uids (gid = uid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub first: u32,
    pub last: u32,
}

impl std::str::FromStr for UidRange {
    type Err = String;

    /// `FIRST-LAST`, e.g. `2000000000-2000999999`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?}: expected FIRST-LAST"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| format!("{s:?}: {v:?} is not a uid"))
        };
        let (first, last) = (parse(a)?, parse(b)?);
        if first == 0 || first > last || last == u32::MAX {
            return Err(format!(
                "{s:?}: the range must be non-empty, above 0 and below 4294967295"
            ));
        }
        Ok(Self { first, last })
    }
}

impl std::fmt::Display for UidRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// A uid held by this build until the lease is dropped (or the process ends).
#[derive(Debug)]
pub struct UidLease {
    pub uid: u32,
    _lock: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("uid lock directory {path:?}: {reason}")]
    LockDir { path: PathBuf, reason: String },
    #[error("no uid of {range} can be used here: {reason}")]
    NoneUsable { range: UidRange, reason: String },
    #[error("every uid of {range} is in use by another build")]
    Exhausted { range: UidRange },
}

/// Lease a uid of `range` that no other build holds, that belongs to no
/// user of the passwd database and that this process can switch to (inside
/// a container only some uids are mapped).
pub fn lease(range: UidRange, lock_dir: &Path) -> Result<UidLease, LeaseError> {
    prepare_lock_dir(lock_dir)?;
    let mapped = mapped_uids();
    let usable = |uid: u32| {
        mapped
            .iter()
            .any(|&(start, count)| uid >= start && uid - start < count)
    };
    if !usable(range.first) && !usable(range.last) {
        return Err(LeaseError::NoneUsable {
            range,
            reason: "those uids are not mapped in this user namespace (/proc/self/uid_map)".into(),
        });
    }
    let len = u64::from(range.last - range.first) + 1;
    let start = random_u64() % len;
    let tries = len.min(4096);
    for i in 0..tries {
        let uid = range.first + ((start + i) % len) as u32;
        if !usable(uid) || matches!(User::from_uid(Uid::from_raw(uid)), Ok(Some(_))) {
            continue;
        }
        let path = lock_dir.join(uid.to_string());
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| LeaseError::LockDir {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(UidLease { uid, _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => continue,
            Err((_, e)) => {
                return Err(LeaseError::LockDir {
                    path,
                    reason: e.to_string(),
                })
            }
        }
    }
    Err(LeaseError::Exhausted { range })
}

/// The lock directory must be ours alone: a directory (not a link) owned by
/// root that nobody else may write, or a build could steal or block uids.
fn prepare_lock_dir(dir: &Path) -> Result<(), LeaseError> {
    let err = |reason: String| LeaseError::LockDir {
        path: dir.to_path_buf(),
        reason,
    };
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        return Err(err(e.to_string()));
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| err(e.to_string()))?;
    if !meta.is_dir() {
        return Err(err("not a directory".into()));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
        return Err(err(
            "must belong to slugbuilder's user and be writable by it alone".into(),
        ));
    }
    Ok(())
}

/// (first uid, count) of each range this process may switch to.
fn mapped_uids() -> Vec<(u32, u32)> {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(text) => text
            .lines()
            .filter_map(|l| {
                let mut f = l.split_ascii_whitespace();
                let inside = f.next()?.parse().ok()?;
                let _outside: u64 = f.next()?.parse().ok()?;
                let count = f.next()?.parse().ok()?;
                Some((inside, count))
            })
            .collect(),
        // No /proc: assume the whole space, as outside any user namespace.
        Err(_) => vec![(0, u32::MAX)],
    }
}

fn random_u64() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return t ^ u64::from(std::process::id());
    }
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_strictly() {
        assert_eq!(
            "100-200".parse::<UidRange>().unwrap(),
            UidRange {
                first: 100,
                last: 200
            }
        );
        for bad in ["", "100", "200-100", "0-5", "a-b", "1-4294967295"] {
            assert!(bad.parse::<UidRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn two_leases_never_share_a_uid_and_a_dropped_one_is_free_again() {
        if !e2e::slugs::require_root("this test") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("uids");
        let range = UidRange {
            first: 2_000_500_000,
            last: 2_000_500_001,
        };
        let a = lease(range, &locks).unwrap();
        let b = lease(range, &locks).unwrap();
        assert_ne!(a.uid, b.uid);
        assert!(matches!(
            lease(range, &locks),
            Err(LeaseError::Exhausted { .. })
        ));
        let freed = a.uid;
        drop(a);
        assert_eq!(lease(range, &locks).unwrap().uid, freed);
    }

    #[test]
    fn a_lock_dir_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("uids");
        std::fs::create_dir(&locks).unwrap();
        std::fs::set_permissions(&locks, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = lease(DEFAULT_RANGE, &locks).unwrap_err();
        assert!(matches!(err, LeaseError::LockDir { .. }), "{err}");
    }
}
