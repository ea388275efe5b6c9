//! The compressed blocks of an app's last slug, kept for its next build.
//!
//! Packing compresses the tree in blocks (see [`crate::pgzip`]); a block's
//! compressed bytes depend only on its key, so the blocks of the last slug
//! make a warm rebuild cheap: a Node.js runtime or a virtualenv that did not
//! change is not compressed again, and the slug is the same bytes either
//! way. The blocks live in one file beside the app's cache dir
//! (`CACHE_DIR.slug-blocks`), outside the tree buildpacks see, owned by
//! slugbuilder's user and readable by it alone. A missing, foreign or
//! damaged file only costs a full compression.
//!
//! Format: `SLUGBLK1\n`, then records of a 32-byte key, a little-endian
//! u32 length and that many bytes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;

use crate::pgzip::{BlockCache, BlockKey, BLOCK_SIZE};

const MAGIC: &[u8] = b"SLUGBLK1\n";
/// No compressed block is larger than this (deflate never expands a block
/// by much); a larger length means a damaged file.
const MAX_RECORD: u32 = (2 * BLOCK_SIZE) as u32;

/// The block file of the app whose cache dir is `cache_dir`.
pub fn path_for(cache_dir: &Path) -> Option<PathBuf> {
    let name = cache_dir.file_name()?;
    let mut file = name.to_os_string();
    file.push(".slug-blocks");
    Some(cache_dir.with_file_name(file))
}

/// Where each block of the last slug is in its file: (offset, length).
type Index = HashMap<BlockKey, (u64, u32)>;

/// Last slug's blocks (read), and this one's (being written).
#[derive(Debug)]
pub struct BlockFile {
    dir: OwnedFd,
    name: OsString,
    temp: OsString,
    old: Option<(File, Index)>,
    new: Mutex<New>,
    hits: std::sync::atomic::AtomicUsize,
    blocks: std::sync::atomic::AtomicUsize,
    committed: bool,
}

/// This run's blocks. The new file is only started at the first block the
/// last slug did not have: a warm rebuild whose blocks were all there
/// before keeps the old file as it is rather than writing it again.
#[derive(Debug, Default)]
struct New {
    /// Blocks of this run that are in the old file, while no new file is
    /// being written.
    in_old: std::collections::HashSet<BlockKey>,
    writer: Option<BufWriter<File>>,
    /// Writing failed (out of disk, say): this run's blocks are not kept.
    failed: bool,
}

impl BlockFile {
    /// Open the block file at `path` (its directory is the operator's) and
    /// start the new one beside it.
    pub fn open(path: &Path) -> io::Result<Self> {
        let parent = path
            .parent()
            .ok_or_else(|| io::Error::other("no parent directory"))?;
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::other("no file name"))?
            .to_os_string();
        let dir = crate::tree::open_dir(parent)?;
        let old = match crate::rootdir::open_regular(dir.as_fd(), &name) {
            Ok((file, st))
                if st.st_uid == nix::unistd::geteuid().as_raw()
                    && st.st_nlink == 1
                    && st.st_mode & 0o077 == 0 =>
            {
                Some(index(file))
            }
            _ => None,
        };
        let mut temp = name.clone();
        temp.push(format!(".new.{}", std::process::id()));
        Ok(Self {
            dir,
            name,
            temp,
            old,
            new: Mutex::new(New::default()),
            hits: Default::default(),
            blocks: Default::default(),
            committed: false,
        })
    }

    /// Start the new file (exclusively, beside the old one) with the
    /// blocks of this run that only the old file holds so far.
    fn start_new(
        &self,
        pending: &std::collections::HashSet<BlockKey>,
    ) -> io::Result<BufWriter<File>> {
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let create = || {
            openat(
                &self.dir,
                self.temp.as_os_str(),
                flags,
                Mode::from_bits_truncate(0o600),
            )
        };
        let fd = match create() {
            Err(Errno::EEXIST) => {
                let _ = nix::unistd::unlinkat(
                    &self.dir,
                    self.temp.as_os_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                );
                create()?
            }
            other => other?,
        };
        let mut new = BufWriter::with_capacity(1 << 20, File::from(fd));
        new.write_all(MAGIC)?;
        for key in pending {
            let bytes = self
                .read_old(key)
                .ok_or_else(|| io::Error::other("the last slug's blocks could not be read"))?;
            write_record(&mut new, key, &bytes)?;
        }
        Ok(new)
    }

    fn read_old(&self, key: &BlockKey) -> Option<Vec<u8>> {
        let (file, index) = self.old.as_ref()?;
        let &(at, len) = index.get(key)?;
        let mut bytes = vec![0u8; len as usize];
        file.read_exact_at(&mut bytes, at).ok()?;
        Some(bytes)
    }

    /// How many blocks the last slug left.
    pub fn known(&self) -> usize {
        self.old.as_ref().map_or(0, |(_, index)| index.len())
    }

    /// (blocks taken from the last slug, blocks of this one) so far.
    pub fn reuse(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering;
        (
            self.hits.load(Ordering::SeqCst),
            self.blocks.load(Ordering::SeqCst),
        )
    }

    /// This run's blocks replace the last one's (when they differ).
    pub fn commit(mut self) -> io::Result<()> {
        let mut new = std::mem::take(&mut *self.new.lock().unwrap_or_else(|e| e.into_inner()));
        if new.failed {
            return Err(io::Error::other("recording the slug's blocks failed"));
        }
        let writer = match new.writer.take() {
            Some(writer) => writer,
            None if new.in_old.len() == self.known() => {
                // Every block is in the old file, and it holds no other:
                // it is already this slug's.
                self.committed = true;
                return Ok(());
            }
            None => self.start_new(&new.in_old)?,
        };
        writer.into_inner().map_err(|e| e.into_error())?;
        nix::fcntl::renameat(
            &self.dir,
            self.temp.as_os_str(),
            &self.dir,
            self.name.as_os_str(),
        )?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for BlockFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = nix::unistd::unlinkat(
                &self.dir,
                self.temp.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// Read the record headers (not the blocks) into an index; stop at the
/// first thing that does not look right.
fn index(mut file: File) -> (File, Index) {
    let mut map = HashMap::new();
    let mut magic = [0u8; MAGIC.len()];
    if file.read_exact(&mut magic).is_err() || magic != MAGIC {
        return (file, map);
    }
    let mut at = MAGIC.len() as u64;
    let mut head = [0u8; 36];
    loop {
        if file.read_exact(&mut head).is_err() {
            break;
        }
        let key: BlockKey = head[..32].try_into().expect("32 bytes");
        let len = u32::from_le_bytes(head[32..].try_into().expect("4 bytes"));
        if len > MAX_RECORD {
            break;
        }
        at += 36;
        map.insert(key, (at, len));
        at += u64::from(len);
        if file.seek(SeekFrom::Start(at)).is_err() {
            break;
        }
    }
    (file, map)
}

impl BlockCache for BlockFile {
    fn get(&self, key: &BlockKey) -> Option<Vec<u8>> {
        let bytes = self.read_old(key)?;
        self.hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(bytes)
    }

    fn record(&self, key: &BlockKey, compressed: &[u8]) {
        self.blocks
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut guard = self.new.lock().unwrap_or_else(|e| e.into_inner());
        let new = &mut *guard;
        if new.failed {
            return;
        }
        if new.writer.is_none() {
            if self
                .old
                .as_ref()
                .is_some_and(|(_, index)| index.contains_key(key))
            {
                new.in_old.insert(*key);
                return;
            }
            match self.start_new(&new.in_old) {
                Ok(writer) => {
                    new.writer = Some(writer);
                    new.in_old.clear();
                }
                Err(_) => {
                    new.failed = true;
                    return;
                }
            }
        }
        let writer = new.writer.as_mut().expect("started above");
        if write_record(writer, key, compressed).is_err() {
            // Out of disk, say: this run's blocks will not be kept.
            new.failed = true;
            new.writer = None;
        }
    }
}

fn write_record(out: &mut impl Write, key: &BlockKey, compressed: &[u8]) -> io::Result<()> {
    let len = u32::try_from(compressed.len()).map_err(|_| io::Error::other("block too large"))?;
    out.write_all(key)?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(compressed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn gz(data: &[u8], cache: Arc<BlockFile>) -> Vec<u8> {
        let mut w = crate::pgzip::ParallelGzWriter::with_cache(
            Vec::new(),
            6,
            2,
            Some(cache as Arc<dyn BlockCache>),
        )
        .unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn data() -> Vec<u8> {
        (0..3 * BLOCK_SIZE as u32 + 17)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 % 7 + b'a')
            .collect()
    }

    #[test]
    fn a_second_pack_reuses_the_first_ones_blocks_and_gives_the_same_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = path_for(&tmp.path().join("cache")).unwrap();
        let first = Arc::new(BlockFile::open(&path).unwrap());
        assert_eq!(first.known(), 0);
        let one = gz(&data(), Arc::clone(&first));
        Arc::try_unwrap(first).unwrap().commit().unwrap();
        let second = Arc::new(BlockFile::open(&path).unwrap());
        assert_eq!(second.known(), 4);
        let two = gz(&data(), Arc::clone(&second));
        assert_eq!(one, two);
        Arc::try_unwrap(second).unwrap().commit().unwrap();
        // Only the blob and no temporary file remain.
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [OsString::from("cache.slug-blocks")]);
    }

    #[test]
    fn an_unchanged_slug_leaves_the_file_alone_and_a_changed_one_keeps_what_it_reuses() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = path_for(&tmp.path().join("cache")).unwrap();
        let pack = |data: &[u8]| {
            let file = Arc::new(BlockFile::open(&path).unwrap());
            let out = gz(data, Arc::clone(&file));
            let reuse = file.reuse();
            Arc::try_unwrap(file).unwrap().commit().unwrap();
            (out, reuse)
        };
        let data = data();
        let (first, _) = pack(&data);
        let inode = std::fs::metadata(&path).unwrap().ino();
        // The same slug again: every block reused, the file not rewritten.
        let (again, reuse) = pack(&data);
        assert_eq!((again, reuse), (first.clone(), (4, 4)));
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
        // A slug with one more block: a new file, with the blocks this slug
        // took from the old one as well as the new block.
        let mut longer = data.clone();
        longer.extend(std::iter::repeat_n(b'z', BLOCK_SIZE));
        let (grown, reuse) = pack(&longer);
        assert_eq!(reuse, (3, 5));
        assert_ne!(std::fs::metadata(&path).unwrap().ino(), inode);
        assert_eq!(BlockFile::open(&path).unwrap().known(), 5);
        let (grown_again, reuse) = pack(&longer);
        assert_eq!((grown_again, reuse), (grown, (5, 5)));
        // A shorter slug (its first block the same, its last one new): only
        // its own blocks are kept.
        let (_, reuse) = pack(&data[..BLOCK_SIZE]);
        assert_eq!(reuse, (1, 2));
        assert_eq!(BlockFile::open(&path).unwrap().known(), 2);
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [OsString::from("cache.slug-blocks")]);
    }

    #[test]
    fn a_foreign_or_damaged_file_is_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = path_for(&tmp.path().join("cache")).unwrap();
        std::fs::write(&path, b"SLUGBLK1\n\xff\xff").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(BlockFile::open(&path).unwrap().known(), 0);
        // Readable by others: not ours to trust.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(BlockFile::open(&path).unwrap().known(), 0);
        // A link is never followed.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        assert_eq!(BlockFile::open(&path).unwrap().known(), 0);
    }
}
