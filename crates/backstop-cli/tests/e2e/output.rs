//! Where archives go and what they look like to other tools; what the human
//! output looks like.

use std::process::{Command, Stdio};

use backstop_test_support::{Compare, assert_same_tree, awkward_tree, have};
use predicates::prelude::*;

use crate::support::Env;

#[test]
fn output_to_a_file_infers_gzip_and_writes_a_sidecar() {
    if !have("gzip") || !have("tar") || !have("sha256sum") {
        return;
    }
    let env = Env::new();
    let app = env.small_app("svc");
    let target = env.path("exports/test-backup.tar.gz");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let b = env.backup(&app, &["--output", target.to_str().unwrap()]);
    assert_eq!(b["compression"], "gzip");
    assert_eq!(b["location"], target.to_str().unwrap());
    assert_eq!(
        Env::files_in(target.parent().unwrap()),
        ["test-backup.tar.gz", "test-backup.tar.gz.sha256"]
    );
    let check = Command::new("sha256sum")
        .args(["-c", "test-backup.tar.gz.sha256"])
        .current_dir(target.parent().unwrap())
        .status()
        .unwrap();
    assert!(check.success());
    assert!(
        Command::new("gzip")
            .arg("-t")
            .arg(&target)
            .status()
            .unwrap()
            .success()
    );
    let x = env.path("x");
    std::fs::create_dir_all(&x).unwrap();
    assert!(
        Command::new("tar")
            .arg("xzf")
            .arg(&target)
            .arg("-C")
            .arg(&x)
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(
        std::fs::read(x.join("svc/config/.env")).unwrap(),
        b"TOKEN=secret\n"
    );
    // The file is recorded where it was written.
    env.cmd().arg("verify").arg(&target).assert().success();
    env.cmd()
        .arg("list")
        .assert()
        .success()
        .stdout(predicate::str::contains("svc-20"));
    // It never overwrites.
    env.cmd()
        .arg("backup")
        .arg(&app)
        .arg("--output")
        .arg(&target)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("already exists"));
}

#[test]
fn output_to_a_directory_uses_the_id() {
    let env = Env::new();
    let app = env.small_app("svc");
    let dir = env.path("usb");
    std::fs::create_dir_all(&dir).unwrap();
    let b = env.backup(
        &app,
        &["--output", dir.to_str().unwrap(), "--compression", "none"],
    );
    let name = format!("{}.tar", b["id"].as_str().unwrap());
    assert_eq!(
        Env::files_in(&dir),
        [name.clone(), format!("{name}.sha256")]
    );
}

#[test]
fn output_to_stdout_streams_a_valid_archive() {
    if !have("tar") || !have("zstd") {
        return;
    }
    let env = Env::new();
    let app = env.path("app");
    awkward_tree(&app);
    let out = env
        .cmd()
        .args(["backup", "--output", "-"])
        .arg(&app)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("written to stdout"));
    let x = env.path("x");
    std::fs::create_dir_all(&x).unwrap();
    let mut tar = Command::new("tar")
        .args([
            "--zstd",
            "--xattrs",
            "--xattrs-include=user.*",
            "-xpf",
            "-",
            "-C",
        ])
        .arg(&x)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(tar.stdin.as_mut().unwrap(), &out.stdout).unwrap();
    drop(tar.stdin.take());
    assert!(tar.wait().unwrap().success());
    assert_same_tree(
        &app,
        &x.join("app"),
        Compare {
            dir_mtimes: true,
            xattrs: false,
            sparse: true,
        },
    );
    // A stream cannot be found again: it is not in the catalog.
    assert!(env.list().is_empty());
    // The stream verifies like any archive once saved.
    let saved = env.path("saved.tar.zst");
    std::fs::write(&saved, &out.stdout).unwrap();
    env.cmd()
        .arg("verify")
        .arg(&saved)
        .assert()
        .code(3)
        .stdout(predicate::str::contains("no .sha256 sidecar"));
}

#[test]
fn json_and_stdout_output_conflict() {
    let env = Env::new();
    let app = env.small_app("svc");
    env.cmd()
        .args(["--json", "backup", "--output", "-"])
        .arg(&app)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("stdout"));
}

#[test]
fn errors_under_json_are_a_json_document() {
    let env = Env::new();
    let out = env
        .cmd()
        .args(["--json", "backup", "/no/such/dir"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["command"], "error");
    assert_eq!(doc["error"]["exit_code"], 2);
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not exist")
    );
}

#[test]
fn human_output_of_the_main_commands() {
    let env = Env::new();
    let app = env.small_app("svc");
    let backup = env
        .cmd()
        .args(["backup", "--compression", "none", "-m", "first"])
        .arg(&app)
        .output()
        .unwrap();
    let id = env.list()[0]["id"].as_str().unwrap().to_string();
    let list = env.cmd().arg("list").output().unwrap();
    let show = env.cmd().args(["show", &id]).output().unwrap();
    let verify = env.cmd().args(["verify", &id]).output().unwrap();

    let tmp = regex_escape(env.dir.path().to_str().unwrap());
    let host = format!(" on {}", regex_escape(&backstop_core::lock::hostname()));
    insta::with_settings!({filters => vec![
        (tmp.as_str(), "[TMP]"),
        (host.as_str(), " on [HOST]"),
        (r"\d{4}-\d{2}-\d{2}-\d{6}", "[STAMP]"),
        (r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", "[DATE TIME]"),
        (r"[0-9a-f]{64}", "[SHA256]"),
        (r"in \d+(\.\d)? m?s \([^)]*\)", "in [DURATION]"),
        (r"checked in \d+(\.\d)? m?s", "checked in [DURATION]"),
        (r"backstop \d+\.\d+\.\d+", "backstop [VERSION]"),
    ]}, {
        insta::assert_snapshot!("backup", String::from_utf8_lossy(&backup.stdout));
        insta::assert_snapshot!("list", String::from_utf8_lossy(&list.stdout));
        insta::assert_snapshot!("show", String::from_utf8_lossy(&show.stdout));
        insta::assert_snapshot!("verify", String::from_utf8_lossy(&verify.stdout));
    });
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if "\\.+*?()|[]{}^$-".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}
