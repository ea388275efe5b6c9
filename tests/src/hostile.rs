//! Hostile tar archives, built byte by byte in code (no opaque blobs), and a
//! victim directory whose contents are compared before and after.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tar::{EntryType, Header};

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

    pub fn special(mut self, name: &str, kind: EntryType) -> Self {
        self.push(&Self::header(name.as_bytes(), kind, 0, 0o666, b""), b"");
        self
    }

    /// A PAX extended header (`x`) with the given records, for the next entry.
    pub fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
        let mut data = Vec::new();
        for (key, value) in records {
            // "<len> key=value\n" where len counts itself.
            let body = 1 + key.len() + 1 + value.len() + 1;
            let mut len = body + 1;
            while len.to_string().len() + body != len {
                len = len.to_string().len() + body;
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
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
/// size, mtime and content (or link target). Links are not followed.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let meta = path.symlink_metadata().unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let desc = if meta.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                format!("dir {:o}", meta.mode())
            } else {
                format!(
                    "file {:o} {} {} {:?}",
                    meta.mode(),
                    meta.len(),
                    meta.mtime(),
                    std::fs::read(&path).unwrap()
                )
            };
            out.insert(rel, desc);
            if meta.is_dir() && !meta.file_type().is_symlink() {
                walk(root, &path, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
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
