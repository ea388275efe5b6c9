//! Property tests (proptest, stable Rust): generated inputs for the
//! parsers and the archive code, each property bounded to a few seconds
//! (`PROPTEST_CASES=N` runs more locally). The fuzz targets in `fuzz/`
//! search the same properties for longer, with nightly.
//!
//! Every archive test checks the one oracle of the hostile suite
//! ([`Scene`]): nothing beside or above the destination changes.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use e2e::hostile::{RawTar, Scene};
use proptest::prelude::*;
use proptest::test_runner::Config;
use slug_build::buildpack::{parse_list_file, Source};
use slug_build::slugignore::Slugignore;
use slug_run::runtime::parse_env_file;
use slug_shared::archive::{self, Limits, PackOptions, UnpackOptions};
use slug_shared::pgzip::ParallelGzWriter;
use slug_shared::procfile::Procfile;

/// Cases per property: few enough that each stays within seconds in a
/// debug build on two cores.
fn cases(n: u32) -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(n),
        // Shrinking an archive case can take long; the first failure is
        // printed in full anyway.
        max_shrink_iters: 200,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------
// pack -> unpack

/// One node of a generated tree.
#[derive(Debug, Clone)]
enum Node {
    File {
        data: Vec<u8>,
        exec: bool,
        mtime: u64,
    },
    Dir,
    Symlink(String),
    /// A hard link to the n-th file made so far (modulo their number).
    Hardlink(usize),
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,3}",
        // Long names need GNU long-name records.
        "[a-z]{100,140}",
        // Bytes tar and shells find awkward.
        "[ a-z.#=:-]{1,6}".prop_filter("not . or ..", |s| s != "." && s != ".."),
    ]
}

fn node() -> impl Strategy<Value = Node> {
    prop_oneof![
        4 => (
            proptest::collection::vec(any::<u8>(), 0..600),
            any::<bool>(),
            0u64..2_000_000_000
        )
            .prop_map(|(data, exec, mtime)| Node::File { data, exec, mtime }),
        2 => Just(Node::Dir),
        1 => prop_oneof!["/etc/passwd", "\\.\\./[a-z]{1,3}", "[a-z]{1,3}", "x/\\.\\./y"]
            .prop_map(Node::Symlink),
        1 => (0usize..8).prop_map(Node::Hardlink),
    ]
}

/// A tree: paths of one to three components, each with a node; a path
/// under a non-directory is left out when the tree is made.
fn tree() -> impl Strategy<Value = Vec<(Vec<String>, Node)>> {
    proptest::collection::vec((proptest::collection::vec(name(), 1..4), node()), 1..24)
}

/// Make `spec` under `root`; returns what was made (path -> node).
fn make_tree(root: &Path, spec: &[(Vec<String>, Node)]) -> BTreeMap<PathBuf, Node> {
    let mut made: BTreeMap<PathBuf, Node> = BTreeMap::new();
    let mut files: Vec<PathBuf> = Vec::new();
    'entries: for (parts, node) in spec {
        let rel: PathBuf = parts.iter().collect();
        if made.contains_key(&rel) {
            continue;
        }
        // Parents must be directories (made as needed), never anything else.
        let mut parent = PathBuf::new();
        for part in &parts[..parts.len() - 1] {
            parent.push(part);
            match made.get(&parent) {
                Some(Node::Dir) => {}
                Some(_) => continue 'entries,
                None => {
                    std::fs::create_dir(root.join(&parent)).unwrap();
                    made.insert(parent.clone(), Node::Dir);
                }
            }
        }
        let path = root.join(&rel);
        match node {
            Node::File { data, exec, mtime } => {
                std::fs::write(&path, data).unwrap();
                let mode = if *exec { 0o750 } else { 0o640 };
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(*mtime);
                std::fs::File::options()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_modified(t)
                    .unwrap();
                files.push(rel.clone());
            }
            Node::Dir => std::fs::create_dir(&path).unwrap(),
            Node::Symlink(target) => std::os::unix::fs::symlink(target, &path).unwrap(),
            Node::Hardlink(n) => {
                if files.is_empty() {
                    continue;
                }
                let first = &files[n % files.len()];
                std::fs::hard_link(root.join(first), &path).unwrap();
            }
        }
        made.insert(rel, node.clone());
    }
    made
}

/// What an unpacked tree must show for each path: kind, mode, content or
/// link target, mtime (files), and which paths share an inode.
fn describe(root: &Path) -> (BTreeMap<String, String>, Vec<Vec<String>>) {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    fn walk(
        root: &Path,
        dir: &Path,
        out: &mut BTreeMap<String, String>,
        inodes: &mut BTreeMap<u64, Vec<String>>,
    ) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = path.symlink_metadata().unwrap();
            let desc = if meta.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                walk(root, &path, out, inodes);
                format!("dir {:o}", meta.mode() & 0o7777)
            } else {
                inodes.entry(meta.ino()).or_default().push(rel.clone());
                format!(
                    "file {:o} {:?}",
                    meta.mode() & 0o7777,
                    std::fs::read(&path).unwrap()
                )
            };
            out.insert(rel, desc);
        }
    }
    walk(root, root, &mut out, &mut inodes);
    let mut groups: Vec<Vec<String>> = inodes
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    groups.sort();
    (out, groups)
}

/// Modes as the slug stores them: 0755 or 0644 like git, whatever the source had.
fn normalised(root: &Path) -> (BTreeMap<String, String>, Vec<Vec<String>>) {
    let (mut desc, groups) = describe(root);
    for value in desc.values_mut() {
        if let Some(rest) = value.strip_prefix("file ") {
            let (mode, data) = rest.split_once(' ').unwrap();
            let exec = u32::from_str_radix(mode, 8).unwrap() & 0o111 != 0;
            *value = format!("file {} {data}", if exec { "755" } else { "644" });
        } else if value.starts_with("dir ") {
            *value = "dir 755".to_string();
        }
    }
    (desc, groups)
}

fn mtimes(root: &Path, made: &BTreeMap<PathBuf, Node>) -> BTreeMap<PathBuf, u64> {
    made.keys()
        .filter_map(|rel| {
            let meta = root.join(rel).symlink_metadata().ok()?;
            meta.is_file().then(|| (rel.clone(), meta.mtime() as u64))
        })
        .collect()
}

proptest! {
    #![proptest_config(cases(48))]

    /// A packed tree unpacks to the same entries, modes (normalised), link
    /// targets, hard links and contents, with mtimes clamped; and packing
    /// the unpacked tree again gives the same bytes.
    #[test]
    fn pack_then_unpack_gives_the_same_tree(spec in tree(), clamp in 1u64..1_700_000_000) {
        let scene = Scene::new();
        let src = scene.work().join("src");
        std::fs::create_dir(&src).unwrap();
        let made = make_tree(&src, &spec);
        let opts = PackOptions { mtime_clamp: Some(clamp), ..PackOptions::default() };
        let mut slug = Vec::new();
        archive::pack_gzip(&src, &mut slug, 6, &opts).unwrap();
        let dest = scene.app();
        archive::unpack(std::io::Cursor::new(slug.clone()), &dest, &UnpackOptions::default())
            .unwrap();
        prop_assert_eq!(describe(&dest), normalised(&src));
        let want: BTreeMap<PathBuf, u64> =
            mtimes(&src, &made).into_iter().map(|(p, t)| (p, t.min(clamp))).collect();
        prop_assert_eq!(mtimes(&dest, &made), want);
        let mut again = Vec::new();
        archive::pack_gzip(&dest, &mut again, 6, &opts).unwrap();
        prop_assert!(again == slug, "repacking the unpacked tree changed the bytes");
        let mut scene = scene;
        scene.also_destination("work/src");
        scene.assert_untouched("pack/unpack round trip");
    }
}

// ---------------------------------------------------------------------------
// pgzip

/// Data that deflate finds matches in, across block boundaries too.
fn compressible() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(any::<u8>(), 1..64),
        0usize..(3 * slug_shared::pgzip::BLOCK_SIZE),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..32),
    )
        .prop_map(|(pattern, len, noise)| {
            let mut data: Vec<u8> = pattern.iter().copied().cycle().take(len).collect();
            if !data.is_empty() {
                for (at, byte) in noise {
                    let i = at % data.len();
                    data[i] = byte;
                }
            }
            data
        })
}

fn pgzip(data: &[u8], level: u32, threads: usize, chunk: usize) -> Vec<u8> {
    let mut gz = ParallelGzWriter::new(Vec::new(), level, threads).unwrap();
    for piece in data.chunks(chunk.max(1)) {
        gz.write_all(piece).unwrap();
    }
    gz.finish().unwrap()
}

proptest! {
    #![proptest_config(cases(24))]

    /// What pgzip writes is ONE standard gzip member that a plain decoder
    /// reads back exactly, and its bytes depend neither on the number of
    /// threads nor on how the input was cut into writes.
    #[test]
    fn pgzip_is_standard_gzip_and_independent_of_threads(
        data in compressible(),
        level in 0u32..10,
        threads in 1usize..5,
        chunk in 1usize..300_000,
    ) {
        let one = pgzip(&data, level, 1, data.len().max(1));
        let many = pgzip(&data, level, threads, chunk);
        prop_assert!(one == many, "bytes depend on threads or writes");
        // A single-member decoder: a second member would be left unread.
        let mut decoder = flate2::read::GzDecoder::new(&many[..]);
        let mut back = Vec::new();
        decoder.read_to_end(&mut back).unwrap();
        prop_assert!(back == data, "decompressed bytes differ");
        let mut rest = Vec::new();
        decoder.into_inner().read_to_end(&mut rest).unwrap();
        prop_assert!(rest.is_empty(), "{} bytes after the first gzip member", rest.len());
    }
}

// ---------------------------------------------------------------------------
// Procfile, env files, .buildpacks: parse what was printed

/// A line ending, a comment or blank line, a byte-order mark: the
/// formatting a parser must see through.
fn newline() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("\n"), Just("\r\n")]
}

fn noise_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[ \t]{0,3}",
        "[ \t]{0,2}#[^\r\n]{0,20}",
    ]
}

/// Lines joined with the given endings, noise lines between them, an
/// optional BOM and an optional last newline.
fn render(
    lines: Vec<String>,
    noise: Vec<String>,
    endings: Vec<&'static str>,
    bom: bool,
    last_newline: bool,
) -> String {
    let mut out = String::new();
    if bom {
        out.push('\u{feff}');
    }
    let n = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        if let Some(noise) = noise.get(i) {
            out.push_str(noise);
            out.push_str(endings[i % endings.len()]);
        }
        out.push_str(&line);
        if i + 1 < n || last_newline {
            out.push_str(endings[i % endings.len()]);
        }
    }
    out
}

fn command() -> impl Strategy<Value = String> {
    // Printable text, some of it not ASCII; no surrounding blanks (the
    // parser trims them).
    "[!-~é€]([ -~é€]{0,30}[!-~é€])?"
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn procfile_parses_what_was_printed(
        entries in proptest::collection::btree_map("[A-Za-z0-9_-]{1,12}", command(), 0..6),
        spaced in proptest::collection::vec(0usize..3, 6),
        noise in proptest::collection::vec(noise_line(), 0..6),
        endings in proptest::collection::vec(newline(), 1..3),
        bom in any::<bool>(),
        last_newline in any::<bool>(),
    ) {
        let entries: Vec<(String, String)> = entries.into_iter().collect();
        let lines = entries
            .iter()
            .enumerate()
            .map(|(i, (name, cmd))| match spaced[i] {
                0 => format!("{name}:{cmd}"),
                1 => format!("{name}: {cmd}"),
                _ => format!("  {name} :\t{cmd}  "),
            })
            .collect();
        let text = render(lines, noise, endings, bom, last_newline);
        let parsed = Procfile::parse(&text).unwrap();
        prop_assert_eq!(parsed.entries(), &entries[..]);
        // What it prints parses back to itself.
        prop_assert_eq!(Procfile::parse(&parsed.to_string()).unwrap(), parsed);
    }

    #[test]
    fn procfile_never_panics_and_accepted_text_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(p) = Procfile::parse_bytes(&bytes) {
            prop_assert_eq!(Procfile::parse(&p.to_string()).unwrap(), p);
        }
    }
}

/// An env-file value and one way of writing it.
fn env_value() -> impl Strategy<Value = (String, u8)> {
    ("[^\0]{0,24}", 0u8..3)
}

/// `KEY=VALUE` as a person (or `heroku config -s`) would write it: raw
/// when the value allows it, else single- or double-quoted.
fn print_env(name: &str, value: &str, style: u8, export: bool) -> String {
    // Raw only when the value cannot be mistaken for a quoted one or lose
    // a trailing carriage return.
    let raw_ok = !(value.contains('\n') || value.ends_with('\r') || value.starts_with(['"', '\'']));
    let single_ok = !value.contains('\n') && !value.ends_with('\r');
    let body = if style == 0 && raw_ok {
        value.to_string()
    } else if style == 1 && single_ok {
        format!("'{value}'")
    } else {
        let mut q = String::from("\"");
        for c in value.chars() {
            match c {
                '\n' => q.push_str("\\n"),
                '\\' | '"' | '$' | '`' => {
                    q.push('\\');
                    q.push(c);
                }
                c => q.push(c),
            }
        }
        q.push('"');
        q
    };
    let prefix = if export { "export " } else { "" };
    format!("{prefix}{name}={body}")
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn env_file_parses_what_was_printed(
        vars in proptest::collection::vec(("[A-Za-z_][A-Za-z0-9_]{0,10}", env_value(), any::<bool>()), 0..6),
        noise in proptest::collection::vec(noise_line(), 0..6),
        endings in proptest::collection::vec(newline(), 1..3),
        bom in any::<bool>(),
        last_newline in any::<bool>(),
    ) {
        let lines = vars
            .iter()
            .map(|(k, (v, style), export)| print_env(k, v, *style, *export))
            .collect();
        let text = render(lines, noise, endings, bom, last_newline);
        let want: Vec<(String, String)> =
            vars.iter().map(|(k, (v, _), _)| (k.clone(), v.clone())).collect();
        prop_assert_eq!(parse_env_file(&text).unwrap(), want, "{:?}", text);
    }

    #[test]
    fn env_file_never_panics_and_errors_name_a_line(text in "[^\0]{0,200}") {
        if let Err((line, reason)) = parse_env_file(&text) {
            prop_assert!(line >= 1 && line <= text.split('\n').count(), "line {line}");
            prop_assert!(!reason.is_empty());
        }
    }
}

/// A buildpack spec as an app would write it in `.buildpacks`, and what
/// [`Source::parse`] must make of it.
fn buildpack_spec() -> impl Strategy<Value = (String, Source)> {
    let host = "[a-z]{1,8}\\.(com|org|example)";
    let path = "[a-z0-9_-]{1,8}(/[a-z0-9_.-]{1,8}){0,2}";
    let reference = proptest::option::of("[a-zA-Z0-9_.][a-zA-Z0-9_./-]{0,10}");
    prop_oneof![
        (
            prop_oneof![Just("https"), Just("http"), Just("git"), Just("ssh")],
            host,
            path,
            reference.clone()
        )
            .prop_filter("not a tarball", |(_, _, p, _)| {
                ![".tgz", ".tar.gz", ".tar"].iter().any(|e| p.ends_with(e))
            })
            .prop_map(|(scheme, host, path, reference)| {
                let url = format!("{scheme}://{host}/{path}");
                let spec = match &reference {
                    Some(r) => format!("{url}#{r}"),
                    None => url.clone(),
                };
                (spec, Source::Git { url, reference })
            }),
        (
            prop_oneof![Just("https"), Just("http")],
            host,
            path,
            prop_oneof![Just(".tgz"), Just(".tar.gz"), Just(".tar")]
        )
            .prop_map(|(scheme, host, path, ext)| {
                let url = format!("{scheme}://{host}/{path}{ext}");
                (url.clone(), Source::Tarball { url })
            }),
        ("[a-z][a-z0-9-]{0,8}", "[a-z][a-z0-9_-]{0,8}")
            // No such directory beside the test (its working directory).
            .prop_filter("exists here", |(o, n)| !Path::new(&format!("{o}/{n}"))
                .exists())
            .prop_map(|(owner, name)| {
                let spec = format!("{owner}/{name}");
                (spec.clone(), Source::Named(spec))
            }),
        "/[a-z0-9_-]{1,8}(/[a-z0-9_-]{1,8}){0,2}"
            .prop_map(|p| (p.clone(), Source::Dir(PathBuf::from(p)))),
        (
            "git@[a-z]{1,8}\\.com:[a-z]{1,8}/[a-z]{1,8}\\.git",
            reference
        )
            .prop_map(|(url, reference)| {
                let spec = match &reference {
                    Some(r) => format!("{url}#{r}"),
                    None => url.clone(),
                };
                (spec, Source::Git { url, reference })
            }),
    ]
}

proptest! {
    #![proptest_config(cases(256))]

    /// `.buildpacks`: one spec per line, `#` comments and blank lines,
    /// CRLF, indentation and trailing comments after a spec; each spec
    /// classifies as what it is.
    #[test]
    fn buildpacks_file_lists_each_spec_and_each_spec_parses(
        specs in proptest::collection::vec((buildpack_spec(), "[ \t]{0,2}", proptest::option::of(" #[^\r\n]{0,10}")), 0..6),
        noise in proptest::collection::vec(noise_line(), 0..6),
        endings in proptest::collection::vec(newline(), 1..3),
        bom in any::<bool>(),
        last_newline in any::<bool>(),
    ) {
        let lines = specs
            .iter()
            .map(|((spec, _), indent, comment)| {
                format!("{indent}{spec}{}", comment.as_deref().unwrap_or(""))
            })
            .collect();
        let text = render(lines, noise, endings, bom, last_newline);
        let listed = parse_list_file(&text);
        let want: Vec<&str> = specs.iter().map(|((s, _), _, _)| s.as_str()).collect();
        prop_assert_eq!(&listed, &want, "{:?}", text);
        for ((spec, source), _, _) in &specs {
            prop_assert_eq!(&Source::parse(spec).unwrap(), source, "{}", spec);
        }
    }

    #[test]
    fn source_parse_never_panics(spec in "[^\0]{0,60}") {
        let _ = Source::parse(&spec);
        let _ = parse_list_file(&spec);
    }
}

// ---------------------------------------------------------------------------
// PAX records

proptest! {
    #![proptest_config(cases(256))]

    /// Any key (no `=`) and any value bytes, newlines included, come back
    /// exactly; a record set cut short never parses as a shorter valid one
    /// with a different last value.
    #[test]
    fn pax_records_round_trip(
        records in proptest::collection::vec(("[a-zA-Z.]{1,20}", proptest::collection::vec(any::<u8>(), 0..120)), 0..5),
        cut in any::<usize>(),
    ) {
        let data = e2e::hostile::pax_records(&records);
        prop_assert_eq!(archive::parse_pax(&data).unwrap(), records.clone());
        if !data.is_empty() {
            let cut = cut % data.len();
            if let Ok(parsed) = archive::parse_pax(&data[..cut]) {
                // Only whole records survive a cut.
                prop_assert!(parsed.len() < records.len().max(1));
                prop_assert_eq!(&parsed[..], &records[..parsed.len()]);
            }
        }
    }

    #[test]
    fn pax_parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = archive::parse_pax(&data);
    }

    /// A PAX `path` record names the entry, whatever its header says.
    #[test]
    fn pax_path_overrides_the_header_name(
        name in "[a-z]{1,8}(/[a-z]{1,8}){0,2}",
        data in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let scene = Scene::new();
        let tar = RawTar::new()
            .pax(&[("path", name.as_bytes())])
            .file("header-name", &data)
            .finish();
        archive::unpack(std::io::Cursor::new(tar), &scene.app(), &UnpackOptions::default()).unwrap();
        prop_assert_eq!(std::fs::read(scene.app().join(&name)).unwrap(), data);
        prop_assert!(!scene.app().join("header-name").exists());
        scene.assert_untouched("pax path");
    }
}

// ---------------------------------------------------------------------------
// .slugignore

fn pattern() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("..".to_string()),
        Just("*".to_string()),
        Just("**".to_string()),
        Just("victim".to_string()),
        Just("file".to_string()),
        Just("above.txt".to_string()),
        Just("link".to_string()),
        Just("top".to_string()),
        Just("work".to_string()),
        "[a-z*?\\[\\]]{1,4}",
    ];
    (
        prop_oneof![Just(""), Just("/"), Just("!"), Just("ROOT/")],
        proptest::collection::vec(piece, 1..5),
        prop_oneof![Just(""), Just("/")],
    )
        .prop_map(|(lead, pieces, tail)| format!("{lead}{}{tail}", pieces.join("/")))
}

proptest! {
    #![proptest_config(cases(96))]

    /// Whatever the patterns say (`..`, absolute paths, paths through
    /// links, globs), applying them removes only paths inside the build
    /// dir: the victim beside it and the tree above are untouched, and the
    /// links stay links.
    #[test]
    fn slugignore_never_reaches_outside_the_build_dir(patterns in proptest::collection::vec(pattern(), 1..8)) {
        let mut scene = Scene::new();
        let build = scene.work().join("build");
        std::fs::create_dir_all(build.join("src/docs")).unwrap();
        std::fs::write(build.join("src/docs/file"), "doc").unwrap();
        std::fs::write(build.join("above.txt"), "inside").unwrap();
        std::os::unix::fs::symlink(scene.victim(), build.join("link")).unwrap();
        std::os::unix::fs::symlink(scene.root(), build.join("top")).unwrap();
        scene.also_destination("work/build");
        let root = scene.root().display().to_string();
        let text = patterns
            .iter()
            .map(|p| p.replace("ROOT/", &format!("{root}/")))
            .collect::<Vec<_>>()
            .join("\n");
        if let Ok(ignore) = Slugignore::parse(&build, &text) {
            if let Ok(removed) = ignore.apply(&build) {
                for path in removed {
                    prop_assert!(path.is_relative() && !path.starts_with(".."), "{:?}", path);
                }
            }
        }
        for link in ["link", "top"] {
            if let Ok(meta) = build.join(link).symlink_metadata() {
                prop_assert!(meta.file_type().is_symlink());
            }
        }
        scene.assert_untouched(&format!(".slugignore {text:?}"));
    }
}

// ---------------------------------------------------------------------------
// Hostile archives

/// A name an attacker would try: plain, `..` up to and past the scene,
/// absolute paths into the victim and above it, names through links,
/// and long ones.
fn hostile_name(victim: String, root: String) -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-c]{1,2}(/[a-c]{1,2}){0,2}",
        1 => Just("link".to_string()),
        1 => Just("up".to_string()),
        1 => Just("app".to_string()),
        1 => Just("link/file".to_string()),
        1 => Just("link/sub/new".to_string()),
        1 => Just("up/victim/file".to_string()),
        1 => Just("a/../../victim/file".to_string()),
        1 => Just("../victim/file".to_string()),
        1 => Just("../../above.txt".to_string()),
        1 => Just("./../victim/new".to_string()),
        1 => Just(format!("{victim}/file")),
        1 => Just(format!("{root}/above/new")),
        1 => Just("app/link/x".to_string()),
        1 => "[a-c]{100,120}/x",
        1 => (0usize..3).prop_map(|n| format!("{}../victim/file", "a/".repeat(60 + n))),
    ]
    .boxed()
}

fn hostile_target(victim: String, root: String) -> BoxedStrategy<String> {
    prop_oneof![
        Just(victim.clone()),
        Just(format!("{victim}/file")),
        Just(root),
        Just("..".to_string()),
        Just("../victim".to_string()),
        Just("../..".to_string()),
        Just(".".to_string()),
        Just("a".to_string()),
        Just("link".to_string()),
        Just("link/file".to_string()),
        Just("/etc/passwd".to_string()),
    ]
    .boxed()
}

#[derive(Debug, Clone)]
enum Hostile {
    File(String, Vec<u8>),
    Dir(String),
    Symlink(String, String),
    Hardlink(String, String),
    PaxPath(String, Vec<u8>),
    PaxLink(String, String),
    GnuLongName(String, Vec<u8>),
}

fn hostile_entry(victim: String, root: String) -> impl Strategy<Value = Hostile> {
    let name = hostile_name(victim.clone(), root.clone());
    let target = hostile_target(victim, root);
    let data = proptest::collection::vec(any::<u8>(), 0..16);
    prop_oneof![
        3 => (name.clone(), data.clone()).prop_map(|(n, d)| Hostile::File(n, d)),
        1 => name.clone().prop_map(Hostile::Dir),
        2 => (name.clone(), target.clone()).prop_map(|(n, t)| Hostile::Symlink(n, t)),
        2 => (name.clone(), target.clone()).prop_map(|(n, t)| Hostile::Hardlink(n, t)),
        1 => (name.clone(), data.clone()).prop_map(|(n, d)| Hostile::PaxPath(n, d)),
        1 => (name.clone(), target).prop_map(|(n, t)| Hostile::PaxLink(n, t)),
        1 => (name, data).prop_map(|(n, d)| Hostile::GnuLongName(n, d)),
    ]
}

fn hostile_tar(entries: &[Hostile]) -> Vec<u8> {
    let mut tar = RawTar::new();
    for entry in entries {
        tar = match entry {
            Hostile::File(n, d) => tar.file(n, d),
            Hostile::Dir(n) => tar.dir(n),
            Hostile::Symlink(n, t) => tar.symlink(n, t),
            Hostile::Hardlink(n, t) => tar.hardlink(n, t),
            Hostile::PaxPath(n, d) => tar.pax(&[("path", n.as_bytes())]).file("innocent", d),
            Hostile::PaxLink(n, t) => tar
                .pax(&[("linkpath", t.as_bytes())])
                .symlink(n, "innocent"),
            Hostile::GnuLongName(n, d) => tar.long_name(n).file("short", d),
        };
    }
    tar.finish()
}

/// Absolute names are generated with the placeholders `VICTIM` and
/// `ROOT`, replaced by the paths of the scene made for each case.
fn retarget(entries: &[Hostile], scene: &Scene) -> Vec<Hostile> {
    let victim = scene.victim().display().to_string();
    let root = scene.root().display().to_string();
    let fix = |s: &String| s.replace("VICTIM", &victim).replace("ROOT", &root);
    entries
        .iter()
        .map(|e| match e {
            Hostile::File(n, d) => Hostile::File(fix(n), d.clone()),
            Hostile::Dir(n) => Hostile::Dir(fix(n)),
            Hostile::Symlink(n, t) => Hostile::Symlink(fix(n), fix(t)),
            Hostile::Hardlink(n, t) => Hostile::Hardlink(fix(n), fix(t)),
            Hostile::PaxPath(n, d) => Hostile::PaxPath(fix(n), d.clone()),
            Hostile::PaxLink(n, t) => Hostile::PaxLink(fix(n), fix(t)),
            Hostile::GnuLongName(n, d) => Hostile::GnuLongName(fix(n), d.clone()),
        })
        .collect()
}

proptest! {
    #![proptest_config(cases(256))]

    /// Random sequences of hostile entries (links out, `..`, absolute
    /// paths, duplicates, long names, PAX overrides), unpacked as a slug
    /// (`unpack_slug`, which may hoist `app/`) and as a source archive:
    /// the unpack may refuse, never panic, and nothing beside or above the
    /// destination changes or appears.
    #[test]
    fn hostile_archives_never_touch_anything_outside(
        entries in proptest::collection::vec(hostile_entry("VICTIM".into(), "ROOT".into()), 1..10),
        app_link in proptest::option::weighted(0.25, hostile_target("VICTIM".into(), "ROOT".into())),
        gzip in any::<bool>(),
        as_slug in any::<bool>(),
    ) {
        let scene = Scene::new();
        // Sometimes a slug that is only a link named `app` (what slugrunner
        // would hoist, were it a directory).
        let entries = match app_link {
            Some(target) => vec![Hostile::Symlink("app".into(), target)],
            None => entries,
        };
        let tar = hostile_tar(&retarget(&entries, &scene));
        let bytes = if gzip { e2e::hostile::gzip(&tar) } else { tar };
        let opts = UnpackOptions {
            limits: Limits { max_bytes: 1 << 20, max_entries: 100, ..Limits::default() },
            ..UnpackOptions::default()
        };
        let reader = std::io::Cursor::new(bytes);
        let _ = if as_slug {
            archive::unpack_slug(reader, &scene.app(), &opts)
        } else {
            archive::unpack(reader, &scene.app(), &opts)
        };
        scene.assert_untouched(&format!("{entries:?}"));
    }
}
