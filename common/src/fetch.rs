//! Downloading a slug from `SLUG_URL` (http or https).
//!
//! The body is streamed into the unpacker, never held in memory. Connection
//! failures and 5xx/408/429 answers are retried with a doubling backoff;
//! other 4xx answers are final. Once the body is streaming a failure is not
//! retried (the app dir is half written by then), but it is reported as a
//! download error, not as a bad archive: [`SlugDownload`] remembers whether
//! a read from the network failed.
//!
//! URLs are shown without credentials or query string: slug URLs are often
//! pre-signed, and their signature is a secret.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("SLUG_URL {url}: only http:// and https:// URLs are supported")]
    UnsupportedScheme { url: String },
    #[error("SLUG_URL {url}: server answered HTTP {status} (after {attempts} attempt(s))")]
    Status {
        url: String,
        status: u16,
        attempts: u32,
    },
    #[error("SLUG_URL {url}: {reason} (after {attempts} attempt(s))")]
    Transport {
        url: String,
        reason: String,
        attempts: u32,
    },
}

/// How hard to try.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Total attempts, at least 1.
    pub attempts: u32,
    /// Wait before the second attempt; doubled after each failure.
    pub backoff: Duration,
    pub connect_timeout: Duration,
    /// Longest silence while reading the answer or the body.
    pub read_timeout: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
        }
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

/// A slug body being downloaded.
pub struct SlugDownload {
    body: Box<dyn Read + Send>,
    watch: DownloadWatch,
}

/// Observes a [`SlugDownload`] after it was handed to a consumer that takes
/// readers by value.
#[derive(Debug, Clone, Default)]
pub struct DownloadWatch {
    url: String,
    state: Arc<Mutex<WatchState>>,
}

#[derive(Debug, Default)]
struct WatchState {
    bytes: u64,
    network_error: Option<String>,
}

impl std::fmt::Debug for SlugDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlugDownload")
            .field("watch", &self.watch)
            .finish_non_exhaustive()
    }
}

impl SlugDownload {
    /// A handle that still works once the download is moved away.
    pub fn watch(&self) -> DownloadWatch {
        self.watch.clone()
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
    pub fn network_error(&self) -> Option<FetchError> {
        let state = self.lock();
        state
            .network_error
            .as_ref()
            .map(|reason| FetchError::Transport {
                url: self.url.clone(),
                reason: format!("download broke after {} bytes: {reason}", state.bytes),
                attempts: 1,
            })
    }
}

impl Read for SlugDownload {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = self.body.read(buf);
        let mut state = self.watch.lock();
        match &result {
            Ok(n) => state.bytes += *n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => state.network_error = Some(e.to_string()),
        }
        result
    }
}

/// Start downloading `url`: returns once a 2xx answer arrived, with its body
/// ready to stream.
pub fn open_slug_url(url: &str, opts: &FetchOptions) -> Result<SlugDownload, FetchError> {
    let shown = redact_url(url);
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(FetchError::UnsupportedScheme { url: shown });
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(opts.connect_timeout))
        .timeout_recv_response(Some(opts.read_timeout))
        .timeout_per_read(Some(opts.read_timeout))
        .user_agent(concat!("slugrunner/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let attempts = opts.attempts.max(1);
    let mut backoff = opts.backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let outcome = agent.get(url).call();
        let (retryable, error) = match outcome {
            Ok(response) if response.status().is_success() => {
                tracing::debug!(url = %shown, attempt, "slug download started");
                return Ok(SlugDownload {
                    body: Box::new(response.into_body().into_reader()),
                    watch: DownloadWatch {
                        url: shown,
                        state: Arc::default(),
                    },
                });
            }
            Ok(response) => {
                let status = response.status().as_u16();
                (
                    matches!(status, 408 | 429 | 500..=599),
                    FetchError::Status {
                        url: shown.clone(),
                        status,
                        attempts: attempt,
                    },
                )
            }
            Err(e) => (
                is_transient(&e),
                FetchError::Transport {
                    url: shown.clone(),
                    reason: e.to_string(),
                    attempts: attempt,
                },
            ),
        };
        if !retryable || attempt >= attempts {
            return Err(error);
        }
        tracing::warn!("{error}; retrying in {:.1}s", backoff.as_secs_f32());
        std::thread::sleep(backoff);
        backoff *= 2;
    }
}

fn is_transient(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::HostNotFound
            | ureq::Error::ConnectionFailed
            | ureq::Error::Protocol(_)
            | ureq::Error::BodyStalled
    )
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
    fn rejects_other_schemes() {
        assert!(matches!(
            open_slug_url("file:///etc/passwd", &FetchOptions::default()),
            Err(FetchError::UnsupportedScheme { .. })
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
        let opts = FetchOptions {
            backoff: Duration::from_millis(10),
            ..FetchOptions::default()
        };
        let mut dl = open_slug_url(&format!("http://127.0.0.1:{port}/s.tgz"), &opts).unwrap();
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
        let opts = FetchOptions {
            backoff: Duration::from_millis(10),
            ..FetchOptions::default()
        };
        let err =
            open_slug_url(&format!("http://127.0.0.1:{port}/x?sig=secret"), &opts).unwrap_err();
        server.join().unwrap();
        assert!(matches!(
            err,
            FetchError::Status {
                status: 404,
                attempts: 1,
                ..
            }
        ));
        assert!(!err.to_string().contains("secret"));
        // Nothing listens there any more.
        let err = open_slug_url(&format!("http://127.0.0.1:{port}/x"), &opts).unwrap_err();
        assert!(
            matches!(err, FetchError::Transport { attempts: 3, .. }),
            "{err}"
        );
    }
}
