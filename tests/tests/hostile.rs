//! Hostile input for both binaries: slugbuilder's source archive and
//! slugrunner's slug. Every archive is built in code; every case checks the
//! exit code, that a victim directory beside the destination is unchanged
//! byte for byte, and (for slugbuilder) that no slug was written.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e::hostile::{gzip, RawTar, Scene};
use e2e::{bin, fixtures};
use tar::EntryType;

/// Where an archive goes and what it must not touch: the shared oracle,
/// with the victim beside the destination and more of it above.
trait SceneExt {
    fn victim_str(&self) -> String;
}

impl SceneExt for Scene {
    fn victim_str(&self) -> String {
        self.victim().display().to_string()
    }
}

fn run(mut cmd: Command, input: Vec<u8>) -> Output {
    e2e::slugs::run_with_input(&mut cmd, input, Duration::from_secs(60))
}

/// slugbuilder with its work dir beside the victim: `../../victim` from the
/// build dir (`<work>/slugbuilder-XXXX/build`) is the victim, and
/// `../../../above.txt` is above it.
fn build(scene: &Scene, input: Vec<u8>, extra: &[&str]) -> Output {
    let mut cmd = Command::new(bin("slugbuilder"));
    cmd.arg("--work-dir")
        .arg(scene.work())
        .arg("--buildpack")
        .arg(fixtures().join("buildpacks/recorder"))
        .args(extra);
    run(cmd, input)
}

/// slugrunner unpacking into `<work>/app`: `../victim` is the victim.
fn unpack(scene: &Scene, input: Vec<u8>, extra: &[&str]) -> Output {
    let mut cmd = Command::new(bin("slugrunner"));
    cmd.args(["--slug", "-", "--app-dir"])
        .arg(scene.app())
        .args(extra)
        .args(["exec", "true"]);
    run(cmd, input)
}

/// The error, which must be exactly one non-empty line on stderr.
fn one_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines.len() == 1 && !lines[0].trim().is_empty(),
        "not exactly one error line:\n{err}"
    );
    lines[0].to_string()
}

/// Run `archive` through both binaries; both must refuse it with exit 10,
/// leave the victim unchanged, and say `needle` in their one error line.
fn refused_by_both(name: &str, archive: impl Fn(&Scene, &str) -> Vec<u8>, needle: &str) {
    for tool in ["slugbuilder", "slugrunner"] {
        let scene = Scene::new();
        let prefix = if tool == "slugbuilder" {
            "../../"
        } else {
            "../"
        };
        let bytes = archive(&scene, prefix);
        let out = if tool == "slugbuilder" {
            build(&scene, bytes, &[])
        } else {
            unpack(&scene, bytes, &[])
        };
        assert_eq!(
            out.status.code(),
            Some(10),
            "{name} via {tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{name} via {tool}: output written");
        let line = one_line(&out);
        assert!(
            line.contains(needle),
            "{name} via {tool}: {line:?} lacks {needle:?}"
        );
        // Nothing beside or above the destination changed or appeared
        // (slugbuilder's own work dir is gone too).
        scene.assert_untouched(&format!("{name} via {tool}"));
    }
}

#[test]
fn dotdot_paths() {
    refused_by_both(
        "dotdot",
        |_, up| {
            RawTar::new()
                .file(&format!("{up}victim/pwned"), b"x")
                .finish()
        },
        "escapes",
    );
    refused_by_both(
        "dotdot inside",
        |_, _| {
            RawTar::new()
                .file("a/b/../../../../victim/pwned", b"x")
                .finish()
        },
        "escapes",
    );
}

#[test]
fn paths_above_the_work_dir() {
    refused_by_both(
        "dotdot above",
        |_, up| {
            RawTar::new()
                .file(&format!("{up}../above.txt"), b"x")
                .finish()
        },
        "escapes",
    );
    refused_by_both(
        "absolute above",
        |s, _| {
            RawTar::new()
                .file(&format!("{}/above/deeper/file", s.root().display()), b"x")
                .finish()
        },
        "escapes",
    );
    refused_by_both(
        "hard link above",
        |s, _| {
            RawTar::new()
                .symlink("top", &s.root().display().to_string())
                .hardlink("h", "top/above.txt")
                .finish()
        },
        "symlink",
    );
}

#[test]
fn absolute_paths() {
    refused_by_both(
        "absolute",
        |s, _| {
            RawTar::new()
                .file(&format!("{}/pwned", s.victim_str()), b"x")
                .finish()
        },
        "escapes",
    );
}

#[test]
fn file_through_absolute_symlink() {
    refused_by_both(
        "abs symlink",
        |s, _| {
            RawTar::new()
                .symlink("link", &s.victim_str())
                .file("link/pwned", b"x")
                .finish()
        },
        "symlink",
    );
}

#[test]
fn file_through_relative_and_chained_symlinks() {
    refused_by_both(
        "relative symlink",
        |_, up| {
            RawTar::new()
                .symlink("up", up.trim_end_matches('/'))
                .file("up/victim/pwned", b"x")
                .finish()
        },
        "symlink",
    );
    refused_by_both(
        "chained symlinks",
        |s, _| {
            RawTar::new()
                .symlink("b", &s.victim_str())
                .symlink("a", "b")
                .file("a/file", b"overwritten")
                .finish()
        },
        "symlink",
    );
}

#[test]
fn directory_entry_over_a_symlink() {
    refused_by_both(
        "dir over symlink",
        |s, _| {
            RawTar::new()
                .symlink("d", &s.victim_str())
                .dir("d/")
                .file("d/sub/inner", b"x")
                .finish()
        },
        "symlink",
    );
}

#[test]
fn hard_links_out_of_the_destination() {
    refused_by_both(
        "hardlink dotdot",
        |_, up| {
            RawTar::new()
                .hardlink("h", &format!("{up}victim/file"))
                .finish()
        },
        "leaves the destination",
    );
    refused_by_both(
        "hardlink absolute",
        |s, _| {
            RawTar::new()
                .hardlink("h", &format!("{}/file", s.victim_str()))
                .finish()
        },
        "leaves the destination",
    );
    refused_by_both(
        "hardlink through symlink",
        |s, _| {
            RawTar::new()
                .symlink("l", &s.victim_str())
                .hardlink("h", "l/file")
                .finish()
        },
        "symlink",
    );
}

#[test]
fn pax_and_gnu_overrides_cannot_escape() {
    refused_by_both(
        "pax path",
        |_, up| {
            RawTar::new()
                .pax(&[("path", format!("{up}victim/pwned").as_bytes())])
                .file("innocent.txt", b"x")
                .finish()
        },
        "escapes",
    );
    refused_by_both(
        "pax linkpath",
        |_, up| {
            RawTar::new()
                .pax(&[("linkpath", format!("{up}victim/file").as_bytes())])
                .hardlink("h", "innocent")
                .finish()
        },
        "leaves the destination",
    );
    refused_by_both(
        "gnu long name",
        |_, up| {
            let long = format!("{}{up}victim/pwned", "a/".repeat(60) + &"../".repeat(60));
            RawTar::new().long_name(&long).file("short", b"x").finish()
        },
        "escapes",
    );
}

#[test]
fn devices_and_fifos_are_refused() {
    for kind in [EntryType::Char, EntryType::Block, EntryType::Fifo] {
        refused_by_both(
            "special",
            |_, _| RawTar::new().file("ok", b"x").special("dev", kind).finish(),
            "unsupported entry type",
        );
    }
}

/// Sparse entries are refused, in both of their encodings: the old GNU
/// type `S` and the PAX `GNU.sparse.*` records.
#[test]
fn sparse_entries_are_refused() {
    refused_by_both(
        "gnu sparse",
        |_, _| {
            RawTar::new()
                .file("ok", b"x")
                .special("sparse", EntryType::GNUSparse)
                .finish()
        },
        "sparse file",
    );
    refused_by_both(
        "pax sparse",
        |_, _| {
            RawTar::new()
                .pax(&[
                    ("GNU.sparse.major", b"1"),
                    ("GNU.sparse.minor", b"0"),
                    ("GNU.sparse.name", b"big"),
                    ("GNU.sparse.realsize", b"8589934592"),
                ])
                .file("GNUSparseFile.0/big", b"")
                .finish()
        },
        "sparse file",
    );
}

/// Owners recorded in an archive are ignored: slugrunner as root gives
/// every file to the run user, slugbuilder packs 0:0 with no names.
#[test]
fn archive_owners_are_ignored() {
    if !e2e::slugs::require_root("assigning the run user while unpacking") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let archive = RawTar::new()
        .file("Procfile", b"web: true\n")
        .file_owned("owned", b"mine", 4242, 4343)
        .file_owned("rooted", b"root's", 0, 0)
        .finish();
    let scene = Scene::new();
    let out = unpack(&scene, gzip(&archive), &["--user", "65534:65534"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["owned", "rooted", "Procfile"] {
        let meta = std::fs::metadata(scene.app().join(name)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{name}");
    }
    scene.assert_untouched("owners via slugrunner");

    let scene = Scene::new();
    let out = build(&scene, archive, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut slug = tar::Archive::new(flate2::read::GzDecoder::new(&out.stdout[..]));
    for entry in slug.entries().unwrap() {
        let entry = entry.unwrap();
        let h = entry.header();
        let path = entry.path().unwrap().display().to_string();
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0), "{path}");
        assert_eq!(h.username_bytes().unwrap_or_default(), b"", "{path}");
        assert_eq!(h.groupname_bytes().unwrap_or_default(), b"", "{path}");
    }
    scene.assert_untouched("owners via slugbuilder");
}

#[test]
fn malformed_input_is_one_clear_line() {
    let good = RawTar::new()
        .file("Procfile", b"web: true\n")
        .file("big", &[7u8; 4000])
        .finish();
    refused_by_both("empty", |_, _| Vec::new(), "empty");
    refused_by_both(
        "not an archive",
        |_, _| b"hello, this is not a tar".repeat(100),
        "not a tar",
    );
    let truncated_gz = gzip(&good);
    let cut = truncated_gz[..truncated_gz.len() / 2].to_vec();
    refused_by_both("truncated gzip", move |_, _| cut.clone(), "corrupt");
    let cut_tar = good[..512 + 512 + 512 + 1000].to_vec();
    refused_by_both("truncated tar", move |_, _| cut_tar.clone(), "truncated");
    let mut bad_sum = good.clone();
    bad_sum[0] ^= 0x20;
    refused_by_both("bad checksum", move |_, _| bad_sum.clone(), "checksum");
    refused_by_both(
        "pax size disagrees",
        |_, _| {
            RawTar::new()
                .pax(&[("size", b"1")])
                .file("f", b"0123456789")
                .finish()
        },
        "PAX size",
    );
    refused_by_both(
        "dangling extension header",
        |_, _| {
            RawTar::new()
                .file("f", b"x")
                .pax(&[("path", b"g")])
                .finish()
        },
        "describes no entry",
    );
}

#[test]
fn limits_fail_fast() {
    refused_by_both(
        "huge extension header",
        |_, _| RawTar::new().huge_pax(2 << 20).file("f", b"x").finish(),
        "extension header",
    );
    refused_by_both(
        "too deep",
        |_, _| {
            RawTar::new()
                .file("d/".repeat(200).trim_end_matches('/'), b"x")
                .finish()
        },
        "longer or deeper",
    );
    let many = |_: &Scene, _: &str| {
        let mut t = RawTar::new();
        for i in 0..50 {
            t = t.file(&format!("f{i}"), b"x");
        }
        t.finish()
    };
    for tool in ["slugbuilder", "slugrunner"] {
        let scene = Scene::new();
        let out = if tool == "slugbuilder" {
            build(&scene, many(&scene, ""), &["--max-entries", "20"])
        } else {
            unpack(&scene, many(&scene, ""), &["--max-entries", "20"])
        };
        assert_eq!(
            out.status.code(),
            Some(10),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(one_line(&out).contains("entries"));
    }
}

/// A gzip stream claiming a 10 GiB file: generated lazily (the test never
/// holds or writes 10 GiB); both tools must stop at the header.
#[test]
fn gzip_bomb_fails_fast() {
    for tool in ["slugbuilder", "slugrunner"] {
        let scene = Scene::new();
        let mut cmd = Command::new(bin(tool));
        if tool == "slugbuilder" {
            cmd.arg("--work-dir")
                .arg(scene.work())
                .arg("--buildpack")
                .arg(fixtures().join("buildpacks/recorder"));
        } else {
            cmd.args(["--slug", "-", "--app-dir"])
                .arg(scene.app())
                .args(["exec", "true"]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || {
            let mut gz = flate2::write::GzEncoder::new(stdin, flate2::Compression::fast());
            let header = RawTar::new()
                .file_header_only("bomb", 10 << 30)
                .unfinished();
            if gz.write_all(&header).is_err() {
                return;
            }
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..(10 << 10) {
                if gz.write_all(&zeros).is_err() {
                    return;
                }
            }
            let _ = gz.finish();
        });
        let start = Instant::now();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = e2e::slugs::wait_timeout(&mut child, Duration::from_secs(60));
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{tool} took {:?}",
            start.elapsed()
        );
        assert_eq!(status.code(), Some(10), "{tool}: {stderr}");
        assert!(stderr.contains("limit"), "{tool}: {stderr}");
        drop(child.stdout.take());
        feeder.join().unwrap();
        let du: u64 = walk_size(&scene.work());
        assert!(du < 1 << 20, "{tool} wrote {du} bytes");
        scene.assert_untouched(&format!("gzip bomb via {tool}"));
    }
}

fn walk_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let m = e.path().symlink_metadata().unwrap();
            if m.is_dir() {
                walk_size(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

/// Accepted archives still lose special bits, archive owners and
/// world-writability; duplicates replace links instead of writing through.
#[test]
fn accepted_archives_are_sanitised() {
    let scene = Scene::new();
    let victim_file = scene.victim().join("file").display().to_string();
    let slug = RawTar::new()
        .file("Procfile", b"web: true\n")
        .file_mode("suid", b"#!/bin/sh\n", 0o6777)
        .symlink("dup", &victim_file)
        .file("dup", b"replaced the link, not the victim")
        .file("orig", b"A")
        .hardlink("hard", "orig")
        .file("hard", b"B")
        .symlink("abs", "/etc/passwd")
        .finish();
    let out = unpack(&scene, gzip(&slug), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app = scene.app();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(app.join("suid")).unwrap().mode() & 0o7777,
        0o775
    );
    assert_eq!(
        std::fs::read_to_string(app.join("dup")).unwrap(),
        "replaced the link, not the victim"
    );
    assert_eq!(std::fs::read_to_string(app.join("orig")).unwrap(), "A");
    assert_eq!(std::fs::read_to_string(app.join("hard")).unwrap(), "B");
    assert_eq!(
        std::fs::read_link(app.join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    scene.assert_untouched("sanitised archive");
}

/// Packing stores links as links: a source symlink to /etc/passwd (or to a
/// victim file) ends up in the slug as a symlink, never as the file.
#[test]
fn packing_never_follows_symlinks() {
    let scene = Scene::new();
    let source = RawTar::new()
        .file("app.py", b"x")
        .symlink("passwd", "/etc/passwd")
        .symlink("secret", &scene.victim().join("file").display().to_string())
        .finish();
    let out = build(&scene, source, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&out.stdout[..]));
    let mut links = 0;
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        if path.ends_with("passwd") || path.ends_with("secret") {
            assert_eq!(entry.header().entry_type(), EntryType::Symlink, "{path}");
            assert_eq!(entry.size(), 0);
            links += 1;
        }
    }
    assert_eq!(links, 2);
    scene.assert_untouched("packing links");
}

/// `.slugignore` patterns cannot delete outside the build dir, whatever
/// they say (`..`, absolute, through a symlink).
#[test]
fn slugignore_cannot_reach_outside() {
    let scene = Scene::new();
    let victim = scene.victim_str();
    let root = scene.root().display().to_string();
    let source = RawTar::new()
        .file("app.py", b"x")
        .symlink("link", &victim)
        .symlink("top", &root)
        .file(
            ".slugignore",
            format!(
                "../../victim\n{victim}\n{victim}/file\nlink/*\nlink/file\n/..\n*/file\n\
                 ../../../above.txt\n{root}/above\ntop/*\ntop/above/**\n**/inner\n*.txt\n*/run.sh\n"
            )
            .as_bytes(),
        )
        .finish();
    let out = build(&scene, source, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    scene.assert_untouched(".slugignore");
}

/// Names from Procfile, `.release` and the command line are never shell.
#[test]
fn process_type_names_are_not_shell() {
    for (procfile, what) in [("web;id: true\n", "Procfile"), ("web: true\n", "argument")] {
        let scene = Scene::new();
        let slug = RawTar::new().file("Procfile", procfile.as_bytes()).finish();
        let mut cmd = Command::new(bin("slugrunner"));
        cmd.args(["--slug", "-", "--app-dir"])
            .arg(scene.app())
            .args(["start", "web;id"]);
        let out = run(cmd, slug);
        assert!(!out.status.success(), "{what}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("uid="),
            "{what}: id ran"
        );
    }
    let scene = Scene::new();
    let out = build(
        &scene,
        RawTar::new().file("Procfile", b"web;id: true\n").finish(),
        &[],
    );
    assert_eq!(out.status.code(), Some(10));
}
