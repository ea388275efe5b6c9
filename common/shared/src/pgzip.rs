//! Parallel, deterministic gzip compression (the pigz technique).
//!
//! The input is cut into fixed-size blocks; each block is deflated on a
//! worker thread as raw deflate primed with the previous block's last 32 KiB
//! (so matches across block boundaries are not lost) and ended with a sync
//! flush, which leaves it byte-aligned; the blocks are concatenated in order
//! into ONE standard gzip member with a combined CRC-32. The output depends
//! only on the input, the level and the block size, never on the number of
//! threads or their timing, so slugs stay reproducible. Memory is bounded by
//! the blocks in flight.
//!
//! A [`BlockCache`] makes a warm rebuild cheap: a block's compressed bytes
//! depend only on its [`block_key`] (level, dictionary, data, whether it is
//! the last), so a block an earlier run compressed is taken from the cache
//! instead of compressed again, and the output is the same bytes either
//! way. Slugs are packed in sorted order, so a runtime or a virtualenv
//! under `.heroku/` comes first and stays block-aligned when the app's own
//! files change.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Input bytes per block.
pub const BLOCK_SIZE: usize = 256 * 1024;
/// Deflate's window: how much of the previous block primes the next.
const DICT_SIZE: usize = 32 * 1024;

struct Job {
    index: u64,
    dict: Vec<u8>,
    data: Vec<u8>,
    last: bool,
}

/// What identifies a block's compressed bytes.
pub type BlockKey = [u8; 32];

/// Compressed blocks of earlier runs, and a record of this run's.
pub trait BlockCache: Send + Sync + std::fmt::Debug {
    /// The compressed bytes of the block with this key, if known.
    fn get(&self, key: &BlockKey) -> Option<Vec<u8>>;
    /// Remember a block of this run (hit or not).
    fn record(&self, key: &BlockKey, compressed: &[u8]);
}

/// The key of a block: a hash of everything its compressed bytes depend on,
/// including the version of this code (a new deflate could give other,
/// equally valid bytes).
pub fn block_key(level: Compression, dict: &[u8], data: &[u8], last: bool) -> BlockKey {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"slug-pgzip-v1\0");
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update([level.level() as u8, u8::from(last)]);
    h.update((dict.len() as u64).to_le_bytes());
    h.update(dict);
    h.update(data);
    h.finalize().into()
}

/// Compress one block, through the cache when there is one.
fn cached_block(
    cache: Option<&dyn BlockCache>,
    level: Compression,
    dict: &[u8],
    data: &[u8],
    last: bool,
) -> io::Result<(Vec<u8>, Crc)> {
    let Some(cache) = cache else {
        return compress_block(level, dict, data, last);
    };
    let key = block_key(level, dict, data, last);
    let (bytes, crc) = match cache.get(&key) {
        Some(bytes) => {
            let mut crc = Crc::new();
            crc.update(data);
            (bytes, crc)
        }
        None => compress_block(level, dict, data, last)?,
    };
    cache.record(&key, &bytes);
    Ok((bytes, crc))
}

type Done = (u64, io::Result<(Vec<u8>, Crc)>);

/// A `Write` that gzip-compresses on worker threads. Call [`finish`] to
/// write the trailer; dropping it without finishing leaves a truncated stream.
///
/// [`finish`]: ParallelGzWriter::finish
pub struct ParallelGzWriter<W: Write> {
    out: W,
    level: Compression,
    block: Vec<u8>,
    dict: Vec<u8>,
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    sent: u64,
    written: u64,
    pending: BTreeMap<u64, (Vec<u8>, Crc)>,
    max_in_flight: u64,
    crc: Crc,
}

impl<W: Write> std::fmt::Debug for ParallelGzWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelGzWriter")
            .field("level", &self.level)
            .field("sent", &self.sent)
            .field("written", &self.written)
            .finish()
    }
}

fn compress_block(
    level: Compression,
    dict: &[u8],
    data: &[u8],
    last: bool,
) -> io::Result<(Vec<u8>, Crc)> {
    let mut crc = Crc::new();
    crc.update(data);
    let mut c = Compress::new(level, false);
    if !dict.is_empty() {
        c.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(data.len() / 2 + 4096);
    loop {
        if out.capacity() - out.len() < 16 * 1024 {
            out.reserve(out.capacity().max(64 * 1024));
        }
        let consumed = c.total_in() as usize;
        let status = c
            .compress_vec(&data[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = c.total_in() as usize == data.len();
        match status {
            Status::StreamEnd => break,
            _ if !last && all_in && out.len() < out.capacity() => break,
            _ => {}
        }
    }
    Ok((out, crc))
}

impl<W: Write> ParallelGzWriter<W> {
    /// Compress into `out` at `level` with `threads` workers (at least one).
    pub fn new(out: W, level: u32, threads: usize) -> io::Result<Self> {
        Self::with_cache(out, level, threads, None)
    }

    /// [`ParallelGzWriter::new`], taking blocks from `cache` when it has
    /// them (the output is the same bytes).
    pub fn with_cache(
        mut out: W,
        level: u32,
        threads: usize,
        cache: Option<std::sync::Arc<dyn BlockCache>>,
    ) -> io::Result<Self> {
        // Fixed header: no name, no mtime, OS "unknown", so that equal input
        // gives equal bytes on every machine.
        out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
        let threads = threads.max(1);
        let level = Compression::new(level.min(9));
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(threads * 2);
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let workers = (0..threads)
            .map(|i| {
                let job_rx = Arc::clone(&job_rx);
                let done_tx = done_tx.clone();
                let cache = cache.clone();
                std::thread::Builder::new()
                    .name(format!("gzip-{i}"))
                    .spawn(move || loop {
                        let job = match job_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let result =
                            cached_block(cache.as_deref(), level, &job.dict, &job.data, job.last);
                        if done_tx.send((job.index, result)).is_err() {
                            return;
                        }
                    })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            out,
            level,
            block: Vec::with_capacity(BLOCK_SIZE),
            dict: Vec::new(),
            jobs: Some(job_tx),
            done: done_rx,
            workers,
            sent: 0,
            written: 0,
            pending: BTreeMap::new(),
            max_in_flight: (threads * 2 + 2) as u64,
            crc: Crc::new(),
        })
    }

    fn send_block(&mut self, last: bool) -> io::Result<()> {
        while self.sent - self.written >= self.max_in_flight {
            self.collect_one()?;
        }
        let data = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK_SIZE));
        let tail = data.len().saturating_sub(DICT_SIZE);
        let next_dict = if data.len() >= DICT_SIZE {
            data[tail..].to_vec()
        } else {
            // A short block: keep the end of the older dictionary too.
            let mut d = self.dict.clone();
            d.extend_from_slice(&data);
            d[d.len().saturating_sub(DICT_SIZE)..].to_vec()
        };
        let dict = std::mem::replace(&mut self.dict, next_dict);
        let job = Job {
            index: self.sent,
            dict,
            data,
            last,
        };
        self.jobs
            .as_ref()
            .expect("jobs open until finish")
            .send(job)
            .map_err(|_| io::Error::other("gzip worker stopped"))?;
        self.sent += 1;
        Ok(())
    }

    /// Wait for one block and write every block that is now in order.
    fn collect_one(&mut self) -> io::Result<()> {
        let (index, result) = self
            .done
            .recv()
            .map_err(|_| io::Error::other("gzip worker stopped"))?;
        self.pending.insert(index, result?);
        while let Some((bytes, crc)) = self.pending.remove(&self.written) {
            self.out.write_all(&bytes)?;
            self.crc.combine(&crc);
            self.written += 1;
        }
        Ok(())
    }

    /// Compress what is left, write the trailer and return the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.send_block(true)?;
        while self.written < self.sent {
            self.collect_one()?;
        }
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        let trailer = [
            self.crc.sum().to_le_bytes(),
            self.crc.amount().to_le_bytes(),
        ]
        .concat();
        self.out.write_all(&trailer)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for ParallelGzWriter<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let total = buf.len();
        while !buf.is_empty() {
            let room = BLOCK_SIZE - self.block.len();
            let n = room.min(buf.len());
            self.block.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
            if self.block.len() == BLOCK_SIZE {
                self.send_block(false)?;
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Blocks are only cut at fixed sizes (determinism); nothing to do.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial: text with varying numbers.
        let mut v = Vec::with_capacity(len);
        let mut i = 0u64;
        while v.len() < len {
            v.extend_from_slice(
                format!("line {i} of the sample, value {}\n", i * 7919 % 1000).as_bytes(),
            );
            i += 1;
        }
        v.truncate(len);
        v
    }

    fn gz(data: &[u8], threads: usize) -> Vec<u8> {
        let mut w = ParallelGzWriter::new(Vec::new(), 6, threads).unwrap();
        for chunk in data.chunks(10_007) {
            w.write_all(chunk).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn round_trips_through_a_standard_decoder() {
        for len in [
            0,
            1,
            BLOCK_SIZE - 1,
            BLOCK_SIZE,
            BLOCK_SIZE + 1,
            3 * BLOCK_SIZE + 12_345,
        ] {
            let data = sample(len);
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&gz(&data, 2)[..])
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, data, "len {len}");
        }
    }

    #[test]
    fn output_does_not_depend_on_thread_count() {
        let data = sample(2 * BLOCK_SIZE + 777);
        assert_eq!(gz(&data, 1), gz(&data, 3));
    }

    #[test]
    fn size_is_close_to_single_stream_gzip() {
        let data = sample(8 * BLOCK_SIZE);
        let mut single = flate2::write::GzEncoder::new(Vec::new(), Compression::new(6));
        single.write_all(&data).unwrap();
        let single = single.finish().unwrap().len() as f64;
        let parallel = gz(&data, 2).len() as f64;
        assert!(parallel / single < 1.02, "{parallel} vs {single}");
    }

    /// A cache in memory, counting hits.
    #[derive(Debug, Default)]
    struct MemoryCache {
        blocks: Mutex<std::collections::HashMap<BlockKey, Vec<u8>>>,
        hits: std::sync::atomic::AtomicUsize,
    }

    impl BlockCache for MemoryCache {
        fn get(&self, key: &BlockKey) -> Option<Vec<u8>> {
            let hit = self.blocks.lock().unwrap().get(key).cloned();
            if hit.is_some() {
                self.hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            hit
        }
        fn record(&self, key: &BlockKey, compressed: &[u8]) {
            self.blocks
                .lock()
                .unwrap()
                .insert(*key, compressed.to_vec());
        }
    }

    #[test]
    fn cached_blocks_give_the_same_bytes() {
        let data = sample(5 * BLOCK_SIZE + 99);
        let plain = gz(&data, 2);
        let cache = Arc::new(MemoryCache::default());
        let with = |data: &[u8]| {
            let mut w = ParallelGzWriter::with_cache(
                Vec::new(),
                6,
                2,
                Some(Arc::clone(&cache) as Arc<dyn BlockCache>),
            )
            .unwrap();
            w.write_all(data).unwrap();
            w.finish().unwrap()
        };
        assert_eq!(with(&data), plain, "cold");
        assert_eq!(cache.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(with(&data), plain, "warm");
        assert_eq!(cache.hits.load(std::sync::atomic::Ordering::SeqCst), 6);
        // A change at the end keeps the blocks before it.
        let mut changed = data.clone();
        *changed.last_mut().unwrap() ^= 1;
        let out = with(&changed);
        assert_eq!(cache.hits.load(std::sync::atomic::Ordering::SeqCst), 11);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, changed);
    }
}
