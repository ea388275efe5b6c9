//! Hostile tar archives, built byte by byte in code (no opaque blobs), and a
//! victim directory whose contents are compared before and after.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tar::{EntryType, Header};

/// PAX extended header records, `"<len> key=value\n"` each, where len
/// counts the whole record including its own digits: the one encoder of
/// the tests and fuzz targets (what `archive::parse_pax` must read back).
pub fn pax_records<K: AsRef<str>, V: AsRef<[u8]>>(records: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let (key, value) = (key.as_ref(), value.as_ref());
        let body = 1 + key.len() + 1 + value.len() + 1;
        let mut len = body + 1;
        while len.to_string().len() + body != len {
            len = len.to_string().len() + body;
        }
        out.extend_from_slice(format!("{len} {key}=").as_bytes());
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

/// A tar archive assembled from raw headers: names, link targets, PAX and
/// GNU extension records are written as given, with no sanitising.
#[derive(Debug, Default, Clone)]
pub struct RawTar {
    bytes: Vec<u8>,
}

impl RawTar {
    pub fn new() -> Self {
        Self::default()
    }

    fn header(name: &[u8], kind: EntryType, size: u64, mode: u32, link: &[u8]) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(1_000_000);
        {
            let old = h.as_old_mut();
            let n = name.len().min(old.name.len());
            old.name[..n].copy_from_slice(&name[..n]);
            let l = link.len().min(old.linkname.len());
            old.linkname[..l].copy_from_slice(&link[..l]);
        }
        h.set_cksum();
        h
    }

    fn push(&mut self, header: &Header, data: &[u8]) {
        self.bytes.extend_from_slice(header.as_bytes());
        self.bytes.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.bytes.extend(std::iter::repeat_n(0u8, pad));
    }

    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.file_mode(name, data, 0o644)
    }

    /// A regular file; names over 100 bytes get a GNU long name first.
    pub fn file_mode(mut self, name: &str, data: &[u8], mode: u32) -> Self {
        if name.len() > 100 {
            self = self.long_name(name);
        }
        self.push(
            &Self::header(
                name.as_bytes(),
                EntryType::Regular,
                data.len() as u64,
                mode,
                b"",
            ),
            data,
        );
        self
    }

    pub fn dir(mut self, name: &str) -> Self {
        self.push(
            &Self::header(name.as_bytes(), EntryType::Directory, 0, 0o755, b""),
            b"",
        );
        self
    }

    pub fn symlink(mut self, name: &str, target: &str) -> Self {
        self.push(
            &Self::header(
                name.as_bytes(),
                EntryType::Symlink,
                0,
                0o777,
                target.as_bytes(),
            ),
            b"",
        );
        self
    }

    pub fn hardlink(mut self, name: &str, target: &str) -> Self {
        self.push(
            &Self::header(
                name.as_bytes(),
                EntryType::Link,
                0,
                0o644,
                target.as_bytes(),
            ),
            b"",
        );
        self
    }

    /// A regular file whose header names an owner (uid, gid, user and
    /// group names), which unpacking must ignore.
    pub fn file_owned(mut self, name: &str, data: &[u8], uid: u64, gid: u64) -> Self {
        let mut h = Self::header(
            name.as_bytes(),
            EntryType::Regular,
            data.len() as u64,
            0o644,
            b"",
        );
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_username("mallory").unwrap();
        h.set_groupname("wheel").unwrap();
        h.set_cksum();
        self.push(&h, data);
        self
    }

    pub fn special(mut self, name: &str, kind: EntryType) -> Self {
        self.push(&Self::header(name.as_bytes(), kind, 0, 0o666, b""), b"");
        self
    }

    /// A PAX extended header (`x`) with the given records, for the next entry.
    pub fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
        let data = pax_records(records);
        self.push(
            &Self::header(
                b"././@PaxHeader",
                EntryType::XHeader,
                data.len() as u64,
                0o644,
                b"",
            ),
            &data,
        );
        self
    }

    /// A raw PAX header of `size` bytes of junk records (for size limits).
    pub fn huge_pax(mut self, size: usize) -> Self {
        let data = vec![b'a'; size];
        self.push(
            &Self::header(
                b"././@PaxHeader",
                EntryType::XHeader,
                size as u64,
                0o644,
                b"",
            ),
            &data,
        );
        self
    }

    /// A GNU long name (`L`) for the next entry.
    pub fn long_name(mut self, name: &str) -> Self {
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        self.push(
            &Self::header(
                b"././@LongLink",
                EntryType::GNULongName,
                data.len() as u64,
                0o644,
                b"",
            ),
            &data,
        );
        self
    }

    /// A regular-file header claiming `size` bytes, with no data after it.
    pub fn file_header_only(mut self, name: &str, size: u64) -> Self {
        let h = Self::header(name.as_bytes(), EntryType::Regular, size, 0o644, b"");
        self.bytes.extend_from_slice(h.as_bytes());
        self
    }

    /// End-of-archive marker.
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes.extend(std::iter::repeat_n(0u8, 1024));
        self.bytes
    }

    /// The bytes so far, without the end marker (for truncation cases).
    pub fn unfinished(self) -> Vec<u8> {
        self.bytes
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// Everything observable about a directory tree: per path, type, mode,
/// owner, size, link count, mtime and content (or link target). Links are
/// not followed. `skip` names paths (relative to `root`) left out with
/// everything beneath them.
pub fn snapshot_except(root: &Path, skip: &[&Path]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, skip: &[&Path], out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let rel_path = path.strip_prefix(root).unwrap();
            if skip.contains(&rel_path) {
                continue;
            }
            let meta = path.symlink_metadata().unwrap();
            let rel = rel_path.display().to_string();
            let owner = format!("{}:{}", meta.uid(), meta.gid());
            let desc = if meta.file_type().is_symlink() {
                format!(
                    "link {owner} -> {}",
                    std::fs::read_link(&path).unwrap().display()
                )
            } else if meta.is_dir() {
                // A directory's mtime changes with its entries, which the
                // names already show.
                format!("dir {:o} {owner}", meta.mode())
            } else if meta.is_file() {
                format!(
                    "file {:o} {owner} size {} links {} mtime {} {:?}",
                    meta.mode(),
                    meta.len(),
                    meta.nlink(),
                    meta.mtime(),
                    String::from_utf8_lossy(&std::fs::read(&path).unwrap())
                )
            } else {
                format!("special {:o} {owner} rdev {}", meta.mode(), meta.rdev())
            };
            out.insert(rel, desc);
            if meta.is_dir() && !meta.file_type().is_symlink() {
                walk(root, &path, skip, out);
            }
        }
    }
    walk(root, root, skip, &mut out);
    out
}

/// [`snapshot_except`] with nothing left out.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    snapshot_except(root, &[])
}

/// A victim directory with a file and a subdirectory, beside where the
/// archive is unpacked.
pub fn make_victim(dir: &Path) -> std::path::PathBuf {
    let victim = dir.join("victim");
    std::fs::create_dir_all(victim.join("sub")).unwrap();
    std::fs::write(victim.join("file"), "original").unwrap();
    std::fs::write(victim.join("sub/inner"), "inner").unwrap();
    victim
}

/// The one oracle of the hostile tests: a scratch tree whose every byte
/// outside the destination is compared before and after.
///
/// ```text
/// <root>/                     "above": the victim tree's top
///   above.txt, above/...      files and a directory above the work dir
///   work/                     where the destination is made
///     victim/                 "beside": file, sub/inner, a symlink, an
///                             executable, a hard link pair
///     app/ or slugbuilder-*/  the destination (left out of the snapshot)
/// ```
///
/// [`Scene::assert_untouched`] checks that every entry outside the
/// destination has the same name, type, mode, owner, size, link count,
/// mtime, content and link target as before, and that nothing appeared
/// anywhere in the tree outside the destination.
#[derive(Debug)]
pub struct Scene {
    tmp: tempfile::TempDir,
    before: BTreeMap<String, String>,
    /// Paths under `root` that belong to the destination.
    destinations: Vec<std::path::PathBuf>,
}

impl Default for Scene {
    fn default() -> Self {
        Self::new()
    }
}

impl Scene {
    pub fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        // Traversable by an unprivileged build or run user.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = tmp.path();
        std::fs::write(root.join("above.txt"), "above the work dir").unwrap();
        std::fs::create_dir_all(root.join("above/deeper")).unwrap();
        std::fs::write(root.join("above/deeper/file"), "deep above").unwrap();
        let work = root.join("work");
        std::fs::create_dir(&work).unwrap();
        let victim = make_victim(&work);
        std::os::unix::fs::symlink("file", victim.join("link")).unwrap();
        std::fs::write(victim.join("run.sh"), "#!/bin/sh\necho trusted\n").unwrap();
        std::fs::set_permissions(
            victim.join("run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(victim.join("pair-a"), "linked").unwrap();
        std::fs::hard_link(victim.join("pair-a"), victim.join("pair-b")).unwrap();
        let before = snapshot(root);
        Self {
            tmp,
            before,
            destinations: vec![std::path::PathBuf::from("work/app")],
        }
    }

    /// The top of the scene ("above").
    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// The work dir: slugbuilder's `--work-dir`, the parent of the app dir.
    pub fn work(&self) -> std::path::PathBuf {
        self.root().join("work")
    }

    /// The victim directory beside the destination.
    pub fn victim(&self) -> std::path::PathBuf {
        self.work().join("victim")
    }

    /// slugrunner's app dir (the destination, created by the tool).
    pub fn app(&self) -> std::path::PathBuf {
        self.work().join("app")
    }

    /// Leave `rel` (a path under the root) out of the comparison: another
    /// destination a test made on purpose.
    pub fn also_destination(&mut self, rel: &str) {
        self.destinations.push(std::path::PathBuf::from(rel));
    }

    /// Everything outside the destinations, now.
    pub fn outside(&self) -> BTreeMap<String, String> {
        let skip: Vec<&Path> = self.destinations.iter().map(|p| p.as_path()).collect();
        snapshot_except(self.root(), &skip)
    }

    /// Panic (naming `what`) unless everything outside the destinations is
    /// exactly as it was when the scene was made.
    pub fn assert_untouched(&self, what: &str) {
        let after = self.outside();
        let mut before = self.before.clone();
        for dest in &self.destinations {
            before.remove(&dest.display().to_string());
        }
        if after != before {
            let mut diff = String::new();
            for (k, v) in &before {
                match after.get(k) {
                    None => diff.push_str(&format!("  removed {k}: {v}\n")),
                    Some(a) if a != v => diff.push_str(&format!("  changed {k}: {v} -> {a}\n")),
                    _ => {}
                }
            }
            for (k, v) in &after {
                if !before.contains_key(k) {
                    diff.push_str(&format!("  appeared {k}: {v}\n"));
                }
            }
            panic!("{what}: the tree outside the destination changed:\n{diff}");
        }
    }
}
