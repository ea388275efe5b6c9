//! A blocking client of the OCI distribution protocol, on the project's
//! one HTTP client ([`slug_shared::http`]: its agent, its retry rules, its URL
//! redaction): what publishing and rebasing need, nothing more.
//!
//! - `GET /v2/` to learn how the registry wants to be authenticated, and to
//!   check the credentials before anything else is done;
//! - manifests: `GET` (any of the OCI and Docker v2 media types) and `PUT`;
//! - blobs: `HEAD` (exists?), `GET` (streamed), cross-repository mount
//!   (`POST .../uploads/?mount=D&from=R`) and monolithic upload (`POST`
//!   then `PUT ...?digest=D` with the whole body, streamed).
//!
//! Authentication: `Basic` with the auth file's credentials, or `Bearer`
//! tokens from the registry's token service (anonymous when there are no
//! credentials), requested for every repository scope the operation needs
//! at once. Credentials go only to the registry and to the token service
//! it names, never over plain HTTP unless the operator made that host an
//! `--insecure-registry`, and never on a redirect (ureq drops the
//! `Authorization` header; blob downloads are often redirected to storage).
//!
//! Requests follow the one retry policy of [`slug_shared::transfer`]: those
//! without a streamed body are retried on transient failures (connection
//! errors, 5xx/408/429) with a doubling backoff. Every request is bounded
//! by the build's deadline ([`Cancel`]) and every body, both ways, by the
//! minimum progress of [`slug_shared::transfer::MIN_PROGRESS`]; a blob also by
//! `--max-layer-bytes`, checked against its `Content-Length` before it
//! streams and counted while it does. An upload that fails once its
//! session is open is cancelled (`DELETE` of the session), so that the
//! registry keeps no partial blob.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use ureq::http::Response;
use ureq::Body;

use super::auth::Credential;
use super::OciError;
use slug_shared::cancel::{Cancel, Stop};
use slug_shared::http::redact_url;
use slug_shared::transfer::{
    transient_error, transient_status, Cut, Failed, GaveUp, Guarded, Retry, Rules, MIN_PROGRESS,
};

/// The manifest media types we ask for (and understand).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// Largest manifest or index accepted.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest error document read from a registry answer.
const MAX_ERROR_BODY: u64 = 16 << 10;
const ATTEMPTS: u32 = 3;
/// How long the `DELETE` of an abandoned upload may take: it runs after
/// a signal too, and must end within slugbuilder's 1.5 s of grace after
/// SIGTERM (the 2 s a build has to react).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(1);

/// How to reach one registry.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The registry as the reference names it (`host[:port]`).
    pub host: String,
    /// Where its API is (`docker.io` is `index.docker.io`).
    pub api_host: String,
    /// Plain HTTP (an `--insecure-registry`).
    pub insecure: bool,
}

impl Endpoint {
    fn base(&self) -> String {
        let scheme = if self.insecure { "http" } else { "https" };
        format!("{scheme}://{}", self.api_host)
    }
}

/// The challenge a registry answered `GET /v2/` with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scheme {
    Unknown,
    Anonymous,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

#[derive(Debug)]
struct AuthState {
    scheme: Scheme,
    /// The current token and the scopes it was asked for.
    token: Option<(BTreeSet<String>, String)>,
}

/// One registry: its endpoint, credential and authentication state.
pub struct Registry {
    endpoint: Endpoint,
    agent: ureq::Agent,
    credential: Option<Credential>,
    /// An auth file that configures a credential helper for this registry.
    helper: Option<PathBuf>,
    searched: Vec<PathBuf>,
    insecure_hosts: Vec<String>,
    state: Mutex<AuthState>,
    cancel: Arc<Cancel>,
    backoff: Duration,
    /// The cap of one blob (`--max-layer-bytes`).
    max_blob_bytes: u64,
    min_progress: (u64, Duration),
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("endpoint", &self.endpoint)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

/// A request body.
pub enum Payload<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// Streamed with this Content-Length; sent once, never retried.
    Stream(&'a mut dyn Read, u64),
}

impl std::fmt::Debug for Payload<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Empty => f.write_str("Empty"),
            Payload::Bytes(b) => write!(f, "Bytes({})", b.len()),
            Payload::Stream(_, len) => write!(f, "Stream({len})"),
        }
    }
}

impl Payload<'_> {
    fn retryable(&self) -> bool {
        !matches!(self, Payload::Stream(..))
    }
}

/// What a mount attempt did.
#[derive(Debug)]
pub enum Mount {
    Mounted,
    /// The registry did not mount; it opened an upload session here instead.
    NotMounted(Option<String>),
}

/// The scope a token must cover to read `repo`.
pub fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

/// The scope a token must cover to write `repo`.
pub fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

impl Registry {
    pub fn new(
        endpoint: Endpoint,
        credential: Option<Credential>,
        helper: Option<PathBuf>,
        searched: Vec<PathBuf>,
        insecure_hosts: Vec<String>,
        cancel: Arc<Cancel>,
        max_blob_bytes: u64,
    ) -> Self {
        // The global limit is set per request, from the build's deadline.
        let agent = slug_shared::http::agent(slug_shared::http::Timeouts {
            global: None,
            connect: Some(Duration::from_secs(30)),
            response: Some(Duration::from_secs(300)),
            per_read: Some(Duration::from_secs(60)),
            per_write: Some(Duration::from_secs(60)),
        });
        Self {
            endpoint,
            agent,
            credential,
            helper,
            searched,
            insecure_hosts,
            state: Mutex::new(AuthState {
                scheme: Scheme::Unknown,
                token: None,
            }),
            cancel,
            backoff: Duration::from_millis(500),
            max_blob_bytes,
            min_progress: MIN_PROGRESS,
        }
    }

    /// What every body read from or sent to this registry follows.
    fn rules(&self, max_bytes: Option<u64>) -> Rules {
        Rules {
            cancel: Some(Arc::clone(&self.cancel)),
            deadline: None,
            max_bytes,
            min_progress: Some(self.min_progress),
        }
    }

    pub fn host(&self) -> &str {
        &self.endpoint.host
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint.base())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AuthState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Learn how to authenticate and check the credentials (or get a
    /// token for `scopes`): a wrong password fails here, before any work.
    pub fn connect(&self, scopes: &[String]) -> Result<(), OciError> {
        let res = self.probe(None)?;
        match res.status().as_u16() {
            200..=299 => {
                self.lock().scheme = Scheme::Anonymous;
                return Ok(());
            }
            401 => self.learn_challenge(&res)?,
            404 => {
                return Err(self.failed(format!(
                    "{} does not answer the registry API (GET /v2/: 404)",
                    self.endpoint.base()
                )))
            }
            status => return Err(self.status_error("GET /v2/", status, res)),
        }
        let auth = self.authorization(scopes)?;
        if matches!(self.lock().scheme, Scheme::Basic) {
            let res = self.probe(auth)?;
            match res.status().as_u16() {
                200..=299 => {}
                401 | 403 => return Err(self.refused()),
                status => return Err(self.status_error("GET /v2/", status, res)),
            }
        }
        Ok(())
    }

    /// Read the `WWW-Authenticate` challenge of a 401 answer.
    fn learn_challenge(&self, res: &Response<Body>) -> Result<(), OciError> {
        let header = res
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let (scheme, params) = parse_challenge(header);
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "basic" => Scheme::Basic,
            "bearer" => {
                let realm = params
                    .iter()
                    .find(|(k, _)| k == "realm")
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| self.failed("a Bearer challenge without a realm".into()))?;
                let service = params
                    .iter()
                    .find(|(k, _)| k == "service")
                    .map(|(_, v)| v.clone());
                Scheme::Bearer { realm, service }
            }
            _ => {
                return Err(self.failed(format!(
                    "unsupported authentication challenge {:?}",
                    header.split_whitespace().next().unwrap_or("")
                )))
            }
        };
        let mut state = self.lock();
        if state.scheme != scheme {
            state.token = None;
        }
        state.scheme = scheme;
        Ok(())
    }

    /// The `Authorization` header for a request needing `scopes`.
    fn authorization(&self, scopes: &[String]) -> Result<Option<String>, OciError> {
        let scheme = self.lock().scheme.clone();
        match scheme {
            Scheme::Unknown | Scheme::Anonymous => Ok(None),
            Scheme::Basic => match &self.credential {
                Some(c) => Ok(Some(c.basic_header())),
                None => Err(self.no_credentials()),
            },
            Scheme::Bearer { realm, service } => {
                let mut wanted: BTreeSet<String> = scopes.iter().cloned().collect();
                if let Some((have, token)) = &self.lock().token {
                    if wanted.is_subset(have) {
                        return Ok(Some(format!("Bearer {token}")));
                    }
                    wanted.extend(have.iter().cloned());
                }
                let token = self.fetch_token(&realm, service.as_deref(), &wanted)?;
                let header = format!("Bearer {token}");
                self.lock().token = Some((wanted, token));
                Ok(Some(header))
            }
        }
    }

    /// Ask the registry's token service for a token covering `scopes`.
    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &BTreeSet<String>,
    ) -> Result<String, OciError> {
        let realm_host = realm
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or(rest))
            .unwrap_or("");
        let plain = realm.to_ascii_lowercase().starts_with("http://");
        if plain
            && self.credential.is_some()
            && !self.insecure_hosts.iter().any(|h| h == realm_host)
        {
            return Err(self.failed(format!(
                "its token service {} is plain HTTP; credentials are only sent there if it is an --insecure-registry",
                slug_shared::http::redact_url(realm)
            )));
        }
        let mut url = String::from(realm);
        let mut sep = if realm.contains('?') { '&' } else { '?' };
        let mut add = |k: &str, v: &str| {
            url.push(sep);
            url.push_str(k);
            url.push('=');
            url.push_str(&percent_encode(v));
            sep = '&';
        };
        if let Some(service) = service {
            add("service", service);
        }
        for scope in scopes {
            add("scope", scope);
        }
        let auth = self.credential.as_ref().map(Credential::basic_header);
        let res = self.raw_with_retries("GET", &url, &[], auth)?;
        let status = res.status().as_u16();
        if status == 401 || status == 403 {
            return Err(self.refused());
        }
        if !(200..300).contains(&status) {
            return Err(self.status_error("token service", status, res));
        }
        let body = self.read_body(res, 1 << 20, "token")?;
        let doc: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
            self.failed("the token service answered something other than JSON".into())
        })?;
        doc.get("token")
            .or_else(|| doc.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .ok_or_else(|| self.failed("the token service gave no token".into()))
    }

    /// One request: auth header, retries, one re-authentication on 401.
    pub fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        mut payload: Payload<'_>,
        scopes: &[String],
    ) -> Result<Response<Body>, OciError> {
        let mut reauthenticated = false;
        let retryable = payload.retryable();
        self.retried(method, url, retryable, || loop {
            let auth = self.authorization(scopes).map_err(Failed::Final)?;
            let res = self.raw(method, url, headers, &mut payload, auth)?;
            match res.status().as_u16() {
                401 if !reauthenticated => {
                    // First contact, or an expired token: learn and retry once.
                    self.learn_challenge(&res).map_err(Failed::Final)?;
                    self.lock().token = None;
                    reauthenticated = true;
                    if !retryable {
                        return Err(Failed::Final(self.refused()));
                    }
                }
                401 | 403 => return Err(Failed::Final(self.refused())),
                _ => return Ok(res),
            }
        })
    }

    /// `GET /v2/`, one attempt: a registry that cannot be reached fails
    /// the publish at once, before any work.
    fn probe(&self, auth: Option<String>) -> Result<Response<Body>, OciError> {
        let url = self.url("/v2/");
        self.retried("GET", &url, false, || {
            self.raw("GET", &url, &[], &mut Payload::Empty, auth.clone())
        })
    }

    fn raw_with_retries(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        auth: Option<String>,
    ) -> Result<Response<Body>, OciError> {
        self.retried(method, url, true, || {
            self.raw(method, url, headers, &mut Payload::Empty, auth.clone())
        })
    }

    /// `once` under the [`Retry`] policy (one attempt when the request
    /// cannot be repeated). A busy answer (5xx, 429) that is still busy at
    /// the last attempt is returned for the caller to report.
    fn retried(
        &self,
        method: &str,
        url: &str,
        retryable: bool,
        mut once: impl FnMut() -> Result<Response<Body>, Failed<OciError>>,
    ) -> Result<Response<Body>, OciError> {
        let policy = Retry {
            attempts: if retryable { ATTEMPTS } else { 1 },
            backoff: self.backoff,
        };
        let outcome = policy.run(Some(&self.cancel), Some(self.cancel.deadline()), |_| {
            let res = once().map_err(|f| match f {
                Failed::Transient(e) => Failed::Transient(Answer::Error(e)),
                Failed::Final(e) => Failed::Final(Answer::Error(e)),
            })?;
            let status = res.status().as_u16();
            if transient_status(status) {
                return Err(Failed::Transient(Answer::Busy {
                    request: format!("{method} {}", redact_url(url)),
                    status,
                    res: Box::new(res),
                }));
            }
            Ok(res)
        });
        match outcome {
            Ok((res, _)) => Ok(res),
            Err(GaveUp::Failed(Answer::Busy { res, .. })) => Ok(*res),
            Err(GaveUp::Failed(Answer::Error(e))) => Err(e),
            Err(GaveUp::Stopped { stop, .. }) => Err(OciError::Stopped(stop)),
            // No time left for the next attempt: the deadline, in effect.
            Err(GaveUp::OutOfTime(_)) => Err(OciError::Stopped(Stop::TimedOut)),
        }
    }

    /// One HTTP exchange, no retry. Transport failures are `Unreachable`,
    /// transient or not as [`transient_error`] judges them; a streamed
    /// body's own failure (the build stopping, a cap, a trickling source)
    /// is final and passed through.
    fn raw(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        payload: &mut Payload<'_>,
        auth: Option<String>,
    ) -> Result<Response<Body>, Failed<OciError>> {
        self.cancel
            .check()
            .map_err(|stop| Failed::Final(OciError::Stopped(stop)))?;
        let remaining = self.cancel.remaining();
        macro_rules! prepared {
            ($builder:expr) => {{
                let mut b = $builder.config().timeout_global(Some(remaining)).build();
                for (k, v) in headers {
                    b = b.header(*k, *v);
                }
                if let Some(a) = &auth {
                    b = b.header("Authorization", a.as_str());
                }
                b
            }};
        }
        let result = match method {
            "GET" => prepared!(self.agent.get(url)).call(),
            "HEAD" => prepared!(self.agent.head(url)).call(),
            "DELETE" => prepared!(self.agent.delete(url)).call(),
            "PUT" | "POST" | "PATCH" => {
                let b = match method {
                    "PUT" => prepared!(self.agent.put(url)),
                    "POST" => prepared!(self.agent.post(url)),
                    _ => prepared!(self.agent.patch(url)),
                };
                match payload {
                    Payload::Empty => b.header("Content-Length", "0").send_empty(),
                    Payload::Bytes(bytes) => b.send(*bytes),
                    Payload::Stream(reader, len) => {
                        let mut guarded = Guarded::new(&mut **reader, self.rules(None));
                        b.header("Content-Length", len.to_string())
                            .send(ureq::SendBody::from_reader(&mut guarded))
                    }
                }
            }
            other => unreachable!("method {other}"),
        };
        result.map_err(|e| {
            if let Some(stop) = self.cancel.stopped() {
                return Failed::Final(OciError::Stopped(stop));
            }
            let e = match e {
                ureq::Error::Io(io) => match carried(io) {
                    Ok(ours) => return Failed::Final(ours),
                    Err(io) => match Cut::of(&io) {
                        Some(cut) => return Failed::Final(self.cut(cut, method, url)),
                        None => ureq::Error::Io(io),
                    },
                },
                other => other,
            };
            let error = OciError::Unreachable {
                registry: self.endpoint.host.clone(),
                reason: format!("{method} {}: {e}", redact_url(url)),
            };
            if transient_error(&e) {
                Failed::Transient(error)
            } else {
                Failed::Final(error)
            }
        })
    }

    /// The failure a [`Guarded`] stream of `method url` was cut by.
    fn cut(&self, cut: Cut, method: &str, url: &str) -> OciError {
        match cut {
            Cut::Stopped(stop) => OciError::Stopped(stop),
            Cut::Deadline => OciError::Stopped(Stop::TimedOut),
            Cut::TooLarge { max } => OciError::TooLarge {
                what: format!("{method} {}", redact_url(url)),
                size: None,
                max,
            },
            Cut::TooSlow { .. } => OciError::Unreachable {
                registry: self.endpoint.host.clone(),
                reason: format!("{method} {}: {cut}", redact_url(url)),
            },
        }
    }

    /// A whole (small) body, at most `limit` bytes, read under the rules.
    fn read_body(&self, res: Response<Body>, limit: u64, what: &str) -> Result<Vec<u8>, OciError> {
        let mut reader = Guarded::new(
            res.into_body().into_with_config().limit(limit).reader(),
            self.rules(None),
        );
        let mut body = Vec::new();
        match reader.read_to_end(&mut body) {
            Ok(_) => Ok(body),
            Err(e) => match Cut::of(&e) {
                Some(cut) => Err(self.cut(cut, "GET", what)),
                None => Err(self.failed(format!("{what}: {e}"))),
            },
        }
    }

    /// The `Authorization` this registry already has (no token request:
    /// for a cleanup that must be quick).
    fn current_authorization(&self) -> Option<String> {
        let state = self.lock();
        match &state.scheme {
            Scheme::Basic => self.credential.as_ref().map(Credential::basic_header),
            Scheme::Bearer { .. } => state.token.as_ref().map(|(_, t)| format!("Bearer {t}")),
            Scheme::Unknown | Scheme::Anonymous => None,
        }
    }

    /// Drop an upload session that will not be finished (`DELETE` of its
    /// URL), so that the registry keeps none of its bytes. Best effort,
    /// quick, and done even when the build has stopped.
    pub fn cancel_upload(&self, location: &str) {
        let url = self.absolute(location);
        let mut request = self
            .agent
            .delete(&url)
            .config()
            .timeout_global(Some(CLEANUP_TIMEOUT))
            .build();
        if let Some(auth) = self.current_authorization() {
            request = request.header("Authorization", auth);
        }
        match request.call() {
            Ok(res) if res.status().is_success() || res.status().as_u16() == 404 => {
                tracing::debug!("upload session {} cancelled", redact_url(&url));
            }
            Ok(res) => tracing::warn!(
                "registry {}: cancelling the upload {}: HTTP {}; it keeps the partial upload until it expires",
                self.endpoint.host,
                redact_url(&url),
                res.status().as_u16()
            ),
            Err(e) => tracing::warn!(
                "registry {}: cancelling the upload {}: {e}; it keeps the partial upload until it expires",
                self.endpoint.host,
                redact_url(&url)
            ),
        }
    }

    /// A `Location` of this registry as a full URL.
    fn absolute(&self, location: &str) -> String {
        if location.starts_with('/') {
            self.url(location)
        } else {
            location.to_string()
        }
    }

    fn failed(&self, reason: String) -> OciError {
        OciError::Registry {
            registry: self.endpoint.host.clone(),
            reason,
        }
    }

    fn refused(&self) -> OciError {
        let reason = match &self.credential {
            Some(c) => format!(
                "refused the credentials of user {:?} (from {})",
                c.username,
                c.source.display()
            ),
            None => return self.no_credentials(),
        };
        OciError::Auth {
            registry: self.endpoint.host.clone(),
            reason,
        }
    }

    fn no_credentials(&self) -> OciError {
        let mut reason = format!(
            "wants a login, and no auth file has credentials for it (looked in {})",
            self.searched
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(helper) = &self.helper {
            reason.push_str(&format!(
                "; {} names a credential helper for it, which slugbuilder does not run",
                helper.display()
            ));
        }
        OciError::Auth {
            registry: self.endpoint.host.clone(),
            reason,
        }
    }

    /// An unexpected answer, with the registry's own error code if it gave one.
    pub fn status_error(&self, what: &str, status: u16, res: Response<Body>) -> OciError {
        let detail = self
            .read_body(res, MAX_ERROR_BODY, what)
            .ok()
            .and_then(|b| registry_error_message(&b))
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        self.failed(format!("{what}: HTTP {status}{detail}"))
    }

    // ----- the operations -----

    /// A manifest or index by tag or digest: (bytes, media type, digest).
    /// The digest is computed from the bytes; when asked by digest, the
    /// bytes must match it.
    pub fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        what: &str,
    ) -> Result<(Vec<u8>, String, String), OciError> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let res = self.send(
            "GET",
            &url,
            &[("Accept", MANIFEST_ACCEPT)],
            Payload::Empty,
            &[pull_scope(repo)],
        )?;
        let status = res.status().as_u16();
        if status == 404 {
            return Err(OciError::NotFound {
                what: what.to_string(),
                reference: format!("{}/{repo}:{reference}", self.endpoint.host)
                    .replace(":sha256:", "@sha256:"),
            });
        }
        if !(200..300).contains(&status) {
            return Err(self.status_error(
                &format!("GET manifest {repo}:{reference}"),
                status,
                res,
            ));
        }
        let media_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let bytes = self.read_body(
            res,
            MAX_MANIFEST_BYTES,
            &format!("manifest {repo}:{reference}"),
        )?;
        let digest = sha256_digest(&bytes);
        if reference.starts_with("sha256:") && reference != digest {
            return Err(self.failed(format!(
                "manifest {repo}@{reference}: the registry sent content with digest {digest}"
            )));
        }
        Ok((bytes, media_type, digest))
    }

    /// Store a manifest under `tag`: the moment the tag moves.
    pub fn put_manifest(
        &self,
        repo: &str,
        tag: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<(), OciError> {
        let url = self.url(&format!("/v2/{repo}/manifests/{tag}"));
        let res = self.send(
            "PUT",
            &url,
            &[("Content-Type", media_type)],
            Payload::Bytes(bytes),
            &[push_scope(repo)],
        )?;
        match res.status().as_u16() {
            200..=299 => Ok(()),
            status => Err(self.status_error(&format!("PUT manifest {repo}:{tag}"), status, res)),
        }
    }

    pub fn has_blob(&self, repo: &str, digest: &str, scopes: &[String]) -> Result<bool, OciError> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let res = self.send("HEAD", &url, &[], Payload::Empty, scopes)?;
        match res.status().as_u16() {
            200..=299 => Ok(true),
            404 => Ok(false),
            status => Err(self.status_error(&format!("HEAD blob {digest}"), status, res)),
        }
    }

    /// Stream a blob. The caller verifies the digest. One that says it is
    /// larger than the cap fails before it streams; one that does not say
    /// is cut at the cap.
    pub fn get_blob(&self, repo: &str, digest: &str) -> Result<Box<dyn Read + Send>, OciError> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let res = self.send("GET", &url, &[], Payload::Empty, &[pull_scope(repo)])?;
        let what = || format!("blob {digest} of {}/{repo}", self.endpoint.host);
        match res.status().as_u16() {
            200..=299 => {
                let length = res
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if let Some(size) = length.filter(|n| *n > self.max_blob_bytes) {
                    return Err(OciError::TooLarge {
                        what: what(),
                        size: Some(size),
                        max: self.max_blob_bytes,
                    });
                }
                Ok(Box::new(BlobBody {
                    inner: Guarded::new(
                        res.into_body().into_reader(),
                        self.rules(Some(self.max_blob_bytes)),
                    ),
                    registry: self.endpoint.host.clone(),
                    what: what(),
                }))
            }
            404 => Err(self.failed(format!("blob {digest} of {repo} is missing"))),
            status => Err(self.status_error(&format!("GET blob {digest}"), status, res)),
        }
    }

    /// Ask the registry to link `digest` from repository `from` into `repo`.
    pub fn mount_blob(&self, repo: &str, digest: &str, from: &str) -> Result<Mount, OciError> {
        let url = self.url(&format!(
            "/v2/{repo}/blobs/uploads/?mount={digest}&from={}",
            percent_encode(from)
        ));
        let res = self.send(
            "POST",
            &url,
            &[],
            Payload::Empty,
            &[push_scope(repo), pull_scope(from)],
        )?;
        match res.status().as_u16() {
            201 => Ok(Mount::Mounted),
            202 => Ok(Mount::NotMounted(location(&res))),
            status => Err(self.status_error(&format!("mount blob {digest}"), status, res)),
        }
    }

    /// Upload a blob of known digest and size in one request.
    pub fn upload_blob(
        &self,
        repo: &str,
        digest: &str,
        size: u64,
        reader: &mut dyn Read,
        session: Option<String>,
    ) -> Result<(), OciError> {
        let scopes = [push_scope(repo)];
        if size > self.max_blob_bytes {
            if let Some(session) = session {
                self.cancel_upload(&session);
            }
            return Err(OciError::TooLarge {
                what: format!("blob {digest}"),
                size: Some(size),
                max: self.max_blob_bytes,
            });
        }
        let location = match session {
            Some(l) => l,
            None => {
                let url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
                let res = self.send("POST", &url, &[], Payload::Empty, &scopes)?;
                match res.status().as_u16() {
                    202 => location(&res)
                        .ok_or_else(|| self.failed("upload session without a Location".into()))?,
                    status => {
                        return Err(self.status_error(
                            &format!("start upload of {digest}"),
                            status,
                            res,
                        ))
                    }
                }
            }
        };
        let mut url = self.absolute(&location);
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("digest=");
        url.push_str(&percent_encode(digest));
        let mut put = || {
            // Make sure the token is there before the body streams: a 401
            // after the body cannot be retried.
            self.authorization(&scopes)?;
            let res = self.send(
                "PUT",
                &url,
                &[("Content-Type", "application/octet-stream")],
                Payload::Stream(reader, size),
                &scopes,
            )?;
            match res.status().as_u16() {
                200..=299 => Ok(()),
                status => Err(self.status_error(&format!("upload of {digest}"), status, res)),
            }
        };
        let result = put();
        if result.is_err() {
            self.cancel_upload(&location);
        }
        result
    }
}

fn location(res: &Response<Body>) -> Option<String> {
    res.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A request that failed, or an answer that says "busy, try again".
enum Answer {
    Busy {
        request: String,
        status: u16,
        res: Box<Response<Body>>,
    },
    Error(OciError),
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Busy {
                request, status, ..
            } => write!(f, "{request}: HTTP {status}"),
            Answer::Error(e) => e.fmt(f),
        }
    }
}

/// `{"errors":[{"code":"X","message":"y"}]}` -> `X: y`.
fn registry_error_message(body: &[u8]) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    let first = doc.get("errors")?.as_array()?.first()?;
    let code = first.get("code").and_then(|c| c.as_str()).unwrap_or("");
    let message = first.get("message").and_then(|c| c.as_str()).unwrap_or("");
    let text = match (code.is_empty(), message.is_empty()) {
        (false, false) => format!("{code}: {message}"),
        (false, true) => code.to_string(),
        (true, false) => message.to_string(),
        (true, true) => return None,
    };
    Some(text.chars().take(300).collect())
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Percent-encode a query value (RFC 3986 unreserved kept).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `Bearer realm="r",service="s"` -> ("Bearer", [(realm, r), (service, s)]).
fn parse_challenge(header: &str) -> (String, Vec<(String, String)>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        params.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    (scheme.to_string(), params)
}

/// A blob streaming from a registry: [`Guarded`] (the build's stop, the
/// minimum progress, the cap), its cuts told as the [`OciError`] they
/// are, carried in the `io::Error` ([`carried`] takes them out).
struct BlobBody<R> {
    inner: Guarded<R>,
    registry: String,
    what: String,
}

impl<R: Read> Read for BlobBody<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            let error = match Cut::of(&e) {
                None => return e,
                Some(Cut::Stopped(stop)) => OciError::Stopped(stop),
                Some(Cut::Deadline) => OciError::Stopped(Stop::TimedOut),
                Some(Cut::TooLarge { max }) => OciError::TooLarge {
                    what: self.what.clone(),
                    size: None,
                    max,
                },
                Some(cut @ Cut::TooSlow { .. }) => OciError::Unreachable {
                    registry: self.registry.clone(),
                    reason: format!("{}: {cut}", self.what),
                },
            };
            std::io::Error::other(error)
        })
    }
}

/// The [`OciError`] an I/O error carries (from a [`BlobBody`], however
/// many `io::Error`s deep), or the I/O error as it was.
pub fn carried(e: std::io::Error) -> Result<OciError, std::io::Error> {
    let Some(inner) = e.get_ref() else {
        return Err(e);
    };
    if inner.is::<OciError>() {
        let inner = e.into_inner().expect("checked above");
        return Ok(*inner.downcast::<OciError>().expect("checked above"));
    }
    if inner.is::<std::io::Error>() {
        let kind = e.kind();
        let inner = *e
            .into_inner()
            .expect("checked above")
            .downcast::<std::io::Error>()
            .expect("checked above");
        return carried(inner).map_err(|inner| std::io::Error::new(kind, inner));
    }
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_quotes_and_commas() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(
            params,
            [
                (
                    "realm".to_string(),
                    "https://auth.example/token".to_string()
                ),
                ("service".to_string(), "registry.example".to_string()),
                ("scope".to_string(), "repository:a/b:pull,push".to_string()),
            ]
        );
        let (scheme, params) = parse_challenge(r#"Basic realm="with \"quotes\"""#);
        assert_eq!(scheme, "Basic");
        assert_eq!(params[0].1, r#"with "quotes""#);
    }

    #[test]
    fn registry_errors_are_short() {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(
            registry_error_message(body).unwrap(),
            "MANIFEST_UNKNOWN: manifest unknown"
        );
        assert_eq!(registry_error_message(b"<html>"), None);
    }

    /// A registry that wants Bearer tokens from its token service, as
    /// Docker Hub, GHCR or Harbor do: one answer per connection.
    fn bearer_registry() -> (u16, std::thread::JoinHandle<Vec<String>>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut token_queries = Vec::new();
            let good = Credential {
                username: "u".into(),
                password: "pw".into(),
                source: PathBuf::new(),
            }
            .basic_header();
            for conn in listener.incoming().take(6) {
                let mut conn = conn.unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let mut auth = String::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("authorization") {
                            auth = value.trim().to_string();
                        }
                    }
                }
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_string();
                let (status, headers, body) = if let Some(query) = path.strip_prefix("/token?") {
                    token_queries.push(query.to_string());
                    if auth == good {
                        ("200 OK", String::new(), r#"{"token":"t0k3n"}"#.to_string())
                    } else {
                        ("401 Unauthorized", String::new(), String::new())
                    }
                } else if auth == "Bearer t0k3n" && path == "/v2/app/manifests/1" {
                    (
                        "200 OK",
                        "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n".to_string(),
                        r#"{"schemaVersion":2}"#.to_string(),
                    )
                } else if auth == "Bearer t0k3n" && path == "/v2/" {
                    ("200 OK", String::new(), "{}".to_string())
                } else {
                    (
                        "401 Unauthorized",
                        format!("WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"reg.test\"\r\n"),
                        String::new(),
                    )
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
            token_queries
        });
        (port, server)
    }

    fn client(port: u16, password: &str) -> Registry {
        let host = format!("127.0.0.1:{port}");
        Registry::new(
            Endpoint {
                host: host.clone(),
                api_host: host.clone(),
                insecure: true,
            },
            Some(Credential {
                username: "u".into(),
                password: password.into(),
                source: PathBuf::from("/etc/auth.json"),
            }),
            None,
            Vec::new(),
            vec![host],
            Cancel::new(Duration::from_secs(30)),
            slug_shared::archive::DEFAULT_MAX_BYTES,
        )
    }

    #[test]
    fn bearer_tokens_are_fetched_for_the_scopes_with_the_credentials() {
        let (port, server) = bearer_registry();
        let registry = client(port, "pw");
        registry.connect(&[pull_scope("app")]).unwrap();
        let (bytes, media_type, digest) = registry.get_manifest("app", "1", "run image").unwrap();
        assert_eq!(bytes, br#"{"schemaVersion":2}"#);
        assert_eq!(media_type, "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(digest, sha256_digest(&bytes));
        drop(registry);
        // Unblock the server's remaining accepts.
        for _ in 0..6 {
            let _ = std::net::TcpStream::connect(("127.0.0.1", port));
        }
        let queries = server.join().unwrap();
        assert_eq!(queries[0], "service=reg.test&scope=repository%3Aapp%3Apull");
    }

    #[test]
    fn a_token_service_that_refuses_is_an_auth_error_without_the_password() {
        let (port, server) = bearer_registry();
        let err = client(port, "wrong-pw")
            .connect(&[pull_scope("app")])
            .unwrap_err();
        assert!(matches!(err, OciError::Auth { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("refused the credentials of user \"u\" (from /etc/auth.json)"),
            "{text}"
        );
        assert!(!text.contains("wrong-pw"));
        for _ in 0..6 {
            let _ = std::net::TcpStream::connect(("127.0.0.1", port));
        }
        server.join().unwrap();
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            percent_encode("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }
}
