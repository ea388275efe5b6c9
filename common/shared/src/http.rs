//! One HTTP client for every URL slugbuilder and slugrunner fetch or fill:
//! a slug (`SLUG_URL`), a buildpack tarball, the app source
//! (`SOURCE_URL`), the build cache (`CACHE_URL`), and the uploads of the
//! slug (`PUT_URL`) and of the cache. GET and PUT go through the same
//! request loop ([`exchange`]).
//!
//! Bodies are streamed, never held in memory. Requests follow the one
//! retry policy of [`crate::transfer`]: connection failures and
//! 5xx/408/429 answers are retried with a doubling backoff; other 4xx
//! answers and TLS failures are final. A download has an overall deadline and a rule of
//! minimum progress (so a server that trickles one byte every 20 seconds
//! fails instead of holding us for ever), on top of the longest silence
//! allowed for one read. Once the body is streaming a failure is not
//! retried (the consumer has written part of it), but it is reported as a
//! download error, not as a bad archive: [`DownloadWatch`] remembers
//! whether reading from the network failed. An upload always sends
//! `Content-Length` (S3 refuses chunked PUTs, and a store that knows the
//! length discards a body cut short) and is retried from its first byte.
//!
//! URLs are shown without credentials or query string: slug URLs are often
//! pre-signed, and their signature is a secret.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cancel::Cancel;
use crate::transfer::{
    transient_error, transient_status, Cut, Failed, GaveUp, Guarded, Retry, Rules,
};

#[derive(Debug, Clone, thiserror::Error)]
pub enum HttpError {
    #[error("{what} {url}: only http:// and https:// URLs are supported")]
    UnsupportedScheme { what: &'static str, url: String },
    #[error("{what} {url}: server answered HTTP {status} (after {attempts} attempt(s))")]
    Status {
        what: &'static str,
        url: String,
        status: u16,
        attempts: u32,
    },
    #[error("{what} {url}: {reason} (after {attempts} attempt(s))")]
    Transport {
        what: &'static str,
        url: String,
        reason: String,
        attempts: u32,
    },
    #[error("{what} {url}: not done within the time limit of {}s ({bytes} bytes received)", limit.as_secs())]
    TimedOut {
        what: &'static str,
        url: String,
        limit: Duration,
        bytes: u64,
    },
    #[error("{what} {url}: too slow: {got} bytes in {}s, at least {min} needed", window.as_secs())]
    TooSlow {
        what: &'static str,
        url: String,
        got: u64,
        min: u64,
        window: Duration,
    },
}

/// How hard to try, and for how long.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// What the URL is, for messages (`SLUG_URL`, `buildpack`).
    pub what: &'static str,
    /// Total attempts, at least 1.
    pub attempts: u32,
    /// Wait before the second attempt; doubled after each failure.
    pub backoff: Duration,
    pub connect_timeout: Duration,
    /// Longest silence while waiting for the answer or the body.
    pub read_timeout: Duration,
    /// The whole download (every attempt and the body) ends by then.
    pub deadline: Option<Instant>,
    /// Minimum progress: at least this many bytes in every window of this
    /// length, once the body streams.
    pub min_progress: Option<(u64, Duration)>,
    /// The build this transfer belongs to: a stop (SIGTERM, its time
    /// limit) ends waits between attempts and cuts an upload short.
    pub cancel: Option<Arc<Cancel>>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            what: "URL",
            attempts: 3,
            backoff: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(30),
            deadline: None,
            min_progress: Some(crate::transfer::MIN_PROGRESS),
            cancel: None,
        }
    }
}

/// A URL that may carry a secret (a pre-signed signature, credentials):
/// its `Debug` and `Display` show it redacted, so that it can sit in a
/// configuration that is logged. [`SecretUrl::expose`] gives the real one,
/// for the request alone.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

/// `url` without user info and query: safe to print.
pub fn redact_url(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or(url);
    match without_query.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let host = authority.rsplit('@').next().unwrap_or(authority);
            format!("{scheme}://{host}{path}")
        }
        None => without_query.to_string(),
    }
}

/// A body being downloaded: a [`Guarded`] stream (the deadline, the
/// minimum progress) whose failures become [`HttpError`]s.
pub struct Download {
    body: Guarded<Box<dyn Read + Send>>,
    watch: DownloadWatch,
    what: &'static str,
    deadline: Option<Instant>,
    started: Instant,
}

/// Observes a [`Download`] after it was handed to a consumer that takes
/// readers by value.
#[derive(Debug, Clone, Default)]
pub struct DownloadWatch {
    url: String,
    state: Arc<Mutex<WatchState>>,
}

#[derive(Debug, Default)]
struct WatchState {
    bytes: u64,
    network_error: Option<HttpError>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("watch", &self.watch)
            .finish_non_exhaustive()
    }
}

impl Download {
    /// A handle that still works once the download is moved away.
    pub fn watch(&self) -> DownloadWatch {
        self.watch.clone()
    }

    fn fail(&self, error: HttpError) -> io::Error {
        self.watch.lock().network_error = Some(error.clone());
        io::Error::other(error)
    }
}

impl DownloadWatch {
    /// The redacted URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Body bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// If reading the body failed, the download error (as opposed to the
    /// consumer rejecting the bytes).
    pub fn network_error(&self) -> Option<HttpError> {
        self.lock().network_error.clone()
    }
}

impl Read for Download {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let e = match self.body.read(buf) {
            Ok(n) => {
                self.watch.lock().bytes += n as u64;
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => e,
        };
        let (what, url, bytes) = (self.what, self.watch.url.clone(), self.watch.bytes());
        let error = match Cut::of(&e) {
            Some(Cut::TooSlow { got, min, window }) => HttpError::TooSlow {
                what,
                url,
                got,
                min,
                window,
            },
            Some(Cut::Deadline) => HttpError::TimedOut {
                what,
                url,
                limit: self.deadline.map_or(Duration::ZERO, |d| {
                    d.saturating_duration_since(self.started)
                }),
                bytes,
            },
            _ => HttpError::Transport {
                what,
                url,
                reason: format!("download broke after {bytes} bytes: {e}"),
                attempts: 1,
            },
        };
        Err(self.fail(error))
    }
}

/// Start downloading `url`: returns once a 2xx answer arrived, with its body
/// ready to stream.
pub fn get(url: &str, opts: &HttpOptions) -> Result<Download, HttpError> {
    let started = Instant::now();
    let (response, shown, _) = exchange(Method::Get, url, opts)?;
    let body: Box<dyn Read + Send> = Box::new(response.into_body().into_reader());
    Ok(Download {
        body: Guarded::new(
            body,
            Rules {
                deadline: opts.deadline,
                min_progress: opts.min_progress,
                ..Rules::default()
            },
        ),
        watch: DownloadWatch {
            url: shown,
            state: Arc::default(),
        },
        what: opts.what,
        deadline: opts.deadline,
        started,
    })
}

/// What a finished upload sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub bytes: u64,
    pub attempts: u32,
}

/// Upload the whole of `file` to `url` with one `PUT`, sending its length
/// as `Content-Length` (object stores refuse chunked uploads, and a store
/// that knows the length never keeps a body cut short as the object).
/// Retried like a download, from the first byte each time; `Ok` once the
/// server answered 2xx to a complete body.
pub fn put_file(url: &str, file: &File, opts: &HttpOptions) -> Result<Uploaded, HttpError> {
    let len = file
        .metadata()
        .map_err(|e| HttpError::Transport {
            what: opts.what,
            url: redact_url(url),
            reason: format!("reading the file to upload: {e}"),
            attempts: 0,
        })?
        .len();
    let (response, shown, attempts) = exchange(Method::Put { file, len }, url, opts)?;
    // The answer to a PUT is small (an XML or HTML note); read a bounded
    // part so that the connection ends cleanly, never more.
    let mut reader = response.into_body().into_reader().take(64 << 10);
    let _ = io::copy(&mut reader, &mut io::sink());
    tracing::debug!(url = %shown, bytes = len, attempts, "upload done");
    Ok(Uploaded {
        bytes: len,
        attempts,
    })
}

#[derive(Clone, Copy)]
enum Method<'a> {
    Get,
    Put { file: &'a File, len: u64 },
}

/// The file of one PUT attempt, from its start: exactly its length, and
/// an error if it got shorter. Sent [`Guarded`] by the build's stop and
/// deadline, so that SIGTERM cuts an upload short (and a store that knows
/// the length then drops it).
struct UploadFile {
    file: File,
    left: u64,
}

impl Read for UploadFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file to upload got shorter",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// One request under the [`Retry`] policy: connection failures and
/// 5xx/408/429 answers are tried again with a doubling backoff, within the
/// deadline. Returns the 2xx response, the redacted URL and the number of
/// attempts.
fn exchange(
    method: Method<'_>,
    url: &str,
    opts: &HttpOptions,
) -> Result<(ureq::http::Response<ureq::Body>, String, u32), HttpError> {
    let shown = redact_url(url);
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(HttpError::UnsupportedScheme {
            what: opts.what,
            url: shown,
        });
    }
    let request = Request {
        url,
        shown,
        opts,
        started: Instant::now(),
    };
    let policy = Retry {
        attempts: opts.attempts,
        backoff: opts.backoff,
    };
    let outcome = policy.run(opts.cancel.as_deref(), opts.deadline, |attempt| {
        let answer = request.send(method, attempt)?;
        request.judge(answer, attempt)
    });
    match outcome {
        Ok((response, attempts)) => Ok((response, request.shown, attempts)),
        Err(GaveUp::Failed(error) | GaveUp::OutOfTime(Some(error))) => Err(error),
        Err(GaveUp::OutOfTime(None)) => Err(request.timed_out()),
        Err(GaveUp::Stopped { stop, attempts }) => {
            Err(request.interrupted(stop.to_string(), attempts))
        }
    }
}

/// What the server said to one attempt, or why it said nothing.
type Answer = Result<ureq::http::Response<ureq::Body>, ureq::Error>;

/// One [`exchange`] with a URL, across its attempts.
struct Request<'a> {
    url: &'a str,
    /// The URL as messages show it.
    shown: String,
    opts: &'a HttpOptions,
    started: Instant,
}

impl Request<'_> {
    /// Send one attempt on an agent whose time limits end by the deadline;
    /// a PUT sends the file from its first byte, with its length.
    fn send(&self, method: Method<'_>, attempt: u32) -> Result<Answer, Failed<HttpError>> {
        let opts = self.opts;
        let remaining = opts
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        let cap = |t: Duration| Some(remaining.map_or(t, |r| t.min(r)));
        let agent = agent(Timeouts {
            global: remaining,
            connect: cap(opts.connect_timeout),
            response: cap(opts.read_timeout),
            per_read: cap(opts.read_timeout),
            per_write: cap(opts.read_timeout),
        });
        let answer = match method {
            Method::Get => agent.get(self.url).call(),
            Method::Put { file, len } => {
                let body = self.upload_body(file, len, attempt)?;
                agent
                    .put(self.url)
                    .header("Content-Length", len.to_string())
                    .header("Content-Type", "application/octet-stream")
                    .send(ureq::SendBody::from_owned_reader(body))
            }
        };
        Ok(answer)
    }

    /// The file of one PUT attempt, rewound, and cut short when the build
    /// stops or the deadline passes.
    fn upload_body(
        &self,
        file: &File,
        len: u64,
        attempt: u32,
    ) -> Result<Guarded<UploadFile>, Failed<HttpError>> {
        let body = file
            .try_clone()
            .and_then(|mut f| f.seek(SeekFrom::Start(0)).map(|_| f))
            .map_err(|e| {
                Failed::Final(self.interrupted(format!("reading the file to upload: {e}"), attempt))
            })?;
        let rules = Rules {
            cancel: self.opts.cancel.clone(),
            deadline: self.opts.deadline,
            ..Rules::default()
        };
        Ok(Guarded::new(
            UploadFile {
                file: body,
                left: len,
            },
            rules,
        ))
    }

    /// A 2xx answer is the response; other answers and transport failures
    /// are judged worth another attempt or not. Past the deadline it is a
    /// time-out, and once the build stops, an interruption.
    fn judge(
        &self,
        answer: Answer,
        attempt: u32,
    ) -> Result<ureq::http::Response<ureq::Body>, Failed<HttpError>> {
        let opts = self.opts;
        match answer {
            Ok(response) if response.status().is_success() => {
                tracing::debug!(url = %self.shown, attempt, "answered {}", response.status());
                Ok(response)
            }
            Ok(response) => {
                let status = response.status().as_u16();
                let error = HttpError::Status {
                    what: opts.what,
                    url: self.shown.clone(),
                    status,
                    attempts: attempt,
                };
                Err(if transient_status(status) {
                    Failed::Transient(error)
                } else {
                    Failed::Final(error)
                })
            }
            Err(e) if opts.deadline.is_some_and(|d| Instant::now() >= d) => {
                tracing::debug!("{e}");
                Err(Failed::Final(self.timed_out()))
            }
            Err(e) => {
                if let Some(stop) = opts.cancel.as_ref().and_then(|c| c.stopped()) {
                    return Err(Failed::Final(self.interrupted(stop.to_string(), attempt)));
                }
                let error = HttpError::Transport {
                    what: opts.what,
                    url: self.shown.clone(),
                    // ureq's messages can quote the URL: keep only ours.
                    reason: e.to_string().replace(self.url, &self.shown),
                    attempts: attempt,
                };
                Err(if transient_error(&e) {
                    Failed::Transient(error)
                } else {
                    Failed::Final(error)
                })
            }
        }
    }

    /// The deadline passed before an answer came (so no body bytes).
    fn timed_out(&self) -> HttpError {
        HttpError::TimedOut {
            what: self.opts.what,
            url: self.shown.clone(),
            limit: self.opts.deadline.map_or(Duration::ZERO, |d| {
                d.saturating_duration_since(self.started)
            }),
            bytes: 0,
        }
    }

    fn interrupted(&self, reason: String, attempts: u32) -> HttpError {
        HttpError::Transport {
            what: self.opts.what,
            url: self.shown.clone(),
            reason,
            attempts,
        }
    }
}

/// Time limits of one HTTP agent (`None`: no limit of that kind).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub global: Option<Duration>,
    pub connect: Option<Duration>,
    pub response: Option<Duration>,
    pub per_read: Option<Duration>,
    pub per_write: Option<Duration>,
}

/// The one way this project makes an HTTP agent (downloads, uploads and
/// the OCI registry client): statuses are answers, not errors; one user
/// agent; the TLS roots and proxy settings of ureq's defaults.
pub fn agent(t: Timeouts) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(t.global)
        .timeout_connect(t.connect)
        .timeout_recv_response(t.response)
        .timeout_per_read(t.per_read)
        .timeout_per_write(t.per_write)
        .user_agent(concat!("slugtools/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    #[test]
    fn redacts_credentials_and_signatures() {
        assert_eq!(
            redact_url("https://user:pw@s3.example/b/slug.tgz?X-Sig=abc#f"),
            "https://s3.example/b/slug.tgz"
        );
        assert_eq!(redact_url("http://h:8080"), "http://h:8080");
    }

    #[test]
    fn secret_urls_print_redacted() {
        let url = SecretUrl::new("https://s3.example/b/k?X-Amz-Signature=abc");
        assert_eq!(
            format!("{url} {url:?}"),
            "https://s3.example/b/k \"https://s3.example/b/k\""
        );
        assert!(url.expose().ends_with("=abc"));
    }

    #[test]
    fn rejects_other_schemes() {
        assert!(matches!(
            get("file:///etc/passwd", &HttpOptions::default()),
            Err(HttpError::UnsupportedScheme { .. })
        ));
    }

    /// One 503, then the body: the retry gets it.
    #[test]
    fn retries_server_errors_then_streams() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let answers: [&[u8]; 2] = [
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            ];
            for answer in answers {
                let (mut conn, _) = listener.accept().unwrap();
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).unwrap();
                conn.write_all(answer).unwrap();
            }
        });
        let opts = HttpOptions {
            backoff: Duration::from_millis(10),
            ..HttpOptions::default()
        };
        let mut dl = get(&format!("http://127.0.0.1:{port}/s.tgz"), &opts).unwrap();
        let mut body = String::new();
        dl.read_to_string(&mut body).unwrap();
        assert_eq!(body, "hello");
        assert_eq!(dl.watch().bytes(), 5);
        assert!(dl.watch().network_error().is_none());
        server.join().unwrap();
    }

    #[test]
    fn not_found_is_final_and_refused_connection_is_retried() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).unwrap();
            conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
        });
        let opts = HttpOptions {
            backoff: Duration::from_millis(10),
            ..HttpOptions::default()
        };
        let err = get(&format!("http://127.0.0.1:{port}/x?sig=secret"), &opts).unwrap_err();
        server.join().unwrap();
        assert!(matches!(
            err,
            HttpError::Status {
                status: 404,
                attempts: 1,
                ..
            }
        ));
        assert!(!err.to_string().contains("secret"));
        // Nothing listens there any more.
        let err = get(&format!("http://127.0.0.1:{port}/x"), &opts).unwrap_err();
        assert!(
            matches!(err, HttpError::Transport { attempts: 3, .. }),
            "{err}"
        );
    }

    /// A 503 first, then the upload: both attempts send the whole file
    /// with its length, never chunked.
    #[test]
    fn put_sends_the_length_and_retries_from_the_start() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for answer in ["503 Busy", "201 Created"] {
                let (conn, _) = listener.accept().unwrap();
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
                    if line == "\r\n" {
                        break;
                    }
                    head.push_str(&line.to_ascii_lowercase());
                }
                let mut body = vec![0u8; 11];
                reader.read_exact(&mut body).unwrap();
                requests.push((head, body));
                let mut conn = conn;
                write!(
                    conn,
                    "HTTP/1.1 {answer}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
            }
            requests
        });
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"hello world").unwrap();
        let opts = HttpOptions {
            backoff: Duration::from_millis(10),
            ..HttpOptions::default()
        };
        let up = put_file(&format!("http://127.0.0.1:{port}/s?sig=x"), &file, &opts).unwrap();
        assert_eq!(
            up,
            Uploaded {
                bytes: 11,
                attempts: 2
            }
        );
        for (head, body) in server.join().unwrap() {
            assert!(head.starts_with("put /s?sig=x "), "{head}");
            assert!(head.contains("content-length: 11\r\n"), "{head}");
            assert!(!head.contains("transfer-encoding"), "{head}");
            assert_eq!(body, b"hello world");
        }
    }

    /// A server that answers, then sends the body one byte at a time.
    fn trickling_server(pause: Duration) -> (u16, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).unwrap();
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
            for _ in 0..50 {
                if conn.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(pause);
            }
        });
        (port, server)
    }

    #[test]
    fn a_trickling_body_fails_the_minimum_progress_rule() {
        let (port, server) = trickling_server(Duration::from_millis(100));
        let opts = HttpOptions {
            min_progress: Some((1000, Duration::from_millis(400))),
            ..HttpOptions::default()
        };
        let mut dl = get(&format!("http://127.0.0.1:{port}/slug.tgz"), &opts).unwrap();
        let watch = dl.watch();
        let start = Instant::now();
        let err = std::io::copy(&mut dl, &mut std::io::sink()).unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        assert!(err.to_string().contains("too slow"), "{err}");
        assert!(matches!(
            watch.network_error(),
            Some(HttpError::TooSlow { .. })
        ));
        drop(dl);
        server.join().unwrap();
    }

    #[test]
    fn the_overall_deadline_covers_the_body() {
        let (port, server) = trickling_server(Duration::from_millis(50));
        let opts = HttpOptions {
            deadline: Some(Instant::now() + Duration::from_millis(700)),
            min_progress: None,
            ..HttpOptions::default()
        };
        let mut dl = get(&format!("http://127.0.0.1:{port}/slug.tgz"), &opts).unwrap();
        let start = Instant::now();
        let err = std::io::copy(&mut dl, &mut std::io::sink()).unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        assert!(err.to_string().contains("time limit"), "{err}");
        drop(dl);
        server.join().unwrap();
    }

    #[test]
    fn a_server_that_never_answers_meets_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let opts = HttpOptions {
            deadline: Some(Instant::now() + Duration::from_millis(500)),
            ..HttpOptions::default()
        };
        let start = Instant::now();
        let err = get(&format!("http://127.0.0.1:{port}/x"), &opts).unwrap_err();
        assert!(matches!(err, HttpError::TimedOut { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(3));
        drop(listener);
    }
}
