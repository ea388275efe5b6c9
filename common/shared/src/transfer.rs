//! The rules every transfer follows, in one place: which failures are
//! worth another attempt and how long to wait before it ([`Retry`]), and
//! the reader that cuts a stream short when the build must stop, when a
//! deadline passes, when it grows past a cap or when it trickles slower
//! than a minimum progress ([`Guarded`]).
//!
//! Used by the HTTP client ([`crate::http`]: `SLUG_URL`, `SOURCE_URL`,
//! buildpack tarballs, `PUT_URL`, the cache), the OCI registry client
//! (`slug_image::registry`, on the image side) and the slug packer ([`crate::archive`]).

use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cancel::{Cancel, Stop, POLL};

/// How often, and how patiently, to try a request again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Total attempts, at least 1.
    pub attempts: u32,
    /// Wait before the second attempt; doubled after each failure.
    pub backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff: Duration::from_secs(1),
        }
    }
}

/// One attempt's failure, as its caller judged it with [`transient_status`]
/// and [`transient_error`].
#[derive(Debug)]
pub enum Failed<E> {
    /// Another attempt may succeed.
    Transient(E),
    /// No attempt will.
    Final(E),
}

/// Why [`Retry::run`] gave up.
#[derive(Debug)]
pub enum GaveUp<E> {
    /// A final failure, or a transient one with no attempt left.
    Failed(E),
    /// The build stopped before an attempt or during a wait.
    Stopped { stop: Stop, attempts: u32 },
    /// The deadline leaves no time for the next attempt (the last
    /// failure, if there was one).
    OutOfTime(Option<E>),
}

impl Retry {
    /// Run `attempt` (given its number, from 1) until it succeeds, fails
    /// for good, or attempts or time run out. Between attempts it waits
    /// the doubling backoff, waking early when `cancel` stops the build.
    /// Returns the value and the number of attempts made.
    pub fn run<T, E: std::fmt::Display>(
        &self,
        cancel: Option<&Cancel>,
        deadline: Option<Instant>,
        mut attempt: impl FnMut(u32) -> Result<T, Failed<E>>,
    ) -> Result<(T, u32), GaveUp<E>> {
        let attempts = self.attempts.max(1);
        let mut backoff = self.backoff;
        let mut made = 0;
        loop {
            if let Some(stop) = cancel.and_then(Cancel::stopped) {
                return Err(GaveUp::Stopped {
                    stop,
                    attempts: made,
                });
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(GaveUp::OutOfTime(None));
            }
            made += 1;
            let error = match attempt(made) {
                Ok(value) => return Ok((value, made)),
                Err(Failed::Final(e)) => return Err(GaveUp::Failed(e)),
                Err(Failed::Transient(e)) => e,
            };
            if made >= attempts {
                return Err(GaveUp::Failed(error));
            }
            if deadline.is_some_and(|d| Instant::now() + backoff >= d) {
                return Err(GaveUp::OutOfTime(Some(error)));
            }
            tracing::warn!("{error}; retrying in {:.1}s", backoff.as_secs_f32());
            sleep_unless_stopped(backoff, cancel);
            backoff *= 2;
        }
    }
}

/// Sleep for `pause`, waking early when the build must stop.
fn sleep_unless_stopped(pause: Duration, cancel: Option<&Cancel>) {
    let until = Instant::now() + pause;
    loop {
        let now = Instant::now();
        if now >= until || cancel.is_some_and(|c| c.stopped().is_some()) {
            return;
        }
        std::thread::sleep((until - now).min(POLL));
    }
}

/// Whether an answer is worth another attempt: the server is busy or
/// broken for now (5xx, 408, 429). Other 4xx answers are final.
pub fn transient_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

/// Whether a transport failure is worth another attempt: the connection
/// was refused, reset or timed out, the name did not resolve, the peer
/// spoke garbage. Not a TLS or certificate failure (it fails the same
/// way again), a bad URL, a body over a limit, or a reader of ours that
/// gave up ([`Cut`]).
pub fn transient_error(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Io(io) => transient_io(io),
        ureq::Error::Timeout(_)
        | ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::Protocol(_)
        | ureq::Error::BodyStalled => true,
        _ => false,
    }
}

fn transient_io(e: &io::Error) -> bool {
    if Cut::of(e).is_some() {
        return false;
    }
    // rustls reports a refused certificate or handshake as InvalidData.
    !matches!(
        e.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::PermissionDenied
    )
}

/// Why a [`Guarded`] reader cut its stream short. Carried inside the
/// `io::Error` it returns; [`Cut::of`] finds it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Cut {
    #[error("{0}")]
    Stopped(Stop),
    #[error("the time limit was reached")]
    Deadline,
    #[error("more than {max} bytes")]
    TooLarge { max: u64 },
    #[error("too slow: {got} bytes in {}s, at least {min} needed", window.as_secs())]
    TooSlow {
        got: u64,
        min: u64,
        window: Duration,
    },
}

impl Cut {
    /// The cut behind an I/O error, however deep it was wrapped.
    pub fn of(e: &io::Error) -> Option<Cut> {
        let mut next: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|r| r as _);
        while let Some(err) = next {
            if let Some(cut) = err.downcast_ref::<Cut>() {
                return Some(*cut);
            }
            if let Some(io) = err.downcast_ref::<io::Error>() {
                next = io.get_ref().map(|r| r as _);
            } else {
                next = err.source();
            }
        }
        None
    }
}

/// What a [`Guarded`] reader enforces; each rule is off when `None`.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// The build: its stop (a signal, its time limit) ends the stream.
    pub cancel: Option<Arc<Cancel>>,
    /// A deadline of this transfer alone.
    pub deadline: Option<Instant>,
    /// At most this many bytes.
    pub max_bytes: Option<u64>,
    /// At least this many bytes in every window of this length.
    pub min_progress: Option<(u64, Duration)>,
}

/// The minimum progress of every network transfer: 16 KiB per 30 s (a
/// server that trickles one byte every few seconds fails, instead of
/// holding the build until its deadline).
pub const MIN_PROGRESS: (u64, Duration) = (16 << 10, Duration::from_secs(30));

/// A reader that follows [`Rules`]: checked before every read, and after
/// a failed one (a read cut by a timeout at the build's deadline is the
/// deadline, not a broken stream).
pub struct Guarded<R> {
    inner: R,
    rules: Rules,
    bytes: u64,
    window_start: Instant,
    window_bytes: u64,
}

impl<R> std::fmt::Debug for Guarded<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("rules", &self.rules)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl<R> Guarded<R> {
    /// The progress window starts now.
    pub fn new(inner: R, rules: Rules) -> Self {
        Self {
            inner,
            rules,
            bytes: 0,
            window_start: Instant::now(),
            window_bytes: 0,
        }
    }

    /// Bytes read so far.
    pub fn read_so_far(&self) -> u64 {
        self.bytes
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Why the stream must end now, if it must.
    fn why_stop(&self) -> Option<Cut> {
        if let Some(stop) = self.rules.cancel.as_ref().and_then(|c| c.stopped()) {
            return Some(Cut::Stopped(stop));
        }
        if self.rules.deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(Cut::Deadline);
        }
        None
    }

    fn counted(&mut self, n: usize) -> Result<(), Cut> {
        self.bytes += n as u64;
        self.window_bytes += n as u64;
        if let Some(max) = self.rules.max_bytes {
            if self.bytes > max {
                return Err(Cut::TooLarge { max });
            }
        }
        if let Some((min, window)) = self.rules.min_progress {
            let now = Instant::now();
            if now.duration_since(self.window_start) >= window {
                // The end of the stream is no failure, however slow.
                if self.window_bytes < min && n > 0 {
                    return Err(Cut::TooSlow {
                        got: self.window_bytes,
                        min,
                        window,
                    });
                }
                self.window_start = now;
                self.window_bytes = 0;
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(cut) = self.why_stop() {
            return Err(io::Error::other(cut));
        }
        match self.inner.read(buf) {
            Ok(n) => {
                self.counted(n).map_err(io::Error::other)?;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted || Cut::of(&e).is_some() => Err(e),
            Err(e) => match self.why_stop() {
                Some(cut) => Err(io::Error::other(cut)),
                None => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out `chunk` bytes per read, pausing `pause` before each.
    struct Slow {
        left: u64,
        chunk: usize,
        pause: Duration,
    }

    impl Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            std::thread::sleep(self.pause);
            let n = buf
                .len()
                .min(self.chunk)
                .min(usize::try_from(self.left).unwrap_or(usize::MAX));
            buf[..n].fill(b'x');
            self.left -= n as u64;
            Ok(n)
        }
    }

    fn cut_of(mut r: impl Read) -> Option<Cut> {
        Cut::of(&io::copy(&mut r, &mut io::sink()).unwrap_err())
    }

    #[test]
    fn a_stream_stops_at_its_cap() {
        let endless = io::repeat(0);
        let rules = Rules {
            max_bytes: Some(1 << 20),
            ..Rules::default()
        };
        let mut reader = Guarded::new(endless, rules);
        let err = io::copy(&mut reader, &mut io::sink()).unwrap_err();
        assert_eq!(Cut::of(&err), Some(Cut::TooLarge { max: 1 << 20 }));
        let read = reader.read_so_far();
        assert!(read <= (1 << 20) + (64 << 10), "{read}");
        // Exactly the cap is allowed.
        let rules = Rules {
            max_bytes: Some(1000),
            ..Rules::default()
        };
        let mut exact = Guarded::new(&[7u8; 1000][..], rules);
        assert_eq!(io::copy(&mut exact, &mut io::sink()).unwrap(), 1000);
    }

    #[test]
    fn a_trickle_fails_the_minimum_progress_and_a_slow_end_does_not() {
        let trickle = Slow {
            left: 1 << 20,
            chunk: 1,
            pause: Duration::from_millis(20),
        };
        let rules = Rules {
            min_progress: Some((100, Duration::from_millis(200))),
            ..Rules::default()
        };
        assert!(matches!(
            cut_of(Guarded::new(trickle, rules.clone())),
            Some(Cut::TooSlow { min: 100, .. })
        ));
        // 50 bytes, then the end seen after the window: no failure.
        let short = Slow {
            left: 50,
            chunk: 50,
            pause: Duration::from_millis(150),
        };
        let mut reader = Guarded::new(short, rules);
        assert_eq!(io::copy(&mut reader, &mut io::sink()).unwrap(), 50);
    }

    #[test]
    fn the_build_stopping_or_the_deadline_ends_a_stream() {
        let cancel = Cancel::new(Duration::from_secs(60));
        cancel.trigger(Stop::Interrupted(nix::sys::signal::Signal::SIGTERM));
        let rules = Rules {
            cancel: Some(Arc::clone(&cancel)),
            ..Rules::default()
        };
        assert_eq!(
            cut_of(Guarded::new(io::repeat(0), rules)),
            Some(Cut::Stopped(Stop::Interrupted(
                nix::sys::signal::Signal::SIGTERM
            )))
        );
        let rules = Rules {
            deadline: Some(Instant::now() + Duration::from_millis(50)),
            ..Rules::default()
        };
        let slow = Slow {
            left: u64::MAX,
            chunk: 10,
            pause: Duration::from_millis(10),
        };
        assert_eq!(cut_of(Guarded::new(slow, rules)), Some(Cut::Deadline));
    }

    /// A read that fails once the deadline passed (a socket timeout set
    /// to the deadline) is the deadline, not a broken stream.
    #[test]
    fn a_read_failing_at_the_deadline_is_the_deadline() {
        struct TimesOut(Duration);
        impl Read for TimesOut {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                std::thread::sleep(self.0);
                Err(io::Error::new(io::ErrorKind::TimedOut, "timeout: global"))
            }
        }
        let cancel = Cancel::new(Duration::from_millis(50));
        let rules = Rules {
            cancel: Some(cancel),
            ..Rules::default()
        };
        assert_eq!(
            cut_of(Guarded::new(TimesOut(Duration::from_millis(80)), rules)),
            Some(Cut::Stopped(Stop::TimedOut))
        );
    }

    #[test]
    fn retries_only_transient_failures_with_a_doubling_backoff() {
        let policy = Retry {
            attempts: 3,
            backoff: Duration::from_millis(10),
        };
        let mut seen = Vec::new();
        let got: Result<(u32, u32), GaveUp<&str>> = policy.run(None, None, |n| {
            seen.push(Instant::now());
            if n < 3 {
                Err(Failed::Transient("busy"))
            } else {
                Ok(n)
            }
        });
        assert_eq!(got.unwrap(), (3, 3));
        assert!(seen[2] - seen[1] >= Duration::from_millis(20));
        let mut calls = 0;
        let got: Result<((), u32), _> = policy.run(None, None, |_| {
            calls += 1;
            Err(Failed::Final("404"))
        });
        assert!(matches!(got, Err(GaveUp::Failed("404"))));
        assert_eq!(calls, 1);
        let got: Result<((), u32), _> = policy.run(None, None, |_| Err(Failed::Transient("503")));
        assert!(matches!(got, Err(GaveUp::Failed("503"))));
    }

    #[test]
    fn no_retry_past_the_deadline_or_after_a_stop() {
        let policy = Retry {
            attempts: 5,
            backoff: Duration::from_secs(10),
        };
        let deadline = Instant::now() + Duration::from_secs(1);
        let got: Result<((), u32), _> =
            policy.run(None, Some(deadline), |_| Err(Failed::Transient("reset")));
        assert!(matches!(got, Err(GaveUp::OutOfTime(Some("reset")))));
        let cancel = Cancel::new(Duration::from_secs(60));
        cancel.trigger(Stop::TimedOut);
        let got: Result<((), u32), GaveUp<&str>> =
            policy.run(Some(&cancel), None, |_| unreachable!());
        assert!(matches!(
            got,
            Err(GaveUp::Stopped {
                stop: Stop::TimedOut,
                attempts: 0
            })
        ));
    }

    #[test]
    fn refusals_and_certificates_are_final() {
        let refused = ureq::Error::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        let reset = ureq::Error::Io(io::Error::from(io::ErrorKind::ConnectionReset));
        let cert = ureq::Error::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        ));
        let ours = ureq::Error::Io(io::Error::other(Cut::TooLarge { max: 1 }));
        assert!(transient_error(&refused) && transient_error(&reset));
        assert!(!transient_error(&cert) && !transient_error(&ours));
        assert!(!transient_error(&ureq::Error::Tls("handshake")));
        assert!(transient_status(503) && transient_status(429) && transient_status(408));
        assert!(!transient_status(404) && !transient_status(401));
    }
}
