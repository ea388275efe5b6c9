//! Object storage: the source tarball (`SOURCE_URL`), the build cache
//! (`CACHE_URL`, restored before the build and saved after a successful
//! one) and the slug upload (`PUT_URL`), each through the one HTTP client
//! ([`slug_shared::http`]) under the build's deadline and interrupt.
//!
//! The URLs are usually pre-signed: they are only ever shown redacted.
//! The cache is tenant data (a buildpack wrote it): it is unpacked by the
//! safe unpacker as the build user's files and packed like the slug
//! (sorted, owner 0:0, fixed gzip header), keeping mtimes, which tools in
//! the cache use to tell what is up to date.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use super::{BuildConfig, BuildError};
use slug_shared::archive::{self, ArchiveError, PackOptions, UnpackOptions, UnpackSummary};
use slug_shared::cancel::Cancel;
use slug_shared::http::{self, HttpError, HttpOptions, Uploaded};
use slug_shared::log;
use slug_shared::rootdir::Owner;

/// Options for one transfer of this build.
fn http_options(what: &'static str, cancel: &Arc<Cancel>) -> HttpOptions {
    HttpOptions {
        what,
        deadline: Some(cancel.deadline()),
        cancel: Some(Arc::clone(cancel)),
        ..HttpOptions::default()
    }
}

/// The build stopped while a transfer was running: say so, not the
/// transfer's own failure.
fn stopped_or(
    cancel: &Cancel,
    wrap: fn(HttpError) -> BuildError,
) -> impl FnOnce(HttpError) -> BuildError + '_ {
    move |e| match cancel.stopped() {
        Some(stop) => BuildError::Stopped(stop),
        None => wrap(e),
    }
}

/// Download the source tarball and unpack it into `build`.
pub fn receive_source(
    url: &str,
    build: &Path,
    opts: &UnpackOptions,
    cancel: &Arc<Cancel>,
) -> Result<UnpackSummary, BuildError> {
    let body = get(url, "SOURCE_URL", cancel)?;
    let watch = body.watch();
    archive::unpack(body, build, opts).map_err(|e| match (e, watch.network_error()) {
        (ArchiveError::Stopped(stop), _) => BuildError::Stopped(stop),
        (_, Some(net)) => stopped_or(cancel, BuildError::Download)(net),
        (e, None) => BuildError::Source(e),
    })
}

/// Start a download, waiting for its answer no longer than the build may.
fn get(url: &str, what: &'static str, cancel: &Arc<Cancel>) -> Result<http::Download, BuildError> {
    let opts = http_options(what, cancel);
    let owned = url.to_string();
    cancel
        .run_blocking(what, move || http::get(&owned, &opts))?
        .map_err(stopped_or(cancel, BuildError::Download))
}

/// Upload `file` with one PUT, waiting no longer than the build may.
pub fn put(
    url: &str,
    what: &'static str,
    file: &File,
    cancel: &Arc<Cancel>,
) -> Result<Uploaded, BuildError> {
    let opts = http_options(what, cancel);
    let owned = url.to_string();
    let file = file
        .try_clone()
        .map_err(super::io_ctx(format!("opening the file for {what}")))?;
    cancel
        .run_blocking(what, move || http::put_file(&owned, &file, &opts))?
        .map_err(stopped_or(cancel, BuildError::Upload))
}

/// Fill the (empty) cache dir from `CACHE_URL`. A missing cache (404) is a
/// first build; a cache that cannot be had or unpacked is a warning, and
/// the build goes on with an empty cache: a cache only saves time.
pub fn restore_cache(
    cfg: &BuildConfig,
    url: &str,
    cache: &Path,
    owner: Owner,
    cancel: &Arc<Cancel>,
) -> Result<(), BuildError> {
    log::header("Restoring the build cache");
    let body = match get(url, "CACHE_URL", cancel) {
        Ok(body) => body,
        Err(BuildError::Download(HttpError::Status {
            status: 404 | 410, ..
        })) => {
            log::info("No cache yet: this build starts cold");
            return Ok(());
        }
        Err(BuildError::Download(e)) => {
            log::warn(format!(
                "could not fetch the build cache ({e}); building without it"
            ));
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let watch = body.watch();
    let opts = UnpackOptions {
        owner,
        limits: cfg.limits,
        cancel: Some(Arc::clone(cancel)),
        allow_truncated: false,
    };
    match archive::unpack(body, cache, &opts) {
        Ok(summary) => {
            log::info(format!(
                "Restored {} entries ({})",
                summary.entries,
                log::human_size(watch.bytes())
            ));
            Ok(())
        }
        Err(ArchiveError::Stopped(stop)) => Err(BuildError::Stopped(stop)),
        Err(e) => {
            cancel.check()?;
            let why = match watch.network_error() {
                Some(net) => net.to_string(),
                None => log::error_line(&e),
            };
            log::warn(format!(
                "the build cache could not be restored ({why}); building without it"
            ));
            empty_dir(cache)?;
            Ok(())
        }
    }
}

/// Remove what a failed restore left in the cache dir, keeping the dir.
fn empty_dir(dir: &Path) -> Result<(), BuildError> {
    use std::os::fd::AsFd;
    let context = format!("emptying cache dir {}", dir.display());
    let fd = slug_shared::tree::open_dir(dir).map_err(super::io_ctx(&context))?;
    let names = slug_shared::rootdir::list_dir(fd.as_fd())
        .map_err(|e| super::io_ctx(&context)(e.into()))?;
    for name in names {
        slug_shared::rootdir::remove_at(fd.as_fd(), &name)
            .map_err(|e| super::io_ctx(&context)(e.into()))?;
    }
    Ok(())
}

/// Pack the cache dir into a file in `scratch` (root's) and upload it to
/// `CACHE_URL`. Only called after a successful build. A failure is a
/// warning: the slug is built and delivered.
pub fn save_cache(
    cfg: &BuildConfig,
    url: &str,
    cache: &Path,
    scratch: &Path,
    reader: Owner,
    cancel: &Arc<Cancel>,
) -> Result<(), BuildError> {
    log::header("Saving the build cache");
    let mut tmp = tempfile::Builder::new()
        .prefix("cache-")
        .suffix(".tgz")
        .tempfile_in(scratch)
        .map_err(super::io_ctx("creating the cache archive"))?;
    let opts = PackOptions {
        mtime_clamp: None,
        skip_root_git: false,
        max_bytes: cfg.limits.max_bytes,
        max_entries: cfg.limits.max_entries,
        max_depth: cfg.limits.max_depth,
        reader,
        cancel: Some(Arc::clone(cancel)),
        // The cache is packed once per build; no earlier blocks to reuse.
        blocks: None,
    };
    let packed = {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        let packed = archive::pack_gzip(cache, &mut out, cfg.compression_level, &opts);
        packed.and_then(|summary| {
            out.flush().map_err(|source| ArchiveError::Write {
                path: cache.to_path_buf(),
                source,
            })?;
            Ok(summary)
        })
    };
    let summary = match packed {
        Ok(summary) => summary,
        Err(ArchiveError::Stopped(stop)) => return Err(BuildError::Stopped(stop)),
        Err(e) => {
            log::warn(format!(
                "the build cache could not be packed ({}); it is not saved",
                log::error_line(&e)
            ));
            return Ok(());
        }
    };
    let file = tmp
        .reopen()
        .map_err(super::io_ctx("reading the cache archive"))?;
    match put(url, "CACHE_URL", &file, cancel) {
        Ok(up) => {
            log::info(format!(
                "Saved {} entries ({})",
                summary.entries,
                log::human_size(up.bytes)
            ));
            Ok(())
        }
        Err(BuildError::Upload(e)) => {
            log::warn(format!("the build cache could not be saved ({e})"));
            Ok(())
        }
        Err(e) => Err(e),
    }
}
