//! The run image's user, as numbers: the slug layer's files are owned by
//! it, so that the app can write to `/app` without a `chown` at boot.
//!
//! `User` in the config may be empty (root), `UID`, `UID:GID`, `NAME`,
//! `NAME:GROUP` or a mix. Numbers need nothing more, except a lone UID,
//! whose group is its passwd entry's (as Docker and podman decide). A
//! name is looked up in the image's own `/etc/passwd` and `/etc/group`:
//! the layers are read from the top down, streamed, until both files are
//! found. That downloads layers, so `USER 1000:1000` in the run image is
//! the fast path (and what Kubernetes' `runAsNonRoot` needs anyway).

use std::io::Read;

use oci_spec::image::Descriptor;

use super::store::{copy_error, Image, Source, Verify};
use super::OciError;
use slug_shared::log;

/// Largest `/etc/passwd` or `/etc/group` read.
const MAX_DB_BYTES: u64 = 1 << 20;
/// Largest extension header (long name, PAX) skipped in a layer.
const MAX_EXTENSION: u64 = 1 << 20;

/// The parts of `User`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    user: String,
    group: Option<String>,
}

fn parse_spec(user: &str) -> Spec {
    match user.split_once(':') {
        Some((u, g)) => Spec {
            user: u.to_string(),
            group: Some(g.to_string()),
        },
        None => Spec {
            user: user.to_string(),
            group: None,
        },
    }
}

/// `(uid, gid)` of the image's user.
pub fn resolve(image: &Image, source: &Source, shown: &str) -> Result<(u32, u32), OciError> {
    let raw = image
        .config
        .config()
        .as_ref()
        .and_then(|c| c.user().clone())
        .unwrap_or_default();
    let spec = parse_spec(raw.trim());
    if spec.user.is_empty() || spec.user == "root" && spec.group.is_none() {
        return Ok((0, 0));
    }
    let uid_n = spec.user.parse::<u32>().ok();
    let gid_n = spec.group.as_deref().and_then(|g| g.parse::<u32>().ok());
    if let (Some(uid), Some(gid)) = (uid_n, gid_n) {
        return Ok((uid, gid));
    }
    log::info(format!(
        "the run image's user is {raw:?}, not UID:GID: looking it up in its /etc/passwd (downloads layers; `USER uid:gid` in the run image avoids it)"
    ));
    let (passwd, group) = find_databases(image, source)?;
    let passwd = passwd.unwrap_or_default();
    let group = group.unwrap_or_default();
    let entry = passwd_entry(&passwd, &spec.user, uid_n);
    let uid = match (uid_n, &entry) {
        (Some(uid), _) => uid,
        (None, Some((uid, _))) => *uid,
        (None, None) => {
            return Err(OciError::BadImage(format!(
                "run image {shown}: its user {:?} is not in its /etc/passwd",
                spec.user
            )))
        }
    };
    let gid = match (&spec.group, gid_n) {
        (_, Some(gid)) => gid,
        (Some(name), None) => group_gid(&group, name).ok_or_else(|| {
            OciError::BadImage(format!(
                "run image {shown}: its group {name:?} is not in its /etc/group"
            ))
        })?,
        (None, _) => entry.map_or(0, |(_, gid)| gid),
    };
    Ok((uid, gid))
}

/// `(uid, gid)` of `name` (or of the line with uid `uid`) in passwd text.
fn passwd_entry(passwd: &str, name: &str, uid: Option<u32>) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        let (u, g) = (f[2].parse::<u32>().ok()?, f[3].parse::<u32>().ok()?);
        (f[0] == name || uid == Some(u)).then_some((u, g))
    })
}

fn group_gid(group: &str, name: &str) -> Option<u32> {
    group.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok())?
    })
}

/// What a layer says about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    Content(String),
    /// Deleted by a whiteout (this layer or an opaque directory).
    Deleted,
}

/// `/etc/passwd` and `/etc/group` as the image sees them: the topmost
/// layer that has (or deletes) each decides.
fn find_databases(
    image: &Image,
    source: &Source,
) -> Result<(Option<String>, Option<String>), OciError> {
    let mut passwd: Option<Found> = None;
    let mut group: Option<Found> = None;
    for layer in image.manifest.layers().iter().rev() {
        if passwd.is_some() && group.is_some() {
            break;
        }
        let (p, g) = scan_layer(layer, source)?;
        if passwd.is_none() {
            passwd = p;
        }
        if group.is_none() {
            group = g;
        }
    }
    let content = |f: Option<Found>| match f {
        Some(Found::Content(s)) => Some(s),
        _ => None,
    };
    Ok((content(passwd), content(group)))
}

/// Stream one layer looking for `etc/passwd` and `etc/group`.
fn scan_layer(
    layer: &Descriptor,
    source: &Source,
) -> Result<(Option<Found>, Option<Found>), OciError> {
    let digest = layer.digest().to_string();
    let media = layer.media_type().to_string();
    let mut blob = source.blob(&digest)?;
    let mut verify = Verify::new(&mut blob, &digest, layer.size());
    let ctx = || format!("reading layer {digest}");
    let found = {
        let reader: Box<dyn Read + '_> = if media.ends_with("gzip") {
            Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
                &mut verify,
            )))
        } else if media.ends_with(".tar") {
            Box::new(&mut verify)
        } else {
            return Err(OciError::BadImage(format!(
                "layer {digest} has media type {media}; only tar and tar+gzip layers can be searched for /etc/passwd"
            )));
        };
        scan_entries(reader, &digest)?
    };
    // Read to the end, so the digest is checked: a layer that is not what
    // it claims must not decide who owns the app.
    std::io::copy(&mut verify, &mut std::io::sink()).map_err(|e| copy_error(e, ctx()))?;
    Ok(found)
}

type Databases = (Option<Found>, Option<Found>);

fn scan_entries(reader: Box<dyn Read + '_>, digest: &str) -> Result<Databases, OciError> {
    let ctx = || format!("reading layer {digest}");
    let mut archive = tar::Archive::new(reader);
    let mut passwd = None;
    let mut group = None;
    let entries = archive
        .entries()
        .map_err(|e| copy_error(e, ctx()))?
        .raw(true);
    for entry in entries {
        let mut entry = entry.map_err(|e| copy_error(e, ctx()))?;
        let kind = entry.header().entry_type();
        let size = entry.header().entry_size().unwrap_or(0);
        if matches!(
            kind,
            tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
                | tar::EntryType::XHeader
                | tar::EntryType::XGlobalHeader
        ) && size > MAX_EXTENSION
        {
            return Err(OciError::BadImage(format!(
                "layer {digest}: an extension header of {size} bytes"
            )));
        }
        let path = String::from_utf8_lossy(&entry.path_bytes()).to_string();
        let path = path.trim_start_matches("./").trim_start_matches('/');
        let slot = match path {
            "etc/passwd" => &mut passwd,
            "etc/group" => &mut group,
            "etc/.wh.passwd" => {
                passwd = Some(Found::Deleted);
                continue;
            }
            "etc/.wh.group" => {
                group = Some(Found::Deleted);
                continue;
            }
            "etc/.wh..wh..opq" | ".wh.etc" => {
                // Lower layers' /etc is hidden: what this layer has (if any) decides.
                passwd.get_or_insert(Found::Deleted);
                group.get_or_insert(Found::Deleted);
                continue;
            }
            _ => continue,
        };
        if !kind.is_file() || size > MAX_DB_BYTES {
            continue;
        }
        let mut text = String::new();
        (&mut entry)
            .take(MAX_DB_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| copy_error(e, ctx()))?;
        *slot = Some(Found::Content(text));
    }
    Ok((passwd, group))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nslug:x:1000:1001::/app:/bin/bash\n";
    const GROUP: &str = "root:x:0:\nslug:x:1001:\nstaff:x:50:\n";

    #[test]
    fn names_and_numbers() {
        assert_eq!(passwd_entry(PASSWD, "slug", None), Some((1000, 1001)));
        assert_eq!(passwd_entry(PASSWD, "1000", Some(1000)), Some((1000, 1001)));
        assert_eq!(passwd_entry(PASSWD, "nobody", None), None);
        assert_eq!(group_gid(GROUP, "staff"), Some(50));
        assert_eq!(group_gid(GROUP, "wheel"), None);
        assert_eq!(
            parse_spec("slug:staff"),
            Spec {
                user: "slug".into(),
                group: Some("staff".into())
            }
        );
    }
}
