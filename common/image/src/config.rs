//! The app image's config and manifest: a pure function of the run image
//! and of what the slug brings ([`App`]), so that the same slug, run image
//! and epoch give the same digests, and a rebase gives exactly what a
//! fresh publish on the new run image would.
//!
//! Config: the run image's (platform, entrypoint, exposed ports, stop
//! signal, env, labels), with `User` the run user as `uid:gid` (the owner
//! of `/app`; numeric, as Kubernetes' `runAsNonRoot` needs), `Cmd
//! ["start","web"]`, `WorkingDir /app`, the slug's `.release` config vars
//! added to `Env` where the run image does not set them (slugrunner's
//! rule), `created` and the history entry of the slug layer at the build's
//! epoch, and labels saying what the image holds (see the `LABEL_*`
//! constants). Manifest: OCI, the run image's layers (Docker media types
//! renamed to their OCI equivalents: the bytes and digests are the same)
//! plus the slug layer, annotated with the base's digest and name.
//!
//! Everything is serialised with sorted keys ([`super::canonical_json`]):
//! oci-spec keeps labels and annotations in hash maps, whose order changes
//! from run to run.

use std::collections::{BTreeMap, HashMap};

use oci_spec::image::{
    Config, Descriptor, History, HistoryBuilder, ImageConfiguration, ImageManifest,
    ImageManifestBuilder, MediaType,
};

use super::registry::sha256_digest;
use super::store::Image;
use super::{canonical_json, OciError};

pub const LABEL_SLUG_SHA256: &str = "io.slugbuilder.slug.sha256";
/// The diff_id of the slug layer: marks the image as ours, for rebase.
pub const LABEL_SLUG_LAYER: &str = "io.slugbuilder.slug.layer";
/// `io.slugbuilder.process.TYPE` = the command.
pub const LABEL_PROCESS_PREFIX: &str = "io.slugbuilder.process.";
/// JSON list of the buildpacks that built the slug.
pub const LABEL_BUILDPACKS: &str = "io.slugbuilder.buildpacks";
/// JSON object of the `.release` config vars.
pub const LABEL_CONFIG_VARS: &str = "io.slugbuilder.config-vars";
pub const LABEL_REVISION: &str = "org.opencontainers.image.revision";
pub const LABEL_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";
pub const LABEL_BASE_NAME: &str = "org.opencontainers.image.base.name";
/// Labels of ours start so; a run image's are dropped (it may itself be an
/// app image).
const OUR_PREFIX: &str = "io.slugbuilder.";

/// What the app brings to an image, whatever the run image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    /// The slug layer's descriptor (OCI gzip layer).
    pub layer: Descriptor,
    pub diff_id: String,
    pub slug_sha256: String,
    pub process_types: BTreeMap<String, String>,
    pub config_vars: BTreeMap<String, String>,
    pub buildpacks: Vec<String>,
    pub revision: Option<String>,
    pub epoch: u64,
    /// Owner of `/app`: the run user.
    pub owner: (u32, u32),
}

/// A finished image, ready to be written.
#[derive(Debug, Clone)]
pub struct Built {
    pub config: Vec<u8>,
    pub config_digest: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    /// The run image's layers (as in the new manifest).
    pub base_layers: Vec<Descriptor>,
}

fn bad(e: impl std::fmt::Display) -> OciError {
    OciError::BadImage(e.to_string())
}

/// The OCI media type of a layer (Docker's names renamed).
fn oci_layer_type(media: &MediaType) -> MediaType {
    match media.to_string().as_str() {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => MediaType::ImageLayerGzip,
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            MediaType::ImageLayerNonDistributableGzip
        }
        _ => media.clone(),
    }
}

/// Build the app image's config and manifest.
pub fn build(base: &Image, base_name: Option<&str>, app: &App) -> Result<Built, OciError> {
    let created = rfc3339(app.epoch);
    let mut config: ImageConfiguration = base.config.clone();
    config.set_created(Some(created.clone()));
    config.set_author(None);
    stack_slug_layer(&mut config, app, &created)?;
    let run = config.config().clone().unwrap_or_default();
    config.set_config(Some(run_config(run, base, base_name, app)?));

    let config_bytes = canonical_json(&config)?;
    let config_digest = sha256_digest(&config_bytes);
    let base_layers: Vec<Descriptor> = base
        .manifest
        .layers()
        .iter()
        .map(|d| {
            let mut d = d.clone();
            d.set_media_type(oci_layer_type(d.media_type()));
            d
        })
        .collect();
    let mut layers = base_layers.clone();
    layers.push(app.layer.clone());
    let manifest = manifest(base, base_name, layers, &config_bytes, &config_digest)?;
    let manifest_bytes = canonical_json(&manifest)?;
    Ok(Built {
        manifest_digest: sha256_digest(&manifest_bytes),
        manifest: manifest_bytes,
        config: config_bytes,
        config_digest,
        base_layers,
    })
}

/// The slug layer on top of the run image's, with a history entry when
/// the run image keeps a history.
fn stack_slug_layer(
    config: &mut ImageConfiguration,
    app: &App,
    created: &str,
) -> Result<(), OciError> {
    let mut diff_ids = config.rootfs().diff_ids().clone();
    diff_ids.push(app.diff_id.clone());
    let mut rootfs = config.rootfs().clone();
    rootfs.set_diff_ids(diff_ids);
    config.set_rootfs(rootfs);

    if let Some(history) = config.history().clone() {
        let mut history: Vec<History> = history;
        history.push(
            HistoryBuilder::default()
                .created(created.to_string())
                .created_by(format!(
                    "slugbuilder: slug sha256:{} at /app",
                    app.slug_sha256
                ))
                .build()
                .map_err(bad)?,
        );
        config.set_history(Some(history));
    }
    Ok(())
}

/// How the app image runs: as the owner of `/app`, `start web` in `/app`,
/// with the run image's env plus the slug's config vars it does not set,
/// and labels saying what it holds.
fn run_config(
    mut c: Config,
    base: &Image,
    base_name: Option<&str>,
    app: &App,
) -> Result<Config, OciError> {
    c.set_user(Some(format!("{}:{}", app.owner.0, app.owner.1)));
    c.set_cmd(Some(vec!["start".into(), "web".into()]));
    c.set_working_dir(Some("/app".into()));
    let mut env = c.env().clone().unwrap_or_default();
    let set: Vec<String> = env
        .iter()
        .map(|kv| kv.split('=').next().unwrap_or("").to_string())
        .collect();
    for (k, v) in &app.config_vars {
        if !set.contains(k) {
            env.push(format!("{k}={v}"));
        }
    }
    c.set_env(Some(env));
    let labels = labels(c.labels().clone().unwrap_or_default(), base, base_name, app)?;
    c.set_labels(Some(labels));
    Ok(c)
}

/// The run image's labels, less any of ours it carries (it may itself be
/// an app image), plus ours for this app and base.
fn labels(
    inherited: HashMap<String, String>,
    base: &Image,
    base_name: Option<&str>,
    app: &App,
) -> Result<HashMap<String, String>, OciError> {
    let mut labels: HashMap<String, String> = inherited
        .into_iter()
        .filter(|(k, _)| !k.starts_with(OUR_PREFIX))
        .collect();
    labels.insert(LABEL_SLUG_SHA256.into(), app.slug_sha256.clone());
    labels.insert(LABEL_SLUG_LAYER.into(), app.diff_id.clone());
    for (name, command) in &app.process_types {
        labels.insert(format!("{LABEL_PROCESS_PREFIX}{name}"), command.clone());
    }
    if !app.buildpacks.is_empty() {
        labels.insert(
            LABEL_BUILDPACKS.into(),
            serde_json::to_string(&app.buildpacks).map_err(bad)?,
        );
    }
    if !app.config_vars.is_empty() {
        labels.insert(
            LABEL_CONFIG_VARS.into(),
            serde_json::to_string(&app.config_vars).map_err(bad)?,
        );
    }
    labels.remove(LABEL_REVISION);
    if let Some(rev) = &app.revision {
        labels.insert(LABEL_REVISION.into(), rev.clone());
    }
    labels.insert(LABEL_BASE_DIGEST.into(), base.digest.clone());
    labels.remove(LABEL_BASE_NAME);
    if let Some(name) = base_name {
        labels.insert(LABEL_BASE_NAME.into(), name.to_string());
    }
    Ok(labels)
}

/// The OCI manifest of `layers` with this config, annotated with the
/// base's digest and name.
fn manifest(
    base: &Image,
    base_name: Option<&str>,
    layers: Vec<Descriptor>,
    config_bytes: &[u8],
    config_digest: &str,
) -> Result<ImageManifest, OciError> {
    let mut annotations = HashMap::new();
    annotations.insert(LABEL_BASE_DIGEST.to_string(), base.digest.clone());
    if let Some(name) = base_name {
        annotations.insert(LABEL_BASE_NAME.to_string(), name.to_string());
    }
    ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(Descriptor::new(
            MediaType::ImageConfig,
            config_bytes.len() as u64,
            config_digest
                .parse::<oci_spec::image::Digest>()
                .map_err(bad)?,
        ))
        .layers(layers)
        .annotations(annotations)
        .build()
        .map_err(bad)
}

/// Why an image cannot be rebased: it was not made by [`build`].
fn not_ours(shown: &str, why: &str) -> OciError {
    OciError::NotOurs(format!(
        "{shown} was not published by slugbuilder ({why}); only such images can be rebased"
    ))
}

/// What an app image made by [`build`] holds of its app: for a rebase.
pub fn app_of(image: &Image, shown: &str) -> Result<App, OciError> {
    let not_ours = |why: &str| not_ours(shown, why);
    let labels = image
        .config
        .config()
        .as_ref()
        .and_then(|c| c.labels().clone())
        .unwrap_or_default();
    let (layer, diff_id) = slug_layer(image, &labels, shown)?;
    let config_vars: BTreeMap<String, String> =
        json_label(&labels, LABEL_CONFIG_VARS, "bad config-vars label", shown)?;
    let buildpacks: Vec<String> =
        json_label(&labels, LABEL_BUILDPACKS, "bad buildpacks label", shown)?;
    let process_types = labels
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(LABEL_PROCESS_PREFIX)
                .map(|name| (name.to_string(), v.clone()))
        })
        .collect();
    let epoch = image
        .config
        .created()
        .as_deref()
        .and_then(parse_rfc3339)
        .ok_or_else(|| not_ours("its creation time is not one slugbuilder writes"))?;
    let user = image
        .config
        .config()
        .as_ref()
        .and_then(|c| c.user().clone())
        .unwrap_or_default();
    let owner = user
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
        .ok_or_else(|| not_ours("its user is not uid:gid"))?;
    Ok(App {
        layer,
        diff_id,
        slug_sha256: labels.get(LABEL_SLUG_SHA256).cloned().unwrap_or_default(),
        process_types,
        config_vars,
        buildpacks,
        revision: labels.get(LABEL_REVISION).cloned(),
        epoch,
        owner,
    })
}

/// The image's last layer (descriptor and diff_id), which must be the one
/// its slug-layer label names: that is what marks an image as ours.
fn slug_layer(
    image: &Image,
    labels: &HashMap<String, String>,
    shown: &str,
) -> Result<(Descriptor, String), OciError> {
    let layer = image
        .manifest
        .layers()
        .last()
        .cloned()
        .ok_or_else(|| not_ours(shown, "it has no layers"))?;
    let diff_id = image
        .config
        .rootfs()
        .diff_ids()
        .last()
        .cloned()
        .ok_or_else(|| not_ours(shown, "it has no layers"))?;
    if labels.get(LABEL_SLUG_LAYER) != Some(&diff_id) {
        return Err(not_ours(
            shown,
            &format!("its last layer is not the one its {LABEL_SLUG_LAYER} label names"),
        ));
    }
    Ok((layer, diff_id))
}

/// A label of ours holding JSON, decoded; empty when the label is absent.
/// `bad_shape` is the reason given when it is JSON of another shape.
fn json_label<T: serde::de::DeserializeOwned + Default>(
    labels: &HashMap<String, String>,
    name: &str,
    bad_shape: &str,
    shown: &str,
) -> Result<T, OciError> {
    let Some(text) = labels.get(name) else {
        return Ok(T::default());
    };
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|_| not_ours(shown, &format!("label {name} is not JSON")))?;
    serde_json::from_value(value).map_err(|_| not_ours(shown, bad_shape))
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The inverse of [`rfc3339`] (that exact form only).
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
    let (y, m, d) = (num(0..4)? as i64, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let days = days_from_civil(y, m as u32, d as u32);
    u64::try_from(days)
        .ok()
        .map(|d| d * 86_400 + hh * 3600 + mm * 60 + ss)
}

// Howard Hinnant's civil calendar algorithms (days since 1970-01-01).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder, RootFsBuilder};

    #[test]
    fn times_format_and_parse() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(315_532_800), "1980-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_251_199), "2024-02-29T23:59:59Z");
        for t in [0, 315_532_800, 951_782_400, 1_709_251_199, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
        assert_eq!(parse_rfc3339("2024-02-29T23:59:59.5Z"), None);
    }

    fn base() -> Image {
        let mut labels = HashMap::new();
        labels.insert(
            "org.opencontainers.image.title".to_string(),
            "run".to_string(),
        );
        labels.insert(format!("{LABEL_PROCESS_PREFIX}old"), "stale".to_string());
        let config = ImageConfigurationBuilder::default()
            .architecture(oci_spec::image::Arch::Amd64)
            .os(oci_spec::image::Os::Linux)
            .config(
                ConfigBuilder::default()
                    .user("slug".to_string())
                    .env(vec![
                        "PATH=/usr/bin".to_string(),
                        "LANG=en_US.UTF-8".to_string(),
                    ])
                    .entrypoint(vec!["slugrunner".to_string()])
                    .labels(labels)
                    .build()
                    .unwrap(),
            )
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers".to_string())
                    .diff_ids(vec![format!("sha256:{}", "1".repeat(64))])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let layer = Descriptor::new(
            MediaType::Other("application/vnd.docker.image.rootfs.diff.tar.gzip".into()),
            10,
            format!("sha256:{}", "2".repeat(64))
                .parse::<oci_spec::image::Digest>()
                .unwrap(),
        );
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .config(Descriptor::new(
                MediaType::ImageConfig,
                1,
                format!("sha256:{}", "3".repeat(64))
                    .parse::<oci_spec::image::Digest>()
                    .unwrap(),
            ))
            .layers(vec![layer])
            .build()
            .unwrap();
        Image {
            digest: format!("sha256:{}", "4".repeat(64)),
            manifest,
            config,
        }
    }

    fn app() -> App {
        App {
            layer: Descriptor::new(
                MediaType::ImageLayerGzip,
                99,
                format!("sha256:{}", "5".repeat(64))
                    .parse::<oci_spec::image::Digest>()
                    .unwrap(),
            ),
            diff_id: format!("sha256:{}", "6".repeat(64)),
            slug_sha256: "7".repeat(64),
            process_types: [("web".to_string(), "./bin/web".to_string())].into(),
            config_vars: [
                ("LANG".to_string(), "C".to_string()),
                ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
            ]
            .into(),
            buildpacks: vec!["heroku/python".into()],
            revision: Some("abc123".into()),
            epoch: 1_700_000_000,
            owner: (1000, 1000),
        }
    }

    #[test]
    fn the_image_is_the_run_image_plus_the_slug_and_round_trips() {
        let built = build(&base(), Some("r.example/run:1"), &app()).unwrap();
        let again = build(&base(), Some("r.example/run:1"), &app()).unwrap();
        assert_eq!(built.manifest_digest, again.manifest_digest);
        assert_eq!(built.config, again.config);

        let config: ImageConfiguration = serde_json::from_slice(&built.config).unwrap();
        let c = config.config().clone().unwrap();
        assert_eq!(c.user().as_deref(), Some("1000:1000"));
        assert_eq!(c.cmd().clone().unwrap(), ["start", "web"]);
        assert_eq!(c.entrypoint().clone().unwrap(), ["slugrunner"]);
        assert_eq!(c.working_dir().as_deref(), Some("/app"));
        // The run image's LANG wins; the slug's other vars are added.
        assert_eq!(
            c.env().clone().unwrap(),
            ["PATH=/usr/bin", "LANG=en_US.UTF-8", "PYTHONUNBUFFERED=1"]
        );
        let labels = c.labels().clone().unwrap();
        assert_eq!(labels["io.slugbuilder.process.web"], "./bin/web");
        assert!(!labels.contains_key("io.slugbuilder.process.old"));
        assert_eq!(labels["org.opencontainers.image.title"], "run");
        assert_eq!(labels[LABEL_REVISION], "abc123");
        assert_eq!(labels[LABEL_BASE_DIGEST], base().digest);
        assert_eq!(config.created().as_deref(), Some("2023-11-14T22:13:20Z"));

        let manifest: ImageManifest = serde_json::from_slice(&built.manifest).unwrap();
        assert_eq!(manifest.layers().len(), 2);
        assert_eq!(
            *manifest.layers()[0].media_type(),
            MediaType::ImageLayerGzip
        );
        assert_eq!(manifest.layers()[1], app().layer);

        // A rebase finds the same app in it.
        let image = Image {
            digest: built.manifest_digest.clone(),
            manifest,
            config,
        };
        assert_eq!(app_of(&image, "x").unwrap(), app());
    }

    #[test]
    fn json_is_canonical() {
        // oci-spec keeps labels in a HashMap: without sorting, their order
        // (and so the digest) would change from one process to the next.
        let built = build(&base(), None, &app()).unwrap();
        let text = String::from_utf8(built.config).unwrap();
        let keys = [
            "io.slugbuilder.buildpacks",
            "io.slugbuilder.config-vars",
            "io.slugbuilder.process.web",
            "io.slugbuilder.slug.layer",
            "io.slugbuilder.slug.sha256",
            "org.opencontainers.image.base.digest",
            "org.opencontainers.image.revision",
            "org.opencontainers.image.title",
        ];
        let positions: Vec<usize> = keys.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(text.find("\"architecture\"").unwrap() < text.find("\"config\"").unwrap());
        assert!(!text.contains('\n'), "compact");
    }
}
