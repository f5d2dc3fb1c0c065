//! `verify` finds every kind of damage and records it.

use std::path::PathBuf;
use std::process::Command;

use predicates::prelude::*;

use crate::support::{Env, flip_byte};

fn backup_file(env: &Env, compression: &str) -> (String, PathBuf) {
    let app = env.small_app("svc");
    std::fs::write(
        app.join("data/big.bin"),
        (0..400_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    let b = env.backup(&app, &["--compression", compression]);
    (
        b["id"].as_str().unwrap().to_string(),
        PathBuf::from(b["location"].as_str().unwrap()),
    )
}

#[test]
fn a_flipped_byte_fails_verification_and_marks_the_backup_corrupt() {
    for compression in ["zstd", "gzip", "none"] {
        let env = Env::new();
        let (id, archive) = backup_file(&env, compression);
        let len = std::fs::metadata(&archive).unwrap().len();
        flip_byte(&archive, len / 2);
        env.cmd()
            .args(["verify", &id])
            .assert()
            .code(4)
            .stdout(predicate::str::contains("FAIL"))
            .stdout(predicate::str::contains("sidecar"))
            .stderr(predicate::str::contains("hint:"));
        let row = &env.list()[0];
        assert_eq!(row["status"], "corrupt", "{compression}");
        assert_eq!(row["verify_ok"], false);
        env.cmd()
            .arg("list")
            .assert()
            .stdout(predicate::str::contains("corrupt"));
    }
}

#[test]
fn a_truncated_archive_fails_verification() {
    for compression in ["zstd", "gzip", "none"] {
        let env = Env::new();
        let (id, archive) = backup_file(&env, compression);
        let len = std::fs::metadata(&archive).unwrap().len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&archive)
            .unwrap();
        f.set_len(len * 2 / 3).unwrap();
        let out = env.cmd().args(["--json", "verify", &id]).output().unwrap();
        assert_eq!(out.status.code(), Some(4), "{compression}");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let problems = doc["archives"][0]["problems"].to_string();
        assert!(problems.contains("sidecar"), "{problems}");
        assert!(
            problems.contains("corrupt") || problems.contains("truncated"),
            "{compression}: {problems}"
        );
    }
}

#[test]
fn a_tampered_member_with_a_matching_sidecar_is_caught_by_the_inner_checksums() {
    let env = Env::new();
    let (_, archive) = backup_file(&env, "none");
    // Copy it out of the catalog's sight, change one byte of a file's content
    // and write a new, matching sidecar: only the inner checksums can tell.
    let copy = env.path("copy.tar");
    let mut data = std::fs::read(&archive).unwrap();
    let at = data
        .windows(12)
        .position(|w| w == b"TOKEN=secret")
        .expect("content is stored as is");
    data[at] = b'X';
    std::fs::write(&copy, &data).unwrap();
    let sum = Command::new("sha256sum")
        .arg("copy.tar")
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    std::fs::write(env.path("copy.tar.sha256"), &sum.stdout).unwrap();
    env.cmd()
        .arg("verify")
        .arg(&copy)
        .assert()
        .code(4)
        .stdout(predicate::str::contains(
            "svc/config/.env does not match its checksum",
        ));
}

#[test]
fn a_missing_archive_is_reported_and_recorded() {
    let env = Env::new();
    let (id, archive) = backup_file(&env, "zstd");
    std::fs::remove_file(&archive).unwrap();
    env.cmd()
        .args(["verify", &id])
        .assert()
        .code(4)
        .stdout(predicate::str::contains("missing"));
    assert_eq!(env.list()[0]["status"], "missing");
}

#[test]
fn verify_all_checks_every_archive() {
    let env = Env::new();
    let (_, _) = backup_file(&env, "zstd");
    let app2 = env.small_app("other");
    env.backup(&app2, &[]);
    let doc = env.json(&["verify", "--all"]);
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["archives"].as_array().unwrap().len(), 2);
}

#[test]
fn garbage_is_not_an_archive() {
    let env = Env::new();
    let junk = env.path("junk.tar.zst");
    std::fs::write(&junk, b"this is not an archive at all, just text").unwrap();
    env.cmd()
        .arg("verify")
        .arg(&junk)
        .assert()
        .code(4)
        .stdout(predicate::str::contains("not a backstop archive"));
}

#[test]
fn a_corrected_archive_is_available_again() {
    let env = Env::new();
    let (id, archive) = backup_file(&env, "zstd");
    let good = std::fs::read(&archive).unwrap();
    flip_byte(&archive, 100);
    env.cmd().args(["verify", &id]).assert().code(4);
    std::fs::write(&archive, good).unwrap();
    env.cmd().args(["verify", &id]).assert().success();
    assert_eq!(env.list()[0]["status"], "available");
}

#[test]
fn verify_all_skips_archives_already_known_missing_and_fails_new_ones() {
    let env = Env::new();
    let app = env.small_app("svc");
    let archives: Vec<PathBuf> = (0..3)
        .map(|_| PathBuf::from(env.backup(&app, &["--full"])["location"].as_str().unwrap()))
        .collect();
    // The first run finds one archive gone: a failure, recorded as missing.
    std::fs::remove_file(&archives[0]).unwrap();
    env.cmd()
        .args(["verify", "--all"])
        .assert()
        .code(4)
        .stdout(predicate::str::contains("is missing"));
    // Known now: skipped and counted, the others verified, exit 0.
    env.cmd()
        .args(["verify", "--all"])
        .assert()
        .success()
        .stdout(predicate::str::contains("2 of 2 archives verified"))
        .stdout(predicate::str::contains(
            "Skipped 1 backup already known to be missing",
        ));
    let doc = env.json(&["verify", "--all"]);
    assert_eq!(doc["skipped_missing"], 1, "{doc}");
    assert_eq!(doc["archives"].as_array().unwrap().len(), 2, "{doc}");
    // An archive newly gone still fails, beside the one skipped.
    std::fs::remove_file(&archives[1]).unwrap();
    env.cmd()
        .args(["verify", "--all"])
        .assert()
        .code(4)
        .stdout(predicate::str::contains("FAIL"))
        .stdout(predicate::str::contains("Skipped 1 backup"));
}
