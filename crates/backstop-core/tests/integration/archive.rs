//! The archive as other tools see it: GNU tar extracts exactly the source,
//! `sha256sum -c` accepts both checksum files, members are where the format
//! says, and the file is private from its first byte.

use backstop_core::stores::Location;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use backstop_core::archive::Codec;
use backstop_core::archive::reader::{read_manifest, verify_archive};
use backstop_core::encryption::NO_KEYS;
use backstop_core::progress::{Cancel, NoProgress};
use backstop_test_support::{Compare, assert_same_tree, awkward_tree, have, supports_user_xattrs};

use crate::support::{Env, tar_extract, tar_list};

fn round_trip_through_system_tar(codec: Codec, tool: &str) {
    if !have("tar") || !have(tool) {
        return;
    }
    let env = Env::new();
    let src = env.path("app");
    awkward_tree(&src);
    let report = env.backup(&src, codec);
    let archive = Path::new(report.backup.location.as_deref().unwrap());
    assert!(archive.to_string_lossy().ends_with(codec.extension()));
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);

    let out = env.path("out");
    tar_extract(archive, &out);
    let opts = Compare {
        dir_mtimes: true,
        xattrs: supports_user_xattrs(env.dir.path()),
        sparse: true,
    };
    assert_same_tree(&src, &out.join("app"), opts);
}

#[test]
fn gnu_tar_extracts_the_exact_tree_zstd() {
    round_trip_through_system_tar(Codec::Zstd, "zstd");
}

#[test]
fn gnu_tar_extracts_the_exact_tree_gzip() {
    round_trip_through_system_tar(Codec::Gzip, "gzip");
}

#[test]
fn gnu_tar_extracts_the_exact_tree_uncompressed() {
    round_trip_through_system_tar(Codec::None, "tar");
}

#[test]
fn sha256sum_accepts_sidecar_and_inner_checksums() {
    if !have("tar") || !have("zstd") || !have("sha256sum") {
        return;
    }
    let env = Env::new();
    let src = env.path("app");
    awkward_tree(&src);
    let report = env.backup(&src, Codec::Zstd);
    let archive = Path::new(report.backup.location.as_deref().unwrap());
    let dir = archive.parent().unwrap();
    let sidecar = format!("{}.sha256", archive.file_name().unwrap().to_string_lossy());
    let out = Command::new("sha256sum")
        .arg("-c")
        .arg(&sidecar)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let extracted = env.path("x");
    tar_extract(archive, &extracted);
    let out = Command::new("sha256sum")
        .args(["-c", "--strict", "backstop-checksums.sha256"])
        .current_dir(&extracted)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One line per regular file, the awkward names included.
    assert_eq!(text.lines().count() as u64, report.backup.files.unwrap());
    assert!(
        text.contains("new\\nline: OK") || text.contains("new\nline: OK"),
        "{text}"
    );
}

#[test]
fn manifest_is_first_and_trailer_last() {
    if !have("tar") || !have("zstd") {
        return;
    }
    let env = Env::new();
    let src = env.path("app");
    awkward_tree(&src);
    let report = env.backup(&src, Codec::Zstd);
    let archive = Path::new(report.backup.location.as_deref().unwrap());
    let names = tar_list(archive);
    assert_eq!(
        names.first().map(String::as_str),
        Some("backstop-manifest.json")
    );
    assert_eq!(
        names.last().map(String::as_str),
        Some("backstop-trailer.json")
    );
    assert_eq!(names[names.len() - 3], "backstop-checksums.sha256");
    assert_eq!(names[names.len() - 2], "backstop-index.txt");
    // The payload is in sorted depth-first order: a parent before its children.
    let payload = &names[1..names.len() - 3];
    assert_eq!(payload[0], "app/");
    for pair in payload.windows(2) {
        let (a, b) = (pair[0].trim_end_matches('/'), pair[1].trim_end_matches('/'));
        let (pa, pb) = (Path::new(a), Path::new(b));
        if pb.parent() == pa.parent() {
            assert!(a < b, "siblings out of order: {a} then {b}");
        }
    }
    let manifest = read_manifest(&Location::file(archive), &NO_KEYS).unwrap();
    assert_eq!(manifest.format, 1);
    assert_eq!(manifest.id, report.backup.id);
    assert_eq!(manifest.totals.files, report.backup.files.unwrap());
    assert!(manifest.excludes.contains(&"node_modules/".to_string()));
}

#[test]
fn archive_and_sidecar_are_private() {
    let env = Env::new();
    let src = env.path("app");
    awkward_tree(&src);
    let report = env.backup(&src, Codec::Zstd);
    let archive = Path::new(report.backup.location.as_deref().unwrap());
    for p in [archive.to_path_buf(), archive.with_extension("zst.sha256")] {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
    let store_mode = std::fs::metadata(archive.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(store_mode, 0o700);
}

#[test]
fn two_backups_of_an_unchanged_tree_differ_only_in_the_manifest_and_trailer() {
    if !have("tar") || !have("zstd") {
        return;
    }
    let env = Env::new();
    let src = env.path("app");
    awkward_tree(&src);
    let a = env.backup(&src, Codec::None);
    let b = env.backup(&src, Codec::None);
    assert_ne!(a.backup.id, b.backup.id);
    let (xa, xb) = (env.path("a"), env.path("b"));
    tar_extract(Path::new(a.backup.location.as_deref().unwrap()), &xa);
    tar_extract(Path::new(b.backup.location.as_deref().unwrap()), &xb);
    assert_eq!(
        tar_list(Path::new(a.backup.location.as_deref().unwrap()))[1..],
        tar_list(Path::new(b.backup.location.as_deref().unwrap()))[1..]
    );
    assert_eq!(
        std::fs::read(xa.join("backstop-checksums.sha256")).unwrap(),
        std::fs::read(xb.join("backstop-checksums.sha256")).unwrap()
    );
}

#[test]
fn excluded_paths_are_absent_and_recorded() {
    let env = Env::new();
    let src = env.path("app");
    awkward_tree(&src);
    std::fs::create_dir_all(src.join("web/node_modules/pkg")).unwrap();
    std::fs::write(src.join("web/node_modules/pkg/index.js"), b"x").unwrap();
    std::fs::create_dir_all(src.join("tmpcache")).unwrap();
    std::fs::write(
        src.join("tmpcache/CACHEDIR.TAG"),
        b"Signature: 8a477f597d28d172789f06886806bc55\n",
    )
    .unwrap();
    std::fs::write(src.join("data/skip.log"), b"log").unwrap();
    let report = env.backup_with(
        &src,
        Codec::Zstd,
        backstop_core::ops::backup::Output::Store,
        &["*.log"],
    );
    let archive = Path::new(report.backup.location.as_deref().unwrap());
    let run = verify_archive(
        &Location::file(archive),
        (&NoProgress, &Cancel::default()),
        &NO_KEYS,
    );
    run.result.unwrap();
    if have("tar") && have("zstd") {
        let names = tar_list(archive);
        assert!(!names.iter().any(|n| n.contains("node_modules")));
        assert!(!names.iter().any(|n| n.contains("tmpcache")));
        assert!(!names.iter().any(|n| n.ends_with("skip.log")));
        assert!(names.iter().any(|n| n == "app/web/"), "the parent stays");
    }
    let rules: Vec<&str> = report.excluded.iter().map(|e| e.rule.as_str()).collect();
    assert!(rules.contains(&"node_modules/"), "{rules:?}");
    assert!(rules.contains(&"*.log"), "{rules:?}");
    assert!(
        rules.iter().any(|r| r.contains("CACHEDIR.TAG")),
        "{rules:?}"
    );
}

#[test]
fn backup_of_a_tree_holding_the_store_leaves_the_store_out() {
    let env = Env::new();
    // The home (and so the store) lives inside the directory backed up.
    let src = env.path("app");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), b"a").unwrap();
    let env2 = Env {
        layout: backstop_core::config::Layout {
            home: src.join("state"),
            store: src.join("state/backups"),
        },
        ..Env::new()
    };
    let first = env2.backup(&src, Codec::Zstd);
    let second = env2.backup(&src, Codec::Zstd);
    assert_eq!(first.backup.files, Some(1));
    assert_eq!(
        second.backup.files,
        Some(1),
        "the first archive is not in the second"
    );
    drop(env);
}

#[test]
fn the_ends_of_an_archive_are_read_without_its_payload() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("data")).unwrap();
    // Over two 4 MiB blocks, half of it incompressible: several frames,
    // one stored raw.
    let noise = backstop_test_support::noise(5 << 20, 0x2545F4914F6CDD1D);
    std::fs::write(src.join("data/noise"), &noise).unwrap();
    std::fs::write(src.join("data/zeros"), vec![0u8; 5 << 20]).unwrap();
    for i in 0..50 {
        std::fs::write(src.join(format!("data/f{i}")), format!("file {i}\n")).unwrap();
    }
    for codec in [Codec::Zstd, Codec::Gzip, Codec::None] {
        let report = env.backup(&src, codec);
        let at = Location::file(report.backup.location.clone().unwrap());
        let size = report.backup.size.unwrap();
        let ends = backstop_core::archive::ends::read_ends(&at, size, &NO_KEYS)
            .unwrap()
            .unwrap_or_else(|| panic!("{codec}: the ends are found"));
        assert_eq!(ends.codec, codec);
        assert_eq!(ends.manifest.id, report.backup.id);
        let verified = verify_archive(&at, (&NoProgress, &Cancel::default()), &NO_KEYS)
            .result
            .unwrap();
        assert_eq!(ends.trailer, verified.trailer, "{codec}");
    }
}

#[test]
fn a_partial_read_takes_the_frames_of_its_sources_each_checked() {
    use backstop_core::archive::frames::{Partial, found_table, read_table};
    use backstop_core::archive::reader::walk_archive_chain;
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("data")).unwrap();
    let noise = backstop_test_support::noise(13 << 20, 0x9E3779B97F4A7C15);
    std::fs::write(src.join("data/noise"), &noise).unwrap();
    for i in 0..20 {
        std::fs::write(src.join(format!("data/f{i}")), format!("file {i}\n")).unwrap();
    }
    let report = env.backup(&src, Codec::Zstd);
    let path = std::path::PathBuf::from(report.backup.location.clone().unwrap());
    let at = Location::file(&path);
    let size = report.backup.size.unwrap();
    let id = &report.backup.id;
    let recorded = report.backup.frames_sha256.clone().expect("recorded");
    assert_eq!(found_table(&at, size, id).unwrap(), Some(recorded.clone()));
    let table = read_table(&at, size, &recorded, id).unwrap();
    assert_eq!(table.frames.len(), 4, "13 MiB and the members: four frames");
    let source = table.sources[0].name.clone();
    let walk = |at: &Location, partial: &Partial| {
        walk_archive_chain(
            (at, Some(partial), None),
            (&[], Vec::new()),
            (&NoProgress, backstop_core::progress::Phase::Verify),
            &Cancel::default(),
            &NO_KEYS,
            &mut backstop_core::archive::reader::CheckOnly,
        )
        .result
    };
    let whole = verify_archive(&at, (&NoProgress, &Cancel::default()), &NO_KEYS)
        .result
        .unwrap();
    // Its one source: everything, checked as a whole read checks it.
    let all = walk(&at, &Partial::of(&table, &[source])).unwrap();
    assert_eq!(
        (all.entries, all.files, all.bytes),
        (whole.entries, whole.files, whole.bytes)
    );
    assert_eq!(all.trailer, whole.trailer);
    // No source: the manifest's frame and the tail's, nothing between.
    let none = Partial::of(&table, &[]);
    let taken: Vec<usize> = none.frames.iter().map(|f| f.index).collect();
    assert_eq!(taken, [0, 3]);
    assert_eq!(walk(&at, &none).unwrap().entries, 0);
    // A frame it does not read may be anything; one it reads may not.
    let mut data = std::fs::read(&path).unwrap();
    let middle = table.frames[0].size as usize + 100;
    data[middle] ^= 1;
    let damaged = env.path("damaged.tar.zst");
    std::fs::write(&damaged, &data).unwrap();
    let damaged = Location::file(&damaged);
    assert!(walk(&damaged, &none).is_ok());
    data[middle] ^= 1;
    data[10] ^= 1;
    std::fs::write(damaged.label(), &data).unwrap();
    let err = walk(&damaged, &none).unwrap_err();
    assert_eq!(
        err.kind(),
        backstop_core::error::ErrorKind::Integrity,
        "{err}"
    );
    assert!(err.to_string().contains("frame 0"), "{err}");
    // A table that is not the recorded one is refused.
    let other = "0".repeat(64);
    let err = read_table(&at, size, &other, id).unwrap_err();
    assert!(err.to_string().contains("frame table"), "{err}");
}
