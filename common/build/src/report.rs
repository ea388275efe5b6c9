//! The build report: one JSON document a platform reads after a build,
//! written whether the build succeeded or not (`slugbuilder --report`).
//!
//! The schema is documented in the README ("Build report") and versioned
//! by [`SCHEMA_VERSION`]: fields are only ever added within a version,
//! never renamed, removed or given another type. Every field is always
//! present; what a build did not get to is `null` (a phase not reached, a
//! slug not packed).
//!
//! A build fills a [`Recorder`] as it goes (phases, buildpacks and the
//! duration of each of their steps, warnings); the caller adds the outcome
//! and writes the file atomically.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Version of the report's schema.
pub const SCHEMA_VERSION: u32 = 1;

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    /// `succeeded` or `failed`.
    pub result: Outcome,
    /// slugbuilder's exit code (`slug_shared::exit`, docs/cli.md).
    pub exit_code: u8,
    /// The error line, `null` on success.
    pub error: Option<String>,
    pub stack: String,
    pub request_id: String,
    /// The commit built, if known.
    pub source_version: Option<String>,
    /// Buildpacks in the order they ran (those detected or named).
    pub buildpacks: Vec<BuildpackReport>,
    /// Process types of the slug, `web` first as printed; `null` when the
    /// build did not get to them.
    pub process_types: Option<Vec<String>>,
    pub slug: Option<SlugReport>,
    /// The OCI image, when one was published (`--image`).
    pub image: Option<ImageReport>,
    /// The build's warnings (slugbuilder's and the buildpacks' ` !` lines).
    pub warnings: Vec<String>,
    /// Seconds spent in each phase, `null` for a phase not reached.
    pub phases: Phases,
    /// Seconds from start to end of the build.
    pub duration: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Succeeded,
    Failed,
}

/// One buildpack that ran.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BuildpackReport {
    /// As named (`--buildpack`, `.buildpacks`, `BUILDPACKS`) or the
    /// installed buildpack's name when detected.
    pub spec: String,
    /// What `bin/detect` printed (or the buildpack's directory name).
    pub name: Option<String>,
    /// The commit checked out, for a git buildpack.
    pub commit: Option<String>,
    /// `sha256:...` of a downloaded buildpack archive, when known.
    pub digest: Option<String>,
    /// Seconds spent in each step, `null` for a step not run.
    pub steps: Steps,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Steps {
    pub detect: Option<f64>,
    pub compile: Option<f64>,
    pub export: Option<f64>,
    pub release: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlugReport {
    /// Compressed size in bytes.
    pub size: u64,
    /// Hex sha256 of the compressed slug.
    pub sha256: String,
    /// Whether the slug was uploaded to `PUT_URL`.
    pub uploaded: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    pub reference: Option<String>,
    pub digest: Option<String>,
}

/// The phases of a build, in order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phases {
    /// Preparing the workspace and the sandbox.
    pub prepare: Option<f64>,
    /// Receiving (or downloading) and unpacking the source.
    pub source: Option<f64>,
    /// Downloading and unpacking the cache (`CACHE_URL`).
    pub cache_restore: Option<f64>,
    /// Fetching, detecting and compiling buildpacks.
    pub buildpacks: Option<f64>,
    /// `bin/release`, `.release`, the Procfile.
    pub release: Option<f64>,
    /// Packing the slug.
    pub pack: Option<f64>,
    /// Packing and uploading the cache (`CACHE_URL`).
    pub cache_save: Option<f64>,
    /// Uploading the slug (`PUT_URL`) and writing it to its destination.
    pub deliver: Option<f64>,
}

/// Which field of [`Phases`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseName {
    Prepare,
    Source,
    CacheRestore,
    Buildpacks,
    Release,
    Pack,
    CacheSave,
    Deliver,
}

/// Which field of [`Steps`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepName {
    Detect,
    Compile,
    Export,
    Release,
}

/// Seconds, to the millisecond.
pub fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

impl Report {
    pub fn new(stack: &str, request_id: &str) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            result: Outcome::Failed,
            exit_code: 1,
            error: None,
            stack: stack.to_string(),
            request_id: request_id.to_string(),
            source_version: None,
            buildpacks: Vec::new(),
            process_types: None,
            slug: None,
            image: None,
            warnings: Vec::new(),
            phases: Phases::default(),
            duration: 0.0,
        }
    }

    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a report always serializes");
        text.push('\n');
        text
    }

    /// Write the report to `path` atomically (a temporary file beside it,
    /// then a rename): a reader never sees half a report. Where no file
    /// can be made beside it (Kubernetes' `/dev/termination-log`, a file
    /// mounted into a read-only directory), it is written in place.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let text = self.to_json();
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let staged = tempfile::Builder::new()
            .prefix(".report-")
            .suffix(".json.partial")
            .tempfile_in(dir)
            .and_then(|mut tmp| {
                tmp.write_all(text.as_bytes())?;
                tmp.as_file().sync_all()?;
                Ok(tmp)
            });
        let in_place = || std::fs::write(path, text.as_bytes());
        match staged {
            Ok(tmp) => match tmp.persist(path) {
                Ok(_) => Ok(()),
                // A mount point cannot be renamed over.
                Err(e) if e.error.raw_os_error() == Some(nix::libc::EBUSY) => in_place(),
                Err(e) => Err(e.error),
            },
            Err(_) => in_place(),
        }
    }
}

impl Phases {
    fn slot(&mut self, name: PhaseName) -> &mut Option<f64> {
        match name {
            PhaseName::Prepare => &mut self.prepare,
            PhaseName::Source => &mut self.source,
            PhaseName::CacheRestore => &mut self.cache_restore,
            PhaseName::Buildpacks => &mut self.buildpacks,
            PhaseName::Release => &mut self.release,
            PhaseName::Pack => &mut self.pack,
            PhaseName::Deliver => &mut self.deliver,
            PhaseName::CacheSave => &mut self.cache_save,
        }
    }
}

impl Steps {
    fn slot(&mut self, name: StepName) -> &mut Option<f64> {
        match name {
            StepName::Detect => &mut self.detect,
            StepName::Compile => &mut self.compile,
            StepName::Export => &mut self.export,
            StepName::Release => &mut self.release,
        }
    }
}

/// The report of a build in progress, shared between the build and
/// whoever must write it (also from the signal thread, on an abrupt end).
#[derive(Debug, Clone)]
pub struct Recorder {
    started: Instant,
    inner: Arc<Mutex<Report>>,
}

impl Recorder {
    pub fn new(stack: &str, request_id: &str) -> Self {
        Self {
            started: Instant::now(),
            inner: Arc::new(Mutex::new(Report::new(stack, request_id))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Report> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Change the report.
    pub fn update(&self, f: impl FnOnce(&mut Report)) {
        f(&mut self.lock());
    }

    /// Run one phase of the build and record how long it took, whether
    /// it succeeded or not.
    pub fn phase<T>(&self, name: PhaseName, work: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = work();
        let took = seconds(start.elapsed());
        let mut report = self.lock();
        let slot = report.phases.slot(name);
        *slot = Some(slot.unwrap_or(0.0) + took);
        out
    }

    /// A buildpack joins the report; returns its index.
    pub fn add_buildpack(&self, spec: &str) -> usize {
        let mut report = self.lock();
        report.buildpacks.push(BuildpackReport {
            spec: spec.to_string(),
            ..BuildpackReport::default()
        });
        report.buildpacks.len() - 1
    }

    pub fn update_buildpack(&self, index: usize, f: impl FnOnce(&mut BuildpackReport)) {
        if let Some(bp) = self.lock().buildpacks.get_mut(index) {
            f(bp);
        }
    }

    /// Run one step of buildpack `index` and record how long it took.
    pub fn step<T>(&self, index: usize, name: StepName, work: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = work();
        let took = seconds(start.elapsed());
        self.update_buildpack(index, |bp| *bp.steps.slot(name) = Some(took));
        out
    }

    /// The report as it stands, with the outcome filled in: `error` is
    /// `None` on success. Warnings are those logged so far.
    pub fn finish(&self, exit_code: u8, error: Option<String>) -> Report {
        let mut report = self.lock().clone();
        report.result = if error.is_none() && exit_code == 0 {
            Outcome::Succeeded
        } else {
            Outcome::Failed
        };
        report.exit_code = exit_code;
        report.error = error;
        report.warnings = slug_shared::log::warnings();
        report.duration = seconds(self.started.elapsed());
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_present_even_when_empty() {
        let rec = Recorder::new("heroku-24", "r1");
        let i = rec.add_buildpack("heroku/python");
        rec.step(i, StepName::Compile, || ());
        rec.phase(PhaseName::Source, || ());
        let report = rec.finish(13, Some("boom".into()));
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        let obj = json.as_object().unwrap();
        for key in [
            "schema_version",
            "result",
            "exit_code",
            "error",
            "stack",
            "request_id",
            "source_version",
            "buildpacks",
            "process_types",
            "slug",
            "image",
            "warnings",
            "phases",
            "duration",
        ] {
            assert!(obj.contains_key(key), "{key} missing: {json}");
        }
        assert_eq!(json["result"], "failed");
        assert_eq!(json["exit_code"], 13);
        assert!(json["phases"]["source"].is_number());
        assert!(json["phases"]["pack"].is_null());
        let bp = &json["buildpacks"][0];
        assert_eq!(bp["spec"], "heroku/python");
        assert!(bp["steps"]["compile"].is_number());
        assert!(bp["steps"]["release"].is_null());
        assert!(bp["commit"].is_null() && bp["digest"].is_null());
    }

    #[test]
    fn written_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        let report = Recorder::new("s", "r").finish(0, None);
        report.write(&path).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(json["result"], "succeeded");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
