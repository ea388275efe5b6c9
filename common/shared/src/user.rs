//! Who the app runs as. Dynos never run as root (contract §4): when
//! slugrunner is started as root it picks an unprivileged user before the
//! slug is unpacked (so the files are created with the right owner, without
//! a `chown -R` at every boot) and drops to it before the app starts.
//!
//! Order: `--user` (name or uid, optional `:group`/`:gid`) > the app dir's
//! owner when that is not root > the user `slug` if it exists > `nobody`.
//! Root only when asked for explicitly (`--user root`).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::unistd::{Gid, Group, Uid, User};

/// `nobody` / `nogroup` when the passwd database has no entry.
pub const NOBODY_ID: u32 = 65534;
/// The dedicated user that runner images may create for apps.
pub const SLUG_USER: &str = "slug";

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("--user {spec:?}: no such user")]
    NoSuchUser { spec: String },
    #[error("--user {spec:?}: no such group {group:?}")]
    NoSuchGroup { spec: String, group: String },
    #[error("--user {spec:?}: expected USER[:GROUP] or UID[:GID]")]
    BadSpec { spec: String },
    #[error("cannot look up user {what}")]
    Lookup { what: String, source: nix::Error },
    #[error("--user {spec:?} needs root (running as uid {current})")]
    NotRoot { spec: String, current: u32 },
    #[error("cannot drop privileges to uid {uid} gid {gid}: {call} failed")]
    Drop {
        uid: u32,
        gid: u32,
        call: &'static str,
        source: nix::Error,
    },
}

/// The identity the app runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunUser {
    pub uid: u32,
    pub gid: u32,
    /// For logs: the user name, or the uid when it has none.
    pub name: String,
}

impl RunUser {
    /// The identity of this process.
    pub fn current() -> Self {
        let uid = Uid::current();
        Self {
            uid: uid.as_raw(),
            gid: Gid::current().as_raw(),
            name: user_name(uid),
        }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

fn user_name(uid: Uid) -> String {
    User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

fn lookup_err(what: &str) -> impl FnOnce(nix::Error) -> UserError + '_ {
    move |source| UserError::Lookup {
        what: what.to_string(),
        source,
    }
}

/// Resolve a `--user` value: `name`, `uid`, `name:group`, `uid:gid` (groups
/// by name or number). A uid without a passwd entry gets gid = uid unless a
/// group is given (never gid 0 by accident).
pub fn parse_user_spec(spec: &str) -> Result<RunUser, UserError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() || group_part == Some("") {
        return Err(UserError::BadSpec { spec: spec.into() });
    }
    let (uid, mut gid, name) = if let Ok(uid) = user_part.parse::<u32>() {
        match User::from_uid(Uid::from_raw(uid)).map_err(lookup_err(user_part))? {
            Some(u) => (uid, u.gid.as_raw(), u.name),
            None => (uid, uid, uid.to_string()),
        }
    } else {
        match User::from_name(user_part).map_err(lookup_err(user_part))? {
            Some(u) => (u.uid.as_raw(), u.gid.as_raw(), u.name),
            None => return Err(UserError::NoSuchUser { spec: spec.into() }),
        }
    };
    if let Some(group) = group_part {
        gid = if let Ok(gid) = group.parse::<u32>() {
            gid
        } else {
            match Group::from_name(group).map_err(lookup_err(group))? {
                Some(g) => g.gid.as_raw(),
                None => {
                    return Err(UserError::NoSuchGroup {
                        spec: spec.into(),
                        group: group.into(),
                    })
                }
            }
        };
    }
    Ok(RunUser { uid, gid, name })
}

/// Decide who runs the app. Not root: the current user (`--user` must then
/// name it). Root: see the module doc. `app_dir` may not exist yet.
pub fn resolve_run_user(spec: Option<&str>, app_dir: &Path) -> Result<RunUser, UserError> {
    resolve_run_user_as(RunUser::current(), spec, app_dir)
}

/// [`resolve_run_user`] for a process running as `current` (so that the
/// rules for root and for other users can both be tested, whoever runs the
/// tests).
fn resolve_run_user_as(
    current: RunUser,
    spec: Option<&str>,
    app_dir: &Path,
) -> Result<RunUser, UserError> {
    if let Some(spec) = spec {
        let wanted = parse_user_spec(spec)?;
        if !current.is_root() && wanted.uid != current.uid {
            return Err(UserError::NotRoot {
                spec: spec.into(),
                current: current.uid,
            });
        }
        return Ok(if current.is_root() { wanted } else { current });
    }
    if !current.is_root() {
        return Ok(current);
    }
    if let Ok(meta) = std::fs::metadata(app_dir) {
        if meta.uid() != 0 {
            return Ok(RunUser {
                uid: meta.uid(),
                gid: meta.gid(),
                name: user_name(Uid::from_raw(meta.uid())),
            });
        }
    }
    let (uid, gid, name) = fallback_build_user();
    Ok(RunUser { uid, gid, name })
}

/// The unprivileged user that root hands work to when nothing more
/// specific is known: `slug` if it exists, else `nobody`, else uid/gid
/// 65534. Returns (uid, gid, name).
pub fn fallback_build_user() -> (u32, u32, String) {
    for name in [SLUG_USER, "nobody"] {
        if let Ok(Some(u)) = User::from_name(name) {
            return (u.uid.as_raw(), u.gid.as_raw(), u.name);
        }
    }
    (NOBODY_ID, NOBODY_ID, "nobody".into())
}

/// Become `user` for good: supplementary groups, gid, then uid. A no-op
/// when this process already is `user` and not root.
pub fn drop_privileges(user: &RunUser) -> Result<(), UserError> {
    let current = RunUser::current();
    if current.uid == user.uid && current.gid == user.gid && !current.is_root() {
        return Ok(());
    }
    let err = |call| {
        move |source| UserError::Drop {
            uid: user.uid,
            gid: user.gid,
            call,
            source,
        }
    };
    let gid = Gid::from_raw(user.gid);
    nix::unistd::setgroups(&[gid]).map_err(err("setgroups"))?;
    nix::unistd::setgid(gid).map_err(err("setgid"))?;
    nix::unistd::setuid(Uid::from_raw(user.uid)).map_err(err("setuid"))?;
    if user.uid != 0 && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(UserError::Drop {
            uid: user.uid,
            gid: user.gid,
            call: "setuid (root could be regained)",
            source: nix::Error::EPERM,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_numbers_and_groups() {
        let root = parse_user_spec("root").unwrap();
        assert_eq!((root.uid, root.gid, root.name.as_str()), (0, 0, "root"));
        assert_eq!(parse_user_spec("0:0").unwrap().uid, 0);
        let nobody = parse_user_spec("65534").unwrap();
        assert_eq!((nobody.uid, nobody.gid), (65534, 65534));
        let unknown = parse_user_spec("4242").unwrap();
        assert_eq!((unknown.uid, unknown.gid), (4242, 4242));
        assert_eq!(parse_user_spec("4242:7").unwrap().gid, 7);
        assert_eq!(parse_user_spec("root:65534").unwrap().gid, 65534);
        assert!(matches!(
            parse_user_spec("no-such-user-xyz"),
            Err(UserError::NoSuchUser { .. })
        ));
        assert!(matches!(
            parse_user_spec("root:no-such-group-xyz"),
            Err(UserError::NoSuchGroup { .. })
        ));
        for bad in ["", ":1", "1:"] {
            assert!(matches!(
                parse_user_spec(bad),
                Err(UserError::BadSpec { .. })
            ));
        }
    }

    #[test]
    fn root_never_picks_root_implicitly() {
        // The owner fallback needs a directory owned by someone else, and
        // the answer must come from the real identity: root only.
        if !e2e::slugs::require_root("this test") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let user = resolve_run_user(None, dir.path()).unwrap();
        // The tempdir belongs to root: fall back to `slug` or `nobody`.
        assert_ne!(user.uid, 0);
        std::os::unix::fs::chown(dir.path(), Some(12345), Some(23456)).unwrap();
        let owner = resolve_run_user(None, dir.path()).unwrap();
        assert_eq!((owner.uid, owner.gid), (12345, 23456));
        assert_eq!(resolve_run_user(Some("root"), dir.path()).unwrap().uid, 0);
        assert_eq!(
            resolve_run_user(Some("4242"), dir.path()).unwrap().uid,
            4242
        );
    }

    /// Not root: always the caller itself, and `--user` may only name it.
    #[test]
    fn a_caller_other_than_root_runs_as_itself() {
        let dir = tempfile::tempdir().unwrap();
        // An app dir of another owner (where this process may chown it)
        // changes nothing: that fallback is root's.
        std::os::unix::fs::chown(dir.path(), Some(12345), Some(23456)).ok();
        let caller = RunUser {
            uid: 4242,
            gid: 4343,
            name: "caller".into(),
        };
        let resolve = |spec| resolve_run_user_as(caller.clone(), spec, dir.path());
        assert_eq!(resolve(None).unwrap(), caller);
        assert_eq!(resolve(Some("4242")).unwrap(), caller);
        assert!(matches!(
            resolve(Some("root")),
            Err(UserError::NotRoot { current: 4242, .. })
        ));
        assert!(matches!(
            resolve(Some("4243")),
            Err(UserError::NotRoot { .. })
        ));
    }
}
