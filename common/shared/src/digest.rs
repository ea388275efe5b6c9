//! The SHA-256 and the size of a byte stream as it passes through a reader
//! or a writer: the slug as it is written, an image layer and its
//! uncompressed tar, a buildpack tarball as it is downloaded.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// `inner`, with a running SHA-256 and byte count of what went through.
#[derive(Debug)]
pub struct Hashed<T> {
    inner: T,
    hasher: Sha256,
    bytes: u64,
    /// A writer fails (`FileTooLarge`) rather than go past this many bytes.
    limit: u64,
}

impl<T> Hashed<T> {
    pub fn new(inner: T) -> Self {
        Self::with_limit(inner, u64::MAX)
    }

    /// A writer that refuses to write past `limit` bytes: a slug over the
    /// hard limit fails as soon as it gets there, not after filling the disk.
    pub fn with_limit(inner: T, limit: u64) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
            limit,
        }
    }

    /// Bytes through so far.
    pub fn size(&self) -> u64 {
        self.bytes
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// The inner reader or writer, the byte count and the SHA-256 in
    /// lowercase hex.
    pub fn finish(self) -> (T, u64, String) {
        (
            self.inner,
            self.bytes,
            format!("{:x}", self.hasher.finalize()),
        )
    }
}

impl<W: Write> Write for Hashed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.saturating_add(buf.len() as u64) > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "over the size limit",
            ));
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn reading_and_writing_give_the_same_digest_and_size() {
        let mut out = Hashed::new(Vec::new());
        out.write_all(b"abc").unwrap();
        assert_eq!(out.finish(), (b"abc".to_vec(), 3, ABC.to_string()));
        let mut input = Hashed::new(&b"abc"[..]);
        io::copy(&mut input, &mut io::sink()).unwrap();
        let (_, bytes, digest) = input.finish();
        assert_eq!((bytes, digest.as_str()), (3, ABC));
    }

    #[test]
    fn a_writer_stops_at_its_limit_without_writing_past_it() {
        let mut out = Hashed::with_limit(Vec::new(), 4);
        out.write_all(b"abc").unwrap();
        let err = out.write_all(b"de").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(out.size(), 3);
        assert_eq!(out.finish().0, b"abc");
    }
}
