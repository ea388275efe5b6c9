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

use std::cell::RefCell;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::rc::Rc;

use oci_spec::image::Descriptor;

use super::store::{copy_error, Image, Source, Verify};
use super::OciError;
use slug_shared::archive::{self, ArchiveError, Limits, TarEntry};
use slug_shared::log;

/// Largest `/etc/passwd` or `/etc/group` read.
const MAX_DB_BYTES: u64 = 1 << 20;

/// What a run image's layer may make the scan do. Only the two files are
/// read (each at most [`MAX_DB_BYTES`]) and nothing is kept per entry, so
/// the number of entries and their bytes are not bounded here (the layer
/// is what the image's digest says, and the download is under the
/// deadline); what one entry may cost is: an extension header is at most
/// 1 MiB, a path at most `PATH_MAX`, which no runtime could create anyway.
const LAYER_LIMITS: Limits = Limits {
    max_bytes: u64::MAX,
    max_entries: u64::MAX,
    max_path_len: 4096,
    max_depth: 2048,
    max_extension_header: 1 << 20,
};

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

/// Why the scan of one layer stopped.
enum ScanError {
    Archive(ArchiveError),
    Oci(OciError),
}

impl From<ArchiveError> for ScanError {
    fn from(e: ArchiveError) -> Self {
        ScanError::Archive(e)
    }
}

fn scan_entries(reader: Box<dyn Read + '_>, digest: &str) -> Result<Databases, OciError> {
    let ctx = || format!("reading layer {digest}");
    let kept = Rc::new(RefCell::new(None));
    let reader = Box::new(KeepError {
        inner: reader,
        kept: Rc::clone(&kept),
    });
    let mut passwd = None;
    let mut group = None;
    let read = archive::scan_entries(reader, &LAYER_LIMITS, |entry| {
        let slot = match entry.comps.join(std::ffi::OsStr::new("/")).as_bytes() {
            b"etc/passwd" => &mut passwd,
            b"etc/group" => &mut group,
            b"etc/.wh.passwd" => {
                passwd = Some(Found::Deleted);
                return Ok(());
            }
            b"etc/.wh.group" => {
                group = Some(Found::Deleted);
                return Ok(());
            }
            b"etc/.wh..wh..opq" | b".wh.etc" => {
                // Lower layers' /etc is hidden: what this layer has (if any) decides.
                passwd.get_or_insert(Found::Deleted);
                group.get_or_insert(Found::Deleted);
                return Ok(());
            }
            _ => return Ok(()),
        };
        // A link is never followed, and a larger file is not read.
        if !entry.kind.is_file() || entry.size > MAX_DB_BYTES {
            return Ok(());
        }
        *slot = Some(Found::Content(read_database(entry, &ctx)?));
        Ok(())
    });
    // The layer's own read errors (network, digest, gzip, a stop) as
    // they were, before what the tar reader made of them.
    if let Some(source) = kept.borrow_mut().take() {
        return Err(copy_error(source, ctx()));
    }
    match read {
        Ok(_) => Ok((passwd, group)),
        Err(ScanError::Oci(e)) => Err(e),
        Err(ScanError::Archive(ArchiveError::Stopped(stop))) => Err(OciError::Stopped(stop)),
        Err(ScanError::Archive(e)) => Err(OciError::BadImage(format!(
            "layer {digest}: {}",
            log::error_line(&e)
        ))),
    }
}

/// The text of `/etc/passwd` or `/etc/group` (its size already checked).
fn read_database(entry: &mut TarEntry<'_>, ctx: &dyn Fn() -> String) -> Result<String, ScanError> {
    let mut text = String::new();
    match entry.data.read_to_string(&mut text) {
        Ok(_) => Ok(text),
        Err(e) => Err(match entry.data.input_error(entry.path, e) {
            Ok(input) => ScanError::Archive(input),
            // Not UTF-8.
            Err(e) => ScanError::Oci(copy_error(e, ctx())),
        }),
    }
}

/// A layer's reader that keeps the first error it returned (handing the
/// tar reader a copy): network failures, digest mismatches and stops
/// reach the user as what they are, not as a corrupt archive.
struct KeepError<'r> {
    inner: Box<dyn Read + 'r>,
    kept: Rc<RefCell<Option<io::Error>>>,
}

impl Read for KeepError<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::Interrupted {
                return e;
            }
            let copy = io::Error::new(e.kind(), e.to_string());
            self.kept.borrow_mut().get_or_insert(e);
            copy
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nslug:x:1000:1001::/app:/bin/bash\n";
    const GROUP: &str = "root:x:0:\nslug:x:1001:\nstaff:x:50:\n";

    /// One tar entry, header written by hand where the tar crate's builder
    /// would refuse (a corrupt mode).
    fn entry(out: &mut Vec<u8>, path: &str, kind: tar::EntryType, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        if kind == tar::EntryType::Symlink {
            h.set_link_name("../tmp/passwd").unwrap();
        }
        h.set_cksum();
        append(out, &h, data);
    }

    fn append(out: &mut Vec<u8>, h: &tar::Header, data: &[u8]) {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    fn end(mut out: Vec<u8>) -> Vec<u8> {
        out.extend_from_slice(&[0; 1024]);
        out
    }

    fn scan(layer: Vec<u8>) -> Result<Databases, OciError> {
        scan_entries(Box::new(io::Cursor::new(layer)), "sha256:test")
    }

    fn content(s: &str) -> Option<Found> {
        Some(Found::Content(s.into()))
    }

    #[test]
    fn finds_the_databases_however_named() {
        let mut t = Vec::new();
        entry(&mut t, "./etc/", tar::EntryType::Directory, b"");
        entry(
            &mut t,
            "./etc//passwd",
            tar::EntryType::Regular,
            PASSWD.as_bytes(),
        );
        entry(
            &mut t,
            "/etc/group",
            tar::EntryType::Regular,
            GROUP.as_bytes(),
        );
        assert_eq!(scan(end(t)).unwrap(), (content(PASSWD), content(GROUP)));
    }

    #[test]
    fn whiteouts_and_opaque_directories_delete() {
        let mut t = Vec::new();
        entry(&mut t, "etc/.wh.passwd", tar::EntryType::Regular, b"");
        entry(
            &mut t,
            "etc/group",
            tar::EntryType::Regular,
            GROUP.as_bytes(),
        );
        assert_eq!(
            scan(end(t)).unwrap(),
            (Some(Found::Deleted), content(GROUP))
        );
        let mut t = Vec::new();
        entry(&mut t, "etc/.wh..wh..opq", tar::EntryType::Regular, b"");
        entry(
            &mut t,
            "etc/group",
            tar::EntryType::Regular,
            GROUP.as_bytes(),
        );
        assert_eq!(
            scan(end(t)).unwrap(),
            (Some(Found::Deleted), content(GROUP))
        );
    }

    /// Devices and FIFOs are common in run images: skipped, not refused;
    /// empty layers and layers without the end marker exist too.
    #[test]
    fn real_layers_are_not_refused() {
        let mut t = Vec::new();
        entry(&mut t, "dev/null", tar::EntryType::Char, b"");
        entry(&mut t, "run/initctl", tar::EntryType::Fifo, b"");
        entry(
            &mut t,
            "etc/passwd",
            tar::EntryType::Regular,
            PASSWD.as_bytes(),
        );
        assert_eq!(scan(t).unwrap(), (content(PASSWD), None));
        assert_eq!(scan(Vec::new()).unwrap(), (None, None));
        assert_eq!(scan(end(Vec::new())).unwrap(), (None, None));
    }

    /// A link is not followed, a huge file not read: the layer says
    /// nothing about that file (as before the one reader).
    #[test]
    fn links_and_huge_files_are_not_read() {
        let mut t = Vec::new();
        entry(&mut t, "etc/passwd", tar::EntryType::Symlink, b"");
        let huge = vec![b'x'; MAX_DB_BYTES as usize + 1];
        entry(&mut t, "etc/group", tar::EntryType::Regular, &huge);
        assert_eq!(scan(end(t)).unwrap(), (None, None));
    }

    /// Stricter than the old loop: a corrupt mode anywhere in the layer is
    /// one clear error naming the layer (the old loop ignored modes).
    #[test]
    fn a_corrupt_mode_is_one_clear_error() {
        let mut h = tar::Header::new_gnu();
        h.set_path("usr/bin/x").unwrap();
        h.set_size(0);
        h.as_old_mut().mode = *b"zzzzzzz\0";
        h.set_cksum();
        let mut t = Vec::new();
        append(&mut t, &h, b"");
        let err = scan(end(t)).unwrap_err();
        let OciError::BadImage(msg) = &err else {
            panic!("{err:?}")
        };
        assert!(
            msg.starts_with("layer sha256:test: corrupt archive:"),
            "{msg}"
        );
        assert!(msg.contains("unreadable mode"), "{msg}");
    }

    #[test]
    fn a_huge_extension_header_is_refused() {
        let mut h = tar::Header::new_ustar();
        h.set_path("././@PaxHeader").unwrap();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size((1 << 20) + 1);
        h.set_cksum();
        let mut t = h.as_bytes().to_vec();
        t.resize(512 + (1 << 20) + 512, b'0');
        let err = scan(end(t)).unwrap_err();
        assert!(
            matches!(&err, OciError::BadImage(m) if m.contains("extension header")),
            "{err:?}"
        );
    }

    /// The layer's own read error stays an I/O error (not "corrupt"), as
    /// does a database that is not UTF-8.
    #[test]
    fn input_errors_stay_what_they_were() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
            }
        }
        let err = scan_entries(Box::new(Failing), "sha256:test").unwrap_err();
        assert!(
            matches!(&err, OciError::Io { source, .. } if source.kind() == io::ErrorKind::ConnectionReset),
            "{err:?}"
        );
        let mut t = Vec::new();
        entry(&mut t, "etc/passwd", tar::EntryType::Regular, b"\xff\xfe");
        let err = scan(end(t)).unwrap_err();
        assert!(matches!(&err, OciError::Io { .. }), "{err:?}");
    }

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
