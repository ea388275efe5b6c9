//! Receiving the app: its source (stdin, a tar file, a directory or a URL) and its
//! config vars (ENV_DIR).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use super::{io_ctx, BuildConfig, BuildError, SourceInput};
use slug_shared::archive::{self, ArchiveError, PackOptions, UnpackOptions, UnpackSummary};
use slug_shared::cancel::Cancel;
use slug_shared::log;
use slug_shared::release::is_valid_env_name;
use slug_shared::rootdir::{Owner, RootDir};

/// The mtime of every file in a slug unless `SOURCE_DATE_EPOCH` says
/// otherwise: 1980-01-01T00:00:00Z (the earliest time a zip file can hold,
/// so tools that zip an app's files never meet an older one). One constant
/// whatever the source: a commit archive, a tree archive (`git archive
/// HEAD:dir`, stamped with the current time) and a directory of the same
/// tree give the same slug bytes.
pub const DEFAULT_EPOCH: u64 = 315_532_800;

/// Largest ENV_DIR file copied, in bytes (a config var value).
const MAX_ENV_VALUE: u64 = 1 << 20;

pub fn is_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Unpack the app source into `build` (owned by `owner`), within the
/// build's deadline: a stdin that never ends does not outlast SIGTERM.
pub fn receive(
    cfg: &BuildConfig,
    build: &Path,
    owner: Owner,
    cancel: &Arc<Cancel>,
) -> Result<UnpackSummary, BuildError> {
    let opts = UnpackOptions {
        owner,
        limits: cfg.limits,
        cancel: Some(Arc::clone(cancel)),
        allow_truncated: cfg.allow_truncated_source,
    };
    let source_err = |e: ArchiveError| match e {
        ArchiveError::Stopped(stop) => BuildError::Stopped(stop),
        e => BuildError::Source(e),
    };
    match &cfg.source {
        SourceInput::Stdin => archive::unpack(io::stdin(), build, &opts).map_err(source_err),
        SourceInput::Url(url) => {
            log::header("Fetching the source");
            super::remote::receive_source(url.expose(), build, &opts, cancel)
        }
        SourceInput::File(path) => {
            let file = File::open(path).map_err(|source| BuildError::SourceOpen {
                path: path.clone(),
                source,
            })?;
            archive::unpack(file, build, &opts).map_err(source_err)
        }
        SourceInput::Dir(dir) => {
            if !dir.is_dir() {
                return Err(BuildError::SourceNotDir { path: dir.clone() });
            }
            // One code path for every source: the directory is streamed as a
            // tar through the same safe unpacker a pushed archive goes through.
            let (reader, writer) = io::pipe().map_err(io_ctx("creating a pipe"))?;
            let dir = dir.clone();
            let pack_opts = PackOptions {
                skip_root_git: true,
                max_bytes: cfg.limits.max_bytes,
                max_entries: cfg.limits.max_entries,
                max_depth: cfg.limits.max_depth,
                cancel: Some(Arc::clone(cancel)),
                ..PackOptions::default()
            };
            let packer = std::thread::spawn(move || archive::pack_tar(&dir, writer, &pack_opts));
            let unpacked = archive::unpack(reader, build, &opts);
            let packed = packer.join().expect("packer thread does not panic");
            // The unpacker's complaint first: when it stops reading, the
            // packer only sees a broken pipe.
            let summary = unpacked.map_err(source_err)?;
            packed.map_err(source_err)?;
            Ok(summary)
        }
    }
}

/// Drop the source's root `.git`: never part of a slug, and buildpacks do
/// not get it either (as on Heroku).
pub fn remove_root_git(build: &Path) -> Result<(), BuildError> {
    let mut root = RootDir::open_existing(build).map_err(|e| BuildError::Io {
        context: "opening the build dir".into(),
        source: e.into_io(),
    })?;
    root.remove(&[OsStr::new(".git")])
        .map_err(|e| BuildError::Io {
            context: "removing the source's .git".into(),
            source: e.into_io(),
        })
}

/// Build ENV_DIR: the operator's env dir (copied, so buildpacks cannot
/// change it) plus `--env` values, readable by the build user alone. Values
/// are never printed.
pub fn prepare_env_dir(cfg: &BuildConfig, env_dir: &Path, owner: Owner) -> Result<(), BuildError> {
    let mut dest = RootDir::open(env_dir, owner).map_err(|e| BuildError::Io {
        context: "opening ENV_DIR".into(),
        source: e.into_io(),
    })?;
    let mut write = |name: &str, value: &[u8]| {
        dest.write_file(&[OsStr::new(name)], value, 0o400)
            .map_err(|e| BuildError::Io {
                context: format!("writing env var {name}"),
                source: e.into_io(),
            })
    };
    if let Some(src) = &cfg.env_dir {
        let entries = std::fs::read_dir(src).map_err(|source| BuildError::EnvDir {
            path: src.clone(),
            source,
        })?;
        let mut names: Vec<_> = entries
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_ctx(format!("reading env dir {}", src.display())))?;
        names.sort();
        for name in names {
            let name_str = name.to_string_lossy().into_owned();
            let path = src.join(&name);
            let meta =
                std::fs::metadata(&path).map_err(io_ctx(format!("reading env var {name_str}")))?;
            if !meta.is_file() {
                log::warn(format!(
                    "ENV_DIR: skipping {name_str:?}: not a regular file"
                ));
                continue;
            }
            if !is_valid_env_name(&name_str) {
                log::warn(format!(
                    "ENV_DIR: skipping {name_str:?}: not a valid variable name"
                ));
                continue;
            }
            if meta.len() > MAX_ENV_VALUE {
                return Err(BuildError::EnvValueTooLarge {
                    name: name_str,
                    limit: MAX_ENV_VALUE,
                });
            }
            let value =
                std::fs::read(&path).map_err(io_ctx(format!("reading env var {name_str}")))?;
            write(&name_str, &value)?;
        }
    }
    for (key, value) in &cfg.env_vars {
        if !is_valid_env_name(key) {
            return Err(BuildError::EnvName { name: key.clone() });
        }
        write(key, value.as_bytes())?;
    }
    Ok(())
}
